//! Errors of a node's settings, its start-up and its node list, typed so the
//! binary picks its exit code by kind and tests match on the kind rather
//! than on the text. Every message names what to fix.

use std::net::SocketAddr;

/// A setting that cannot be used. The message names the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required flag is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A number outside the range its flag allows.
    #[error("{flag} {value} outside {min}..={max}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A value that does not parse, or settings that do not go together.
    #[error("{0}")]
    Invalid(String),
    /// The configuration file cannot be read or parsed.
    #[error("--config {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError::Invalid(s)
    }
}

impl From<&str> for ConfigError {
    fn from(s: &str) -> Self {
        ConfigError::Invalid(s.to_string())
    }
}

/// Checks that `value` of `flag` is in `min..=max`.
pub fn in_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            flag,
            value,
            min,
            max,
        })
    }
}

/// Why a node could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening address is taken or cannot be bound.
    #[error("{what} {addr}: {reason}")]
    Listen {
        /// Which listener (the flag).
        what: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The data directory cannot be opened, read or written, or belongs to
    /// another node or cluster.
    #[error("{0}")]
    DataDir(String),
    /// The backup to restore from (`--restore`) is missing, partial or
    /// damaged, or could not be written into the data directory.
    #[error("--restore: {0}")]
    Restore(String),
    /// The stored node list is damaged or cannot be read.
    #[error(transparent)]
    Nodes(#[from] NodesError),
    /// A thread or executor could not start, or a shard stopped with an
    /// error.
    #[error("{0}")]
    Runtime(String),
}

/// Why the node list could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// The change asked for cannot be made (bad id or address, a conflict
    /// with a node already listed).
    #[error("{0}")]
    Refused(String),
    /// A stored record is damaged.
    #[error("{0}")]
    Damaged(String),
    /// RocksDB failed.
    #[error("node list storage: {0}")]
    Storage(String),
}

impl From<corekv_engine::Error> for NodesError {
    fn from(e: corekv_engine::Error) -> Self {
        NodesError::Storage(e.to_string())
    }
}

impl From<rocksdb::Error> for NodesError {
    fn from(e: rocksdb::Error) -> Self {
        NodesError::Storage(e.to_string())
    }
}
