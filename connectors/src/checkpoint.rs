//! Checkpoints, the connectors' half: writing cuts to an object store,
//! committing the lake with them, and finding the checkpoint to resume from.
//! (The runtime's half — taking a consistent cut — is
//! [`treeai_dataflows::checkpoint`].)
//!
//! # Layout
//!
//! Under the checkpoint URL (default `<lake>/_checkpoints`), one folder per
//! checkpoint, named by its number (20 digits, so names sort by number):
//!
//! ```text
//! 00000000000000000007/worker-0.bin.zst   a worker's state (bincode, zstd)
//! 00000000000000000007/worker-1.bin.zst
//! 00000000000000000007/MANIFEST.json      written last: format, number, cut, parts and their CRC-32s, lake files
//! ```
//!
//! A cluster of `P` processes writes one checkpoint together: every process
//! writes its workers' parts (`worker-<global index>`) and then
//! `process-<i>.json` (its parts and staged lake files); process 0 also writes
//! the egress part, waits until every process's list is there, and writes the
//! one manifest over all of them, then publishes every process's lake files
//! (the lake and the checkpoints are on one shared store). The other processes
//! count the checkpoint durable once they see its manifest. Only process 0
//! deletes old checkpoints and, at a restore, repairs the lake.
//!
//! A folder without a manifest is an incomplete checkpoint and is never
//! restored; a part whose size or CRC-32 does not match its manifest makes
//! the checkpoint corrupt, and the previous one is restored instead. A
//! manifest of another format version stops the start with an error.
//!
//! # Writing one (the writer thread, off the workers)
//!
//! 1. wait until the lake has staged every file of the checkpoint
//!    ([`Lake::seal`]);
//! 2. encode and put each worker's part;
//! 3. put the manifest, which lists the staged lake files: from here on the
//!    checkpoint is durable and the lake files are committed;
//! 4. publish the lake files (move them out of `_staging/` into their
//!    partitions) — a restore repeats this, so a crash here loses nothing;
//! 5. delete all but the newest `kept` checkpoints.
//!
//! # Exactly-once lake
//!
//! Lake files written with checkpoints on are named `part-e<checkpoint>-…`
//! and are staged until their checkpoint's manifest is written. Restoring
//! checkpoint `n` publishes what `n` lists (if a crash came first), deletes
//! published files of checkpoints after `n` (a restore of an older one) and
//! clears the staging area: what the lake shows is exactly what the restored
//! state has counted, and the replay from `n`'s positions adds the rest once.

use crate::lake::{file_epoch, Lake, StagedFile, STAGING};
use crate::ConnectorError;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use treeai_dataflows::checkpoint::{Checkpoints, Cut, EgressState, Persist, Restore, WorkerState, FORMAT_VERSION};
use treeai_dataflows::runtime::Counters;
use treeai_dataflows::runtime::InjectedFault;
use treeai_dataflows::time::DataflowTime;
use treeai_schema::lake::open_store;

/// Errors of checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint store cannot be opened (its URL or options): the user's to fix.
    #[error("checkpoint store {url}: {message}")]
    Open {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A read or write of the store failed (retrying may help).
    #[error("checkpoint store: {0}")]
    Store(String),
    /// The checkpoint was written by another format version.
    #[error(
        "checkpoint {folder} has format version {found}; this treeai reads version {FORMAT_VERSION} (start with --no-restore, or --restore-from another checkpoint)"
    )]
    Version {
        /// The checkpoint's folder.
        folder: String,
        /// Its version.
        found: u32,
    },
    /// The checkpoint is incomplete or damaged.
    #[error("checkpoint {folder} is unusable: {message}")]
    Corrupt {
        /// The checkpoint's folder.
        folder: String,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint cannot be resumed by this run (another source, other workers for a
    /// source partitioned by worker count).
    #[error("cannot resume checkpoint {number}: {message}")]
    Incompatible {
        /// Its number.
        number: u64,
        /// Why.
        message: String,
    },
    /// Another process of the cluster gave this checkpoint up; the next one is taken as usual.
    #[error("checkpoint {number} abandoned by {reason}")]
    Abandoned {
        /// Its number.
        number: u64,
        /// Which process and why (from its `ABANDONED` marker).
        reason: String,
    },
}

impl CheckpointError {
    /// Whose fault the error is.
    pub fn fault(&self) -> treeai_dataflows::source::Fault {
        use treeai_dataflows::source::Fault;
        match self {
            CheckpointError::Store(_) | CheckpointError::Abandoned { .. } => Fault::Environment,
            _ => Fault::User,
        }
    }
}

/// Checkpoint settings.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// Where checkpoints go: a local path or an object store URL (default `<lake>/_checkpoints`).
    pub url: String,
    /// `object_store` options (as the lake's).
    pub options: Vec<(String, String)>,
    /// Time between checkpoints (default 30 s).
    pub interval: Duration,
    /// Checkpoints kept (default 3).
    pub kept: usize,
    /// Which checkpoint to resume from.
    pub restore: RestoreFrom,
}

/// Which checkpoint a run resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest complete one under the checkpoint URL (`--restore-from` not given).
    Newest,
    /// The checkpoint in this folder (`--restore-from URL`).
    Folder(String),
    /// None: start from the sources' beginning (`--no-restore`).
    Nothing,
}

/// A part's entry in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartEntry {
    /// File name in the checkpoint's folder.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
    /// Rows of state in it.
    pub rows: u64,
}

/// A checkpoint's manifest (`MANIFEST.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The checkpoint number.
    pub number: u64,
    /// When it was written, epoch ms.
    pub created_ms: i64,
    /// The cut's dataflow time.
    pub time: u64,
    /// The views' watermark at the cut, epoch ms.
    pub watermark: Option<i64>,
    /// Workers that wrote it.
    pub workers: usize,
    /// The kind of source (`files`, `generator`, `kafka`, `custom`).
    pub source: String,
    /// One part per worker.
    pub parts: Vec<PartEntry>,
    /// The egress's part (alert numbers, output offsets).
    pub egress: PartEntry,
    /// Lake files this checkpoint commits (relative to the lake root).
    pub lake_files: Vec<StagedFile>,
    /// Processes that wrote it (a cluster; 1 for one process).
    #[serde(default = "one")]
    pub processes: usize,
}

fn one() -> usize {
    1
}

impl Manifest {
    /// The manifest of checkpoint `number` (one worker part per worker), written now.
    fn new(
        number: u64,
        (time, watermark): (u64, Option<i64>),
        source: &str,
        (parts, egress): (Vec<PartEntry>, PartEntry),
        lake_files: Vec<StagedFile>,
        processes: usize,
    ) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            number,
            created_ms: now_ms(),
            time,
            watermark,
            workers: parts.len(),
            source: source.to_string(),
            parts,
            egress,
            lake_files,
            processes,
        }
    }
}

/// One process's share of a cluster's checkpoint (`process-<i>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessPart {
    process: usize,
    parts: Vec<PartEntry>,
    egress: Option<PartEntry>,
    lake_files: Vec<StagedFile>,
}

/// A loaded checkpoint.
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its folder, as a URL or path.
    pub folder: String,
    /// Every worker's state.
    pub states: Vec<WorkerState>,
    /// The egress's state.
    pub egress: EgressState,
}

impl Loaded {
    /// The least recorded end offset per output topic-partition (and the greatest of other
    /// entries: the Kafka alert numbering moves, which only grow).
    pub fn sink_offsets(&self) -> std::collections::BTreeMap<String, i64> {
        let mut out = std::collections::BTreeMap::new();
        for (key, offset) in self.states.iter().flat_map(|w| &w.sink_offsets).chain(&self.egress.sink_offsets) {
            let e = out.entry(key.clone()).or_insert(*offset);
            *e = if key.starts_with("treeai.alert_seq_shift/") { (*e).max(*offset) } else { (*e).min(*offset) };
        }
        out
    }

    /// What the runtime resumes from.
    pub fn restore(self) -> Restore {
        Restore {
            number: self.manifest.number,
            time: DataflowTime(self.manifest.time),
            workers: self.states,
            egress: self.egress,
        }
    }
}

/// bincode, then zstd (level 1), streamed: the state goes straight into the compressor,
/// with no uncompressed copy of it (at 10,000 trees with a full window that copy was
/// ~20 MB, three times the compressed part; its high water stayed in the process's RSS).
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CheckpointError> {
    use std::io::Write;
    let store = |e: &dyn std::fmt::Display| CheckpointError::Store(e.to_string());
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).map_err(|e| store(&e))?;
    {
        // bincode writes field by field; the buffer hands zstd large slices.
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut encoder);
        bincode::serialize_into(&mut buffered, value).map_err(|e| store(&e))?;
        buffered.flush().map_err(|e| store(&e))?;
    }
    encoder.finish().map_err(|e| store(&e))
}

const MANIFEST: &str = "MANIFEST.json";
/// In a cluster's checkpoint folder: a process gave this checkpoint up (its reason inside).
const ABANDONED: &str = "ABANDONED";

fn folder_name(number: u64) -> String {
    format!("{number:020}")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A checkpoint location: an object store and a prefix, with a runtime for its calls.
pub struct CheckpointStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    runtime: tokio::runtime::Runtime,
    /// Test fault: the checkpoint of this number writes its parts, then hangs before its manifest.
    hang_before_manifest: Option<u64>,
}

impl CheckpointStore {
    /// Injects `fault` (tests): `hang-before-manifest:N` makes checkpoint N stop between its
    /// parts and its manifest, as a process killed during the upload would.
    pub fn inject(mut self, fault: Option<InjectedFault>) -> Self {
        if let Some(InjectedFault::HangBeforeManifest(n)) = fault {
            self.hang_before_manifest = Some(n);
        }
        self
    }

    /// Opens the checkpoint location `url` (a path or object store URL).
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Self, CheckpointError> {
        let open_error = |message: String| CheckpointError::Open { url: url.to_string(), message };
        if !url.contains("://") || url.starts_with("file://") {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let (store, prefix) = open_store(url, options).map_err(|e| open_error(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        Ok(CheckpointStore { url: url.to_string(), store, prefix, runtime, hang_before_manifest: None })
    }

    fn path(&self, rel: &str) -> StorePath {
        self.prefix.parts().chain(StorePath::from(rel).parts()).collect()
    }

    fn folder_url(&self, number: u64) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), folder_name(number))
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let path = self.path(rel);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())).map_err(|e| CheckpointError::Store(e.to_string())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(CheckpointError::Store(e.to_string())),
            }
        })
    }

    fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let path = self.path(rel);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| CheckpointError::Store(format!("{path}: {e}")))
    }

    /// Numbers of the checkpoint folders (complete or not), ascending.
    pub fn numbers(&self) -> Result<Vec<u64>, CheckpointError> {
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&self.prefix)))
            .map_err(|e| CheckpointError::Store(e.to_string()))?;
        let mut numbers: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().filter(|n| n.len() == 20).and_then(|n| n.parse().ok()))
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Loads the checkpoint in folder `rel` ("" for the store's root), verifying every part.
    fn load_folder(&self, rel: &str, folder: String) -> Result<Loaded, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt { folder: folder.clone(), message };
        let join = |name: &str| if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        let bytes = self.get(&join(MANIFEST))?.ok_or_else(|| corrupt("no MANIFEST.json (incomplete)".into()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("MANIFEST.json: {e}")))?;
        let format = value.get("format").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if format != FORMAT_VERSION {
            return Err(CheckpointError::Version { folder, found: format });
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| corrupt(format!("MANIFEST.json: {e}")))?;
        let read = |part: &PartEntry| -> Result<Vec<u8>, CheckpointError> {
            let bytes = self.get(&join(&part.file))?.ok_or_else(|| corrupt(format!("{} is missing", part.file)))?;
            if bytes.len() as u64 != part.bytes || crc32fast::hash(&bytes) != part.crc32 {
                return Err(corrupt(format!("{}: size or CRC-32 does not match the manifest", part.file)));
            }
            zstd::decode_all(&bytes[..]).map_err(|e| corrupt(format!("{}: {e}", part.file)))
        };
        let mut states = Vec::with_capacity(manifest.parts.len());
        for part in &manifest.parts {
            let state: WorkerState =
                bincode::deserialize(&read(part)?).map_err(|e| corrupt(format!("{}: {e}", part.file)))?;
            states.push(state);
        }
        let egress: EgressState = bincode::deserialize(&read(&manifest.egress)?)
            .map_err(|e| corrupt(format!("{}: {e}", manifest.egress.file)))?;
        if states.len() != manifest.workers {
            return Err(corrupt(format!("{} parts for {} workers", states.len(), manifest.workers)));
        }
        Ok(Loaded { manifest, folder, states, egress })
    }

    /// The newest checkpoint that loads; damaged or incomplete ones are skipped (and counted
    /// in `skipped`), a checkpoint of another format version is an error.
    pub fn load_newest(&self, skipped: &AtomicU64) -> Result<Option<Loaded>, CheckpointError> {
        let mut damaged = 0;
        for number in self.numbers()?.into_iter().rev() {
            match self.load_folder(&folder_name(number), self.folder_url(number)) {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(e @ CheckpointError::Corrupt { .. }) => {
                    tracing::warn!("{e}; trying the previous checkpoint");
                    skipped.fetch_add(1, Ordering::Relaxed);
                    // A folder without a manifest committed nothing; one with a manifest did.
                    damaged +=
                        usize::from(matches!(self.get(&format!("{}/{MANIFEST}", folder_name(number))), Ok(Some(_))));
                }
                Err(e) => return Err(e),
            }
        }
        if damaged > 0 {
            // Starting over would count again what the lake already holds.
            return Err(CheckpointError::Corrupt {
                folder: self.url.clone(),
                message: "no checkpoint there is usable; start with --no-restore to start over, or --restore-from one"
                    .into(),
            });
        }
        Ok(None)
    }

    /// Deletes the checkpoints after `number` (a run resumed from an older checkpoint
    /// continues from it; the later ones belong to a history it replaces).
    pub fn drop_after(&self, number: u64) -> Result<(), CheckpointError> {
        for later in self.numbers()?.into_iter().filter(|n| *n > number) {
            self.delete_folder(later)?;
        }
        Ok(())
    }

    fn delete_folder(&self, number: u64) -> Result<(), CheckpointError> {
        let prefix = self.path(&folder_name(number));
        self.runtime
            .block_on(async {
                let files: Vec<_> = self.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await?;
                // The manifest first, so a folder half deleted is incomplete, never corrupt.
                let (manifest, rest): (Vec<_>, Vec<_>) =
                    files.into_iter().partition(|f| f.filename() == Some(MANIFEST));
                for f in manifest.into_iter().chain(rest) {
                    self.store.delete(&f).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| CheckpointError::Store(e.to_string()))
    }

    /// Loads the checkpoint whose folder is this store's root (`--restore-from URL`).
    pub fn load_here(&self) -> Result<Loaded, CheckpointError> {
        self.load_folder("", self.url.clone())
    }

    /// Writes a cut and its lake files; returns the bytes written. The manifest goes last.
    pub(crate) fn write(
        &self,
        number: u64,
        cut: Cut,
        source: &str,
        lake_files: Vec<StagedFile>,
    ) -> Result<(u64, Manifest), CheckpointError> {
        let (time, watermark) = (cut.time.0, cut.watermark);
        let (mut total, parts, egress) = self.write_parts(number, cut, true)?;
        let egress = egress.ok_or_else(|| CheckpointError::Store("no egress part".into()))?;
        self.hang_if_asked(number);
        let manifest = Manifest::new(number, (time, watermark), source, (parts, egress), lake_files, 1);
        total += self.put_manifest(&manifest)?;
        Ok((total, manifest))
    }

    fn hang_if_asked(&self, number: u64) {
        if self.hang_before_manifest == Some(number) {
            tracing::warn!("checkpoint {number}: parts written; injected fault: hanging before the manifest");
            loop {
                std::thread::park();
            }
        }
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<u64, CheckpointError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| CheckpointError::Store(e.to_string()))?;
        let bytes = json.len() as u64;
        self.put(&format!("{}/{MANIFEST}", folder_name(manifest.number)), json)?;
        Ok(bytes)
    }

    /// Encodes and puts a cut's worker parts (and, with `egress`, the egress part).
    fn write_parts(
        &self,
        number: u64,
        cut: Cut,
        egress: bool,
    ) -> Result<(u64, Vec<PartEntry>, Option<PartEntry>), CheckpointError> {
        let folder = folder_name(number);
        let mut parts = Vec::with_capacity(cut.workers.len());
        let mut total = 0;
        for captured in cut.workers {
            // Encoded in place: the shared state is read, not copied into a WorkerState first.
            let rows = captured.rows() as u64;
            let file = format!("worker-{}.bin.zst", captured.state.worker);
            let bytes = encode(&captured)?;
            drop(captured);
            let entry =
                PartEntry { file: file.clone(), bytes: bytes.len() as u64, crc32: crc32fast::hash(&bytes), rows };
            total += entry.bytes;
            self.put(&format!("{folder}/{file}"), bytes)?;
            parts.push(entry);
        }
        if !egress {
            return Ok((total, parts, None));
        }
        let bytes = encode(&cut.egress)?;
        let entry = PartEntry {
            file: "egress.bin.zst".into(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
            rows: cut.egress.alert_seqs.len() as u64,
        };
        total += entry.bytes;
        self.put(&format!("{folder}/{}", entry.file), bytes)?;
        Ok((total, parts, Some(entry)))
    }

    /// A cluster's checkpoint, this process's share: its parts and `process-<i>.json`; on
    /// process 0 also the egress part and, once every process's share is there, the manifest.
    /// Other processes return once the manifest is there. `Ok(None)` on process 0 means the
    /// checkpoint is complete with the returned manifest; gives up after `wait` or when
    /// `abort` says so.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_cluster_part(
        &self,
        number: u64,
        cut: Cut,
        source: &str,
        lake_files: Vec<StagedFile>,
        (process, processes): (usize, usize),
        wait: Duration,
        abort: &dyn Fn() -> bool,
    ) -> Result<(u64, Option<Manifest>), CheckpointError> {
        let folder = folder_name(number);
        let (time, watermark) = (cut.time.0, cut.watermark);
        let (mut total, parts, egress) = self.write_parts(number, cut, process == 0)?;
        let share = ProcessPart { process, parts, egress, lake_files };
        let json = serde_json::to_vec(&share).map_err(|e| CheckpointError::Store(e.to_string()))?;
        total += json.len() as u64;
        self.put(&format!("{folder}/process-{process}.json"), json)?;
        let deadline = Instant::now() + wait;
        let waiting = |what: &str| -> Result<(), CheckpointError> {
            if abort() {
                return Err(CheckpointError::Store(format!("checkpoint {number}: the pipeline stopped ({what})")));
            }
            // A process whose share failed (its outputs not delivered, its store down) says so:
            // the others give this checkpoint up at once rather than at the deadline, and stay
            // in step for the next one.
            if let Some(reason) = self.get(&format!("{folder}/{ABANDONED}"))? {
                return Err(CheckpointError::Abandoned { number, reason: String::from_utf8_lossy(&reason).into() });
            }
            if Instant::now() >= deadline {
                return Err(CheckpointError::Store(format!(
                    "checkpoint {number}: {what} not there within {:.0} s",
                    wait.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        };
        if process != 0 {
            while self.get(&format!("{folder}/{MANIFEST}"))?.is_none() {
                waiting("the manifest (process 0 writes it)")?;
            }
            return Ok((total, None));
        }
        let mut shares = vec![share];
        for other in 1..processes {
            let bytes = loop {
                match self.get(&format!("{folder}/process-{other}.json"))? {
                    Some(bytes) => break bytes,
                    None => waiting(&format!("process {other}'s part"))?,
                }
            };
            let part: ProcessPart = serde_json::from_slice(&bytes)
                .map_err(|e| CheckpointError::Store(format!("{folder}/process-{other}.json: {e}")))?;
            shares.push(part);
        }
        self.hang_if_asked(number);
        let mut parts: Vec<PartEntry> = shares.iter().flat_map(|s| s.parts.iter().cloned()).collect();
        let worker_of = |p: &PartEntry| -> usize {
            p.file.trim_start_matches("worker-").trim_end_matches(".bin.zst").parse().unwrap_or(usize::MAX)
        };
        parts.sort_by_key(worker_of);
        let egress = shares[0].egress.clone().ok_or_else(|| CheckpointError::Store("no egress part".into()))?;
        let lake_files = shares.into_iter().flat_map(|s| s.lake_files).collect();
        let manifest = Manifest::new(number, (time, watermark), source, (parts, egress), lake_files, processes);
        total += self.put_manifest(&manifest)?;
        Ok((total, Some(manifest)))
    }

    /// Marks a cluster's checkpoint `number` as given up by `process` (best effort): the other
    /// processes stop waiting for its share or its manifest. A folder with the marker and
    /// without a manifest is incomplete like any other; one with a manifest is complete.
    pub(crate) fn abandon(&self, number: u64, process: usize, reason: &str) {
        let text = format!("process {process}: {reason}");
        if let Err(e) = self.put(&format!("{}/{ABANDONED}", folder_name(number)), text.into_bytes()) {
            tracing::warn!("checkpoint {number}: could not mark it abandoned: {e}");
        }
    }

    /// Deletes every checkpoint folder but the newest `kept` complete ones (and incomplete
    /// folders older than the oldest kept).
    fn retain(&self, kept: usize) -> Result<(), CheckpointError> {
        let numbers = self.numbers()?;
        let complete: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|n| matches!(self.get(&format!("{}/{MANIFEST}", folder_name(*n))), Ok(Some(_))))
            .collect();
        let Some(&oldest_kept) = complete.iter().rev().nth(kept.max(1) - 1).or(complete.first()) else { return Ok(()) };
        for number in numbers.into_iter().filter(|n| *n < oldest_kept) {
            self.delete_folder(number)?;
        }
        Ok(())
    }
}

/// Publishes staged lake files (moves them into their partitions); a file already moved is
/// skipped, so this can be repeated.
pub fn publish(lake: &Lake, files: &[StagedFile], runtime: &tokio::runtime::Runtime) -> Result<(), CheckpointError> {
    let (store, prefix) = lake.store();
    let path = |rel: &str| -> StorePath { prefix.parts().chain(StorePath::from(rel).parts()).collect() };
    runtime.block_on(async {
        for f in files {
            match store.rename(&path(&f.staged), &path(&f.path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CheckpointError::Store(format!("publishing {}: {e}", f.path))),
            }
        }
        Ok(())
    })
}

/// Brings the lake to exactly what the restored checkpoint committed: publishes its files
/// (if a crash came before), deletes published files of later checkpoints (a restore of an
/// older one) and clears the staging area. Without a restored checkpoint (`None`), only the
/// staging area is cleared.
pub fn restore_lake(lake: &Lake, restored: Option<&Manifest>) -> Result<(), CheckpointError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CheckpointError::Store(e.to_string()))?;
    if let Some(m) = restored {
        publish(lake, &m.lake_files, &runtime)?;
    }
    let (store, prefix) = lake.store();
    let base = restored.map(|m| m.number);
    runtime
        .block_on(async {
            let all: Vec<StorePath> = store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await?;
            let staging: StorePath = prefix.parts().chain(StorePath::from(STAGING).parts()).collect();
            let checkpoints: StorePath = prefix.parts().chain(StorePath::from("_checkpoints").parts()).collect();
            let mut removed = 0usize;
            for path in all {
                if path.prefix_matches(&checkpoints) {
                    continue;
                }
                let stale = path.prefix_matches(&staging)
                    || base.is_some_and(|base| path.filename().and_then(file_epoch).is_some_and(|epoch| epoch > base));
                if stale {
                    store.delete(&path).await?;
                    removed += 1;
                }
            }
            if removed > 0 {
                tracing::info!("lake: removed {removed} files no checkpoint committed");
            }
            Ok::<_, object_store::Error>(())
        })
        .map_err(|e| CheckpointError::Store(e.to_string()))
}

/// Checkpoint metrics, rendered in Prometheus' text format.
#[derive(Default)]
pub struct CheckpointMetrics {
    /// Duration histogram: counts per bucket of [`BUCKETS`], sum in µs, count.
    seconds: Mutex<(Vec<u64>, u64, u64)>,
    bytes: AtomicU64,
    last_success_ms: AtomicI64,
    failures: AtomicU64,
    restore_ms: AtomicI64,
    /// Checkpoints skipped at restore because they were damaged or incomplete.
    pub skipped: AtomicU64,
    /// The newest durable checkpoint.
    last_number: AtomicU64,
}

const BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

impl CheckpointMetrics {
    fn observe(&self, d: Duration) {
        let mut h = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += d.as_micros() as u64;
        h.2 += 1;
    }

    /// Sets the restore duration.
    pub fn restored(&self, d: Duration) {
        self.restore_ms.store(d.as_millis() as i64, Ordering::Relaxed);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (buckets, sum_us, count) = self.seconds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP treeai_checkpoint_seconds Time from a checkpoint's cut to it being durable.");
        let _ = writeln!(out, "# TYPE treeai_checkpoint_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "treeai_checkpoint_seconds_bucket{{le=\"{b}\"}} {}",
                buckets.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "treeai_checkpoint_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "treeai_checkpoint_seconds_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "treeai_checkpoint_seconds_count {count}");
        let gauges = [
            ("treeai_checkpoint_bytes", "Size of the newest checkpoint.", self.bytes.load(Ordering::Relaxed) as f64),
            (
                "treeai_checkpoint_last_success_timestamp_seconds",
                "When the newest checkpoint became durable, epoch seconds.",
                self.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            (
                "treeai_restore_seconds",
                "Time this run took to load and apply its restore point.",
                self.restore_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            (
                "treeai_checkpoint_number",
                "Number of the newest durable checkpoint.",
                self.last_number.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP treeai_checkpoint_failures_total Checkpoints that could not be written.\n# TYPE treeai_checkpoint_failures_total counter\ntreeai_checkpoint_failures_total {}",
            self.failures.load(Ordering::Relaxed)
        );
        out
    }
}

/// Sends cuts to the writer thread.
struct ToWriter(Mutex<mpsc::Sender<Cut>>);

impl Persist for ToWriter {
    fn persist(&self, cut: Cut) {
        if self.0.lock().unwrap_or_else(|p| p.into_inner()).send(cut).is_err() {
            tracing::error!("checkpoint writer is gone; a checkpoint is not written");
        }
    }
}

/// The checkpointing of one pipeline: the coordinator, the writer thread and the timer.
pub struct Checkpointer {
    /// The coordinator the runtime uses.
    pub hub: Arc<Checkpoints>,
    /// The metrics.
    pub metrics: Arc<CheckpointMetrics>,
    /// A fatal error of the writer (the lake could not commit): the pipeline stops.
    pub fatal: Arc<Mutex<Option<String>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    timer_stop: Arc<AtomicBool>,
    writer_stop: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the writer (and, with a non-zero interval, the timer) for `hub`'s checkpoints.
    /// `shutdown` is set when the writer fails fatally. In a cluster (`cluster`: this process,
    /// processes, this process's workers) the processes write each checkpoint together, and
    /// only process 0 runs the timer (the others' workers follow its requests).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &CheckpointConfig,
        store: CheckpointStore,
        restore: Option<Restore>,
        targets: CommitTargets,
        source: &str,
        metrics: Arc<CheckpointMetrics>,
        shutdown: Arc<AtomicBool>,
        cluster: Option<(usize, usize, usize)>,
    ) -> Checkpointer {
        let (tx, rx) = mpsc::channel::<Cut>();
        let base = match &restore {
            Some(r) => r.number,
            // A fresh start numbers on after every checkpoint already there, so neither its
            // checkpoints nor its lake files replace earlier ones.
            None => store.numbers().ok().and_then(|n| n.last().copied()).unwrap_or(0),
        };
        let mut hub = Checkpoints::new(Box::new(ToWriter(Mutex::new(tx))), restore, base);
        if let Some((process, processes, workers)) = cluster {
            hub = hub.with_cluster(process, processes, workers);
        }
        let hub = Arc::new(hub);
        let cluster = cluster.map(|(p, n, _)| (p, n)).filter(|(_, n)| *n > 1);
        if config.interval > Duration::ZERO {
            // Three intervals and some slack without a durable checkpoint: /readyz says so.
            hub.set_stale_after(config.interval * 3 + Duration::from_secs(10));
        }
        metrics.last_number.store(hub.base(), Ordering::Relaxed);
        let fatal: Arc<Mutex<Option<String>>> = Arc::default();
        let weak: Weak<Checkpoints> = Arc::downgrade(&hub);
        let (kept, source) = (config.kept, source.to_string());
        let (w_metrics, w_fatal) = (metrics.clone(), fatal.clone());
        let w_shutdown = shutdown.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let w_stop = stop.clone();
        let writer = std::thread::Builder::new()
            .name("treeai-checkpoint".into())
            .spawn(move || {
                // Lake files sealed for a checkpoint that then failed go with the next one.
                let mut carried = Vec::new();
                // Files of durable checkpoints whose move into the lake failed, retried.
                let mut unpublished = Vec::new();
                loop {
                    let cut = match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(cut) => cut,
                        Err(mpsc::RecvTimeoutError::Timeout) if !w_stop.load(Ordering::SeqCst) => continue,
                        Err(_) => return,
                    };
                    let number = cut.number;
                    let started = cut.started;
                    let abort = || weak.upgrade().is_none_or(|h| h.failed());
                    // A span per checkpoint (exported with --otlp-endpoint).
                    let span = tracing::info_span!(
                        "checkpoint",
                        treeai.checkpoint = number,
                        treeai.bytes = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                    );
                    let _entered = span.enter();
                    let result = write_one(
                        &store,
                        cut,
                        (&source, cluster, &abort),
                        &targets,
                        kept,
                        (&mut carried, &mut unpublished),
                    );
                    let Some(hub) = weak.upgrade() else { return };
                    match result {
                        Ok(bytes) => {
                            span.record("treeai.bytes", bytes);
                            w_metrics.observe(started.elapsed());
                            w_metrics.bytes.store(bytes, Ordering::Relaxed);
                            w_metrics.last_success_ms.store(now_ms(), Ordering::Relaxed);
                            w_metrics.last_number.store(number, Ordering::Relaxed);
                            tracing::info!(
                                "checkpoint {number} durable: {bytes} bytes in {:.2} s",
                                started.elapsed().as_secs_f64()
                            );
                            hub.written(number, None);
                        }
                        Err(e) => {
                            span.record("otel.status_code", "ERROR");
                            w_metrics.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("checkpoint {number} failed: {e}");
                            // (Not again for a checkpoint another process gave up: its reason stays.)
                            let abandoned = matches!(e, WriteError::Store(CheckpointError::Abandoned { .. }));
                            if let Some((process, _)) = cluster.filter(|_| !abort() && !abandoned) {
                                store.abandon(number, process, &e.to_string());
                            }
                            let fatal = matches!(e, WriteError::Lake(_));
                            hub.written(number, Some(e.to_string()));
                            if fatal {
                                *w_fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                                hub.fail();
                                w_shutdown.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
            })
            .ok();
        let timer_stop = Arc::new(AtomicBool::new(false));
        if !config.interval.is_zero() && cluster.is_none_or(|(process, _)| process == 0) {
            let (hub, stop, interval) = (Arc::downgrade(&hub), timer_stop.clone(), config.interval);
            let _ = std::thread::Builder::new().name("treeai-checkpoint-timer".into()).spawn(move || {
                let mut next = Instant::now() + interval;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(next.saturating_duration_since(Instant::now())));
                    if Instant::now() < next {
                        continue;
                    }
                    let Some(hub) = hub.upgrade() else { return };
                    // One at a time: the next interval starts when this checkpoint is durable.
                    let n = hub.request();
                    let _ = hub.wait_durable(n, Duration::from_secs(3600));
                    next = Instant::now() + interval;
                }
            });
        }
        Checkpointer { hub, metrics, fatal, writer, timer_stop, writer_stop: stop }
    }

    /// Registers the checkpoint metrics for `/metrics`.
    pub fn register_metrics(&self, counters: &Counters) {
        let metrics = self.metrics.clone();
        counters.add_text(move || metrics.render());
    }

    /// After the workers stopped: waits for the final checkpoint (if one was taken) to be
    /// durable, then stops the timer and the writer. `Err` if it failed.
    pub fn finish(mut self, timeout: Duration) -> Result<(), String> {
        self.timer_stop.store(true, Ordering::SeqCst);
        let last = self.hub.stop_after();
        let result = if last > 0 && !self.hub.failed() { self.hub.wait_durable(last, timeout) } else { Ok(()) };
        self.writer_stop.store(true, Ordering::SeqCst);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        match self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(fatal) => Err(fatal),
            None => result,
        }
    }
}

/// Waits for the deliveries of the Kafka outputs before a checkpoint's manifest.
pub type OutputsFlush = Box<dyn Fn() -> Result<(), String> + Send>;

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Outputs(String),
    #[error("the lake cannot commit: {0}")]
    Lake(String),
    #[error(transparent)]
    Store(#[from] CheckpointError),
}

/// What a checkpoint commits besides its own files: the lake's staged files, and the
/// deliveries of the Kafka outputs it waits for.
pub struct CommitTargets {
    /// The lake (staged files published by each checkpoint).
    pub lake: Option<Arc<Lake>>,
    /// Waits for the Kafka outputs' deliveries.
    pub outputs: Option<OutputsFlush>,
}

/// How long a cluster's process waits for the others' shares of a checkpoint (process 0) or
/// for its manifest (the others).
const CLUSTER_WAIT: Duration = Duration::from_secs(300);

type ClusterSpec<'a> = (&'a str, Option<(usize, usize)>, &'a dyn Fn() -> bool);

fn write_one(
    store: &CheckpointStore,
    cut: Cut,
    (source, cluster, abort): ClusterSpec<'_>,
    targets: &CommitTargets,
    kept: usize,
    (carried, unpublished): (&mut Vec<StagedFile>, &mut Vec<StagedFile>),
) -> Result<u64, WriteError> {
    let number = cut.number;
    let (lake, outputs) = (targets.lake.as_deref(), targets.outputs.as_deref());
    if let Some(lake) = lake {
        carried.extend(lake.seal(number).map_err(WriteError::Lake)?);
    }
    // What the sinks sent before the cut must be delivered before the checkpoint counts.
    if let Some(flush) = outputs {
        flush().map_err(WriteError::Outputs)?;
    }
    let (bytes, manifest) = match cluster {
        None => store.write(number, cut, source, carried.clone())?,
        Some(cluster) => {
            let (bytes, manifest) =
                store.write_cluster_part(number, cut, source, carried.clone(), cluster, CLUSTER_WAIT, abort)?;
            carried.clear();
            match manifest {
                Some(manifest) => (bytes, manifest),
                // Not process 0: its files are in the manifest process 0 wrote, which publishes them.
                None => return Ok(bytes),
            }
        }
    };
    carried.clear();
    if let Some(lake) = lake {
        // The checkpoint is durable: files it lists but cannot move yet are published by a later
        // checkpoint (or by the restore of this one); moving twice is harmless.
        unpublished.extend(manifest.lake_files.iter().cloned());
        match publish(lake, unpublished, &store.runtime) {
            Ok(()) => unpublished.clear(),
            Err(e) => tracing::warn!("lake: {e}; retried with the next checkpoint"),
        }
    }
    if let Err(e) = store.retain(kept) {
        tracing::warn!("deleting old checkpoints: {e}");
    }
    Ok(bytes)
}

impl From<CheckpointError> for ConnectorError {
    fn from(e: CheckpointError) -> Self {
        ConnectorError::Checkpoint(e)
    }
}
