//! Driving raft: ticks, messages, elections and transfers, and what follows
//! each input (role changes, pending requests failed or timed out).

use super::*;

impl Peer {
    /// Called after every input that may change the role or term.
    pub(super) fn after_input(&mut self, replies: &mut Vec<Reply>) {
        let leader = self.raw.raft.leader_id;
        if leader != self.leader_seen {
            self.leader_seen = leader;
            if leader != 0 {
                self.counters.leader_changes += 1;
            }
        }
        let now = (self.raw.raft.state, self.raw.raft.term);
        if now == self.role_term {
            return;
        }
        match now.0 {
            // An election starts with pre-vote, or directly as a candidate
            // (leader transfer).
            StateRole::PreCandidate => self.counters.campaigns += 1,
            StateRole::Candidate if self.role_term.0 != StateRole::PreCandidate => {
                self.counters.campaigns += 1
            }
            StateRole::Leader => self.counters.became_leader += 1,
            _ => {}
        }
        // raft drew a new election timeout from its own RNG: draw ours instead
        // so that a seeded run replays.
        let timeout = self
            .rng
            .gen_range(self.cfg.election_tick..self.cfg.election_tick_max);
        self.raw.raft.set_randomized_election_timeout(timeout);
        let was_leader = self.role_term.0 == StateRole::Leader;
        self.role_term = now;
        self.lease_until_ms = 0;
        self.next_check_ms = 0;
        // Follower reads asked an old leader: answer them retryably.
        let mut asked_old = Vec::new();
        self.follower_reads.take_all(&mut asked_old);
        for r in asked_old {
            replies.push(Reply {
                id: r.id,
                result: Err(self.not_leader()),
            });
        }
        if was_leader {
            let mut drained = Vec::new();
            self.reads.take_all(&mut drained);
            for r in drained {
                replies.push(Reply {
                    id: r.id,
                    result: Err(self.not_leader()),
                });
            }
        }
    }

    /// Moves this replica's clock (the caller's monotonic clock, ms) to
    /// `now_ms`; it never goes back.
    pub(super) fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Advances raft's logical clock by one tick. `now_ms` is the caller's
    /// monotonic clock, used for leases and request deadlines.
    pub fn tick(&mut self, now_ms: u64, replies: &mut Vec<Reply>) {
        self.set_now(now_ms);
        self.ticks += 1;
        if self.raw.raft.leader_id != raft::INVALID_ID {
            self.campaign_hold = 0;
        }
        if self.removed {
            // Out of the region (see `step`): no elections, no heartbeats.
        } else if self.campaign_hold > 0 {
            self.campaign_hold -= 1;
        } else {
            self.raw.tick();
        }
        self.after_input(replies);
        self.block_lease_while_transferring();
        self.expire_requests(replies);
        if !self.is_leader() {
            if !self.removed && self.raw.raft.leader_id != raft::INVALID_ID {
                for issue in
                    self.follower_reads
                        .reissue(now_ms, self.ticks, self.cfg.read_retry_ticks)
                {
                    self.raw.read_index(issue.ctx.to_be_bytes().to_vec());
                    self.counters.read_index_rounds += 1;
                }
            }
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        self.schedule_check(now_ms);
        // raft leaves a joint configuration by itself only if the leader
        // that entered it is still leading when it applies it; any later
        // leader ends it here.
        if membership::is_joint(self.raw.store().conf_state()) && !self.raw.raft.has_pending_conf()
        {
            let _ = self
                .raw
                .propose_conf_change(vec![], ConfChangeV2::default());
        }
        for issue in self
            .reads
            .reissue(now_ms, self.ticks, self.cfg.read_retry_ticks)
        {
            self.raw.read_index(issue.ctx.to_be_bytes().to_vec());
            self.counters.read_index_rounds += 1;
        }
        // Renew the lease ahead of its end while lease reads keep coming.
        let renew_at = self.lease_until_ms.saturating_sub(self.cfg.lease_ms() / 2);
        if self.lease_wanted
            && now_ms >= renew_at
            && self.lease_allowed()
            && !self.reads.has_unconfirmed()
        {
            self.lease_wanted = false;
            let issue = self.reads.renew(now_ms, self.ticks);
            self.raw.read_index(issue.ctx.to_be_bytes().to_vec());
            self.counters.read_index_rounds += 1;
        }
    }

    /// Answers every request waiting here (the replica is going away):
    /// proposals with `Timeout` (they may still be committed elsewhere),
    /// reads with `RegionNotFound`.
    pub fn fail_pending(&mut self, replies: &mut Vec<Reply>) {
        for p in self.proposals.drain(..) {
            replies.push(Reply {
                id: p.id,
                result: Err(Error::Timeout),
            });
        }
        let mut reads = std::mem::take(&mut self.stale_reads);
        self.reads.take_all(&mut reads);
        self.follower_reads.take_all(&mut reads);
        for r in reads {
            replies.push(Reply {
                id: r.id,
                result: Err(Error::RegionNotFound(self.region.id)),
            });
        }
    }

    pub(super) fn expire_requests(&mut self, replies: &mut Vec<Reply>) {
        let now = self.now_ms;
        self.proposals.retain(|p| {
            if p.deadline_ms <= now {
                replies.push(Reply {
                    id: p.id,
                    result: Err(Error::Timeout),
                });
                false
            } else {
                true
            }
        });
        let mut expired = Vec::new();
        self.reads.take_expired(now, &mut expired);
        for r in expired {
            replies.push(Reply {
                id: r.id,
                result: Err(Error::Timeout),
            });
        }
        // A follower that got no read index in time says so retryably; it
        // never falls back to its own, possibly stale, state.
        let mut expired = Vec::new();
        self.follower_reads.take_expired(now, &mut expired);
        self.follower_reads.drop_empty();
        for r in expired {
            replies.push(Reply {
                id: r.id,
                result: Err(self.not_leader()),
            });
        }
    }

    /// Steps a raft message from another replica.
    pub fn step(&mut self, msg: Message, replies: &mut Vec<Reply>) -> Result<()> {
        // A replica that applied its own removal takes no more part: raft-rs
        // keeps a removed leader leading and panics on the next commit it
        // counts (its own progress is gone).
        if self.removed {
            return Ok(());
        }
        let r = self.raw.step(msg);
        self.after_input(replies);
        // A follower may ask for leadership (raft's MsgTransferLeader).
        self.block_lease_while_transferring();
        match r {
            Ok(()) => Ok(()),
            // Messages from peers raft no longer knows, or stale local types,
            // are dropped, as raft-rs intends.
            Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets `ticks` ticks pass before the election clock starts, while no
    /// leader is known: another replica (the preferred leader of a new
    /// cluster) campaigns first.
    pub fn hold_first_campaign(&mut self, ticks: u64) {
        self.campaign_hold = ticks;
    }

    /// Starts an election now (tests, leader balancing).
    pub fn campaign(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        self.raw.campaign()?;
        self.after_input(replies);
        Ok(())
    }

    /// Takes the lead back at once, as a leadership transfer would: an
    /// election in a new term that the other replicas answer even though
    /// they heard from a leader lately. For a replica that led until it
    /// moved to another shard of its node (same raft id, term and durable
    /// log), so its region does not wait an election timeout for a leader.
    pub fn resume_leadership(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
        m.from = self.peer_id;
        m.to = self.peer_id;
        m.term = self.raw.raft.term;
        self.raw.step(m)?;
        self.after_input(replies);
        Ok(())
    }

    /// Tells raft whether a snapshot sent to `to` arrived (it keeps the
    /// follower paused until told).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Tells raft that `to` could not be reached (it stops streaming appends
    /// to it and probes instead).
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Asks raft to hand leadership to `peer_id`. The lease ends at once.
    pub fn transfer_leader(&mut self, peer_id: u64) {
        self.lease_until_ms = 0;
        if self.removed {
            return;
        }
        self.raw.transfer_leader(peer_id);
        self.block_lease_while_transferring();
    }
}
