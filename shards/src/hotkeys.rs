//! Which keys a shard serves most (`corekv ctl hotkeys`): one request in
//! [`SAMPLE_EVERY`], drawn at random (a fixed stride would alias with
//! clients that cycle through keys), has its key counted in a small table, and once a second
//! the shard publishes the top keys with their estimated request rates and
//! starts over. A split cannot spread one hot key; this shows which it is.
//!
//! Counting is lossy counting (Manku and Motwani): after every
//! [`BUCKET_SAMPLES`] samples each count drops by one and keys at zero are
//! forgotten, so a key's count is short by at most the number of buckets
//! so far, keys that keep coming stay, and keys seen once pass through. The
//! table never holds more than [`TRACKED_MAX`] keys.

use std::collections::HashMap;

use bytes::Bytes;

/// One request in this many is sampled.
pub const SAMPLE_EVERY: u64 = 16;
/// Samples per bucket of the lossy count.
pub const BUCKET_SAMPLES: u64 = 256;
/// Keys counted at once, at most.
pub const TRACKED_MAX: usize = 4096;
/// Keys published per shard.
pub const PUBLISHED_MAX: usize = 16;

/// A key's sampled count.
struct Count {
    region: u64,
    count: u64,
}

/// The sampler of one shard.
pub struct HotKeys {
    /// xorshift64 state.
    rng: u64,
    /// Samples in the current bucket.
    in_bucket: u64,
    table: HashMap<Bytes, Count, ahash::RandomState>,
}

impl Default for HotKeys {
    fn default() -> Self {
        HotKeys {
            rng: 0x9E37_79B9_7F4A_7C15,
            in_bucket: 0,
            table: HashMap::default(),
        }
    }
}

/// A hot key as published: (key, region, estimated requests per second).
pub type Hot = (Bytes, u64, f64);

impl HotKeys {
    /// A request for `key` (region `region`) arrived.
    #[inline]
    pub fn sample(&mut self, key: &[u8], region: u64) {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        if !x.is_multiple_of(SAMPLE_EVERY) {
            return;
        }
        self.in_bucket += 1;
        if self.in_bucket >= BUCKET_SAMPLES {
            self.in_bucket = 0;
            self.table.retain(|_, c| {
                c.count -= 1;
                c.count > 0
            });
        }
        if let Some(c) = self.table.get_mut(key) {
            c.count += 1;
            c.region = region;
            return;
        }
        if self.table.len() < TRACKED_MAX {
            // A copy: a slice would keep the request's whole frame alive.
            self.table
                .insert(Bytes::copy_from_slice(key), Count { region, count: 1 });
        }
    }

    /// The top keys over the last `secs` seconds, hottest first, with
    /// their estimated rates; starts counting afresh.
    pub fn take(&mut self, secs: f64) -> Vec<Hot> {
        let mut all: Vec<Hot> = self
            .table
            .drain()
            .filter(|(_, c)| c.count > 1)
            .map(|(k, c)| {
                let rate = (c.count * SAMPLE_EVERY) as f64 / secs.max(1e-3);
                (k, c.region, rate)
            })
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        all.truncate(PUBLISHED_MAX);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_key_stands_out_of_a_uniform_stream() {
        let mut h = HotKeys::default();
        for i in 0..200_000u64 {
            if i % 4 == 0 {
                h.sample(b"hot", 7);
            } else {
                h.sample(format!("k{i}").as_bytes(), 3);
            }
        }
        let top = h.take(2.0);
        assert_eq!(&top[0].0[..], b"hot");
        assert_eq!(top[0].1, 7);
        // 50,000 requests in 2 s: about 25,000 per second.
        assert!((20_000.0..30_000.0).contains(&top[0].2), "{}", top[0].2);
        assert!(top.iter().skip(1).all(|(_, _, r)| *r < 1_000.0));
        assert!(h.take(1.0).is_empty(), "counting starts afresh");
    }
}
