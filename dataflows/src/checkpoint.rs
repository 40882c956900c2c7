//! Checkpoints, the runtime's half: how the workers take a consistent cut of
//! their input state, and how a run resumes from one. Persisting a cut (the
//! object store, the manifest, the lake commit) is the connectors' half, behind
//! [`Persist`].
//!
//! # What a checkpoint is
//!
//! The views are a pure function of the input state — per tree its newest
//! registry version, per assessment id its newest revision (deletions and
//! withdrawals included, so an older version arriving later still loses),
//! the readings in the window and those waiting for the watermark — and of
//! the watermark. A checkpoint holds, per worker, that state, the source
//! positions it corresponds to exactly, the per-partition watermark trackers,
//! and the dataflow time of the cut ([`WorkerState`]).
//!
//! # Taking the cut (a barrier over the control dataflow)
//!
//! 1. Someone asks for checkpoint `n` ([`Checkpoints::request`]: the timer,
//!    `POST /v1/admin/checkpoint`, a clean stop). Workers also learn of it
//!    from their peers' reports.
//! 2. At the start of a round — every input inserted so far is at a time
//!    before the worker's current time — a worker that has not captured `n`
//!    captures: it hands its [`WorkerState`] to the hub (an O(1) clone of
//!    persistent maps and shared buckets; encoding happens elsewhere), tells
//!    its sinks that everything so far belongs to `n` ([`Sink::checkpoint`]),
//!    and *pauses*: it reads nothing and applies no watermark until every
//!    worker has reported `n`. Paused workers insert nothing, so with `T` the
//!    greatest capture time, every input before the cut is at a time `< T`
//!    and every input after it at a time `>= T`.
//! 3. The egress emits the completed times before `T`, then calls its sink's
//!    [`Sink::checkpoint`] (the derived tables of the lake hold exactly the
//!    changes up to the cut), and the hub hands the whole [`Cut`] to
//!    [`Persist`], which writes it off the worker threads.
//!
//! # Resuming
//!
//! Every worker gets the states of all workers of the checkpoint; it takes
//! the trees, assessments and readings whose tree (assessment) id hashes to
//! it — so a run with another number of workers re-shards by key — and seeks
//! its source to the recorded positions. The restored state is inserted at
//! the cut's time `T`; the egress publishes it to the catalog but sends no
//! score change or alert for it (they were sent before the cut). Readings a
//! worker had not released yet are released at the next time, as the old run
//! would have done after the cut.
//!
//! [`Sink::checkpoint`]: crate::source::Sink::checkpoint

use crate::event::{AssessmentEvent, Id, Metric, TreeEvent, F64};
use crate::source::PartitionPosition;
use crate::time::DataflowTime;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The version of the checkpoint format; a checkpoint of another version is refused at start-up.
pub const FORMAT_VERSION: u32 = 2;

/// A reading in a worker's window or waiting for the watermark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReading {
    /// Event time, epoch ms.
    pub ts: i64,
    /// The tree.
    pub tree: Id,
    /// The metric.
    pub metric: Metric,
    /// The value.
    pub value: F64,
}

/// A [`WindowReading`] borrowed from a worker's window: serialized as a `WindowReading`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WindowReadingRef<'a> {
    /// Event time, epoch ms.
    pub ts: i64,
    /// The tree.
    pub tree: &'a Id,
    /// The metric.
    pub metric: Metric,
    /// The value.
    pub value: F64,
}

/// A worker's window readings as captured, still shared with the worker: encoding visits
/// them in place instead of copying them into vectors first (at a full window of 10,000
/// trees that copy was ~30 MB, whose high water stayed in the RSS).
pub trait SharedWindow: Send {
    /// Calls `f(in_window, reading)` for every reading in the window (`true`) and every one
    /// waiting for the watermark (`false`).
    fn visit(&self, f: &mut dyn FnMut(bool, WindowReadingRef<'_>));
}

/// One worker's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerState {
    /// The worker's index and how many workers there were.
    pub worker: usize,
    /// Workers of the run that wrote the checkpoint.
    pub peers: usize,
    /// The worker's input time at the cut: everything it inserted is before it.
    pub time: u64,
    /// The watermark the worker had applied.
    pub watermark: Option<i64>,
    /// Its source's positions: everything before them is in this state.
    pub positions: Vec<PartitionPosition>,
    /// Per watermark partition, the greatest reading `ts` seen.
    pub trackers: Vec<(u32, i64)>,
    /// The greatest reading `ts` this worker has seen.
    pub max_ts: Option<i64>,
    /// The newest version of every tree this worker has read (deletions too).
    pub trees: Vec<TreeEvent>,
    /// The newest revision of every assessment this worker has read (withdrawals too).
    pub assessments: Vec<AssessmentEvent>,
    /// The readings in the window.
    pub window: Vec<WindowReading>,
    /// The readings waiting for the watermark.
    pub pending: Vec<WindowReading>,
    /// The worker's sinks' progress (output topic-partition, end offset).
    pub sink_offsets: Vec<(String, i64)>,
}

/// The egress's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EgressState {
    /// Per tree that has alerted, its number of alerts (alert ids are `tree_id/seq`).
    pub alert_seqs: Vec<(Id, u32)>,
    /// The egress sink's progress (output topic-partition, end offset).
    pub sink_offsets: Vec<(String, i64)>,
}

impl WorkerState {
    /// Rows of state (trees, assessments, readings), for logs and metrics.
    pub fn rows(&self) -> usize {
        self.trees.len() + self.assessments.len() + self.window.len() + self.pending.len()
    }
}

/// A worker's part as captured: the small fields of its [`WorkerState`] and
/// its input state still shared with the worker (persistent maps, shared
/// window panes and buckets). Encoding it (`Serialize`, off the worker thread)
/// writes exactly what the [`WorkerState`] it stands for would, without building
/// that state: no copy of the trees, the assessments or the window.
pub struct Captured {
    /// The state without its rows.
    pub state: WorkerState,
    trees: imbl::HashMap<Id, Arc<TreeEvent>>,
    revisions: imbl::HashMap<Id, Arc<AssessmentEvent>>,
    window: Option<Box<dyn SharedWindow>>,
    /// The window's (in-window, waiting) reading counts, counted once (a visit of every
    /// reading: millions at a city's scale).
    window_counts: std::sync::OnceLock<(usize, usize)>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured").field("state", &self.state).field("trees", &self.trees.len()).finish()
    }
}

impl Captured {
    /// A part of `state`'s small fields and the shared input state.
    pub fn new(
        state: WorkerState,
        trees: imbl::HashMap<Id, Arc<TreeEvent>>,
        revisions: imbl::HashMap<Id, Arc<AssessmentEvent>>,
        window: Box<dyn SharedWindow>,
    ) -> Self {
        Captured { state, trees, revisions, window: Some(window), window_counts: Default::default() }
    }

    /// A part that is already complete.
    pub fn complete(state: WorkerState) -> Self {
        Captured {
            state,
            trees: imbl::HashMap::new(),
            revisions: imbl::HashMap::new(),
            window: None,
            window_counts: Default::default(),
        }
    }

    /// Readings in the window and waiting for the watermark (beyond those in `state`).
    fn window_counts(&self) -> (usize, usize) {
        *self.window_counts.get_or_init(|| {
            let (mut live, mut pending) = (0, 0);
            if let Some(w) = &self.window {
                w.visit(&mut |in_window, _| if in_window { live += 1 } else { pending += 1 });
            }
            (live, pending)
        })
    }

    /// Rows of state (trees, assessments, readings), for logs and metrics.
    pub fn rows(&self) -> usize {
        let (live, pending) = self.window_counts();
        self.state.rows() + self.trees.len() + self.revisions.len() + live + pending
    }

    /// The full state, copied: what decoding the encoded part gives (the encoding's test
    /// reference; encoding itself reads the shared state in place).
    #[cfg(test)]
    fn materialize(self) -> WorkerState {
        let mut state = self.state;
        state.trees.extend(self.trees.into_iter().map(|(_, t)| Arc::unwrap_or_clone(t)));
        state.assessments.extend(self.revisions.into_iter().map(|(_, a)| Arc::unwrap_or_clone(a)));
        if let Some(w) = &self.window {
            w.visit(&mut |in_window, r| {
                let r = WindowReading { ts: r.ts, tree: r.tree.clone(), metric: r.metric, value: r.value };
                if in_window {
                    state.window.push(r);
                } else {
                    state.pending.push(r);
                }
            });
        }
        state
    }
}

/// A sequence of `len` items from `items()`, serialized as a `Vec` (bincode writes the
/// length first, so it must be known).
struct SeqOf<F>(usize, F);

impl<F, I> Serialize for SeqOf<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0))?;
        for item in (self.1)() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// One of a captured window's two lists (`in_window`), after `also` (the state's own rows).
struct WindowSeq<'a> {
    window: Option<&'a dyn SharedWindow>,
    in_window: bool,
    also: &'a [WindowReading],
    len: usize,
}

impl Serialize for WindowSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.also.len() + self.len))?;
        for r in self.also {
            seq.serialize_element(r)?;
        }
        let mut failed = None;
        if let Some(w) = self.window {
            w.visit(&mut |in_window, r| {
                if in_window == self.in_window && failed.is_none() {
                    failed = seq.serialize_element(&r).err();
                }
            });
        }
        match failed {
            Some(e) => Err(e),
            None => seq.end(),
        }
    }
}

impl Serialize for Captured {
    /// Exactly as the [`WorkerState`] it stands for (same fields, same order), read in place.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let s = &self.state;
        let (live, pending) = self.window_counts();
        let window = self.window.as_deref();
        let mut out = serializer.serialize_struct("WorkerState", 12)?;
        out.serialize_field("worker", &s.worker)?;
        out.serialize_field("peers", &s.peers)?;
        out.serialize_field("time", &s.time)?;
        out.serialize_field("watermark", &s.watermark)?;
        out.serialize_field("positions", &s.positions)?;
        out.serialize_field("trackers", &s.trackers)?;
        out.serialize_field("max_ts", &s.max_ts)?;
        let trees = || s.trees.iter().chain(self.trees.values().map(|t| &**t));
        out.serialize_field("trees", &SeqOf(s.trees.len() + self.trees.len(), trees))?;
        let assessments = || s.assessments.iter().chain(self.revisions.values().map(|a| &**a));
        out.serialize_field("assessments", &SeqOf(s.assessments.len() + self.revisions.len(), assessments))?;
        out.serialize_field("window", &WindowSeq { window, in_window: true, also: &s.window, len: live })?;
        out.serialize_field("pending", &WindowSeq { window, in_window: false, also: &s.pending, len: pending })?;
        out.serialize_field("sink_offsets", &s.sink_offsets)?;
        out.end()
    }
}

/// A complete cut: every worker's state and the time the views were at.
#[derive(Debug)]
pub struct Cut {
    /// The checkpoint number (increasing; a resumed run continues from the restored one).
    pub number: u64,
    /// The cut's time `T`: every input before it is in the state, every one after is not.
    pub time: DataflowTime,
    /// The watermark of the views at the cut.
    pub watermark: Option<i64>,
    /// Every worker's part, by worker index.
    pub workers: Vec<Captured>,
    /// The egress's part.
    pub egress: EgressState,
    /// When the first worker captured (for the duration metric).
    pub started: Instant,
}

/// A checkpoint to resume from.
#[derive(Clone, Debug)]
pub struct Restore {
    /// Its number.
    pub number: u64,
    /// Its cut time.
    pub time: DataflowTime,
    /// Every worker's state.
    pub workers: Vec<WorkerState>,
    /// The egress's state.
    pub egress: EgressState,
}

/// Where complete cuts go (the connectors' checkpoint writer).
pub trait Persist: Send + Sync {
    /// Called once per complete cut, on a worker thread: must not block for long.
    fn persist(&self, cut: Cut);
}

/// Which worker of `peers` owns `key` when a checkpoint is restored.
pub fn owner(key: &str, peers: usize) -> usize {
    // Any function every worker of one run computes the same way will do.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % peers.max(1) as u64) as usize
}

/// The checkpoint coordinator of one process, shared by its workers, its
/// egress and whoever asks for checkpoints.
pub struct Checkpoints {
    persist: Box<dyn Persist>,
    restore: Option<Restore>,
    /// The newest checkpoint number asked for.
    requested: AtomicU64,
    /// Checkpoint number after which the workers stop (a clean stop's final checkpoint); 0: none.
    stop_after: AtomicU64,
    /// A worker failed: stop at once, take no more cuts.
    failed: AtomicBool,
    /// The workers have stopped: the last checkpoint is the final one.
    stopped: AtomicBool,
    collecting: Mutex<Collecting>,
    durable: Mutex<Durable>,
    durable_changed: Condvar,
    /// In a cluster: this process's index, the processes, its own workers (see
    /// [`Checkpoints::with_cluster`]); `None` for a single process.
    cluster: Option<(usize, usize, usize)>,
}

#[derive(Default)]
struct Collecting {
    /// The checkpoint whose parts are being collected.
    number: u64,
    parts: Vec<Captured>,
    started: Option<Instant>,
    /// Cuts whose worker parts are complete, waiting for the egress, oldest first.
    awaiting_egress: std::collections::VecDeque<Cut>,
    /// In a cluster: the cut time of each checkpoint over every process's workers, as the
    /// workers learn it (the front cut waits for it).
    global_times: std::collections::BTreeMap<u64, u64>,
}

struct Durable {
    /// The newest checkpoint written completely.
    number: u64,
    /// When `number` became durable (or the coordinator was made).
    since: Instant,
    /// Past this age without a new durable checkpoint, [`Checkpoints::health`] fails.
    stale_after: Option<Duration>,
    /// The newest checkpoint that failed to be written, with why.
    failed: Option<(u64, String)>,
}

impl Checkpoints {
    /// A coordinator handing cuts to `persist`, resuming from `restore` (if any); the
    /// first checkpoint it takes is `base + 1` (`base` is the restored one's number, if any).
    pub fn new(persist: Box<dyn Persist>, restore: Option<Restore>, base: u64) -> Self {
        let base = restore.as_ref().map_or(base, |r| r.number);
        Checkpoints {
            persist,
            requested: AtomicU64::new(base),
            stop_after: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            collecting: Mutex::new(Collecting { number: base, ..Default::default() }),
            durable: Mutex::new(Durable { number: base, since: Instant::now(), stale_after: None, failed: None }),
            durable_changed: Condvar::new(),
            restore,
            cluster: None,
        }
    }

    /// This coordinator is process `process`'s of a cluster of `processes`, with `workers`
    /// workers of its own. Its cuts then hold its own workers' parts; their time is the
    /// greatest capture time over every process's workers, which the workers learn from each
    /// other ([`Checkpoints::global_cut`]). Persisting joins the processes' parts (the
    /// connectors' checkpoint writer).
    pub fn with_cluster(mut self, process: usize, processes: usize, workers: usize) -> Self {
        if processes > 1 {
            self.cluster = Some((process, processes, workers));
        }
        self
    }

    /// In a cluster: `(this process, processes)`.
    pub fn cluster(&self) -> Option<(usize, usize)> {
        self.cluster.map(|(p, n, _)| (p, n))
    }

    /// In a cluster: every worker of every process has captured checkpoint `number`, the
    /// greatest capture time being `time` (called by this process's workers as they learn it).
    pub fn global_cut(&self, number: u64, time: u64) {
        let mut c = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cut) = c.awaiting_egress.iter_mut().find(|c| c.number == number) {
            cut.time = DataflowTime(cut.time.0.max(time));
        }
        let known = c.global_times.entry(number).or_insert(time);
        *known = (*known).max(time);
        // Keep only what the cuts still to come can need.
        let oldest = c.awaiting_egress.front().map_or(c.number, |f| f.number);
        c.global_times.retain(|n, _| *n >= oldest);
    }

    /// A stop agreed with the peers (a cluster): take final checkpoint `number` (the greatest
    /// any worker proposed) and stop after it.
    pub fn adopt_final(&self, number: u64) {
        if number > self.stop_after.load(Ordering::SeqCst) {
            self.requested.fetch_max(number, Ordering::SeqCst);
            self.stop_after.fetch_max(number, Ordering::SeqCst);
        }
    }

    /// The checkpoint this run resumes from.
    pub fn restore(&self) -> Option<&Restore> {
        self.restore.as_ref()
    }

    /// The number of the first checkpoint this run writes, minus one.
    pub fn base(&self) -> u64 {
        self.collecting.lock().unwrap_or_else(|p| p.into_inner()).number.min(self.durable_number())
    }

    /// Asks for a checkpoint; returns its number (wait for it with [`Checkpoints::wait_durable`]).
    /// A checkpoint asked for while another is being taken is the next one.
    pub fn request(&self) -> u64 {
        if self.stopped.load(Ordering::SeqCst) {
            // Nothing changes any more: the final checkpoint holds the state.
            return self.durable_number().max(self.stop_after());
        }
        let captured = self.collecting.lock().unwrap_or_else(|p| p.into_inner()).number;
        let durable = self.durable_number();
        let next = captured.max(durable) + 1;
        self.requested.fetch_max(next, Ordering::SeqCst);
        next
    }

    /// The newest checkpoint number asked for.
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::SeqCst)
    }

    /// A clean stop: take a final checkpoint, then stop the workers. Returns its number.
    pub fn request_final(&self) -> u64 {
        let current = self.stop_after.load(Ordering::SeqCst);
        if current > 0 {
            return current;
        }
        let n = self.request();
        match self.stop_after.compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => n,
            Err(other) => other,
        }
    }

    /// The checkpoint after which workers stop (0: none asked).
    pub fn stop_after(&self) -> u64 {
        self.stop_after.load(Ordering::SeqCst)
    }

    /// A worker failed: no more cuts; the workers stop without a final checkpoint.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.durable_changed.notify_all();
    }

    /// The workers have stopped (called by the runtime once they all have).
    pub fn workers_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.durable_changed.notify_all();
    }

    /// Whether a worker failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// A worker's part of checkpoint `number` (called by the worker as it captures).
    pub fn captured(&self, number: u64, part: Captured) {
        let mut c = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        if c.number != number {
            c.number = number;
            c.parts.clear();
            c.started = Some(Instant::now());
        }
        let peers = self.cluster.map_or(part.state.peers, |(_, _, local)| local);
        c.parts.push(part);
        if c.parts.len() == peers {
            let mut workers = std::mem::take(&mut c.parts);
            workers.sort_by_key(|w| w.state.worker);
            let mut time = workers.iter().map(|p| p.state.time).max().unwrap_or(0);
            if let Some(&global) = c.global_times.get(&number) {
                time = time.max(global);
            }
            let time = DataflowTime(time);
            let started = c.started.take().unwrap_or_else(Instant::now);
            c.awaiting_egress.push_back(Cut {
                number,
                time,
                watermark: None,
                workers,
                egress: EgressState::default(),
                started,
            });
        }
    }

    /// For the egress: the oldest cut whose times it must close before emitting later ones.
    /// (In a cluster, once its time over every process is known: until then no time at or after
    /// the cut can be complete, as the workers that captured last are paused before it.)
    pub fn awaiting_egress(&self) -> Option<(u64, DataflowTime)> {
        let c = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        let front = c.awaiting_egress.front()?;
        if self.cluster.is_some() && !c.global_times.contains_key(&front.number) {
            return None;
        }
        Some((front.number, front.time))
    }

    /// The egress has emitted every time before the cut of `number` and cut its sink at
    /// `watermark`: the cut is complete and goes to [`Persist`].
    pub fn egress_done(&self, number: u64, watermark: Option<i64>, egress: EgressState) {
        let cut = {
            let mut c = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
            match c.awaiting_egress.front() {
                Some(cut) if cut.number == number => c.awaiting_egress.pop_front(),
                _ => None,
            }
        };
        if let Some(mut cut) = cut {
            cut.watermark = watermark;
            cut.egress = egress;
            self.persist.persist(cut);
        }
    }

    /// For the writer: checkpoint `number` is durable (or failed with `error`).
    pub fn written(&self, number: u64, error: Option<String>) {
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            None if number > d.number => {
                d.number = number;
                d.since = Instant::now();
            }
            None => {}
            Some(e) => d.failed = Some((number, e)),
        }
        self.durable_changed.notify_all();
    }

    /// Makes [`Checkpoints::health`] fail once no checkpoint became durable for `after`
    /// (the writer sets it from the interval).
    pub fn set_stale_after(&self, after: Duration) {
        self.durable.lock().unwrap_or_else(|p| p.into_inner()).stale_after = Some(after);
    }

    /// `Err` with why, when checkpoints are stuck: none became durable for longer than the
    /// stale age — the object store is failing, or the outputs (Kafka) do not take what
    /// the checkpoint waits for. Outputs that wait for a checkpoint (lake files, the
    /// restart point) wait with it, so `/readyz` reports it.
    pub fn health(&self) -> Result<(), String> {
        let d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        let Some(after) = d.stale_after else { return Ok(()) };
        let age = d.since.elapsed();
        if age <= after || self.stopped.load(Ordering::SeqCst) || self.requested() <= d.number {
            return Ok(());
        }
        let why = match &d.failed {
            Some((n, e)) if *n > d.number => format!("; checkpoint {n} failed: {e}"),
            _ => "; waiting for the outputs or the store".into(),
        };
        Err(format!("no checkpoint became durable for {:.0} s (the newest is {}){why}", age.as_secs_f64(), d.number))
    }

    /// The newest durable checkpoint.
    pub fn durable_number(&self) -> u64 {
        self.durable.lock().unwrap_or_else(|p| p.into_inner()).number
    }

    /// Waits until checkpoint `number` is durable; `Err` if it failed, the
    /// pipeline failed, or `timeout` passed.
    pub fn wait_durable(&self, number: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if d.number >= number {
                return Ok(());
            }
            if let Some((n, e)) = &d.failed {
                if *n >= number {
                    return Err(format!("checkpoint {n} failed: {e}"));
                }
            }
            if self.failed() {
                return Err("the pipeline failed".into());
            }
            if self.stopped.load(Ordering::SeqCst) && number > self.stop_after() {
                return Err(format!("the pipeline stopped before checkpoint {number}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("checkpoint {number} not durable within {:.1} s", timeout.as_secs_f64()));
            }
            d = self
                .durable_changed
                .wait_timeout(d, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A window of fixed readings, for [`Captured`]'s encoding.
    struct FixedWindow(Vec<(bool, WindowReading)>);
    impl SharedWindow for FixedWindow {
        fn visit(&self, f: &mut dyn FnMut(bool, WindowReadingRef<'_>)) {
            for (in_window, r) in &self.0 {
                f(*in_window, WindowReadingRef { ts: r.ts, tree: &r.tree, metric: r.metric, value: r.value });
            }
        }
    }

    #[test]
    fn a_captured_part_encodes_exactly_as_the_state_it_stands_for() {
        use crate::event::{Event, Position};
        let event = |line: &str, offset: u64| {
            crate::parse::parse_event(line.as_bytes(), None, Position { source: 0, offset }).expect(line)
        };
        let (mut trees, mut revisions) = (imbl::HashMap::new(), imbl::HashMap::new());
        for i in 0..50u64 {
            let tree = format!(
                r#"{{"type":"tree","tree_id":"T-{i}","region":"eu-west","lat":51.5,"lon":-0.1,"updated_at":{}}}"#,
                1_795_564_800_000 + i
            );
            let Event::Tree(t) = event(&tree, i) else { panic!("a tree") };
            trees.insert(t.tree_id.clone(), Arc::new(t));
            let a = format!(
                r#"{{"type":"assessment","assessment_id":"A-{i}","tree_id":"T-{i}","agent_id":"ag","observed_at":{},"likelihood_of_failure":"possible","likelihood_of_impact":"low","consequences":"minor"}}"#,
                1_795_564_800_000 + i
            );
            let Event::Assessment(a, _) = event(&a, 100 + i) else { panic!("an assessment") };
            revisions.insert(a.assessment_id.clone(), Arc::new(a));
        }
        let reading = |i: i64| WindowReading {
            ts: 1_000 * i,
            tree: Id::from(format!("T-{i}").as_str()),
            metric: Metric::TiltDeg,
            value: F64(i as f64 / 3.0),
        };
        let window: Vec<_> = (0..40).map(|i| (i % 3 != 0, reading(i))).collect();
        let small = WorkerState {
            worker: 1,
            peers: 2,
            time: 9,
            watermark: Some(5),
            positions: vec![PartitionPosition { source: 3, start: 0, next: 17, finished: false, digest: 7 }],
            trackers: vec![(3, 12)],
            max_ts: Some(12),
            // Rows already in the state come first, as materializing puts them.
            window: vec![reading(99)],
            sink_offsets: vec![("alerts/0".into(), 4)],
            ..Default::default()
        };
        let captured =
            || Captured::new(small.clone(), trees.clone(), revisions.clone(), Box::new(FixedWindow(window.clone())));
        let encoded = bincode::serialize(&captured()).unwrap();
        let rows = captured().rows();
        let state = captured().materialize();
        assert_eq!(rows, state.rows());
        assert_eq!(
            (state.trees.len(), state.assessments.len(), state.window.len(), state.pending.len()),
            (50, 50, 27, 14)
        );
        assert_eq!(encoded, bincode::serialize(&state).unwrap(), "the captured part's encoding differs");
        let decoded: WorkerState = bincode::deserialize(&encoded).unwrap();
        assert_eq!(bincode::serialize(&decoded).unwrap(), encoded);
    }

    struct Keep(Arc<Mutex<Vec<Cut>>>);
    impl Persist for Keep {
        fn persist(&self, cut: Cut) {
            self.0.lock().unwrap().push(cut);
        }
    }

    #[test]
    fn a_cut_completes_when_every_worker_and_the_egress_have_cut() {
        let cuts = Arc::new(Mutex::new(Vec::new()));
        let hub = Checkpoints::new(Box::new(Keep(cuts.clone())), None, 0);
        assert_eq!(hub.request(), 1);
        // Asking again before anyone captured joins the same checkpoint.
        assert_eq!(hub.request(), 1);
        hub.captured(1, Captured::complete(WorkerState { worker: 1, peers: 2, time: 7, ..Default::default() }));
        assert_eq!(hub.awaiting_egress(), None);
        hub.captured(1, Captured::complete(WorkerState { worker: 0, peers: 2, time: 5, ..Default::default() }));
        // T is the greatest capture time.
        assert_eq!(hub.awaiting_egress(), Some((1, DataflowTime(7))));
        hub.egress_done(2, None, EgressState::default()); // not this cut
        assert!(cuts.lock().unwrap().is_empty());
        hub.egress_done(1, Some(3), EgressState::default());
        let cut = cuts.lock().unwrap().pop().unwrap();
        assert_eq!((cut.number, cut.time, cut.watermark), (1, DataflowTime(7), Some(3)));
        assert_eq!(cut.workers.iter().map(|w| w.state.worker).collect::<Vec<_>>(), vec![0, 1]);
        // Now the next request is 2; durability is reported by the writer.
        assert_eq!(hub.request(), 2);
        // Cut 2 completes and cut 3 starts before the egress closes 2: neither takes the other's parts.
        hub.captured(2, Captured::complete(WorkerState { worker: 0, peers: 2, time: 9, ..Default::default() }));
        hub.captured(2, Captured::complete(WorkerState { worker: 1, peers: 2, time: 8, ..Default::default() }));
        hub.captured(3, Captured::complete(WorkerState { worker: 0, peers: 2, time: 12, ..Default::default() }));
        assert_eq!(hub.awaiting_egress(), Some((2, DataflowTime(9))));
        hub.egress_done(2, None, EgressState::default());
        hub.captured(3, Captured::complete(WorkerState { worker: 1, peers: 2, time: 11, ..Default::default() }));
        assert_eq!(hub.awaiting_egress(), Some((3, DataflowTime(12))));
        hub.egress_done(3, None, EgressState::default());
        let cuts: Vec<_> = cuts.lock().unwrap().drain(..).map(|c| (c.number, c.workers.len())).collect();
        assert_eq!(cuts, vec![(2, 2), (3, 2)]);
        assert!(hub.wait_durable(1, Duration::from_millis(10)).is_err());
        hub.written(1, None);
        assert!(hub.wait_durable(1, Duration::from_millis(10)).is_ok());
        hub.written(2, Some("store down".into()));
        assert_eq!(hub.wait_durable(2, Duration::from_secs(5)), Err("checkpoint 2 failed: store down".into()));
    }

    #[test]
    fn owners_spread_keys_over_every_worker() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner(&format!("T-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(owner("T-1", 1), 0);
    }
}
