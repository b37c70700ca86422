//! A Redis-protocol (RESP2 and RESP3) front for corekv: redis-cli,
//! redis-benchmark and Redis client libraries talk to a node as to a
//! standalone Redis, and every answer is linearizable.
//!
//! # Layout
//! - `codec`: requests off the wire (multibulk and inline), with limits;
//! - `reply`: replies in RESP2 and RESP3;
//! - `store`: what commands need of the cluster, over the native client;
//! - `view`: read-modify-writes as a read and a version-checked transaction;
//! - `commands`: the command table and the data commands;
//! - `session`: one connection (server commands, MULTI/EXEC/WATCH);
//! - `server`: the listener and its threads.
//!
//! What is served and how it differs from Redis: docs/resp.md.

pub mod codec;
pub mod commands;
pub mod reply;
pub mod server;
pub mod session;
pub mod store;
pub mod view;

pub use server::{start, RespConfig, RespServer, RespStats};

/// The Redis version this front answers as (INFO, HELLO).
pub const REDIS_VERSION: &str = "7.0.0";
