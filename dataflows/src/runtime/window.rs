//! The window driver: moves readings into the window when the watermark
//! passes their `ts` and out of it when it reaches `ts + 1h` (DOMAIN §3, §4
//! `sensor_windows`), and hands the dataflow per-pane aggregates.
//!
//! Readings in the window are kept per pane ([`PANE_MS`] of event time) and
//! tree; the dataflow's input holds one [`PaneAgg`] row per pane and tree, not
//! one per reading. A round marks the panes it changes; [`WindowDriver::flush`]
//! replaces their rows once. The window's lower edge `W − 1h` cuts one pane, the
//! edge pane: its readings are indexed by `ts` (a heap built when the edge enters
//! the pane), so each round finds the trees whose readings it expired without a
//! scan and recomputes just those panes — the window stays exact to the
//! millisecond. Panes wholly behind the edge are retracted and dropped.
//!
//! Cost: a reading is stored once (16 bytes, in its tree's pane); a round costs
//! O(readings it moves + panes it changes), and the view's reduction sees at most
//! `1 h / PANE_MS` (+1) rows per tree.

use crate::checkpoint::{WindowReading, WindowReadingRef};
use crate::event::{Id, Metric, F64};
use crate::time::HOUR_MS;
use crate::views::{PaneAgg, PANE_MS};
use differential_dataflow::input::InputSession;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
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

/// The window's input to the dataflow: `(tree, (pane, aggregates))`.
pub(super) type WindowInput = InputSession<u64, (Id, (i64, PaneAgg)), isize>;

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

/// A reading in a pane: its offset into the pane, metric and value.
#[derive(Clone, Copy, Debug)]
struct Slot {
    value: F64,
    offset: u32,
    metric: Metric,
}

/// One tree's readings in one pane and their aggregates. Unless the pane is dirty (in
/// [`WindowDriver::dirty`]), the dataflow holds `agg` for it exactly when `readings` is
/// not empty; a dirty pane keeps the row the dataflow holds in `held` until the flush
/// replaces it. So no second copy of the aggregates per tree and pane, and the dirty
/// set holds keys only.
#[derive(Clone, Default, Debug)]
struct TreePane {
    readings: Vec<Slot>,
    /// The aggregates of `readings` (kept up to date as readings come; recomputed when
    /// the edge removes some).
    agg: PaneAgg,
    /// While dirty: the dataflow's row, if it holds one.
    held: Option<Box<PaneAgg>>,
}

impl TreePane {
    /// The row the dataflow holds for this pane, when it is not dirty.
    fn row(&self) -> Option<PaneAgg> {
        (!self.readings.is_empty()).then_some(self.agg)
    }
    /// Marks the pane dirty (`newly`: it was not): keeps the row the dataflow holds.
    fn mark(&mut self, newly: bool) {
        if newly {
            self.held = self.row().map(Box::new);
        }
    }
    /// The row the dataflow holds (`dirty`: whether the pane is).
    fn held_row(&self, dirty: bool) -> Option<PaneAgg> {
        if dirty {
            self.held.as_deref().copied()
        } else {
            self.row()
        }
    }
}

/// The trees' readings in one pane; shared with a checkpoint (copied once if changed).
type Pane = Arc<HashMap<Id, TreePane>>;

fn pane_of(ts: i64) -> i64 {
    ts.div_euclid(PANE_MS)
}

/// Moves readings into and out of the window as the watermark advances.
#[derive(Default)]
pub(super) struct WindowDriver {
    /// Readings waiting for the watermark.
    pending: TimeQueue,
    /// The readings in the window, by pane.
    panes: BTreeMap<i64, Pane>,
    /// The window's lower edge (`W − 1h`): readings with `ts` at or before it have left.
    edge: Option<i64>,
    /// The pane holding the edge, and its readings' `(ts, tree)`, least first.
    edge_pane: Option<i64>,
    edge_index: BinaryHeap<Reverse<(i64, Id)>>,
    /// `(pane, tree)` changed since the last flush (each keeps the row the dataflow holds
    /// for it in [`TreePane::held`]).
    dirty: HashSet<(i64, Id)>,
    /// Readings the watermark let into the window since the last take, by arrival ms.
    released: BTreeMap<i64, u64>,
}

/// The driver's readings, shared with a checkpoint in O(panes).
pub(super) struct WindowState {
    panes: BTreeMap<i64, Pane>,
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
        for (&pane, trees) in &self.panes {
            for (tree, tp) in trees.iter() {
                for s in &tp.readings {
                    let ts = pane * PANE_MS + i64::from(s.offset);
                    if ts > edge {
                        f(true, WindowReadingRef { ts, tree, metric: s.metric, value: s.value });
                    }
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

    /// Puts a visible reading into its pane.
    fn insert(&mut self, t: Timed) {
        let pane = pane_of(t.at);
        let slot = Slot { value: t.value, offset: (t.at - pane * PANE_MS) as u32, metric: t.metric };
        let trees = Arc::make_mut(self.panes.entry(pane).or_default());
        let tp = trees.entry(t.tree.clone()).or_default();
        if self.edge_pane == Some(pane) {
            self.edge_index.push(Reverse((t.at, t.tree.clone())));
        }
        tp.mark(self.dirty.insert((pane, t.tree)));
        tp.readings.push(slot);
        tp.agg.add(t.metric, t.value);
    }

    /// The readings, in O(panes + waiting buckets).
    pub(super) fn share(&self) -> WindowState {
        WindowState { panes: self.panes.clone(), edge: self.edge, pending: self.pending.clone() }
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
        // 2. The edge moves to `w − 1h`: whole panes behind it leave with their rows.
        let mut changed = false;
        let edge = w - HOUR_MS;
        if self.edge.is_none_or(|old| edge > old) {
            self.edge = Some(edge);
            let q = pane_of(edge);
            while let Some(entry) = self.panes.first_entry() {
                if *entry.key() >= q {
                    break;
                }
                let (pane, trees) = entry.remove_entry();
                for (tree, tp) in trees.iter() {
                    let dirty = !self.dirty.is_empty() && self.dirty.remove(&(pane, tree.clone()));
                    let held = tp.held_row(dirty);
                    if let Some(agg) = held {
                        input.update((tree.clone(), (pane, agg)), -1);
                        changed = true;
                    }
                }
            }
            // 3. The pane the edge cuts: index its readings by time once, then find the
            //    trees whose readings the edge passed.
            if self.edge_pane != Some(q) {
                self.edge_pane = Some(q);
                let index: Vec<_> = self.panes.get(&q).map_or_else(Vec::new, |trees| {
                    trees
                        .iter()
                        .flat_map(|(tree, tp)| {
                            tp.readings.iter().map(move |s| Reverse((q * PANE_MS + i64::from(s.offset), tree.clone())))
                        })
                        .collect()
                });
                self.edge_index = BinaryHeap::from(index);
            }
            while let Some(Reverse((ts, _))) = self.edge_index.peek() {
                if *ts > edge {
                    break;
                }
                let Some(Reverse((_, tree))) = self.edge_index.pop() else { break };
                if let Some(trees) = self.panes.get_mut(&q) {
                    if let Some(tp) = Arc::make_mut(trees).get_mut(&tree) {
                        tp.mark(self.dirty.insert((q, tree)));
                    }
                }
            }
        }
        self.flush(input) || changed
    }

    /// The readings let into the window since the last call: `(arrival ms, readings)`.
    pub(super) fn take_released(&mut self) -> impl Iterator<Item = (i64, u64)> {
        std::mem::take(&mut self.released).into_iter()
    }

    /// Replaces the dataflow's rows of the panes changed since the last flush, at the
    /// input's current time; returns whether the input changed.
    pub(super) fn flush(&mut self, input: &mut WindowInput) -> bool {
        let mut changed = false;
        let edge_pane = self.edge.map(|e| (e, pane_of(e)));
        for (pane, tree) in self.dirty.drain() {
            // (A pane wholly behind the edge is gone already, its rows retracted.)
            let Some(trees) = self.panes.get_mut(&pane) else { continue };
            let trees = Arc::make_mut(trees);
            let Some(tp) = trees.get_mut(&tree) else { continue };
            if let Some((edge, _)) = edge_pane.filter(|(_, q)| *q == pane) {
                let before = tp.readings.len();
                tp.readings.retain(|s| pane * PANE_MS + i64::from(s.offset) > edge);
                if tp.readings.len() != before {
                    // Readings left: recompute (max and min cannot be taken back).
                    tp.agg = PaneAgg::default();
                    for s in &tp.readings {
                        tp.agg.add(s.metric, s.value);
                    }
                }
            }
            let held = tp.held.take().map(|b| *b);
            let agg = tp.row();
            if agg != held {
                if let Some(old) = held {
                    input.update((tree.clone(), (pane, old)), -1);
                }
                if let Some(new) = agg {
                    input.update((tree.clone(), (pane, new)), 1);
                }
                changed = true;
            }
            if tp.readings.is_empty() {
                trees.remove(&tree);
                if trees.is_empty() {
                    self.panes.remove(&pane);
                }
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

    /// After every round, the dataflow's pane rows equal the aggregates of the readings
    /// with `W − 1h < ts ≤ W` per tree and pane, and a checkpoint's readings are exactly
    /// those (in the window) and those with `ts > W` (waiting).
    #[test]
    fn pane_rows_follow_a_naive_window() {
        for seed in 1..6u64 {
            timely::execute_directly(move |worker| {
                type Rows = HashMap<(Id, i64, PaneAgg), isize>;
                let rows: Rc<RefCell<Rows>> = Rc::default();
                let mut input: WindowInput = InputSession::new();
                let probe = worker.dataflow::<u64, _, _>(|scope| {
                    let rows = rows.clone();
                    input
                        .to_collection(scope)
                        .inspect(move |((tree, (pane, agg)), _, d)| {
                            *rows.borrow_mut().entry((tree.clone(), *pane, *agg)).or_default() += d;
                        })
                        .probe()
                        .0
                });
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let t0 = 1_795_564_800_000i64;
                let mut driver = WindowDriver::default();
                let mut offered: Vec<WindowReading> = Vec::new();
                let mut w: Option<i64> = None;
                let mut time = 0u64;
                for _round in 0..400 {
                    time += 1;
                    input.advance_to(time);
                    for _ in 0..next(&mut rng, 30) {
                        // Around the watermark: some waiting, some late, some expired, edges hit exactly.
                        let base = w.unwrap_or(t0);
                        let ts = if next(&mut rng, 10) == 0 {
                            base - HOUR_MS + next(&mut rng, 3) as i64 - 1
                        } else {
                            base - 75 * 60_000 + next(&mut rng, 85 * 60_000) as i64
                        };
                        let r = WindowReading {
                            ts,
                            tree: format!("T-{}", next(&mut rng, 6)).into(),
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
                    let mut want: HashMap<(Id, i64), PaneAgg> = HashMap::new();
                    for r in offered.iter().filter(in_window) {
                        want.entry((r.tree.clone(), pane_of(r.ts))).or_default().add(r.metric, r.value);
                    }
                    let mut got: HashMap<(Id, i64), PaneAgg> = HashMap::new();
                    for ((tree, pane, agg), d) in rows.borrow().iter().filter(|(_, d)| **d != 0) {
                        assert_eq!(*d, 1, "seed {seed}: a pane row with multiplicity {d}");
                        assert!(got.insert((tree.clone(), *pane), *agg).is_none(), "seed {seed}: two rows of a pane");
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
                }
            });
        }
    }
}
