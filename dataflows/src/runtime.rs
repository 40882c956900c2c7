//! Input handling, stepping and wiring: runs the view dataflows on timely
//! workers, fed by a [`Source`] per worker, delivering views to a [`Catalog`]
//! and alerts/dead letters to a [`Sink`] per worker.
//!
//! # Watermark
//!
//! Each worker tracks, per watermark partition it reads, the greatest reading
//! `ts` and when a reading last arrived. Every round it broadcasts a
//! [`Report`] to all workers (through a small timely dataflow, so this works
//! across processes too); every worker derives the same global watermark from
//! the latest reports (DOMAIN §3: the least maximum over active partitions
//! minus the allowed lateness; the greatest `ts` seen once every partition is
//! idle or finished, or at the end of a bounded input). The watermark never
//! goes back.
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

use crate::event::{Event, Id, Metric, F64};
use crate::parse::{parse_event, MAX_MESSAGE_BYTES};
use crate::source::{Alert, AlertKind, DeadLetter, Poll, RawMessage, ScoreChange, SinkFactory, SourceFactory};
use crate::store::{Catalog, ViewChange};
use crate::time::{DataflowTime, HOUR_MS};
use crate::views::{self, ScoreRow};
use differential_dataflow::input::InputSession;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Input as _;
use timely::dataflow::operators::Inspect;
use timely::dataflow::{InputHandleVec, ProbeHandle};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A source could not be opened (the input's fault, e.g. a missing file).
    #[error("cannot open source: {0}")]
    Source(String),
    /// timely could not start its workers (the machine's fault).
    #[error("cannot start workers: {0}")]
    Start(String),
    /// A worker thread failed (our fault).
    #[error("worker failed: {0}")]
    Worker(String),
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

/// What a worker tells its peers each round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Report {
    worker: usize,
    round: u64,
    /// Least "greatest ts" over this worker's active partitions.
    active_min: Option<i64>,
    /// Greatest ts this worker has seen.
    max_ts: Option<i64>,
    /// This worker's bounded input is exhausted.
    done: bool,
    /// This worker's input time.
    time: u64,
}

/// The global watermark from every worker's latest report (`None` until all reported).
fn global_watermark(reports: &[Option<Report>], lateness_ms: i64) -> Option<Option<i64>> {
    let mut all_done = true;
    let mut max_ts: Option<i64> = None;
    let mut active_min: Option<i64> = None;
    for r in reports {
        let r = r.as_ref()?;
        all_done &= r.done;
        max_ts = max_ts.max(r.max_ts);
        if let Some(a) = r.active_min {
            active_min = Some(active_min.map_or(a, |m: i64| m.min(a)));
        }
    }
    Some(match active_min {
        // End of a bounded input: no lateness (DOMAIN §3).
        _ if all_done => max_ts,
        Some(a) => Some(a - lateness_ms),
        // Every partition idle or finished: the quiet-stream rule.
        None => max_ts,
    })
}

/// Per-partition reading times of one worker.
struct PartitionTracker {
    partitions: HashMap<u32, (i64, Instant)>,
    max_ts: Option<i64>,
}

impl PartitionTracker {
    fn observe(&mut self, partition: u32, ts: i64, now: Instant) {
        let e = self.partitions.entry(partition).or_insert((ts, now));
        e.0 = e.0.max(ts);
        e.1 = now;
        self.max_ts = self.max_ts.max(Some(ts));
    }
    fn active_min(&self, now: Instant, idle: Duration) -> Option<i64> {
        self.partitions.values().filter(|(_, seen)| now.duration_since(*seen) < idle).map(|(ts, _)| *ts).min()
    }
}

/// A reading waiting for the watermark (keyed by `ts`) or for its expiry (keyed by `ts + 1h`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Timed {
    at: i64,
    tree: Id,
    metric: Metric,
    value: F64,
}

type WindowInput = InputSession<u64, (Id, (Metric, F64)), isize>;

/// Readings bucketed by the second of their `at`: pushing is O(1), and taking
/// everything up to a time touches only the buckets it empties (and the one it cuts).
#[derive(Default)]
struct TimeQueue {
    buckets: BTreeMap<i64, Vec<Timed>>,
}

impl TimeQueue {
    fn push(&mut self, t: Timed) {
        self.buckets.entry(t.at.div_euclid(1000)).or_default().push(t);
    }
    /// Removes and passes to `f` every reading with `at <= w`.
    fn take_until(&mut self, w: i64, mut f: impl FnMut(Timed)) {
        let last = w.div_euclid(1000);
        while let Some(mut entry) = self.buckets.first_entry() {
            if *entry.key() < last {
                entry.remove().into_iter().for_each(&mut f);
            } else if *entry.key() == last {
                let bucket = entry.get_mut();
                let mut i = 0;
                while i < bucket.len() {
                    if bucket[i].at <= w {
                        f(bucket.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                if bucket.is_empty() {
                    entry.remove();
                }
                break;
            } else {
                break;
            }
        }
    }
}

/// Moves readings into and out of the window as the watermark advances.
#[derive(Default)]
struct WindowDriver {
    pending: TimeQueue,
    live: TimeQueue,
}

/// How a reading was handled.
enum Offer {
    Pending,
    Applied { late: bool },
    Expired,
}

impl WindowDriver {
    fn offer(&mut self, t: Timed, w: Option<i64>, input: &mut WindowInput) -> Offer {
        match w {
            Some(w) if t.at <= w => {
                if t.at > w - HOUR_MS {
                    Self::insert(&mut self.live, t, input);
                    Offer::Applied { late: true }
                } else {
                    Offer::Expired
                }
            }
            _ => {
                self.pending.push(t);
                Offer::Pending
            }
        }
    }
    fn insert(live: &mut TimeQueue, mut t: Timed, input: &mut WindowInput) {
        input.update((t.tree.clone(), (t.metric, t.value)), 1);
        t.at += HOUR_MS;
        live.push(t);
    }
    /// Applies watermark `w` at the input's current time; returns whether anything changed.
    fn advance(&mut self, w: i64, input: &mut WindowInput) -> bool {
        let mut changed = false;
        let live = &mut self.live;
        self.pending.take_until(w, |t| {
            // A reading that the watermark jumped past entirely was never in a window.
            if t.at > w - HOUR_MS {
                Self::insert(live, t, input);
                changed = true;
            }
        });
        self.live.take_until(w, |t| {
            input.update((t.tree, (t.metric, t.value)), -1);
            changed = true;
        });
        changed
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

type ChangeBuffer = Rc<RefCell<Vec<(ViewChange, DataflowTime, isize)>>>;
type ScoreBuffer = Rc<RefCell<Vec<(Id, ScoreRow, u64, isize)>>>;

/// Turns the `tree_scores` changes of one completed time into alerts (DOMAIN §5).
pub fn alerts_of(changes: &mut [(Id, ScoreRow, isize)], watermark: Option<i64>) -> Vec<Alert> {
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let tree = changes[i].0.clone();
        let (mut old, mut new) = (None, None);
        while i < changes.len() && changes[i].0 == tree {
            if changes[i].2 < 0 {
                old = Some(&changes[i].1);
            } else if changes[i].2 > 0 {
                new = Some(&changes[i].1);
            }
            i += 1;
        }
        let was = old.map(|o| o.score.band.as_str());
        let is = new.map(|n| n.score.band.as_str());
        let kind = match (was, is) {
            (w, Some("critical")) if w != Some("critical") => AlertKind::Critical,
            (Some("critical"), i) if i != Some("critical") => AlertKind::Resolved,
            _ => continue,
        };
        let basis = new.or(old).map(|r| (r.region, r.score.top_penalty()));
        out.push(Alert {
            kind,
            tree_id: tree.to_string(),
            region: basis.map(|b| b.0),
            score: new.map(|n| n.score.score.0),
            band: is.unwrap_or("unregistered").to_string(),
            previous_band: was.map(str::to_string),
            watermark,
            top_penalty: basis.map_or("none", |b| b.1).to_string(),
        });
    }
    out
}

/// Runs the pipeline until every source is done (bounded input) or `shutdown` is set.
pub fn run(
    config: RuntimeConfig,
    sources: SourceFactory,
    sinks: SinkFactory,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let workers = config.workers.max(1);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        worker_main(worker, &config, &sources, &sinks, &catalog, &stats, &shutdown)
    })
    .map_err(RuntimeError::Start)?;
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(panic) => first_error = first_error.or(Some(RuntimeError::Worker(panic))),
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[allow(clippy::too_many_lines)]
fn worker_main(
    worker: &mut timely::worker::Worker,
    config: &RuntimeConfig,
    sources: &SourceFactory,
    sinks: &SinkFactory,
    catalog: &Arc<Catalog>,
    stats: &Arc<Stats>,
    shutdown: &Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let index = worker.index();
    let peers = worker.peers();
    let mut source = sources(index, peers).map_err(RuntimeError::Source)?;
    let mut sink = sinks(index);

    let probe = ProbeHandle::new();
    let changes: ChangeBuffer = Rc::default();
    let scores: ScoreBuffer = Rc::default();
    let mut tree_in = InputSession::<u64, (Id, crate::event::TreeEvent), isize>::new();
    let mut assessment_in = InputSession::<u64, (Id, crate::event::AssessmentEvent), isize>::new();
    let mut reading_in: WindowInput = InputSession::new();

    worker.dataflow::<u64, _, _>(|scope| {
        let tree_versions = tree_in.to_collection(scope);
        let revisions = assessment_in.to_collection(scope);
        let window = reading_in.to_collection(scope);

        let trees = views::current_trees(tree_versions);
        let live = views::live_assessments(revisions);
        let afiss = views::afiss_current(live.clone());
        let windows = views::sensor_windows(window);
        let tree_scores = views::tree_scores(trees.clone(), afiss.clone(), windows.clone());
        let regions = views::region_summary(tree_scores.clone());
        let agents = views::agent_activity(live);

        macro_rules! deliver {
            ($coll:expr, $variant:path) => {{
                let buf = changes.clone();
                $coll
                    .inspect_batch(move |_, updates| {
                        buf.borrow_mut().extend(
                            updates.iter().map(|((k, v), t, r)| ($variant(k.clone(), v.clone()), DataflowTime(*t), *r)),
                        );
                    })
                    .probe_with(&probe);
            }};
        }
        deliver!(trees, ViewChange::Tree);
        deliver!(afiss, ViewChange::Afiss);
        deliver!(windows, ViewChange::Window);
        deliver!(regions, ViewChange::Region);
        deliver!(agents, ViewChange::Agent);
        let buf = changes.clone();
        let score_buf = scores.clone();
        tree_scores
            .inspect_batch(move |_, updates| {
                let mut buf = buf.borrow_mut();
                let mut score_buf = score_buf.borrow_mut();
                for ((k, v), t, r) in updates {
                    buf.push((ViewChange::Score(k.clone(), v.clone()), DataflowTime(*t), *r));
                    score_buf.push((k.clone(), v.clone(), *t, *r));
                }
            })
            .probe_with(&probe);
    });

    // The control dataflow: every worker's report reaches every worker.
    let reports: Rc<RefCell<Vec<Option<Report>>>> = Rc::new(RefCell::new(vec![None; peers]));
    let mut control = InputHandleVec::<u64, Report>::new();
    {
        let reports = reports.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            scope.input_from(&mut control).broadcast().inspect(move |r: &Report| {
                let mut reports = reports.borrow_mut();
                if reports[r.worker].as_ref().is_none_or(|old| old.round < r.round) {
                    reports[r.worker] = Some(r.clone());
                }
            });
        });
    }

    let mut tracker = PartitionTracker { partitions: HashMap::new(), max_ts: None };
    let mut driver = WindowDriver::default();
    let mut time = DataflowTime::new(None, 0);
    let mut watermark: Option<i64> = None;
    let mut done = false;
    let mut round = 0u64;
    let mut pending_alerts: BTreeMap<u64, Vec<(Id, ScoreRow, isize)>> = BTreeMap::new();
    let mut lag_target = time;
    let mut rejections = Vec::new();

    let deliver = |probe: &ProbeHandle<u64>,
                   watermark: Option<i64>,
                   pending_alerts: &mut BTreeMap<u64, Vec<(Id, ScoreRow, isize)>>,
                   sink: &mut Box<dyn crate::source::Sink>| {
        let frontier = probe.with_frontier(|f| f.first().copied());
        let batch = std::mem::take(&mut *changes.borrow_mut());
        catalog.deliver(index, frontier.map(DataflowTime), watermark, batch);
        for (k, v, t, r) in scores.borrow_mut().drain(..) {
            pending_alerts.entry(t).or_default().push((k, v, r));
        }
        let complete: Vec<u64> =
            pending_alerts.keys().copied().take_while(|t| frontier.is_none_or(|f| *t < f)).collect();
        for t in complete {
            if let Some(mut changes) = pending_alerts.remove(&t) {
                let watermark = DataflowTime(t).watermark();
                for (tree_id, row, diff) in &changes {
                    sink.score_change(&ScoreChange {
                        tree_id: tree_id.clone(),
                        row: row.clone(),
                        diff: *diff,
                        time: t,
                        watermark,
                    });
                }
                for alert in alerts_of(&mut changes, watermark) {
                    stats.alerts.fetch_add(1, Ordering::Relaxed);
                    sink.alert(alert);
                }
            }
        }
        sink.flush();
    };

    loop {
        round += 1;
        let now = Instant::now();
        let mut dirty = false;
        let (mut read, mut valid, mut rejected, mut expired, mut late) = (0u64, [0u64; 3], 0u64, 0u64, 0u64);

        // 1. Read a batch and apply it at the current time.
        let arrival_ms = now_ms();
        if !done {
            let status = source.poll(config.batch, &mut |msg: RawMessage<'_>| {
                read += 1;
                match parse_event(msg.bytes, msg.kind, msg.pos) {
                    Ok(event) => {
                        sink.event(&event, msg.pos, arrival_ms);
                        match event {
                            Event::Tree(t) => {
                                valid[0] += 1;
                                tree_in.update((t.tree_id.clone(), t), 1);
                                dirty = true;
                            }
                            Event::Assessment(a, _notes) => {
                                valid[1] += 1;
                                assessment_in.update((a.assessment_id.clone(), a), 1);
                                dirty = true;
                            }
                            Event::Reading(r) => {
                                valid[2] += 1;
                                tracker.observe(msg.partition, r.ts, now);
                                let t = Timed { at: r.ts, tree: r.tree_id, metric: r.metric, value: r.value };
                                match driver.offer(t, watermark, &mut reading_in) {
                                    Offer::Pending => {}
                                    Offer::Applied { late: is_late } => {
                                        late += u64::from(is_late);
                                        dirty = true;
                                    }
                                    Offer::Expired => expired += 1,
                                }
                            }
                        }
                    }
                    Err(rejection) => {
                        rejected += 1;
                        rejections.push((
                            msg.bytes[..msg.bytes.len().min(MAX_MESSAGE_BYTES)].to_vec(),
                            msg.key.map(<[u8]>::to_vec),
                            msg.pos,
                            rejection,
                        ));
                    }
                }
            });
            for (raw, key, pos, rejection) in rejections.drain(..) {
                let label = rejection.label();
                *stats.rejected_by_label.lock().unwrap_or_else(|p| p.into_inner()).entry(label.clone()).or_default() +=
                    1;
                sink.dead_letter(DeadLetter {
                    raw,
                    key,
                    source: source.describe(pos),
                    pos,
                    arrival_ms,
                    reason: rejection.to_string(),
                    label,
                });
            }
            if status == Poll::Done {
                done = true;
            }
        }
        stats.events_read.fetch_add(read, Ordering::Relaxed);
        for (counter, n) in stats.events_valid.iter().zip(valid) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        stats.events_rejected.fetch_add(rejected, Ordering::Relaxed);
        stats.readings_expired.fetch_add(expired, Ordering::Relaxed);
        stats.readings_late.fetch_add(late, Ordering::Relaxed);

        // 2. Tell the peers where we are; learn the global watermark and the greatest peer time.
        let active_min = if done { None } else { tracker.active_min(now, config.idle_timeout) };
        control.send(Report { worker: index, round, active_min, max_ts: tracker.max_ts, done, time: time.0 });
        control.advance_to(round);
        worker.step();
        let (global, peer_time, all_done) = {
            let reports = reports.borrow();
            let global = global_watermark(&reports, config.allowed_lateness_ms);
            let peer_time = reports.iter().flatten().map(|r| r.time).max().unwrap_or(0);
            let all_done = reports.iter().all(|r| r.as_ref().is_some_and(|r| r.done));
            (global, peer_time, all_done)
        };

        // 3. Advance the watermark: release readings that became visible, retract expired ones.
        let mut target = if dirty { time.next_seq() } else { time };
        if let Some(Some(w)) = global {
            if watermark.is_none_or(|old| w > old) {
                target = target.max(DataflowTime::new(Some(w), 0));
            }
        }
        target = target.max(DataflowTime(peer_time));
        if target.watermark() > watermark {
            watermark = target.watermark();
            if let Some(w) = watermark {
                stats.watermark.fetch_max(w, Ordering::Relaxed);
                tree_in.advance_to(target.0);
                assessment_in.advance_to(target.0);
                reading_in.advance_to(target.0);
                if driver.advance(w, &mut reading_in) {
                    target = target.next_seq();
                }
            }
        }
        time = target;
        tree_in.advance_to(time.0);
        assessment_in.advance_to(time.0);
        reading_in.advance_to(time.0);
        tree_in.flush();
        assessment_in.flush();
        reading_in.flush();

        // 4. Finished: every worker is done and the final watermark is applied.
        let final_w = global.flatten();
        if (done && all_done && watermark >= final_w) || shutdown.load(Ordering::Relaxed) {
            break;
        }

        // 5. Step, keeping at most one round in flight; hand completed changes to the catalog.
        while probe.less_than(&lag_target.0) && !shutdown.load(Ordering::Relaxed) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        lag_target = time;
        worker.step_or_park(Some(Duration::ZERO));
        deliver(&probe, watermark, &mut pending_alerts, &mut sink);
        if !dirty && read == 0 {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    }

    // Close the inputs and drain the dataflow.
    drop(tree_in);
    drop(assessment_in);
    drop(reading_in);
    drop(control);
    while probe.with_frontier(|f| !f.is_empty()) {
        worker.step_or_park(Some(Duration::from_millis(1)));
        deliver(&probe, watermark, &mut pending_alerts, &mut sink);
        if shutdown.load(Ordering::Relaxed) && probe.with_frontier(|f| !f.is_empty()) {
            // On shutdown the peers may be gone; do not wait forever.
            break;
        }
    }
    deliver(&probe, watermark, &mut pending_alerts, &mut sink);
    sink.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Region;
    use crate::rating::{tree_score, ScoreInputs};

    fn report(worker: usize, active_min: Option<i64>, max_ts: Option<i64>, done: bool) -> Option<Report> {
        Some(Report { worker, round: 1, active_min, max_ts, done, time: 0 })
    }

    #[test]
    fn watermark_rules() {
        // Not everyone has reported: no watermark decision yet.
        assert_eq!(global_watermark(&[report(0, Some(10_000), Some(10_000), false), None], 5_000), None);
        // Least maximum over active partitions, minus lateness.
        let r = [report(0, Some(20_000), Some(30_000), false), report(1, Some(12_000), Some(12_000), false)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(7_000)));
        // A finished or idle worker does not hold the watermark back.
        let r = [report(0, Some(20_000), Some(30_000), false), report(1, None, Some(12_000), true)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(15_000)));
        // Quiet stream: every partition idle -> the greatest ts seen.
        let r = [report(0, None, Some(30_000), false), report(1, None, Some(12_000), false)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(30_000)));
        // End of a bounded input: the greatest ts, no lateness.
        let r = [report(0, None, Some(30_000), true), report(1, None, Some(31_000), true)];
        assert_eq!(global_watermark(&r, 5_000), Some(Some(31_000)));
        // No readings at all: no watermark.
        let r = [report(0, None, None, true)];
        assert_eq!(global_watermark(&r, 5_000), Some(None));
    }

    fn row(inputs: ScoreInputs) -> ScoreRow {
        ScoreRow { region: Region::EuWest, score: tree_score(&inputs) }
    }

    #[test]
    fn one_alert_per_transition_into_or_out_of_critical() {
        use crate::event::RiskRating;
        // High risk (base 35) with one defect: 33, critical. Unassessed with a 30 tilt penalty: 45, poor.
        let critical = row(ScoreInputs { risk: Some(RiskRating::High), defect_severity_sum: 1, ..Default::default() });
        let poor = row(ScoreInputs { tilt_max: Some(7.0), ..Default::default() });
        let good = row(ScoreInputs { risk: Some(RiskRating::Low), ..Default::default() });
        let worse = row(ScoreInputs { risk: Some(RiskRating::High), defect_severity_sum: 3, ..Default::default() });
        assert_eq!(
            (critical.score.band.as_str(), poor.score.band.as_str(), good.score.band.as_str()),
            ("critical", "poor", "good")
        );
        let id = |s: &str| Id::from(s);
        let mut changes = vec![
            (id("T-1"), poor.clone(), -1),
            (id("T-1"), critical.clone(), 1), // poor -> critical
            (id("T-2"), critical.clone(), 1), // first scoring, critical
            (id("T-3"), critical.clone(), -1),
            (id("T-3"), good.clone(), 1), // critical -> good
            (id("T-4"), poor.clone(), -1),
            (id("T-4"), good.clone(), 1),      // poor -> good: no alert
            (id("T-5"), critical.clone(), -1), // unregistered while critical
            (id("T-6"), critical.clone(), -1),
            (id("T-6"), worse, 1), // critical -> critical: no alert
        ];
        let alerts = alerts_of(&mut changes, Some(42));
        let got: Vec<(&str, &str, &str, Option<&str>)> = alerts
            .iter()
            .map(|a| (a.tree_id.as_str(), a.kind.as_str(), a.band.as_str(), a.previous_band.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("T-1", "critical", "critical", Some("poor")),
                ("T-2", "critical", "critical", None),
                ("T-3", "resolved", "good", Some("critical")),
                ("T-5", "resolved", "unregistered", Some("critical")),
            ]
        );
        assert!(alerts.iter().all(|a| a.watermark == Some(42)));
        assert_eq!(alerts[0].top_penalty, "defect");
        assert_eq!(alerts[0].score, Some(33.0));
        assert_eq!(alerts[2].top_penalty, "none");
    }
}
