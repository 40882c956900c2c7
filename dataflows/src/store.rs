//! The materialized views, shared with readers (SQL, the progress line, backfill).
//!
//! The egress ([`crate::runtime::egress`]) hands the catalog, in time order,
//! exactly the changes at times that every worker has completed. So a reader
//! always sees all six views at one dataflow time ([`Snapshot::time`]), never
//! a mix of two.
//!
//! Views are persistent maps (`imbl`): [`Catalog::snapshot`] hands a reader
//! an `Arc` of the current state in O(1), and the reader keeps that state for
//! as long as it likes while ingest goes on (structural sharing: a writer
//! copies only the paths it changes while a reader holds the old version).

use crate::event::{Id, Region, TreeEvent};
use crate::runtime::egress::Completed;
use crate::time::DataflowTime;
use crate::views::{AfissRow, AgentDayRow, RegionAgg, ScoreRow, WindowRow};
use imbl::{HashMap, OrdMap};
use std::sync::{Arc, RwLock};

/// One change of one view row. The per-tree rows are shared (`Arc`): the egress's
/// buffers hold small records, and the catalog's maps take the row without copying it.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewChange {
    /// `trees`
    Tree(Id, Arc<TreeEvent>),
    /// `afiss_current`
    Afiss(Id, Arc<AfissRow>),
    /// `sensor_windows`
    Window(Id, Arc<WindowRow>),
    /// `tree_scores`
    Score(Id, Arc<ScoreRow>),
    /// `region_summary` (boxed: the largest row, and the rarest change)
    Region(Region, Box<RegionAgg>),
    /// `agent_activity`, keyed by (agent, day number)
    Agent((Id, i32), AgentDayRow),
}

/// The six views at one dataflow time.
///
/// The per-tree maps hold their rows behind an `Arc`: a persistent hash map's
/// nodes are fixed arrays of entries, mostly empty near the leaves, so an entry
/// should be small (a key and a pointer, not a whole registry row) — measured
/// with heaptrack at 100,000 trees, inline rows made the catalog 1.3 kB per tree.
#[derive(Clone, Debug, Default)]
pub struct Views {
    /// `trees`
    pub trees: HashMap<Id, Arc<TreeEvent>>,
    /// `afiss_current`
    pub afiss_current: HashMap<Id, Arc<AfissRow>>,
    /// `sensor_windows`
    pub sensor_windows: HashMap<Id, Arc<WindowRow>>,
    /// `tree_scores`
    pub tree_scores: HashMap<Id, Arc<ScoreRow>>,
    /// `region_summary`
    pub region_summary: OrdMap<Region, RegionAgg>,
    /// `agent_activity`
    pub agent_activity: OrdMap<(Id, i32), AgentDayRow>,
}

/// Inserts (diff > 0) or removes the row; only an insert copies it.
fn apply_map<K: std::hash::Hash + Eq + Clone, V: PartialEq + Clone>(
    map: &mut HashMap<K, V>,
    k: &K,
    v: &V,
    diff: isize,
) {
    if diff > 0 {
        map.insert(k.clone(), v.clone());
    } else if map.get(k) == Some(v) {
        map.remove(k);
    }
}

fn apply_btree<K: Ord + Clone, V: PartialEq + Clone>(map: &mut OrdMap<K, V>, k: &K, v: &V, diff: isize) {
    if diff > 0 {
        map.insert(k.clone(), v.clone());
    } else if map.get(k) == Some(v) {
        map.remove(k);
    }
}

impl Views {
    fn apply(&mut self, change: &ViewChange, diff: isize) {
        match change {
            ViewChange::Tree(k, v) => apply_map(&mut self.trees, k, v, diff),
            ViewChange::Afiss(k, v) => apply_map(&mut self.afiss_current, k, v, diff),
            ViewChange::Window(k, v) => apply_map(&mut self.sensor_windows, k, v, diff),
            ViewChange::Score(k, v) => apply_map(&mut self.tree_scores, k, v, diff),
            ViewChange::Region(k, v) => apply_btree(&mut self.region_summary, k, v.as_ref(), diff),
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
    /// Ready to serve: the views have a watermark, or the input is finished
    /// (nothing more will come). `/readyz` and the pipeline handle say this.
    pub fn is_ready(&self) -> bool {
        self.watermark.is_some() || self.frontier.is_none()
    }

    /// The dataflow time the views are at: the last time before the frontier.
    pub fn time(&self) -> Option<DataflowTime> {
        self.frontier.map(|f| DataflowTime(f.0.saturating_sub(1)))
    }
}

/// The shared views of one process, published by the egress
/// ([`crate::runtime::egress`]) one completed round at a time.
pub struct Catalog {
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// An empty catalog, at time 0.
    pub fn new() -> Self {
        Catalog { snapshot: RwLock::new(Arc::new(Snapshot { frontier: Some(DataflowTime(0)), ..Default::default() })) }
    }

    /// The views at the latest complete time, in O(1); never waits for ingest.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Applies a completed round and publishes the result. The new snapshot is
    /// prepared outside the lock (a persistent-map copy of the current one,
    /// sharing everything the round does not change) and swapped in, so readers
    /// never wait behind ingest. Called by the egress only (one round at a time).
    pub fn publish(&self, round: &Completed) {
        let mut next = Snapshot::clone(&self.snapshot());
        for completed in &round.times {
            for (change, diff) in &completed.changes {
                next.views.apply(change, *diff);
            }
        }
        next.frontier = round.frontier;
        next.watermark = round.watermark;
        let next = Arc::new(next);
        let previous =
            std::mem::replace(&mut *self.snapshot.write().unwrap_or_else(|poison| poison.into_inner()), next);
        // Freeing the previous version (the map nodes this round replaced) happens here,
        // after the lock is released, so readers never wait for it.
        drop(previous);
    }
}
