//! Errors of corekv's data model and engine, shared by server and client.
//!
//! Two families, kept apart on purpose (STYLE rule 5):
//! - *retryable* errors tell the caller to try elsewhere or later (`NotLeader`,
//!   `EpochNotMatch`, `RegionNotFound`, `Busy`, `Timeout`, `ProposalDropped`);
//! - *request* errors say the request itself is wrong (`KeyTooLarge`, ...);
//! - *fatal* errors (`Storage`, `Corruption`) mean this node cannot go on.
//!
//! Every variant has a stable numeric [`Error::code`]: the wire's
//! `ErrorCode` (`net/schema/corekv.fbs`, the one table of codes; the codes
//! only the protocol layer produces, 20-32, are listed there).
//!
//! | code | name | engine variant |
//! |---|---|---|
//! | 1 | NotLeader | [`Error::NotLeader`] |
//! | 2 | EpochNotMatch | [`Error::EpochNotMatch`] |
//! | 3 | RegionNotFound | [`Error::RegionNotFound`] |
//! | 4 | KeyTooLarge | [`Error::KeyTooLarge`] |
//! | 5 | ValueTooLarge | [`Error::ValueTooLarge`] |
//! | 6 | InvalidRequest | [`Error::InvalidRequest`] |
//! | 7 | Busy | [`Error::Busy`] |
//! | 8 | ProposalDropped | [`Error::ProposalDropped`] |
//! | 9 | Timeout | [`Error::Timeout`] |
//! | 100 | Internal | [`Error::Compacted`] (raft log entries, never a client's), [`Error::Corruption`], [`Error::Storage`], [`Error::Raft`], [`Error::Config`] |

use crate::region::Region;

/// A failure of a component below the engine (RocksDB, raft), kept as a
/// trait object so that this crate needs neither.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Engine error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica is not the leader of the region.
    #[error("region {region_id}: not leader (leader hint: node {leader_node:?})")]
    NotLeader {
        /// Region asked for.
        region_id: u64,
        /// Node that holds the leader as far as this replica knows.
        leader_node: Option<u64>,
    },
    /// The request was routed with an epoch that no longer matches.
    #[error("region {region_id}: epoch does not match")]
    EpochNotMatch {
        /// Region asked for.
        region_id: u64,
        /// The regions that now cover the range the request was routed to.
        current: Vec<Region>,
    },
    /// No replica of the region lives here.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// The key is empty or longer than the limit.
    #[error("key of {len} bytes is outside 1..={max}")]
    KeyTooLarge {
        /// Length of the key that was sent.
        len: usize,
        /// Largest key accepted.
        max: usize,
    },
    /// The value is longer than the configured limit.
    #[error("value of {len} bytes is over the limit of {max}")]
    ValueTooLarge {
        /// Length of the value that was sent.
        len: usize,
        /// Largest value accepted.
        max: usize,
    },
    /// The request is malformed (bad batch, ttl overflow, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too much work in flight; retry later.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// Raft dropped the proposal (leadership changing, transfer in progress).
    #[error("proposal dropped by raft; retry")]
    ProposalDropped,
    /// No answer in time: the request may or may not have taken effect.
    #[error("timed out: outcome unknown")]
    Timeout,
    /// The log entries needed are compacted.
    #[error("log compacted")]
    Compacted,
    /// Stored bytes failed to decode: the data directory is damaged.
    #[error("corruption: {0}")]
    Corruption(String),
    /// RocksDB failed: the node must stop (fail-stop). (Converted from
    /// `rocksdb::Error` with the `rocksdb` feature.)
    #[error("storage failure: {0}")]
    Storage(#[source] BoxError),
    /// Raft failed in a way the engine cannot recover from. (Converted from
    /// `raft::Error` with the `raft` feature.)
    #[error("raft: {0}")]
    Raft(#[source] BoxError),
    /// Configuration rejected by [`crate::Config::validate`].
    #[error("invalid config: {0}")]
    Config(String),
}

impl Error {
    /// The wire's `ErrorCode` for this error (see the module's table).
    pub fn code(&self) -> u16 {
        match self {
            Error::NotLeader { .. } => 1,
            Error::EpochNotMatch { .. } => 2,
            Error::RegionNotFound(_) => 3,
            Error::KeyTooLarge { .. } => 4,
            Error::ValueTooLarge { .. } => 5,
            Error::InvalidRequest(_) => 6,
            Error::Busy(_) => 7,
            Error::ProposalDropped => 8,
            Error::Timeout => 9,
            Error::Compacted
            | Error::Corruption(_)
            | Error::Storage(_)
            | Error::Raft(_)
            | Error::Config(_) => 100,
        }
    }

    /// True when the node that produced this error cannot go on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Corruption(_) | Error::Storage(_) | Error::Raft(_)
        )
    }

    /// True when the same request may succeed if retried (elsewhere or later)
    /// without risk of applying it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::EpochNotMatch { .. }
                | Error::RegionNotFound(_)
                | Error::Busy(_)
                | Error::ProposalDropped
        )
    }
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(Box::new(e))
    }
}

#[cfg(feature = "raft")]
impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::Raft(Box::new(e))
    }
}
