//! corekv node runtime (not built yet; see the README status table).
//!
//! # Layout
//! - `config`: node settings from flags or `node.toml`, validated.
//! - `shard`: one pinned glommio executor running the round of DESIGN §5 over
//!   its region replicas.
//! - `log_writer`: the node-wide group commit of every shard's log batch.
//! - `placement`: which shard owns which region, persisted.
//! - `bin/corekv-server`: the server binary.
