//! NDJSON file source: one JSON event per line, the `type` field says the kind.
//!
//! With W workers, every file is cut into W byte ranges; worker k reads the
//! lines that *start* in its range, so big files are parsed in parallel and
//! every line is read by exactly one worker. Positions are (file index in the
//! input list, 1-based line number), so source order is the order of the files
//! as given, then of the lines. Blank lines are skipped (they are not events).
//! Each worker's share is one watermark partition.
//!
//! Source partitions (for positions and seek): each worker's range of each
//! file, `source` = the file's index, `start` = the first line of the range,
//! `next` = the next line to read. Files are read in order, so a worker's
//! positions are some finished files, at most one file being read, and files
//! not opened yet (absent). `digest` is the CRC-32 of the range's bytes read so
//! far: a resume re-reads them and refuses a file that changed since.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use treeai_dataflows::event::Position;
use treeai_dataflows::source::{Fault, PartitionPosition, Poll, RawMessage, Source, SourceError, SourceRef};

struct Range {
    file: u32,
    reader: BufReader<File>,
    /// Byte offset of the next line.
    offset: u64,
    /// Lines starting at or after this offset belong to the next worker.
    end: u64,
    /// Line number of the next line.
    line: u64,
    /// Line number of the range's first line.
    first_line: u64,
    /// CRC-32 of the range's bytes read so far (checked on resume).
    crc: crc32fast::Hasher,
}

impl Range {
    /// The range of file `index` from byte `offset` (line `line`) to `end`, nothing read yet.
    fn new(index: usize, reader: BufReader<File>, offset: u64, end: u64, line: u64) -> Self {
        Range { file: index as u32, reader, offset, end, line, first_line: line, crc: crc32fast::Hasher::new() }
    }
}

/// Reads this worker's share of a list of NDJSON files.
pub struct FileSource {
    paths: Vec<PathBuf>,
    /// The paths as dead letters name them.
    names: Vec<Arc<str>>,
    /// Ranges read to their end.
    finished: Vec<PartitionPosition>,
    worker: u64,
    peers: u64,
    next_file: usize,
    current: Option<Range>,
    buf: Vec<u8>,
}

impl FileSource {
    /// The share of worker `worker` of `peers` of these files. Fails if a file cannot be opened.
    pub fn new(paths: Vec<PathBuf>, worker: usize, peers: usize) -> Result<Self, SourceError> {
        for p in &paths {
            File::open(p).map_err(|e| SourceError::Unreadable {
                input: p.display().to_string(),
                message: e.to_string(),
                fault: Fault::User,
            })?;
        }
        Ok(FileSource {
            names: paths.iter().map(|p| Arc::from(p.display().to_string())).collect(),
            finished: Vec::new(),
            paths,
            worker: worker as u64,
            peers: peers.max(1) as u64,
            next_file: 0,
            current: None,
            buf: Vec::new(),
        })
    }

    /// The current range is read to its end.
    fn finish_current(&mut self) {
        if let Some(range) = self.current.take() {
            self.finished.push(position(&range, true));
        }
    }

    fn open_next(&mut self) -> Result<Option<Range>, std::io::Error> {
        while self.next_file < self.paths.len() {
            let index = self.next_file;
            self.next_file += 1;
            let mut file = File::open(&self.paths[index])?;
            let size = file.metadata()?.len();
            let start = size * self.worker / self.peers;
            let end = size * (self.worker + 1) / self.peers;
            if start >= end {
                continue;
            }
            // Count the lines before our range and find the first line that starts in it.
            let (mut line, mut offset) = (1u64, 0u64);
            if start > 0 {
                let mut prefix = (&mut file).take(start - 1);
                let mut chunk = vec![0u8; 1 << 20];
                loop {
                    let n = prefix.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    line += memchr::memchr_iter(b'\n', &chunk[..n]).count() as u64;
                }
                let mut reader = BufReader::with_capacity(1 << 20, file);
                reader.seek(SeekFrom::Start(start - 1))?;
                let mut skipped = Vec::new();
                let n = reader.read_until(b'\n', &mut skipped)? as u64;
                // The byte at start-1 ends a line (n == 1) or we skipped the tail of a line started before.
                if skipped.last() == Some(&b'\n') {
                    line += 1;
                }
                offset = start - 1 + n;
                if offset >= end {
                    continue;
                }
                return Ok(Some(Range::new(index, reader, offset, end, line)));
            }
            let reader = BufReader::with_capacity(1 << 20, file);
            return Ok(Some(Range::new(index, reader, offset, end, line)));
        }
        Ok(None)
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        let mut emitted = 0;
        while emitted < max {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(Some(r)) => self.current = Some(r),
                    Ok(None) => return if emitted > 0 { Poll::Ready } else { Poll::Done },
                    Err(e) => {
                        // A file that vanished or cannot be read: report and go on with the next.
                        tracing::error!("reading {}: {e}", self.paths[self.next_file - 1].display());
                        continue;
                    }
                }
            }
            let Some(range) = self.current.as_mut() else {
                continue;
            };
            if range.offset >= range.end {
                self.finish_current();
                continue;
            }
            self.buf.clear();
            let n = match range.reader.read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("reading {}: {e}", self.paths[range.file as usize].display());
                    self.current = None;
                    continue;
                }
            };
            if n == 0 {
                self.finish_current();
                continue;
            }
            let pos = Position { source: range.file, offset: range.line };
            range.crc.update(&self.buf);
            range.offset += n as u64;
            range.line += 1;
            let mut bytes = &self.buf[..];
            while let Some((last, rest)) = bytes.split_last() {
                if matches!(last, b'\n' | b'\r') {
                    bytes = rest;
                } else {
                    break;
                }
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            emit(RawMessage { bytes, kind: None, pos, partition: 0, key: None });
            emitted += 1;
        }
        Poll::Ready
    }

    fn source_ref(&self, pos: Position) -> SourceRef {
        match self.names.get(pos.source as usize) {
            Some(path) => SourceRef::File { path: path.clone(), line: pos.offset },
            None => SourceRef::Other { name: "file".into(), pos },
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        let mut out = self.finished.clone();
        out.extend(self.current.as_ref().map(|r| position(r, false)));
        out
    }

    /// Opens the files in order: a range recorded as finished is skipped, a
    /// range recorded part-way is read up to its recorded line, and the first
    /// range without a record is where reading starts.
    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        let unreadable = |path: &PathBuf, e: std::io::Error| SourceError::Unreadable {
            input: path.display().to_string(),
            message: e.to_string(),
            fault: Fault::Environment,
        };
        self.finished.clear();
        self.current = None;
        self.next_file = 0;
        loop {
            let Some(mut range) = self.open_next().map_err(|e| unreadable(&self.paths[self.next_file - 1], e))? else {
                return Ok(());
            };
            let recorded = positions.iter().find(|p| p.source == range.file && p.start == range.first_line);
            let Some(recorded) = recorded else {
                self.current = Some(range);
                return Ok(());
            };
            while range.line < recorded.next {
                self.buf.clear();
                let n = range
                    .reader
                    .read_until(b'\n', &mut self.buf)
                    .map_err(|e| unreadable(&self.paths[range.file as usize], e))?;
                if n == 0 || range.offset >= range.end {
                    return Err(SourceError::Resume {
                        partition: self.source_ref(Position { source: range.file, offset: range.line }).to_string(),
                        next: recorded.next,
                        message: "the file has fewer lines than when the position was recorded".into(),
                    });
                }
                range.crc.update(&self.buf);
                range.offset += n as u64;
                range.line += 1;
            }
            if range.crc.clone().finalize() != recorded.digest {
                return Err(SourceError::Resume {
                    partition: self.source_ref(Position { source: range.file, offset: range.first_line }).to_string(),
                    next: recorded.next,
                    message: "the file changed since the checkpoint: the lines read before it differ from those \
                              read then (restore with --no-restore to read the files as they are now, or put the \
                              original file back)"
                        .into(),
                });
            }
            if recorded.finished {
                self.finished.push(position(&range, true));
            } else {
                self.current = Some(range);
                return Ok(());
            }
        }
    }
}

fn position(range: &Range, finished: bool) -> PartitionPosition {
    PartitionPosition {
        source: range.file,
        start: range.first_line,
        next: range.line,
        finished,
        digest: range.crc.clone().finalize(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(paths: &[PathBuf], peers: usize) -> Vec<(u32, u64, String)> {
        let mut out = Vec::new();
        for w in 0..peers {
            let mut src = FileSource::new(paths.to_vec(), w, peers).unwrap();
            while src.poll(3, &mut |m| {
                out.push((m.pos.source, m.pos.offset, String::from_utf8(m.bytes.to_vec()).unwrap()));
            }) != Poll::Done
            {}
        }
        out.sort();
        out
    }

    #[test]
    fn every_line_once_with_its_number_whatever_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        let mut expected = Vec::new();
        for f in 0..3u32 {
            let p = dir.path().join(format!("{f}.ndjson"));
            let mut file = File::create(&p).unwrap();
            for line in 1..=(17 * (f as u64 + 1)) {
                if line % 7 == 0 {
                    writeln!(file).unwrap(); // blank lines are skipped but counted
                    continue;
                }
                let text = format!("{{\"f\":{f},\"line\":{line},\"pad\":\"{}\"}}", "x".repeat(line as usize % 13));
                if line % 5 == 0 {
                    write!(file, "{text}\r\n").unwrap();
                } else {
                    writeln!(file, "{text}").unwrap();
                }
                expected.push((f, line, text));
            }
            if f == 2 {
                write!(file, "{{\"last\":true}}").unwrap(); // no final newline
                expected.push((f, 52, "{\"last\":true}".to_string()));
            }
            paths.push(p);
        }
        expected.sort();
        for peers in [1, 2, 3, 4, 7, 64] {
            assert_eq!(read_all(&paths, peers), expected, "peers = {peers}");
        }
    }

    #[test]
    fn seeking_to_reported_positions_replays_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for f in 0..3 {
            let p = dir.path().join(format!("{f}.ndjson"));
            let mut file = File::create(&p).unwrap();
            for line in 1..=40 {
                if line % 9 == 0 {
                    writeln!(file).unwrap();
                } else {
                    writeln!(file, "{{\"f\":{f},\"line\":{line}}}").unwrap();
                }
            }
            paths.push(p);
        }
        for peers in [1, 2, 3] {
            for cut in [0, 1, 10, 35, 36, 37, 80, 200] {
                let paths = paths.clone();
                crate::seek_contract::check(
                    &move |w, n| Box::new(FileSource::new(paths.clone(), w, n).unwrap()),
                    peers,
                    cut,
                    usize::MAX,
                );
            }
        }
        // A file that lost lines since the positions were recorded: a clear error, not a silent replay.
        let mut first = FileSource::new(paths.clone(), 0, 1).unwrap();
        crate::seek_contract::read(&mut first, 5, 30);
        let positions = first.positions();
        std::fs::write(&paths[0], "{}\n").unwrap();
        let err = FileSource::new(paths.clone(), 0, 1).unwrap().seek(&positions).unwrap_err();
        assert!(err.to_string().contains("fewer lines"), "{err}");

        // A file whose lines before the position changed (same number of lines): refused too.
        let p = dir.path().join("edited.ndjson");
        let lines: Vec<String> = (1..=20).map(|i| format!("{{\"line\":{i}}}")).collect();
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let mut first = FileSource::new(vec![p.clone()], 0, 1).unwrap();
        crate::seek_contract::read(&mut first, 5, 12);
        let positions = first.positions();
        // Unchanged, or changed only after the position: resumes.
        let mut later = lines.clone();
        later[18] = "{\"line\":\"edited\"}".into();
        std::fs::write(&p, later.join("\n") + "\n").unwrap();
        FileSource::new(vec![p.clone()], 0, 1).unwrap().seek(&positions).expect("a change after the position");
        let mut earlier = lines.clone();
        earlier[3] = "{\"line\":4.0}".into();
        std::fs::write(&p, earlier.join("\n") + "\n").unwrap();
        let err = FileSource::new(vec![p.clone()], 0, 1).unwrap().seek(&positions).unwrap_err();
        assert!(err.to_string().contains("changed since the checkpoint"), "{err}");
    }

    #[test]
    fn missing_file_is_an_input_error() {
        let err = FileSource::new(vec![PathBuf::from("/nonexistent/x.ndjson")], 0, 1).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/x.ndjson"), "{err}");
    }
}
