//! corekv wire formats, the raft transport codec and the native client.
//!
//! # Layout
//! - `wire`, `frame`, `message`: the client protocol (crate `corekv-wire`,
//!   re-exported here): the generated flatbuffers code of
//!   `schema/corekv.fbs`, framing, and the messages as Rust values.
//! - `auth`: users, roles and token hashes (kept in the meta region), and
//!   the gate every listener checks logins and requests against.
//! - `backup`: the backup format (`ctl backup`, `corekv-server --restore`):
//!   region files, the manifest with checksums, and the checks on reading.
//! - `faults`: fault-injection rules for the raft transport (tests, chaos runs).
//! - `peer_codec`: frames of the raft transport between nodes.
//! - `routing`: the routing table a client keeps (I/O-free): which region
//!   a hash is in, and what an error answer means for it.
//! - `client`: the blocking native client (region cache, leader hints, retries).
//! - `admin`: placement operations through a client (leader transfer,
//!   replica and shard moves), each waiting until it shows.
//! - `listen`: listening sockets shared by a node's shards, and the check that
//!   no other process holds the port.
//! - `meta`: the meta region's records (node list, route reports, id
//!   allocation) and the client operations that update them.
//! - `status`: the typed status document of a node (`Status` request).
//! - `server`: a shard's client listener (glommio): connections, hello, limits.
//! - `transport`: a shard's raft transport (glommio): links with backoff and
//!   bounded queues, and the peer acceptor.
//! - `wake`: a one-slot wake-up signal for single-threaded loops.
//! - `watch_client`: watches in the native client (one resuming stream per
//!   region).
//!
//! Where new code goes: a new request or answer in `schema/corekv.fbs`,
//! then its type in `wire/src/message/mod.rs` and its two directions in
//! `message/encode.rs` and `message/decode.rs`; a new error detail as a
//! `WireError` variant (`message/error.rs`); how a client reacts to an
//! answer in `routing` (shared with `corekv-bench`); a new client operation
//! in `client/kv.rs` (data) or `client/admin.rs` / `admin` (placement).
#![deny(missing_docs)]

pub use corekv_wire::{frame, message, wire};

pub mod admin;
pub mod auth;
pub mod backup;
pub mod client;
pub mod faults;
pub mod listen;
pub mod meta;
pub mod peer_codec;
pub mod routing;
pub mod server;
pub mod status;
pub mod tls;
pub mod transport;
pub mod wake;
pub mod watch_client;

pub use client::{Client, ClientConfig, ClientError, Credentials, PutOptions, RegionBackup, Value};
pub use corekv_engine::watch::{Change, ChangeKind};
pub use watch_client::{Part, ResumeToken, StreamStatus, Watch};
