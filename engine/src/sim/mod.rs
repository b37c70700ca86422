//! Deterministic multi-node simulation of region replicas (STYLE rule 9).
//!
//! In-process nodes, each with its own RocksDB directory, exchange raft
//! messages through [`SimNetwork`], whose filters drop, delay, partition and
//! isolate. Time advances only when the test says so, in ticks; the network
//! and the election timeouts draw from one seeded RNG, so a failing run
//! replays from its seed. Each node runs the same round as a server shard:
//! collect → write apply batch → write log batch (synced) → confirm → send →
//! serve reads.

mod cluster;
mod log;
mod network;

pub use cluster::{CrashPoint, SimCluster, SimOptions};

/// An unconditional put of `value` at `key`, without expiry (tests).
pub fn put(key: &str, value: &str) -> crate::WriteRequest {
    crate::WriteRequest::Put {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        ttl_ms: None,
        condition: crate::Condition::None,
    }
}
pub use network::{Filters, SimNetwork};
