//! corekv's node-side networking: the client and shard listeners, the raft
//! transport, authentication, the meta region's records, and the native
//! client (crate `corekv-client`, re-exported here).
//!
//! # Layout
//! - `wire`, `frame`, `message`: the client protocol (crate `corekv-wire`,
//!   re-exported here): the generated flatbuffers code of
//!   `schema/corekv.fbs`, framing, and the messages as Rust values.
//! - `auth`: users, roles and token hashes (kept in the meta region), and
//!   the gate every listener checks logins and requests against.
//! - `faults`: fault-injection rules for the raft transport (tests, chaos runs).
//! - `peer_codec`: frames of the raft transport between nodes.
//! - `client`, `watch_client`, `routing`, `status`, `backup`: the native
//!   client, its routing table, the status document and the backup format
//!   (crate `corekv-client`, re-exported here).
//! - `admin`: placement operations through a client (leader transfer,
//!   replica and shard moves), each waiting until it shows.
//! - `listen`: listening sockets shared by a node's shards, and the check that
//!   no other process holds the port.
//! - `meta`: the meta region's records (node list, route reports, id
//!   allocation) and the client operations that update them.
//! - `server`: a shard's client listener (glommio): connections, hello, limits.
//! - `transport`: a shard's raft transport (glommio): links with backoff and
//!   bounded queues, and the peer acceptor.
//! - `wake`: a one-slot wake-up signal for single-threaded loops.
//!
//! Where new code goes: a new request or answer in `schema/corekv.fbs`,
//! then its type in `wire/src/message/mod.rs` and its two directions in
//! `message/encode.rs` and `message/decode.rs`; a new error detail as a
//! `WireError` variant (`message/error.rs`); how a client reacts to an
//! answer in `routing` (shared with `corekv-bench`); a new client operation
//! in `client/client/kv.rs` (data) or `client/client/admin.rs` / `admin`
//! (placement).
#![deny(missing_docs)]

pub use corekv_client::{backup, client, routing, status, watch_client};
pub use corekv_wire::{frame, message, wire};

pub mod admin;
pub mod auth;
pub mod faults;
pub mod listen;
pub mod meta;
pub mod peer_codec;
pub mod server;
pub mod tls;
pub mod transport;
pub mod wake;

pub use client::{Client, ClientConfig, ClientError, Credentials, PutOptions, RegionBackup, Value};
pub use corekv_types::watch::{Change, ChangeKind};
pub use watch_client::{Part, ResumeToken, StreamStatus, Watch};
