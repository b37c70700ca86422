//! corekv's client protocol, shared by the server and every client: the
//! generated flatbuffers code of `net/schema/corekv.fbs`, length-prefixed
//! frames, and the messages as Rust values with their two directions. No
//! I/O: a client builds it without RocksDB, raft or io_uring.
//!
//! # Layout
//! - `wire`: the generated flatbuffers code of `schema/corekv.fbs`.
//! - `frame`: length-prefixed framing and stream reassembly.
//! - `message`: client-protocol messages as Rust values; encode and decode.
//!
//! Where new code goes: a new request or answer in `schema/corekv.fbs`,
//! then its type in `message/mod.rs` and its two directions in
//! `message/encode.rs` and `message/decode.rs`; a new error detail as a
//! `WireError` variant (`message/error.rs`).
#![deny(missing_docs)]

pub mod frame;
pub mod message;
pub mod wire;
