//! The materialized views, shared with readers (SQL, the progress line, backfill).
//!
//! Workers deliver the changes of every view together with their dataflow
//! frontier; the catalog applies, in time order, exactly the changes at times
//! that every worker has completed. So a reader always sees all six views at
//! one dataflow time ([`Snapshot::time`]), never a mix of two.
//!
//! Views are persistent maps (`imbl`): [`Catalog::snapshot`] hands a reader
//! an `Arc` of the current state in O(1), and the reader keeps that state for
//! as long as it likes while ingest goes on (structural sharing: a writer
//! copies only the paths it changes while a reader holds the old version).

use crate::event::{Id, Region, TreeEvent};
use crate::time::DataflowTime;
use crate::views::{AfissRow, AgentDayRow, RegionAgg, ScoreRow, WindowRow};
use imbl::{HashMap, OrdMap};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// One change of one view row.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewChange {
    /// `trees`
    Tree(Id, TreeEvent),
    /// `afiss_current`
    Afiss(Id, AfissRow),
    /// `sensor_windows`
    Window(Id, WindowRow),
    /// `tree_scores`
    Score(Id, ScoreRow),
    /// `region_summary`
    Region(Region, RegionAgg),
    /// `agent_activity`, keyed by (agent, day number)
    Agent((Id, i32), AgentDayRow),
}

/// The six views at one dataflow time.
#[derive(Clone, Debug, Default)]
pub struct Views {
    /// `trees`
    pub trees: HashMap<Id, TreeEvent>,
    /// `afiss_current`
    pub afiss_current: HashMap<Id, AfissRow>,
    /// `sensor_windows`
    pub sensor_windows: HashMap<Id, WindowRow>,
    /// `tree_scores`
    pub tree_scores: HashMap<Id, ScoreRow>,
    /// `region_summary`
    pub region_summary: OrdMap<Region, RegionAgg>,
    /// `agent_activity`
    pub agent_activity: OrdMap<(Id, i32), AgentDayRow>,
}

fn apply_map<K: std::hash::Hash + Eq + Clone, V: PartialEq + Clone>(map: &mut HashMap<K, V>, k: K, v: V, diff: isize) {
    if diff > 0 {
        map.insert(k, v);
    } else if map.get(&k) == Some(&v) {
        map.remove(&k);
    }
}

fn apply_btree<K: Ord + Clone, V: PartialEq + Clone>(map: &mut OrdMap<K, V>, k: K, v: V, diff: isize) {
    if diff > 0 {
        map.insert(k, v);
    } else if map.get(&k) == Some(&v) {
        map.remove(&k);
    }
}

impl Views {
    fn apply(&mut self, change: ViewChange, diff: isize) {
        match change {
            ViewChange::Tree(k, v) => apply_map(&mut self.trees, k, v, diff),
            ViewChange::Afiss(k, v) => apply_map(&mut self.afiss_current, k, v, diff),
            ViewChange::Window(k, v) => apply_map(&mut self.sensor_windows, k, v, diff),
            ViewChange::Score(k, v) => apply_map(&mut self.tree_scores, k, v, diff),
            ViewChange::Region(k, v) => apply_btree(&mut self.region_summary, k, v, diff),
            ViewChange::Agent(k, v) => apply_btree(&mut self.agent_activity, k, v, diff),
        }
    }

    /// Rows per view, in the order of [`crate::VIEW_NAMES`].
    pub fn sizes(&self) -> [usize; 6] {
        [
            self.trees.len(),
            self.afiss_current.len(),
            self.sensor_windows.len(),
            self.tree_scores.len(),
            self.region_summary.len(),
            self.agent_activity.len(),
        ]
    }
}

/// The views and the time they are at.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The views.
    pub views: Views,
    /// Every change at a time before this frontier is applied, none after;
    /// `None` once the dataflow has finished (bounded input).
    pub frontier: Option<DataflowTime>,
    /// The watermark the views are at (`window_end` of `sensor_windows`).
    pub watermark: Option<i64>,
}

impl Snapshot {
    /// The dataflow time the views are at: the last time before the frontier.
    pub fn time(&self) -> Option<DataflowTime> {
        self.frontier.map(|f| DataflowTime(f.0.saturating_sub(1)))
    }
}

#[derive(Default)]
struct Pending {
    /// Each worker's frontier; `Some(None)` = finished; `None` = not heard from yet.
    frontiers: Vec<Option<Option<DataflowTime>>>,
    changes: BTreeMap<DataflowTime, Vec<(ViewChange, isize)>>,
    /// The greatest watermark any worker's input has reached.
    input_watermark: Option<i64>,
}

/// The shared views of one process.
pub struct Catalog {
    snapshot: RwLock<Arc<Snapshot>>,
    pending: Mutex<Pending>,
}

impl Catalog {
    /// A catalog fed by `workers` workers.
    pub fn new(workers: usize) -> Self {
        Catalog {
            snapshot: RwLock::new(Arc::new(Snapshot { frontier: Some(DataflowTime(0)), ..Default::default() })),
            pending: Mutex::new(Pending { frontiers: vec![None; workers], ..Default::default() }),
        }
    }

    /// The views at the latest complete time, in O(1); never blocks ingest for long.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// A worker delivers its view changes, its frontier (`None`: finished) and
    /// the watermark its input has reached.
    pub fn deliver(
        &self,
        worker: usize,
        frontier: Option<DataflowTime>,
        input_watermark: Option<i64>,
        changes: Vec<(ViewChange, DataflowTime, isize)>,
    ) {
        let mut pending = self.pending();
        pending.input_watermark = pending.input_watermark.max(input_watermark);
        for (change, time, diff) in changes {
            pending.changes.entry(time).or_default().push((change, diff));
        }
        pending.frontiers[worker] = Some(frontier);
        // The global frontier: the least worker frontier (a finished worker holds nothing back).
        let mut global: Option<DataflowTime> = None;
        for f in &pending.frontiers {
            match f {
                None => return, // someone has not reported yet
                Some(None) => {}
                Some(Some(t)) => global = Some(global.map_or(*t, |g| g.min(*t))),
            }
        }
        let ready: Vec<(DataflowTime, Vec<(ViewChange, isize)>)> = match global {
            Some(g) => {
                let later = pending.changes.split_off(&g);
                std::mem::replace(&mut pending.changes, later).into_iter().collect()
            }
            None => std::mem::take(&mut pending.changes).into_iter().collect(),
        };
        let mut guard = self.snapshot.write().unwrap_or_else(|poison| poison.into_inner());
        let snap = Arc::make_mut(&mut guard);
        // Hold the pending lock while writing, so that deliveries apply in frontier order.
        for (_time, mut changes) in ready {
            // Retractions first: within a time each key has at most one row before and after.
            changes.sort_by_key(|(_, d)| *d);
            for (change, diff) in changes {
                snap.views.apply(change, diff);
            }
        }
        match global {
            // At (W, 0) the changes of W itself are not applied yet; the views are still at the previous W.
            Some(g) if g.seq() > 0 => snap.watermark = g.watermark(),
            Some(_) => {}
            None => snap.watermark = pending.input_watermark,
        }
        snap.frontier = global;
        drop(pending);
    }
}
