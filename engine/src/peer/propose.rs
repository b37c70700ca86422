//! Proposals: client writes, admin commands and membership changes into
//! the raft log.

use super::*;

impl Peer {
    /// Proposes an admin command (see [`crate::admin`]); the reply comes
    /// when it is applied, as `Written { version: index }`.
    pub fn propose_admin(&mut self, id: u64, cmd: AdminCommand, replies: &mut Vec<Reply>) {
        let fail = |replies: &mut Vec<Reply>, e: Error| replies.push(Reply { id, result: Err(e) });
        if let Err(e) = cmd.validate(&self.region) {
            return fail(replies, e);
        }
        if !self.is_leader() {
            return fail(replies, self.not_leader());
        }
        if matches!(cmd, AdminCommand::Split { .. }) && self.membership_changing() {
            return fail(
                replies,
                Error::Busy("a membership change of the region is in progress"),
            );
        }
        self.propose_entry(
            id,
            admin::ENTRY_CONTEXT.to_vec(),
            EntryData::Normal(cmd.encode()),
            replies,
        );
    }

    /// True while a membership change is proposed and not yet applied, or
    /// the region is in a joint configuration.
    pub(super) fn membership_changing(&self) -> bool {
        self.raw.raft.has_pending_conf() || membership::is_joint(self.raw.store().conf_state())
    }

    /// Proposes a membership change (see [`crate::membership`]); the reply
    /// comes when it is applied, as `Written { version: index }`. A voter
    /// is promoted only once its log caught up with the leader's.
    pub fn propose_change(&mut self, id: u64, change: PeerChange, replies: &mut Vec<Reply>) {
        let fail = |replies: &mut Vec<Reply>, e: Error| replies.push(Reply { id, result: Err(e) });
        if !self.is_leader() {
            return fail(replies, self.not_leader());
        }
        if self.membership_changing() {
            return fail(
                replies,
                Error::Busy("a membership change of the region is in progress"),
            );
        }
        let (cc, added) = match crate::membership::plan(&change, &self.region, self.peer_id) {
            Ok(p) => p,
            Err(e) => return fail(replies, e),
        };
        if let PeerChange::Promote { node_id, .. } = change {
            let learner = self.region.peer_on_node(node_id).map_or(0, |p| p.id);
            if !self.is_caught_up(learner) {
                return fail(replies, Error::Busy("the learner is still catching up"));
            }
        }
        self.propose_entry(
            id,
            membership::encode_context(&added),
            EntryData::ConfChange(cc),
            replies,
        );
    }

    /// Proposes a write. Errors known before raft (limits, not leader, busy)
    /// are answered at once through `replies`; otherwise the reply comes when
    /// the entry is applied.
    pub fn propose(
        &mut self,
        id: u64,
        request: WriteRequest,
        session: Option<SessionTag>,
        wall_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        let fail = |replies: &mut Vec<Reply>, e: Error| replies.push(Reply { id, result: Err(e) });
        if let Err(e) = request.validate(&self.cfg) {
            return fail(replies, e);
        }
        if !self.is_leader() {
            return fail(replies, self.not_leader());
        }
        if request.keys().any(|k| !self.region.contains(route_hash(k))) {
            return fail(replies, self.epoch_not_match());
        }
        let cmd = Command {
            now_ms: wall_ms,
            session,
            request,
        };
        self.clock_proposed_ms = self.clock_proposed_ms.max(wall_ms);
        self.propose_entry(id, vec![], EntryData::Normal(cmd.encode()), replies);
    }

    /// Hands an entry to raft and tracks it until it is applied.
    pub(super) fn propose_entry(
        &mut self,
        id: u64,
        context: Vec<u8>,
        data: EntryData,
        replies: &mut Vec<Reply>,
    ) {
        let fail = |replies: &mut Vec<Reply>, e: Error| replies.push(Reply { id, result: Err(e) });
        if self.proposals.len() >= self.cfg.proposals_inflight_max {
            return fail(replies, Error::Busy("too many proposals in flight"));
        }
        let proposed = match data {
            EntryData::Normal(data) => self.raw.propose(context, data),
            EntryData::ConfChange(cc) => self.raw.propose_conf_change(context, cc),
        };
        if let Err(e) = proposed {
            let e = match e {
                raft::Error::ProposalDropped => Error::ProposalDropped,
                other => Error::from(other),
            };
            return fail(replies, e);
        }
        self.counters.proposals += 1;
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        // Proposals at this index or later from an older term are not in the
        // leader's log, so they were never committed.
        while self.proposals.back().is_some_and(|p| p.index >= index) {
            let p = self.proposals.pop_back().unwrap();
            debug_assert!(p.term < term);
            replies.push(Reply {
                id: p.id,
                result: Err(Error::ProposalDropped),
            });
        }
        self.proposals.push_back(Proposal {
            id,
            index,
            term,
            deadline_ms: self.now_ms + self.cfg.request_timeout_ms,
        });
    }
}
