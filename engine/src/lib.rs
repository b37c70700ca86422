//! corekv region engine: one region replica and everything it needs, with no
//! sockets, threads or wall clock of its own (time comes in as ticks and `now`
//! parameters).
//!
//! The data model (`error`, `config`, `hash`, `ids`, `codec`, `keys`,
//! `region`, `value`, `command`, `session`, and the pure parts of `watch`,
//! `snapshot`, `membership` and `read`) lives in `corekv-types`, which the
//! client shares; it is re-exported here under the same paths.
//!
//! # Layout
//! - `db`: opening RocksDB, the shared [`LogBatch`], synced writes.
//! - `digest`: a replica's replicated state in one hash, to compare replicas.
//! - `directory`: which owner (shard) of a node holds which region and
//!   range, so that no two replicas of a node cover the same hashes.
//! - `state`: per-region local and apply state records, node identity.
//! - `storage`: `raft::Storage` of one region over the shared RocksDB.
//! - `admin`: region administration through the raft log (preferred leader,
//!   consistency checks).
//! - `membership`: replica changes (learner, promote, remove) as raft conf
//!   changes checked against the region.
//! - `apply`: the state machine applying committed writes; reads.
//! - `expire`: active expiry: the leader's sweep and the replicated removal.
//! - `cache`: the bounded hot-key read cache kept behind the apply point.
//! - `snapshot`: building region snapshots (their payload: `corekv-types`).
//! - `read`: ReadIndex batching (leader and follower reads) and the lease.
//! - `peer`: [`Peer`], one region replica (RawNode + state machine), one file
//!   per operation: `load` (open, create), `drive` (ticks, messages,
//!   elections), `propose`, `ready` (the ready cycle, apply, compaction),
//!   `read` (ReadIndex, lease, serving), `sweep` (expiry, region clock),
//!   `check` (consistency checks).
//! - `replicas`: [`Replicas`], all replicas one owner drives (`drive`: a
//!   round's work over them; `lifecycle`: bootstrap, splits, hand-overs,
//!   removals).
//! - `round`: [`round::ShardRound`], the round of one shard, I/O-free, run by
//!   the server's shards and the simulator through [`round::RoundHost`];
//!   `pipeline`: log batches in flight by sequence number, readies released
//!   when theirs is durable.
//! - `sim`: deterministic in-process cluster with a faulty network, for tests
//!   and the demo.
//! - `slog_fields`: raft-rs log records' key-value pairs as text.
//! - `watch`: the per-region change history watchers read and resume from
//!   (the changes themselves: `corekv-types`).
//!
//! Where new code goes: a new kind of replicated entry in `command`/`admin`
//! and `apply`; per-replica behaviour in `peer/` (the file of its
//! operation); anything done once per round for every replica in
//! `replicas/drive.rs`; a new step of the round in `round/` (and then in
//! both hosts); I/O never (the hosts do it).
#![deny(missing_docs)]

pub use corekv_types::{codec, command, config, error, hash, ids, keys, region, session, value};

pub mod admin;
pub mod apply;
pub mod cache;
pub mod db;
pub mod digest;
pub mod directory;
pub mod expire;
pub mod hibernate;
pub mod membership;
pub mod peer;
pub mod read;
pub mod replicas;
pub mod round;
pub mod sim;
pub mod slog_fields;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod watch;

pub use command::{
    Condition, Expiry, PutItem, SessionTag, TxnCheck, TxnOp, WriteOutcome, WriteRequest,
};
pub use config::Config;
pub use db::{Db, DbConfig, LogBatch};
pub use directory::Directory;
pub use error::{Error, Result};
pub use hash::{is_meta_key, route_hash, META_HASH, META_PREFIX};
pub use peer::{Peer, PeerStatus, Reply, Response};
pub use read::Consistency;
pub use region::{Epoch, PeerMeta, PeerRole, Region};
pub use replicas::{Owner, RaftEnvelope, Replicas, Round, SplitElsewhere};
pub use value::ValueRecord;
