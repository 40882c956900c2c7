//! The lake sink: every valid event, every change of `tree_scores`, every
//! alert and every dead letter lands as Parquet under the lake root, in
//! Hive-style partitions (INTERFACES.md, Lake):
//!
//! | table | path under the root |
//! |---|---|
//! | readings | `readings/date=YYYY-MM-DD/hour=HH/` (of `ts`) |
//! | assessments | `assessments/date=YYYY-MM-DD/` (of `observed_at`) |
//! | trees | `trees/date=YYYY-MM-DD/` (of `updated_at`) |
//! | score_changes | `score_changes/date=YYYY-MM-DD/` (of the change's watermark) |
//! | alerts | `alerts/date=YYYY-MM-DD/` (of the alert's watermark) |
//! | deadletter | `deadletter/date=YYYY-MM-DD/` (of arrival) |
//!
//! A change or alert at a time with no watermark yet goes to
//! `date=__HIVE_DEFAULT_PARTITION__` (Hive's spelling of a null partition value).
//!
//! The root is a URL handled by `object_store`: a local path (default
//! `./lake`), `file://`, `s3://`, `gs://`, `az://`. Credentials and endpoints
//! come from [`LakeConfig::options`] and from the usual `AWS_*`, `GOOGLE_*`,
//! `AZURE_*` environment variables (e.g. `AWS_ENDPOINT`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true`).
//!
//! Each worker keeps one open file per (table, partition) and rolls it when
//! it holds [`LakeConfig::roll_bytes`] of input or is
//! [`LakeConfig::roll_interval`] old (checked at the end of every round), and
//! at the end of input. A file is one `put` of a complete Parquet file (atomic
//! on every store: a reader never sees it half-written). Names are a function
//! of the file's first row — `part-<source>-<offset>.parquet` for events,
//! `part-w000-<time>.parquet` for derived tables (written by the one egress
//! sink, in time order) — so writing the same
//! input range again replaces files rather than duplicating them
//! (exactly-once across crashes comes with checkpoints, which will record the
//! roll points).
//!
//! Partition columns live in the path only, as Hive does. Timestamps are
//! `Timestamp(ms, UTC)`.
//!
//! Where the work happens: a worker appends each row's fields straight into
//! Arrow builders of its open file (no copy of the event), and every
//! [`CHUNK_ROWS`] rows (or at the end of a round, from 8,192 rows) hands them
//! as one [`RecordBatch`] to an encoder thread. The encoder threads (one per
//! core, at most four) each keep the `ArrowWriter`s of the files given to them
//! and encode (and compress) chunks as they come, so encoding runs beside the
//! workers rather than on them and a file is mostly encoded by the time it
//! rolls; a rolled file's bytes go to the upload thread, which puts them,
//! retried with backoff on failure. Queues between the three are bounded: a
//! lake that is slow or down slows the pipeline down but never crashes it.

use crate::parquet_out::Codec;
use crate::ConnectorError;
use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use treeai_dataflows::event::{AssessmentEvent, Event, Position, Reading, TreeEvent};
use treeai_dataflows::runtime::background::{self, Priority};
use treeai_dataflows::runtime::Counters;
use treeai_dataflows::source::{Alert, DeadLetter, ScoreChange, Sink, SinkFactory, SinkRole};
use treeai_dataflows::time::{day_of, DataflowTime, HOUR_MS};
pub use treeai_schema::lake::{date_part, hour_part, open_store, Table};

/// Rows per record batch handed from a worker to an encoder thread.
pub const CHUNK_ROWS: usize = 65_536;
/// A chunk is also handed over once it holds this many bytes of input (dead letters can be large).
const CHUNK_BYTES: usize = 8 << 20;
/// At the end of a round, rows not handed over yet are handed over if there are at least this many.
const ROUND_ROWS: usize = 8_192;
/// Chunks waiting per encoder thread: the bound that makes a slow lake slow the workers down.
const ENCODE_QUEUE: usize = 8;
/// Encoded files waiting for the upload thread.
const UPLOAD_QUEUE: usize = 16;

/// Lake settings.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    /// The lake root: a local path or a `file://`, `s3://`, `gs://`, `az://` URL (default `./lake`).
    pub url: String,
    /// Parquet compression (default zstd; lz4 available).
    pub compression: Codec,
    /// Roll a file when the input written to it reaches this many bytes (default 64 MiB).
    pub roll_bytes: usize,
    /// Roll a file when its first row is this old (default 60 s).
    pub roll_interval: Duration,
    /// Extra `object_store` options (`aws_endpoint`, `aws_region`, `aws_allow_http`, ...).
    pub options: Vec<(String, String)>,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            url: "./lake".into(),
            compression: Codec::Zstd,
            roll_bytes: 64 << 20,
            roll_interval: Duration::from_secs(60),
            options: Vec::new(),
        }
    }
}

/// Counters of the lake writer.
#[derive(Debug, Default)]
pub struct LakeStats {
    /// Files written.
    pub files: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Failed put attempts (each retried).
    pub errors: AtomicU64,
    /// Files that could not be encoded (not written).
    pub encode_errors: AtomicU64,
}

/// Work for an encoder thread. Jobs of one file always go to the same encoder, in order.
enum EncodeJob {
    /// More rows of file `file` of `table` (opened by its first chunk).
    Append { file: u64, table: Table, batch: RecordBatch },
    /// File `file` is complete: close it and hand its bytes to the upload thread as `path`
    /// (staged for checkpoint `epoch`'s commit, when given).
    Finish { file: u64, path: StorePath, staged: Option<Staged> },
    /// File `file` is abandoned (its sink went away without closing).
    Discard { file: u64 },
    /// Acknowledged once everything before it is encoded and written.
    Barrier(mpsc::Sender<()>),
}

/// Work for the upload thread.
enum UploadJob {
    Put(StorePath, Vec<u8>, Option<Staged>),
    Barrier(mpsc::Sender<()>),
}

/// A file written to the staging area, to be published by checkpoint `epoch`'s commit.
#[derive(Clone, Debug)]
struct Staged {
    epoch: u64,
    /// Where it is published, relative to the lake root.
    path: String,
}

/// A staged file of a sealed checkpoint: published by moving `staged` to `path`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Where it was written, relative to the lake root (under [`STAGING`]).
    pub staged: String,
    /// Where it is published, relative to the lake root.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// The folder under the lake root where files wait for their checkpoint's commit.
pub const STAGING: &str = "_staging";

/// The checkpoint that published a lake file, from its name (`part-e<epoch>-...`); `None` for
/// files written without checkpoints.
pub fn file_epoch(name: &str) -> Option<u64> {
    let rest = name.rsplit('/').next()?.strip_prefix("part-e")?;
    rest.split('-').next()?.parse().ok()
}

/// Files per checkpoint epoch: written, waiting to be written, failed.
#[derive(Default)]
struct Epochs {
    outstanding: std::collections::BTreeMap<u64, usize>,
    files: std::collections::BTreeMap<u64, Vec<StagedFile>>,
    failed: Vec<String>,
}

/// The staging bookkeeping shared by the sinks, the encoders and the upload thread.
struct Commits {
    epochs: Mutex<Epochs>,
    changed: std::sync::Condvar,
    first_epoch: u64,
}

impl Commits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Epochs> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn begin(&self, epoch: u64) {
        *self.lock().outstanding.entry(epoch).or_default() += 1;
    }
    fn end(&self, epoch: u64, result: Result<StagedFile, String>) {
        let mut e = self.lock();
        if let Some(n) = e.outstanding.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                e.outstanding.remove(&epoch);
            }
        }
        match result {
            Ok(file) => e.files.entry(epoch).or_default().push(file),
            Err(error) => e.failed.push(error),
        }
        self.changed.notify_all();
    }
}

/// The background threads of one process's lake: encoders and the upload thread.
pub struct Lake {
    config: LakeConfig,
    prefix: StorePath,
    encoders: Mutex<Vec<mpsc::SyncSender<EncodeJob>>>,
    /// Rows handed to each encoder and not yet encoded (to give a new file to the least busy one).
    pending: Vec<Arc<AtomicUsize>>,
    next_file: AtomicU64,
    store: Arc<dyn ObjectStore>,
    /// With checkpoints: files are staged and published by each checkpoint's commit.
    commits: Option<Arc<Commits>>,
    /// Counters.
    pub stats: Arc<LakeStats>,
}

impl Lake {
    /// Opens the lake and starts its encoder and upload threads. Files are
    /// published as they are written.
    pub fn open(config: LakeConfig) -> Result<Arc<Lake>, ConnectorError> {
        Lake::open_with(config, None)
    }

    /// Opens the lake; with `first_epoch`, files go to the staging area
    /// ([`STAGING`]) and are published by the checkpoint they belong to
    /// ([`Lake::seal`]), the first being `first_epoch`.
    /// In a cluster: numbers this process's files from `process << 40`, so that the names of
    /// files written by different processes never collide.
    pub fn number_files_for_process(&self, process: usize) {
        self.next_file.store((process as u64) << 40, Ordering::Relaxed);
    }

    pub fn open_with(config: LakeConfig, first_epoch: Option<u64>) -> Result<Arc<Lake>, ConnectorError> {
        let (store, prefix) = open_store(&config.url, &config.options)?;
        let commits = first_epoch.map(|first_epoch| {
            Arc::new(Commits { epochs: Mutex::default(), changed: std::sync::Condvar::new(), first_epoch })
        });
        Lake::start(config, store, prefix, commits)
    }

    /// The lake's store and the root's path in it.
    pub fn store(&self) -> (Arc<dyn ObjectStore>, StorePath) {
        (self.store.clone(), self.prefix.clone())
    }

    /// Waits until every file of the checkpoints up to `epoch` is staged (every sink has
    /// cut `epoch` before this is called) and returns them, to be published by its commit.
    /// `Err` if a file could not be encoded: the lake cannot commit that checkpoint.
    pub fn seal(&self, epoch: u64) -> Result<Vec<StagedFile>, String> {
        let Some(commits) = &self.commits else { return Ok(Vec::new()) };
        let mut e = commits.lock();
        while e.outstanding.range(..=epoch).next().is_some() && e.failed.is_empty() {
            e = commits.changed.wait(e).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(error) = e.failed.first() {
            return Err(error.clone());
        }
        let later = e.files.split_off(&(epoch + 1));
        let sealed = std::mem::replace(&mut e.files, later);
        Ok(sealed.into_values().flatten().collect())
    }

    /// Starts the threads of a lake on `store` under `prefix`.
    fn start(
        config: LakeConfig,
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        commits: Option<Arc<Commits>>,
    ) -> Result<Arc<Lake>, ConnectorError> {
        let thread_error = |what: &str, e: std::io::Error| ConnectorError::Output(format!("lake {what} thread: {e}"));
        let stats = Arc::new(LakeStats::default());
        let (upload_tx, upload_rx) = mpsc::sync_channel::<UploadJob>(UPLOAD_QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::Output(format!("lake runtime: {e}")))?;
        let upload_stats = stats.clone();
        let (upload_store, upload_commits, upload_prefix) = (store.clone(), commits.clone(), prefix.clone());
        std::thread::Builder::new()
            .name("treeai-lake".into())
            .spawn(move || {
                while let Ok(job) = upload_rx.recv() {
                    match job {
                        UploadJob::Barrier(done) => {
                            let _ = done.send(());
                        }
                        UploadJob::Put(path, bytes, None) => {
                            runtime.block_on(put_with_retry(&*upload_store, &path, bytes, &upload_stats, 20));
                        }
                        UploadJob::Put(path, bytes, Some(staged)) => {
                            // A staged file is retried until it lands: its checkpoint waits for it.
                            let len = bytes.len() as u64;
                            runtime.block_on(put_with_retry(&*upload_store, &path, bytes, &upload_stats, u32::MAX));
                            let relative = relative_to(&upload_prefix, &path);
                            if let Some(commits) = &upload_commits {
                                let file = StagedFile { staged: relative, path: staged.path, bytes: len };
                                commits.end(staged.epoch, Ok(file));
                            }
                        }
                    }
                }
            })
            .map_err(|e| thread_error("upload", e))?;
        let count = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let mut encoders = Vec::with_capacity(count);
        let mut pending = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = mpsc::sync_channel::<EncodeJob>(ENCODE_QUEUE);
            let encoder = Encoder {
                commits: commits.clone(),
                codec: config.compression,
                uploads: upload_tx.clone(),
                pending: Arc::new(AtomicUsize::new(0)),
                stats: stats.clone(),
                open: HashMap::new(),
                failed: HashMap::new(),
            };
            pending.push(encoder.pending.clone());
            // Encoders run under `SCHED_IDLE`: Parquet encoding takes CPU the workers leave
            // idle, so landing the lake never delays view updates; if it falls behind, its
            // bounded queue fills and holds the workers back.
            background::spawn(&format!("treeai-lake-encode-{i}"), Priority::Idle, move || encoder.run(rx))
                .map_err(|e| thread_error("encoder", e))?;
            encoders.push(tx);
        }
        Ok(Arc::new(Lake {
            config,
            prefix,
            encoders: Mutex::new(encoders),
            pending,
            next_file: AtomicU64::new(0),
            store,
            commits,
            stats,
        }))
    }

    fn senders(&self) -> Vec<mpsc::SyncSender<EncodeJob>> {
        self.encoders.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until every file handed over so far is written (or given up).
    pub fn wait(&self) {
        let (tx, rx) = mpsc::channel();
        let mut sent = 0;
        for encoder in self.senders() {
            if encoder.send(EncodeJob::Barrier(tx.clone())).is_ok() {
                sent += 1;
            } else {
                tracing::error!("lake encoder thread is gone");
            }
        }
        drop(tx);
        for _ in 0..sent {
            if rx.recv().is_err() {
                tracing::error!("lake upload thread is gone; files may not have been written");
                break;
            }
        }
    }

    /// Registers the lake's counters for `/metrics`: `treeai_lake_files_total`,
    /// `treeai_lake_bytes_total`, `treeai_lake_errors_total`.
    pub fn register_metrics(&self, counters: &Counters) {
        type Counter = (&'static str, &'static str, fn(&LakeStats) -> &AtomicU64);
        const COUNTERS: [Counter; 3] = [
            ("treeai_lake_files_total", "Parquet files written to the lake.", |s| &s.files),
            ("treeai_lake_bytes_total", "Bytes of Parquet written to the lake.", |s| &s.bytes),
            ("treeai_lake_errors_total", "Failed lake writes (each retried).", |s| &s.errors),
        ];
        for (name, help, counter) in COUNTERS {
            let stats = self.stats.clone();
            counters.add(name, help, move || counter(&stats).load(Ordering::Relaxed));
        }
    }

    /// A sink factory writing into this lake: worker sinks write the event
    /// tables and dead letters, the egress sink `score_changes` and `alerts`.
    pub fn sink_factory(self: &Arc<Self>) -> SinkFactory {
        let lake = self.clone();
        Arc::new(move |role| Box::new(LakeSink::new(lake.clone(), role)) as Box<dyn Sink>)
    }

    /// The encoder for a new file of `worker`: the one with the fewest rows waiting, the worker's own on a tie.
    fn pick_encoder(&self, worker: usize) -> usize {
        let n = self.pending.len().max(1);
        (0..n)
            .map(|i| (worker + i) % n)
            .min_by_key(|&e| self.pending.get(e).map_or(0, |p| p.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

/// Parquet writer settings of a file of `table` (the encoding is most of the lake's cost).
///
/// Readings: source positions and times are (nearly) increasing and mostly distinct, and sensor
/// values have thousands of distinct values, so a dictionary costs more than it saves for
/// them; positions and times are smaller delta-encoded. Every page of readings holds hundreds
/// of trees and sensors and all four metrics, so min/max statistics of `tree_id`, `sensor_id`
/// and `metric` would never prune a page or a file; computing them was a fifth of the encoding.
/// Other tables are small and keep the defaults (but for the delta-encoded positions).
fn writer_properties(codec: Codec, table: Table) -> WriterProperties {
    let (plain, delta, no_stats): (&[&str], &[&str], &[&str]) = match table {
        Table::Readings => (&["value"], &["ts", "source", "offset"], &["tree_id", "sensor_id", "metric"]),
        Table::Assessments | Table::Trees => (&[], &["source", "offset"], &[]),
        Table::ScoreChanges | Table::Alerts | Table::Deadletter | Table::Audit => (&[], &[], &[]),
    };
    let mut props = WriterProperties::builder().set_compression(codec.compression());
    for &column in plain.iter().chain(delta) {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    for &column in delta {
        props = props.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for &column in no_stats {
        props = props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    props.build()
}

/// `path` relative to the lake root `prefix`.
fn relative_to(prefix: &StorePath, path: &StorePath) -> String {
    path.prefix_match(prefix)
        .map_or_else(|| path.to_string(), |parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
}

/// One encoder thread: the `ArrowWriter`s of the files given to it.
struct Encoder {
    commits: Option<Arc<Commits>>,
    codec: Codec,
    uploads: mpsc::SyncSender<UploadJob>,
    pending: Arc<AtomicUsize>,
    stats: Arc<LakeStats>,
    open: HashMap<u64, ArrowWriter<Vec<u8>>>,
    /// Files whose encoding failed, with the error (reported when the file is finished).
    failed: HashMap<u64, String>,
}

impl Encoder {
    fn run(mut self, jobs: mpsc::Receiver<EncodeJob>) {
        while let Ok(job) = jobs.recv() {
            match job {
                EncodeJob::Append { file, table, batch } => {
                    let rows = batch.num_rows();
                    self.append(file, table, &batch);
                    self.pending.fetch_sub(rows, Ordering::Relaxed);
                }
                EncodeJob::Finish { file, path, staged } => self.finish(file, path, staged),
                EncodeJob::Discard { file } => {
                    self.open.remove(&file);
                    self.failed.remove(&file);
                }
                EncodeJob::Barrier(done) => {
                    if self.uploads.send(UploadJob::Barrier(done)).is_err() {
                        tracing::error!("lake upload thread is gone");
                    }
                }
            }
        }
    }

    fn append(&mut self, file: u64, table: Table, batch: &RecordBatch) {
        if self.failed.contains_key(&file) {
            return;
        }
        let result = match self.open.entry(file) {
            std::collections::hash_map::Entry::Occupied(mut writer) => writer.get_mut().write(batch),
            std::collections::hash_map::Entry::Vacant(slot) => {
                ArrowWriter::try_new(Vec::new(), batch.schema(), Some(writer_properties(self.codec, table)))
                    .and_then(|writer| slot.insert(writer).write(batch))
            }
        };
        if let Err(e) = result {
            self.open.remove(&file);
            self.failed.insert(file, e.to_string());
        }
    }

    fn finish(&mut self, file: u64, path: StorePath, staged: Option<Staged>) {
        let bytes = match self.failed.remove(&file) {
            Some(e) => Err(e),
            None => match self.open.remove(&file) {
                Some(writer) => writer.into_inner().map_err(|e| e.to_string()),
                None => Err("no rows were handed over".to_string()),
            },
        };
        let fail = |commits: &Option<Arc<Commits>>, staged: Option<Staged>, error: String| {
            if let (Some(commits), Some(staged)) = (commits, staged) {
                commits.end(staged.epoch, Err(error));
            }
        };
        match bytes {
            Ok(bytes) => {
                if let Err(mpsc::SendError(job)) = self.uploads.send(UploadJob::Put(path.clone(), bytes, staged)) {
                    tracing::error!("lake upload thread is gone; a file was not written");
                    if let UploadJob::Put(_, _, staged) = job {
                        fail(&self.commits, staged, format!("{path}: the upload thread is gone"));
                    }
                }
            }
            Err(e) => {
                self.stats.encode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("lake: encoding {path} failed, file not written: {e}");
                fail(&self.commits, staged, format!("encoding {path} failed: {e}"));
            }
        }
    }
}

async fn put_with_retry(store: &dyn ObjectStore, path: &StorePath, bytes: Vec<u8>, stats: &LakeStats, attempts: u32) {
    let len = bytes.len() as u64;
    let payload = PutPayload::from(bytes);
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match store.put(path, payload.clone()).await {
            Ok(_) => {
                stats.files.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(len, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if attempt >= attempts {
                    tracing::error!("lake: giving up on {path} after {attempt} attempts: {e}");
                    return;
                }
                tracing::warn!("lake: writing {path} failed (attempt {attempt}), retrying in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The columns of a file being built: one Arrow builder per column, in schema order.
trait Columns: Default {
    /// Rows appended since the last [`Columns::finish`].
    fn len(&self) -> usize;
    /// The arrays of the rows appended so far; the builders start again empty.
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// A column builder that gives its array in the type of the lake's schema.
trait Column {
    fn finish_array(&mut self) -> ArrayRef;
}

macro_rules! column {
    ($($builder:ty),+) => {
        $(impl Column for $builder {
            fn finish_array(&mut self) -> ArrayRef {
                ArrayBuilder::finish(self)
            }
        })+
    };
}
column!(StringBuilder, Float64Builder, Int64Builder, BooleanBuilder, BinaryBuilder);

impl Column for TimestampMillisecondBuilder {
    fn finish_array(&mut self) -> ArrayRef {
        Arc::new(self.finish().with_timezone("UTC"))
    }
}

/// A struct of column builders named as the columns, in schema order, and its [`Columns`].
macro_rules! columns {
    ($name:ident { $first:ident: $first_builder:ty $(, $field:ident: $builder:ty)* $(,)? }) => {
        #[derive(Default)]
        struct $name {
            $first: $first_builder,
            $($field: $builder,)*
        }

        impl Columns for $name {
            fn len(&self) -> usize {
                ArrayBuilder::len(&self.$first)
            }
            fn finish(&mut self) -> Vec<ArrayRef> {
                vec![self.$first.finish_array() $(, self.$field.finish_array())*]
            }
        }
    };
}

fn push_position(source: &mut Int64Builder, offset: &mut Int64Builder, pos: Position) {
    source.append_value(i64::from(pos.source));
    offset.append_value(pos.offset as i64);
}

columns!(ReadingColumns {
    tree_id: StringBuilder,
    sensor_id: StringBuilder,
    metric: StringBuilder,
    value: Float64Builder,
    ts: TimestampMillisecondBuilder,
    source: Int64Builder,
    offset: Int64Builder,
});

impl ReadingColumns {
    fn push(&mut self, r: &Reading, pos: Position) {
        self.tree_id.append_value(&r.tree_id);
        self.sensor_id.append_value(&r.sensor_id);
        self.metric.append_value(r.metric.as_str());
        self.value.append_value(r.value.0);
        self.ts.append_value(r.ts);
        push_position(&mut self.source, &mut self.offset, pos);
    }
}

columns!(AssessmentColumns {
    assessment_id: StringBuilder,
    revision: Int64Builder,
    tree_id: StringBuilder,
    agent_id: StringBuilder,
    observed_at: TimestampMillisecondBuilder,
    likelihood_of_failure: StringBuilder,
    likelihood_of_impact: StringBuilder,
    consequences: StringBuilder,
    defect_count: Int64Builder,
    defect_severity_sum: Int64Builder,
    max_defect_severity: Int64Builder,
    crown_dieback_pct: Float64Builder,
    notes: StringBuilder,
    withdrawn: BooleanBuilder,
    source: Int64Builder,
    offset: Int64Builder,
});

impl AssessmentColumns {
    fn push(&mut self, a: &AssessmentEvent, notes: Option<&str>, pos: Position) {
        self.assessment_id.append_value(&a.assessment_id);
        self.revision.append_value(i64::from(a.revision));
        self.tree_id.append_value(&a.tree_id);
        self.agent_id.append_value(&a.agent_id);
        self.observed_at.append_value(a.observed_at);
        self.likelihood_of_failure.append_value(a.likelihood_of_failure.as_str());
        self.likelihood_of_impact.append_value(a.likelihood_of_impact.as_str());
        self.consequences.append_value(a.consequences.as_str());
        self.defect_count.append_value(i64::from(a.defect_count));
        self.defect_severity_sum.append_value(i64::from(a.defect_severity_sum));
        self.max_defect_severity.append_value(i64::from(a.max_defect_severity));
        self.crown_dieback_pct.append_value(a.crown_dieback_pct.0);
        self.notes.append_option(notes);
        self.withdrawn.append_value(a.withdrawn);
        push_position(&mut self.source, &mut self.offset, pos);
    }
}

columns!(TreeColumns {
    tree_id: StringBuilder,
    region: StringBuilder,
    species: StringBuilder,
    lat: Float64Builder,
    lon: Float64Builder,
    dbh_cm: Float64Builder,
    height_m: Float64Builder,
    target_occupancy: StringBuilder,
    baseline_tilt_deg: Float64Builder,
    baseline_sway_hz: Float64Builder,
    updated_at: TimestampMillisecondBuilder,
    deleted: BooleanBuilder,
    source: Int64Builder,
    offset: Int64Builder,
});

impl TreeColumns {
    fn push(&mut self, t: &TreeEvent, pos: Position) {
        self.tree_id.append_value(&t.tree_id);
        self.region.append_option(t.region.map(|r| r.as_str()));
        self.species.append_option(t.species.as_deref());
        self.lat.append_value(t.lat.0);
        self.lon.append_value(t.lon.0);
        self.dbh_cm.append_option(t.dbh_cm.map(|x| x.0));
        self.height_m.append_option(t.height_m.map(|x| x.0));
        self.target_occupancy.append_option(t.target_occupancy.map(|o| o.as_str()));
        self.baseline_tilt_deg.append_value(t.baseline_tilt_deg.0);
        self.baseline_sway_hz.append_option(t.baseline_sway_hz.map(|x| x.0));
        self.updated_at.append_value(t.updated_at);
        self.deleted.append_value(t.deleted);
        push_position(&mut self.source, &mut self.offset, pos);
    }
}

columns!(ScoreChangeColumns {
    tree_id: StringBuilder,
    region: StringBuilder,
    score: Float64Builder,
    band: StringBuilder,
    risk_rating: StringBuilder,
    base: Float64Builder,
    defect_penalty: Float64Builder,
    dieback_penalty: Float64Builder,
    tilt_penalty: Float64Builder,
    sway_penalty: Float64Builder,
    storm_penalty: Float64Builder,
    diff: Int64Builder,
    watermark: TimestampMillisecondBuilder,
    dataflow_time: Int64Builder,
});

impl ScoreChangeColumns {
    fn push(&mut self, c: &ScoreChange) {
        let s = &c.row.score;
        self.tree_id.append_value(&c.tree_id);
        self.region.append_value(c.row.region.as_str());
        self.score.append_value(s.score.0);
        self.band.append_value(s.band.as_str());
        self.risk_rating.append_value(s.risk_rating_str());
        self.base.append_value(s.base.0);
        self.defect_penalty.append_value(s.defect_penalty.0);
        self.dieback_penalty.append_value(s.dieback_penalty.0);
        self.tilt_penalty.append_value(s.tilt_penalty.0);
        self.sway_penalty.append_value(s.sway_penalty.0);
        self.storm_penalty.append_value(s.storm_penalty.0);
        self.diff.append_value(c.diff as i64);
        self.watermark.append_option(c.watermark);
        self.dataflow_time.append_value(c.time as i64);
    }
}

columns!(AlertColumns {
    kind: StringBuilder,
    tree_id: StringBuilder,
    region: StringBuilder,
    score: Float64Builder,
    band: StringBuilder,
    previous_band: StringBuilder,
    watermark: TimestampMillisecondBuilder,
    top_penalty: StringBuilder,
});

impl AlertColumns {
    fn push(&mut self, a: &Alert) {
        self.kind.append_value(a.kind.as_str());
        self.tree_id.append_value(&a.tree_id);
        self.region.append_option(a.region.map(|r| r.as_str()));
        self.score.append_option(a.score);
        self.band.append_value(a.band_str());
        self.previous_band.append_option(a.previous_band.map(|b| b.as_str()));
        self.watermark.append_option(a.watermark);
        self.top_penalty.append_value(a.top_penalty);
    }
}

columns!(DeadletterColumns {
    source: StringBuilder,
    position: Int64Builder,
    arrival_time: TimestampMillisecondBuilder,
    reason: StringBuilder,
    rule: StringBuilder,
    raw: BinaryBuilder,
});

impl DeadletterColumns {
    fn push(&mut self, d: &DeadLetter) {
        self.source.append_value(d.source.to_string());
        self.position.append_value(d.pos.offset as i64);
        self.arrival_time.append_value(d.arrival_ms);
        self.reason.append_value(&d.reason);
        self.rule.append_value(&d.label);
        self.raw.append_value(&d.raw);
    }
}

/// One open file of a worker: the rows not yet handed to its encoder, and how big and old it is.
struct OpenFile<C> {
    /// Its partition: the hour (readings) or day of its rows, `None` for the null partition.
    bucket: Option<i64>,
    table: Table,
    columns: C,
    schema: SchemaRef,
    /// Its id at the encoder.
    file: u64,
    encoder: usize,
    /// Where it is written.
    path: StorePath,
    /// With checkpoints: its epoch and where it is published.
    staged: Option<Staged>,
    /// Input bytes in the whole file (the roll rule) and in the rows not handed over yet.
    bytes: usize,
    chunk_bytes: usize,
    opened: Instant,
}

impl<C: Columns> OpenFile<C> {
    /// Counts `bytes` of input for the row just appended; hands the rows over once they make a chunk.
    fn added(&mut self, bytes: usize, lake: &Lake, encoders: &[mpsc::SyncSender<EncodeJob>]) {
        self.bytes += bytes;
        self.chunk_bytes += bytes;
        if self.columns.len() >= CHUNK_ROWS || self.chunk_bytes >= CHUNK_BYTES {
            self.hand_over(lake, encoders);
        }
    }

    /// Hands the rows not handed over yet to the encoder, as one record batch.
    /// Blocks while the encoder's queue is full (backpressure).
    fn hand_over(&mut self, lake: &Lake, encoders: &[mpsc::SyncSender<EncodeJob>]) {
        let rows = self.columns.len();
        self.chunk_bytes = 0;
        if rows == 0 {
            return;
        }
        let batch = match RecordBatch::try_new(self.schema.clone(), self.columns.finish()) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!("lake: rows for {} dropped: {e}", self.path);
                return;
            }
        };
        if let Some(pending) = lake.pending.get(self.encoder) {
            pending.fetch_add(rows, Ordering::Relaxed);
        }
        self.send(EncodeJob::Append { file: self.file, table: self.table, batch }, encoders);
    }

    fn send(&self, job: EncodeJob, encoders: &[mpsc::SyncSender<EncodeJob>]) {
        match encoders.get(self.encoder) {
            Some(encoder) if encoder.send(job).is_ok() => {}
            _ => tracing::error!("lake encoder thread is gone; {} is not written", self.path),
        }
    }
}

/// A worker's open files of one table.
struct Files<C> {
    table: Table,
    schema: SchemaRef,
    open: Vec<OpenFile<C>>,
    /// Index in `open` by bucket.
    index: HashMap<Option<i64>, usize>,
    /// Index in `open` of the file appended to last (most rows go to the same file as the previous one).
    last: usize,
}

impl<C: Columns> Files<C> {
    fn new(table: Table) -> Self {
        Files { table, schema: table.schema(), open: Vec::new(), index: HashMap::new(), last: 0 }
    }

    /// The open file of partition `bucket`, opened for a first row that gives its `partition` and `name`.
    fn get(
        &mut self,
        bucket: Option<i64>,
        lake: &Lake,
        worker: usize,
        epoch: Option<u64>,
        partition: impl FnOnce() -> String,
        name: impl FnOnce() -> String,
    ) -> &mut OpenFile<C> {
        let i = match self.open.get(self.last) {
            Some(f) if f.bucket == bucket => self.last,
            _ => match self.index.get(&bucket) {
                Some(&i) => i,
                None => {
                    let (name, partition) = (name(), partition());
                    let (written, staged) = match epoch {
                        None => (format!("{}/{partition}/{name}", self.table.name()), None),
                        Some(epoch) => {
                            // The file's id keeps names unique within a checkpoint even when two
                            // files start at the same row key (alerts at one watermark).
                            let id = lake.next_file.load(Ordering::Relaxed);
                            let rest = name.strip_prefix("part-").unwrap_or(&name).trim_end_matches(".parquet");
                            let name = format!("part-e{epoch:08}-{rest}-f{id}.parquet");
                            let path = format!("{}/{partition}/{name}", self.table.name());
                            (format!("{STAGING}/{path}"), Some(Staged { epoch, path }))
                        }
                    };
                    let path = lake.prefix.parts().chain(StorePath::from(written.as_str()).parts()).collect();
                    self.open.push(OpenFile {
                        bucket,
                        table: self.table,
                        columns: C::default(),
                        schema: self.schema.clone(),
                        file: lake.next_file.fetch_add(1, Ordering::Relaxed),
                        encoder: lake.pick_encoder(worker),
                        path,
                        staged,
                        bytes: 0,
                        chunk_bytes: 0,
                        opened: Instant::now(),
                    });
                    self.index.insert(bucket, self.open.len() - 1);
                    self.open.len() - 1
                }
            },
        };
        self.last = i;
        &mut self.open[i]
    }

    /// At the end of a round: closes the files that are due (all with `force`), their last rows
    /// and their end going to the encoder, and hands over the rows of the others once there are
    /// [`ROUND_ROWS`] (so that the encoders work on them while the dataflow computes the round).
    fn roll(&mut self, force: bool, lake: &Lake, encoders: &[mpsc::SyncSender<EncodeJob>]) {
        let config = &lake.config;
        let due = |f: &OpenFile<C>| force || f.bytes >= config.roll_bytes || f.opened.elapsed() >= config.roll_interval;
        if self.open.iter().any(due) {
            let (rolled, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open).into_iter().partition(due);
            self.open = kept;
            self.index = self.open.iter().enumerate().map(|(i, f)| (f.bucket, i)).collect();
            for mut f in rolled {
                f.hand_over(lake, encoders);
                if let (Some(commits), Some(staged)) = (&lake.commits, &f.staged) {
                    commits.begin(staged.epoch);
                }
                f.send(EncodeJob::Finish { file: f.file, path: f.path.clone(), staged: f.staged.clone() }, encoders);
            }
        }
        for f in self.open.iter_mut().filter(|f| f.columns.len() >= ROUND_ROWS) {
            f.hand_over(lake, encoders);
        }
    }

    /// Tells the encoders to forget the open files (the sink goes away without closing).
    fn discard(&mut self, encoders: &[mpsc::SyncSender<EncodeJob>]) {
        for f in self.open.drain(..) {
            if let Some(encoder) = encoders.get(f.encoder) {
                let _ = encoder.try_send(EncodeJob::Discard { file: f.file });
            }
        }
        self.index.clear();
    }
}

/// One worker's lake writer.
pub struct LakeSink {
    lake: Arc<Lake>,
    worker: usize,
    /// With checkpoints: the checkpoint the rows received now belong to.
    epoch: Option<u64>,
    encoders: Vec<mpsc::SyncSender<EncodeJob>>,
    readings: Files<ReadingColumns>,
    assessments: Files<AssessmentColumns>,
    trees: Files<TreeColumns>,
    score_changes: Files<ScoreChangeColumns>,
    alerts: Files<AlertColumns>,
    deadletter: Files<DeadletterColumns>,
}

impl LakeSink {
    fn new(lake: Arc<Lake>, role: SinkRole) -> Self {
        let worker = match role {
            SinkRole::Worker(i) => i,
            // The egress sink writes only the derived tables, which worker sinks never write.
            SinkRole::Egress => 0,
        };
        LakeSink {
            epoch: lake.commits.as_ref().map(|c| c.first_epoch),
            encoders: lake.senders(),
            lake,
            worker,
            readings: Files::new(Table::Readings),
            assessments: Files::new(Table::Assessments),
            trees: Files::new(Table::Trees),
            score_changes: Files::new(Table::ScoreChanges),
            alerts: Files::new(Table::Alerts),
            deadletter: Files::new(Table::Deadletter),
        }
    }

    fn roll(&mut self, force: bool) {
        let (lake, encoders) = (&*self.lake, &self.encoders[..]);
        self.readings.roll(force, lake, encoders);
        self.assessments.roll(force, lake, encoders);
        self.trees.roll(force, lake, encoders);
        self.score_changes.roll(force, lake, encoders);
        self.alerts.roll(force, lake, encoders);
        self.deadletter.roll(force, lake, encoders);
    }
}

fn event_name(pos: Position) -> String {
    format!("part-{:05}-{:012}.parquet", pos.source, pos.offset)
}

fn derived_name(worker: usize, time: u64) -> String {
    format!("part-w{worker:03}-{time:020}.parquet")
}

fn day_bucket(ms: Option<i64>) -> Option<i64> {
    ms.map(|ms| i64::from(day_of(ms)))
}

impl Sink for LakeSink {
    fn event(&mut self, event: &Event, pos: Position, _arrival_ms: i64) {
        let (lake, worker, encoders, epoch) = (&*self.lake, self.worker, &self.encoders[..], self.epoch);
        let name = || event_name(pos);
        match event {
            Event::Reading(r) => {
                let hour = Some(r.ts.div_euclid(HOUR_MS));
                let f = self.readings.get(hour, lake, worker, epoch, || hour_part(r.ts), name);
                f.columns.push(r, pos);
                f.added(96, lake, encoders);
            }
            Event::Assessment(a, notes) => {
                let at = Some(a.observed_at);
                let f = self.assessments.get(day_bucket(at), lake, worker, epoch, || date_part(at), name);
                f.columns.push(a, notes.as_deref(), pos);
                f.added(256 + notes.as_ref().map_or(0, String::len), lake, encoders);
            }
            Event::Tree(t) => {
                let at = Some(t.updated_at);
                let f = self.trees.get(day_bucket(at), lake, worker, epoch, || date_part(at), name);
                f.columns.push(t, pos);
                f.added(192, lake, encoders);
            }
        }
    }

    fn score_change(&mut self, change: &ScoreChange) {
        let (lake, worker, encoders, epoch) = (&*self.lake, self.worker, &self.encoders[..], self.epoch);
        let w = change.watermark;
        let name = || derived_name(worker, change.time);
        let f = self.score_changes.get(day_bucket(w), lake, worker, epoch, || date_part(w), name);
        f.columns.push(change);
        f.added(128, lake, encoders);
    }

    fn alert(&mut self, alert: Alert) {
        let (lake, worker, encoders, epoch) = (&*self.lake, self.worker, &self.encoders[..], self.epoch);
        let w = alert.watermark;
        let time = DataflowTime::new(w, 0).0;
        let f = self.alerts.get(day_bucket(w), lake, worker, epoch, || date_part(w), || derived_name(worker, time));
        f.columns.push(&alert);
        f.added(128, lake, encoders);
    }

    fn dead_letter(&mut self, letter: DeadLetter) {
        let (lake, worker, encoders, epoch) = (&*self.lake, self.worker, &self.encoders[..], self.epoch);
        let at = Some(letter.arrival_ms);
        let pos = letter.pos;
        let f = self.deadletter.get(day_bucket(at), lake, worker, epoch, || date_part(at), || event_name(pos));
        f.columns.push(&letter);
        f.added(letter.raw.len() + 64, lake, encoders);
    }

    fn flush(&mut self) {
        self.roll(false);
    }

    /// Rolls every open file: they hold rows of checkpoint `number` only; later rows go to new files.
    fn checkpoint(&mut self, number: u64) -> Vec<(String, i64)> {
        if self.epoch.is_some() {
            self.roll(true);
            self.epoch = Some(number + 1);
        }
        Vec::new()
    }

    fn close(&mut self) {
        self.roll(true);
        self.lake.wait();
    }
}

impl Drop for LakeSink {
    fn drop(&mut self) {
        let encoders = &self.encoders[..];
        self.readings.discard(encoders);
        self.assessments.discard(encoders);
        self.trees.discard(encoders);
        self.score_changes.discard(encoders);
        self.alerts.discard(encoders);
        self.deadletter.discard(encoders);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, GeneratorConfig};
    use arrow::array::{Array, Int64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use treeai_dataflows::parse::parse_event;
    use treeai_dataflows::rating::{Band, Score};
    use treeai_dataflows::source::AlertKind;
    use treeai_dataflows::views::ScoreRow;

    fn lake(root: &Path, roll_bytes: usize) -> Arc<Lake> {
        let config = LakeConfig { url: root.to_string_lossy().into_owned(), roll_bytes, ..Default::default() };
        Lake::open(config).unwrap()
    }

    /// Every file under `root` (relative path) with its record batches.
    fn files(root: &Path) -> BTreeMap<String, Vec<RecordBatch>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path: PathBuf = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
                let batches = reader.build().unwrap().map(Result::unwrap).collect();
                out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned(), batches);
            }
        }
        out
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        let mut out = Vec::new();
        for b in batches {
            let column = b.column_by_name("offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend(column.values().iter().copied());
        }
        out
    }

    fn score_change(time: u64, watermark: Option<i64>) -> ScoreChange {
        let score = Score {
            score: treeai_dataflows::event::F64(42.5),
            band: Band::of(42.5),
            risk_rating: None,
            base: treeai_dataflows::event::F64(50.0),
            defect_penalty: treeai_dataflows::event::F64(7.5),
            dieback_penalty: treeai_dataflows::event::F64(0.0),
            tilt_penalty: treeai_dataflows::event::F64(0.0),
            sway_penalty: treeai_dataflows::event::F64(0.0),
            storm_penalty: treeai_dataflows::event::F64(0.0),
        };
        let row = ScoreRow { region: treeai_dataflows::event::Region::EuWest, score };
        ScoreChange { tree_id: "T-1".into(), row, diff: 1, time, watermark }
    }

    #[test]
    fn every_table_lands_in_its_partitions_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path(), 64 << 20);
        let mut sink = (lake.sink_factory())(SinkRole::Worker(0));
        // 1 s before midnight: readings of two dates and two hours, more than a chunk in one of them.
        let config = GeneratorConfig { trees: 50, start_ms: 1_795_564_800_000 - 1_000, ..Default::default() };
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for (i, e) in Generator::new(config, 0, 1).take(2 * CHUNK_ROWS).enumerate() {
            let pos = Position { source: 0, offset: i as u64 };
            let event = parse_event(&e.json, None, pos).unwrap();
            let folder = match &event {
                Event::Reading(r) => format!("readings/{}", hour_part(r.ts)),
                Event::Assessment(a, _) => format!("assessments/{}", date_part(Some(a.observed_at))),
                Event::Tree(t) => format!("trees/{}", date_part(Some(t.updated_at))),
            };
            *expected.entry(folder).or_default() += 1;
            sink.event(&event, pos, 0);
        }
        sink.score_change(&score_change(7, Some(1_795_564_800_000)));
        sink.alert(Alert {
            kind: AlertKind::Critical,
            tree_id: "T-1".into(),
            region: None,
            score: Some(12.0),
            band: Some(treeai_dataflows::rating::Band::Critical),
            previous_band: None,
            watermark: None,
            top_penalty: "tilt",
            seq: 1,
        });
        sink.dead_letter(DeadLetter {
            raw: b"{oops".to_vec(),
            key: None,
            source: treeai_dataflows::source::SourceRef::File { path: "e.ndjson".into(), line: 3 },
            pos: Position { source: 0, offset: 2 },
            arrival_ms: 1_795_564_800_000,
            reason: "not JSON".into(),
            label: "json:syntax".into(),
        });
        sink.close();
        assert!(expected.keys().any(|k| k.starts_with("readings/date=2026-11-24/hour=23")));
        assert!(expected.keys().any(|k| k.starts_with("readings/date=2026-11-25/hour=00")));

        let files = files(dir.path());
        let mut landed: BTreeMap<String, usize> = BTreeMap::new();
        for (path, batches) in &files {
            let (table, _) = path.split_once('/').unwrap();
            let table = Table::ALL.into_iter().find(|t| t.name() == table).unwrap();
            for b in batches {
                assert_eq!(b.schema().fields(), table.schema().fields(), "{path}");
            }
            let (folder, _) = path.rsplit_once('/').unwrap();
            *landed.entry(folder.to_string()).or_default() += rows(batches);
            if matches!(table, Table::Readings | Table::Assessments | Table::Trees) {
                // Rows in input order; the file is named after its first row.
                let offsets = offsets(batches);
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{path}");
                assert!(path.ends_with(&event_name(Position { source: 0, offset: offsets[0] as u64 })), "{path}");
            }
        }
        expected.insert("score_changes/date=2026-11-25".into(), 1);
        expected.insert("alerts/date=__HIVE_DEFAULT_PARTITION__".into(), 1);
        expected.insert("deadletter/date=2026-11-25".into(), 1);
        assert_eq!(landed, expected);
        assert!(files.contains_key("score_changes/date=2026-11-25/part-w000-00000000000000000007.parquet"));
        let big = files.values().map(|b| rows(b)).max().unwrap();
        assert!(big > CHUNK_ROWS, "one file spans several chunks ({big} rows)");
        assert_eq!(lake.stats.files.load(Ordering::Relaxed), files.len() as u64);
        assert_eq!(lake.stats.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn files_roll_by_size_and_are_named_after_their_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path(), 96 * 1_000);
        let mut sink = (lake.sink_factory())(SinkRole::Worker(0));
        let config = GeneratorConfig { trees: 50, ..Default::default() };
        let readings = Generator::new(config, 0, 1)
            .enumerate()
            .filter_map(|(i, e)| {
                let pos = Position { source: 1, offset: i as u64 };
                match parse_event(&e.json, None, pos) {
                    Ok(event) if matches!(&event, Event::Reading(r) if r.ts >= 1_795_564_800_000) => Some((event, pos)),
                    _ => None,
                }
            })
            .take(2_500);
        let mut firsts = Vec::new();
        for (n, (event, pos)) in readings.enumerate() {
            if n % 1_000 == 0 {
                firsts.push(pos);
            }
            sink.event(&event, pos, 0);
            if n % 500 == 499 {
                sink.flush(); // the roll rule is checked at the end of a round
            }
        }
        sink.close();
        let files = files(dir.path());
        let names: Vec<String> =
            firsts.iter().map(|&p| format!("readings/date=2026-11-25/hour=00/{}", event_name(p))).collect();
        assert_eq!(files.keys().cloned().collect::<Vec<_>>(), names);
        assert_eq!(files.values().map(|b| rows(b)).collect::<Vec<_>>(), [1_000, 1_000, 500]);
    }

    #[test]
    fn a_failing_store_is_retried_until_the_file_lands() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path(), 64 << 20);
        // A file where the table's folder should be: every put under it fails until it is removed.
        let blocker = dir.path().join("score_changes");
        std::fs::write(&blocker, b"in the way").unwrap();
        let writer = {
            let factory = lake.sink_factory();
            std::thread::spawn(move || {
                let mut sink = factory(SinkRole::Worker(0));
                sink.score_change(&score_change(1, Some(1_795_564_800_000)));
                sink.close(); // waits until the file is written
            })
        };
        let started = Instant::now();
        while lake.stats.errors.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "no failed attempt");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!writer.is_finished(), "close waits for the file");
        std::fs::remove_file(&blocker).unwrap();
        writer.join().unwrap();
        let files = files(dir.path());
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["score_changes/date=2026-11-25/part-w000-00000000000000000001.parquet"]
        );
        assert_eq!(lake.stats.files.load(Ordering::Relaxed), 1);
    }
}
