//! All the region replicas one owner drives together (a node in the simulator,
//! a shard in the server), and the per-round batching of their output
//! (STYLE rule 2: begin → handle each region → end, one batch per round).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::Message;

use crate::apply::ApplyBatch;
use crate::cache::ReadCache;
use crate::command::{SessionTag, WriteRequest};
use crate::config::Config;
use crate::db::{Db, LogBatch};
use crate::error::{Error, Result};
use crate::peer::{list_regions, load_region_state, Peer, PendingPersist, ReadyOutput, Reply};
use crate::read::Consistency;
use crate::region::Region;
use crate::storage::RegionStorage;

/// Sums over the replicas of one owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaTotals {
    /// Replicas.
    pub regions: u64,
    /// Replicas that lead.
    pub leaders: u64,
    /// Sum of commit index - applied index.
    pub apply_lag: u64,
    /// Entries held in the raft logs.
    pub log_entries: u64,
    /// Reads waiting for a read index.
    pub reads_pending: u64,
    /// Proposals waiting for apply.
    pub proposals_pending: u64,
    /// Summed counters of every replica (monotonic while replicas stay).
    pub counters: crate::peer::PeerCounters,
}

/// A raft message addressed to a region replica on another node.
#[derive(Clone, Debug)]
pub struct RaftEnvelope {
    /// Region the message belongs to.
    pub region_id: u64,
    /// Node that sent it.
    pub from_node: u64,
    /// Node it goes to.
    pub to_node: u64,
    /// The raft message.
    pub message: Message,
    /// Not 0: not a raft message but a notice that the region, as of this
    /// `conf_ver`, no longer has replica `message.to` (see
    /// [`Replicas::step`]).
    pub removed_at: u64,
}

/// Output of one round over every replica.
#[derive(Default)]
pub struct Round {
    /// Raft log writes; must be durable before `persist` is confirmed.
    pub log: LogBatch,
    /// Applied data; write it (no sync needed) before sending `replies`.
    pub apply: ApplyBatch,
    /// Messages to send now.
    pub messages: Vec<RaftEnvelope>,
    /// Answers, to send once `apply` is written.
    pub replies: Vec<Reply>,
    /// Readies to confirm with [`Replicas::on_persisted`] once `log` is durable.
    pub persist: Vec<(u64, PendingPersist)>,
}

impl Round {
    /// True when the round produced nothing at all.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.apply.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.persist.is_empty()
    }
}

/// The region replicas of one owner.
pub struct Replicas {
    node_id: u64,
    peers: BTreeMap<u64, Peer>,
    cache: ReadCache,
    cfg: Arc<Config>,
    db: Db,
    seed: u64,
    logger: slog::Logger,
    /// Removal notices to send with the next round.
    notices: Vec<RaftEnvelope>,
}

/// Writes the initial state of every region in `regions` that has a replica
/// on `node_id` (a new cluster's bootstrap), synced.
pub fn bootstrap_regions(db: &Db, node_id: u64, regions: &[Region]) -> Result<()> {
    let mut batch = LogBatch::default();
    for r in regions.iter().filter(|r| r.peer_on_node(node_id).is_some()) {
        RegionStorage::bootstrap(r, db, &mut batch)?;
    }
    crate::db::write(db, batch.inner, true)
}

fn envelope(node_id: u64, peer: &Peer, message: Message) -> Option<RaftEnvelope> {
    let to_node = peer.region().peer(message.to)?.node_id;
    Some(RaftEnvelope {
        region_id: peer.region_id(),
        from_node: node_id,
        to_node,
        message,
        removed_at: 0,
    })
}

/// Adds to `batch` the removal of every record of the replica of `region`
/// on this node (data of its range, log, raft and apply state, sessions,
/// split records, change history, shard placement) and a tombstone that
/// keeps messages to any replica it had so far from recreating it.
pub fn destroy_replica(
    db: &Db,
    region: &Region,
    initialized: bool,
    batch: &mut rocksdb::WriteBatch,
) {
    use crate::keys::{self, CF_DATA, CF_HISTORY, CF_META, CF_RAFT};
    let id = region.id;
    if initialized {
        batch.delete_range_cf(
            crate::db::cf(db, CF_DATA),
            keys::data_range_start(region.start_hash),
            keys::data_range_end(region.end_hash),
        );
    }
    let raft = crate::db::cf(db, CF_RAFT);
    batch.delete_range_cf(
        raft,
        keys::raft_log_key(id, 0),
        keys::raft_log_key(id, u64::MAX),
    );
    batch.delete_cf(raft, keys::raft_log_key(id, u64::MAX));
    batch.delete_cf(raft, keys::hard_state_key(id));
    let meta = crate::db::cf(db, CF_META);
    for (lo, hi) in [
        (keys::session_key(id, 0), keys::session_key(id, u64::MAX)),
        (keys::split_key(id, 0), keys::split_key(id, u64::MAX)),
    ] {
        batch.delete_range_cf(meta, lo, hi);
        batch.delete_cf(meta, hi);
    }
    batch.delete_cf(meta, keys::apply_state_key(id));
    batch.delete_cf(meta, keys::placement_key(id));
    batch.delete_cf(meta, keys::origin_key(id));
    batch.delete_cf(meta, keys::region_state_key(id));
    batch.put_cf(
        meta,
        keys::tombstone_key(id),
        crate::membership::new_peer_id(region.epoch.conf_ver, crate::membership::NODE_ID_MAX)
            .to_be_bytes(),
    );
    let history = crate::db::cf(db, CF_HISTORY);
    batch.delete_range_cf(
        history,
        keys::history_key(id, 0),
        keys::history_key(id, u64::MAX),
    );
    batch.delete_cf(history, keys::history_key(id, u64::MAX));
    batch.delete_cf(history, keys::history_floor_key(id));
}

/// Destroys (synced) every stored replica of a region whose membership no
/// longer includes `node_id`: one that applied its own removal and stopped
/// before it was cleaned up. Returns the regions destroyed.
pub fn destroy_stale_replicas(db: &Db, node_id: u64) -> Result<Vec<u64>> {
    let mut batch = rocksdb::WriteBatch::default();
    let mut gone = Vec::new();
    for region in list_regions(db)? {
        if region.peer_on_node(node_id).is_none() {
            destroy_replica(db, &region, true, &mut batch);
            gone.push(region.id);
        }
    }
    if !gone.is_empty() {
        crate::db::write(db, batch, true)?;
    }
    Ok(gone)
}

/// The highest replica id of `region_id` destroyed on this node, if any.
fn tombstone(db: &Db, region_id: u64) -> Result<Option<u64>> {
    let v = db.get_cf(
        crate::db::cf(db, crate::keys::CF_META),
        crate::keys::tombstone_key(region_id),
    )?;
    Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes))
}

impl Replicas {
    /// Opens every replica stored in `db` for which `owns(region)` holds.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        seed: u64,
        logger: &slog::Logger,
        owns: impl Fn(&Region) -> bool,
    ) -> Result<Replicas> {
        let mut peers = BTreeMap::new();
        for region in list_regions(&db)? {
            if !owns(&region) || region.peer_on_node(node_id).is_none() {
                continue;
            }
            let peer = Peer::open(cfg.clone(), db.clone(), node_id, region.id, seed, logger)?;
            peers.insert(region.id, peer);
        }
        Ok(Replicas {
            node_id,
            peers,
            cache: ReadCache::new(cfg.read_cache_bytes),
            cfg,
            db,
            seed,
            logger: logger.clone(),
            notices: Vec::new(),
        })
    }

    /// Opens the replicas of regions split off this round; call once the
    /// round's apply batch is written. A new region whose parent's replica
    /// here leads campaigns at once, so it has a leader without waiting for
    /// an election timeout. Returns the new regions.
    pub fn open_splits(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        let mut opened = Vec::new();
        let parents: Vec<u64> = self.peers.keys().copied().collect();
        for parent in parents {
            let (splits, leads) = {
                let p = self.peers.get_mut(&parent).expect("listed");
                (p.take_splits(), p.is_leader())
            };
            for region in splits {
                let mut peer = Peer::open(
                    self.cfg.clone(),
                    self.db.clone(),
                    self.node_id,
                    region.id,
                    self.seed,
                    &self.logger,
                )?;
                if leads {
                    peer.campaign(replies)?;
                }
                self.peers.insert(region.id, peer);
                opened.push(region);
            }
        }
        Ok(opened)
    }

    /// Takes the replica of `region_id` out (it moves to another owner,
    /// which opens it from the database with [`Replicas::open_region`]).
    /// Its waiting requests are answered through `replies` as if it
    /// stopped: proposals `Timeout`, reads `RegionNotFound`. Call only once
    /// every log write of it is durable.
    pub fn take(&mut self, region_id: u64, replies: &mut Vec<Reply>) -> Option<Region> {
        let mut p = self.peers.remove(&region_id)?;
        p.fail_pending(replies);
        // The read cache may hold its keys: were the replica to come back,
        // they would be stale.
        self.cache.clear();
        Some(p.region().clone())
    }

    /// Opens the stored replica of `region_id` here (see [`Replicas::take`]);
    /// one that led where it was taken from takes the lead back at once.
    pub fn open_region(
        &mut self,
        region_id: u64,
        led: bool,
        replies: &mut Vec<Reply>,
    ) -> Result<Region> {
        if let Some(p) = self.peers.get(&region_id) {
            if p.is_initialized() {
                return Ok(p.region().clone());
            }
        }
        let peer = Peer::open(
            self.cfg.clone(),
            self.db.clone(),
            self.node_id,
            region_id,
            self.seed,
            &self.logger,
        )?;
        let region = peer.region().clone();
        self.peers.insert(region_id, peer);
        self.cache.clear();
        if led {
            let p = self.peers.get_mut(&region_id).expect("inserted");
            p.resume_leadership(replies)?;
        }
        Ok(region)
    }

    /// Node these replicas live on.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The replica of `region_id`.
    pub fn peer(&self, region_id: u64) -> Option<&Peer> {
        self.peers.get(&region_id)
    }

    /// The replica of `region_id`, mutable.
    pub fn peer_mut(&mut self, region_id: u64) -> Option<&mut Peer> {
        self.peers.get_mut(&region_id)
    }

    /// Every replica.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Ticks every replica.
    pub fn tick(&mut self, now_ms: u64, replies: &mut Vec<Reply>) {
        for p in self.peers.values_mut() {
            p.tick(now_ms, replies);
        }
    }

    /// Runs the expiry sweep of every replica this node leads (each at its
    /// own pace, see [`Peer::sweep_expired`]); returns the keys proposed.
    pub fn sweep_expired(&mut self, wall_ms: u64) -> Result<usize> {
        let mut n = 0;
        for p in self.peers.values_mut() {
            n += p.sweep_expired(wall_ms)?;
        }
        Ok(n)
    }

    /// Delivers a raft message to its replica.
    ///
    /// A message for a region not here, from its leader (append, heartbeat
    /// or snapshot), creates the replica a membership change added here
    /// (unless it was destroyed here already); others are dropped. A
    /// message from a replica the region no longer has is answered with a
    /// removal notice, and a notice marks this replica removed if it is
    /// from a newer membership (the owner then destroys it).
    pub fn step(&mut self, env: RaftEnvelope, replies: &mut Vec<Reply>) -> Result<()> {
        use raft::eraftpb::MessageType::{MsgAppend, MsgHeartbeat, MsgSnapshot};
        if env.removed_at != 0 {
            if let Some(p) = self.peers.get_mut(&env.region_id) {
                if p.peer_id() == env.message.to && p.is_initialized() {
                    p.mark_removed(env.removed_at);
                }
            }
            return Ok(());
        }
        let uninitialized = self
            .peers
            .get(&env.region_id)
            .is_none_or(|p| !p.is_initialized());
        if uninitialized && self.overlaps_local(&env) {
            return Ok(());
        }
        if let Some(p) = self.peers.get_mut(&env.region_id) {
            let from = env.message.from;
            if p.is_initialized() && from != 0 && p.region().peer(from).is_none() {
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
                });
                return Ok(());
            }
            return p.step(env.message, replies);
        }
        let from_leader = matches!(
            env.message.get_msg_type(),
            MsgAppend | MsgHeartbeat | MsgSnapshot
        );
        let to = env.message.to;
        if !from_leader || to == 0 || tombstone(&self.db, env.region_id)?.is_some_and(|t| to <= t) {
            return Ok(());
        }
        // A replica stored on this node but not opened here (it is moving
        // between shards) is never shadowed by a new one.
        if load_region_state(&self.db, env.region_id)?.is_some() {
            return Ok(());
        }
        let leader = crate::region::PeerMeta {
            id: env.message.from,
            node_id: env.from_node,
            role: crate::region::PeerRole::Voter,
        };
        let mut peer = Peer::create(
            self.cfg.clone(),
            self.db.clone(),
            self.node_id,
            (env.region_id, to),
            leader,
            self.seed,
            &self.logger,
        )?;
        peer.step(env.message, replies)?;
        self.peers.insert(env.region_id, peer);
        Ok(())
    }

    /// True when `env` is a snapshot whose range overlaps another region
    /// this node holds. A replica that has not applied a split yet still
    /// covers the new region's range; installing the new region's snapshot
    /// first would let the old region's later entries overwrite newer data
    /// there, so it waits (the leader sends the snapshot again) until the
    /// split is applied here or this node's replica is replaced by a
    /// snapshot of its own.
    fn overlaps_local(&self, env: &RaftEnvelope) -> bool {
        if env.message.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
            return false;
        }
        let Ok(incoming) =
            crate::snapshot::SnapshotData::region_of(&env.message.get_snapshot().data)
        else {
            return true;
        };
        self.peers.values().any(|p| {
            p.is_initialized() && p.region_id() != incoming.id && p.region().overlaps(&incoming)
        })
    }

    /// Destroys the replicas that learnt they were removed; call once the
    /// round's apply batch is written. A replica with a raft log write
    /// still on its way (`log_busy`) waits for a later round: that write
    /// landing after the destruction would leave a hard state behind for a
    /// later replica of the region here to trip on. Their pending requests
    /// fail with `RegionNotFound`. Returns the regions destroyed.
    pub fn destroy_removed(
        &mut self,
        replies: &mut Vec<Reply>,
        log_busy: impl Fn(u64) -> bool,
    ) -> Result<Vec<Region>> {
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(id, p)| p.is_removed() && !log_busy(**id))
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut out = Vec::new();
        for id in gone {
            let mut p = self.peers.remove(&id).expect("listed");
            destroy_replica(&self.db, p.region(), p.is_initialized(), &mut batch);
            p.fail_pending(replies);
            out.push(p.region().clone());
        }
        crate::db::write(&self.db, batch, true)?;
        self.cache.clear();
        Ok(out)
    }

    /// True (once) when a replica's range or members changed since the
    /// last call (snapshot, membership change, destroyed replica).
    pub fn take_layout_changed(&mut self) -> bool {
        let mut changed = false;
        for p in self.peers.values_mut() {
            changed |= p.take_layout_changed();
        }
        changed
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

    /// Queues a read on `region_id`.
    pub fn read(
        &mut self,
        region_id: u64,
        id: u64,
        key: Bytes,
        consistency: Consistency,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.read(id, key, consistency, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Collects the output of every replica into one round.
    pub fn collect(&mut self, round: &mut Round) -> Result<()> {
        let mut out = ReadyOutput::default();
        for (region_id, p) in self.peers.iter_mut() {
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
    /// were waiting for it.
    pub fn on_persisted(
        &mut self,
        persist: Vec<(u64, PendingPersist)>,
        messages: &mut Vec<RaftEnvelope>,
    ) {
        for (region_id, pending) in persist {
            let Some(p) = self.peers.get_mut(&region_id) else {
                continue;
            };
            p.on_persisted(pending.number);
            for m in pending.messages {
                messages.extend(envelope(self.node_id, p, m));
            }
        }
    }

    /// Serves every read whose index is applied.
    pub fn serve_reads(&mut self, wall_ms: u64, replies: &mut Vec<Reply>) -> Result<()> {
        for p in self.peers.values_mut() {
            p.serve_reads(wall_ms, &mut self.cache, replies)?;
        }
        Ok(())
    }

    /// Totals over every replica, for metrics.
    pub fn totals(&self) -> ReplicaTotals {
        let mut t = ReplicaTotals::default();
        for p in self.peers.values() {
            let s = p.status();
            t.regions += 1;
            if p.is_leader() {
                t.leaders += 1;
            }
            t.apply_lag += s.commit_index.saturating_sub(s.applied_index);
            t.log_entries += (s.last_index + 1).saturating_sub(s.first_index);
            t.reads_pending += p.reads_pending() as u64;
            t.proposals_pending += p.proposals_pending() as u64;
            let c = p.counters();
            t.counters.proposals += c.proposals;
            t.counters.campaigns += c.campaigns;
            t.counters.became_leader += c.became_leader;
            t.counters.leader_changes += c.leader_changes;
            t.counters.read_index_rounds += c.read_index_rounds;
            t.counters.compactions += c.compactions;
            t.counters.snapshots_sent += c.snapshots_sent;
            t.counters.snapshots_applied += c.snapshots_applied;
            t.counters.entries_applied += c.entries_applied;
            t.counters.expired_keys += c.expired_keys;
            t.counters.expire_proposals += c.expire_proposals;
        }
        t
    }

    /// The read cache's counters and size: (hits, misses, entries, bytes).
    pub fn cache_stats(&self) -> (u64, u64, usize, usize) {
        let s = self.cache.stats;
        (s.hits, s.misses, self.cache.len(), self.cache.bytes())
    }

    /// Drops every replica (the owner stopped).
    pub fn close(&mut self) {
        self.peers.clear();
    }

    /// True if any replica has output waiting.
    pub fn has_ready(&self) -> bool {
        self.peers.values().any(|p| p.has_ready())
    }
}
