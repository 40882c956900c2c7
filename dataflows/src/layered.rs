//! [`LayeredMap`]: the catalog's map for a per-tree view, read as snapshots while the egress
//! changes a few percent of it every round.
//!
//! A persistent hash map (`imbl`, used before) copies, for each changed key, the path of
//! nodes to it once per snapshot; at a million trees, where a round changes ~20,000 keys
//! spread over the whole map, that is most of its leaves — half a million entries copied,
//! and as many dropped with the previous snapshot, to change twenty thousand (a third of
//! the CPU of a 10,000-event update round, measured with perf).
//!
//! A `LayeredMap` is a large map (the base) under a short stack of small ones (the
//! layers), each holding the newest value of the keys changed since the base (`None`:
//! removed), newest on top; a reader looks a key up from the top down. The parts are
//! plain hash maps behind `Arc`s, never changed once published, so a snapshot is a clone
//! of a few pointers. A layer is a round's own map, handed over as it is. The base is
//! [`SHARDS`] maps, a key in the shard its hash picks. A plain map is cheaper to copy
//! whole than a persistent one (`imbl`, used before) is to change at most of its leaves,
//! which is what a fold does; it is also faster to look a key up in and cheaper to free.
//! A reader borrowing a snapshot walks its parts in place; an owned scan
//! ([`LayeredMap::into_rows`]) copies the rows of one part (a shard, 1/64 of the base, or a
//! layer) at a time as it reaches it, so no copy holds the whole view.
//!
//! A round's changes become one new layer, built fresh (O(changes)). The top two layers are
//! merged while the lower is at most twice the size of the upper and both are small, so
//! each change is copied O(log) times. Once the layers hold a quarter as many keys as the
//! base, they are folded into a new base — at a million keys, a copy of the base and
//! ~250,000 inserts, longer than several rounds — on a thread of the catalog's, so
//! no round waits for it; rounds meanwhile add layers above the ones being folded, and
//! the fold's result replaces the base and the layers it read.
//!
//! The writer relies on the egress's protocol, not on look-ups: within a round, a key's
//! first change is a retraction if and only if the key was present before the round (each
//! view has at most one row per key; within a time retractions come first).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// A round's changes: the newest value of each key it changed (`None`: removed).
type Changes<K, V> = std::collections::HashMap<K, Option<V>, Hasher>;

/// A layer: a round's changes, or several rounds' merged, shared by the snapshots.
type Layer<K, V> = Arc<Changes<K, V>>;

/// The base's shards (a power of two).
pub const SHARDS: usize = 64;

/// One shard of a base: a plain hash map, hashed with its map's [`Hasher`].
type Shard<K, V> = std::collections::HashMap<K, V, Hasher>;

/// The hasher of a map's shards and layers (and of the choice of shard): seeded at random per map.
type Hasher = foldhash::fast::RandomState;

/// A base: [`SHARDS`] shards, shared by every snapshot that has not changed them.
#[derive(Clone, Debug)]
struct Base<K, V> {
    shards: Arc<Vec<Arc<Shard<K, V>>>>,
    hasher: Hasher,
}

impl<K, V> Default for Base<K, V> {
    fn default() -> Self {
        let hasher = Hasher::default();
        let shards = (0..SHARDS).map(|_| Arc::new(Shard::with_hasher(hasher.clone()))).collect();
        Base { shards: Arc::new(shards), hasher }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Base<K, V> {
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    fn get_key_value<Q>(&self, k: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(&self.hasher, k)].get_key_value(k)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Writes the changes of a layer into this base: the shards they change (and the list
    /// of shards) are copied first where a snapshot shares them.
    fn write(&mut self, layer: impl IntoIterator<Item = (K, Option<V>)>) {
        let hasher = self.hasher.clone();
        let shards = Arc::make_mut(&mut self.shards);
        for (k, v) in layer {
            let shard = Arc::make_mut(&mut shards[shard_of(&hasher, &k)]);
            match v {
                Some(v) => shard.insert(k, v),
                None => shard.remove(&k),
            };
        }
    }
}

/// The shard of a key under `hasher`: bits of its hash that the shard's own table does not
/// use (it takes the low bits for a bucket and the top seven for a tag).
fn shard_of<Q: Hash + ?Sized>(hasher: &Hasher, k: &Q) -> usize {
    (hasher.hash_one(k) >> 32) as usize % SHARDS
}

/// A map read as immutable snapshots, changed by whole rounds (see the module docs).
#[derive(Clone, Debug)]
pub struct LayeredMap<K, V> {
    base: Base<K, V>,
    /// Changes since `base`, oldest first.
    layers: Vec<Layer<K, V>>,
    /// The bottom layers a fold under way is reading.
    folding: usize,
    len: usize,
}

impl<K, V> Default for LayeredMap<K, V> {
    fn default() -> Self {
        LayeredMap { base: Base::default(), layers: Vec::new(), folding: 0, len: 0 }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LayeredMap<K, V> {
    /// Rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The row of `k`.
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(k).map(|(_, v)| v)
    }

    /// The key and row of `k`.
    pub fn get_key_value<Q>(&self, k: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        for layer in self.layers.iter().rev() {
            if let Some((k, v)) = layer.get_key_value(k) {
                return v.as_ref().map(|v| (k, v));
            }
        }
        self.base.get_key_value(k)
    }

    /// Whether `k` has a row.
    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(k).is_some()
    }

    /// Every row, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let layers = &self.layers;
        let base = self.base.iter().filter(move |(k, _)| !layers.iter().any(|l| l.contains_key(*k)));
        // A layer's entry counts unless a newer layer has the key too.
        let layered = layers.iter().enumerate().flat_map(move |(i, layer)| {
            layer.iter().filter_map(move |(k, v)| match v {
                Some(v) if !layers[i + 1..].iter().any(|newer| newer.contains_key(k)) => Some((k, v)),
                _ => None,
            })
        });
        base.chain(layered)
    }

    /// Every row's value.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The parts: the base's size and each layer's, oldest first (for tests).
    pub fn shape(&self) -> (usize, Vec<usize>) {
        (self.base.len(), self.layers.iter().map(|l| l.len()).collect())
    }
}

/// The changes of one round to a [`LayeredMap`], in the egress's order.
#[derive(Debug)]
pub struct Round<K, V> {
    /// A round's changes are gathered here, then go into the base or become a layer as they are.
    layer: Changes<K, V>,
    /// Rows added minus rows removed.
    grown: isize,
}

impl<K, V> Default for Round<K, V> {
    fn default() -> Self {
        Round { layer: Changes::default(), grown: 0 }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Round<K, V> {
    /// Adds (`diff > 0`) or removes (`diff < 0`) the row `(k, v)`.
    pub fn change(&mut self, k: K, v: V, diff: isize) {
        use std::collections::hash_map::Entry;
        match self.layer.entry(k) {
            // The key's first change this round: a retraction means it had a row before.
            Entry::Vacant(e) => {
                self.grown += if diff > 0 { 1 } else { -1 };
                e.insert((diff > 0).then_some(v));
            }
            Entry::Occupied(mut e) => {
                let had = e.get().is_some();
                if diff > 0 {
                    e.insert(Some(v));
                    self.grown += isize::from(!had);
                } else if had {
                    e.insert(None);
                    self.grown -= 1;
                }
            }
        }
    }
}

/// Layers of more keys than this are not merged: a merge copies the lower layer's entries
/// within the round, so it must stay small; larger layers wait for the fold.
#[cfg(not(test))]
const MERGE_CAP: usize = 1 << 16;
#[cfg(test)]
const MERGE_CAP: usize = 256;

/// Folds of fewer keys than this (layers and base together) run within the round.
#[cfg(not(test))]
const FOLD_INLINE: usize = 1 << 16;
#[cfg(test)]
const FOLD_INLINE: usize = 64;

impl<K: Hash + Eq + Clone, V: Clone> LayeredMap<K, V> {
    /// Applies one round's changes (the parts a snapshot shares are copied where they
    /// change). When the layers have grown to a quarter of the base and no fold is under
    /// way, returns a [`Fold`] of them: the caller runs it (on a thread of its own: at a
    /// million keys it takes longer than several rounds) and hands the result to
    /// [`LayeredMap::folded`]; until then the layers stay, and reads are unaffected.
    /// Small folds run here.
    pub fn apply(&mut self, round: Round<K, V>) -> Option<Fold<K, V>> {
        if !round.layer.is_empty() {
            self.len = (self.len as isize + round.grown).max(0) as usize;
            if self.layers.is_empty() && round.layer.len() * 4 > self.base.len() {
                // A round that changes a quarter of the map (a bulk load) goes straight
                // into the base: it would fold at once anyway.
                self.base.write(round.layer);
                return None;
            }
            self.layers.push(Arc::new(round.layer));
        }
        // Merge the top two layers while the lower is at most twice the upper's size (the
        // layers a fold is reading are left alone).
        while self.layers.len() >= self.folding + 2 {
            let [.., older, newer] = &self.layers[..] else { break };
            if older.len() > 2 * newer.len() || older.len() + newer.len() > MERGE_CAP {
                break;
            }
            // The newer layer takes the older's keys it does not have: it is usually this
            // round's own (not yet shared), so only the older one's entries are copied.
            let newer = self.layers.pop().expect("two layers");
            let older = self.layers.pop().expect("two layers");
            let mut merged = Arc::unwrap_or_clone(newer);
            merged.reserve(older.len());
            for (k, v) in older.iter() {
                if !merged.contains_key(k) {
                    merged.insert(k.clone(), v.clone());
                }
            }
            self.layers.push(Arc::new(merged));
        }
        let layered: usize = self.layers.iter().map(|l| l.len()).sum();
        if self.folding > 0 || layered == 0 || layered * 4 <= self.base.len() {
            return None;
        }
        self.folding = self.layers.len();
        let fold = Fold { base: self.base.clone(), layers: self.layers.clone() };
        if layered + self.base.len() < FOLD_INLINE {
            self.folded(fold.run());
            return None;
        }
        Some(fold)
    }

    /// Takes the result of the fold [`LayeredMap::apply`] returned last: its base replaces
    /// this one and the layers it folded go.
    pub fn folded(&mut self, folded: Folded<K, V>) {
        let n = folded.layers.min(self.folding);
        self.base = folded.base;
        self.layers.drain(..n);
        self.folding = 0;
    }

    /// The fold [`LayeredMap::apply`] returned last will not come back (its thread could
    /// not start or failed): the layers stay, and a later round starts another.
    pub fn fold_lost(&mut self) {
        self.folding = 0;
    }
}

/// The layers of a [`LayeredMap`] being folded into (a copy of) its base.
pub struct Fold<K, V> {
    base: Base<K, V>,
    layers: Vec<Layer<K, V>>,
}

/// The result of a [`Fold`].
pub struct Folded<K, V> {
    base: Base<K, V>,
    /// How many of the map's bottom layers it holds.
    layers: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Fold<K, V> {
    /// Applies the layers to the base, oldest first.
    pub fn run(self) -> Folded<K, V> {
        let mut base = self.base;
        let layers = self.layers.len();
        for layer in self.layers {
            base.write(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Folded { base, layers }
    }
}

impl<K, V> LayeredMap<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The rows, owned, walked lazily over the shared parts: the rows of one part (a shard of
    /// the base, or a layer) are copied when the walk reaches it, nothing up front.
    pub fn into_rows(self) -> Box<dyn Iterator<Item = (K, V)> + Send> {
        let layers = Arc::new(self.layers);
        let above_base = layers.clone();
        // One shard at a time: its rows are copied out when the scan reaches it.
        let base = Arc::unwrap_or_clone(self.base.shards)
            .into_iter()
            .flat_map(|shard| copied(&shard))
            .filter(move |(k, _)| !above_base.iter().any(|l| l.contains_key(k)));
        let layered = (0..layers.len()).flat_map(move |i| {
            let layers = layers.clone();
            copied(&layers[i]).filter_map(move |(k, v)| match v {
                Some(v) if !layers[i + 1..].iter().any(|newer| newer.contains_key(&k)) => Some((k, v)),
                _ => None,
            })
        });
        Box::new(base.chain(layered))
    }
}

/// The entries of a shared map, copied out into a `Vec` (cheaper than a second table).
fn copied<K: Clone, V: Clone, S>(map: &std::collections::HashMap<K, V, S>) -> std::vec::IntoIter<(K, V)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>().into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// Random rounds of the egress's shape (per key: a retraction of its row if it has one,
    /// then maybe a new row), checked against a plain map after every round, together with
    /// snapshots taken along the way that must not change.
    #[test]
    fn follows_a_plain_map_and_snapshots_stay_put() {
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let keys = rng.random_range(1..2_000u32);
            let mut map = LayeredMap::<u32, u64>::default();
            let mut model = BTreeMap::new();
            let mut snapshots: Vec<(LayeredMap<u32, u64>, BTreeMap<u32, u64>)> = Vec::new();
            let mut folded = false;
            let mut pending = None;
            for round_no in 0..200 {
                let mut round = Round::default();
                let changes = rng.random_range(0..(keys / 4 + 2));
                // Several times per round: a key may change more than once.
                for _ in 0..changes {
                    let k = rng.random_range(0..keys);
                    if let Some(old) = model.get(&k).copied() {
                        round.change(k, old, -1);
                        model.remove(&k);
                    }
                    if rng.random_bool(0.7) {
                        let v = rng.random::<u64>();
                        round.change(k, v, 1);
                        model.insert(k, v);
                    }
                }
                // Folds come back some rounds later, as from a thread, or are lost.
                if let Some(fold) = map.apply(round) {
                    pending = Some((fold, rng.random_range(0..6)));
                }
                if let Some((fold, wait)) = pending.take() {
                    if wait == 0 {
                        map.folded(fold.run());
                        folded = true;
                    } else if wait == 5 && rng.random_bool(0.2) {
                        map.fold_lost();
                    } else {
                        pending = Some((fold, wait - 1));
                    }
                }
                folded |= map.shape().1.is_empty() && map.shape().0 > 0;
                assert_eq!(map.len(), model.len(), "seed {seed} round {round_no}");
                let got: BTreeMap<u32, u64> = map.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, model, "seed {seed} round {round_no}");
                assert_eq!(map.iter().count(), model.len(), "no key twice");
                for k in 0..keys.min(300) {
                    assert_eq!(map.get(&k), model.get(&k), "seed {seed} round {round_no} key {k}");
                }
                assert!(map.shape().1.len() <= 12 + 2 * (usize::BITS - keys.leading_zeros()) as usize);
                if round_no % 37 == 0 {
                    snapshots.push((map.clone(), model.clone()));
                }
            }
            assert!(folded || keys < 8, "seed {seed}: the layers were never folded into the base");
            for (snap, model) in snapshots {
                let got: BTreeMap<u32, u64> = snap.clone().into_rows().collect();
                assert_eq!(got, model);
                assert_eq!(snap.len(), model.len());
            }
        }
    }
    /// The catalog's keys are `CompactString`s looked up by `&str` (SQL's point lookups): the
    /// shard a key is written to must be the one a borrowed key picks, in the base and in a
    /// layer, long keys (on the heap) and short ones (inline) alike.
    #[test]
    fn string_keys_are_found_by_str() {
        use compact_str::CompactString;
        let key = |i: u32| {
            if i.is_multiple_of(2) {
                format!("T-{i:06}")
            } else {
                format!("a-tree-id-long-enough-for-the-heap-{i}")
            }
        };
        let mut map = LayeredMap::<CompactString, u32>::default();
        let mut bulk = Round::default();
        for i in 0..1_000 {
            bulk.change(CompactString::from(key(i)), i, 1);
        }
        assert!(map.apply(bulk).is_none());
        assert_eq!(map.shape(), (1_000, vec![]), "a bulk load goes into the base");
        let mut round = Round::default();
        for i in 0..10 {
            round.change(CompactString::from(key(i)), i, -1);
            round.change(CompactString::from(key(i)), i + 10_000, 1);
        }
        assert!(map.apply(round).is_none());
        assert_eq!(map.shape(), (1_000, vec![10]));
        for i in 0..1_000 {
            let expected = if i < 10 { i + 10_000 } else { i };
            assert_eq!(map.get(key(i).as_str()), Some(&expected), "key {}", key(i));
        }
        assert_eq!(map.get("T-999999"), None);
        let rows: BTreeMap<CompactString, u32> = map.into_rows().collect();
        assert_eq!(rows.len(), 1_000);
        assert_eq!(rows.get("T-000004"), Some(&10_004));
    }
}
