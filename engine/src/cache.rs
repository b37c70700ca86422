//! The hot-key read cache of one owner (a shard): a bounded map from key to
//! its latest applied value, kept *behind the apply point*.
//!
//! Every applied write updates it on the same thread before any read of that
//! round is served, and installing a snapshot clears it, so it never holds a
//! value the state machine no longer holds. A read that misses loads the key
//! from RocksDB (present or absent) and remembers it. Over its byte budget
//! it evicts by frequency as well as recency (quick_cache's CLOCK-Pro
//! style policy, single-threaded): a key read often outlives a scan of keys
//! read once, so under skewed load the hot keys stay.

use bytes::Bytes;
use quick_cache::Weighter;

use crate::value::ValueRecord;

/// Bytes counted per entry besides key and value: the cache's slot and
/// table entry and the two heap blocks of key and value, about (the
/// budget is approximate: the policy's ghost keys are not counted).
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// Hit and miss counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
}

/// An entry's weight: its bytes.
#[derive(Clone, Copy)]
struct Cost;

impl Weighter<Bytes, Option<ValueRecord>> for Cost {
    fn weight(&self, key: &Bytes, v: &Option<ValueRecord>) -> u64 {
        cost(key, v) as u64
    }
}

type Map = quick_cache::unsync::Cache<Bytes, Option<ValueRecord>, Cost, ahash::RandomState>;

/// A bounded cache of applied values (`None` = known absent).
pub struct ReadCache {
    map: Option<Map>,
    bytes_max: usize,
    /// Counters.
    pub stats: CacheStats,
}

fn cost(key: &Bytes, v: &Option<ValueRecord>) -> usize {
    key.len() + v.as_ref().map_or(0, |v| v.value.len()) + ENTRY_OVERHEAD_BYTES
}

impl ReadCache {
    /// A cache holding at most `bytes_max` bytes (0 disables it).
    pub fn new(bytes_max: usize) -> ReadCache {
        ReadCache {
            map: (bytes_max > 0).then(|| new_map(bytes_max)),
            bytes_max,
            stats: CacheStats::default(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes accounted.
    pub fn bytes(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.weight() as usize)
    }

    /// The cached state of `key`: `Some(None)` = known absent, `None` = not cached.
    #[inline]
    pub fn get(&mut self, key: &[u8]) -> Option<Option<ValueRecord>> {
        match self.map.as_ref().and_then(|m| m.get(key)) {
            Some(v) => {
                self.stats.hits += 1;
                Some(v.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// An applied write to `key`: updates the cached copy if there is one
    /// (without making the key hotter), else caches nothing: a key only
    /// written is not worth memory, and an uncached key cannot be stale.
    pub fn update(&mut self, key: Bytes, value: Option<ValueRecord>) {
        let Some(map) = self.map.as_mut() else {
            return;
        };
        if cost(&key, &value) > self.bytes_max / 4 {
            map.remove(&key[..]);
            return;
        }
        // Not resident: nothing stored (quick_cache's `replace`); too heavy
        // for the cache: the old copy is removed as well.
        let _ = map.replace(key, value, true);
    }

    /// Records the state of `key` a read loaded.
    pub fn put(&mut self, key: Bytes, value: Option<ValueRecord>) {
        let Some(map) = self.map.as_mut() else {
            return;
        };
        if cost(&key, &value) > self.bytes_max / 4 {
            // Too large to be worth holding: make sure no older copy stays.
            map.remove(&key[..]);
            return;
        }
        // Replaces an older copy; a new key may push others out.
        map.insert(key, value);
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(m) = self.map.as_mut() {
            m.remove(key);
        }
    }

    /// Forgets everything (a snapshot replaced a region's data).
    pub fn clear(&mut self) {
        if let Some(m) = self.map.as_mut() {
            m.clear();
        }
    }
}

fn new_map(bytes_max: usize) -> Map {
    // Sized for values of about 100 bytes; it grows past that if need be.
    let items = (bytes_max / (ENTRY_OVERHEAD_BYTES + 100)).clamp(16, 1 << 20);
    Map::with(
        items,
        bytes_max as u64,
        Cost,
        ahash::RandomState::new(),
        Default::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str, version: u64) -> Option<ValueRecord> {
        Some(ValueRecord {
            version,
            expire_at_ms: 0,
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
    }

    #[test]
    fn updates_replace_and_the_budget_holds() {
        let mut c = ReadCache::new(10_000);
        c.put(Bytes::from_static(b"a"), rec("1", 1));
        c.put(Bytes::from_static(b"a"), rec("2", 2));
        assert_eq!(c.get(b"a"), Some(rec("2", 2)));
        c.put(Bytes::from_static(b"gone"), None);
        assert_eq!(c.get(b"gone"), Some(None), "absence is remembered");
        assert_eq!(c.get(b"other"), None);
        for i in 0..1000 {
            c.put(Bytes::from(format!("k{i}")), rec("xxxxxxxxxx", i));
            assert!(c.bytes() <= 10_000);
        }
        assert!(c.get(b"k999").is_some());
        assert_eq!(c.stats.hits, 3);
        // A write updates a cached key and caches no other.
        c.update(Bytes::from_static(b"k999"), rec("new", 1001));
        assert_eq!(c.get(b"k999"), Some(rec("new", 1001)));
        c.update(Bytes::from_static(b"only-written"), rec("w", 1));
        assert_eq!(c.get(b"only-written"), None);
        c.update(Bytes::from_static(b"k999"), None);
        assert_eq!(c.get(b"k999"), Some(None), "a delete is cached as absent");
        // Too large to hold: an older copy goes too.
        c.put(Bytes::from_static(b"k999"), rec(&"y".repeat(5000), 1000));
        assert_eq!(c.get(b"k999"), None);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        let mut off = ReadCache::new(0);
        off.put(Bytes::from_static(b"a"), rec("1", 1));
        assert_eq!(off.get(b"a"), None);
    }

    /// Keys read over and over survive a scan of many keys read once (a
    /// first-in-first-out cache loses them).
    #[test]
    fn hot_keys_outlive_a_scan() {
        let mut c = ReadCache::new(20_000);
        let hot: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("hot{i}"))).collect();
        for round in 0..50u64 {
            for k in &hot {
                if c.get(k).is_none() {
                    c.put(k.clone(), rec("h", round));
                }
            }
            for i in 0..400 {
                let k = Bytes::from(format!("cold{round}-{i}"));
                if c.get(&k).is_none() {
                    c.put(k, rec("c", round));
                }
            }
        }
        let held = hot.iter().filter(|k| c.get(k).is_some()).count();
        assert!(held >= 18, "only {held} of 20 hot keys held");
    }
}
