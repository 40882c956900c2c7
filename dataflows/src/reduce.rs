//! `hash_reduce`: differential's `reduce` for totally ordered times, keeping each key's
//! current input and output in a hash map instead of two arrangements.
//!
//! The views' times are rounds (`u64`), a total order, and no view reads an older version of
//! another: so a reduction needs only the present of each key, not a history to compact.
//! Differential's `reduce` keeps both its input and its output as arrangements (sorted
//! batches merged as they grow), so every update is copied and compared `O(log n)` times and
//! a key costs a place in two spines; at a city's million trees, where almost every update of
//! a round touches a key of its own, that merge work was most of a reading's cost (issue 11).
//! Here an update costs one hash lookup, and a changed key two calls of `logic` (its old
//! output is recomputed rather than kept) and a comparison of the two.
//!
//! Contract, the same as `reduce`'s: updates are exchanged by the key's [`Hashable`] hash
//! (every process and worker agrees); at each time the input frontier has passed, for every
//! key whose input changed at that time, `logic(key, input, output)` is called with the key's
//! accumulated input — the values with a non-zero count, sorted by value — and the changes
//! from the key's previous output to the new one (consolidated, sorted by output) are emitted
//! at that time. A key whose input accumulates to nothing is dropped (its output retracted,
//! after `logic` saw no values — it is not called then). Times complete in order.

use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Updates of one time, waiting for the input frontier to pass it.
type Updates<K, V> = Vec<((K, V), isize)>;

/// One key's present: its input, the values with non-zero counts, sorted. Its output is
/// not kept: `logic` is a pure function of the input, so the old output is recomputed
/// when the key changes (a call of `logic` costs less than keeping a copy of every row —
/// for `trees` a whole registry row per tree).
struct Group<V> {
    input: Vec<(V, isize)>,
    /// Changed at the time being completed (listed once in the time's changed keys).
    dirty: bool,
}

impl<V: Ord> Group<V> {
    /// Adds `diff` to `value`'s count; the vector grows by one place at a time (a key
    /// holds one to a few values, and `Vec`'s doubling would reserve four).
    fn update(&mut self, value: V, diff: isize) {
        match self.input.binary_search_by(|(v, _)| v.cmp(&value)) {
            Ok(i) => {
                self.input[i].1 += diff;
                if self.input[i].1 == 0 {
                    self.input.remove(i);
                }
            }
            Err(i) => {
                if self.input.len() == self.input.capacity() {
                    self.input.reserve_exact(1);
                }
                self.input.insert(i, (value, diff))
            }
        }
    }
}

/// An empty vector of references of another lifetime, in the same allocation (std collects
/// a mapped `vec::IntoIter` in place), so one buffer serves every call of `logic`.
fn recycle<'b, V>(mut refs: Vec<(&V, isize)>) -> Vec<(&'b V, isize)> {
    refs.clear();
    refs.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

/// `reduce` over a hash map, for totally ordered times (module docs).
pub trait HashReduce<'s, T: Timestamp, K, V> {
    /// For each key whose input changes, `logic` computes its output from its whole input;
    /// the output collection changes by the difference. `logic` must be a pure function
    /// of its input (it is called again for the old input). See the module docs.
    fn hash_reduce<O, L>(self, name: &str, logic: L) -> VecCollection<'s, T, (K, O), isize>
    where
        O: ExchangeData,
        L: FnMut(&K, &[(&V, isize)], &mut Vec<(O, isize)>) + 'static;
}

impl<'s, T, K, V> HashReduce<'s, T, K, V> for VecCollection<'s, T, (K, V), isize>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash + Eq,
    V: ExchangeData,
{
    fn hash_reduce<O, L>(self, name: &str, mut logic: L) -> VecCollection<'s, T, (K, O), isize>
    where
        O: ExchangeData,
        L: FnMut(&K, &[(&V, isize)], &mut Vec<(O, isize)>) + 'static,
    {
        let exchange = Exchange::new(|update: &((K, V), T, isize)| (update.0).0.hashed());
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<((K, O), T, isize)>>, _, _, _>(
                exchange,
                name,
                move |_, _| {
                    // Updates not yet complete, by their time; one capability at the least.
                    let mut pending: BTreeMap<T, Updates<K, V>> = BTreeMap::new();
                    let mut held: Option<Capability<T>> = None;
                    let mut groups: HashMap<K, Group<V>, foldhash::fast::RandomState> = HashMap::default();
                    // The keys changed at the time being completed, each with the range of
                    // its old output in `old_outputs`.
                    let mut dirty: Vec<(K, std::ops::Range<usize>)> = Vec::new();
                    let mut old_outputs: Vec<(O, isize)> = Vec::new();
                    let mut output_buf: Vec<(O, isize)> = Vec::new();
                    let mut refs: Vec<(&'static V, isize)> = Vec::new();
                    // `logic` over a group's input, consolidated into `out` (cleared first).
                    let mut compute = move |key: &K, input: &[(V, isize)], out: &mut Vec<(O, isize)>| {
                        out.clear();
                        if !input.is_empty() {
                            let mut values = recycle(std::mem::take(&mut refs));
                            values.extend(input.iter().map(|(v, r)| (v, *r)));
                            logic(key, &values, out);
                            refs = recycle(values);
                            differential_dataflow::consolidation::consolidate(out);
                        }
                    };
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            if let Some(cap) = cap.retain_least(0) {
                                if held.as_ref().is_none_or(|h| cap.time() < h.time()) {
                                    held = Some(cap);
                                }
                            }
                            for (kv, t, r) in data.drain(..) {
                                pending.entry(t).or_default().push((kv, r));
                            }
                        });
                        // Complete every time the input frontier has passed, in order.
                        while let Some(entry) = pending.first_entry() {
                            if frontier.frontier().less_equal(entry.key()) {
                                break;
                            }
                            let (time, updates) = entry.remove_entry();
                            // 1. Apply the time's updates to the keys' inputs; a key's old
                            //    output is computed when its first update arrives.
                            for ((key, value), diff) in updates {
                                if diff == 0 {
                                    continue;
                                }
                                let group = match groups.get_mut(&key) {
                                    Some(g) => g,
                                    None => groups
                                        .entry(key.clone())
                                        .or_insert_with(|| Group { input: Vec::new(), dirty: false }),
                                };
                                if !group.dirty {
                                    group.dirty = true;
                                    compute(&key, &group.input, &mut output_buf);
                                    let start = old_outputs.len();
                                    old_outputs.append(&mut output_buf);
                                    dirty.push((key, start..old_outputs.len()));
                                }
                                group.update(value, diff);
                            }
                            // 2. Recompute each changed key; emit the difference of its outputs.
                            let at = held.as_ref().expect("a capability for pending updates").delayed(&time);
                            let mut session = output.session(&at);
                            for (key, old) in dirty.drain(..) {
                                let Some(group) = groups.get_mut(&key) else { continue };
                                group.dirty = false;
                                compute(&key, &group.input, &mut output_buf);
                                emit_difference(&old_outputs[old], &output_buf, |o, r| {
                                    session.give(((key.clone(), o.clone()), time.clone(), r))
                                });
                                if group.input.is_empty() {
                                    groups.remove(&key);
                                }
                            }
                            old_outputs.clear();
                        }
                        // Hold the least pending time, or nothing.
                        match pending.keys().next() {
                            Some(t) => {
                                if let Some(h) = held.as_mut() {
                                    h.downgrade(t);
                                }
                            }
                            None => held = None,
                        }
                        if groups.capacity() > 4096 && groups.capacity() > 4 * groups.len() {
                            groups.shrink_to(2 * groups.len());
                        }
                        if old_outputs.capacity() > 1 << 16 {
                            old_outputs = Vec::new();
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Calls `give` with `new − old` of two consolidated (sorted, non-zero) lists.
fn emit_difference<O: Ord>(old: &[(O, isize)], new: &[(O, isize)], mut give: impl FnMut(&O, isize)) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => a.0.cmp(&b.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                give(&old[i].0, -old[i].1);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                give(&new[j].0, new[j].1);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if new[j].1 != old[i].1 {
                    give(&new[j].0, new[j].1 - old[i].1);
                }
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::{Capture, Probe};

    /// Output updates gathered from every worker.
    type Shared = Arc<Mutex<Vec<((u32, (u64, u32)), u64, isize)>>>;

    #[test]
    fn emit_difference_is_new_minus_old() {
        let mut out = Vec::new();
        emit_difference(&[(1, 1), (3, 2), (5, 1)], &[(2, 1), (3, 1), (5, 1), (7, 3)], |o, r| out.push((*o, r)));
        assert_eq!(out, [(1, -1), (2, 1), (3, -1), (7, 3)]);
    }

    /// Random updates (inserts and retractions over few keys, several per time, times with
    /// and without changes) through `hash_reduce` and differential's `reduce` with the same
    /// logic, on two workers: the same output changes at every time.
    #[test]
    fn equals_differentials_reduce_on_random_inputs() {
        for seed in 0..20u64 {
            let got: Shared = Arc::default();
            let want: Shared = Arc::default();
            let (g, w) = (got.clone(), want.clone());
            timely::execute(timely::Config::process(2), move |worker| {
                let (g, w) = (g.clone(), w.clone());
                let index = worker.index();
                let (mut input, probe, captures) = worker.dataflow::<u64, _, _>(|scope| {
                    let (input, coll) = scope.new_collection::<(u32, u32), isize>();
                    // Sum of the values with positive counts and the greatest; rows whose
                    // counts change while the row stays.
                    let logic = |_k: &u32, vals: &[(&u32, isize)], out: &mut Vec<((u64, u32), isize)>| {
                        let sum: u64 =
                            vals.iter().filter(|(_, n)| *n > 0).map(|(v, n)| u64::from(**v) * *n as u64).sum();
                        let max = vals.iter().filter(|(_, n)| *n > 0).map(|(v, _)| **v).max().unwrap_or(0);
                        if sum > 0 {
                            out.push(((sum, max), 1));
                        }
                        if sum.is_multiple_of(3) {
                            out.push(((0, 0), 2));
                        }
                        // The same row with a count that changes with the input.
                        out.push(((sum % 4, 7), vals.len() as isize));
                    };
                    let ours = coll.clone().hash_reduce("Ours", logic);
                    let theirs = coll.reduce(logic);
                    let (probe, ours) = ours.inner.probe();
                    (input, probe, (ours.capture(), theirs.inner.capture()))
                });
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 2 + index as u64);
                let mut live: Vec<(u32, u32)> = Vec::new();
                for round in 1..40u64 {
                    for _ in 0..rng.random_range(0..12) {
                        if !live.is_empty() && rng.random_bool(0.4) {
                            let i = rng.random_range(0..live.len());
                            input.remove(live.swap_remove(i));
                        } else {
                            let kv = (rng.random_range(0..6), rng.random_range(0..5));
                            live.push(kv);
                            input.insert(kv);
                        }
                    }
                    input.advance_to(round);
                    input.flush();
                    while probe.less_than(input.time()) {
                        worker.step();
                    }
                }
                drop(input);
                while worker.step() {}
                let (ours, theirs) = captures;
                for (sink, rx) in [(&g, ours), (&w, theirs)] {
                    for event in rx.try_iter() {
                        if let timely::dataflow::operators::capture::Event::Messages(_, data) = event {
                            sink.lock().unwrap().extend(data);
                        }
                    }
                }
            })
            .unwrap();
            let norm = |v: &Shared| {
                let mut v = v.lock().unwrap().clone();
                differential_dataflow::consolidation::consolidate_updates(&mut v);
                v
            };
            let (got, want) = (norm(&got), norm(&want));
            assert!(!want.is_empty());
            assert_eq!(got, want, "seed {seed}");
        }
    }
}
