//! corekv wire formats, raft transport and client library (not built yet; see
//! the README status table).
//!
//! # Layout
//! - `schema/*.fbs` and `generated`: the flatbuffers client protocol.
//! - `frame`: length-prefixed framing.
//! - `transport`: raft messages between nodes over io_uring TCP.
//! - `client`: the native client with its region cache and retries.
