//! corekv's data model, shared by the server and the client: regions and
//! their epochs, the routing hash, keys, client writes and their outcomes,
//! stored values, watched changes, snapshot payloads, the binary codec they
//! are stored and replicated in, and the typed errors. No I/O, no storage
//! engine, no raft: a client builds this crate in seconds.
//!
//! # Layout
//! - `error`: the typed errors (retryable / request / fatal) and codes.
//! - `config`: [`Config`], every limit and timeout of a region peer, validated.
//! - `hash`: the stable routing hash (xxh3-64, seed 0).
//! - `ids`: node, region and replica id limits and constructors.
//! - `codec`: the explicit binary codec of stored and replicated records.
//! - `keys`: column families and key layouts of the shared RocksDB.
//! - `region`: region metadata: hash range, epoch, replicas.
//! - `value`: how a user value is stored (version, expiry, bytes).
//! - `command`: client writes as logged, their validation and outcomes.
//! - `consistency`: the consistency levels of reads.
//! - `membership`: the replica changes a client can ask for.
//! - `session`: per-region client sessions for exactly-once writes.
//! - `snapshot`: the payload of a region snapshot (and of a backup's region).
//! - `watch`: changes to keys as watchers see them, as history records.
#![deny(missing_docs)]

pub mod codec;
pub mod command;
pub mod config;
pub mod consistency;
pub mod error;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod membership;
pub mod region;
pub mod session;
pub mod snapshot;
pub mod value;
pub mod watch;

pub use command::{
    Condition, Expiry, PutItem, SessionTag, TxnCheck, TxnOp, WriteOutcome, WriteRequest,
};
pub use config::Config;
pub use consistency::Consistency;
pub use error::{Error, Result};
pub use hash::{is_meta_key, route_hash, META_HASH, META_PREFIX};
pub use region::{Epoch, PeerMeta, PeerRole, Region};
pub use value::ValueRecord;
