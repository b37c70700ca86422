//! corekv node runtime.
//!
//! # Layout
//! - `config`: `corekv-server` flags and TOML file, validated into `NodeConfig`.
//! - `error`: typed errors of settings, start-up and the node list.
//! - `bootstrap`: the initial region layout, node identity, region → shard
//!   placement (persisted) and the `Router`.
//! - `node`: state shared by a node's shards (router, leaders, log writer queue).
//! - `log_writer`: the node-wide group commit of every shard's log batch.
//! - `metrics`: Prometheus metrics of the node and its `/metrics` endpoint.
//! - `nodes`: the other nodes raft messages go to (initial cluster and
//!   added nodes, kept in RocksDB).
//! - `meta`: the thread that keeps the node in step with the meta region
//!   (node list, route reports, routing table).
//! - `shard`: one pinned glommio executor running rounds over its regions.
//! - `watch`: a shard's watches: subscriptions, change frames, lagging
//!   watchers.
//! - `auth`: the node's gate (users, node key, protected mode) and the copy
//!   of the users it keeps.
//! - `autosplit`: per-region load tracking and the split decision.
//! - `placement`: the placement driver and its planner (`plan`, `count`):
//!   replicas, leaders and shards evened out; `corekv ctl balance` runs the
//!   same plan.
//! - `quota`: the disk quota watcher (`--disk-quota-mb`, `NoSpace`).
//! - `status`: the node's status document (typed in `corekv_net::status`)
//!   and the region size scanner.
//! - `raft_log`: raft-rs logs into `tracing`.
//! - `server`: start (memlock, ports, executors) and clean shutdown.
//! - `bin/corekv-server`: the server binary.
//!
//! Where new code goes: a new flag in `config/` (validated there, with a
//! `ConfigError`); a new request's handling in `shard/requests.rs`; periodic
//! shard work in `shard/housekeeping.rs` (called from the tick of
//! `shard/round.rs`); the order of a round is the engine's
//! (`corekv_engine::round`), not this crate's; node-wide background work as
//! a thread of its own (like `meta`, `placement`, `quota`), never on a
//! shard.
#![deny(missing_docs)]

pub mod auth;
pub mod autosplit;
pub mod backup;
pub mod bootstrap;
pub mod config;
pub mod error;
pub mod hotkeys;
pub mod log_writer;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod placement;
pub mod quota;
pub mod raft_log;
pub mod server;
pub mod shard;
pub mod status;
pub mod watch;
