//! Active expiry on the leader (the sweep that proposes removals) and the
//! region clock it advances.

use super::*;

impl Peer {
    /// As leader, every `expire_sweep_ticks` ticks: looks at the next slice
    /// of the region for keys expired at `wall_ms` (unix ms) and proposes
    /// their removal (see [`crate::expire`]). Returns the keys proposed.
    pub fn sweep_expired(&mut self, wall_ms: u64) -> Result<usize> {
        let n = self.sweep_step(wall_ms)?;
        // After the sweep: a first pass over a region without expiring
        // keys finds none, and the clock needs no entries then.
        self.advance_region_clock(wall_ms);
        Ok(n)
    }

    pub(super) fn sweep_step(&mut self, wall_ms: u64) -> Result<usize> {
        if self.cfg.expire_sweep_ticks == 0
            || !self.sweep_needed
            || self.ticks < self.next_sweep_tick
            || !self.is_leader()
            || !self.raw.raft.commit_to_current_term()
        {
            return Ok(0);
        }
        self.next_sweep_tick = self.ticks + self.cfg.expire_sweep_ticks;
        let db = self.raw.store().db().clone();
        let swept = expire::sweep(
            &db,
            &self.region,
            &mut self.sweep,
            wall_ms,
            self.cfg.expire_scan_max,
            self.cfg.expire_keys_max,
        )?;
        self.counters.expire_sweeps += 1;
        self.ttl_seen_in_pass |= swept.saw_ttl;
        if swept.wrapped {
            // A whole pass without a key with an expiry, and no TTL write
            // since it began: nothing to sweep until the next TTL write.
            if !self.ttl_seen_in_pass && !self.ttl_since_pass_start {
                self.sweep_needed = false;
            }
            self.ttl_seen_in_pass = false;
            self.ttl_since_pass_start = false;
        }
        let keys = swept.expired;
        if keys.is_empty() {
            return Ok(0);
        }
        let n = keys.len();
        let cmd = ExpireCommand {
            now_ms: wall_ms,
            keys,
        };
        // Not tracked as a proposal: if it is lost, the next sweep finds the
        // keys again; applying it twice removes nothing more.
        if self
            .raw
            .propose(expire::ENTRY_CONTEXT.to_vec(), cmd.encode())
            .is_ok()
        {
            self.counters.expire_proposals += 1;
        }
        Ok(n)
    }

    /// As leader of a region that may hold keys with an expiry: proposes a
    /// clock entry once the region's clock is `clock_step_ms` behind
    /// `wall_ms` and no write carried a later time meanwhile, so that reads
    /// see keys expire about that late at most. Costs nothing in regions
    /// without expiring keys.
    pub(super) fn advance_region_clock(&mut self, wall_ms: u64) {
        let step = self.cfg.clock_step_ms;
        let known = self.raw.store().clock_ms();
        // An unknown clock (data of an earlier release) is set by the
        // first clock entry, whatever the region holds (reads wait for it).
        let due = match known {
            None => wall_ms >= self.clock_proposed_ms + step.max(100),
            Some(c) => {
                step > 0 && self.sweep_needed && wall_ms >= c.max(self.clock_proposed_ms) + step
            }
        };
        if !due || !self.is_leader() || !self.raw.raft.commit_to_current_term() {
            return;
        }
        // Not tracked as a proposal: a lost one is proposed again.
        if self
            .raw
            .propose(
                expire::CLOCK_CONTEXT.to_vec(),
                expire::encode_clock(wall_ms),
            )
            .is_ok()
        {
            self.clock_proposed_ms = wall_ms;
        }
    }
}
