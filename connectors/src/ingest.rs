//! The local ingest log: events posted to `POST /v1/events` when there is no
//! Kafka, made durable before the answer and read by the pipeline like any
//! other source.
//!
//! Layout: `<data-dir>/ingest/<segment>.ndjson`, segments numbered from 0 and
//! rolled at 64 MiB. A request's lines are appended in one write and
//! `fsync`ed before [`IngestLog::append`] returns (so a 202 means on disk); an
//! `Idempotency-Key` is written in the same write as a `#key {json}` line
//! after the batch, so the key and its events are durable together. On open,
//! a torn tail (a crash in the middle of a write, which was never answered)
//! is cut off and the keys of the last 24 h are loaded.
//!
//! The source ([`IngestTail`], on worker 0) reads lines up to what is durable
//! (never bytes a crash could still lose), skips `#` lines, and has one
//! partition: source id [`INGEST_SOURCE`], `next` = segment × 2^40 + byte
//! offset. A checkpoint records that position and a restore resumes there, so
//! each posted event reaches the views exactly once. Segments are kept (not
//! yet deleted after a checkpoint passes them).
//!
//! [`Merged`] puts this source beside the pipeline's main one: the second
//! source's ids and partitions carry bit 31.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use treeai_dataflows::event::Position;
use treeai_dataflows::source::{PartitionPosition, Poll, RawMessage, Source, SourceError, SourceRef};

/// The ingest log's source id (in the second source of a [`Merged`], so bit 31 is added).
pub const INGEST_SOURCE: u32 = 0;
/// A segment rolls once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
const OFFSET_BITS: u32 = 40;
/// How long an `Idempotency-Key` is remembered.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;

fn pack(segment: u64, offset: u64) -> u64 {
    (segment << OFFSET_BITS) | offset
}

fn unpack(p: u64) -> (u64, u64) {
    (p >> OFFSET_BITS, p & ((1 << OFFSET_BITS) - 1))
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.ndjson"))
}

struct Writer {
    file: File,
    segment: u64,
    len: u64,
    /// Held (an exclusive `flock`) while this process owns the folder.
    _lock: Arc<File>,
}

/// The log (one per process), shared by the HTTP handler and the source.
pub struct IngestLog {
    dir: PathBuf,
    /// `None` until the folder is opened (at start if it exists, else at the first post).
    writer: Mutex<Option<Writer>>,
    /// Packed (segment, length) of what is durable.
    durable: AtomicU64,
    /// Idempotency keys: key → (epoch ms, the answer given).
    keys: Mutex<HashMap<String, (i64, String)>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl IngestLog {
    /// The log under `dir`: opened now if the folder exists (a restart finds what was
    /// posted before), else created at the first post, so a process that is never
    /// posted to leaves no trace on disk.
    pub fn new(dir: &Path) -> std::io::Result<Arc<IngestLog>> {
        let log = Arc::new(IngestLog {
            dir: dir.to_owned(),
            writer: Mutex::new(None),
            durable: AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
        });
        if dir.exists() {
            let w = log.open()?;
            *log.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        }
        Ok(log)
    }

    /// Opens (or creates) the folder: takes its lock, loads the keys, cuts a torn tail.
    fn open(&self) -> std::io::Result<Writer> {
        let dir = &self.dir;
        let ctx = |e: std::io::Error, what: &str| std::io::Error::new(e.kind(), format!("ingest log {what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|e| ctx(e, &dir.display().to_string()))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        lock.try_lock().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("ingest log {}: another treeai process uses it (give each its own --data-dir)", dir.display()),
            )
        })?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| ctx(e, &dir.display().to_string()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ndjson")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let mut keys = HashMap::new();
        let cutoff = now_ms() - KEY_TTL_MS;
        for &s in &segments {
            let path = segment_path(dir, s);
            let reader = BufReader::new(File::open(&path).map_err(|e| ctx(e, &path.display().to_string()))?);
            for line in reader.split(b'\n').map_while(Result::ok) {
                if let Some(json) = line.strip_prefix(b"#key ") {
                    if let Ok(k) = serde_json::from_slice::<KeyLine>(json) {
                        if k.at_ms > cutoff {
                            keys.insert(k.key, (k.at_ms, k.answer));
                        }
                    }
                }
            }
        }
        let segment = segments.last().copied().unwrap_or(0);
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| ctx(e, &path.display().to_string()))?;
        // Cut a torn last line (a write a crash interrupted; it was never answered).
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut tail = Vec::new();
            let from = len.saturating_sub(1 << 20);
            file.seek(SeekFrom::Start(from))?;
            file.read_to_end(&mut tail)?;
            let keep = tail.iter().rposition(|&b| b == b'\n').map_or(from, |i| from + i as u64 + 1);
            if keep != len {
                tracing::warn!("ingest log {}: cutting {} bytes of an unfinished write", path.display(), len - keep);
                file.set_len(keep)?;
                file.sync_all()?;
                len = keep;
            }
        }
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
        self.durable.store(pack(segment, len), Ordering::Release);
        Ok(Writer { file, segment, len, _lock: Arc::new(lock) })
    }

    /// The answer given to an earlier request with `key`, if within 24 h.
    pub fn replay(&self, key: &str) -> Option<String> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key).filter(|(at, _)| *at > now_ms() - KEY_TTL_MS).map(|(_, a)| a.clone())
    }

    /// Appends `lines` (no newlines inside) and, with `key`, the answer to remember;
    /// returns once they are on disk. A `key` used already appends nothing and gives
    /// the earlier answer.
    pub fn append(&self, lines: &[&[u8]], key: Option<(&str, &str)>) -> std::io::Result<Option<String>> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 256);
        for l in lines {
            debug_assert!(!l.contains(&b'\n'));
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        let at_ms = now_ms();
        if let Some((key, answer)) = key {
            buf.extend_from_slice(b"#key ");
            let line = KeyLine { key: key.to_owned(), at_ms, answer: answer.to_owned() };
            buf.extend_from_slice(&serde_json::to_vec(&line).map_err(std::io::Error::other)?);
            buf.push(b'\n');
        }
        // One writer at a time; a key is checked and recorded under the same lock.
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let Some(w) = guard.as_mut() else { return Err(std::io::Error::other("ingest log not open")) };
        if let Some(earlier) = key.and_then(|(k, _)| self.replay(k)) {
            return Ok(Some(earlier));
        }
        if w.len > 0 && w.len + buf.len() as u64 > SEGMENT_BYTES {
            let segment = w.segment + 1;
            let path = segment_path(&self.dir, segment);
            let file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
            File::open(&self.dir).and_then(|d| d.sync_all())?;
            *w = Writer { file, segment, len: 0, _lock: w._lock.clone() };
        }
        if let Err(e) = w.file.write_all(&buf).and_then(|()| w.file.sync_data()) {
            // Cut what may have been written, so the log holds no half batch.
            let len = w.len;
            let _ = w.file.set_len(len);
            return Err(e);
        }
        w.len += buf.len() as u64;
        self.durable.store(pack(w.segment, w.len), Ordering::Release);
        if let Some((key, answer)) = key {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.retain(|_, (at, _)| *at > at_ms - KEY_TTL_MS);
            keys.insert(key.to_owned(), (at_ms, answer.to_owned()));
        }
        Ok(None)
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyLine {
    key: String,
    at_ms: i64,
    answer: String,
}

/// The ingest log as a source (worker 0 reads it).
pub struct IngestTail {
    log: Arc<IngestLog>,
    segment: u64,
    offset: u64,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
}

impl IngestTail {
    /// Reads `log` from its beginning (or where [`Source::seek`] says).
    pub fn new(log: Arc<IngestLog>) -> IngestTail {
        IngestTail { log, segment: 0, offset: 0, reader: None, buf: Vec::new() }
    }
}

impl Source for IngestTail {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        let mut emitted = 0;
        while emitted < max {
            let (dseg, dlen) = unpack(self.log.durable.load(Ordering::Acquire));
            if self.segment > dseg || (self.segment == dseg && self.offset >= dlen) {
                break;
            }
            let path = segment_path(&self.log.dir, self.segment);
            if self.reader.is_none() {
                match File::open(&path).and_then(|mut f| f.seek(SeekFrom::Start(self.offset)).map(|_| f)) {
                    Ok(f) => self.reader = Some(BufReader::with_capacity(1 << 16, f)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.segment < dseg => {
                        // A segment that is gone (removed by hand): go on with the next.
                        tracing::error!("ingest log {}: missing; going on with the next segment", path.display());
                        self.segment += 1;
                        self.offset = 0;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("ingest log {}: {e}", path.display());
                        break;
                    }
                }
            }
            let Some(reader) = self.reader.as_mut() else { break };
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) if self.segment < dseg => {
                    self.segment += 1;
                    self.offset = 0;
                    self.reader = None;
                    continue;
                }
                Ok(n) if n > 0 && self.buf.last() == Some(&b'\n') => {
                    let pos = Position { source: INGEST_SOURCE, offset: pack(self.segment, self.offset) };
                    self.offset += n as u64;
                    let line = self.buf[..n - 1].strip_suffix(b"\r").unwrap_or(&self.buf[..n - 1]);
                    if line.first() == Some(&b'#') || line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    emit(RawMessage { bytes: line, kind: None, pos, partition: 0, key: None });
                    emitted += 1;
                }
                Ok(_) => {
                    // Not durable yet (cannot happen below the durable mark): read again later.
                    self.reader = None;
                    break;
                }
                Err(e) => {
                    tracing::error!("ingest log {}: {e}", path.display());
                    self.reader = None;
                    break;
                }
            }
        }
        if emitted > 0 {
            Poll::Ready
        } else {
            Poll::Idle
        }
    }

    fn source_ref(&self, pos: Position) -> SourceRef {
        let (segment, offset) = unpack(pos.offset);
        SourceRef::Other {
            name: format!("ingest {}@{offset}", segment_path(&self.log.dir, segment).display()).into(),
            pos,
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        vec![PartitionPosition {
            source: INGEST_SOURCE,
            start: 0,
            next: pack(self.segment, self.offset),
            finished: false,
            digest: 0,
        }]
    }

    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        if let Some(p) = positions.iter().find(|p| p.source == INGEST_SOURCE) {
            (self.segment, self.offset) = unpack(p.next);
            self.reader = None;
        }
        Ok(())
    }

    fn owns(&self, source: u32) -> bool {
        source == INGEST_SOURCE
    }
}

/// Bit 31 marks the second source's ids and partitions.
pub const SECOND: u32 = 1 << 31;

/// Two sources as one: the main one, and a second one (the ingest log) whose
/// source ids and watermark partitions carry [`SECOND`].
pub struct Merged {
    main: Box<dyn Source>,
    second: Box<dyn Source>,
    main_done: bool,
}

impl Merged {
    /// `main` and `second` together.
    pub fn new(main: Box<dyn Source>, second: Box<dyn Source>) -> Merged {
        Merged { main, second, main_done: false }
    }
}

impl Source for Merged {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        let mut ready = false;
        if !self.main_done {
            match self.main.poll(max, emit) {
                Poll::Ready => ready = true,
                Poll::Done => self.main_done = true,
                Poll::Idle => {}
            }
        }
        let tagged = &mut |m: RawMessage<'_>| {
            emit(RawMessage {
                pos: Position { source: m.pos.source | SECOND, offset: m.pos.offset },
                partition: m.partition | SECOND,
                ..m
            })
        };
        // The second source is never done (it takes posts for as long as the process runs).
        if self.second.poll(max, tagged) == Poll::Ready {
            ready = true;
        }
        if ready {
            Poll::Ready
        } else {
            Poll::Idle
        }
    }

    fn source_ref(&self, pos: Position) -> SourceRef {
        if pos.source & SECOND != 0 {
            self.second.source_ref(Position { source: pos.source & !SECOND, offset: pos.offset })
        } else {
            self.main.source_ref(pos)
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        let mut out = self.main.positions();
        out.extend(self.second.positions().into_iter().map(|p| PartitionPosition { source: p.source | SECOND, ..p }));
        out
    }

    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        let (second, main): (Vec<_>, Vec<_>) = positions.iter().partition(|p| p.source & SECOND != 0);
        self.main.seek(&main)?;
        let second: Vec<_> =
            second.into_iter().map(|p| PartitionPosition { source: p.source & !SECOND, ..p }).collect();
        self.second.seek(&second)
    }

    fn owns(&self, source: u32) -> bool {
        if source & SECOND != 0 {
            self.second.owns(source & !SECOND)
        } else {
            self.main.owns(source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut dyn Source) -> Vec<(Position, String)> {
        let mut out = Vec::new();
        while s.poll(100, &mut |m| out.push((m.pos, String::from_utf8_lossy(m.bytes).into_owned()))) == Poll::Ready {}
        out
    }

    #[test]
    fn appended_lines_are_read_once_resumed_and_keys_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::new(dir.path()).unwrap();
        let mut tail = IngestTail::new(log.clone());
        assert!(drain(&mut tail).is_empty());
        log.append(&[b"{\"a\":1}", b"{\"a\":2}"], Some(("k1", "answer one"))).unwrap();
        let got = drain(&mut tail);
        assert_eq!(got.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["{\"a\":1}", "{\"a\":2}"]);
        let at = tail.positions();
        log.append(&[b"{\"a\":3}"], None).unwrap();
        // A torn write (a crash mid-append) is cut on reopen; the key is remembered.
        drop(tail);
        drop(log);
        let seg = segment_path(dir.path(), 0);
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"{\"a\":4").unwrap();
        let log = IngestLog::new(dir.path()).unwrap();
        assert_eq!(log.replay("k1").as_deref(), Some("answer one"));
        assert_eq!(log.replay("k2"), None);
        let mut tail = IngestTail::new(log.clone());
        tail.seek(&at).unwrap();
        let got = drain(&mut tail);
        assert_eq!(got.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["{\"a\":3}"]);
        log.append(&[b"{\"a\":5}"], None).unwrap();
        assert_eq!(drain(&mut tail).len(), 1);
    }

    #[test]
    fn merged_sources_tag_the_second_and_split_positions() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::new(dir.path()).unwrap();
        log.append(&[b"{\"x\":1}"], None).unwrap();
        let file = dir.path().join("in.ndjson");
        std::fs::write(&file, "{\"m\":1}\n{\"m\":2}\n").unwrap();
        let main = crate::file::FileSource::new(vec![file], 0, 1).unwrap();
        let mut merged = Merged::new(Box::new(main), Box::new(IngestTail::new(log.clone())));
        let got = drain(&mut merged);
        assert_eq!(got.len(), 3);
        assert!(got.iter().any(|(p, l)| p.source == SECOND | INGEST_SOURCE && l == "{\"x\":1}"));
        let positions = merged.positions();
        assert!(positions.iter().any(|p| p.source == SECOND));
        assert!(merged.owns(SECOND | INGEST_SOURCE));
        let mut again = Merged::new(
            Box::new(crate::file::FileSource::new(vec![], 0, 1).unwrap()),
            Box::new(IngestTail::new(log.clone())),
        );
        again.seek(&positions).unwrap();
        assert!(drain(&mut again).is_empty(), "resumed past everything read");
    }
}
