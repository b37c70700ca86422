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
use crate::directory::{Directory, Span};
use crate::error::{Error, Result};
use crate::peer::{list_regions, load_region_state, Peer, PendingPersist, ReadyOutput, Reply};
use crate::read::Consistency;
use crate::region::{Epoch, Region};
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
    /// The region's epoch at the sender: a replica that has not applied a
    /// membership change yet still listens to a sender that has.
    pub epoch: Epoch,
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
    /// This owner's number among the node's owners (its shard).
    owner: usize,
    /// The node's directory of replicas, shared by every owner.
    directory: Directory,
    peers: BTreeMap<u64, Peer>,
    cache: ReadCache,
    cfg: Arc<Config>,
    db: Db,
    seed: u64,
    logger: slog::Logger,
    /// Removal notices to send with the next round.
    notices: Vec<RaftEnvelope>,
    /// Stored replicas to open here (and whether the replica led where it
    /// came from), each once the replica it replaces has no log write in
    /// flight. Messages to them wait (are dropped) meanwhile.
    opening: Vec<(u64, bool)>,
    /// A replica was opened since the last [`Replicas::take_layout_changed`].
    opened: bool,
}

/// Where an owner is and what it shares with the other owners of its node.
#[derive(Clone)]
pub struct Owner {
    /// Node id.
    pub node_id: u64,
    /// This owner's number among the node's owners (its shard).
    pub index: usize,
    /// The node's directory of replicas.
    pub directory: Directory,
}

/// A region split off here that another owner of the node opens: it holds
/// the region's replica already (created by the new region's messages
/// before the split was applied here).
#[derive(Clone, Debug)]
pub struct SplitElsewhere {
    /// The new region.
    pub region: Region,
    /// The owner to open it.
    pub owner: usize,
    /// Whether the parent's replica here leads (the new one should campaign).
    pub led: bool,
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
    let to_node = peer.node_of(message.to)?;
    Some(RaftEnvelope {
        region_id: peer.region_id(),
        from_node: node_id,
        to_node,
        message,
        removed_at: 0,
        epoch: peer.region().epoch,
    })
}

/// The range of a snapshot message's region, if it decodes.
fn snapshot_span(env: &RaftEnvelope) -> Option<Span> {
    crate::snapshot::SnapshotData::region_of(&env.message.get_snapshot().data)
        .ok()
        .map(|r| Span::of(&r))
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
    batch.delete_cf(meta, keys::check_key(id));
    batch.delete_cf(meta, keys::region_state_key(id));
    batch.put_cf(
        meta,
        keys::tombstone_key(id),
        crate::ids::last_peer_id(region.epoch.conf_ver).to_be_bytes(),
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

/// Admits the range of a snapshot message in the node's directory (see
/// [`Replicas::step`]); false if another replica of the node covers part
/// of it, or the snapshot does not decode.
fn admit(directory: &Directory, env: &RaftEnvelope) -> bool {
    let Some(span) = snapshot_span(env) else {
        return false;
    };
    directory.admit(env.region_id, span).is_ok()
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
    /// Opens every replica stored in `db` for which `owns(region)` holds, as
    /// owner `owner.index` of node `owner.node_id`.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        owner: Owner,
        seed: u64,
        logger: &slog::Logger,
        owns: impl Fn(&Region) -> bool,
    ) -> Result<Replicas> {
        let node_id = owner.node_id;
        let mut peers = BTreeMap::new();
        for region in list_regions(&db)? {
            if !owns(&region) || region.peer_on_node(node_id).is_none() {
                continue;
            }
            if let Err(c) = owner.directory.open(&region, owner.index) {
                return Err(Error::Corruption(format!(
                    "region {} opened by owners {} and {} of node {node_id}",
                    region.id, c.owner, owner.index
                )));
            }
            let peer = Peer::open(cfg.clone(), db.clone(), node_id, region.id, seed, logger)?;
            peers.insert(region.id, peer);
        }
        Ok(Replicas {
            node_id,
            owner: owner.index,
            directory: owner.directory,
            peers,
            cache: ReadCache::new(cfg.read_cache_bytes),
            cfg,
            db,
            seed,
            logger: logger.clone(),
            notices: Vec::new(),
            opening: Vec::new(),
            opened: false,
        })
    }

    /// Call once the round's apply batch is written. Ranges that applied
    /// splits shrank are shrunk in the directory too (the write is in
    /// RocksDB); the replicas of regions split off this round open here
    /// (a new region whose parent's replica here leads campaigns at once,
    /// so it has a leader without waiting for an election timeout), or, if
    /// another owner of the node holds the region already, are returned
    /// for that owner to open. Returns the regions opened here and those
    /// to open elsewhere.
    pub fn open_splits(
        &mut self,
        replies: &mut Vec<Reply>,
    ) -> Result<(Vec<Region>, Vec<SplitElsewhere>)> {
        let mut splits = Vec::new();
        for p in self.peers.values_mut() {
            if p.take_range_applied() {
                self.directory
                    .set_range(p.region_id(), Some(Span::of(p.region())));
            }
            let taken = p.take_splits();
            if !taken.is_empty() {
                splits.push((taken, p.is_leader()));
            }
        }
        let mut elsewhere = Vec::new();
        for (regions, leads) in splits {
            for region in regions {
                // Its data is on disk now: the range is the new region's,
                // whoever opens it.
                let owner = self.directory.split_off(&region, self.owner);
                if owner != self.owner {
                    elsewhere.push(SplitElsewhere {
                        region,
                        owner,
                        led: leads,
                    });
                } else if !self.opening.iter().any(|(r, _)| *r == region.id) {
                    self.opening.push((region.id, leads));
                }
            }
        }
        let opened = self.open_waiting(replies)?;
        Ok((opened, elsewhere))
    }

    /// Takes the replica of `region_id` out: it moves to owner `to` of this
    /// node, which opens it from the database with
    /// [`Replicas::open_region`]. Its waiting requests are answered through
    /// `replies` as if it stopped: proposals `Timeout`, reads
    /// `RegionNotFound`. Refused (`None`) while a log write of it is in
    /// flight: call again in a later round.
    pub fn take(&mut self, region_id: u64, to: usize, replies: &mut Vec<Reply>) -> Option<Region> {
        if self.peers.get(&region_id)?.has_unpersisted() {
            return None;
        }
        let mut p = self.peers.remove(&region_id)?;
        p.fail_pending(replies);
        self.directory.hand_over(region_id, to);
        // The read cache may hold its keys: were the replica to come back,
        // they would be stale.
        self.cache.clear();
        Some(p.region().clone())
    }

    /// Opens the stored replica of `region_id` here (see [`Replicas::take`],
    /// [`SplitElsewhere`]): at once, or, where a replica of the region this
    /// owner created (waiting for its first snapshot) still has a log write
    /// in flight, in the first round after that write is durable
    /// ([`Replicas::open_waiting`]). One that led where it came from takes
    /// the lead at once. Returns the regions opened now.
    pub fn open_region(
        &mut self,
        region_id: u64,
        led: bool,
        replies: &mut Vec<Reply>,
    ) -> Result<Vec<Region>> {
        if !self.opening.iter().any(|(r, _)| *r == region_id) {
            self.opening.push((region_id, led));
        }
        self.open_waiting(replies)
    }

    /// Opens the stored replicas waiting to be opened whose predecessor
    /// here has no log write in flight any more; call every round (cheap
    /// when none waits). A replica of the region that waited for its first
    /// snapshot is replaced: the stored one has its raft state, vote
    /// included, once that replica's writes landed.
    pub fn open_waiting(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        if self.opening.is_empty() {
            return Ok(Vec::new());
        }
        let mut opened = Vec::new();
        let waiting = std::mem::take(&mut self.opening);
        for (region_id, led) in waiting {
            if let Some(p) = self.peers.get(&region_id) {
                if p.is_initialized() {
                    // Opened already (it came by snapshot).
                    continue;
                }
                if p.has_unpersisted() {
                    self.opening.push((region_id, led));
                    continue;
                }
            }
            if let Some(mut old) = self.peers.remove(&region_id) {
                old.fail_pending(replies);
            }
            let mut peer = Peer::open(
                self.cfg.clone(),
                self.db.clone(),
                self.node_id,
                region_id,
                self.seed,
                &self.logger,
            )?;
            if let Err(c) = self.directory.open(peer.region(), self.owner) {
                return Err(Error::Corruption(format!(
                    "region {region_id} opened by owner {} while owner {} holds it",
                    self.owner, c.owner
                )));
            }
            if led {
                peer.resume_leadership(replies)?;
            }
            opened.push(peer.region().clone());
            self.peers.insert(region_id, peer);
            self.cache.clear();
            self.opened = true;
        }
        Ok(opened)
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

    /// Destroys the replicas that learnt they were removed; call once the
    /// round's apply batch is written. A replica with a raft log write
    /// still on its way waits for a later round: that write landing after
    /// the destruction would leave a hard state behind for a later replica
    /// of the region here to trip on. Their pending requests fail with
    /// `RegionNotFound`. Returns the regions destroyed.
    pub fn destroy_removed(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_removed() && !p.has_unpersisted())
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut out = Vec::new();
        for id in &gone {
            let mut p = self.peers.remove(id).expect("listed");
            destroy_replica(&self.db, p.region(), p.is_initialized(), &mut batch);
            p.fail_pending(replies);
            out.push(p.region().clone());
        }
        crate::db::write(&self.db, batch, true)?;
        for id in gone {
            self.directory.remove(id);
        }
        self.cache.clear();
        Ok(out)
    }

    /// True (once) when a replica's range or members changed since the
    /// last call (snapshot, membership change, destroyed replica), or a
    /// stored replica was opened here.
    pub fn take_layout_changed(&mut self) -> bool {
        let mut changed = std::mem::take(&mut self.opened);
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
            t.counters.digest_checks += c.digest_checks;
            t.counters.digest_mismatches += c.digest_mismatches;
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
