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

mod check;
mod drive;
mod hibernate;
mod load;
mod propose;
mod read;
mod ready;
mod sweep;

pub use check::CheckVerdict;
use check::{decode_check, encode_check};
pub use load::{list_regions, load_region_state, load_sessions};

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
    /// A scan's keys in hash order, with their values (empty when keys
    /// only), and the hash the next page starts at: the next key's, or the
    /// region's end (`None`: the end of the hash space).
    Scanned {
        /// Live keys and their records.
        items: Vec<(Bytes, ValueRecord)>,
        /// Where the next page starts, if the region has more.
        next_hash: Option<u64>,
        /// The applied index the page was read at.
        read_index: u64,
    },
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
    /// Times this replica went to sleep (see [`crate::hibernate`]).
    pub hibernations: u64,
    /// Times this replica woke from sleep.
    pub wakes: u64,
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
    /// Asleep or awake (see [`crate::hibernate`]).
    sleep: crate::hibernate::Sleep,
    /// Ticks left before the election clock starts while no leader is
    /// known ([`Peer::hold_first_campaign`]).
    campaign_hold: u64,
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

/// One split of a region: (epoch version it made, log index, first hash
/// moved out; `None` in records written before the hash was kept).
type SplitRecord = (u64, u64, Option<u64>);

impl Peer {
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
        // A replica that applied its own removal while leading is out of
        // the region, whatever raft-rs still says (it leaves such a leader
        // in place).
        self.raw.raft.state == StateRole::Leader && !self.removed
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
}
