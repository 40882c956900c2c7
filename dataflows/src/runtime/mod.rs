//! The runtime: runs the view dataflows on timely workers, fed by a
//! [`Source`](crate::source::Source) per worker, and hands their output to
//! one egress per process.
//!
//! | module | what |
//! |---|---|
//! | [`watermark`] | the watermark protocol between workers (DOMAIN §3) |
//! | [`window`] | readings into and out of the one-hour window |
//! | [`ingest`] | one round of a source into the dataflow inputs |
//! | [`worker`] | the worker loop: read, agree on the watermark, advance, step |
//! | [`egress`] | the one ordered stream of completed changes: catalog, alerts, derived sinks |
//!
//! # Logical time
//!
//! Inputs advance through [`DataflowTime`]s `(W, seq)`. Registry and assessment
//! events are inserted at the current time and made visible by moving to the
//! next `seq`. A reading with `ts > W` waits in the worker until `W` reaches
//! it; a reading in the window is inserted at the current time and retracted
//! when `W` reaches `ts + 1h`; an older one has expired and is only counted.
//! Every worker follows the greatest time any peer reports, so one idle worker
//! never holds the others back.
//!
//! [`DataflowTime`]: crate::time::DataflowTime

pub mod egress;
mod ingest;
mod watermark;
mod window;
mod worker;

use crate::source::{SinkFactory, SinkRole, SourceFactory};
use crate::store::Catalog;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A source could not be opened (see its fault).
    #[error("cannot open source: {0}")]
    Source(#[from] crate::source::SourceError),
    /// timely could not start its workers (the machine's fault).
    #[error("cannot start workers: {0}")]
    Start(String),
    /// A worker thread failed (our fault).
    #[error("worker failed: {0}")]
    Worker(String),
}

impl RuntimeError {
    /// Whose fault the error is.
    pub fn fault(&self) -> crate::source::Fault {
        match self {
            RuntimeError::Source(e) => e.fault(),
            RuntimeError::Start(_) => crate::source::Fault::Environment,
            RuntimeError::Worker(_) => crate::source::Fault::Internal,
        }
    }
}

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Timely worker threads in this process.
    pub workers: usize,
    /// Allowed lateness of readings, ms (DOMAIN §3; default 5 s).
    pub allowed_lateness_ms: i64,
    /// A partition without readings for this long is idle (default 30 s).
    pub idle_timeout: Duration,
    /// Messages a worker reads per round (default 16,384).
    pub batch: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { workers: 1, allowed_lateness_ms: 5_000, idle_timeout: Duration::from_secs(30), batch: 16_384 }
    }
}

/// Counters shared with the progress line and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages read from sources.
    pub events_read: AtomicU64,
    /// Valid events applied, per kind: tree, assessment, reading.
    pub events_valid: [AtomicU64; 3],
    /// Messages rejected.
    pub events_rejected: AtomicU64,
    /// Readings that arrived after their window had passed (lake only).
    pub readings_expired: AtomicU64,
    /// Readings that arrived with `ts ≤ W` but still inside the window.
    pub readings_late: AtomicU64,
    /// Alerts raised.
    pub alerts: AtomicU64,
    /// The watermark the inputs reached, epoch ms (`i64::MIN`: none yet).
    pub watermark: AtomicI64,
    /// Rejections per `field:rule` label.
    pub rejected_by_label: Mutex<HashMap<String, u64>>,
    /// Counters other components keep (the lake, Kafka), registered by each
    /// component when the pipeline is built and exposed by `/metrics`.
    pub components: Counters,
}

/// Reads a counter kept by a component.
pub type CounterFn = Box<dyn Fn() -> u64 + Send + Sync>;

/// Counters registered by components: name, help, value read at scrape time.
#[derive(Default)]
pub struct Counters(Mutex<Vec<(String, String, CounterFn)>>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Counters {
    /// Registers a counter (a Prometheus counter named `name`).
    pub fn add(&self, name: &str, help: &str, value: impl Fn() -> u64 + Send + Sync + 'static) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), help.to_string(), Box::new(value)));
    }

    /// Calls `f` with every counter's name, help and current value, in registration order.
    pub fn each(&self, mut f: impl FnMut(&str, &str, u64)) {
        for (name, help, value) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f(name, help, value());
        }
    }
}

impl Stats {
    /// New counters.
    pub fn new() -> Self {
        Stats { watermark: AtomicI64::new(i64::MIN), ..Default::default() }
    }
    /// The watermark, if any.
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A started runtime: timely workers and the egress thread.
pub struct Running {
    workers: timely::communication::WorkerGuards<Result<(), RuntimeError>>,
    egress: std::thread::JoinHandle<()>,
}

impl Running {
    /// Waits until every worker and the egress have finished (bounded input
    /// done, or `shutdown` set); the first worker error, if any.
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for result in self.workers.join() {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(panic) => first_error = first_error.or(Some(RuntimeError::Worker(panic))),
            }
        }
        if self.egress.join().is_err() {
            first_error = first_error.or(Some(RuntimeError::Worker("the egress thread panicked".into())));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts the pipeline's workers and its egress; they run until every source
/// is done (bounded input) or `shutdown` is set. The catalog receives the
/// views of every completed time; `sinks` gives each worker's sink and the
/// egress sink.
pub fn start(
    config: RuntimeConfig,
    sources: SourceFactory,
    sinks: SinkFactory,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
) -> Result<Running, RuntimeError> {
    let workers = config.workers.max(1);
    let (sender, receiver) = mpsc::sync_channel(egress::EGRESS_QUEUE);
    let egress = {
        let (sink, stats) = (sinks(SinkRole::Egress), stats.clone());
        std::thread::Builder::new()
            .name("treeai-egress".into())
            .spawn(move || egress::run(workers, receiver, catalog, sink, stats))
            .map_err(|e| RuntimeError::Start(e.to_string()))?
    };
    let workers = timely::execute(timely::Config::process(workers), move |worker| {
        let egress = sender.clone();
        worker::worker_main(worker, &config, &sources, &sinks, egress, &stats, &shutdown)
    })
    .map_err(RuntimeError::Start)?;
    Ok(Running { workers, egress })
}

/// Runs the pipeline to its end: [`start`], then [`Running::join`].
pub fn run(
    config: RuntimeConfig,
    sources: SourceFactory,
    sinks: SinkFactory,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    start(config, sources, sinks, catalog, stats, shutdown)?.join()
}
