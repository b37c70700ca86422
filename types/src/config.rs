//! Configuration of the region engine: one documented struct (STYLE rule 10).

use crate::error::{Error, Result};

/// Longest key accepted, in bytes (DESIGN §3; not configurable).
pub const KEY_BYTES_MAX: usize = 4096;
/// Hard ceiling for [`Config::value_bytes_max`].
pub const VALUE_BYTES_CEILING: usize = 8 << 20;

/// Settings of every region peer on a node. Times are in ticks or milliseconds,
/// as the name says; sizes in bytes or counts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Length of one tick, in ms. The caller drives ticks; the engine only uses
    /// this to turn tick counts into lease durations. Default 10.
    pub tick_interval_ms: u64,
    /// Minimum election timeout, in ticks. Default 15 (150 ms).
    pub election_tick: usize,
    /// Maximum election timeout (exclusive), in ticks; each election timeout is
    /// drawn uniformly from `[election_tick, election_tick_max)`. Default 30.
    pub election_tick_max: usize,
    /// Leader heartbeat interval, in ticks. Default 3.
    pub heartbeat_tick: usize,
    /// Append messages in flight to one follower. Default 256.
    pub inflight_msgs_max: usize,
    /// Bytes of entries in one append message. Default 1 MiB.
    pub msg_bytes_max: u64,
    /// Bytes of proposed but uncommitted entries a leader accepts before it
    /// refuses proposals (back-pressure). Default 64 MiB.
    pub uncommitted_bytes_max: u64,
    /// Bytes of committed entries handed out in one ready. Default 16 MiB.
    pub committed_bytes_per_ready_max: u64,
    /// Largest value accepted, in bytes. Default 1 MiB; at most 8 MiB.
    pub value_bytes_max: usize,
    /// Largest encoded log entry (one command, e.g. a batch put), in bytes.
    /// Must hold the largest key and value. Default 2 MiB.
    pub entry_bytes_max: usize,
    /// Proposals waiting for apply per region. Default 8192.
    pub proposals_inflight_max: usize,
    /// Reads waiting for a read index per region. Default 65536.
    pub reads_pending_max: usize,
    /// A read index request unanswered for this many ticks is issued again.
    /// Default 10.
    pub read_retry_ticks: u64,
    /// A proposal or read still pending after this long is answered with
    /// `Timeout` (outcome unknown), in ms. Default 5000.
    pub request_timeout_ms: u64,
    /// Entries kept in memory per region for replication, at least. Default 1024.
    pub entry_cache_entries: usize,
    /// Applied entries kept in the log behind the applied index after a
    /// compaction, for followers that lag a little. Default 1000.
    pub log_retain_entries: u64,
    /// Compact once this many applied entries are in the log. Default 10000.
    pub log_compact_entries: u64,
    /// ... or once the applied part of the log holds this many bytes. Default 64 MiB.
    pub log_compact_bytes: u64,
    /// Bytes of the hot-key read cache of each owner of replicas (a shard);
    /// 0 disables it. Default 64 MiB.
    pub read_cache_bytes: usize,
    /// Lease reads stop this long before the election timeout ends, in ms, to
    /// cover clock drift between nodes. Default 40.
    pub lease_margin_ms: u64,
    /// A leader sweeps its region for expired keys every this many ticks;
    /// 0 turns active expiry off (expired values are still never read).
    /// Default 100.
    pub expire_sweep_ticks: u64,
    /// Records looked at per sweep. Default 10000.
    pub expire_scan_max: usize,
    /// Keys removed per expiry entry, at most. Default 1024.
    pub expire_keys_max: usize,
    /// Log indexes of change history a region keeps for watchers that
    /// resume; 0 keeps none (watchers then only see changes from now).
    /// Default 10000.
    pub watch_history_entries: u64,
    /// A leader of a region holding keys with an expiry moves the region's
    /// clock forward through raft when it is this far behind, in ms (and no
    /// write did); reads see a key expire at most about this late. 0: only
    /// writes and expiry sweeps move it. Default 100.
    pub clock_step_ms: u64,
    /// A leader runs the consistency check of its region this often, in ms
    /// (every replica digests its data at one raft index and compares it
    /// with the leader's; a mismatch is logged and counted); 0: only when
    /// asked (`corekv ctl check`). Each check reads the whole region once on
    /// every replica. Default 0.
    pub consistency_check_interval_ms: u64,
    /// A region whose leader found nothing new this many ticks in a row
    /// hibernates: no ticks, no heartbeats, until a message or a request
    /// wakes it (see `corekv_engine::hibernate`); 0: regions never sleep.
    /// Default 50 (500 ms).
    pub hibernate_after_ticks: usize,
    /// An owner with sleeping leaders beats to the nodes of their
    /// followers this often, in ms; a sleeping follower wakes once its
    /// leader's owner was silent for a minimum election timeout. At most a
    /// third of that timeout; 0 (default): that third (50 ms), so two beats
    /// may be lost in a row before a follower wakes (waking alone it only
    /// wakes its region: the others refuse its pre-vote).
    pub beat_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_interval_ms: 10,
            election_tick: 15,
            election_tick_max: 30,
            heartbeat_tick: 3,
            inflight_msgs_max: 256,
            msg_bytes_max: 1 << 20,
            uncommitted_bytes_max: 64 << 20,
            committed_bytes_per_ready_max: 16 << 20,
            value_bytes_max: 1 << 20,
            entry_bytes_max: 2 << 20,
            proposals_inflight_max: 8192,
            reads_pending_max: 65536,
            read_retry_ticks: 10,
            request_timeout_ms: 5000,
            entry_cache_entries: 1024,
            log_retain_entries: 1000,
            log_compact_entries: 10_000,
            log_compact_bytes: 64 << 20,
            lease_margin_ms: 40,
            read_cache_bytes: 64 << 20,
            expire_sweep_ticks: 100,
            expire_scan_max: 10_000,
            expire_keys_max: 1024,
            watch_history_entries: 10_000,
            clock_step_ms: 100,
            consistency_check_interval_ms: 0,
            hibernate_after_ticks: 50,
            beat_interval_ms: 0,
        }
    }
}

const _: () = assert!(KEY_BYTES_MAX <= VALUE_BYTES_CEILING);

impl Config {
    /// How often an owner with sleeping leaders beats, in ms (see
    /// [`Config::beat_interval_ms`]).
    pub fn beat_interval(&self) -> u64 {
        match self.beat_interval_ms {
            0 => (self.election_tick as u64 * self.tick_interval_ms / 3).max(1),
            b => b,
        }
    }

    /// A sleeping follower wakes once its leader's owner was silent this
    /// long, in ms: the minimum election timeout, as for heartbeats.
    pub fn beat_silence_ms(&self) -> u64 {
        self.election_tick as u64 * self.tick_interval_ms
    }

    /// A sleeping follower wakes by itself after this long at most, in ms
    /// (drawn per sleep from `[1, 2)` times it), in case its region went on
    /// without it (a removal it never heard of).
    pub fn follower_sleep_max_ms(&self) -> u64 {
        60_000
    }

    /// Checks every field and the relations between them.
    pub fn validate(self) -> Result<Config> {
        let fail = |m: String| Err(Error::Config(m));
        if self.tick_interval_ms == 0 {
            return fail("tick_interval_ms must be > 0".into());
        }
        if self.expire_scan_max == 0 || self.expire_keys_max == 0 {
            return fail("expire_scan_max and expire_keys_max must be > 0".into());
        }
        if self.heartbeat_tick == 0 {
            return fail("heartbeat_tick must be > 0".into());
        }
        if self.election_tick <= self.heartbeat_tick {
            return fail(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                self.election_tick, self.heartbeat_tick
            ));
        }
        if self.election_tick_max <= self.election_tick {
            return fail(format!(
                "election_tick_max ({}) must be greater than election_tick ({})",
                self.election_tick_max, self.election_tick
            ));
        }
        let election_ms = self.election_tick as u64 * self.tick_interval_ms;
        if 3 * self.beat_interval() > election_ms {
            return fail(format!(
                "beat_interval_ms ({}) must be at most a third of the minimum election \
                 timeout ({election_ms} ms)",
                self.beat_interval()
            ));
        }
        if self.value_bytes_max > VALUE_BYTES_CEILING {
            return fail(format!(
                "value_bytes_max ({}) is over the ceiling of {} bytes",
                self.value_bytes_max, VALUE_BYTES_CEILING
            ));
        }
        if self.inflight_msgs_max == 0 || self.proposals_inflight_max == 0 {
            return fail("inflight limits must be > 0".into());
        }
        if self.reads_pending_max == 0 || self.read_retry_ticks == 0 {
            return fail("reads_pending_max and read_retry_ticks must be > 0".into());
        }
        if self.entry_bytes_max < self.value_bytes_max + KEY_BYTES_MAX + 64 {
            return fail(format!(
                "entry_bytes_max ({}) must hold one entry with the largest key and value",
                self.entry_bytes_max
            ));
        }
        if (self.uncommitted_bytes_max as usize) < self.entry_bytes_max {
            return fail("uncommitted_bytes_max must be at least entry_bytes_max".into());
        }
        if self.log_compact_entries <= self.log_retain_entries {
            return fail(format!(
                "log_compact_entries ({}) must be greater than log_retain_entries ({})",
                self.log_compact_entries, self.log_retain_entries
            ));
        }
        if self.lease_margin_ms >= self.election_timeout_ms() {
            return fail("lease_margin_ms must be shorter than the election timeout".into());
        }
        if self.request_timeout_ms < self.election_timeout_ms() {
            return fail("request_timeout_ms must be at least one election timeout".into());
        }
        Ok(self)
    }

    /// Minimum election timeout in ms.
    pub fn election_timeout_ms(&self) -> u64 {
        self.election_tick as u64 * self.tick_interval_ms
    }

    /// How long a leader may serve lease reads after a quorum confirmed it, in ms.
    pub fn lease_ms(&self) -> u64 {
        self.election_timeout_ms()
            .saturating_sub(self.lease_margin_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_relations_are_refused() {
        let cases: Vec<fn(&mut Config)> = vec![
            |c| c.election_tick = c.heartbeat_tick,
            |c| c.election_tick_max = c.election_tick,
            |c| c.value_bytes_max = VALUE_BYTES_CEILING + 1,
            |c| c.tick_interval_ms = 0,
            |c| c.log_compact_entries = c.log_retain_entries,
            |c| c.lease_margin_ms = 10_000,
            |c| c.entry_bytes_max = 1024,
        ];
        for (i, f) in cases.into_iter().enumerate() {
            let mut c = Config::default();
            f(&mut c);
            assert!(matches!(c.validate(), Err(Error::Config(_))), "case {i}");
        }
    }
}
