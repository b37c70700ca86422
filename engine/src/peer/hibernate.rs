//! Hibernation of one replica (see [`crate::hibernate`]): when a leader
//! goes to sleep, when a follower follows it, and waking.

use super::*;
use crate::hibernate::Sleep;

impl Peer {
    /// Whether this replica sleeps, and as what.
    pub fn sleep_state(&self) -> Sleep {
        self.sleep
    }

    /// True while this replica sleeps (it is not ticked).
    pub fn is_asleep(&self) -> bool {
        !matches!(self.sleep, Sleep::Awake { .. })
    }

    /// True when nothing waits on this replica: no raft output, no request,
    /// no log write in flight, no snapshot, nothing for the owner to do.
    pub fn is_idle(&self) -> bool {
        !self.raw.has_ready() && self.nothing_waits()
    }

    /// [`Peer::is_idle`] but for raft's own output (a heartbeat tick has
    /// some).
    fn nothing_waits(&self) -> bool {
        // Stale reads are served from the applied state without raft: they
        // need no one awake (a follower woken alone would campaign).
        self.proposals.is_empty()
            && self.reads.pending() == 0
            && self.follower_reads.pending() == 0
            && !self.reads.has_unconfirmed()
            && !self.follower_reads.has_unconfirmed()
            && !self.has_unpersisted()
            && !self.snapshot_pending()
            && !self.snapshot_persisting()
            && self.digest_to_verify.is_none()
            && self.splits.is_empty()
            && !self.removed
            && !self.layout_changed
            && !self.range_applied
            && !self.range_persisted
    }

    /// After a tick of an awake leader: counts the ticks in a row with
    /// nothing new and puts the leader to sleep once there were
    /// `hibernate_after_ticks` of them; true if it fell asleep (the owner
    /// then tells the other replicas, [`Peer::sleep_notices`]).
    pub(crate) fn consider_sleep(&mut self) -> bool {
        let after = self.cfg.hibernate_after_ticks;
        if self.is_asleep() {
            return false;
        }
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let commit = raft.raft_log.committed;
        let now = (last, commit);
        let all_caught_up = raft.prs().iter().all(|(_, pr)| pr.matched == last);
        let quiet = after > 0
            && self.initialized
            && raft.state == StateRole::Leader
            && raft.commit_to_current_term()
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && !membership::is_joint(self.raw.store().conf_state())
            && last == commit
            && self.raw.store().applied_index() == commit
            && all_caught_up
            && !self.sweep_needed
            // A renewal wanted but not allowed in this term (a transfer was
            // tried) never comes: it does not keep the region awake.
            && !(self.lease_wanted && self.lease_allowed())
            && self.nothing_waits();
        let Sleep::Awake { quiet_ticks, mark } = &mut self.sleep else {
            return false;
        };
        if !quiet || *mark != now {
            *quiet_ticks = 0;
            *mark = now;
            return false;
        }
        *quiet_ticks += 1;
        // Not on a tick that sent heartbeats: the notice must be the last
        // word the followers hear.
        if (*quiet_ticks as usize) < after || self.raw.has_ready() {
            return false;
        }
        self.sleep = Sleep::Leader;
        self.counters.hibernations += 1;
        true
    }

    /// The sleep notices of a leader that just fell asleep: one raft-shaped
    /// message per other replica (term and commit index, never stepped into
    /// raft), with the node it goes to.
    pub(crate) fn sleep_notices(&self) -> Vec<(u64, Message)> {
        let raft = &self.raw.raft;
        let mut out = Vec::new();
        for (&id, _) in raft.prs().iter() {
            if id == self.peer_id {
                continue;
            }
            let Some(node) = self.node_of(id) else {
                continue;
            };
            let m = Message {
                to: id,
                from: self.peer_id,
                term: raft.term,
                commit: raft.raft_log.committed,
                ..Default::default()
            };
            out.push((node, m));
        }
        out
    }

    /// True when a sleeping leader has work on its own clock: a scheduled
    /// consistency check is due.
    pub(crate) fn timer_due(&self, now_ms: u64) -> bool {
        self.cfg.consistency_check_interval_ms > 0
            && self.next_check_ms != 0
            && now_ms >= self.next_check_ms
    }

    /// Steps `m` into a sleeping leader if it is an answer to its last
    /// heartbeats that raft has nothing to say back to (it stays asleep);
    /// false if `m` is anything else (the caller wakes the replica and
    /// steps it).
    pub(crate) fn step_asleep(&mut self, m: &Message, replies: &mut Vec<Reply>) -> bool {
        use raft::eraftpb::MessageType::MsgHeartbeatResponse;
        if self.sleep != Sleep::Leader
            || m.get_msg_type() != MsgHeartbeatResponse
            || m.term != self.raw.raft.term
            || !m.context.is_empty()
        {
            return false;
        }
        if self.step(m.clone(), replies).is_err() || self.raw.has_ready() || !self.is_leader() {
            // Something to send (a follower behind after all): awake.
            let now = self.now_ms;
            self.wake(now, now, replies);
        }
        true
    }

    /// Nodes of the other replicas of a sleeping leader (they need its
    /// owner's beats).
    pub(crate) fn follower_nodes(&self, out: &mut Vec<u64>) {
        for (&id, _) in self.raw.raft.prs().iter() {
            if id != self.peer_id {
                out.extend(self.node_of(id));
            }
        }
    }

    /// The leader `m.from` said it sleeps (on owner `shard`, incarnation
    /// `incarnation`, of `node`): this replica sleeps too if that is its
    /// leader at this term, it has every entry up to the leader's commit
    /// index, and nothing waits on it. True if it fell asleep.
    pub(crate) fn on_leader_asleep(
        &mut self,
        m: &Message,
        (node, shard, incarnation): (u64, u32, u64),
        now_ms: u64,
    ) -> bool {
        let raft = &self.raw.raft;
        let ok = self.cfg.hibernate_after_ticks > 0
            && self.initialized
            && raft.state == StateRole::Follower
            && raft.leader_id == m.from
            && raft.term == m.term
            && raft.raft_log.committed == m.commit
            && raft.raft_log.last_index() == m.commit
            && self.raw.store().applied_index() == m.commit
            && self.is_idle();
        if !ok {
            return false;
        }
        // The notice is word from the leader, as a heartbeat is.
        self.raw.raft.election_elapsed = 0;
        self.set_now(now_ms);
        let max = self.cfg.follower_sleep_max_ms();
        self.sleep = Sleep::Follower {
            leader_node: node,
            leader_shard: shard,
            incarnation,
            since_ms: now_ms,
            until_ms: now_ms + self.rng.gen_range(max..2 * max),
        };
        self.counters.hibernations += 1;
        true
    }

    /// Wakes this replica at `now_ms`. A follower last heard of its leader
    /// (the notice or a beat of the leader's owner) at `last_contact_ms`:
    /// its election clock moves forward by the ticks since then, as if it
    /// had been ticking without heartbeats.
    pub(crate) fn wake(&mut self, now_ms: u64, last_contact_ms: u64, replies: &mut Vec<Reply>) {
        if !self.is_asleep() {
            return;
        }
        let was = self.sleep;
        self.sleep = Sleep::default();
        self.counters.wakes += 1;
        if was == Sleep::Leader {
            // Check-quorum counts only followers heard from from now on:
            // what they said before the sleep proves nothing about now.
            self.raw.raft.election_elapsed = 0;
            let me = self.peer_id;
            for (id, pr) in self.raw.raft.mut_prs().iter_mut() {
                if *id != me {
                    pr.recent_active = false;
                }
            }
            return;
        }
        self.set_now(now_ms);
        let tick = self.cfg.tick_interval_ms.max(1);
        let missed = (now_ms.saturating_sub(last_contact_ms) / tick) as usize;
        for _ in 0..missed.min(self.cfg.election_tick_max) {
            if self.removed {
                break;
            }
            self.ticks += 1;
            self.raw.tick();
        }
        self.after_input(replies);
    }
}
