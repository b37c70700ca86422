//! corekv's native client, for applications: it depends on the data model
//! (`corekv-types`) and the protocol (`corekv-wire`) only, so it builds
//! without RocksDB, raft, glommio or libclang, on any platform with std
//! sockets.
//!
//! # Layout
//! - `aio`: the async client (tokio): one shared, pipelined instance per
//!   process ([`AsyncClient`]); scans as pages and watches as streams; a
//!   local cache never staler than a bound ([`aio::cache`]).
//! - `client`: the blocking client (region cache, leader hints, retries,
//!   sessions for exactly-once writes, admin operations).
//! - `watch_client`: watches (one resuming stream per region).
//! - `routing`: the routing table a client keeps (I/O-free): which region a
//!   hash is in, and what an error answer means for it.
//! - `status`: the typed status document of a node (`Status` request).
//! - `backup`: the backup format (`ctl backup`, `corekv-server --restore`):
//!   region files, the manifest with checksums, and the checks on reading.
//! - `tls`: the client's TLS settings and a blocking plain-or-TLS stream.
//! - `frame`, `message`, `wire`: the protocol, re-exported from
//!   `corekv-wire`.
#![deny(missing_docs)]

pub use corekv_wire::{frame, message, wire};

pub mod aio;
pub mod backup;
pub mod client;
pub mod routing;
pub mod status;
pub mod tls;
pub mod watch_client;

pub use aio::AsyncClient;
pub use client::{Client, ClientConfig, ClientError, Credentials, PutOptions, RegionBackup, Value};
pub use corekv_types::watch::{Change, ChangeKind};
pub use corekv_types::Consistency;
pub use watch_client::{Part, ResumeToken, StreamStatus, Watch};
