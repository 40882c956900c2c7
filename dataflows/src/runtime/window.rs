//! The window driver: moves readings into the window when the watermark
//! passes their `ts` and out of it when it reaches `ts + 1h` (DOMAIN §3, §4
//! `sensor_windows`), and hands the dataflow one row per tree: the aggregates
//! ([`PaneAgg`]) of the tree's readings in the window.
//!
//! Readings in the window are kept per tree, by time. A tree with few readings
//! (a city's million trees at 10,000 readings/s get ~35 an hour) keeps just
//! them, and its row is a fold over them; a tree with many (ten thousand trees
//! at the same rate get ~3,600 an hour) also keeps aggregates per pane of
//! [`PANE_MS`], so its row combines at most `1 h / PANE_MS` panes plus the
//! readings of the pane the window's lower edge `W − 1h` cuts. Each tree has
//! an entry in an expiry queue at the second of its oldest reading: a round
//! finds the trees whose readings the edge passed without a scan, drops those
//! readings, and recomputes just those trees — the window stays exact to the
//! millisecond. A round marks the trees it changes; [`WindowDriver::flush`]
//! replaces their rows once.
//!
//! Cost: a reading is stored once (16 bytes, in its tree's window); a round costs
//! O(readings it moves + trees it changes × their readings or panes), and the
//! view's reduction holds one row per tree and worker. (Rows per tree and pane,
//! as before, cost ~11 kB per tree at a million trees, where most panes of a
//! tree hold one reading or none.)

use crate::checkpoint::{WindowReading, WindowReadingRef};
use crate::event::{Id, Metric, F64};
use crate::time::HOUR_MS;
use crate::views::{PaneAgg, PANE_MS};
use differential_dataflow::input::InputSession;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A reading waiting for the watermark (keyed by `ts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Timed {
    pub(super) at: i64,
    pub(super) tree: Id,
    pub(super) metric: Metric,
    pub(super) value: F64,
    /// When it arrived, epoch ms (for freshness).
    pub(super) arrival_ms: i64,
}

/// The window's input to the dataflow: `(tree, aggregates of its readings in the window)`.
pub(super) type WindowInput = InputSession<u64, (Id, PaneAgg), isize>;

/// Readings bucketed by the second of their `at`: pushing is O(1), and taking
/// everything up to a time touches only the buckets it empties (and the one it cuts).
/// Buckets are shared (`Arc`): a checkpoint clones the queue in O(buckets), and a
/// bucket changed while the checkpoint still holds it is copied once.
#[derive(Clone, Default)]
pub(super) struct TimeQueue {
    buckets: BTreeMap<i64, Arc<Vec<Timed>>>,
}

impl TimeQueue {
    fn push(&mut self, t: Timed) {
        Arc::make_mut(self.buckets.entry(t.at.div_euclid(1000)).or_default()).push(t);
    }

    /// Removes and passes to `f` every reading with `at <= w`.
    fn take_until(&mut self, w: i64, mut f: impl FnMut(Timed)) {
        let last = w.div_euclid(1000);
        while let Some(mut entry) = self.buckets.first_entry() {
            if *entry.key() < last {
                let bucket = entry.remove();
                Arc::try_unwrap(bucket).unwrap_or_else(|shared| (*shared).clone()).into_iter().for_each(&mut f);
            } else if *entry.key() == last {
                let bucket = Arc::make_mut(entry.get_mut());
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

/// A reading in a tree's window: its time as an offset from the tree's base, metric, value.
#[derive(Clone, Copy, Debug)]
struct Slot {
    value: F64,
    offset: u32,
    metric: Metric,
}

/// A tree with more readings than this in the window also keeps aggregates per pane...
const PANES_FROM: usize = 128;
/// ...until it has fewer than this.
const PANES_UNTIL: usize = 32;

fn pane_of(ts: i64) -> i64 {
    ts.div_euclid(PANE_MS)
}

fn second_of(ts: i64) -> i64 {
    ts.div_euclid(1000)
}

/// Adds a reading to its pane's aggregates in `panes` (sorted by pane).
fn add_to_pane(panes: &mut Vec<(i64, PaneAgg)>, ts: i64, metric: Metric, value: F64) {
    let pane = pane_of(ts);
    let i = match panes.binary_search_by_key(&pane, |(p, _)| *p) {
        Ok(i) => i,
        Err(i) => {
            panes.insert(i, (pane, PaneAgg::default()));
            i
        }
    };
    panes[i].1.add(metric, value);
}

/// One tree's readings in the window (on this worker) and the row the dataflow holds for it.
#[derive(Clone, Debug)]
struct TreeWindow {
    /// The time the slots' offsets count from, epoch ms.
    base: i64,
    /// The readings, by time.
    slots: VecDeque<Slot>,
    /// With many readings (see [`PANES_FROM`]): the aggregates per pane `(pane, agg)`, by pane;
    /// empty otherwise. The edge pane's may include readings that left: it is not read.
    panes: Vec<(i64, PaneAgg)>,
    /// The row the dataflow holds for the tree.
    held: Option<PaneAgg>,
    /// The second of the tree's entry in the expiry queue (entries at other seconds are
    /// stale; one at this second may be there twice, which only repeats a trim).
    scheduled: Option<i64>,
    /// Changed since the last flush (listed once in [`WindowDriver::dirty`]).
    dirty: bool,
}

impl TreeWindow {
    fn new(ts: i64) -> Self {
        TreeWindow {
            base: ts - 2 * HOUR_MS,
            slots: VecDeque::new(),
            panes: Vec::new(),
            held: None,
            scheduled: None,
            dirty: false,
        }
    }

    fn ts(&self, s: &Slot) -> i64 {
        self.base + i64::from(s.offset)
    }

    /// Adds a reading; returns whether it is now the oldest.
    fn insert(&mut self, ts: i64, metric: Metric, value: F64) -> bool {
        if ts < self.base || ts - self.base > i64::from(u32::MAX) {
            // Rebase (readings in a window span an hour; the base drifts behind over weeks).
            // (The readings span an hour or so, and `ts` is within the window: all fit.)
            let first = self.slots.front().map_or(ts, |s| self.ts(s));
            let base = ts.min(first) - 2 * HOUR_MS;
            let old = self.base;
            self.slots.iter_mut().for_each(|s| s.offset = (old + i64::from(s.offset) - base) as u32);
            self.base = base;
        }
        let slot = Slot { value, offset: (ts - self.base) as u32, metric };
        let at = if self.slots.back().is_none_or(|s| s.offset <= slot.offset) {
            self.slots.push_back(slot);
            self.slots.len() - 1
        } else {
            let i = self.slots.partition_point(|s| s.offset <= slot.offset);
            self.slots.insert(i, slot);
            i
        };
        if !self.panes.is_empty() {
            add_to_pane(&mut self.panes, ts, metric, value);
        } else if self.slots.len() > PANES_FROM {
            for s in &self.slots {
                add_to_pane(&mut self.panes, self.base + i64::from(s.offset), s.metric, s.value);
            }
        }
        at == 0
    }

    /// Drops the readings at or before `edge`; returns whether any left.
    fn trim(&mut self, edge: i64) -> bool {
        let n = self.slots.partition_point(|s| self.base + i64::from(s.offset) <= edge);
        if n == 0 {
            return false;
        }
        self.slots.drain(..n);
        if self.slots.len() < PANES_UNTIL {
            self.panes = Vec::new();
        } else {
            let q = pane_of(edge);
            let keep = self.panes.partition_point(|(p, _)| *p < q);
            self.panes.drain(..keep);
        }
        if self.slots.capacity() > 64 && self.slots.capacity() > 4 * self.slots.len() {
            self.slots.shrink_to(2 * self.slots.len());
        }
        true
    }

    /// The aggregates of the readings after `edge`, if any.
    fn total(&self, edge: Option<i64>) -> Option<PaneAgg> {
        let edge = edge.unwrap_or(i64::MIN);
        let mut agg = PaneAgg::default();
        if self.panes.is_empty() {
            for s in self.slots.iter().filter(|s| self.ts(s) > edge) {
                agg.add(s.metric, s.value);
            }
        } else {
            // Whole panes after the edge's, then the readings of the edge's pane after it.
            let q = pane_of(edge);
            for (_, pane) in self.panes.iter().filter(|(p, _)| *p > q) {
                agg.merge(pane);
            }
            for s in self.slots.iter().take_while(|s| pane_of(self.ts(s)) <= q) {
                if self.ts(s) > edge {
                    agg.add(s.metric, s.value);
                }
            }
        }
        (agg.readings > 0).then_some(agg)
    }
}

/// The trees of one shard, shared with a checkpoint: a shard changed while a checkpoint
/// holds it copies its map of pointers once, and a tree changed then copies its own window
/// (at a million trees every round touches every shard, so sharing shards alone would copy
/// the whole window after every checkpoint).
type Shard = Arc<HashMap<Id, Arc<TreeWindow>, foldhash::fast::RandomState>>;

/// Shards of the trees' windows: a checkpoint shares them in O(shards).
const SHARDS: usize = 256;

/// The shard of a tree. (A hash of its own seed: the shards' maps hash with theirs, and a
/// shard's keys must not share the bits a map tags its entries with.)
fn shard_of(tree: &Id) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::with_seed(0x7265_6573_2d77_696e).hash_one(tree) % SHARDS as u64) as usize
}

/// Moves readings into and out of the window as the watermark advances.
pub(super) struct WindowDriver {
    /// Readings waiting for the watermark.
    pending: TimeQueue,
    /// The readings in the window, by tree.
    shards: Vec<Shard>,
    /// The window's lower edge (`W − 1h`): readings with `ts` at or before it have left.
    edge: Option<i64>,
    /// Trees by the second of their oldest reading (see [`TreeWindow::scheduled`]).
    expiry: BTreeMap<i64, Vec<Id>>,
    /// Trees changed since the last flush.
    dirty: Vec<Id>,
    /// Readings the watermark let into the window since the last take, by arrival ms.
    released: BTreeMap<i64, u64>,
}

impl Default for WindowDriver {
    fn default() -> Self {
        WindowDriver {
            pending: TimeQueue::default(),
            shards: vec![Shard::default(); SHARDS],
            edge: None,
            expiry: BTreeMap::new(),
            dirty: Vec::new(),
            released: BTreeMap::new(),
        }
    }
}

/// The driver's readings, shared with a checkpoint in O(shards).
pub(super) struct WindowState {
    shards: Vec<Shard>,
    edge: Option<i64>,
    pending: TimeQueue,
}

impl WindowState {
    /// The readings (in the window, waiting for the watermark), copied.
    #[cfg(test)]
    pub(super) fn readings(&self) -> (Vec<WindowReading>, Vec<WindowReading>) {
        use crate::checkpoint::SharedWindow;
        let (mut live, mut pending) = (Vec::new(), Vec::new());
        self.visit(&mut |in_window, r| {
            let r = WindowReading { ts: r.ts, tree: r.tree.clone(), metric: r.metric, value: r.value };
            if in_window {
                live.push(r);
            } else {
                pending.push(r);
            }
        });
        (live, pending)
    }
}

impl crate::checkpoint::SharedWindow for WindowState {
    fn visit(&self, f: &mut dyn FnMut(bool, WindowReadingRef<'_>)) {
        let edge = self.edge.unwrap_or(i64::MIN);
        for (tree, tw) in self.shards.iter().flat_map(|s| s.iter()) {
            for s in &tw.slots {
                let ts = tw.ts(s);
                if ts > edge {
                    f(true, WindowReadingRef { ts, tree, metric: s.metric, value: s.value });
                }
            }
        }
        for t in self.pending.buckets.values().flat_map(|b| b.iter()) {
            f(false, WindowReadingRef { ts: t.at, tree: &t.tree, metric: t.metric, value: t.value });
        }
    }
}

/// How a reading was handled.
pub(super) enum Offer {
    /// Waits for the watermark.
    Pending,
    /// In the window now; `late` if the watermark had passed its `ts` already.
    Applied {
        /// It arrived after the watermark passed its `ts`.
        late: bool,
    },
    /// Older than the window: only counted.
    Expired,
}

impl WindowDriver {
    /// Takes a reading under watermark `w`. A reading applied at once reaches the
    /// dataflow at the next [`flush`](Self::flush).
    pub(super) fn offer(&mut self, t: Timed, w: Option<i64>) -> Offer {
        match w {
            Some(w) if t.at <= w => {
                if t.at > w - HOUR_MS {
                    self.insert(t);
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

    /// Puts a visible reading into its tree's window.
    fn insert(&mut self, t: Timed) {
        let trees = Arc::make_mut(&mut self.shards[shard_of(&t.tree)]);
        let tw = match trees.get_mut(&t.tree) {
            Some(tw) => Arc::make_mut(tw),
            None => Arc::make_mut(trees.entry(t.tree.clone()).or_insert_with(|| Arc::new(TreeWindow::new(t.at)))),
        };
        let oldest = tw.insert(t.at, t.metric, t.value);
        let second = second_of(t.at);
        let schedule = oldest && tw.scheduled.is_none_or(|s| second < s);
        if schedule {
            tw.scheduled = Some(second);
        }
        let newly = !std::mem::replace(&mut tw.dirty, true);
        match (schedule, newly) {
            (true, true) => {
                self.expiry.entry(second).or_default().push(t.tree.clone());
                self.dirty.push(t.tree);
            }
            (true, false) => self.expiry.entry(second).or_default().push(t.tree),
            (false, true) => self.dirty.push(t.tree),
            (false, false) => {}
        }
    }

    /// The readings, in O(shards + waiting buckets).
    pub(super) fn share(&self) -> WindowState {
        WindowState { shards: self.shards.clone(), edge: self.edge, pending: self.pending.clone() }
    }

    /// Restores a reading in the window or waiting (in the dataflow at the next flush).
    pub(super) fn restore(&mut self, r: WindowReading, live: bool) {
        let t = Timed { at: r.ts, tree: r.tree, metric: r.metric, value: r.value, arrival_ms: super::now_ms() };
        if live {
            self.insert(t);
        } else {
            self.pending.push(t);
        }
    }

    /// Applies watermark `w` at the input's current time; returns whether the input changed.
    pub(super) fn advance(&mut self, w: i64, input: &mut WindowInput) -> bool {
        // 1. Readings the watermark reached become visible (one it jumped past entirely never was).
        let mut pending = std::mem::take(&mut self.pending);
        pending.take_until(w, |t| {
            if t.at > w - HOUR_MS {
                *self.released.entry(t.arrival_ms).or_default() += 1;
                self.insert(t);
            }
        });
        self.pending = pending;
        // 2. The edge moves to `w − 1h`: the trees whose oldest reading it passed drop the
        //    readings at or before it, and are queued again at their new oldest.
        let edge = w - HOUR_MS;
        if self.edge.is_none_or(|old| edge > old) {
            self.edge = Some(edge);
            let last = second_of(edge);
            while let Some(entry) = self.expiry.first_entry() {
                let second = *entry.key();
                if second > last {
                    break;
                }
                let mut again = Vec::new();
                for tree in entry.remove() {
                    let shard = shard_of(&tree);
                    if self.shards[shard].get(&tree).is_none_or(|tw| tw.scheduled != Some(second)) {
                        continue; // Stale: the tree was queued again at an older reading.
                    }
                    let trees = Arc::make_mut(&mut self.shards[shard]);
                    let Some(tw) = trees.get_mut(&tree).map(Arc::make_mut) else { continue };
                    tw.scheduled = None;
                    let trimmed = tw.trim(edge);
                    let next = tw.slots.front().map(|s| second_of(tw.ts(s)));
                    tw.scheduled = next;
                    let newly = trimmed && !std::mem::replace(&mut tw.dirty, true);
                    match next {
                        // Still in this second, after the edge: waits for a later edge.
                        Some(s) if s == second => {
                            if newly {
                                self.dirty.push(tree.clone());
                            }
                            again.push(tree);
                        }
                        Some(s) => {
                            if newly {
                                self.dirty.push(tree.clone());
                            }
                            self.expiry.entry(s).or_default().push(tree);
                        }
                        None if newly => self.dirty.push(tree),
                        None => {}
                    }
                }
                if !again.is_empty() {
                    // (Only the edge's own second keeps trees: every later entry is after it.)
                    self.expiry.insert(second, again);
                    break;
                }
            }
        }
        self.flush(input)
    }

    /// The readings let into the window since the last call: `(arrival ms, readings)`.
    pub(super) fn take_released(&mut self) -> impl Iterator<Item = (i64, u64)> {
        std::mem::take(&mut self.released).into_iter()
    }

    /// Replaces the dataflow's rows of the trees changed since the last flush, at the
    /// input's current time; returns whether the input changed.
    pub(super) fn flush(&mut self, input: &mut WindowInput) -> bool {
        let mut changed = false;
        for tree in self.dirty.drain(..) {
            let trees = Arc::make_mut(&mut self.shards[shard_of(&tree)]);
            let Some(tw) = trees.get_mut(&tree).map(Arc::make_mut) else { continue };
            tw.dirty = false;
            let row = tw.total(self.edge);
            if row != tw.held {
                if let Some(old) = tw.held.take() {
                    input.update((tree.clone(), old), -1);
                }
                if let Some(new) = row {
                    input.update((tree.clone(), new), 1);
                }
                tw.held = row;
                changed = true;
            }
            if tw.slots.is_empty() {
                trees.remove(&tree);
            }
        }
        // A round that released a burst (a city's trees at once) must not keep its room.
        self.dirty.shrink_to(4096);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn next(state: &mut u64, n: u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % n
    }

    const METRICS: [Metric; 4] = [Metric::TiltDeg, Metric::SwayHz, Metric::SoilMoisturePct, Metric::WindGustMs];

    /// After every round, the dataflow's rows equal the aggregates of each tree's readings
    /// with `W − 1h < ts ≤ W`, and a checkpoint's readings are exactly those (in the window)
    /// and those with `ts > W` (waiting). Few trees (hundreds of readings each: per-pane
    /// aggregates, kept and dropped as the window fills and empties) and many (a few each).
    #[test]
    fn tree_rows_follow_a_naive_window() {
        for seed in 1..9u64 {
            // Two trees with many readings (per-pane aggregates built, used and dropped), six,
            // or three hundred with a few each.
            let (trees, per_round) = [(2, 150), (6, 30), (300, 30)][seed as usize % 3];
            timely::execute_directly(move |worker| {
                type Rows = HashMap<(Id, PaneAgg), isize>;
                let rows: Rc<RefCell<Rows>> = Rc::default();
                let mut input: WindowInput = InputSession::new();
                let probe = worker.dataflow::<u64, _, _>(|scope| {
                    let rows = rows.clone();
                    input
                        .to_collection(scope)
                        .inspect(move |((tree, agg), _, d)| {
                            *rows.borrow_mut().entry((tree.clone(), *agg)).or_default() += d;
                        })
                        .probe()
                        .0
                });
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let t0 = 1_795_564_800_000i64;
                let mut driver = WindowDriver::default();
                let mut panes_built = false;
                let mut offered: Vec<WindowReading> = Vec::new();
                let mut w: Option<i64> = None;
                let mut time = 0u64;
                for _round in 0..400 {
                    time += 1;
                    input.advance_to(time);
                    for _ in 0..next(&mut rng, per_round) {
                        // Around the watermark: some waiting, some late, some expired, edges hit exactly.
                        let base = w.unwrap_or(t0);
                        let ts = if next(&mut rng, 10) == 0 {
                            base - HOUR_MS + next(&mut rng, 3) as i64 - 1
                        } else {
                            base - 75 * 60_000 + next(&mut rng, 85 * 60_000) as i64
                        };
                        let r = WindowReading {
                            ts,
                            tree: format!("T-{}", next(&mut rng, trees)).into(),
                            metric: METRICS[next(&mut rng, 4) as usize],
                            // Whole numbers: sums are exact in any order.
                            value: F64(next(&mut rng, 50) as f64 + 1.0),
                        };
                        let t =
                            Timed { at: r.ts, tree: r.tree.clone(), metric: r.metric, value: r.value, arrival_ms: 0 };
                        match driver.offer(t, w) {
                            Offer::Expired => {}
                            _ => offered.push(r),
                        }
                    }
                    // Mostly flushed at once (as ingest does); sometimes left dirty into the
                    // watermark's advance (which flushes), which may drop their panes wholly.
                    let advance = next(&mut rng, 3) > 0;
                    if !advance || next(&mut rng, 4) > 0 {
                        driver.flush(&mut input);
                    }
                    if advance {
                        time += 1;
                        input.advance_to(time);
                        let step = [0, 1, 999, 60_000, 150_000, 1_300_000][next(&mut rng, 6) as usize];
                        let new = w.map_or(t0, |w| w + step as i64 + next(&mut rng, 1000) as i64);
                        w = Some(new);
                        driver.advance(new, &mut input);
                    }
                    time += 1;
                    input.advance_to(time);
                    input.flush();
                    while probe.less_than(&time) {
                        worker.step();
                    }

                    let in_window = |r: &&WindowReading| w.is_some_and(|w| r.ts > w - HOUR_MS && r.ts <= w);
                    let mut want: HashMap<Id, PaneAgg> = HashMap::new();
                    for r in offered.iter().filter(in_window) {
                        want.entry(r.tree.clone()).or_default().add(r.metric, r.value);
                    }
                    let mut got: HashMap<Id, PaneAgg> = HashMap::new();
                    for ((tree, agg), d) in rows.borrow().iter().filter(|(_, d)| **d != 0) {
                        assert_eq!(*d, 1, "seed {seed}: a tree's row with multiplicity {d}");
                        assert!(got.insert(tree.clone(), *agg).is_none(), "seed {seed}: two rows of a tree");
                    }
                    assert_eq!(got, want, "seed {seed}, watermark {w:?}");

                    let key = |r: &WindowReading| (r.ts, r.tree.clone(), r.metric, r.value);
                    let (mut live, mut pending) = driver.share().readings();
                    let mut want_live: Vec<_> = offered.iter().filter(in_window).cloned().collect();
                    let mut want_pending: Vec<_> =
                        offered.iter().filter(|r| w.is_none_or(|w| r.ts > w)).cloned().collect();
                    for v in [&mut live, &mut pending, &mut want_live, &mut want_pending] {
                        v.sort_by_key(key);
                    }
                    assert_eq!(live, want_live, "seed {seed}: the checkpoint's window");
                    assert_eq!(pending, want_pending, "seed {seed}: the checkpoint's waiting readings");
                    panes_built |= driver.shards.iter().flat_map(|s| s.values()).any(|tw| !tw.panes.is_empty());
                }
                assert!(trees > 2 || panes_built, "seed {seed}: no tree kept per-pane aggregates");
            });
        }
    }
}
