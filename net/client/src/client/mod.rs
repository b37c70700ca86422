//! The native client: a blocking library usable from any application thread
//! (no async runtime needed), a thin wrapper over [`crate::AsyncClient`]:
//! each call runs the async client's future on a single-threaded runtime
//! the client owns, so both clients share one request path (routing,
//! retries, sessions, pipelined connections).
//!
//! It keeps a region cache (hash range → region, epoch, leader node) loaded
//! from any endpoint, sends each request straight to the region's leader,
//! follows `NotLeader` hints and `EpochNotMatch` updates, and retries with
//! capped exponential backoff. Every write carries a session tag (client id,
//! sequence number): when its answer is lost (timeout, connection dropped
//! after it was sent) it is retried with the same tag, and the region applies
//! it at most once and answers with the first outcome. If no retry gets an
//! answer within the time budget, the write is reported as
//! [`ClientError::Unknown`].
//!
//! A `Client`'s calls block: from async code use [`crate::AsyncClient`], or
//! call it in `spawn_blocking`/`block_in_place` (on a runtime's worker
//! thread itself tokio refuses to block, with a panic; dropping a `Client`
//! there panics too, as it ends the client's runtime).
//!
//! # Layout
//! - this file: settings, errors, the client;
//! - `kv`: reads and writes;
//! - `admin`: checks, transfers, splits, membership, shard moves, status.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use corekv_types::{Condition, Consistency, TxnCheck, TxnOp, WriteRequest};

use crate::message::{Outcome, ResponseFields, RouteInfo, WireError};
use crate::wire::ErrorCode;
use crate::AsyncClient;

mod admin;
mod kv;

pub use crate::aio::RegionBackup;
pub use crate::routing::{covers_hash_space, merge_routes};
pub(crate) use kv::put_request;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Addresses to load the routing table from (`host:port`).
    pub endpoints: Vec<String>,
    /// Time budget of one operation, retries included. Default 5 s.
    pub request_timeout: Duration,
    /// Time budget of one connection attempt. Default 1 s.
    pub connect_timeout: Duration,
    /// Attempts per operation. Default 20.
    pub attempts_max: u32,
    /// First retry delay; doubles per attempt. Default 10 ms.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 100 ms.
    pub backoff_max: Duration,
    /// Largest response frame accepted. Default 64 MiB.
    pub frame_bytes_max: usize,
    /// Marks requests as the cluster's own (nodes, `corekv ctl`): only they
    /// may write the metadata keys. Default false.
    pub system: bool,
    /// Sends each request to the port of the shard serving its region on
    /// the leader's node, where the node has shard ports and the routing
    /// table says which shard (otherwise to the node's client address,
    /// whose shard passes it on). Default true.
    pub shard_aware: bool,
    /// Logs in with these on every connection (None: anonymous).
    pub credentials: Option<Credentials>,
    /// TLS to every node (None: plain TCP). Nodes are verified against
    /// the CA and the host dialed.
    pub tls: Option<crate::tls::ClientTls>,
}

/// A user and its token, given in each connection's `Hello`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (`@node` for the cluster's nodes).
    pub user: String,
    /// Its token (for nodes, the node key).
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        write!(
            f,
            "Credentials {{ user: {:?}, token: <hidden> }}",
            self.user
        )
    }
}

impl ClientConfig {
    /// Defaults with these endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempts_max: 20,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            frame_bytes_max: 64 << 20,
            system: false,
            shard_aware: true,
            credentials: None,
            tls: None,
        }
    }
}

/// Errors of client operations.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The write's condition did not hold; nothing was written.
    #[error("condition failed (current version: {current_version:?})")]
    ConditionFailed {
        /// Version of the live value, if any.
        current_version: Option<u64>,
    },
    /// Incr on a value that is not a decimal i64, or an overflow.
    #[error("value is not a decimal 64-bit integer, or the result overflows")]
    NotANumber,
    /// The request itself is invalid (key or value too large, bad ttl, ...).
    #[error("{code:?}: {message}")]
    Invalid {
        /// Error code.
        code: ErrorCode,
        /// Detail from the server.
        message: String,
    },
    /// The write may or may not have been applied (timeout, or the connection
    /// was lost after it was sent). Read the key to find out.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A write of a pipelined frame that was refused (never applied) and
    /// not sent again, because a later write of the frame may be applied:
    /// sending it now would apply it after that one.
    #[error("not applied: {0}")]
    NotApplied(String),
    /// No replica could serve the request within the attempts and time.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Last error seen.
        last: String,
    },
    /// The cluster has authentication on and refused this client's
    /// credentials (or it gave none).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The user's roles do not allow the request; nothing was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A watch asked for changes the region no longer keeps; restart from
    /// the current values given.
    #[error("{message}")]
    Compacted {
        /// Detail from the server.
        message: String,
        /// The watched keys' current state: a put with the live value and
        /// its version, or a delete (version 0) for an absent key.
        current: Vec<corekv_types::watch::Change>,
    },
}

/// Result of client operations.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A value read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Bytes,
    /// Version (raft index of the write).
    pub version: u64,
    /// Absolute expiry in unix ms; 0 = none.
    pub expire_at_ms: u64,
}

/// Options of a put.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Time to live.
    pub ttl: Option<Duration>,
    /// Write only if absent.
    pub if_absent: bool,
    /// Write only if the current version is this.
    pub if_version: Option<u64>,
}

/// A region-aware client whose calls block: [`AsyncClient`]'s request
/// path, run on a runtime of its own.
pub struct Client {
    // (Dropped in this order: the connections, then their runtime.)
    inner: AsyncClient,
    rt: tokio::runtime::Runtime,
}

/// How an operation picks its region.
#[derive(Clone, Copy)]
pub(crate) enum RouteBy {
    /// The region owning this key hash.
    Hash(u64),
    /// The region with this id.
    Region(u64),
}

pub(crate) fn wire_to_client(e: WireError) -> ClientError {
    match e {
        WireError::ConditionFailed {
            current_version, ..
        } => ClientError::ConditionFailed {
            current_version: (current_version != 0).then_some(current_version),
        },
        WireError::Other {
            code: ErrorCode::NotANumber,
            ..
        } => ClientError::NotANumber,
        WireError::Compacted { message, current } => ClientError::Compacted { message, current },
        WireError::Other {
            code: ErrorCode::Unauthenticated,
            message,
        } => ClientError::Unauthenticated(message),
        WireError::Other {
            code: ErrorCode::PermissionDenied,
            message,
        } => ClientError::PermissionDenied(message),
        e => ClientError::Invalid {
            code: e.code(),
            message: e.message().to_string(),
        },
    }
}

impl Client {
    /// Connects to the cluster: loads the routing table from the first
    /// endpoint that answers. Blocks: not from async code on a runtime's
    /// worker thread (tokio panics there), but from any other thread,
    /// `spawn_blocking` and `block_in_place` included.
    pub fn connect(cfg: ClientConfig) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| ClientError::Protocol(format!("starting the client's runtime: {e}")))?;
        let inner = rt.block_on(AsyncClient::connect(cfg))?;
        Ok(Client { rt, inner })
    }

    /// Runs one of the async client's operations to its end.
    fn run<'a, T, F>(&'a self, op: impl FnOnce(&'a AsyncClient) -> F) -> T
    where
        F: std::future::Future<Output = T> + 'a,
    {
        self.rt.block_on(op(&self.inner))
    }

    /// Runs `f` on the client's runtime (its connections' tasks run
    /// meanwhile).
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The async client underneath (its connections' tasks run only inside
    /// this client's calls: not for use on another runtime).
    pub(crate) fn as_async(&self) -> &AsyncClient {
        &self.inner
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ClientConfig {
        self.inner.config()
    }

    /// The regions as last loaded.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.inner.routes()
    }

    /// Node client addresses as last loaded.
    pub fn nodes(&self) -> HashMap<u64, String> {
        self.inner.nodes()
    }

    /// The per-shard client ports `node` gave in its `Hello` (connecting
    /// to it if need be; index = shard, 0 = none); empty when it has none.
    pub fn shard_ports_of(&mut self, node: u64) -> Result<Vec<u16>> {
        self.run(|c| c.shard_ports_of(node))
    }

    /// Node ids and client addresses as last loaded, by node id.
    pub fn nodes_sorted(&self) -> Vec<(u64, String)> {
        self.inner.nodes_sorted()
    }

    /// Reloads the routing table (regions, epochs, leaders).
    pub fn refresh(&mut self) -> Result<()> {
        self.run(|c| c.refresh())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_types::{Epoch, Region};

    fn route(id: u64, start: u64, end: u64, version: u64, conf_ver: u64) -> RouteInfo {
        RouteInfo {
            region: Region {
                id,
                start_hash: start,
                end_hash: end,
                epoch: Epoch { conf_ver, version },
                peers: Vec::new(),
            },
            leader_node: 0,
            leader_shard: None,
        }
    }

    #[test]
    fn the_blocking_client_runs_on_a_blocking_thread_of_an_async_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens there: it tries, and says so (no panic about
        // runtimes within runtimes).
        let mut cfg = ClientConfig::new(vec!["127.0.0.1:1".into()]);
        cfg.request_timeout = Duration::from_millis(200);
        let blocking = rt.spawn_blocking(move || Client::connect(cfg).err());
        let got = rt.block_on(blocking).unwrap();
        assert!(
            matches!(got, Some(ClientError::Unavailable { .. })),
            "{got:?}"
        );
    }

    #[test]
    fn the_leader_shard_comes_from_the_answer_that_knows_it() {
        let mut local = route(1, 0, 0, 2, 1);
        local.leader_node = 3;
        let mut t = vec![local.clone()];
        // Same epoch and leader, from the leader's node: its shard is taken.
        let mut from_leader = local.clone();
        from_leader.leader_shard = Some(1);
        merge_routes(&mut t, vec![from_leader.clone()]);
        assert_eq!(t[0].leader_shard, Some(1));
        // Another leader's shard is not taken over this leader.
        let mut t = vec![local.clone()];
        let mut other = from_leader;
        other.leader_node = 2;
        merge_routes(&mut t, vec![other]);
        assert_eq!((t[0].leader_node, t[0].leader_shard), (3, None));
    }

    #[test]
    fn answers_of_nodes_holding_different_regions_merge_into_one_table() {
        let half = 1u64 << 63;
        // Node A has region 1 only, as of its first membership.
        let mut t = vec![route(1, 0, half, 1, 1)];
        assert!(!covers_hash_space(&t));
        // Node B has both, region 1 with a newer membership.
        merge_routes(
            &mut t,
            vec![route(1, 0, half, 1, 3), route(2, half, 0, 1, 1)],
        );
        assert!(covers_hash_space(&t));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].region.epoch.conf_ver, 3, "newer membership wins");
        // Node C saw region 2 split: the stale region 2 goes.
        let q = half + (1 << 62);
        merge_routes(&mut t, vec![route(2, half, q, 2, 1), route(9, q, 0, 2, 1)]);
        assert_eq!(
            t.iter().map(|r| r.region.id).collect::<Vec<_>>(),
            vec![1, 2, 9]
        );
        assert_eq!(t[1].region.end_hash, q);
        assert!(covers_hash_space(&t));
        // An older answer does not bring back what a newer one replaced.
        merge_routes(&mut t, vec![route(2, half, 0, 1, 1)]);
        assert_eq!(t[1].region.end_hash, q);
    }
}
