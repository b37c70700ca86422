//! The native client: a blocking library usable from any application thread
//! (no async runtime needed).
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
//! # Layout
//! - this file: settings, errors, the client and its request path (call,
//!   execute with retries);
//! - `routes`: the routing table and where each request goes;
//! - `conn`: one connection (framing, deadlines);
//! - `kv`: reads and writes;
//! - `admin`: checks, transfers, splits, membership, shard moves, status.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_types::{
    route_hash, Condition, Consistency, PutItem, SessionTag, TxnCheck, TxnOp, WriteRequest,
};
use rand::Rng;

use crate::frame::FrameBuffer;
use crate::message::{
    decode_frame_with_fields, encode_client_hello, encode_requests, Frame, NodeInfo, Op, Outcome,
    Request, Response, ResponseFields, RouteInfo, WireError,
};
use crate::wire::ErrorCode;

mod admin;
mod conn;
mod kv;
mod routes;

pub use crate::routing::{covers_hash_space, merge_routes};
use crate::routing::{RouteTable, Routing};
pub use admin::RegionBackup;
pub(crate) use conn::Conn;
use conn::*;
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

enum CallError {
    /// Nothing was sent: safe to retry anything.
    NotSent(String),
    /// Sent, no answer: a write's outcome is unknown.
    Lost(String),
}

/// A connection-pooling, region-aware client.
pub struct Client {
    pub(crate) cfg: ClientConfig,
    pub(crate) routes: RouteTable,
    nodes: HashMap<u64, String>,
    pub(crate) conns: HashMap<String, Conn>,
    /// Per-shard client ports of each address, as its `Hello` gave them.
    shard_ports: HashMap<String, Vec<u16>>,
    next_id: u64,
    client_id: u64,
    seq: u64,
    /// Nodes that failed to answer recently, avoided until the instant given.
    down_until: HashMap<u64, Instant>,
    /// Turn of the follower-read round-robin.
    spread: usize,
    /// Why a node refused this client's login, if one did: operations end
    /// with it instead of trying other nodes with the same credentials.
    login_refused: Option<String>,
}

/// How an operation picks its region.
#[derive(Clone, Copy)]
pub(crate) enum RouteBy {
    /// The region owning this key hash.
    Hash(u64),
    /// The region with this id.
    Region(u64),
}

/// How long a node that did not answer is avoided.
const DOWN_FOR: Duration = Duration::from_secs(1);

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
    /// endpoint that answers.
    pub fn connect(cfg: ClientConfig) -> Result<Client> {
        if cfg.endpoints.is_empty() {
            return Err(ClientError::Protocol("no endpoints".into()));
        }
        let mut c = Client {
            cfg,
            routes: RouteTable::default(),
            nodes: HashMap::new(),
            conns: HashMap::new(),
            shard_ports: HashMap::new(),
            next_id: 1,
            client_id: rand::thread_rng().gen_range(1..u64::MAX),
            seq: 0,
            down_until: HashMap::new(),
            spread: 0,
            login_refused: None,
        };
        let deadline = Instant::now() + c.cfg.request_timeout;
        let mut last = String::new();
        for attempt in 0..c.cfg.attempts_max {
            match c.refresh_routes(deadline) {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
            if let Some(why) = c.login_refused.take() {
                return Err(ClientError::Unauthenticated(why));
            }
            if !c.backoff(attempt, deadline) {
                break;
            }
        }
        Err(ClientError::Unavailable {
            attempts: c.cfg.attempts_max,
            last,
        })
    }

    /// The regions as last loaded.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    /// Node client addresses as last loaded.
    pub fn nodes(&self) -> &HashMap<u64, String> {
        &self.nodes
    }

    /// The per-shard client ports `node` gave in its `Hello` (connecting
    /// to it if need be; index = shard, 0 = none); empty when it has none.
    pub fn shard_ports_of(&mut self, node: u64) -> Result<Vec<u16>> {
        let addr = self
            .nodes
            .get(&node)
            .cloned()
            .ok_or_else(|| ClientError::Protocol(format!("node {node} is not known")))?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.conn(&addr, deadline)
            .map_err(|e| ClientError::Unavailable {
                attempts: 1,
                last: e,
            })?;
        Ok(self.shard_ports.get(&addr).cloned().unwrap_or_default())
    }

    /// Node ids and client addresses as last loaded, by node id.
    pub fn nodes_sorted(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = self.nodes.iter().map(|(n, a)| (*n, a.clone())).collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn backoff(&self, attempt: u32, deadline: Instant) -> bool {
        let exp = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16));
        let d = exp.min(self.cfg.backoff_max);
        let now = Instant::now();
        if now + d >= deadline {
            return false;
        }
        std::thread::sleep(d);
        true
    }

    pub(crate) fn conn(
        &mut self,
        addr: &str,
        deadline: Instant,
    ) -> std::result::Result<&mut Conn, String> {
        if !self.conns.contains_key(addr) {
            let sa = addr
                .to_socket_addrs()
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr}: no address"))?;
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(self.cfg.connect_timeout);
            if budget.is_zero() {
                return Err("deadline passed".into());
            }
            let started = Instant::now();
            let tcp =
                TcpStream::connect_timeout(&sa, budget).map_err(|e| format!("{addr}: {e}"))?;
            tcp.set_nodelay(true).ok();
            // The TLS handshake gets what is left of the connect budget.
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(format!("{addr}: connect budget spent before the handshake"));
            }
            tcp.set_read_timeout(Some(left)).ok();
            let mut stream = crate::tls::SyncStream::dial(tcp, addr, self.cfg.tls.as_ref())?;
            let creds = self
                .cfg
                .credentials
                .as_ref()
                .map(|c| (c.user.as_str(), c.token.as_str()));
            stream
                .write_all(&encode_client_hello(creds))
                .map_err(|e| format!("{addr}: {e}"))?;
            let mut conn = Conn {
                stream,
                frames: FrameBuffer::new(self.cfg.frame_bytes_max),
            };
            // The hello must come back quickly: a node that accepts but does
            // not answer (paused, overloaded) is not worth the whole budget.
            let hello_deadline = deadline.min(Instant::now() + self.cfg.connect_timeout);
            let plain = self.cfg.tls.is_none();
            let hello = read_frame(&mut conn, hello_deadline).map_err(|e| {
                // A node with TLS closes plain connections without a word.
                if plain && e.contains("closed by the server") {
                    format!("{addr}: {e} (if the cluster serves TLS, give its CA: --tls-ca)")
                } else {
                    format!("{addr}: {e}")
                }
            })?;
            match hello {
                Frame::Hello { shard_ports, .. } => {
                    self.shard_ports.insert(addr.to_string(), shard_ports);
                }
                Frame::Error(e) => {
                    let why = format!("{addr}: {}", e.message());
                    if e.code() == ErrorCode::Unauthenticated {
                        self.login_refused = Some(why.clone());
                    }
                    return Err(why);
                }
                other => return Err(format!("{addr}: expected hello, got {other:?}")),
            }
            self.conns.insert(addr.to_string(), conn);
        }
        Ok(self.conns.get_mut(addr).unwrap())
    }

    fn call(
        &mut self,
        addr: &str,
        reqs: &[Request],
        deadline: Instant,
    ) -> std::result::Result<Vec<(Response, ResponseFields)>, CallError> {
        match self.call_partial(addr, reqs, deadline) {
            (_, Some(e)) => Err(e),
            (got, None) => Ok(got.into_iter().map(|r| r.expect("all answered")).collect()),
        }
    }

    /// Sends `reqs` in one frame and collects the answers, in request
    /// order, until all came or the connection failed: then the error, and
    /// the answers that came before it.
    #[allow(clippy::type_complexity)]
    fn call_partial(
        &mut self,
        addr: &str,
        reqs: &[Request],
        deadline: Instant,
    ) -> (Vec<Option<(Response, ResponseFields)>>, Option<CallError>) {
        let mut got: Vec<Option<(Response, ResponseFields)>> = vec![None; reqs.len()];
        let conn = match self.conn(addr, deadline) {
            Ok(c) => c,
            Err(e) => return (got, Some(CallError::NotSent(e))),
        };
        let frame = encode_requests(reqs);
        if let Err(e) = conn.stream.write_all(&frame) {
            self.conns.remove(addr);
            // A partial write may have delivered the frame.
            return (got, Some(CallError::Lost(format!("{addr}: {e}"))));
        }
        let mut missing = reqs.len();
        while missing > 0 {
            let conn = self.conns.get_mut(addr).unwrap();
            let (frame, fields) = match read_frame_with_fields(conn, deadline) {
                Ok(f) => f,
                Err(e) => {
                    self.conns.remove(addr);
                    return (got, Some(CallError::Lost(e)));
                }
            };
            match frame {
                Frame::Responses(rs) => {
                    for (r, f) in rs.into_iter().zip(fields) {
                        if let Some(i) = reqs.iter().position(|q| q.id == r.id) {
                            if got[i].is_none() {
                                missing -= 1;
                            }
                            got[i] = Some((r, f));
                        }
                    }
                }
                Frame::Error(e) => {
                    self.conns.remove(addr);
                    let e = CallError::Lost(format!("{addr}: {}", e.message()));
                    return (got, Some(e));
                }
                other => {
                    self.conns.remove(addr);
                    let e = CallError::Lost(format!("{addr}: unexpected {other:?}"));
                    return (got, Some(e));
                }
            }
        }
        (got, None)
    }

    /// A session tag for a new write of this client.
    pub(crate) fn new_tag(&mut self) -> SessionTag {
        self.seq += 1;
        SessionTag {
            client_id: self.client_id,
            seq: self.seq,
            retry: false,
        }
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Runs one operation on the region owning `key`, with retries.
    fn execute(
        &mut self,
        key: &[u8],
        op: Op,
        idempotent: bool,
    ) -> Result<(Outcome, ResponseFields)> {
        self.execute_on(RouteBy::Hash(route_hash(key)), op, idempotent)
    }

    /// Runs one operation on a region chosen by a key hash or by id.
    fn execute_on(
        &mut self,
        by: RouteBy,
        op: Op,
        idempotent: bool,
    ) -> Result<(Outcome, ResponseFields)> {
        self.execute_tagged(by, op, idempotent, None)
    }

    /// Like [`Client::execute_on`]; a write with `preset` goes with that
    /// session tag (an earlier attempt's, its `retry` saying whether that
    /// one may have been applied) instead of a new one.
    pub(crate) fn execute_tagged(
        &mut self,
        by: RouteBy,
        op: Op,
        idempotent: bool,
        preset: Option<SessionTag>,
    ) -> Result<(Outcome, ResponseFields)> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let spread = matches!(
            op,
            Op::Get {
                consistency: Consistency::Follower,
                ..
            }
        );
        let session = match (&op, idempotent, preset) {
            (Op::Write(_), false, Some(tag)) => Some(tag),
            (Op::Write(_), false, None) => Some(self.new_tag()),
            _ => None,
        };
        let mut last = String::new();
        let mut attempt = 0;
        let mut uncertain = session.is_some_and(|s| s.retry);
        while attempt < self.cfg.attempts_max && Instant::now() < deadline {
            attempt += 1;
            if let Some(why) = self.login_refused.take() {
                return Err(ClientError::Unauthenticated(why));
            }
            let found = match by {
                RouteBy::Hash(hash) => self.route_index(hash),
                RouteBy::Region(id) => self.routes.position(id),
            };
            let Some(i) = found else {
                if let Err(e) = self.refresh_routes(deadline) {
                    last = e;
                    self.backoff(attempt, deadline);
                }
                continue;
            };
            let picked = if spread {
                self.spread += 1;
                self.any_replica(i, self.spread)
            } else {
                self.learn_shard_ports(i, deadline);
                self.target(i, attempt)
            };
            let Some((node, addr)) = picked else {
                last = "no replica address known".into();
                let _ = self.refresh_routes(deadline);
                self.backoff(attempt, deadline);
                continue;
            };
            let (region_id, epoch) = (self.routes[i].region.id, self.routes[i].region.epoch);
            let req = crate::routing::attempt_request(
                self.new_id(),
                (region_id, epoch),
                &op,
                (session, uncertain),
                self.cfg.system,
            );
            match self.call(&addr, std::slice::from_ref(&req), deadline) {
                Ok(mut rs) => {
                    let (resp, fields) = rs.remove(0);
                    match resp.result {
                        Ok(o) => return Ok((o, fields)),
                        Err(e) => {
                            last = format!("{addr}: {e}");
                            match self.routes.on_error(i, &e) {
                                Routing::Retry { hinted: true } => {}
                                Routing::Retry { hinted: false } | Routing::Backoff => {
                                    self.backoff(attempt, deadline);
                                }
                                Routing::Reload => {
                                    let _ = self.refresh_routes(deadline);
                                }
                                // A write with a session tag is retried with
                                // the same tag: the region applies it once.
                                Routing::Other
                                    if e.code() == ErrorCode::Timeout
                                        && (idempotent || session.is_some()) =>
                                {
                                    uncertain |= !idempotent;
                                    self.backoff(attempt, deadline);
                                }
                                Routing::Other if e.code() == ErrorCode::Timeout => {
                                    return Err(ClientError::Unknown(last))
                                }
                                Routing::Other => return Err(wire_to_client(e)),
                            }
                        }
                    }
                }
                Err(CallError::NotSent(e)) => {
                    last = e;
                    self.mark_down(node);
                    self.routes[i].leader_node = 0;
                    self.backoff(attempt, deadline);
                }
                Err(CallError::Lost(e)) => {
                    self.mark_down(node);
                    if !idempotent && session.is_none() {
                        return Err(ClientError::Unknown(e));
                    }
                    uncertain |= !idempotent;
                    last = e;
                    self.routes[i].leader_node = 0;
                    self.backoff(attempt, deadline);
                }
            }
        }
        if uncertain {
            // A try may have been applied and no retry got its answer.
            return Err(ClientError::Unknown(last));
        }
        Err(ClientError::Unavailable {
            attempts: attempt,
            last,
        })
    }

    /// Reloads the routing table (regions, epochs, leaders).
    pub fn refresh(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.refresh_routes(deadline)
            .map_err(|last| ClientError::Unavailable { attempts: 1, last })
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
