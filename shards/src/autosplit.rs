//! Deciding when a region splits by itself, and where.
//!
//! A shard samples the load of the regions it leads: each read or write
//! served counts, and a uniform sample of the requests' key hashes is kept
//! per window. A region whose rate stays at or above
//! [`SplitPolicy::load_ops`] for [`SplitPolicy::load_windows`] windows in a
//! row splits at the median of the sampled hashes, so each half gets about
//! half the load (a hot range inside a region is cut through its middle, not
//! at the region's midpoint). A region holding more than
//! [`SplitPolicy::keys_max`] keys or [`SplitPolicy::bytes_max`] bytes of
//! keys and values splits at the middle of its hash range (keys are spread
//! uniformly by hash). A shard starts at most one split per
//! [`SplitPolicy::cooldown_ms`], and never cuts a region narrower than
//! [`SplitPolicy::width_min`] hashes, so load cannot cause a split storm.

use std::collections::HashMap;

use corekv_engine::Region;

/// Key hashes kept per region and window.
pub const SAMPLE_MAX: usize = 256;

/// When regions split by themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPolicy {
    /// Requests per second (reads and writes) that make a window hot; 0 = no
    /// split by load.
    pub load_ops: u64,
    /// Hot windows in a row before a split.
    pub load_windows: u32,
    /// Length of one window, ms.
    pub window_ms: u64,
    /// Keys above which a region splits; 0 = no split by key count.
    pub keys_max: u64,
    /// Bytes (keys and values) above which a region splits; 0 = no split
    /// by size.
    pub bytes_max: u64,
    /// Time between two splits started by one shard, ms.
    pub cooldown_ms: u64,
    /// Narrowest hash range a split may leave on either side.
    pub width_min: u64,
}

impl Default for SplitPolicy {
    fn default() -> Self {
        SplitPolicy {
            // Below what one region's leader serves on a production node,
            // so a hot region is cut before its leader saturates; where the
            // nodes share cores a split spreads leaders without adding CPU
            // (docs/operations.md says what it costs there).
            load_ops: 20_000,
            load_windows: 10,
            window_ms: 1000,
            keys_max: 4_000_000,
            bytes_max: 256 << 20,
            cooldown_ms: 30_000,
            width_min: 1 << 40,
        }
    }
}

#[derive(Default)]
struct Window {
    ops: u64,
    sample: Vec<u64>,
}

/// Why a region should split, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    /// The region.
    pub region_id: u64,
    /// First hash of the new region (the upper half).
    pub split_hash: u64,
    /// What made it split, for the log.
    pub reason: String,
}

/// The load of the regions one shard leads, window by window.
pub struct LoadTracker {
    policy: SplitPolicy,
    window: HashMap<u64, Window, ahash::RandomState>,
    /// Hot windows in a row, per region.
    hot: HashMap<u64, u32, ahash::RandomState>,
    window_started_ms: u64,
    last_split_ms: Option<u64>,
    rng: u64,
}

/// True if cutting `r` at `at` leaves at least `width_min` hashes each side.
fn cuttable(r: &Region, at: u64, width_min: u64) -> bool {
    let (start, end, at) = (u128::from(r.start_hash), r.end_u128(), u128::from(at));
    at > start
        && at < end
        && at - start >= u128::from(width_min)
        && end - at >= u128::from(width_min)
}

impl LoadTracker {
    /// A tracker starting its first window at `now_ms`.
    pub fn new(policy: SplitPolicy, now_ms: u64) -> LoadTracker {
        LoadTracker {
            policy,
            window: HashMap::default(),
            hot: HashMap::default(),
            window_started_ms: now_ms,
            last_split_ms: None,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// True when some split rule is on.
    pub fn enabled(&self) -> bool {
        self.policy.load_ops > 0 || self.policy.keys_max > 0 || self.policy.bytes_max > 0
    }

    /// True when regions split by load (requests must be recorded).
    pub fn by_load(&self) -> bool {
        self.policy.load_ops > 0
    }

    /// Counts a request of `region_id` for a key hashing to `hash`.
    pub fn record(&mut self, region_id: u64, hash: u64) {
        if !self.by_load() {
            return;
        }
        let w = self.window.entry(region_id).or_default();
        w.ops += 1;
        if w.sample.len() < SAMPLE_MAX {
            w.sample.push(hash);
            return;
        }
        // Reservoir sampling: every request of the window is equally likely
        // to be in the sample.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % w.ops;
        if (j as usize) < SAMPLE_MAX {
            w.sample[j as usize] = hash;
        }
    }

    /// At most one split to start now, if a window ended at `now_ms`.
    /// `leading` gives the regions this shard leads, `size` a region's keys
    /// and bytes (if known).
    pub fn decide(
        &mut self,
        now_ms: u64,
        leading: &[Region],
        size: impl Fn(u64) -> Option<(u64, u64)>,
    ) -> Option<SplitPlan> {
        let elapsed = now_ms.saturating_sub(self.window_started_ms);
        if elapsed < self.policy.window_ms.max(1) {
            return None;
        }
        self.window_started_ms = now_ms;
        let windows = std::mem::take(&mut self.window);
        let secs = elapsed as f64 / 1000.0;
        let mut plan = None;
        for r in leading {
            let w = windows.get(&r.id);
            let rate = w.map_or(0.0, |w| w.ops as f64 / secs);
            let hot = self.policy.load_ops > 0 && rate >= self.policy.load_ops as f64;
            let streak = self.hot.entry(r.id).or_default();
            *streak = if hot { *streak + 1 } else { 0 };
            let streak = *streak;
            if plan.is_some() {
                continue;
            }
            if streak >= self.policy.load_windows.max(1) {
                if let Some(at) = w.and_then(|w| median_inside(r, &w.sample, self.policy.width_min))
                {
                    plan = Some(SplitPlan {
                        region_id: r.id,
                        split_hash: at,
                        reason: format!(
                            "{rate:.0} requests/s for {} windows (threshold {}/s)",
                            streak, self.policy.load_ops
                        ),
                    });
                    continue;
                }
            }
            let (keys, bytes) = size(r.id).unwrap_or_default();
            let over = |n: u64, max: u64| max > 0 && n > max;
            let reason = if over(keys, self.policy.keys_max) {
                format!("{keys} keys (threshold {})", self.policy.keys_max)
            } else if over(bytes, self.policy.bytes_max) {
                format!("{bytes} bytes (threshold {})", self.policy.bytes_max)
            } else {
                continue;
            };
            let mid = r.middle();
            if cuttable(r, mid, self.policy.width_min) {
                plan = Some(SplitPlan {
                    region_id: r.id,
                    split_hash: mid,
                    reason,
                });
            }
        }
        self.hot.retain(|id, _| leading.iter().any(|r| r.id == *id));
        let plan = plan?;
        if self
            .last_split_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.policy.cooldown_ms)
        {
            return None;
        }
        self.last_split_ms = Some(now_ms);
        self.hot.remove(&plan.region_id);
        Some(plan)
    }
}

/// The sampled hashes' median, if a split there is allowed; when many
/// requests share one hash (a hot key), the nearest allowed cut above it.
fn median_inside(r: &Region, sample: &[u64], width_min: u64) -> Option<u64> {
    let mut s: Vec<u64> = sample.to_vec();
    s.sort_unstable();
    let mid = s.len() / 2;
    s.get(mid)?;
    s.iter()
        .skip(mid)
        .copied()
        .find(|h| cuttable(r, *h, width_min))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_engine::Epoch;

    fn region(id: u64, start: u64, end: u64) -> Region {
        Region {
            id,
            start_hash: start,
            end_hash: end,
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            peers: Vec::new(),
        }
    }

    fn policy() -> SplitPolicy {
        SplitPolicy {
            load_ops: 100,
            load_windows: 3,
            window_ms: 1000,
            keys_max: 0,
            bytes_max: 0,
            cooldown_ms: 10_000,
            width_min: 1 << 20,
        }
    }

    #[test]
    fn a_region_hot_for_enough_windows_splits_where_the_load_halves() {
        let r = region(1, 0, 0);
        let mut t = LoadTracker::new(policy(), 0);
        let mut now = 0;
        let mut plans = Vec::new();
        for _ in 0..3 {
            // 400 requests per window, all in the upper quarter of the range
            // spread evenly: the cut goes inside that quarter, not at 2^63.
            for i in 0..400u64 {
                t.record(1, (3u64 << 62) + i * (1u64 << 52));
            }
            now += 1000;
            plans.push(t.decide(now, std::slice::from_ref(&r), |_| None));
        }
        assert_eq!(plans[0], None);
        assert_eq!(plans[1], None);
        let p = plans[2].clone().expect("a split after three hot windows");
        assert_eq!(p.region_id, 1);
        assert!(p.split_hash > 3u64 << 62, "cut at {:#x}", p.split_hash);
        assert!(p.split_hash < (3u64 << 62) + 400 * (1u64 << 52));
    }

    #[test]
    fn a_cool_window_resets_the_streak_and_the_cooldown_holds_the_next_split() {
        let (a, b) = (region(1, 0, 1 << 63), region(2, 1 << 63, 0));
        let mut t = LoadTracker::new(policy(), 0);
        let hot = |t: &mut LoadTracker, id: u64, base: u64| {
            for i in 0..200u64 {
                t.record(id, base + i * (1 << 30));
            }
        };
        let both = [a.clone(), b.clone()];
        hot(&mut t, 1, 1 << 40);
        assert_eq!(t.decide(1000, &both, |_| None), None);
        hot(&mut t, 1, 1 << 40);
        assert_eq!(t.decide(2000, &both, |_| None), None);
        // Cool window: the streak starts again.
        assert_eq!(t.decide(3000, &both, |_| None), None);
        let mut now = 3000;
        let mut first = None;
        for _ in 0..3 {
            hot(&mut t, 1, 1 << 40);
            hot(&mut t, 2, (1 << 63) + (1 << 40));
            now += 1000;
            if let Some(p) = t.decide(now, &both, |_| None) {
                first = Some((now, p));
            }
        }
        let (at, p) = first.expect("a split after three hot windows in a row");
        assert_eq!(at, 6000);
        assert_eq!(p.region_id, 1);
        // Region 2 is just as hot, but the cooldown holds it back until
        // 10 s after the first split; then it splits at once.
        loop {
            hot(&mut t, 2, (1 << 63) + (1 << 40));
            now += 1000;
            match t.decide(now, &both, |_| None) {
                None => assert!(now < at + 10_000, "no split at {now}"),
                Some(p) => {
                    assert_eq!(p.region_id, 2);
                    assert_eq!(now, at + 10_000);
                    return;
                }
            }
        }
    }

    #[test]
    fn one_hot_key_cuts_next_to_it_and_a_narrow_region_is_left_alone() {
        let r = region(1, 0, 0);
        let mut t = LoadTracker::new(policy(), 0);
        let key = 5u64 << 60;
        for w in 1..=3u64 {
            for _ in 0..300 {
                t.record(1, key);
            }
            let p = t.decide(w * 1000, std::slice::from_ref(&r), |_| None);
            if w == 3 {
                assert_eq!(p.map(|p| p.split_hash), Some(key));
            }
        }
        // A region too narrow to cut stays whole however hot.
        let narrow = region(2, 1000, 1000 + (1 << 20));
        let mut t = LoadTracker::new(policy(), 0);
        for w in 1..=5u64 {
            for i in 0..300 {
                t.record(2, 1000 + i);
            }
            assert_eq!(
                t.decide(w * 1000, std::slice::from_ref(&narrow), |_| None),
                None
            );
        }
    }

    #[test]
    fn a_region_over_the_key_limit_splits_at_its_middle() {
        let mut p = policy();
        p.load_ops = 0;
        p.keys_max = 1000;
        let r = region(7, 1 << 62, 1 << 63);
        let mut t = LoadTracker::new(p, 0);
        assert_eq!(
            t.decide(1000, std::slice::from_ref(&r), |_| Some((1000, 0))),
            None
        );
        let plan = t.decide(2000, std::slice::from_ref(&r), |_| Some((1001, 0)));
        assert_eq!(plan.map(|p| p.split_hash), Some(3u64 << 61));
    }

    #[test]
    fn a_region_over_the_byte_limit_splits_at_its_middle() {
        let mut p = policy();
        p.load_ops = 0;
        p.keys_max = 0;
        p.bytes_max = 1 << 20;
        let r = region(7, 1 << 62, 1 << 63);
        let mut t = LoadTracker::new(p, 0);
        assert_eq!(
            t.decide(1000, std::slice::from_ref(&r), |_| Some((10, 1 << 20))),
            None
        );
        let plan = t
            .decide(2000, std::slice::from_ref(&r), |_| {
                Some((10, (1 << 20) + 1))
            })
            .unwrap();
        assert_eq!(plan.split_hash, 3u64 << 61);
        assert!(plan.reason.contains("bytes"), "{}", plan.reason);
    }
}
