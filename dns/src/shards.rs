//! A hash map of byte-string keys split into a fixed number of
//! copy-on-write shards, so that a new [`crate::prepared::Prepared`] can start
//! as a copy of the last one (a pointer per shard) and pay, for each key it
//! changes, a copy of that key's shard only: an update to one service of a
//! zone of 100,000 costs a few shards of a few hundred entries, not the
//! whole map. A lookup hashes the key once more than a plain map would (to
//! pick the shard).

use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Number of shards (a power of two).
const SHARDS: usize = 1024;

/// One shard: a plain map, shared until written.
type Shard<V> = Arc<FxHashMap<Arc<[u8]>, V>>;

/// The map; cloning it shares every shard.
#[derive(Debug, Clone)]
pub(crate) struct Shards<V> {
    shards: Box<[Shard<V>]>,
    len: usize,
}

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            len: 0,
        }
    }
}

/// The shard of `key`: high bits of its hash (the shard's own map uses the low ones).
fn shard_of(key: &[u8]) -> usize {
    let hash = FxBuildHasher.hash_one(key);
    (hash >> 40) as usize & (SHARDS - 1)
}

impl<V: Clone> Shards<V> {
    /// An empty map with room for about `len` entries.
    pub(crate) fn with_capacity(len: usize) -> Self {
        let per_shard = len / SHARDS + 1;
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    let mut map = FxHashMap::default();
                    if len > 0 {
                        map.reserve(per_shard);
                    }
                    Arc::new(map)
                })
                .collect(),
            len: 0,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    /// The value of `key` to change, copying its shard first if another map shares it.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).get_mut(key)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn insert(&mut self, key: Arc<[u8]>, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// How many shards `self` and `other` share (the same allocation).
    #[cfg(test)]
    pub(crate) fn shared_with(&self, other: &Self) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    #[test]
    fn a_copy_shares_every_shard_until_one_of_its_keys_changes() {
        let mut first = Shards::with_capacity(10_000);
        for i in 0..10_000 {
            first.insert(key(&format!("k{i}")), i);
        }
        assert_eq!(first.len(), 10_000);
        let mut second = first.clone();
        assert_eq!(second.shared_with(&first), SHARDS);
        *second.get_mut(b"k7").expect("k7") = 70;
        second.remove(b"k8");
        second.insert(key("new"), 1);
        assert!(second.remove(b"absent").is_none());
        assert!(second.shared_with(&first) >= SHARDS - 3);
        assert_eq!((first.get(b"k7"), second.get(b"k7")), (Some(&7), Some(&70)));
        assert_eq!((first.len(), second.len()), (10_000, 10_000));
        assert!(first.contains_key(b"k8") && !second.contains_key(b"k8"));
        assert_eq!(second.iter().count(), 10_000);
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let mut map = Shards::with_capacity(100_000);
        for i in 0..100_000 {
            map.insert(
                key(&format!(
                    "\x03svc{i}\x0aproduction\x03app\x04acme\x03com\x00"
                )),
                (),
            );
        }
        let largest = map.shards.iter().map(|s| s.len()).max().unwrap_or(0);
        // About 98 per shard on average; none holds several times that.
        assert!(largest < 300, "largest shard holds {largest}");
    }
}
