//! The one way out of the dataflow.
//!
//! Every worker hands the egress, in the manner of differential's `capture`,
//! an explicit protocol of [`Message`]s: the view updates it has produced (at
//! times it may not have completed yet) and its progress (its frontier: no
//! update at a time before it will follow). The one [`Egress`] of a process
//! merges the workers' messages and, whenever the least worker frontier
//! advances, emits the completed times in time order, each exactly once, as
//! one [`Completed`] round — the single ordered stream of completed changes.
//! From it, in this order:
//!
//! 1. the [`Catalog`] publishes the views at the new time (prepared outside
//!    its lock, swapped in);
//! 2. the alert derivation ([`crate::alerts::alerts_of`]) turns each time's
//!    `tree_scores` changes into alerts;
//! 3. the egress [`Sink`] (the lake's `score_changes` and `alerts`, Kafka's
//!    alert topic, collectors) receives every score change and every alert,
//!    then `flush`.
//!
//! The egress is a consumer *role*, not a thread: the worker whose message
//! completes a time does the work, under the egress's lock, so consumers run
//! one at a time and in order. (A dedicated thread was tried: on 2 cores its
//! wake-ups, two per round, preempted the timely workers, which wait for each
//! other every round, and the p50 of a 10k-event update round went from ~6 ms
//! to ~25 ms.) A slow consumer slows the workers down rather than growing
//! memory, and the catalog is never behind the dataflow by more than the
//! round being published.

use crate::alerts::alerts_of;
use crate::checkpoint::{Checkpoints, EgressState as EgressPart};
use crate::event::Id;
use crate::rating::Band;
use crate::source::{ScoreChange, Sink};
use crate::store::{Catalog, ViewChange};
use crate::time::DataflowTime;
use crate::views::ScoreRow;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::Stats;

/// What a worker tells the egress.
#[derive(Debug)]
pub enum Message {
    /// View updates `(change, time, diff)` the worker produced.
    Updates(Vec<(ViewChange, DataflowTime, isize)>),
    /// The worker's frontier (`None`: it has finished) and the watermark its
    /// input has reached. Every update at a time before the frontier has been sent.
    Progress {
        /// The least time the worker may still produce updates at.
        frontier: Option<DataflowTime>,
        /// The greatest watermark this worker's input reached.
        input_watermark: Option<i64>,
    },
    /// Events applied at a time: `(time, arrival epoch ms, events)`, sent no later than
    /// the progress past that time (for freshness).
    Arrivals(Vec<(DataflowTime, i64, u64)>),
}

/// The changes of one completed dataflow time.
#[derive(Clone, Debug)]
pub struct CompletedTime {
    /// The time.
    pub time: DataflowTime,
    /// Its changes, retractions first (within a time each key has at most one
    /// row before and one after).
    pub changes: Vec<(ViewChange, isize)>,
}

/// One step of the ordered stream: the completed times (possibly none) and
/// the progress they bring the views to.
#[derive(Clone, Debug)]
pub struct Completed {
    /// Newly completed times, in order.
    pub times: Vec<CompletedTime>,
    /// Every time before this frontier is complete; `None` once every worker finished.
    pub frontier: Option<DataflowTime>,
    /// The watermark the views are at after these times.
    pub watermark: Option<i64>,
}

/// Merges the workers' messages into completed times.
pub struct Merge {
    /// Each worker's frontier; `Some(None)` = finished; `None` = not heard from yet.
    frontiers: Vec<Option<Option<DataflowTime>>>,
    pending: BTreeMap<DataflowTime, Vec<(ViewChange, isize)>>,
    /// The greatest watermark any worker's input has reached.
    input_watermark: Option<i64>,
    /// The watermark of the views emitted so far.
    watermark: Option<i64>,
    /// The frontier emitted last.
    emitted: Option<Option<DataflowTime>>,
}

impl Merge {
    /// Whether every time before `t` has been emitted.
    pub fn emitted_before(&self, t: DataflowTime) -> bool {
        match self.emitted {
            Some(None) => true,
            Some(Some(f)) => f >= t,
            None => false,
        }
    }

    /// The watermark of the views emitted so far.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }
}

impl Merge {
    /// A merge of `workers` workers' messages.
    pub fn new(workers: usize) -> Self {
        Merge {
            frontiers: vec![None; workers],
            pending: BTreeMap::new(),
            input_watermark: None,
            watermark: None,
            emitted: None,
        }
    }

    /// Takes one worker's message.
    pub fn accept(&mut self, worker: usize, message: Message) {
        match message {
            Message::Updates(updates) => {
                for (change, time, diff) in updates {
                    self.pending.entry(time).or_default().push((change, diff));
                }
            }
            Message::Progress { frontier, input_watermark } => {
                self.input_watermark = self.input_watermark.max(input_watermark);
                self.frontiers[worker] = Some(frontier);
            }
            Message::Arrivals(_) => {}
        }
    }

    /// The times completed since the last call, if the global frontier moved.
    pub fn completed(&mut self) -> Option<Completed> {
        // The global frontier: the least worker frontier (a finished worker holds nothing back).
        let mut global: Option<DataflowTime> = None;
        for f in &self.frontiers {
            match f {
                None => return None, // someone has not reported yet
                Some(None) => {}
                Some(Some(t)) => global = Some(global.map_or(*t, |g| g.min(*t))),
            }
        }
        let ready = match global {
            Some(g) => {
                let later = self.pending.split_off(&g);
                std::mem::replace(&mut self.pending, later)
            }
            None => std::mem::take(&mut self.pending),
        };
        let watermark = match global {
            // At (W, 0) the changes of W itself are not applied yet; the views are still at the previous W.
            Some(g) if g.seq() > 0 => g.watermark(),
            Some(_) => self.watermark,
            None => self.input_watermark,
        };
        if ready.is_empty() && self.emitted == Some(global) && watermark == self.watermark {
            return None;
        }
        self.emitted = Some(global);
        self.watermark = watermark;
        let times = ready
            .into_iter()
            .map(|(time, mut changes)| {
                changes.sort_unstable_by_key(|(_, d)| *d);
                CompletedTime { time, changes }
            })
            .collect();
        Some(Completed { times, frontier: global, watermark })
    }
}

/// Passes completed times to the derived-data sink: every score change, then the alerts,
/// numbered per tree in `seqs`.
fn derive(times: &[CompletedTime], sink: &mut dyn Sink, stats: &Stats, seqs: &mut HashMap<Id, u32>) {
    for completed in times {
        let t = completed.time;
        let watermark = t.watermark();
        // Only trees with a critical row among their changes can alert: the rest never
        // reach the alert derivation (its sort by tree_id was a cost at a city's scale).
        let mut critical = std::collections::HashSet::new();
        for (change, diff) in &completed.changes {
            if let ViewChange::Score(tree_id, row) = change {
                sink.score_change(&ScoreChange {
                    tree_id: tree_id.clone(),
                    row: ScoreRow::clone(row),
                    diff: *diff,
                    time: t.0,
                    watermark,
                });
                if row.score.band == Band::Critical {
                    critical.insert(tree_id);
                }
            }
        }
        let mut scores = Vec::new();
        if !critical.is_empty() {
            for (change, diff) in &completed.changes {
                match change {
                    ViewChange::Score(tree_id, row) if critical.contains(tree_id) => {
                        scores.push((tree_id.clone(), ScoreRow::clone(row), *diff));
                    }
                    _ => {}
                }
            }
        }
        for mut alert in alerts_of(&mut scores, watermark) {
            stats.alerts.fetch_add(1, Ordering::Relaxed);
            let seq = seqs.entry(Id::from(alert.tree_id.as_str())).or_insert(0);
            *seq += 1;
            alert.seq = *seq;
            sink.alert(alert);
        }
    }
    sink.flush();
}

/// The egress of one process: the merge and its consumers, behind one lock.
pub struct Egress {
    state: Mutex<EgressState>,
    /// The global index of this process's first worker (workers are numbered across a cluster).
    first_worker: usize,
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    checkpoints: Option<Arc<Checkpoints>>,
    /// Times before this are a restored checkpoint's state: published, but
    /// their score changes and alerts were sent before the checkpoint.
    restored_before: Option<DataflowTime>,
}

struct EgressState {
    merge: Merge,
    /// `None` once closed.
    sink: Option<Box<dyn Sink>>,
    /// Alerts so far per tree that has alerted (the `seq` of its next alert is one more).
    seqs: HashMap<Id, u32>,
    /// Arrivals of events applied at times not published yet: `(arrival ms, events)`.
    arrivals: BTreeMap<DataflowTime, Vec<(i64, u64)>>,
}

impl Egress {
    /// The egress of this process's `workers` workers (numbered from `first_worker`),
    /// publishing to `catalog` and `sink`, cutting `sink` at the checkpoints of `checkpoints`.
    pub fn new(
        workers: usize,
        first_worker: usize,
        catalog: Arc<Catalog>,
        sink: Box<dyn Sink>,
        stats: Arc<Stats>,
        checkpoints: Option<Arc<Checkpoints>>,
    ) -> Self {
        let restored_before = checkpoints.as_ref().and_then(|c| c.restore()).map(|r| r.time.next_seq());
        Egress {
            state: Mutex::new(EgressState {
                merge: Merge::new(workers),
                sink: Some(sink),
                seqs: checkpoints
                    .as_ref()
                    .and_then(|c| c.restore())
                    .map(|r| r.egress.alert_seqs.iter().cloned().collect())
                    .unwrap_or_default(),
                arrivals: BTreeMap::new(),
            }),
            first_worker,
            catalog,
            stats,
            checkpoints,
            restored_before,
        }
    }

    /// Takes one worker's messages; if they complete times, publishes them
    /// to the catalog, derives the alerts and feeds the sink, before returning.
    /// A checkpoint's cut `T` is closed here: the times before `T` go to the
    /// sink, then the sink is cut, then the later times.
    pub fn deliver(&self, worker: usize, messages: impl IntoIterator<Item = Message>) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        for message in messages {
            match message {
                Message::Arrivals(arrivals) => {
                    for (time, arrival, n) in arrivals {
                        state.arrivals.entry(time).or_default().push((arrival, n));
                    }
                }
                message => state.merge.accept(worker - self.first_worker, message),
            }
        }
        let round = state.merge.completed();
        if let Some(round) = &round {
            self.catalog.publish(round);
            // Freshness: the events of every time now published are visible to SQL.
            let visible = match round.frontier {
                Some(f) => {
                    let later = state.arrivals.split_off(&f);
                    std::mem::replace(&mut state.arrivals, later)
                }
                None => std::mem::take(&mut state.arrivals),
            };
            if !visible.is_empty() {
                let now = super::now_ms();
                for (arrival, n) in visible.into_values().flatten() {
                    self.stats.freshness.record((now - arrival).max(0) as u64, n);
                }
            }
        }
        let mut times = round.as_ref().map_or(&[][..], |r| &r.times[..]);
        if let Some(before) = self.restored_before {
            times = &times[times.partition_point(|c| c.time < before)..];
        }
        if let Some(hub) = &self.checkpoints {
            // Close every cut whose times are all emitted, oldest first.
            while let Some((number, cut)) = hub.awaiting_egress() {
                let split = times.partition_point(|c| c.time < cut);
                if let Some(sink) = state.sink.as_mut() {
                    derive(&times[..split], sink.as_mut(), &self.stats, &mut state.seqs);
                }
                times = &times[split..];
                if !state.merge.emitted_before(cut) {
                    break;
                }
                let sink_offsets = state.sink.as_mut().map(|s| s.checkpoint(number)).unwrap_or_default();
                let alert_seqs = state.seqs.iter().map(|(k, v)| (k.clone(), *v)).collect();
                hub.egress_done(number, state.merge.watermark(), EgressPart { alert_seqs, sink_offsets });
            }
        }
        if let (Some(sink), Some(_)) = (state.sink.as_mut(), &round) {
            derive(times, sink.as_mut(), &self.stats, &mut state.seqs);
        }
    }

    /// Closes the sink (writes out what it buffers); later rounds only reach the catalog.
    pub fn close(&self) {
        let sink = self.state.lock().unwrap_or_else(|p| p.into_inner()).sink.take();
        if let Some(mut sink) = sink {
            sink.close();
        }
    }
}
