//! The window driver: moves readings into the window when the watermark
//! passes their `ts` and out of it when it reaches `ts + 1h` (DOMAIN §3, §4
//! `sensor_windows`).

use crate::checkpoint::WindowReading;
use crate::event::{Id, Metric, F64};
use crate::time::HOUR_MS;
use differential_dataflow::input::InputSession;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A reading waiting for the watermark (keyed by `ts`) or for its expiry (keyed by `ts + 1h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Timed {
    pub(super) at: i64,
    pub(super) tree: Id,
    pub(super) metric: Metric,
    pub(super) value: F64,
}

pub(super) type WindowInput = InputSession<u64, (Id, (Metric, F64)), isize>;

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

    /// Every reading, with `at` less `shift`.
    pub(super) fn readings(&self, shift: i64) -> impl Iterator<Item = WindowReading> + '_ {
        self.buckets.values().flat_map(|b| b.iter()).map(move |t| WindowReading {
            ts: t.at - shift,
            tree: t.tree.clone(),
            metric: t.metric,
            value: t.value,
        })
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

/// Moves readings into and out of the window as the watermark advances.
#[derive(Default)]
pub(super) struct WindowDriver {
    pending: TimeQueue,
    live: TimeQueue,
}

/// The driver's readings, shared with a checkpoint: (in the window, waiting).
pub(super) type WindowState = (TimeQueue, TimeQueue);

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
    pub(super) fn offer(&mut self, t: Timed, w: Option<i64>, input: &mut WindowInput) -> Offer {
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
    /// The readings (in the window, waiting), in O(buckets).
    pub(super) fn share(&self) -> WindowState {
        (self.live.clone(), self.pending.clone())
    }

    /// Restores a reading in the window (inserted into `input`) or waiting.
    pub(super) fn restore(&mut self, r: WindowReading, live: bool, input: &mut WindowInput) {
        let t = Timed { at: r.ts, tree: r.tree, metric: r.metric, value: r.value };
        if live {
            Self::insert(&mut self.live, t, input);
        } else {
            self.pending.push(t);
        }
    }

    /// Applies watermark `w` at the input's current time; returns whether anything changed.
    pub(super) fn advance(&mut self, w: i64, input: &mut WindowInput) -> bool {
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
