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
//! | [`cluster`] | the links between the processes of a cluster (timely's networking) |
//! | [`background`] | threads beside the workers, at a lower priority |
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

pub mod background;
pub mod cluster;
pub mod egress;
mod ingest;
mod watermark;
mod window;
mod worker;

use crate::checkpoint::Checkpoints;
use crate::source::{SinkFactory, SinkRole, SourceFactory};
use crate::store::Catalog;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The cluster could not form, or lost a process (the environment's fault: restart the
    /// cluster; it resumes from its newest checkpoint).
    #[error("cluster: {0}")]
    Cluster(String),
}

impl RuntimeError {
    /// Whose fault the error is.
    pub fn fault(&self) -> crate::source::Fault {
        match self {
            RuntimeError::Source(e) => e.fault(),
            RuntimeError::Start(_) | RuntimeError::Cluster(_) => crate::source::Fault::Environment,
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
    /// A fault to inject, for tests of supervision (`treeai run` reads it from `TREEAI_FAULT`).
    pub fault: Option<InjectedFault>,
    /// This process's place in a cluster of processes (`None`: a single process).
    pub cluster: Option<cluster::ClusterConfig>,
}

impl RuntimeConfig {
    /// `(this process's index, processes)`: `(0, 1)` without a cluster.
    pub fn process(&self) -> (usize, usize) {
        self.cluster.as_ref().map_or((0, 1), |c| (c.process, c.processes))
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 1,
            allowed_lateness_ms: 5_000,
            idle_timeout: Duration::from_secs(30),
            batch: 16_384,
            fault: None,
            cluster: None,
        }
    }
}

/// A fault worker 0 injects into itself, to test that the process notices
/// (the role of the `fail` crate's failpoints, without a build feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// `panic-after-rounds:N`: panic in round N.
    PanicAfterRounds(u64),
    /// `stall-after-rounds:N`: stop making progress (sleep forever) in round N.
    StallAfterRounds(u64),
    /// `hang-before-manifest:N`: checkpoint N writes its parts and never its manifest
    /// (the checkpoint writer's hook; a test then kills the process mid-upload).
    HangBeforeManifest(u64),
    /// `slow-rounds:MS`: every worker sleeps MS ms after each round that read events (so
    /// that a test can act mid-input however fast the machine is).
    SlowRounds(u64),
}

impl std::str::FromStr for InjectedFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (what, n) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected WHAT:ROUND"))?;
        let n: u64 = n.parse().map_err(|_| format!("{s:?}: {n:?} is not a round number"))?;
        match what {
            "panic-after-rounds" => Ok(InjectedFault::PanicAfterRounds(n)),
            "stall-after-rounds" => Ok(InjectedFault::StallAfterRounds(n)),
            "hang-before-manifest" => Ok(InjectedFault::HangBeforeManifest(n)),
            "slow-rounds" => Ok(InjectedFault::SlowRounds(n)),
            _ => Err(format!(
                "{s:?}: unknown fault {what:?} (panic-after-rounds, stall-after-rounds, hang-before-manifest, slow-rounds)"
            )),
        }
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
    /// Wall-clock time a worker last completed a round, epoch ms (0: none yet).
    pub last_round_ms: AtomicI64,
    /// Set once every worker has stopped (input done, stopped, or failed).
    pub stopped: AtomicBool,
    /// After a restore: workers that have not yet caught up with their source (read less
    /// than a full batch in a round). `/readyz` waits for none.
    pub catching_up: std::sync::atomic::AtomicUsize,
    /// Rejections per `field:rule` label.
    pub rejected_by_label: Mutex<HashMap<String, u64>>,
    /// Arrival → visible to SQL, per applied event (`treeai_freshness_seconds`).
    pub freshness: Freshness,
    /// Counters other components keep (the lake, Kafka), registered by each
    /// component when the pipeline is built and exposed by `/metrics`.
    pub components: Counters,
    /// Where this process's workers stand in the cluster (`GET /v1/admin/cluster`).
    pub layout: Mutex<Layout>,
}

/// This process's place in the cluster and what its workers read.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Layout {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
    /// Per worker of this process (global index), the source partitions it reads (the
    /// sources' ids: a file, a Kafka topic-partition, a generator shard), refreshed as
    /// partitions come and go.
    pub partitions: std::collections::BTreeMap<usize, Vec<u32>>,
}

/// Freshness: for every applied event, the time from its arrival (when its source
/// handed it to a worker) to the moment the catalog published the dataflow time that
/// holds its effect — what SQL sees. A reading waiting for the watermark counts until
/// the watermark lets it into the window; an expired reading has no effect and is not
/// counted. Milliseconds, in an HDR histogram (3 significant figures).
#[derive(Debug)]
pub struct Freshness(Mutex<hdrhistogram::Histogram<u64>>);

impl Default for Freshness {
    fn default() -> Self {
        Freshness(Mutex::new(hdrhistogram::Histogram::new(3).expect("3 significant figures are valid")))
    }
}

impl Freshness {
    /// Records `count` events that took `ms` from arrival to visible.
    pub fn record(&self, ms: u64, count: u64) {
        let _ = self.0.lock().unwrap_or_else(|p| p.into_inner()).record_n(ms, count);
    }

    /// Events with a freshness of at most each of `bounds_ms` (cumulative), all events,
    /// and the sum of their freshness in ms.
    pub fn buckets(&self, bounds_ms: &[u64]) -> (Vec<u64>, u64, f64) {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let below = bounds_ms.iter().map(|&b| h.count_between(0, b)).collect();
        (below, h.len(), h.mean() * h.len() as f64)
    }

    /// The `q`-quantile in ms (0 with no events).
    pub fn quantile_ms(&self, q: f64) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).value_at_quantile(q)
    }
}

/// Reads a counter kept by a component.
pub type CounterFn = Box<dyn Fn() -> u64 + Send + Sync>;

/// Renders a component's metrics in Prometheus' text format.
pub type TextFn = Box<dyn Fn() -> String + Send + Sync>;

/// Counters registered by components: name, help, value read at scrape time;
/// and components' own metrics (histograms, gauges) in Prometheus' text format.
#[derive(Default)]
pub struct Counters(Mutex<Vec<(String, String, CounterFn)>>, Mutex<Vec<TextFn>>);

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

    /// Registers metrics a component renders itself, in Prometheus' text format.
    pub fn add_text(&self, render: impl Fn() -> String + Send + Sync + 'static) {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(render));
    }

    /// Every component's own metrics, in Prometheus' text format.
    pub fn texts(&self) -> String {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|f| f()).collect()
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
    /// Whether the dataflow is alive: it has stopped (nothing more to do), or
    /// some worker completed a round within `timeout` (or none has run yet,
    /// within `timeout` of `started_ms`).
    pub fn alive(&self, timeout: Duration, started_ms: i64) -> Result<(), String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self.last_round_ms.load(Ordering::Relaxed).max(started_ms);
        let idle = now_ms() - last;
        if idle > timeout.as_millis() as i64 {
            Err(format!("no dataflow round completed for {:.1} s", idle as f64 / 1000.0))
        } else {
            Ok(())
        }
    }

    /// Whether no worker is still catching up after a restore.
    pub fn restored(&self) -> bool {
        self.catching_up.load(Ordering::Relaxed) == 0
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

/// A started runtime: timely workers and their egress.
pub struct Running {
    workers: timely::communication::WorkerGuards<Result<(), RuntimeError>>,
    egress: Arc<egress::Egress>,
    stats: Arc<Stats>,
    checkpoints: Option<Arc<Checkpoints>>,
    /// In a cluster: the network threads (joined after a clean end) and the first broken link.
    comms: Option<(timely::communication::allocator::zero_copy::initialize::CommsGuard, cluster::Lost)>,
}

/// Sets the shutdown flag when dropped unless disarmed: a worker that fails
/// or panics stops its peers instead of leaving them waiting for it (and no
/// final checkpoint is attempted).
struct StopPeersOnFailure(Arc<AtomicBool>, Option<Arc<Checkpoints>>, bool);

impl Drop for StopPeersOnFailure {
    fn drop(&mut self) {
        if !self.2 {
            if let Some(hub) = &self.1 {
                hub.fail();
            }
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Running {
    /// Waits until every worker and the egress have finished (bounded input
    /// done, `shutdown` set, or a worker failed — a failing worker sets
    /// `shutdown`, so its peers stop too); the first worker error, if any.
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for result in self.workers.join() {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(panic) => first_error = first_error.or(Some(RuntimeError::Worker(panic))),
            }
        }
        if let Some((comms, lost)) = self.comms {
            let lost = lost.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // The workers failed because a peer went away: say which.
            if let (Some(RuntimeError::Worker(_)), Some(lost)) = (&first_error, lost) {
                first_error = Some(RuntimeError::Cluster(lost));
            }
            if first_error.is_some() {
                // Its threads may wait for peers that are gone (and it panics on drop if one
                // of them failed): leave them to the process's exit.
                std::mem::forget(comms);
            } else {
                drop(comms);
            }
        }
        self.egress.close();
        if let Some(hub) = &self.checkpoints {
            hub.workers_stopped();
        }
        self.stats.stopped.store(true, Ordering::SeqCst);
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts the pipeline's workers and its egress; they run until every source
/// is done (bounded input) or `shutdown` is set. The catalog receives the
/// views of every completed time; `sinks` gives each worker's sink and the
/// egress sink. With `checkpoints`, the run resumes from its restore point
/// (if any), takes the checkpoints asked of it, and ends (input done or
/// `shutdown`) with a final one (see [`crate::checkpoint`]). In a cluster
/// (`config.cluster`), over `links` if already connected (else it connects).
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: RuntimeConfig,
    sources: SourceFactory,
    sinks: SinkFactory,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
    checkpoints: Option<Arc<Checkpoints>>,
    links: Option<cluster::Links>,
) -> Result<Running, RuntimeError> {
    let workers = config.workers.max(1);
    let (process, processes) = config.process();
    {
        let mut layout = stats.layout.lock().unwrap_or_else(|p| p.into_inner());
        (layout.process, layout.processes, layout.workers) = (process, processes, workers);
    }
    // In a cluster, the derived outputs (score changes, alerts) are derived and written by
    // process 0 only: every process's egress sees the whole views, so any one of them could.
    // The others' egress only publishes to their catalog (and counts no alerts).
    let egress_sink = if process == 0 { sinks(SinkRole::Egress) } else { Box::new(crate::source::NullSink) };
    let egress = Arc::new(egress::Egress::new(
        workers,
        process * workers,
        catalog,
        egress_sink,
        stats.clone(),
        checkpoints.clone(),
    ));
    if process > 0 {
        egress.close();
    }
    let (worker_stats, worker_egress) = (stats.clone(), egress.clone());
    let hub = checkpoints.clone();
    let cluster = config.cluster.clone();
    let main = move |worker: &mut timely::worker::Worker| {
        let egress = worker_egress.clone();
        let mut guard = StopPeersOnFailure(shutdown.clone(), checkpoints.clone(), false);
        let result = worker::worker_main(
            worker,
            &config,
            &sources,
            &sinks,
            egress,
            &worker_stats,
            &shutdown,
            checkpoints.as_ref(),
        );
        guard.2 = result.is_ok();
        result
    };
    let (workers, comms) = match cluster {
        None => (timely::execute(timely::Config::process(workers), main).map_err(RuntimeError::Start)?, None),
        Some(cluster) => {
            use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
            use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
            let links = match links {
                Some(links) => links,
                None => cluster::connect(&cluster, workers).map_err(RuntimeError::Cluster)?,
            };
            let hooks = timely::communication::Hooks::default();
            let local = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
            let (builders, comms) =
                initialize_networking_from_sockets(local, links.links, cluster.process, workers, hooks)
                    .map_err(|e| RuntimeError::Cluster(format!("cannot start the peer links: {e}")))?;
            let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
            let guards = timely::execute::execute_from(builders, Box::new(()), timely::WorkerConfig::default(), main)
                .map_err(RuntimeError::Start)?;
            (guards, Some((comms, links.lost)))
        }
    };
    Ok(Running { workers, egress, stats, checkpoints: hub, comms })
}
