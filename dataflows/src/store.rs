//! The materialized views, shared with readers (SQL, the progress line, backfill).
//!
//! The egress ([`crate::runtime::egress`]) hands the catalog, in time order,
//! exactly the changes at times that every worker has completed. So a reader
//! always sees all six views at one dataflow time ([`Snapshot::time`]), never
//! a mix of two.
//!
//! Views are immutable shared maps: [`Catalog::snapshot`] hands a reader an
//! `Arc` of the current state in O(1), and the reader keeps that state for as
//! long as it likes while ingest goes on. The per-tree views are
//! [`LayeredMap`]s (a round's changes are a new small layer over shared older
//! ones, O(changes) per round); the small ones are persistent maps (`imbl`).

use crate::event::{Id, Region, TreeEvent};
use crate::layered::{Folded, LayeredMap, Round};
use crate::runtime::background::{self, Priority};
use crate::runtime::egress::Completed;
use crate::time::DataflowTime;
use crate::views::{AfissRow, AgentDayRow, RegionAgg, ScoreRow, WindowRow};
use imbl::OrdMap;
use std::sync::{Arc, Mutex, RwLock};

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
/// The per-tree maps hold their rows behind an `Arc`, shared with the egress's changes:
/// a map's entry is a key and a pointer, not a whole registry row.
#[derive(Clone, Debug, Default)]
pub struct Views {
    /// `trees`
    pub trees: LayeredMap<Id, Arc<TreeEvent>>,
    /// `afiss_current`
    pub afiss_current: LayeredMap<Id, Arc<AfissRow>>,
    /// `sensor_windows`
    pub sensor_windows: LayeredMap<Id, Arc<WindowRow>>,
    /// `tree_scores`
    pub tree_scores: LayeredMap<Id, Arc<ScoreRow>>,
    /// `region_summary`
    pub region_summary: OrdMap<Region, RegionAgg>,
    /// `agent_activity`
    pub agent_activity: OrdMap<(Id, i32), AgentDayRow>,
}

fn apply_btree<K: Ord + Clone, V: PartialEq + Clone>(map: &mut OrdMap<K, V>, k: &K, v: &V, diff: isize) {
    if diff > 0 {
        map.insert(k.clone(), v.clone());
    } else if map.get(k) == Some(v) {
        map.remove(k);
    }
}

/// One round's changes to the per-tree views.
#[derive(Default)]
struct Rounds {
    trees: Round<Id, Arc<TreeEvent>>,
    afiss_current: Round<Id, Arc<AfissRow>>,
    sensor_windows: Round<Id, Arc<WindowRow>>,
    tree_scores: Round<Id, Arc<ScoreRow>>,
}

/// The folds under way, one per per-tree view at most (see [`crate::layered`]).
#[derive(Default)]
struct Folds {
    trees: Option<Job<Arc<TreeEvent>>>,
    afiss_current: Option<Job<Arc<AfissRow>>>,
    sensor_windows: Option<Job<Arc<WindowRow>>>,
    tree_scores: Option<Job<Arc<ScoreRow>>>,
}

type Job<V> = std::thread::JoinHandle<Folded<Id, V>>;

/// Applies `round` to `map`: first the fold `job` if it has finished, then the round; starts
/// the fold the map asks for on a thread. Returns whether a fold's base replaced the map's:
/// the previous snapshot then holds the only copy of the old base, a whole view. (A bulk round
/// also rewrites the base, but is not counted: the base it leaves behind was allocated by the
/// workers, and a low-priority thread freeing it would take their allocator's locks; with
/// it, 3M events / 1M trees took 12.7, 12.9, 15.8 s against 11.0, 12.0, 12.9 s without.)
fn step<V: Clone + Send + Sync + 'static>(
    map: &mut LayeredMap<Id, V>,
    round: Round<Id, V>,
    job: &mut Option<Job<V>>,
) -> bool {
    let mut replaced = false;
    if job.as_ref().is_some_and(|j| j.is_finished()) {
        match job.take().map(|j| j.join()) {
            Some(Ok(folded)) => {
                map.folded(folded);
                replaced = true;
            }
            _ => map.fold_lost(),
        }
    }
    if let Some(fold) = map.apply(round) {
        // A fold at a million keys copies the base and makes ~250,000 inserts: at a low
        // priority, it takes CPU the workers leave idle rather than one of their cores.
        match background::spawn("treeai-fold", Priority::Low, move || fold.run()) {
            Ok(handle) => *job = Some(handle),
            Err(e) => {
                tracing::warn!("catalog: cannot start a fold thread ({e}); retrying next round");
                map.fold_lost();
            }
        }
    }
    replaced
}

impl Views {
    /// Applies the changes of completed times, in order.
    /// Returns whether a fold's base replaced a view's (see [`step`]).
    fn apply<'a>(&mut self, changes: impl Iterator<Item = &'a (ViewChange, isize)>, folds: &mut Folds) -> bool {
        let mut rounds = Rounds::default();
        for (change, diff) in changes {
            let diff = *diff;
            match change {
                ViewChange::Tree(k, v) => rounds.trees.change(k.clone(), v.clone(), diff),
                ViewChange::Afiss(k, v) => rounds.afiss_current.change(k.clone(), v.clone(), diff),
                ViewChange::Window(k, v) => rounds.sensor_windows.change(k.clone(), v.clone(), diff),
                ViewChange::Score(k, v) => rounds.tree_scores.change(k.clone(), v.clone(), diff),
                ViewChange::Region(k, v) => apply_btree(&mut self.region_summary, k, v.as_ref(), diff),
                ViewChange::Agent(k, v) => apply_btree(&mut self.agent_activity, k, v, diff),
            }
        }
        // `|`, not `||`: every view steps.
        step(&mut self.trees, rounds.trees, &mut folds.trees)
            | step(&mut self.afiss_current, rounds.afiss_current, &mut folds.afiss_current)
            | step(&mut self.sensor_windows, rounds.sensor_windows, &mut folds.sensor_windows)
            | step(&mut self.tree_scores, rounds.tree_scores, &mut folds.tree_scores)
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
    /// The writer's folds under way (only the egress publishes; the lock is never contended).
    folds: Mutex<Folds>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// An empty catalog, at time 0.
    pub fn new() -> Self {
        Catalog {
            snapshot: RwLock::new(Arc::new(Snapshot { frontier: Some(DataflowTime(0)), ..Default::default() })),
            folds: Mutex::default(),
        }
    }

    /// The views at the latest complete time, in O(1); never waits for ingest.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Applies a completed round and publishes the result. The new snapshot is
    /// prepared outside the lock (a copy of the current one that shares
    /// everything the round does not change) and swapped in, so readers
    /// never wait behind ingest. Called by the egress only (one round at a time).
    pub fn publish(&self, round: &Completed) {
        let mut folds = self.folds.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut next = Snapshot::clone(&self.snapshot());
        let replaced = next.views.apply(round.times.iter().flat_map(|completed| completed.changes.iter()), &mut folds);
        next.frontier = round.frontier;
        next.watermark = round.watermark;
        let next = Arc::new(next);
        let previous =
            std::mem::replace(&mut *self.snapshot.write().unwrap_or_else(|poison| poison.into_inner()), next);
        // Freeing the previous version (the map nodes this round replaced) happens after the
        // lock is released, so readers never wait for it. Once a fold has replaced a base, the
        // previous version holds the only copy of the old one (a whole view: one pointer per
        // row to release, missing the cache): that is freed beside the workers, not here on
        // the one completing the round.
        if replaced {
            let free = background::spawn("treeai-free", Priority::Low, move || drop(previous));
            if let Err(e) = free {
                tracing::debug!("catalog: freeing the old base on this thread ({e})");
            }
        } else {
            drop(previous);
        }
    }
}
