//! Driving the replicas through a round: messages stepped, requests proposed
//! and read, readies collected, persisted and served.

use super::*;

pub(super) fn envelope(node_id: u64, peer: &Peer, message: Message) -> Option<RaftEnvelope> {
    let to_node = peer.node_of(message.to)?;
    Some(RaftEnvelope {
        region_id: peer.region_id(),
        from_node: node_id,
        to_node,
        message,
        removed_at: 0,
        epoch: peer.region().epoch,
        control: Control::Raft,
    })
}

/// The range of a snapshot message's region, if it decodes.
pub(super) fn snapshot_span(env: &RaftEnvelope) -> Option<Span> {
    crate::snapshot::SnapshotData::region_of(&env.message.get_snapshot().data)
        .ok()
        .map(|r| Span::of(&r))
}

/// Admits the range of a snapshot message in the node's directory (see
/// [`Replicas::step`]); false if another replica of the node covers part
/// of it, or the snapshot does not decode.
pub(super) fn admit(directory: &Directory, env: &RaftEnvelope) -> bool {
    let Some(span) = snapshot_span(env) else {
        return false;
    };
    directory.admit(env.region_id, span).is_ok()
}

/// The highest replica id of `region_id` destroyed on this node, if any.
pub(super) fn tombstone(db: &Db, region_id: u64) -> Result<Option<u64>> {
    let v = db.get_cf(
        crate::db::cf(db, crate::keys::CF_META),
        crate::keys::tombstone_key(region_id),
    )?;
    Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes))
}

impl Replicas {
    /// Delivers a raft message to its replica.
    ///
    /// A message for a region not here (append, heartbeat, snapshot, vote
    /// or pre-vote) creates the replica a membership change or a split
    /// added here, waiting for its first snapshot, unless it was destroyed
    /// here already or another owner of the node holds the region; others
    /// are dropped. A snapshot is taken only if no other replica of the
    /// node (on any owner) covers part of its range: a replica that has not
    /// applied a split yet still covers the new region's range, and the
    /// new region's data installed first would be overwritten by the old
    /// region's later entries; the leader sends the snapshot again once the
    /// split is applied here (or this replica was replaced by a snapshot of
    /// its own). A message from a replica the region no longer has (its
    /// epoch is not newer) is answered with a removal notice, and a notice
    /// marks this replica removed if it is from a newer membership (the
    /// owner then destroys it). A message from a peer this replica does not
    /// know, sent at a newer membership, is taken: its sender is a member
    /// this replica has not heard of yet.
    pub fn step(&mut self, env: RaftEnvelope, replies: &mut Vec<Reply>) -> Result<()> {
        use raft::eraftpb::MessageType::{
            MsgAppend, MsgHeartbeat, MsgRequestPreVote, MsgRequestVote, MsgSnapshot,
        };
        match env.control {
            Control::Raft => {}
            Control::Beat { shard, incarnation } => {
                self.liveness
                    .heard(env.from_node, shard, incarnation, self.now_ms);
                return Ok(());
            }
            Control::Asleep { shard, incarnation } => {
                if let Some(p) = self.peers.get_mut(&env.region_id) {
                    if p.peer_id() == env.message.to && !p.is_asleep() {
                        p.on_leader_asleep(
                            &env.message,
                            (env.from_node, shard, incarnation),
                            self.now_ms,
                        );
                    }
                }
                return Ok(());
            }
        }
        if env.removed_at != 0 {
            if let Some(p) = self.peers.get_mut(&env.region_id) {
                if p.peer_id() == env.message.to && p.is_initialized() {
                    p.mark_removed(env.removed_at);
                }
            }
            return Ok(());
        }
        if self.opening.iter().any(|(r, _)| *r == env.region_id) {
            return Ok(());
        }
        let is_snapshot = env.message.get_msg_type() == MsgSnapshot;
        let to = env.message.to;
        // A replica that never got its first snapshot, addressed under a
        // newer raft id: it was taken out of the region and this node added
        // again. It holds nothing but its raft state: replaced by one for
        // the new id (the directory's claim stays, without a range).
        let replaced = match self.peers.get(&env.region_id) {
            Some(p)
                if !p.is_initialized()
                    && to > p.peer_id()
                    && !p.has_unpersisted()
                    && !p.snapshot_pending() =>
            {
                // Unless a split wrote the region's state here meanwhile
                // (its replica is about to be opened from it).
                load_region_state(&self.db, env.region_id)?.is_none()
            }
            _ => false,
        };
        if replaced {
            if let Some(mut old) = self.peers.remove(&env.region_id) {
                old.fail_pending(replies);
            }
            self.directory.set_range(env.region_id, None);
        }
        if let Some(p) = self.peers.get_mut(&env.region_id) {
            if to != 0 && to != p.peer_id() {
                // For another replica of this region: an older one (the
                // message is stale), or a newer one. A replica with data
                // addressed under a newer id was taken out of the region
                // without hearing of it (a learner cut off while its move was
                // given up, say): it is destroyed, and the next message
                // creates the new one. One without data waits for its writes.
                if to > p.peer_id() && p.is_initialized() {
                    p.mark_removed(env.epoch.conf_ver);
                }
                return Ok(());
            }
            let from = env.message.from;
            if from != 0 && p.region().peer(from).is_none() {
                if p.is_initialized() && env.epoch.conf_ver <= p.region().epoch.conf_ver {
                    let m = Message {
                        to: from,
                        from: p.peer_id(),
                        ..Default::default()
                    };
                    self.notices.push(RaftEnvelope {
                        region_id: env.region_id,
                        from_node: self.node_id,
                        to_node: env.from_node,
                        message: m,
                        removed_at: p.region().epoch.conf_ver,
                        epoch: p.region().epoch,
                        control: Control::Raft,
                    });
                    return Ok(());
                }
                p.learn_peer(from, env.from_node);
            }
            let region_id = env.region_id;
            let before = self.directory.get(region_id).and_then(|c| c.span);
            if is_snapshot && !admit(&self.directory, &env) {
                return Ok(());
            }
            if p.step_asleep(&env.message, replies) {
                return Ok(());
            }
            self.wake_if_asleep(region_id, replies);
            let Some(p) = self.peers.get_mut(&region_id) else {
                return Ok(());
            };
            p.step(env.message, replies)?;
            if is_snapshot && !p.snapshot_pending() {
                // raft did not take it: the range is what it was.
                self.directory.set_range(region_id, before);
            }
            return Ok(());
        }
        let creates = matches!(
            env.message.get_msg_type(),
            MsgAppend | MsgHeartbeat | MsgSnapshot | MsgRequestVote | MsgRequestPreVote
        );
        if !creates || to == 0 || tombstone(&self.db, env.region_id)?.is_some_and(|t| to <= t) {
            if replaced {
                self.directory.remove(env.region_id);
            }
            return Ok(());
        }
        // One replica of a region per node: another owner holds it (it is
        // moving between shards, or a split opened it there).
        if !replaced && self.directory.create(env.region_id, self.owner).is_err() {
            return Ok(());
        }
        let before = self.directory.get(env.region_id).and_then(|c| c.span);
        if is_snapshot && !admit(&self.directory, &env) {
            // A claim with no replica behind it would keep every later
            // message from creating one.
            if before.is_none() {
                self.directory.remove(env.region_id);
            }
            return Ok(());
        }
        let sender = crate::region::PeerMeta {
            id: env.message.from,
            node_id: env.from_node,
            role: crate::region::PeerRole::Voter,
        };
        let mut peer = Peer::create(
            self.cfg.clone(),
            self.db.clone(),
            self.node_id,
            (env.region_id, to),
            sender,
            self.seed,
            &self.logger,
        )?;
        peer.step(env.message, replies)?;
        if is_snapshot && !peer.snapshot_pending() {
            self.directory.set_range(env.region_id, before);
        }
        self.peers.insert(env.region_id, peer);
        Ok(())
    }

    /// Reports the fate of a message this node sent: a snapshot's arrival or
    /// loss, and unreachable peers.
    pub fn report_delivery(&mut self, env: &RaftEnvelope, delivered: bool) {
        let Some(p) = self.peers.get_mut(&env.region_id) else {
            return;
        };
        if env.message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            p.report_snapshot(env.message.to, delivered);
        }
        if !delivered {
            p.report_unreachable(env.message.to);
        }
    }

    /// Proposes a write to `region_id`.
    pub fn propose(
        &mut self,
        region_id: u64,
        id: u64,
        request: WriteRequest,
        session: Option<SessionTag>,
        wall_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.propose(id, request, session, wall_ms, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Proposes an admin command on `region_id`.
    pub fn propose_admin(
        &mut self,
        region_id: u64,
        id: u64,
        cmd: crate::admin::AdminCommand,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.propose_admin(id, cmd, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Proposes a membership change of `region_id`.
    pub fn propose_change(
        &mut self,
        region_id: u64,
        id: u64,
        change: crate::membership::PeerChange,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.propose_change(id, change, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Queues a read on `region_id` arriving at `now_ms` (monotonic ms).
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &mut self,
        region_id: u64,
        id: u64,
        key: Bytes,
        consistency: Consistency,
        now_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.read(id, key, consistency, now_ms, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Queues a scan of region `region_id` (see [`crate::read::Scan`]).
    pub fn scan(
        &mut self,
        region_id: u64,
        id: u64,
        scan: crate::read::Scan,
        consistency: Consistency,
        now_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.scan(id, scan, consistency, now_ms, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Collects the output of every replica into one round.
    pub fn collect(&mut self, round: &mut Round) -> Result<()> {
        let mut out = ReadyOutput::default();
        let now_ms = self.now_ms;
        for (region_id, p) in self.peers.iter_mut() {
            if p.is_asleep() {
                if p.is_idle() {
                    continue;
                }
                // A request or a local change: awake again.
                let last = super::last_contact(&self.liveness, p);
                p.wake(now_ms, last, &mut out.replies);
            }
            let pending =
                p.handle_ready(&mut round.log, &mut round.apply, &mut self.cache, &mut out)?;
            if let Some(pending) = pending {
                round.persist.push((*region_id, pending));
            }
            round.replies.append(&mut out.replies);
            for m in out.messages.drain(..) {
                round.messages.extend(envelope(self.node_id, p, m));
            }
        }
        round.messages.append(&mut self.notices);
        Ok(())
    }

    /// Confirms that a round's log batch is durable; returns the messages that
    /// were waiting for it. A snapshot's range, durable now, becomes the
    /// replica's range in the directory.
    pub fn on_persisted(
        &mut self,
        persist: Vec<(u64, PendingPersist)>,
        messages: &mut Vec<RaftEnvelope>,
    ) {
        for (region_id, pending) in persist {
            let Some(p) = self.peers.get_mut(&region_id) else {
                continue;
            };
            if p.instance() != pending.instance {
                // Written for a replica since replaced: nothing to tell.
                continue;
            }
            p.on_persisted(pending.number);
            if p.take_range_persisted() && !p.snapshot_persisting() {
                self.directory
                    .set_range(region_id, Some(Span::of(p.region())));
            }
            for m in pending.messages {
                messages.extend(envelope(self.node_id, p, m));
            }
        }
    }

    /// Serves every read whose index is applied.
    pub fn serve_reads(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        for p in self.peers.values_mut() {
            p.serve_reads(&mut self.cache, replies)?;
        }
        Ok(())
    }
}
