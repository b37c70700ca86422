//! The ready cycle: log writes, applying committed entries (writes, admin
//! commands, conf changes, splits), compaction, and the persisted
//! notification.

use super::*;

impl Peer {
    /// True if [`Peer::handle_ready`] has work (or reads to issue).
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Collects this round's output. Returns the ready to confirm with
    /// [`Peer::on_persisted`] once `log` is durable, if there was one.
    pub fn handle_ready(
        &mut self,
        log: &mut LogBatch,
        apply: &mut ApplyBatch,
        cache: &mut ReadCache,
        out: &mut ReadyOutput,
    ) -> Result<Option<PendingPersist>> {
        let can_issue = self.is_leader() && self.raw.raft.commit_to_current_term();
        if let Some((index, digest)) = self.digest_to_verify.take() {
            // Not tracked: if it is lost, the check is not verified and
            // says so; running it again is harmless.
            if self.is_leader() {
                let cmd = AdminCommand::VerifyDigest { index, digest };
                let _ = self
                    .raw
                    .propose(admin::ENTRY_CONTEXT.to_vec(), cmd.encode());
            }
        }
        if let Some(issue) = self.reads.seal(can_issue, self.now_ms, self.ticks) {
            self.raw.read_index(issue.ctx.to_be_bytes().to_vec());
            self.counters.read_index_rounds += 1;
        }
        let follower_can_issue =
            !self.is_leader() && !self.removed && self.raw.raft.leader_id != raft::INVALID_ID;
        if let Some(issue) = self
            .follower_reads
            .seal(follower_can_issue, self.now_ms, self.ticks)
        {
            // Forwarded to the leader, which confirms its leadership with a
            // quorum and answers with its commit index.
            self.raw.read_index(issue.ctx.to_be_bytes().to_vec());
            self.counters.read_index_rounds += 1;
        }
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut rd = self.raw.ready();
        let sent_before = out.messages.len();
        out.messages.extend(rd.take_messages());
        self.counters.snapshots_sent += out.messages[sent_before..]
            .iter()
            .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            .count() as u64;

        let mut snapshot_index = None;
        if !rd.snapshot().is_empty() {
            let (region, sessions, history_floor) =
                self.raw.mut_store().apply_snapshot(rd.snapshot(), log)?;
            self.sessions = sessions;
            self.counters.snapshots_applied += 1;
            // Whatever it holds may have expiries.
            self.sweep_needed = true;
            self.ttl_since_pass_start = true;
            // The region's data was replaced wholesale.
            cache.clear();
            let index = rd.snapshot().get_metadata().index;
            self.history_floor = history_floor;
            if region != self.region {
                self.layout_changed = true;
            }
            self.region = region;
            self.initialized = true;
            snapshot_index = Some(index);
            // Whether proposals up to the snapshot were applied is unknown here.
            while self.proposals.front().is_some_and(|p| p.index <= index) {
                let p = self.proposals.pop_front().unwrap();
                out.replies.push(Reply {
                    id: p.id,
                    result: Err(Error::Timeout),
                });
            }
        }

        let committed = rd.take_committed_entries();
        let applied_before = self.raw.store().applied_index();
        self.apply_entries(committed, apply, &mut out.replies)?;
        for (key, value) in apply.take_touched() {
            cache.update(key, value);
        }

        self.raw.mut_store().append(rd.entries(), log)?;
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone(), log);
        }
        for rs in rd.take_read_states() {
            let ctx = rs.request_ctx.as_slice();
            if ctx.len() != 8 {
                continue;
            }
            let ctx = u64::from_be_bytes(ctx.try_into().unwrap());
            if ctx > FOLLOWER_CTX_BASE {
                if !self.is_leader() {
                    self.follower_reads.confirm(ctx, rs.index);
                }
                continue;
            }
            if let Some(issued_ms) = self.reads.confirm(ctx, rs.index) {
                // In a term with a transfer, followers may have voted for
                // the transferee since they confirmed.
                if self.is_leader() && self.lease_allowed() {
                    let until = issued_ms + self.cfg.lease_ms();
                    self.lease_until_ms = self.lease_until_ms.max(until);
                }
            }
        }
        let persisted_messages = rd.take_persisted_messages();
        let number = rd.number();
        self.ready_taken = number;
        self.raw.advance_append_async(rd);
        let applied = self.raw.store().applied_index();
        if applied > applied_before && snapshot_index.is_none() {
            self.raw.advance_apply_to(applied);
        }
        if let Some(index) = snapshot_index {
            self.snapshot_persisting = Some((number, index));
        }
        Ok(Some(PendingPersist {
            number,
            instance: self.instance,
            messages: persisted_messages,
        }))
    }

    pub(super) fn apply_entries(
        &mut self,
        entries: Vec<raft::eraftpb::Entry>,
        apply: &mut ApplyBatch,
        replies: &mut Vec<Reply>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let db = self.raw.store().db().clone();
        for e in entries {
            let applied = self.raw.store().applied_index();
            if e.index <= applied {
                continue;
            }
            assert_eq!(
                e.index,
                applied + 1,
                "region {}: apply skips from {} to {}",
                self.region.id,
                applied,
                e.index
            );
            let mut outcome = None;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal if e.get_context() == admin::ENTRY_CONTEXT => {
                    let cmd = AdminCommand::decode(&e.data)?;
                    let o = match &cmd {
                        // The region may have changed since the proposal.
                        // Nor may a region split in a joint configuration
                        // (the new region takes the replicas as a plain set).
                        AdminCommand::Split { .. }
                            if cmd.validate(&self.region).is_err()
                                || membership::is_joint(self.raw.store().conf_state()) =>
                        {
                            WriteOutcome::WrongRegion
                        }
                        AdminCommand::Split {
                            split_hash,
                            new_region_id,
                            new_peers,
                        } => {
                            self.apply_split(
                                &db,
                                apply,
                                (e.index, e.term),
                                *split_hash,
                                *new_region_id,
                                new_peers,
                            );
                            WriteOutcome::Written { version: e.index }
                        }
                        AdminCommand::PreferLeader { .. } => {
                            if cmd.apply(&mut self.region) {
                                self.raw
                                    .store()
                                    .persist_region(&self.region, &mut apply.inner);
                            }
                            WriteOutcome::Written { version: e.index }
                        }
                        AdminCommand::ComputeDigest => {
                            let pending = apply.pending_in(
                                &keys::data_range_start(self.region.start_hash),
                                &keys::data_range_end(self.region.end_hash),
                            );
                            let d = crate::digest::compute_over(
                                &db,
                                (&self.region, self.raw.store().clock_ms()),
                                &self.sessions,
                                &pending,
                            )?;
                            self.digest = Some((e.index, d));
                            if self.is_leader() {
                                self.digest_to_verify = Some((e.index, d));
                            }
                            apply.inner.put_cf(
                                cf(&db, CF_META),
                                keys::check_key(self.region.id),
                                encode_check(self.digest, self.check),
                            );
                            WriteOutcome::Written { version: e.index }
                        }
                        AdminCommand::VerifyDigest { index, digest } => {
                            self.verify_digest(*index, *digest);
                            apply.inner.put_cf(
                                cf(&db, CF_META),
                                keys::check_key(self.region.id),
                                encode_check(self.digest, self.check),
                            );
                            WriteOutcome::Written { version: e.index }
                        }
                    };
                    outcome = Some(o);
                }
                EntryType::EntryNormal if e.get_context() == expire::CLOCK_CONTEXT => {
                    let ms = expire::decode_clock(&e.data)?;
                    self.raw.mut_store().set_clock(ms);
                }
                EntryType::EntryNormal if e.get_context() == expire::ENTRY_CONTEXT => {
                    let mut cmd = ExpireCommand::decode(&e.data)?;
                    // Judged by the region's clock, never going back.
                    cmd.now_ms = self.raw.mut_store().advance_clock(cmd.now_ms);
                    let removed = expire::apply(&db, apply, &self.region, &cmd)?;
                    self.counters.expired_keys += removed.len() as u64;
                    self.applied_bytes_since_compact += e.data.len() as u64;
                }
                EntryType::EntryNormal => {
                    let mut cmd = Command::decode(&e.data)?;
                    // Expiry and conditions are judged by the region's
                    // clock: a leader with a slower clock than an earlier
                    // one does not bring expired values back.
                    cmd.now_ms = self.raw.mut_store().advance_clock(cmd.now_ms);
                    let dedup = match cmd.session {
                        Some(tag) => self.sessions.decide(tag, cmd.now_ms),
                        None => Dedup::Apply,
                    };
                    let o = match dedup {
                        Dedup::Duplicate(first) => first,
                        Dedup::Apply => {
                            if cmd.request.sets_ttl() {
                                self.sweep_needed = true;
                                self.ttl_since_pass_start = true;
                            }
                            let o = apply::apply_command(&db, apply, &self.region, e.index, &cmd)?;
                            if let Some(tag) = cmd.session {
                                let mut changes = Vec::new();
                                self.sessions.record(
                                    tag,
                                    o.clone(),
                                    e.index,
                                    cmd.now_ms,
                                    &mut changes,
                                );
                                let meta = cf(&db, CF_META);
                                for (client, state) in changes {
                                    let key = keys::session_key(self.region.id, client);
                                    match state {
                                        Some(s) => apply.inner.put_cf(meta, key, s.encode()),
                                        None => apply.inner.delete_cf(meta, key),
                                    }
                                }
                            }
                            o
                        }
                    };
                    outcome = Some(o);
                    self.applied_bytes_since_compact += e.data.len() as u64;
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| Error::Corruption(format!("conf change: {err}")))?;
                    let mut v2 = ConfChangeV2::default();
                    let mut one = raft::eraftpb::ConfChangeSingle::default();
                    one.set_change_type(cc.get_change_type());
                    one.node_id = cc.node_id;
                    v2.mut_changes().push(one);
                    self.apply_conf_change(&v2, &[], apply)?;
                    outcome = Some(WriteOutcome::Written { version: e.index });
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| Error::Corruption(format!("conf change: {err}")))?;
                    let added = membership::decode_context(e.get_context())?;
                    self.apply_conf_change(&cc, &added, apply)?;
                    outcome = Some(WriteOutcome::Written { version: e.index });
                }
            }
            apply.end_entry(
                &db,
                self.region.id,
                e.index,
                self.cfg.watch_history_entries > 0,
            );
            apply.entries += 1;
            self.counters.entries_applied += 1;
            self.raw.mut_store().set_applied(e.index, e.term);
            self.resolve_proposals(e.index, e.term, outcome, replies);
        }
        self.maybe_compact(apply)?;
        self.prune_history(&db, apply);
        self.raw.store().persist_apply_state(&mut apply.inner);
        Ok(())
    }

    /// Applies a membership change: raft's configuration, the region's
    /// replicas and `conf_ver`, both stored in `apply`. A replica the change
    /// takes out marks itself removed.
    pub(super) fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
        added: &[crate::region::PeerMeta],
        apply: &mut ApplyBatch,
    ) -> Result<()> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.region = membership::region_after(&self.region, &cs, added);
        self.raw
            .store()
            .persist_region(&self.region, &mut apply.inner);
        if !membership::is_member(&cs, self.peer_id) {
            self.removed = true;
        }
        self.raw.mut_store().set_conf_state(cs);
        self.layout_changed = true;
        Ok(())
    }

    pub(super) fn resolve_proposals(
        &mut self,
        index: u64,
        term: u64,
        mut outcome: Option<WriteOutcome>,
        replies: &mut Vec<Reply>,
    ) {
        while self.proposals.front().is_some_and(|p| p.index <= index) {
            let p = self.proposals.pop_front().unwrap();
            let result = if p.index == index && p.term == term {
                match outcome.take() {
                    Some(WriteOutcome::WrongRegion) => Err(self.epoch_not_match()),
                    Some(WriteOutcome::ResultForgotten) => Err(Error::Timeout),
                    Some(o) => Ok(Response::Write(o)),
                    None => Err(Error::Corruption(format!(
                        "region {}: proposal at {index} applied as an empty entry",
                        self.region.id
                    ))),
                }
            } else {
                // Another entry took this index: the proposal was never committed.
                Err(Error::ProposalDropped)
            };
            replies.push(Reply { id: p.id, result });
        }
    }

    /// Applies a split at log position `at` (index, term): this region keeps
    /// the hashes below `split_hash`; the new region's state (an empty log
    /// after `at`, the sessions, the history floor) goes into the apply
    /// batch, and the owner opens its replica once the batch is written
    /// ([`Peer::take_splits`]).
    pub(super) fn apply_split(
        &mut self,
        db: &Db,
        apply: &mut ApplyBatch,
        at: (u64, u64),
        split_hash: u64,
        new_region_id: u64,
        new_peers: &[crate::region::PeerMeta],
    ) {
        let (index, term) = at;
        let (kept, new) = admin::split_regions(&self.region, split_hash, new_region_id, new_peers);
        // A replica of the new region already stored here (it came by
        // snapshot once this replica's range no longer covered it) stays.
        let stored = matches!(load_region_state(db, new.id), Ok(Some(_)));
        if new.peer_on_node(self.node_id).is_some() && !stored {
            let clock = self.raw.store().clock_ms();
            RegionStorage::write_initial(&new, (index, term, clock), db, &mut apply.inner);
            let meta = cf(db, CF_META);
            // A write retried after the split, now routed to the new region,
            // is still recognised.
            for (client, s) in self.sessions.clients() {
                apply
                    .inner
                    .put_cf(meta, keys::session_key(new.id, *client), s.encode());
            }
            watch::set_floor(db, &mut apply.inner, new.id, index);
            let mut origin = self.region.id.to_be_bytes().to_vec();
            origin.extend_from_slice(&index.to_be_bytes());
            apply.inner.put_cf(meta, keys::origin_key(new.id), origin);
            self.splits.push(new.clone());
        }
        self.region = kept;
        self.raw
            .store()
            .persist_region(&self.region, &mut apply.inner);
        self.last_split_index = index;
        self.layout_changed = true;
        self.range_applied = true;
        let version = self.region.epoch.version;
        let mut record = index.to_be_bytes().to_vec();
        record.extend_from_slice(&split_hash.to_be_bytes());
        apply.inner.put_cf(
            cf(db, CF_META),
            keys::split_key(self.region.id, version),
            record,
        );
        self.split_log.push((version, index, Some(split_hash)));
    }

    /// The log index of the first split at or after log index `index`
    /// that moved `hash` out of this region, if this replica recorded it
    /// (a replica that came by a snapshot knows only the splits after it).
    pub fn split_index_after(&self, index: u64, hash: u64) -> Option<u64> {
        self.split_log
            .iter()
            .filter(|(_, i, _)| *i >= index)
            .find(|(_, _, at)| at.is_none_or(|at| at <= hash))
            .map(|(_, index, _)| *index)
    }

    /// Log index of the split after epoch version `version` that moved the
    /// key hashing to `hash` out of this region, if this replica applied it
    /// (a replica restored from a snapshot knows only the splits after the
    /// snapshot). A split keeps the hashes below its split point, so that
    /// is the first split after `version` whose point is at or below
    /// `hash`; for an old record without its point, the first split after
    /// `version` (never later than the one that moved the key).
    pub fn split_index_moving(&self, version: u64, hash: u64) -> Option<u64> {
        self.split_log
            .iter()
            .filter(|(v, _, _)| *v > version)
            .find(|(_, _, at)| at.is_none_or(|at| at <= hash))
            .map(|(_, index, _)| *index)
    }

    /// Regions split off this one since the last call, whose state is in an
    /// apply batch: open their replicas once that batch is written.
    pub fn take_splits(&mut self) -> Vec<Region> {
        std::mem::take(&mut self.splits)
    }

    /// Drops history older than `watch_history_entries` indexes, in steps of
    /// a quarter of that so range deletions stay few.
    pub(super) fn prune_history(&mut self, db: &rocksdb::DB, apply: &mut ApplyBatch) {
        let keep = self.cfg.watch_history_entries;
        let applied = self.raw.store().applied_index();
        if applied.saturating_sub(self.history_floor) <= keep + keep / 4 {
            return;
        }
        let floor = applied - keep;
        watch::prune(db, &mut apply.inner, self.region.id, floor);
        self.history_floor = floor;
    }

    pub(super) fn maybe_compact(&mut self, apply: &mut ApplyBatch) -> Result<()> {
        let store = self.raw.store();
        let applied = store.applied_index();
        let truncated = store.first_index_now() - 1;
        let in_log = applied - truncated;
        if in_log < self.cfg.log_compact_entries
            && self.applied_bytes_since_compact < self.cfg.log_compact_bytes
        {
            return Ok(());
        }
        let mut target = applied.saturating_sub(self.cfg.log_retain_entries);
        // A replica that misses a split gets the new region only by applying
        // the split entry from the log: keep it for a while.
        if self.last_split_index != 0
            && applied - self.last_split_index < self.cfg.log_compact_entries * 4
        {
            target = target.min(self.last_split_index - 1);
        }
        if self.is_leader() {
            // Keep what a follower still needs, unless it lags so far that a
            // snapshot is cheaper than the log.
            let slowest = self
                .raw
                .raft
                .prs()
                .iter()
                .map(|(_, pr)| pr.matched)
                .min()
                .unwrap_or(applied);
            let hard_limit = self.cfg.log_compact_entries * 4;
            if slowest < target && applied - slowest < hard_limit {
                target = slowest;
            }
        }
        if target <= truncated {
            return Ok(());
        }
        self.raw.mut_store().compact_to(target, &mut apply.inner)?;
        self.counters.compactions += 1;
        self.applied_bytes_since_compact = 0;
        Ok(())
    }

    /// Confirms that the log batch holding ready `number` is durable.
    pub fn on_persisted(&mut self, number: u64) {
        self.ready_persisted = self.ready_persisted.max(number);
        if self.removed {
            // Out of the region: raft-rs must not count this replica's
            // writes (a removed leader has no progress of its own, and
            // raft-rs panics looking for it); it is destroyed once its
            // writes are all durable.
            return;
        }
        self.raw.on_persist_ready(number);
        if let Some((n, index)) = self.snapshot_persisting {
            if n <= number {
                self.snapshot_persisting = None;
                self.range_persisted = true;
                self.raw.advance_apply_to(index);
            }
        }
    }
}
