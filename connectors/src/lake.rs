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
//! Each worker buffers rows per (table, partition) and rolls a file when its
//! buffer reaches [`LakeConfig::roll_bytes`] of input or
//! [`LakeConfig::roll_interval`] of age, and at the end of input. A file is
//! one `put` of a complete Parquet file (atomic on every store: a reader never
//! sees it half-written). Names are a function of the file's first row —
//! `part-<source>-<offset>.parquet` for events, `part-w<worker>-<time>.parquet`
//! for derived tables — so writing the same input range again replaces files
//! rather than duplicating them (exactly-once across crashes comes with
//! checkpoints, which will record the roll points).
//!
//! Partition columns live in the path only, as Hive does. Timestamps are
//! `Timestamp(ms, UTC)`. Uploads run on a background thread, retried with
//! backoff on failure; a lake that is down slows the pipeline down (bounded
//! queue) but never crashes it.

use crate::arrow_views::{batch, deadletter_batch, floats, ints, strings, times, ts_type, Codec};
use crate::ConnectorError;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use treeai_dataflows::event::{AssessmentEvent, Event, Position, Reading, TreeEvent};
use treeai_dataflows::source::{Alert, DeadLetter, ScoreChange, Sink, SinkFactory};
use treeai_dataflows::time::{format_day, DataflowTime};

/// Lake settings.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    /// The lake root: a local path or a `file://`, `s3://`, `gs://`, `az://` URL (default `./lake`).
    pub url: String,
    /// Parquet compression (default zstd; lz4 available).
    pub compression: Codec,
    /// Roll a file when its buffered input reaches this many bytes (default 64 MiB).
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
}

/// Opens the object store of a lake URL: the store and the path prefix inside it.
pub fn open_store(
    url: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, StorePath), ConnectorError> {
    let bad = |e: String| ConnectorError::Output(format!("lake {url}: {e}"));
    let has_scheme = url.contains("://");
    if !has_scheme || url.starts_with("file://") {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
        return Ok((Arc::new(store), StorePath::default()));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    opts.extend(options.iter().cloned());
    let (store, path) = object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(e.to_string()))?;
    Ok((Arc::from(store), path))
}

enum Job {
    Put(StorePath, Vec<u8>),
    Barrier(mpsc::Sender<()>),
}

/// The shared upload thread of one process's lake.
pub struct Lake {
    config: LakeConfig,
    prefix: StorePath,
    jobs: Mutex<mpsc::SyncSender<Job>>,
    /// Counters.
    pub stats: Arc<LakeStats>,
}

impl Lake {
    /// Opens the lake and starts its upload thread.
    pub fn open(config: LakeConfig) -> Result<Arc<Lake>, ConnectorError> {
        let (store, prefix) = open_store(&config.url, &config.options)?;
        let (tx, rx) = mpsc::sync_channel::<Job>(64);
        let stats = Arc::new(LakeStats::default());
        let thread_stats = stats.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::Output(format!("lake runtime: {e}")))?;
        std::thread::Builder::new()
            .name("treeai-lake".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Barrier(done) => {
                            let _ = done.send(());
                        }
                        Job::Put(path, bytes) => runtime.block_on(put_with_retry(&*store, &path, bytes, &thread_stats)),
                    }
                }
            })
            .map_err(|e| ConnectorError::Output(format!("lake thread: {e}")))?;
        Ok(Arc::new(Lake { config, prefix, jobs: Mutex::new(tx), stats }))
    }

    fn send(&self, job: Job) {
        let tx = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if tx.send(job).is_err() {
            tracing::error!("lake upload thread is gone; a file was not written");
        }
    }

    /// Waits until every file handed over so far is written (or given up).
    pub fn wait(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Barrier(tx));
        let _ = rx.recv();
    }

    /// A sink factory writing into this lake.
    pub fn sink_factory(self: &Arc<Self>) -> SinkFactory {
        let lake = self.clone();
        Arc::new(move |worker| Box::new(LakeSink::new(lake.clone(), worker)) as Box<dyn Sink>)
    }
}

async fn put_with_retry(store: &dyn ObjectStore, path: &StorePath, bytes: Vec<u8>, stats: &LakeStats) {
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
                if attempt >= 20 {
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

/// The lake tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `readings`
    Readings,
    /// `assessments`
    Assessments,
    /// `trees`
    Trees,
    /// `score_changes`
    ScoreChanges,
    /// `alerts`
    Alerts,
    /// `deadletter`
    Deadletter,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 6] =
        [Table::Readings, Table::Assessments, Table::Trees, Table::ScoreChanges, Table::Alerts, Table::Deadletter];
    /// Folder name under the root.
    pub fn name(self) -> &'static str {
        match self {
            Table::Readings => "readings",
            Table::Assessments => "assessments",
            Table::Trees => "trees",
            Table::ScoreChanges => "score_changes",
            Table::Alerts => "alerts",
            Table::Deadletter => "deadletter",
        }
    }
}

impl Table {
    /// The Arrow schema of the table's files (partition columns excluded: they are in the path).
    pub fn schema(self) -> arrow::datatypes::SchemaRef {
        let rows = match self {
            Table::Readings => Rows::Readings(Vec::new()),
            Table::Assessments => Rows::Assessments(Vec::new()),
            Table::Trees => Rows::Trees(Vec::new()),
            Table::ScoreChanges => Rows::ScoreChanges(Vec::new()),
            Table::Alerts => Rows::Alerts(Vec::new()),
            Table::Deadletter => Rows::Deadletter(Vec::new()),
        };
        rows_batch(&rows).schema()
    }
    /// The Hive partition columns of the table, outermost first.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Readings => &["date", "hour"],
            _ => &["date"],
        }
    }
}

const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

fn date_part(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format!("date={}", format_day(treeai_dataflows::time::day_of(ms))),
        None => format!("date={NULL_PARTITION}"),
    }
}

enum Rows {
    Readings(Vec<(Reading, Position)>),
    Assessments(Vec<(AssessmentEvent, Option<String>, Position)>),
    Trees(Vec<(TreeEvent, Position)>),
    ScoreChanges(Vec<ScoreChange>),
    Alerts(Vec<Alert>),
    Deadletter(Vec<DeadLetter>),
}

struct Buffer {
    rows: Rows,
    bytes: usize,
    opened: Instant,
    name: String,
}

/// One worker's lake writer.
pub struct LakeSink {
    lake: Arc<Lake>,
    worker: usize,
    buffers: HashMap<(Table, String), Buffer>,
}

impl LakeSink {
    fn new(lake: Arc<Lake>, worker: usize) -> Self {
        LakeSink { lake, worker, buffers: HashMap::new() }
    }

    fn buffer(&mut self, table: Table, partition: String, name: impl FnOnce() -> String) -> &mut Buffer {
        self.buffers.entry((table, partition)).or_insert_with(|| Buffer {
            rows: match table {
                Table::Readings => Rows::Readings(Vec::new()),
                Table::Assessments => Rows::Assessments(Vec::new()),
                Table::Trees => Rows::Trees(Vec::new()),
                Table::ScoreChanges => Rows::ScoreChanges(Vec::new()),
                Table::Alerts => Rows::Alerts(Vec::new()),
                Table::Deadletter => Rows::Deadletter(Vec::new()),
            },
            bytes: 0,
            opened: Instant::now(),
            name: name(),
        })
    }

    fn roll(&mut self, force: bool) {
        let config = &self.lake.config;
        let due: Vec<(Table, String)> = self
            .buffers
            .iter()
            .filter(|(_, b)| force || b.bytes >= config.roll_bytes || b.opened.elapsed() >= config.roll_interval)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(buffer) = self.buffers.remove(&key) else { continue };
            let batch = rows_batch(&buffer.rows);
            match encode(&batch, config.compression) {
                Ok(bytes) => {
                    let path = format!("{}/{}/{}", key.0.name(), key.1, buffer.name);
                    let full =
                        self.lake.prefix.parts().chain(StorePath::from(path.as_str()).parts()).collect::<StorePath>();
                    self.lake.send(Job::Put(full, bytes));
                }
                Err(e) => tracing::error!("lake: encoding {} failed: {e}", key.0.name()),
            }
        }
    }
}

fn event_name(pos: Position) -> String {
    format!("part-{:05}-{:012}.parquet", pos.source, pos.offset)
}

impl Sink for LakeSink {
    fn event(&mut self, event: &Event, pos: Position, _arrival_ms: i64) {
        match event {
            Event::Reading(r) => {
                let hour = r.ts.rem_euclid(86_400_000) / 3_600_000;
                let part = format!("{}/hour={hour:02}", date_part(Some(r.ts)));
                let b = self.buffer(Table::Readings, part, || event_name(pos));
                b.bytes += 96;
                if let Rows::Readings(v) = &mut b.rows {
                    v.push((r.clone(), pos));
                }
            }
            Event::Assessment(a, notes) => {
                let b = self.buffer(Table::Assessments, date_part(Some(a.observed_at)), || event_name(pos));
                b.bytes += 256 + notes.as_ref().map_or(0, String::len);
                if let Rows::Assessments(v) = &mut b.rows {
                    v.push((a.clone(), notes.clone(), pos));
                }
            }
            Event::Tree(t) => {
                let b = self.buffer(Table::Trees, date_part(Some(t.updated_at)), || event_name(pos));
                b.bytes += 192;
                if let Rows::Trees(v) = &mut b.rows {
                    v.push((t.clone(), pos));
                }
            }
        }
    }

    fn score_change(&mut self, change: &ScoreChange) {
        let worker = self.worker;
        let b = self.buffer(Table::ScoreChanges, date_part(change.watermark), || {
            format!("part-w{worker:03}-{:020}.parquet", change.time)
        });
        b.bytes += 128;
        if let Rows::ScoreChanges(v) = &mut b.rows {
            v.push(change.clone());
        }
    }

    fn alert(&mut self, alert: Alert) {
        let worker = self.worker;
        let time = DataflowTime::new(alert.watermark, 0).0;
        let b =
            self.buffer(Table::Alerts, date_part(alert.watermark), || format!("part-w{worker:03}-{time:020}.parquet"));
        b.bytes += 128;
        if let Rows::Alerts(v) = &mut b.rows {
            v.push(alert);
        }
    }

    fn dead_letter(&mut self, letter: DeadLetter) {
        let pos = letter.pos;
        let b = self.buffer(Table::Deadletter, date_part(Some(letter.arrival_ms)), || event_name(pos));
        b.bytes += letter.raw.len() + 64;
        if let Rows::Deadletter(v) = &mut b.rows {
            v.push(letter);
        }
    }

    fn flush(&mut self) {
        self.roll(false);
    }

    fn close(&mut self) {
        self.roll(true);
        self.lake.wait();
    }
}

fn encode(batch: &RecordBatch, codec: Codec) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::None => Compression::UNCOMPRESSED,
    };
    let props = WriterProperties::builder().set_compression(compression).build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

use DataType::{Boolean as B, Float64 as F, Int64 as I, Utf8 as S};

fn bools(v: impl IntoIterator<Item = bool>) -> arrow::array::ArrayRef {
    Arc::new(arrow::array::BooleanArray::from_iter(v.into_iter().map(Some)))
}

fn rows_batch(rows: &Rows) -> RecordBatch {
    match rows {
        Rows::Readings(v) => batch(
            vec![
                ("tree_id", S, false),
                ("sensor_id", S, false),
                ("metric", S, false),
                ("value", F, false),
                ("ts", ts_type(), false),
                ("source", I, false),
                ("offset", I, false),
            ],
            vec![
                strings(v.iter().map(|(r, _)| Some(r.tree_id.as_str()))),
                strings(v.iter().map(|(r, _)| Some(r.sensor_id.as_str()))),
                strings(v.iter().map(|(r, _)| Some(r.metric.as_str()))),
                floats(v.iter().map(|(r, _)| Some(r.value.0))),
                times(v.iter().map(|(r, _)| Some(r.ts))),
                ints(v.iter().map(|(_, p)| i64::from(p.source))),
                ints(v.iter().map(|(_, p)| p.offset as i64)),
            ],
        ),
        Rows::Assessments(v) => batch(
            vec![
                ("assessment_id", S, false),
                ("revision", I, false),
                ("tree_id", S, false),
                ("agent_id", S, false),
                ("observed_at", ts_type(), false),
                ("likelihood_of_failure", S, false),
                ("likelihood_of_impact", S, false),
                ("consequences", S, false),
                ("defect_count", I, false),
                ("defect_severity_sum", I, false),
                ("max_defect_severity", I, false),
                ("crown_dieback_pct", F, false),
                ("notes", S, true),
                ("withdrawn", B, false),
                ("source", I, false),
                ("offset", I, false),
            ],
            vec![
                strings(v.iter().map(|(a, _, _)| Some(a.assessment_id.as_str()))),
                ints(v.iter().map(|(a, _, _)| i64::from(a.revision))),
                strings(v.iter().map(|(a, _, _)| Some(a.tree_id.as_str()))),
                strings(v.iter().map(|(a, _, _)| Some(a.agent_id.as_str()))),
                times(v.iter().map(|(a, _, _)| Some(a.observed_at))),
                strings(v.iter().map(|(a, _, _)| Some(a.likelihood_of_failure.as_str()))),
                strings(v.iter().map(|(a, _, _)| Some(a.likelihood_of_impact.as_str()))),
                strings(v.iter().map(|(a, _, _)| Some(a.consequences.as_str()))),
                ints(v.iter().map(|(a, _, _)| i64::from(a.defect_count))),
                ints(v.iter().map(|(a, _, _)| i64::from(a.defect_severity_sum))),
                ints(v.iter().map(|(a, _, _)| i64::from(a.max_defect_severity))),
                floats(v.iter().map(|(a, _, _)| Some(a.crown_dieback_pct.0))),
                strings(v.iter().map(|(_, n, _)| n.as_deref())),
                bools(v.iter().map(|(a, _, _)| a.withdrawn)),
                ints(v.iter().map(|(_, _, p)| i64::from(p.source))),
                ints(v.iter().map(|(_, _, p)| p.offset as i64)),
            ],
        ),
        Rows::Trees(v) => batch(
            vec![
                ("tree_id", S, false),
                ("region", S, true),
                ("species", S, true),
                ("lat", F, false),
                ("lon", F, false),
                ("dbh_cm", F, true),
                ("height_m", F, true),
                ("target_occupancy", S, true),
                ("baseline_tilt_deg", F, false),
                ("baseline_sway_hz", F, true),
                ("updated_at", ts_type(), false),
                ("deleted", B, false),
                ("source", I, false),
                ("offset", I, false),
            ],
            vec![
                strings(v.iter().map(|(t, _)| Some(t.tree_id.as_str()))),
                strings(v.iter().map(|(t, _)| t.region.map(|r| r.as_str()))),
                strings(v.iter().map(|(t, _)| t.species.as_deref())),
                floats(v.iter().map(|(t, _)| Some(t.lat.0))),
                floats(v.iter().map(|(t, _)| Some(t.lon.0))),
                floats(v.iter().map(|(t, _)| t.dbh_cm.map(|x| x.0))),
                floats(v.iter().map(|(t, _)| t.height_m.map(|x| x.0))),
                strings(v.iter().map(|(t, _)| t.target_occupancy.map(|o| o.as_str()))),
                floats(v.iter().map(|(t, _)| Some(t.baseline_tilt_deg.0))),
                floats(v.iter().map(|(t, _)| t.baseline_sway_hz.map(|x| x.0))),
                times(v.iter().map(|(t, _)| Some(t.updated_at))),
                bools(v.iter().map(|(t, _)| t.deleted)),
                ints(v.iter().map(|(_, p)| i64::from(p.source))),
                ints(v.iter().map(|(_, p)| p.offset as i64)),
            ],
        ),
        Rows::ScoreChanges(v) => batch(
            vec![
                ("tree_id", S, false),
                ("region", S, false),
                ("score", F, false),
                ("band", S, false),
                ("risk_rating", S, false),
                ("base", F, false),
                ("defect_penalty", F, false),
                ("dieback_penalty", F, false),
                ("tilt_penalty", F, false),
                ("sway_penalty", F, false),
                ("storm_penalty", F, false),
                ("diff", I, false),
                ("watermark", ts_type(), true),
                ("dataflow_time", I, false),
            ],
            vec![
                strings(v.iter().map(|c| Some(c.tree_id.as_str()))),
                strings(v.iter().map(|c| Some(c.row.region.as_str()))),
                floats(v.iter().map(|c| Some(c.row.score.score.0))),
                strings(v.iter().map(|c| Some(c.row.score.band.as_str()))),
                strings(v.iter().map(|c| Some(c.row.score.risk_rating_str()))),
                floats(v.iter().map(|c| Some(c.row.score.base.0))),
                floats(v.iter().map(|c| Some(c.row.score.defect_penalty.0))),
                floats(v.iter().map(|c| Some(c.row.score.dieback_penalty.0))),
                floats(v.iter().map(|c| Some(c.row.score.tilt_penalty.0))),
                floats(v.iter().map(|c| Some(c.row.score.sway_penalty.0))),
                floats(v.iter().map(|c| Some(c.row.score.storm_penalty.0))),
                ints(v.iter().map(|c| c.diff as i64)),
                times(v.iter().map(|c| c.watermark)),
                ints(v.iter().map(|c| c.time as i64)),
            ],
        ),
        Rows::Alerts(v) => batch(
            vec![
                ("kind", S, false),
                ("tree_id", S, false),
                ("region", S, true),
                ("score", F, true),
                ("band", S, false),
                ("previous_band", S, true),
                ("watermark", ts_type(), true),
                ("top_penalty", S, false),
            ],
            vec![
                strings(v.iter().map(|a| Some(a.kind.as_str()))),
                strings(v.iter().map(|a| Some(a.tree_id.as_str()))),
                strings(v.iter().map(|a| a.region.map(|r| r.as_str()))),
                floats(v.iter().map(|a| a.score)),
                strings(v.iter().map(|a| Some(a.band.as_str()))),
                strings(v.iter().map(|a| a.previous_band.as_deref())),
                times(v.iter().map(|a| a.watermark)),
                strings(v.iter().map(|a| Some(a.top_penalty.as_str()))),
            ],
        ),
        Rows::Deadletter(v) => deadletter_batch(v),
    }
}
