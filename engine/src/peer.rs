//! One region replica: raft-rs `RawNode` plus the state machine, pending
//! proposals and pending reads. No I/O of its own (STYLE rule 1): it takes
//! events (ticks, messages, proposals, reads) and hands back what must be
//! written, sent and answered.
//!
//! Protocol with the caller, per round (see `docs/architecture.md`):
//! 1. feed events: [`Peer::tick`], [`Peer::step`], [`Peer::propose`], [`Peer::read`];
//! 2. [`Peer::handle_ready`]: log writes go into the shared [`LogBatch`], applied
//!    data into the shared [`ApplyBatch`]; messages that may leave now and
//!    replies are returned in [`ReadyOutput`], messages that must wait for the
//!    log to be durable come back with the ready number;
//! 3. the caller writes the apply batch (no sync), then sends the replies;
//! 4. once the log batch is synced: [`Peer::on_persisted`] with that number,
//!    then send the held-back messages;
//! 5. [`Peer::serve_reads`] answers the reads whose read index is applied.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Message};
use raft::{RawNode, StateRole};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::admin::{self, AdminCommand};
use crate::apply::{self, ApplyBatch};
use crate::cache::ReadCache;
use crate::command::{Command, SessionTag, WriteOutcome, WriteRequest};
use crate::config::Config;
use crate::db::{cf, Db, LogBatch};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::expire::{self, ExpireCommand, SweepCursor};
use crate::hash::route_hash;
use crate::keys::{self, CF_META};
use crate::membership::{self, PeerChange};
use crate::read::{Consistency, PendingRead, ReadQueue};
use crate::region::Region;
use crate::session::{ClientSession, Dedup, SessionTable};
use crate::state::{PeerState, RegionLocalState};
use crate::watch;

/// Read index contexts of follower reads start above this (leader reads and
/// lease renewals count up from 0).
const FOLLOWER_CTX_BASE: u64 = 1 << 62;
use crate::storage::RegionStorage;
use crate::value::ValueRecord;

/// What a request was answered with.
#[derive(Debug)]
pub enum Response {
    /// A write was applied (or its condition failed).
    Write(WriteOutcome),
    /// The value read (`None` = no live value).
    Value(Option<ValueRecord>),
}

/// The answer to request `id`.
#[derive(Debug)]
pub struct Reply {
    /// Caller's request id.
    pub id: u64,
    /// Outcome.
    pub result: Result<Response>,
}

/// What one ready produced for the caller.
#[derive(Default)]
pub struct ReadyOutput {
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Answers to send once the apply batch is written.
    pub replies: Vec<Reply>,
}

/// A ready whose log writes are in a batch not yet durable.
pub struct PendingPersist {
    /// Ready number to pass to [`Peer::on_persisted`].
    pub number: u64,
    /// The replica it belongs to ([`Peer::instance`]): a replica opened
    /// again in its place is never told of its predecessor's writes.
    pub instance: u64,
    /// Messages to send only after the batch is durable.
    pub messages: Vec<Message>,
}

/// Source of [`Peer::instance`] numbers, unique in the process.
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Peers a replica heard from that its region metadata does not list (yet):
/// a leader of a newer membership, a candidate of a region it has no data
/// of. Kept so that answers reach them; bounded.
const LEARNED_PEERS_MAX: usize = 8;

#[derive(Debug)]
struct Proposal {
    id: u64,
    index: u64,
    term: u64,
    deadline_ms: u64,
}

/// Monotonic counters of one replica, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Proposals handed to raft.
    pub proposals: u64,
    /// Times this replica started an election (pre-vote or vote).
    pub campaigns: u64,
    /// Times this replica became leader.
    pub became_leader: u64,
    /// Times the leader it knows of changed.
    pub leader_changes: u64,
    /// Read index rounds issued.
    pub read_index_rounds: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Snapshots sent to followers.
    pub snapshots_sent: u64,
    /// Snapshots received and installed.
    pub snapshots_applied: u64,
    /// Entries applied.
    pub entries_applied: u64,
    /// Expired keys this replica removed (expiry entries applied).
    pub expired_keys: u64,
    /// Expiry entries this replica proposed as leader.
    pub expire_proposals: u64,
    /// Sweep steps this replica ran as leader.
    pub expire_sweeps: u64,
    /// Consistency checks this replica verified (its digest against the
    /// leader's).
    pub digest_checks: u64,
    /// Of those, checks whose digests differed.
    pub digest_mismatches: u64,
}

/// The outcome of a consistency check on one replica: its digest at the
/// check's index against the leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckVerdict {
    /// Index of the `ComputeDigest` entry.
    pub index: u64,
    /// The leader's digest there.
    pub leader: crate::digest::Digest,
    /// This replica's digest there; `None` if it did not compute one (it
    /// reached that index by snapshot, or restarted in between).
    pub own: Option<crate::digest::Digest>,
}

/// A replica's consistency check state as stored: its last digest and its
/// last verdict (so neither is lost when the replica is opened again, on a
/// restart or a move to another shard).
fn encode_check(digest: Option<(u64, Digest)>, check: Option<CheckVerdict>) -> Vec<u8> {
    let mut e = crate::codec::Encoder::with_capacity(96);
    let put = |e: &mut crate::codec::Encoder, d: &Digest| {
        e.u64(d.keys).u64(d.bytes).u64(d.hash);
    };
    e.u8(1);
    match digest {
        Some((index, d)) => {
            e.u8(1).u64(index);
            put(&mut e, &d);
        }
        None => {
            e.u8(0);
        }
    }
    match check {
        Some(c) => {
            e.u8(1).u64(c.index);
            put(&mut e, &c.leader);
            match c.own {
                Some(d) => {
                    e.u8(1);
                    put(&mut e, &d);
                }
                None => {
                    e.u8(0);
                }
            }
        }
        None => {
            e.u8(0);
        }
    }
    e.finish()
}

type StoredCheck = (Option<(u64, Digest)>, Option<CheckVerdict>);

fn decode_check(buf: &[u8]) -> Result<StoredCheck> {
    let mut d = crate::codec::Decoder::new(buf, "consistency check");
    d.version(1)?;
    let digest = |d: &mut crate::codec::Decoder<'_>| -> Result<Digest> {
        Ok(Digest {
            keys: d.u64()?,
            bytes: d.u64()?,
            hash: d.u64()?,
        })
    };
    let own_digest = match d.u8()? {
        0 => None,
        _ => Some((d.u64()?, digest(&mut d)?)),
    };
    let check = match d.u8()? {
        0 => None,
        _ => {
            let index = d.u64()?;
            let leader = digest(&mut d)?;
            let own = match d.u8()? {
                0 => None,
                _ => Some(digest(&mut d)?),
            };
            Some(CheckVerdict { index, leader, own })
        }
    };
    d.finish()?;
    Ok((own_digest, check))
}

impl CheckVerdict {
    /// `match`, `mismatch` or `skipped`.
    pub fn verdict(&self) -> &'static str {
        match self.own {
            Some(d) if d == self.leader => "match",
            Some(_) => "mismatch",
            None => "skipped",
        }
    }
}

/// A snapshot of a peer's raft state, for tests and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Region id.
    pub region_id: u64,
    /// This replica's raft id.
    pub peer_id: u64,
    /// Role.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// Leader's raft id (0 = unknown).
    pub leader_id: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
}

/// What a proposal puts in the log.
enum EntryData {
    Normal(Vec<u8>),
    ConfChange(ConfChangeV2),
}

/// One region replica.
pub struct Peer {
    cfg: Arc<Config>,
    node_id: u64,
    peer_id: u64,
    region: Region,
    raw: RawNode<RegionStorage>,
    proposals: VecDeque<Proposal>,
    reads: ReadQueue,
    /// Follower reads waiting for the leader's read index, then for apply.
    follower_reads: ReadQueue,
    stale_reads: Vec<PendingRead>,
    sweep: SweepCursor,
    next_sweep_tick: u64,
    /// The region may hold keys with an expiry: set at start, by TTL writes
    /// and snapshots; cleared by a full sweep pass that saw none.
    sweep_needed: bool,
    /// A TTL write was applied since the current sweep pass began.
    ttl_since_pass_start: bool,
    /// The current pass saw a record with an expiry.
    ttl_seen_in_pass: bool,
    lease_until_ms: u64,
    lease_wanted: bool,
    /// No lease is used, renewed or extended in this raft term (0: none): a
    /// leader transfer was pending in it. A transferee elected by
    /// `TimeoutNow` gets votes from followers inside their lease, and a
    /// `TimeoutNow` may arrive long after the transfer was given up (only
    /// its term bounds it), so a lease held in a term with a transfer
    /// proves nothing. The next term this replica leads has a lease again.
    lease_blocked_term: u64,
    /// The latest leader time this replica proposed (a write or a clock
    /// entry), unix ms.
    clock_proposed_ms: u64,

    rng: SmallRng,
    role_term: (StateRole, u64),
    now_ms: u64,
    ticks: u64,
    applied_bytes_since_compact: u64,
    /// Ready number and index of a snapshot being persisted.
    snapshot_persisting: Option<(u64, u64)>,
    counters: PeerCounters,
    leader_seen: u64,
    sessions: SessionTable,
    /// Watchers can resume from this version on (see `watch`).
    history_floor: u64,
    /// Regions split off and not yet opened by the owner.
    splits: Vec<Region>,
    /// Index of the last split applied since start (0 = none).
    last_split_index: u64,
    /// Splits of this region: (epoch version after it, log index).
    split_log: Vec<SplitRecord>,
    /// False until a replica created for a membership change has its first
    /// snapshot: it owns no range yet.
    initialized: bool,
    /// The region's replicas or range changed here since the owner last
    /// looked ([`Peer::take_layout_changed`]).
    layout_changed: bool,
    /// This replica is no longer a member: the owner destroys it.
    removed: bool,
    /// Unique number of this replica object (see [`PendingPersist`]).
    instance: u64,
    /// Number of the last ready taken, and of the last one durable.
    ready_taken: u64,
    ready_persisted: u64,
    /// (peer id, node id) of peers not in `region.peers` that sent
    /// messages this replica took.
    learned: Vec<(u64, u64)>,
    /// The range changed by an applied entry (a split) since the owner last
    /// looked ([`Peer::take_range_applied`]).
    range_applied: bool,
    /// A snapshot's range became durable since the owner last looked
    /// ([`Peer::take_range_persisted`]).
    range_persisted: bool,
    /// The digest this replica computed at the last `ComputeDigest` entry
    /// it applied: (index, digest).
    digest: Option<(u64, crate::digest::Digest)>,
    /// A digest this replica computed as leader, to propose for
    /// verification.
    digest_to_verify: Option<(u64, crate::digest::Digest)>,
    /// The last consistency check this replica verified.
    check: Option<CheckVerdict>,
    /// As leader, when to start the next scheduled consistency check
    /// (monotonic ms; see `Config::consistency_check_interval_ms`).
    next_check_ms: u64,
    logger: slog::Logger,
}

fn raft_config(cfg: &Config, peer_id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id: peer_id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        min_election_tick: cfg.election_tick,
        max_election_tick: cfg.election_tick_max,
        applied,
        max_size_per_msg: cfg.msg_bytes_max,
        max_inflight_msgs: cfg.inflight_msgs_max,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        // raft-rs 0.7 may merge fresh entries into a pending empty append
        // after a probe reset, producing an append whose entries do not follow
        // its index; keep every append message as raft built it.
        batch_append: false,
        max_uncommitted_size: cfg.uncommitted_bytes_max,
        max_committed_size_per_ready: cfg.committed_bytes_per_ready_max,
        ..Default::default()
    }
}

/// Loads the local state (metadata) of `region_id`, if this node has it.
pub fn load_region_state(db: &Db, region_id: u64) -> Result<Option<RegionLocalState>> {
    match db.get_cf(cf(db, CF_META), keys::region_state_key(region_id))? {
        Some(b) => Ok(Some(RegionLocalState::decode(&b)?)),
        None => Ok(None),
    }
}

/// The session table of `region_id` as stored.
pub fn load_sessions(db: &Db, region_id: u64) -> Result<SessionTable> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::session_key(region_id, u64::MAX).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_META), opts);
    it.seek(keys::session_key(region_id, 0));
    let mut clients = std::collections::BTreeMap::new();
    while it.valid() {
        if let Some(client) = keys::session_client(region_id, it.key().unwrap()) {
            clients.insert(client, ClientSession::decode(it.value().unwrap())?);
        }
        it.next();
    }
    it.status()?;
    // The upper bound is exclusive: the largest client id is read directly.
    if let Some(v) = db.get_cf(cf(db, CF_META), keys::session_key(region_id, u64::MAX))? {
        clients.insert(u64::MAX, ClientSession::decode(&v)?);
    }
    Ok(SessionTable::from_clients(clients))
}

/// One split of a region: (epoch version it made, log index, first hash
/// moved out; `None` in records written before the hash was kept).
type SplitRecord = (u64, u64, Option<u64>);

/// Loads the split records of `region_id`, in epoch order.
fn load_splits(db: &Db, region_id: u64) -> Result<Vec<SplitRecord>> {
    let meta = cf(db, CF_META);
    let mut it = db.raw_iterator_cf(meta);
    it.seek(keys::split_key(region_id, 0));
    let mut out = Vec::new();
    while it.valid() {
        let Some(version) = keys::split_version(region_id, it.key().unwrap()) else {
            break;
        };
        let v = it.value().unwrap();
        let num = |b: &[u8]| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes);
        let record = match v.len() {
            8 => num(v).map(|index| (version, index, None)),
            16 => num(&v[..8])
                .zip(num(&v[8..]))
                .map(|(i, h)| (version, i, Some(h))),
            _ => None,
        };
        let record = record
            .ok_or_else(|| Error::Corruption(format!("split record of region {region_id}")))?;
        out.push(record);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Every region replica stored on this node (tombstones excluded).
pub fn list_regions(db: &Db) -> Result<Vec<Region>> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::region_state_end().to_vec());
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_META), opts);
    it.seek(keys::region_state_key(0));
    let mut out = Vec::new();
    while it.valid() {
        let s = RegionLocalState::decode(it.value().unwrap())?;
        if s.state == PeerState::Normal {
            out.push(s.region);
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

impl Peer {
    /// Opens the replica of `region_id` stored on node `node_id`.
    /// `seed` makes its election timeouts reproducible.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        region_id: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let local = load_region_state(&db, region_id)?.ok_or(Error::RegionNotFound(region_id))?;
        let region = local.region;
        let peer_id = region
            .peer_on_node(node_id)
            .ok_or_else(|| {
                Error::Corruption(format!(
                    "region {region_id} has no replica on node {node_id}"
                ))
            })?
            .id;
        Peer::start(cfg, db, node_id, region, peer_id, seed, logger)
    }

    /// A replica `peer_id` of `region_id` that a membership change or a
    /// split added to this node: empty and owning no range until the leader
    /// sends it a snapshot (or this node applies the split). `known` is the
    /// one other replica it knows of (the sender of the message that
    /// created it). Nothing is stored for it before that snapshot but its
    /// raft hard state (a vote it gives must survive a restart).
    pub fn create(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        (region_id, peer_id): (u64, u64),
        known: crate::region::PeerMeta,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let region = Region {
            id: region_id,
            start_hash: 0,
            end_hash: 0,
            epoch: crate::region::Epoch::default(),
            peers: vec![
                crate::region::PeerMeta {
                    id: peer_id,
                    node_id,
                    role: crate::region::PeerRole::Learner,
                },
                known,
            ],
        };
        let mut p = Peer::start(cfg, db, node_id, region, peer_id, seed, logger)?;
        p.initialized = false;
        Ok(p)
    }

    fn start(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        region: Region,
        peer_id: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let region_id = region.id;
        let sessions = load_sessions(&db, region_id)?;
        let storage = RegionStorage::open(db.clone(), region_id, cfg.entry_cache_entries)?;
        let applied = storage.applied_index();
        let history_floor = match watch::floor(&db, region_id)? {
            Some(f) => f,
            None => {
                // No history yet: it starts at what is applied now.
                let mut b = rocksdb::WriteBatch::default();
                watch::set_floor(&db, &mut b, region_id, applied);
                crate::db::write(&db, b, false)?;
                applied
            }
        };
        let stored_check = match db.get_cf(cf(&db, CF_META), keys::check_key(region_id))? {
            Some(b) => decode_check(&b)?,
            None => (None, None),
        };
        let rc = raft_config(&cfg, peer_id, applied);
        rc.validate()?;
        let logger = logger.new(slog::o!("region" => region_id, "peer" => peer_id));
        let mut raw = RawNode::new(&rc, storage, &logger)?;
        let mut rng = SmallRng::seed_from_u64(seed ^ region_id.rotate_left(32) ^ node_id);
        let timeout = rng.gen_range(cfg.election_tick..cfg.election_tick_max);
        raw.raft.set_randomized_election_timeout(timeout);
        let role_term = (raw.raft.state, raw.raft.term);
        Ok(Peer {
            cfg,
            node_id,
            peer_id,
            region,
            raw,
            proposals: VecDeque::new(),
            reads: ReadQueue::default(),
            // Contexts unique per replica: the leader keeps requests in
            // flight by context, and every follower asks the same leader.
            follower_reads: ReadQueue::with_ctx_base(
                FOLLOWER_CTX_BASE | ((peer_id & 0xf_ffff) << 40),
            ),
            stale_reads: Vec::new(),
            sweep: SweepCursor::default(),
            next_sweep_tick: 0,
            sweep_needed: true,
            ttl_since_pass_start: false,
            ttl_seen_in_pass: false,
            lease_until_ms: 0,
            lease_wanted: false,
            lease_blocked_term: 0,
            clock_proposed_ms: 0,
            rng,
            role_term,
            now_ms: 0,
            ticks: 0,
            applied_bytes_since_compact: 0,
            snapshot_persisting: None,
            sessions,
            counters: PeerCounters::default(),
            leader_seen: 0,
            history_floor,
            splits: Vec::new(),
            last_split_index: 0,
            split_log: load_splits(&db, region_id)?,
            initialized: true,
            layout_changed: false,
            removed: false,
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ready_taken: 0,
            ready_persisted: 0,
            learned: Vec::new(),
            range_applied: false,
            range_persisted: false,
            digest: stored_check.0,
            digest_to_verify: None,
            check: stored_check.1,
            next_check_ms: 0,
            logger,
        })
    }

    /// The raft term and vote in memory.
    pub fn term_and_vote(&self) -> (u64, u64) {
        (self.raw.raft.term, self.raw.raft.vote)
    }

    /// Unique number of this replica object in the process.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// True while a ready this replica handed out is not durable yet: its
    /// log writes (a vote, entries, a snapshot) are still on their way.
    pub fn has_unpersisted(&self) -> bool {
        self.ready_taken > self.ready_persisted
    }

    /// True when raft took a snapshot that the owner has not collected yet.
    pub fn snapshot_pending(&self) -> bool {
        self.raw.raft.raft_log.unstable.snapshot.is_some()
    }

    /// True while a snapshot is being installed (collected, not durable).
    pub fn snapshot_persisting(&self) -> bool {
        self.snapshot_persisting.is_some()
    }

    /// Remembers that raft peer `peer_id` lives on `node_id` although the
    /// region's metadata here does not list it (see `LEARNED_PEERS_MAX`).
    pub fn learn_peer(&mut self, peer_id: u64, node_id: u64) {
        if self.region.peer(peer_id).is_some() {
            return;
        }
        self.learned.retain(|(p, _)| *p != peer_id);
        if self.learned.len() >= LEARNED_PEERS_MAX {
            self.learned.remove(0);
        }
        self.learned.push((peer_id, node_id));
    }

    /// The node of raft peer `peer_id`: from the region's metadata, else
    /// from the peers heard from.
    pub fn node_of(&self, peer_id: u64) -> Option<u64> {
        self.region.peer(peer_id).map(|p| p.node_id).or_else(|| {
            self.learned
                .iter()
                .find(|(p, _)| *p == peer_id)
                .map(|(_, n)| *n)
        })
    }

    /// True (once) after an applied entry changed this replica's range
    /// (written with the round's apply batch).
    pub fn take_range_applied(&mut self) -> bool {
        std::mem::take(&mut self.range_applied)
    }

    /// True (once) after a snapshot's range became durable.
    pub fn take_range_persisted(&mut self) -> bool {
        std::mem::take(&mut self.range_persisted)
    }

    /// False while this replica waits for its first snapshot (it owns no
    /// range and serves nothing).
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// True once this replica learnt it is no longer a member of its region.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Marks this replica removed: a member that applied a newer membership
    /// (`conf_ver`) without it said so. Ignored unless that membership is
    /// newer than this replica's.
    pub fn mark_removed(&mut self, conf_ver: u64) -> bool {
        if conf_ver > self.region.epoch.conf_ver {
            self.removed = true;
        }
        self.removed
    }

    /// True (once) after the region's replicas or range changed here.
    pub fn take_layout_changed(&mut self) -> bool {
        std::mem::take(&mut self.layout_changed)
    }

    /// The lowest version watchers of this replica can resume from.
    pub fn history_floor(&self) -> u64 {
        self.history_floor
    }

    /// Index of the last entry applied here.
    pub fn applied_index(&self) -> u64 {
        self.raw.store().applied_index()
    }

    /// Region metadata as applied here.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Region id.
    pub fn region_id(&self) -> u64 {
        self.region.id
    }

    /// Node hosting this replica.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This replica's raft id.
    pub fn peer_id(&self) -> u64 {
        self.peer_id
    }

    /// True when this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Node of the leader as far as this replica knows.
    pub fn leader_node(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        if leader == raft::INVALID_ID {
            return None;
        }
        self.node_of(leader)
    }

    /// True when this replica leads and `peer_id`'s log matches its own up to
    /// the last index (a leader transfer to it would be quick).
    pub fn is_caught_up(&self, peer_id: u64) -> bool {
        self.is_leader()
            && self.raw.raft.prs().get(peer_id).is_some_and(|pr| {
                pr.matched == self.raw.raft.raft_log.last_index() && pr.recent_active
            })
    }

    /// The region's client sessions as applied here.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Counters of this replica.
    pub fn counters(&self) -> PeerCounters {
        self.counters
    }

    /// Proposals waiting for apply.
    pub fn proposals_pending(&self) -> usize {
        self.proposals.len()
    }

    /// Reads waiting for their read index.
    pub fn reads_pending(&self) -> usize {
        self.reads.pending() + self.follower_reads.pending() + self.stale_reads.len()
    }

    /// Raft state in brief.
    pub fn status(&self) -> PeerStatus {
        let store = self.raw.store();
        PeerStatus {
            region_id: self.region.id,
            peer_id: self.peer_id,
            role: self.raw.raft.state,
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: store.applied_index(),
            first_index: store.first_index_now(),
            last_index: store.last_index_now(),
        }
    }

    /// The raft storage (read-only).
    pub fn storage(&self) -> &RegionStorage {
        self.raw.store()
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            region_id: self.region.id,
            leader_node: self.leader_node(),
        }
    }

    fn epoch_not_match(&self) -> Error {
        Error::EpochNotMatch {
            region_id: self.region.id,
            current: vec![self.region.clone()],
        }
    }

    /// Called after every input that may change the role or term.
    fn after_input(&mut self, replies: &mut Vec<Reply>) {
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
    fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Ends the lease, and blocks it for the rest of the term, when a
    /// leader transfer is pending (see `lease_blocked_term`).
    fn block_lease_while_transferring(&mut self) {
        if self.raw.raft.lead_transferee.is_some() {
            self.lease_until_ms = 0;
            self.lease_blocked_term = self.raw.raft.term;
        }
    }

    /// True unless a leader transfer was pending in this term.
    fn lease_allowed(&self) -> bool {
        self.raw.raft.term != self.lease_blocked_term && self.raw.raft.lead_transferee.is_none()
    }

    /// True when lease reads may be served from the lease at `now`.
    fn lease_holds(&self) -> bool {
        self.now_ms < self.lease_until_ms
            && self.lease_allowed()
            && self.raw.raft.commit_to_current_term()
    }

    /// Advances raft's logical clock by one tick. `now_ms` is the caller's
    /// monotonic clock, used for leases and request deadlines.
    pub fn tick(&mut self, now_ms: u64, replies: &mut Vec<Reply>) {
        self.set_now(now_ms);
        self.ticks += 1;
        self.raw.tick();
        self.after_input(replies);
        self.block_lease_while_transferring();
        self.expire_requests(replies);
        if !self.is_leader() {
            if self.raw.raft.leader_id != raft::INVALID_ID {
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

    fn expire_requests(&mut self, replies: &mut Vec<Reply>) {
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
        self.raw.transfer_leader(peer_id);
        self.block_lease_while_transferring();
    }

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
    fn membership_changing(&self) -> bool {
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
        let (cc, added) = match change.plan(&self.region, self.peer_id) {
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
    fn propose_entry(
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
                other => Error::Raft(other),
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

    fn sweep_step(&mut self, wall_ms: u64) -> Result<usize> {
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
    fn advance_region_clock(&mut self, wall_ms: u64) {
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

    /// Queues a read of `key` arriving at `now_ms` (the caller's monotonic
    /// clock: a lease is judged against the time of the read, not of the
    /// last tick).
    pub fn read(
        &mut self,
        id: u64,
        key: Bytes,
        consistency: Consistency,
        now_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        self.set_now(now_ms);
        if let Err(e) = crate::command::check_key(&key) {
            return replies.push(Reply { id, result: Err(e) });
        }
        if !self.region.contains(route_hash(&key)) {
            return replies.push(Reply {
                id,
                result: Err(self.epoch_not_match()),
            });
        }
        if self.reads_pending() >= self.cfg.reads_pending_max {
            return replies.push(Reply {
                id,
                result: Err(Error::Busy("too many reads pending")),
            });
        }
        let read = PendingRead {
            id,
            key,
            deadline_ms: self.now_ms + self.cfg.request_timeout_ms,
        };
        if consistency == Consistency::Stale {
            self.stale_reads.push(read);
            return;
        }
        if consistency == Consistency::Follower && !self.is_leader() {
            if self.raw.raft.leader_id == raft::INVALID_ID {
                return replies.push(Reply {
                    id,
                    result: Err(self.not_leader()),
                });
            }
            // Give up well before the client does, so it can try another
            // replica: a follower cut off from the leader never answers
            // from its own state.
            let wait = (2 * self.cfg.election_timeout_ms()).min(self.cfg.request_timeout_ms);
            self.follower_reads.push(PendingRead {
                deadline_ms: self.now_ms + wait,
                ..read
            });
            return;
        }
        if !self.is_leader() {
            return replies.push(Reply {
                id,
                result: Err(self.not_leader()),
            });
        }
        if consistency == Consistency::Lease {
            self.lease_wanted = true;
            if self.lease_holds() {
                let index = self.raw.raft.raft_log.committed;
                self.reads.push_with_index(read, index);
                return;
            }
        }
        self.reads.push(read);
    }

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
        let follower_can_issue = !self.is_leader() && self.raw.raft.leader_id != raft::INVALID_ID;
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
            cache.put(key, value);
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

    fn apply_entries(
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

    /// As leader, starts the consistency check every
    /// `consistency_check_interval_ms` (the first one interval after it
    /// began leading). Not tracked: a lost one waits for the next.
    fn schedule_check(&mut self, now_ms: u64) {
        let every = self.cfg.consistency_check_interval_ms;
        if every == 0 {
            return;
        }
        if self.next_check_ms == 0 {
            self.next_check_ms = now_ms + every;
        }
        if now_ms < self.next_check_ms {
            return;
        }
        self.next_check_ms = now_ms + every;
        let cmd = AdminCommand::ComputeDigest;
        let _ = self
            .raw
            .propose(admin::ENTRY_CONTEXT.to_vec(), cmd.encode());
    }

    /// Compares the leader's digest at `index` with this replica's own and
    /// records the verdict; a mismatch is logged and counted.
    fn verify_digest(&mut self, index: u64, leader: crate::digest::Digest) {
        let own = self.digest.filter(|(at, _)| *at == index).map(|(_, d)| d);
        let check = CheckVerdict { index, leader, own };
        if own.is_some() {
            self.counters.digest_checks += 1;
        }
        if check.verdict() == "mismatch" {
            self.counters.digest_mismatches += 1;
            slog::error!(
                self.logger,
                "consistency check: this replica differs from the leader";
                "index" => index,
                "leader_digest" => format!("{leader:?}"),
                "own_digest" => format!("{own:?}"),
            );
        }
        self.check = Some(check);
    }

    /// The last consistency check this replica verified.
    pub fn last_check(&self) -> Option<CheckVerdict> {
        self.check
    }

    /// Applies a membership change: raft's configuration, the region's
    /// replicas and `conf_ver`, both stored in `apply`. A replica the change
    /// takes out marks itself removed.
    fn apply_conf_change(
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

    fn resolve_proposals(
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
    fn apply_split(
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
    fn prune_history(&mut self, db: &rocksdb::DB, apply: &mut ApplyBatch) {
        let keep = self.cfg.watch_history_entries;
        let applied = self.raw.store().applied_index();
        if applied.saturating_sub(self.history_floor) <= keep + keep / 4 {
            return;
        }
        let floor = applied - keep;
        watch::prune(db, &mut apply.inner, self.region.id, floor);
        self.history_floor = floor;
    }

    fn maybe_compact(&mut self, apply: &mut ApplyBatch) -> Result<()> {
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
        self.raw.on_persist_ready(number);
        self.ready_persisted = self.ready_persisted.max(number);
        if let Some((n, index)) = self.snapshot_persisting {
            if n <= number {
                self.snapshot_persisting = None;
                self.range_persisted = true;
                self.raw.advance_apply_to(index);
            }
        }
    }

    /// The time reads judge expiry by, unix ms: the region's clock as of
    /// the applied index (0 while unknown: reads then wait, see
    /// [`Peer::serve_reads`]).
    pub fn clock_ms(&self) -> u64 {
        self.raw.store().clock_ms().unwrap_or(0)
    }

    /// The region's clock as of the applied index; `None` while unknown.
    pub fn region_clock(&self) -> Option<u64> {
        self.raw.store().clock_ms()
    }

    /// Answers every read that can be served now, from `db` as of the last
    /// written apply batch. Expiry is judged by the region's clock as of
    /// what is applied ([`Peer::clock_ms`]): a read served at a later index
    /// than another never sees a value the other saw expired.
    pub fn serve_reads(&mut self, cache: &mut ReadCache, replies: &mut Vec<Reply>) -> Result<()> {
        // While the region's clock is unknown (data of an earlier release),
        // no read knows what has expired: reads wait for the leader's first
        // clock entry, proposed as soon as it leads.
        if self.snapshot_persisting.is_some() || self.region_clock().is_none() {
            return Ok(());
        }
        let mut ready = std::mem::take(&mut self.stale_reads);
        let applied = self.raw.store().applied_index();
        self.reads.take_ready(applied, &mut ready);
        self.follower_reads.take_ready(applied, &mut ready);
        if ready.is_empty() {
            return Ok(());
        }
        let db = self.raw.store().db().clone();
        for r in ready {
            if !self.region.contains(route_hash(&r.key)) {
                replies.push(Reply {
                    id: r.id,
                    result: Err(self.epoch_not_match()),
                });
                continue;
            }
            let record = match cache.get(&r.key) {
                Some(v) => v,
                None => {
                    let v = apply::load(&db, &r.key)?;
                    // The key may be a slice of a whole request frame: keep a
                    // copy of its own, not the frame.
                    cache.put(Bytes::copy_from_slice(&r.key), v.clone());
                    v
                }
            };
            let live = record.filter(|v| !v.is_expired(self.clock_ms()));
            replies.push(Reply {
                id: r.id,
                result: Ok(Response::Value(live)),
            });
        }
        Ok(())
    }
}
