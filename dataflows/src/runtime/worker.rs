//! One timely worker: builds the view dataflow and the control dataflow, then
//! loops — read a round, agree on the watermark, advance time, step, hand the
//! view changes and the frontier to the egress.

use super::egress::{Egress, Message};
use super::ingest::{read_round, Inputs};
use super::watermark::{global_watermark, PartitionTracker, Report};
use super::window::WindowDriver;
use super::{InjectedFault, RuntimeConfig, RuntimeError, Stats};
use crate::checkpoint::{owner, Captured, Checkpoints, WorkerState};
use crate::source::{Sink, SinkFactory, SinkRole, SourceFactory};
use crate::store::ViewChange;
use crate::time::DataflowTime;
use crate::views;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Input as _;
use timely::dataflow::operators::Inspect;
use timely::dataflow::{InputHandleVec, ProbeHandle};

type ChangeBuffer = Rc<RefCell<Vec<(ViewChange, DataflowTime, isize)>>>;

/// Rounds a worker may have in the dataflow before it reads the next batch: with more than
/// one, a worker reads and applies a round while the previous one is still being computed
/// (the workers of a round wait for each other at its exchanges), at the price of a longer
/// queue of input rounds.
const ROUNDS_IN_FLIGHT: usize = 2;

/// With `processes > 1`: every update of `coll` also goes to one worker of every other
/// process (the one with the sender's local index), so that each process's egress — and
/// so its catalog, its SQL — sees the whole cluster's views. Costs one copy of every view
/// change per other process, over the network.
fn to_every_process<'s, K, V>(
    coll: crate::views::Keyed<'s, u64, K, V>,
    processes: usize,
    local_workers: usize,
    index: usize,
) -> crate::views::Keyed<'s, u64, K, V>
where
    K: timely::ExchangeData + Clone,
    V: timely::ExchangeData + Clone,
{
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::vec::Map;
    use timely::dataflow::operators::Exchange;
    if processes <= 1 {
        return coll;
    }
    let slot = index % local_workers;
    coll.inner
        .flat_map(move |(kv, t, r)| {
            (0..processes).map(move |p| ((p * local_workers + slot) as u64, (kv.clone(), t, r)))
        })
        .exchange(|(target, _)| *target)
        .map(|(_, update)| update)
        .as_collection()
}

/// Builds the six views over `inputs`; their updates go to `changes`, their progress to `probe`.
/// In a cluster of `processes`, every process's workers receive the whole views.
fn build_views(
    worker: &mut timely::worker::Worker,
    inputs: &mut Inputs,
    changes: &ChangeBuffer,
    processes: usize,
) -> ProbeHandle<u64> {
    let probe = ProbeHandle::new();
    let (index, local_workers) = (worker.index(), worker.peers() / processes.max(1));
    worker.dataflow::<u64, _, _>(|scope| {
        let tree_versions = inputs.trees.to_collection(scope);
        let revisions = inputs.assessments.to_collection(scope);
        let window = inputs.readings.to_collection(scope);

        let trees = views::current_trees(tree_versions);
        let live = views::live_assessments(revisions);
        let afiss = views::afiss_current(live.clone());
        let (windows, tree_scores) = views::windows_and_scores(trees.clone(), afiss.clone(), window);
        let regions = views::region_summary(tree_scores.clone());
        let agents = views::agent_activity(live);

        macro_rules! egress {
            ($coll:expr, $variant:path) => {{
                let buf = changes.clone();
                to_every_process($coll, processes, local_workers, index)
                    .inspect_batch(move |_, updates| {
                        buf.borrow_mut().extend(
                            updates
                                .iter()
                                .map(|((k, v), t, r)| ($variant(k.clone(), v.clone().into()), DataflowTime(*t), *r)),
                        );
                    })
                    .probe_with(&probe);
            }};
        }
        egress!(trees, ViewChange::Tree);
        egress!(afiss, ViewChange::Afiss);
        egress!(windows, ViewChange::Window);
        egress!(tree_scores, ViewChange::Score);
        egress!(regions, ViewChange::Region);
        egress!(agents, ViewChange::Agent);
    });
    probe
}

/// Hands this round's view changes and the worker's frontier to the egress.
struct ToEgress {
    index: usize,
    egress: Arc<Egress>,
    changes: ChangeBuffer,
    last: Option<(Option<DataflowTime>, Option<i64>)>,
    /// Events applied since the last send: `(time, arrival ms, events)`.
    arrivals: Vec<(DataflowTime, i64, u64)>,
}

impl ToEgress {
    fn send(&mut self, probe: &ProbeHandle<u64>, input_watermark: Option<i64>) {
        let updates = std::mem::take(&mut *self.changes.borrow_mut());
        let frontier = probe.with_frontier(|f| f.first().copied()).map(DataflowTime);
        let progressed = self.last != Some((frontier, input_watermark));
        if updates.is_empty() && !progressed && self.arrivals.is_empty() {
            return;
        }
        self.last = Some((frontier, input_watermark));
        let updates = (!updates.is_empty()).then_some(Message::Updates(updates));
        let arrivals = (!self.arrivals.is_empty()).then(|| Message::Arrivals(std::mem::take(&mut self.arrivals)));
        let progress = progressed.then_some(Message::Progress { frontier, input_watermark });
        self.egress.deliver(self.index, updates.into_iter().chain(arrivals).chain(progress));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn worker_main(
    worker: &mut timely::worker::Worker,
    config: &RuntimeConfig,
    sources: &SourceFactory,
    sinks: &SinkFactory,
    egress: Arc<Egress>,
    stats: &Arc<Stats>,
    shutdown: &Arc<AtomicBool>,
    hub: Option<&Arc<Checkpoints>>,
) -> Result<(), RuntimeError> {
    let index = worker.index();
    let peers = worker.peers();
    let mut source = sources(index, peers)?;
    let mut sink: Box<dyn Sink> = sinks(SinkRole::Worker(index));

    let changes: ChangeBuffer = Rc::default();
    let mut inputs = Inputs::new();
    let (_, processes) = config.process();
    let probe = build_views(worker, &mut inputs, &changes, processes);
    let mut egress = ToEgress { index, egress, changes, last: None, arrivals: Vec::new() };

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
    // The times of the rounds in flight, oldest first (see step 5).
    let mut in_flight: std::collections::VecDeque<DataflowTime> = [time].into();
    // Checkpoints: the newest this worker captured; paused until every worker has captured it.
    let mut captured = hub.map_or(0, |h| h.base());
    let mut paused = false;
    // A stop with a final checkpoint is under way: read nothing, apply no watermark.
    let mut frozen = false;
    // This worker's input is done and the final watermark applied (reported to the peers).
    let mut finished = false;
    let mut catching_up = hub.is_some_and(|h| h.restore().is_some());
    // This worker's last two captures `(checkpoint, time)`, reported to the peers.
    let mut cuts = [(0u64, 0u64); 2];

    if let Some(restore) = hub.and_then(|h| h.restore()) {
        source.seek(&restore.workers.iter().flat_map(|w| w.positions.iter().copied()).collect::<Vec<_>>())?;
        // The restored state goes in at the cut's time; the watermark is applied at the next one.
        time = restore.time;
        inputs.advance_to(time.0);
        let now = Instant::now();
        for w in &restore.workers {
            for t in w.trees.iter().filter(|t| owner(&t.tree_id, peers) == index) {
                inputs.upsert_tree(t.clone());
            }
            for a in w.assessments.iter().filter(|a| owner(&a.assessment_id, peers) == index) {
                inputs.upsert_assessment(a.clone());
            }
            for (r, live) in w.window.iter().map(|r| (r, true)).chain(w.pending.iter().map(|r| (r, false))) {
                if owner(&r.tree, peers) == index {
                    driver.restore(r.clone(), live);
                }
            }
            // Watermark trackers: a worker's own with the same number of workers, else those
            // of the partitions (Kafka's) this worker's source owns now.
            for &(partition, ts) in &w.trackers {
                if (w.peers == peers && w.worker == index) || (w.peers != peers && source.owns(partition)) {
                    tracker.partitions.insert(partition, (ts, now));
                    tracker.max_ts = tracker.max_ts.max(Some(ts));
                }
            }
            if w.peers == peers && w.worker == index {
                tracker.max_ts = tracker.max_ts.max(w.max_ts);
            }
        }
        driver.flush(&mut inputs.readings);
        time = time.next_seq();
        in_flight = [time].into();
        inputs.advance_to(time.0);
        inputs.flush();
    }

    loop {
        round += 1;
        let now = Instant::now();
        if round % 256 == 1 {
            // What this worker reads, for `GET /v1/admin/cluster`.
            let mut partitions: Vec<u32> = source.positions().iter().map(|p| p.source).collect();
            partitions.sort_unstable();
            partitions.dedup();
            stats.layout.lock().unwrap_or_else(|p| p.into_inner()).partitions.insert(index, partitions);
        }
        stats.last_round_ms.store(super::now_ms(), Ordering::Relaxed);
        if index == 0 {
            match config.fault {
                Some(InjectedFault::PanicAfterRounds(n)) if round >= n => {
                    panic!("injected fault: panic in round {round}")
                }
                Some(InjectedFault::StallAfterRounds(n)) if round >= n => {
                    tracing::warn!("injected fault: worker 0 stalls in round {round}");
                    loop {
                        std::thread::park();
                    }
                }
                _ => {}
            }
        }

        // 0. A checkpoint asked for: capture this worker's part and pause until every worker has.
        if let Some(hub) = hub {
            let mut asked = hub.requested().max(reports.borrow().iter().flatten().map(|r| r.asked).max().unwrap_or(0));
            if hub.stop_after() > 0 {
                // Stopping: the final checkpoint is the last one.
                asked = asked.min(hub.stop_after());
            }
            if !paused && asked > captured && !hub.failed() {
                captured += 1;
                let state = WorkerState {
                    worker: index,
                    peers,
                    time: time.0,
                    watermark,
                    positions: source.positions(),
                    trackers: tracker.partitions.iter().map(|(p, (ts, _))| (*p, *ts)).collect(),
                    max_ts: tracker.max_ts,
                    ..Default::default()
                };
                let window = Box::new(driver.share());
                let mut state = state;
                state.sink_offsets = sink.checkpoint(captured);
                // Report progress even if nothing changed, so an idle pipeline closes the cut too.
                egress.last = None;
                hub.captured(
                    captured,
                    Captured::new(state, inputs.tree_versions.clone(), inputs.revisions.clone(), window),
                );
                cuts = [cuts[1], (captured, time.0)];
                paused = true;
            }
        }

        // 1. Read a batch and apply it at the current time.
        frozen |= hub.is_some_and(|h| h.stop_after() > 0 && !h.failed());
        let read = if done || paused || frozen {
            Default::default()
        } else {
            read_round(
                source.as_mut(),
                config.batch,
                sink.as_mut(),
                &mut inputs,
                &mut tracker,
                &mut driver,
                watermark,
                stats,
            )
        };
        done |= read.done;
        if let (Some(InjectedFault::SlowRounds(ms)), true) = (config.fault, read.read > 0) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if read.applied > 0 {
            egress.arrivals.push((time, read.arrival_ms, read.applied));
        }
        // A span for the rest of a round that read events (`dataflow.round`, debug level: exported
        // with --otlp-endpoint and TREEAI_OTLP_FILTER=info,treeai_dataflows=debug).
        let _round = (read.read > 0).then(|| {
            tracing::debug_span!(
                "dataflow.round",
                treeai.worker = index,
                treeai.round = round,
                treeai.events = read.read
            )
            .entered()
        });
        if catching_up && !paused && (read.read < config.batch as u64 || done) && (done || source.caught_up()) {
            catching_up = false;
            stats.catching_up.fetch_sub(1, Ordering::SeqCst);
        }

        // 2. Tell the peers where we are; learn the global watermark and the greatest peer time.
        let active_min = if done { None } else { tracker.active_min(now, config.idle_timeout) };
        let asked = hub.map_or(0, |h| h.requested()).max(captured);
        control.send(Report {
            worker: index,
            round,
            active_min,
            max_ts: tracker.max_ts,
            done,
            time: time.0,
            asked,
            captured,
            finished,
            stopping: shutdown.load(Ordering::Relaxed),
            cuts,
            final_cut: hub.map_or(0, |h| h.stop_after()),
        });
        control.advance_to(round);
        worker.step();
        let (global, peer_time, all_done, all_captured, all_finished, final_agreed) = {
            let reports = reports.borrow();
            let global = global_watermark(&reports, config.allowed_lateness_ms);
            let peer_time = reports.iter().flatten().map(|r| r.time).max().unwrap_or(0);
            let all_done = reports.iter().all(|r| r.as_ref().is_some_and(|r| r.done));
            let all_captured = reports.iter().all(|r| r.as_ref().is_some_and(|r| r.captured >= captured));
            let all_finished = reports.iter().all(|r| r.as_ref().is_some_and(|r| r.finished));
            if let Some(asker) = reports.iter().position(|r| r.as_ref().is_some_and(|r| r.stopping)) {
                // A peer (in a cluster: maybe another process) was asked to stop: all stop together.
                if !shutdown.swap(true, Ordering::SeqCst) && processes > 1 {
                    // Once per process (the first of its workers to see it): whose stop it follows.
                    tracing::warn!(
                        "stopping: worker {asker} (process {}) was asked to stop; the cluster stops together",
                        asker / (peers / processes)
                    );
                }
            }
            let mut final_agreed = false;
            if let (Some(hub), true) = (hub, processes > 1) {
                if paused && all_captured {
                    // Every worker of every process has captured: the cut's time is the greatest
                    // capture time. The hub learns it before this worker inserts anything after it.
                    let t = reports
                        .iter()
                        .flatten()
                        .flat_map(|r| r.cuts.iter().filter(|c| c.0 == captured).map(|c| c.1))
                        .max()
                        .unwrap_or(time.0);
                    hub.global_cut(captured, t);
                    // The egress can close the cut only now that its time is known: report
                    // progress again even if nothing moved (an idle process's frontier may
                    // already stand at the cut, and would never be sent again).
                    egress.last = None;
                }
                // The final checkpoint of a stop is the greatest any worker proposed; workers
                // stop once every one has adopted it and captured it.
                let proposed = reports.iter().flatten().map(|r| r.final_cut).max().unwrap_or(0);
                hub.adopt_final(proposed);
                let last = hub.stop_after();
                final_agreed = last > 0
                    && reports.iter().all(|r| r.as_ref().is_some_and(|r| r.final_cut == last && r.captured >= last));
            }
            (global, peer_time, all_done, all_captured, all_finished, final_agreed)
        };
        // Every worker has captured: the cut is complete (the peer time below is past it), resume.
        paused &= !all_captured;

        // 3. Advance the watermark: release readings that became visible, retract expired ones.
        //    (Not while paused: a paused worker inserts nothing.)
        let mut target = if read.dirty { time.next_seq() } else { time };
        if let Some(Some(w)) = global {
            if !paused && !frozen && watermark.is_none_or(|old| w > old) {
                target = target.max(DataflowTime::new(Some(w), 0));
            }
        }
        target = target.max(DataflowTime(peer_time));
        if !paused && !frozen && target.watermark() > watermark {
            watermark = target.watermark();
            if let Some(w) = watermark {
                stats.watermark.fetch_max(w, Ordering::Relaxed);
                inputs.advance_to(target.0);
                let released = driver.advance(w, &mut inputs.readings);
                egress.arrivals.extend(driver.take_released().map(|(arrival, n)| (target, arrival, n)));
                if released {
                    target = target.next_seq();
                }
            }
        }
        time = target;
        inputs.advance_to(time.0);
        inputs.flush();

        // 4. Finished: every worker is done and the final watermark is applied, or asked to
        //    stop; with checkpoints, once a final checkpoint is captured by every worker.
        //    A final checkpoint is asked for once every worker has finished (nothing more will be
        //    inserted), or at once on a stop (inputs are frozen from then on); workers stop when
        //    every one has captured it.
        let final_w = global.flatten();
        finished = done && all_done && watermark >= final_w;
        let stopping = shutdown.load(Ordering::Relaxed);
        match hub {
            Some(hub) if !hub.failed() => {
                if stopping || (finished && all_finished) {
                    hub.request_final();
                }
                let last = hub.stop_after();
                // (A worker that captured a later cut before the stop was decided is not waited for.)
                if processes > 1 {
                    // In a cluster, every process's workers must have agreed on the final cut.
                    if final_agreed && captured >= last {
                        break;
                    }
                } else if last > 0 && captured >= last && (!paused || captured > last) {
                    break;
                }
            }
            _ if finished || stopping => break,
            _ => {}
        }

        // 5. Step, keeping at most ROUNDS_IN_FLIGHT rounds in flight; hand the changes to the egress.
        in_flight.push_back(time);
        while in_flight.len() > ROUNDS_IN_FLIGHT {
            let oldest = in_flight[0];
            if !probe.less_than(&oldest.0) || shutdown.load(Ordering::Relaxed) {
                in_flight.pop_front();
            } else {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
        worker.step_or_park(Some(Duration::ZERO));
        egress.send(&probe, watermark);
        sink.flush();
        if !read.dirty && read.read == 0 {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    }

    // Close the inputs and drain the dataflow.
    drop(inputs);
    drop(control);
    while probe.with_frontier(|f| !f.is_empty()) {
        worker.step_or_park(Some(Duration::from_millis(1)));
        egress.send(&probe, watermark);
        let failed = hub.is_none_or(|h| h.failed());
        if failed && shutdown.load(Ordering::Relaxed) && probe.with_frontier(|f| !f.is_empty()) {
            // After a failure the peers may be gone; do not wait forever. (A clean stop drains:
            // the egress must see every time before the final checkpoint's cut.)
            break;
        }
    }
    egress.send(&probe, watermark);
    sink.flush();
    sink.close();
    Ok(())
}
