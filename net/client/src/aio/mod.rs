//! The async client (tokio): one shared instance per process, any number of
//! requests in flight.
//!
//! [`AsyncClient`] is `Clone + Send + Sync`; clones share the routing table
//! and the connections. Each connection is pipelined ([`link`]): requests
//! from every task go out in shared frames and answers are matched by
//! request id, so 10,000 concurrent reads need a handful of sockets, not
//! 10,000 threads. Routing is the blocking client's ([`crate::routing`]):
//! NotLeader hints are followed at once, EpochNotMatch and RegionNotFound
//! reload the table, Busy and silent nodes back off; writes carry a session
//! tag, so a write retried after a lost answer is applied once.
//!
//! [`AsyncClient::cached`] keeps a prefix or a list of keys in process
//! memory, current by watch, never staler than a bound ([`cache`]).
//! [`AsyncClient::scan_prefix`] pages through a prefix;
//! [`AsyncClient::watch_prefix`] and [`AsyncClient::watch`] are
//! [`futures_core::Stream`]s of changes.
//!
//! Every other operation is here too: counters, compare-and-set,
//! transactions, pipelines and batches ([`ops`]), and administration
//! ([`admin`]). The blocking [`crate::Client`] runs these same futures on
//! a runtime of its own.

mod admin;
pub mod cache;
pub(crate) mod link;
mod ops;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corekv_types::{route_hash, Consistency, SessionTag, WriteRequest};
use rand::Rng;
use tokio::time::Instant;

use crate::client::{
    put_request, wire_to_client, ClientConfig, ClientError, PutOptions, Result, RouteBy, Value,
};
use crate::message::{Op, Outcome, Request, ResponseFields, RouteInfo};
use crate::routing::{attempt_request, classify, LoadStep, RouteTable, RoutesLoad, Routing};
use crate::wire::ErrorCode;
use link::{Link, OpenError};

pub use admin::RegionBackup;
pub use cache::{CacheOptions, CacheStats, Cached, Selection};
pub use ops::PIPELINED_WRITES_MAX;
pub use stream::{ScanPages, WatchStream};

/// The region (id, epoch) a request was routed to.
pub(crate) type Routed = (u64, corekv_types::Epoch);

/// Whether two routings name the same region with the same key range: a
/// change of its replicas (`conf_ver`) leaves both alone.
pub(crate) fn same_range(a: Routed, b: Routed) -> bool {
    a.0 == b.0 && a.1.version == b.1.version
}

/// How long a node that did not answer is avoided.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// A shared, pipelined, region-aware client for tokio.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AsyncClient {{ endpoints: {:?} }}",
            self.inner.cfg.endpoints
        )
    }
}

struct Inner {
    cfg: ClientConfig,
    /// Requests go as the cluster's own (see [`ClientConfig::system`]).
    system: AtomicBool,
    state: Mutex<State>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// One connection attempt per address at a time: a burst of requests
    /// to a node not yet connected opens one socket, not one per request.
    opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One table reload at a time; the others wait for it and use its
    /// result (`generation` tells them it happened).
    reload: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    next_id: AtomicU64,
    /// Idle write sessions (client id, last sequence number used). A
    /// region applies a retried write once only if its client has one write
    /// in flight at a time (see `corekv_types::session`), so each write
    /// takes a session of its own and gives it back when it is done; the
    /// pool grows to the number of writes ever in flight at once.
    sessions: Mutex<Vec<(u64, u64)>>,
}

/// A write session lent to one write; back to the pool on drop.
struct Lent<'a> {
    pool: &'a Mutex<Vec<(u64, u64)>>,
    tag: SessionTag,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let (id, seq) = (self.tag.client_id, self.tag.seq);
        self.pool.lock().unwrap().push((id, seq));
    }
}

impl Inner {
    fn new(cfg: ClientConfig) -> Inner {
        Inner {
            system: AtomicBool::new(cfg.system),
            cfg,
            state: Mutex::default(),
            links: Mutex::default(),
            opening: Mutex::default(),
            reload: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            sessions: Mutex::default(),
        }
    }

    fn lend_session(&self) -> Lent<'_> {
        let (client_id, seq) = self
            .sessions
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| (rand::thread_rng().gen_range(1..u64::MAX), 0));
        Lent {
            pool: &self.sessions,
            tag: SessionTag {
                client_id,
                seq: seq + 1,
                retry: false,
            },
        }
    }
}

#[derive(Default)]
struct State {
    routes: RouteTable,
    nodes: HashMap<u64, String>,
    /// Per-shard client ports of each node address, as its `Hello` gave them.
    shard_ports: HashMap<String, Vec<u16>>,
    down_until: HashMap<u64, std::time::Instant>,
    spread: usize,
    login_refused: Option<String>,
    /// The last failed connection attempt to each address, and why.
    failed_open: HashMap<String, (Instant, String)>,
}

/// A watch a leader accepted: its first answer, and the stream of the
/// rest. Dropping it cancels the watch.
pub(crate) struct OpenWatch {
    pub(crate) link: Arc<Link>,
    pub(crate) id: u64,
    /// The region it was sent to (its cancel goes there too).
    pub(crate) region: Routed,
    pub(crate) rx: tokio::sync::mpsc::UnboundedReceiver<link::Answer>,
    /// The first answer's progress and changes.
    pub(crate) first: (u64, Vec<corekv_types::watch::Change>),
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.link.forget(self.id);
        self.link.send_and_forget(Request {
            id: self.id.wrapping_add(1 << 63),
            region_id: self.region.0,
            epoch: self.region.1,
            op: Op::CancelWatch { watch_id: self.id },
            session: None,
            system: false,
        });
    }
}

pub(crate) enum CallError {
    /// Nothing was sent: safe to retry anything.
    NotSent(String),
    /// Sent, no answer: a write's outcome is unknown.
    Lost(String),
    /// Sent, no answer before the operation's deadline: unknown too, but
    /// the node is not to blame (the connection stays).
    TimedOut(String),
}

/// Where one attempt at a request goes.
pub(crate) enum Picked {
    /// No region in the table for it: reload.
    NoRoute,
    /// The region, but no replica address: reload, back off.
    NoReplica,
    /// The region, and the node (id, address) to send to.
    At(Routed, u64, String),
}

impl State {
    /// Region `by` and where attempt number `attempt` at it goes.
    fn pick(&mut self, by: RouteBy, attempt: u32, spread: bool, shard_aware: bool) -> Picked {
        let found = match by {
            RouteBy::Hash(h) => self.routes.index(h),
            RouteBy::Region(id) => self.routes.position(id),
        };
        let Some(i) = found else {
            return Picked::NoRoute;
        };
        let region = (self.routes[i].region.id, self.routes[i].region.epoch);
        match self.target(i, attempt, spread, shard_aware) {
            Some((node, addr)) => Picked::At(region, node, addr),
            None => Picked::NoReplica,
        }
    }

    fn is_down(&self, node: u64) -> bool {
        self.down_until
            .get(&node)
            .is_some_and(|t| *t > std::time::Instant::now())
    }

    /// Where to send region `i`'s request: the leader (on its shard's port
    /// when known), else a replica by attempt number; a follower read goes
    /// round-robin over the replicas.
    fn target(
        &mut self,
        i: usize,
        attempt: u32,
        spread: bool,
        shard_aware: bool,
    ) -> Option<(u64, String)> {
        let r = &self.routes[i];
        if !spread && r.leader_node != 0 && !self.is_down(r.leader_node) {
            if let Some(a) = self.nodes.get(&r.leader_node) {
                let shard_port = r
                    .leader_shard
                    .filter(|_| shard_aware)
                    .and_then(|s| self.shard_ports.get(a)?.get(s as usize).copied())
                    .filter(|p| *p != 0);
                let addr = match (shard_port, a.rsplit_once(':')) {
                    (Some(p), Some((host, _))) => format!("{host}:{p}"),
                    _ => a.clone(),
                };
                return Some((r.leader_node, addr));
            }
        }
        let peers = &r.region.peers;
        let n = peers.len();
        if n == 0 {
            return None;
        }
        let start = if spread {
            self.spread += 1;
            self.spread % n
        } else {
            attempt as usize % n
        };
        let pick = (0..n)
            .map(|k| &peers[(start + k) % n])
            .find(|p| !self.is_down(p.node_id))
            .unwrap_or(&peers[start]);
        self.nodes
            .get(&pick.node_id)
            .map(|a| (pick.node_id, a.clone()))
    }
}

impl AsyncClient {
    /// Connects to the cluster: loads the routing table from the first
    /// endpoint that answers. Must run inside a tokio runtime.
    pub async fn connect(cfg: ClientConfig) -> Result<AsyncClient> {
        if cfg.endpoints.is_empty() {
            return Err(ClientError::Protocol("no endpoints".into()));
        }
        let c = AsyncClient {
            inner: Arc::new(Inner::new(cfg)),
        };
        let deadline = Instant::now() + c.inner.cfg.request_timeout;
        let mut last = String::new();
        for attempt in 0..c.inner.cfg.attempts_max {
            match c.load_routes(deadline).await {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
            if let Some(why) = c.inner.state.lock().unwrap().login_refused.take() {
                return Err(ClientError::Unauthenticated(why));
            }
            if !c.backoff(attempt, deadline).await {
                break;
            }
        }
        Err(ClientError::Unavailable {
            attempts: c.inner.cfg.attempts_max,
            last,
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The regions as last loaded.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.inner.state.lock().unwrap().routes.to_vec()
    }

    /// Open connections (pipelined; shared by every clone and task).
    pub fn connections(&self) -> usize {
        let links = self.inner.links.lock().unwrap();
        links.values().filter(|l| l.is_open()).count()
    }

    /// Reads `key`.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<Value>> {
        let op = Op::Get {
            key: Bytes::copy_from_slice(key),
            consistency,
        };
        match self.execute(route_hash(key), op, true).await? {
            (Outcome::Value(v), _, _) => Ok(v.map(|r| Value {
                value: r.value,
                version: r.version,
                expire_at_ms: r.expire_at_ms,
            })),
            (other, _, _) => Err(ClientError::Protocol(format!("get answered {other:?}"))),
        }
    }

    /// Writes `key`; returns the new version.
    pub async fn put(&self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<u64> {
        let w = put_request(key, value, opts)?;
        let (_, f, _) = self.execute(route_hash(key), Op::Write(w), false).await?;
        Ok(f.version)
    }

    /// Deletes `key`; returns whether a live value was removed.
    pub async fn delete(&self, key: &[u8], if_version: Option<u64>) -> Result<bool> {
        let w = WriteRequest::Delete {
            key: Bytes::copy_from_slice(key),
            if_version,
        };
        let (_, f, _) = self.execute(route_hash(key), Op::Write(w), false).await?;
        Ok(f.existed)
    }

    /// Reloads the routing table (regions, epochs, leaders).
    pub async fn refresh(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        // Through the gate, so it never races another task's reload.
        let seen = self.inner.generation.load(Ordering::Acquire);
        self.reload_after(seen, deadline)
            .await
            .map_err(|last| ClientError::Unavailable { attempts: 1, last })
    }

    pub(crate) fn new_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) async fn backoff(&self, attempt: u32, deadline: Instant) -> bool {
        let cfg = &self.inner.cfg;
        let d = cfg
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(cfg.backoff_max);
        if Instant::now() + d >= deadline {
            return false;
        }
        tokio::time::sleep(d).await;
        true
    }

    /// The open link to `addr`, or a new one.
    pub(crate) async fn link(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> std::result::Result<Arc<Link>, String> {
        let open =
            |links: &HashMap<String, Arc<Link>>| links.get(addr).filter(|l| l.is_open()).cloned();
        if let Some(l) = open(&self.inner.links.lock().unwrap()) {
            return Ok(l);
        }
        let gate = {
            let mut opening = self.inner.opening.lock().unwrap();
            opening.entry(addr.to_string()).or_default().clone()
        };
        let waited_from = Instant::now();
        let _turn = tokio::time::timeout_at(deadline, gate.lock())
            .await
            .map_err(|_| format!("{addr}: timed out waiting for the connection"))?;
        if let Some(l) = open(&self.inner.links.lock().unwrap()) {
            return Ok(l);
        }
        // An attempt that failed while this one waited speaks for it too: a
        // burst of requests to an unreachable node fails over at once
        // instead of each spending the connect timeout in turn.
        if let Some((at, why)) = self.inner.state.lock().unwrap().failed_open.get(addr) {
            if *at >= waited_from {
                return Err(why.clone());
            }
        }
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(self.inner.cfg.connect_timeout);
        if budget.is_zero() {
            return Err("deadline passed".into());
        }
        let link = match Link::open(addr, &self.inner.cfg, budget).await {
            Ok(l) => Arc::new(l),
            Err(OpenError::Refused(why)) => {
                self.inner.state.lock().unwrap().login_refused = Some(why.clone());
                return Err(why);
            }
            Err(OpenError::Failed(why)) => {
                let mut st = self.inner.state.lock().unwrap();
                st.failed_open
                    .insert(addr.to_string(), (Instant::now(), why.clone()));
                return Err(why);
            }
        };
        self.inner.state.lock().unwrap().failed_open.remove(addr);
        self.inner
            .state
            .lock()
            .unwrap()
            .shard_ports
            .insert(addr.to_string(), link.shard_ports.clone());
        self.inner
            .links
            .lock()
            .unwrap()
            .insert(addr.to_string(), link.clone());
        Ok(link)
    }

    pub(crate) async fn call(
        &self,
        addr: &str,
        req: Request,
        deadline: Instant,
    ) -> std::result::Result<(crate::message::Response, ResponseFields), CallError> {
        let link = self
            .link(addr, deadline)
            .await
            .map_err(CallError::NotSent)?;
        let id = req.id;
        let Some(rx) = link.send(req) else {
            return Err(CallError::NotSent(format!("{addr}: connection closed")));
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(why))) => Err(CallError::Lost(format!("{addr}: {why}"))),
            Ok(Err(_)) => Err(CallError::Lost(format!("{addr}: connection closed"))),
            Err(_) => {
                link.forget(id);
                Err(CallError::TimedOut(format!(
                    "{addr}: timed out waiting for the server"
                )))
            }
        }
    }

    /// Avoids `node` for a while and drops its failed connections (an open
    /// one, perhaps just made by another task, stays).
    pub(crate) fn mark_down(&self, node: u64) {
        let mut st = self.inner.state.lock().unwrap();
        st.down_until
            .insert(node, std::time::Instant::now() + DOWN_FOR);
        let Some(addr) = st.nodes.get(&node).cloned() else {
            return;
        };
        let ports = st.shard_ports.remove(&addr).unwrap_or_default();
        drop(st);
        let mut links = self.inner.links.lock().unwrap();
        let mut drop_closed = |a: &str| {
            if links.get(a).is_some_and(|l| !l.is_open()) {
                links.remove(a);
            }
        };
        drop_closed(&addr);
        if let Some((host, _)) = addr.rsplit_once(':') {
            for p in ports {
                drop_closed(&format!("{host}:{p}"));
            }
        }
    }

    /// Reloads the table unless another task did since `seen` (its
    /// generation when it found the table wanting).
    pub(crate) async fn reload_after(
        &self,
        seen: u64,
        deadline: Instant,
    ) -> std::result::Result<(), String> {
        let _gate = tokio::time::timeout_at(deadline, self.inner.reload.lock())
            .await
            .map_err(|_| "timed out waiting for the routing table".to_string())?;
        if self.inner.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.load_routes(deadline).await
    }

    /// Loads the routing table: answers of the nodes merged (newest epoch
    /// of each region wins) until they cover the hash space or every node
    /// was asked.
    async fn load_routes(&self, deadline: Instant) -> std::result::Result<(), String> {
        let mut candidates: Vec<String> = {
            let st = self.inner.state.lock().unwrap();
            st.nodes.values().cloned().collect()
        };
        candidates.extend(self.inner.cfg.endpoints.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|a| seen.insert(a.clone()));
        let mut load = RoutesLoad::default();
        for addr in candidates {
            let req = RoutesLoad::request(self.new_id());
            match self.call(&addr, req, deadline).await {
                Ok((resp, _)) => match load.answer(&addr, resp.result) {
                    LoadStep::Next => {}
                    LoadStep::Done => break,
                    LoadStep::Refused(why) => {
                        self.inner.state.lock().unwrap().login_refused = Some(why);
                        break;
                    }
                },
                Err(CallError::NotSent(e))
                | Err(CallError::Lost(e))
                | Err(CallError::TimedOut(e)) => load.failed(e),
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let (merged, nodes_seen) = load.finish()?;
        let mut st = self.inner.state.lock().unwrap();
        st.routes.replace(merged);
        for n in nodes_seen {
            if !n.client_addr.is_empty() {
                st.nodes.insert(n.node_id, n.client_addr);
            }
        }
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Runs one operation on the region owning `hash`, with retries; says
    /// which region (id and epoch) answered.
    pub(crate) async fn execute(
        &self,
        hash: u64,
        op: Op,
        idempotent: bool,
    ) -> Result<(Outcome, ResponseFields, Routed)> {
        self.execute_by(RouteBy::Hash(hash), op, idempotent, None)
            .await
    }

    /// Whether requests go as the cluster's own.
    pub(crate) fn system(&self) -> bool {
        self.inner.system.load(Ordering::Relaxed)
    }

    /// Runs one operation on a region chosen by key hash or id, with
    /// retries: NotLeader hints are followed, a stale table reloaded, Busy
    /// and silent nodes backed off from. A non-idempotent write carries a
    /// session tag (`preset`, an earlier attempt's with `retry` saying
    /// whether that one may have been applied, or a new one) and is retried
    /// with it after a lost answer: the region applies it once.
    pub(crate) async fn execute_by(
        &self,
        by: RouteBy,
        op: Op,
        idempotent: bool,
        preset: Option<SessionTag>,
    ) -> Result<(Outcome, ResponseFields, Routed)> {
        let cfg = &self.inner.cfg;
        let deadline = Instant::now() + cfg.request_timeout;
        let spread = matches!(
            op,
            Op::Get {
                consistency: Consistency::Follower,
                ..
            }
        );
        let lent = match (&op, idempotent, preset) {
            (Op::Write(_), false, None) => Some(self.inner.lend_session()),
            _ => None,
        };
        let session = match (&op, idempotent) {
            (Op::Write(_), false) => preset.or(lent.as_ref().map(|l| l.tag)),
            _ => None,
        };
        let mut last = String::new();
        let mut attempt = 0;
        let mut uncertain = session.is_some_and(|s| s.retry);
        // An operation that is neither idempotent nor tagged (a split, a
        // membership change) is never sent twice: a lost answer ends it.
        let at_most_once = !idempotent && session.is_none();
        while attempt < cfg.attempts_max && Instant::now() < deadline {
            attempt += 1;
            let generation = self.inner.generation.load(Ordering::Acquire);
            let picked = {
                let mut st = self.inner.state.lock().unwrap();
                if let Some(why) = st.login_refused.take() {
                    return Err(ClientError::Unauthenticated(why));
                }
                st.pick(by, attempt, spread, cfg.shard_aware)
            };
            let ((region_id, epoch), node, addr) = match picked {
                Picked::At(region, node, addr) => (region, node, addr),
                Picked::NoRoute => {
                    if let Err(e) = self.reload_after(generation, deadline).await {
                        last = e;
                        self.backoff(attempt, deadline).await;
                    }
                    continue;
                }
                Picked::NoReplica => {
                    last = "no replica address known".into();
                    let _ = self.reload_after(generation, deadline).await;
                    self.backoff(attempt, deadline).await;
                    continue;
                }
            };
            let req = attempt_request(
                self.new_id(),
                (region_id, epoch),
                &op,
                (session, uncertain),
                self.system(),
            );
            match self.call(&addr, req, deadline).await {
                Ok((resp, fields)) => match resp.result {
                    Ok(o) => return Ok((o, fields, (region_id, epoch))),
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        let routing = self.learn((region_id, epoch), &e);
                        if self.follow(routing, attempt, (deadline, generation)).await {
                            continue;
                        }
                        // A write is retried with the same tag: the region
                        // applies it once.
                        if e.code() != ErrorCode::Timeout {
                            return Err(wire_to_client(e));
                        }
                        if at_most_once {
                            return Err(ClientError::Unknown(last));
                        }
                        uncertain |= !idempotent;
                        self.backoff(attempt, deadline).await;
                    }
                },
                Err(CallError::NotSent(e)) => {
                    last = e;
                    self.mark_down(node);
                    self.forget_leader(region_id, epoch);
                    self.backoff(attempt, deadline).await;
                }
                Err(CallError::Lost(e)) => {
                    self.mark_down(node);
                    if at_most_once {
                        return Err(ClientError::Unknown(e));
                    }
                    uncertain |= !idempotent;
                    last = e;
                    self.forget_leader(region_id, epoch);
                    self.backoff(attempt, deadline).await;
                }
                // The deadline passed: the loop ends here.
                Err(CallError::TimedOut(e)) => {
                    uncertain |= !idempotent;
                    last = e;
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

    /// Starts a watch on region `routed` (its leader, by the table) after
    /// `from` and waits until the leader accepts it. `Err(None)`: it may
    /// work later (no leader yet, connection lost, deadline); `Err(Some)`:
    /// it never will as asked (the region changed, the history is gone,
    /// the request was refused).
    async fn open_watch(
        &self,
        (region_id, epoch): Routed,
        op: Op,
    ) -> std::result::Result<OpenWatch, Option<ClientError>> {
        let cfg = &self.inner.cfg;
        let deadline = Instant::now() + cfg.request_timeout;
        let mut attempt = 0;
        while Instant::now() < deadline {
            attempt += 1;
            let generation = self.inner.generation.load(Ordering::Acquire);
            let (target, epoch) = {
                let mut st = self.inner.state.lock().unwrap();
                match st.routes.position(region_id) {
                    // Sent with the table's epoch: the replicas may have
                    // changed since, the range not.
                    Some(i)
                        if same_range(
                            (region_id, st.routes[i].region.epoch),
                            (region_id, epoch),
                        ) =>
                    {
                        let current = st.routes[i].region.epoch;
                        (st.target(i, attempt, false, cfg.shard_aware), current)
                    }
                    _ => {
                        return Err(Some(ClientError::Protocol(format!(
                            "region {region_id} changed (split or merged)"
                        ))))
                    }
                }
            };
            let Some((node, addr)) = target else {
                let _ = self.reload_after(generation, deadline).await;
                self.backoff(attempt, deadline).await;
                continue;
            };
            let Ok(link) = self.link(&addr, deadline).await else {
                self.mark_down(node);
                self.forget_leader(region_id, epoch);
                self.backoff(attempt, deadline).await;
                continue;
            };
            let id = self.new_id();
            let req = Request {
                id,
                region_id,
                epoch,
                op: op.clone(),
                session: None,
                system: self.system(),
            };
            let Some(rx) = link.send_stream(req) else {
                self.backoff(attempt, deadline).await;
                continue;
            };
            // From here on, dropping it (this future too) cancels the
            // watch on the server.
            let mut watch = OpenWatch {
                link,
                id,
                region: (region_id, epoch),
                rx,
                first: Default::default(),
            };
            let first = match tokio::time::timeout_at(deadline, watch.rx.recv()).await {
                Ok(Some(Ok((resp, _)))) => resp.result,
                Ok(_) => {
                    self.mark_down(node);
                    self.forget_leader(region_id, epoch);
                    self.backoff(attempt, deadline).await;
                    continue;
                }
                Err(_) => return Err(None),
            };
            match first {
                Ok(Outcome::Events { progress, events }) => {
                    watch.first = (progress, events);
                    return Ok(watch);
                }
                Ok(other) => {
                    let e = ClientError::Protocol(format!("watch answered {other:?}"));
                    return Err(Some(e));
                }
                Err(e) => match self.learn((region_id, epoch), &e) {
                    Routing::Retry { hinted: true } => {}
                    Routing::Retry { hinted: false } | Routing::Backoff => {
                        self.backoff(attempt, deadline).await;
                    }
                    Routing::Other if e.code() == ErrorCode::Timeout => {
                        self.backoff(attempt, deadline).await;
                    }
                    Routing::Reload | Routing::Other => return Err(Some(wire_to_client(e))),
                },
            }
        }
        Err(None)
    }

    /// Acts on a routing verdict: retries at once, after a pause, or after
    /// reloading the table (unless another task did since `generation`);
    /// false for [`Routing::Other`], which is the caller's to handle.
    pub(crate) async fn follow(
        &self,
        routing: Routing,
        attempt: u32,
        (deadline, generation): (Instant, u64),
    ) -> bool {
        match routing {
            Routing::Retry { hinted: true } => {}
            Routing::Retry { hinted: false } | Routing::Backoff => {
                self.backoff(attempt, deadline).await;
            }
            Routing::Reload => {
                let _ = self.reload_after(generation, deadline).await;
            }
            Routing::Other => return false,
        }
        true
    }

    /// What error `e` of a request routed to `routed` means, learnt into
    /// the table (a leader hint, a stale table). The table may have been
    /// replaced meanwhile: only the entry the request used learns.
    pub(crate) fn learn(
        &self,
        (region_id, epoch): Routed,
        e: &crate::message::WireError,
    ) -> Routing {
        let mut st = self.inner.state.lock().unwrap();
        match st.routes.position(region_id) {
            Some(j) if same_range((region_id, st.routes[j].region.epoch), (region_id, epoch)) => {
                st.routes.on_error(j, e)
            }
            _ => classify(e),
        }
    }

    pub(crate) fn forget_leader(&self, region_id: u64, epoch: corekv_types::Epoch) {
        let mut st = self.inner.state.lock().unwrap();
        if let Some(j) = st.routes.position(region_id) {
            if st.routes[j].region.epoch == epoch {
                st.routes.forget_leader(j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        Inner::new(ClientConfig::new(vec!["127.0.0.1:1".into()]))
    }

    #[test]
    fn writes_in_flight_at_once_never_share_a_session() {
        let i = inner();
        let a = i.lend_session();
        let b = i.lend_session();
        assert_ne!(a.tag.client_id, b.tag.client_id);
        assert_eq!((a.tag.seq, b.tag.seq), (1, 1));
        let a_id = a.tag.client_id;
        drop(a);
        // A session given back is reused with the next sequence number.
        let c = i.lend_session();
        assert_eq!((c.tag.client_id, c.tag.seq), (a_id, 2));
        assert!(!c.tag.retry);
        drop((b, c));
        assert_eq!(i.sessions.lock().unwrap().len(), 2);
    }
}
