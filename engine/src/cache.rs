//! The hot-key read cache of one owner (a shard): a bounded map from key to
//! its latest applied value, kept *behind the apply point*.
//!
//! Every applied write updates it on the same thread before any read of that
//! round is served, and installing a snapshot clears it, so it never holds a
//! value the state machine no longer holds. A read that misses loads the key
//! from RocksDB (present or absent) and remembers it. When over its byte
//! budget it forgets the oldest entries first.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::value::ValueRecord;

/// Bytes counted per entry besides key and value.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Hit and miss counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
}

/// A bounded cache of applied values (`None` = known absent).
pub struct ReadCache {
    map: HashMap<Bytes, Option<ValueRecord>, ahash::RandomState>,
    order: VecDeque<Bytes>,
    bytes: usize,
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
            map: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            bytes_max,
            stats: CacheStats::default(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes accounted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cached state of `key`: `Some(None)` = known absent, `None` = not cached.
    #[inline]
    pub fn get(&mut self, key: &[u8]) -> Option<Option<ValueRecord>> {
        match self.map.get(key) {
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

    /// Records the applied (or loaded) state of `key`.
    pub fn put(&mut self, key: Bytes, value: Option<ValueRecord>) {
        if self.bytes_max == 0 {
            return;
        }
        let c = cost(&key, &value);
        if c > self.bytes_max / 4 {
            // Too large to be worth holding: make sure no older copy stays.
            self.remove(&key);
            return;
        }
        match self.map.get_mut(&key) {
            Some(old) => {
                self.bytes = self.bytes - cost(&key, old) + c;
                *old = value;
            }
            None => {
                self.bytes += c;
                self.order.push_back(key.clone());
                self.map.insert(key, value);
            }
        }
        self.evict();
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some((k, v)) = self.map.remove_entry(key) {
            self.bytes -= cost(&k, &v);
        }
    }

    /// Forgets everything (a snapshot replaced a region's data).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            self.remove(&k);
        }
        // Keys removed out of order leave stale names behind; keep the queue
        // from growing past twice the live entries.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
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
    fn updates_replace_and_budget_evicts_oldest() {
        let mut c = ReadCache::new(1000);
        c.put(Bytes::from_static(b"a"), rec("1", 1));
        c.put(Bytes::from_static(b"a"), rec("2", 2));
        assert_eq!(c.get(b"a"), Some(rec("2", 2)));
        c.put(Bytes::from_static(b"gone"), None);
        assert_eq!(c.get(b"gone"), Some(None), "absence is remembered");
        assert_eq!(c.get(b"other"), None);
        for i in 0..100 {
            c.put(Bytes::from(format!("k{i}")), rec("xxxxxxxxxx", i));
        }
        assert!(c.bytes() <= 1000);
        assert_eq!(c.get(b"a"), None, "oldest evicted first");
        assert!(c.get(b"k99").is_some());
        assert_eq!(c.stats.hits, 3);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        let mut off = ReadCache::new(0);
        off.put(Bytes::from_static(b"a"), rec("1", 1));
        assert_eq!(off.get(b"a"), None);
    }
}
