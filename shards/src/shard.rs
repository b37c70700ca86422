//! One shard: a glommio executor pinned to a core, owning a set of region
//! replicas and running the round of DESIGN §5 over them.
//!
//! Tasks on the shard (client connections, peer connections, the ticker, the
//! log-writer listener, the cross-shard mesh) only push work into the shard's
//! inbox and wake the round loop. A round: take the inbox (bounded) → tick /
//! step / propose / read → collect every region's ready into one log batch and
//! one apply batch → write the apply batch (no sync) → send messages that may
//! leave now and answers → hand the log batch to the log writer. When the log
//! writer reports a round durable, the held-back messages go out and raft is
//! told. Nothing on the hot path takes a lock.

use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_engine::admin::{self, AdminCommand};
use corekv_engine::peer::{Reply, Response as EngineResponse};
use corekv_engine::round::{LogPipeline, Staged};
use corekv_engine::{db, route_hash, RaftEnvelope, Replicas, Round};
use corekv_net::faults::{FaultFile, FaultRules};
use corekv_net::message::{NodeInfo, Op, Outcome, Request, Response, RouteInfo, WireError};
use corekv_net::server::{ClientConn, Connections, RequestHandler, WatchLink};
use corekv_net::status::Role;
use corekv_net::transport::{RaftHandler, Transport};
use corekv_net::wire::ErrorCode;
use glommio::channels::channel_mesh::Senders;

use crate::autosplit::LoadTracker;
use crate::bootstrap::preferred_leader;
use crate::log_writer::WriteTask;
use crate::metrics::{ShardFigures, ShardMetrics};
use crate::node::{wall_ms, NodeShared, RegionRow};
use crate::watch::{WatchFrame, WatchLimits, WatchTarget, Watches};
use bytes::Bytes;
use corekv_net::wake::Wake;

/// Work items handled per round at most (the rest waits for the next round).
pub const ROUND_REQUESTS_MAX: usize = 8192;
/// Raft messages handled per round at most.
pub const ROUND_MESSAGES_MAX: usize = 8192;
/// Requests one shard holds at once (proposed or waiting to be read).
pub const PENDING_REQUESTS_MAX: usize = 200_000;
/// Check leader placement every this many ticks.
pub const BALANCE_EVERY_TICKS: u64 = 100;
/// Refresh metrics every this many ticks.
pub const REPORT_EVERY_TICKS: u64 = 10;
/// Refresh the status board (and per-region rates) every this many ticks.
pub const STATUS_EVERY_TICKS: u64 = 100;
/// Request id of splits the shard starts by itself (client requests count
/// up from 1).
const AUTO_SPLIT_ID: u64 = u64::MAX;

/// Orders a new region's peers so the first (its preferred leader) is on
/// the node other than `me` that leads the fewest regions now, so the two
/// halves of a split are led from different nodes.
fn prefer_least_leading(
    peers: &mut [corekv_engine::PeerMeta],
    me: u64,
    router: &crate::bootstrap::Router,
) {
    let leads = |node: u64| {
        (0..router.len())
            .filter(|&i| router.leader(i) == node)
            .count()
    };
    let best = (0..peers.len())
        .filter(|&i| peers[i].node_id != me && peers[i].role == corekv_engine::PeerRole::Voter)
        .min_by_key(|&i| (leads(peers[i].node_id), i));
    if let Some(best) = best {
        peers.swap(0, best);
    }
}

/// Messages between the shards of one node.
pub enum ShardMsg {
    /// Raft messages for regions the receiving shard owns.
    Raft(Vec<RaftEnvelope>),
    /// Client requests for regions the receiving shard owns.
    Requests {
        /// Shard holding the client connection.
        from_shard: usize,
        /// Connection on that shard.
        conn: u64,
        /// The requests.
        requests: Vec<Request>,
    },
    /// Answers for a connection of the receiving shard.
    Responses {
        /// Connection.
        conn: u64,
        /// The answers.
        responses: Vec<Response>,
    },
    /// A region replica the sending shard handed over (and whether it led
    /// there): open it here.
    Open(u64, bool),
    /// A frame of a watch served by the sending shard, for a connection of
    /// the receiving shard.
    Watch {
        /// Connection.
        conn: u64,
        /// The frame's response.
        response: Response,
        /// The watch's link.
        link: Arc<WatchLink>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Origin {
    Local { conn: u64, id: u64 },
    Remote { shard: usize, conn: u64, id: u64 },
}

impl Origin {
    fn client_id(&self) -> u64 {
        match self {
            Origin::Local { id, .. } | Origin::Remote { id, .. } => *id,
        }
    }

    /// The watch a request from here starts or names (`watch_id`).
    fn watch_target(&self, here: usize, watch_id: u64) -> WatchTarget {
        match *self {
            Origin::Local { conn, .. } => WatchTarget {
                shard: here,
                conn,
                watch_id,
            },
            Origin::Remote { shard, conn, .. } => WatchTarget {
                shard,
                conn,
                watch_id,
            },
        }
    }
}

#[derive(Default)]
struct Inbox {
    tick: bool,
    raft: Vec<RaftEnvelope>,
    requests: VecDeque<(Origin, Request)>,
    reports: Vec<(RaftEnvelope, bool)>,
    persisted_seq: u64,
    /// Replicas handed over by other shards, to open.
    open: Vec<(u64, bool)>,
}

/// A request handed to a replica and not answered yet.
struct Pending {
    origin: Origin,
    op: &'static str,
    region: u64,
    started: Instant,
}

struct State {
    pending: HashMap<u64, Pending, ahash::RandomState>,
    next_id: u64,
    /// Log batches handed to the log writer and not yet durable.
    log: LogPipeline,
    /// Replicas to hand over to another shard: (region, shard).
    moving: Vec<(u64, usize)>,
    ticks: u64,
    stop_since_ms: Option<u64>,
    stopped: bool,
}

/// A shard's state, shared by its tasks through `Rc`.
pub struct Shard {
    id: usize,
    node: Arc<NodeShared>,
    replicas: RefCell<Replicas>,
    inbox: RefCell<Inbox>,
    state: RefCell<State>,
    wake: Wake,
    conns: Connections,
    transport: OnceCell<Rc<Transport>>,
    mesh: OnceCell<Rc<Senders<ShardMsg>>>,
    done_tx: crossbeam_channel::Sender<u64>,
    /// Fault-injection rules applied by the transport (empty = none).
    pub faults: Rc<RefCell<FaultRules>>,
    fault_file: RefCell<Option<FaultFile>>,
    metrics: RefCell<ShardMetrics>,
    /// Requests answered per region since the last status refresh:
    /// (reads, writes).
    region_ops: RefCell<HashMap<u64, (u64, u64), ahash::RandomState>>,
    rates_at: std::cell::Cell<Instant>,
    last_counters: std::cell::Cell<corekv_engine::peer::PeerCounters>,
    watches: RefCell<Watches>,
    /// Watch frames waiting to go to other shards, in order, and whether a
    /// task is sending them.
    watch_out: RefCell<HashMap<usize, (VecDeque<WatchFrame>, bool)>>,
    /// This shard, for its own tasks.
    me: Weak<Shard>,
    /// The node's router and its version, reloaded when the version moves.
    router: RefCell<(u64, Arc<crate::bootstrap::Router>)>,
    /// Load of the regions led here, for splitting by load.
    load: RefCell<LoadTracker>,
}

/// Outputs of one round, grouped by destination.
#[derive(Default)]
struct Outbox {
    local: HashMap<u64, Vec<Response>>,
    remote: HashMap<(usize, u64), Vec<Response>>,
    forward: HashMap<(usize, u64), Vec<Request>>,
    raft: HashMap<u64, Vec<RaftEnvelope>>,
    raft_to_shards: HashMap<usize, Vec<RaftEnvelope>>,
    watch: Vec<WatchFrame>,
}

impl Shard {
    /// A shard over `replicas`; `done_tx` is the channel the log writer
    /// reports durable rounds on.
    pub fn new(
        id: usize,
        node: Arc<NodeShared>,
        replicas: Replicas,
        done_tx: crossbeam_channel::Sender<u64>,
    ) -> Rc<Shard> {
        let fault_file = node.cfg.fault_file.clone().map(FaultFile::new);
        let metrics = RefCell::new(node.metrics.shard(id));
        let watchers_max = node.cfg.watchers_max;
        let router = RefCell::new((node.router_version.load(Ordering::Acquire), node.router()));
        let load = RefCell::new(LoadTracker::new(node.cfg.split.clone(), node.now_ms()));
        Rc::new_cyclic(|me| Shard {
            load,
            router,
            me: me.clone(),
            watch_out: RefCell::new(HashMap::new()),
            id,
            node,
            replicas: RefCell::new(replicas),
            inbox: RefCell::new(Inbox::default()),
            state: RefCell::new(State {
                pending: HashMap::default(),
                next_id: 1,
                log: LogPipeline::default(),
                moving: Vec::new(),
                ticks: 0,
                stop_since_ms: None,
                stopped: false,
            }),
            wake: Wake::default(),
            conns: Connections::default(),
            transport: OnceCell::new(),
            mesh: OnceCell::new(),
            done_tx,
            faults: Rc::new(RefCell::new(FaultRules::default())),
            fault_file: RefCell::new(fault_file),
            metrics,
            region_ops: RefCell::new(HashMap::default()),
            rates_at: std::cell::Cell::new(Instant::now()),
            last_counters: Default::default(),
            watches: RefCell::new(Watches::new(WatchLimits {
                watchers_max,
                ..WatchLimits::default()
            })),
        })
    }

    /// Installs the raft transport.
    pub fn set_transport(&self, t: Rc<Transport>) {
        let _ = self.transport.set(t);
    }

    /// Installs the senders to the other shards.
    pub fn set_mesh(&self, m: Rc<Senders<ShardMsg>>) {
        let _ = self.mesh.set(m);
    }

    /// Releases the regions (and with them this shard's handles on the
    /// database) once the loop has stopped.
    pub fn close(&self) {
        self.replicas.borrow_mut().close();
    }

    /// Shard index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Marks a tick due.
    pub fn on_tick(&self) {
        self.inbox.borrow_mut().tick = true;
        self.wake.notify();
    }

    /// Records that the log writer made rounds up to `seq` durable.
    pub fn on_persisted(&self, seq: u64) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.persisted_seq = inbox.persisted_seq.max(seq);
        drop(inbox);
        self.wake.notify();
    }

    /// Takes a message from another shard.
    pub fn on_shard_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Raft(envs) => self.inbox.borrow_mut().raft.extend(envs),
            ShardMsg::Open(region, led) => self.inbox.borrow_mut().open.push((region, led)),
            ShardMsg::Requests {
                from_shard,
                conn,
                requests,
            } => {
                let mut inbox = self.inbox.borrow_mut();
                for r in requests {
                    let origin = Origin::Remote {
                        shard: from_shard,
                        conn,
                        id: r.id,
                    };
                    inbox.requests.push_back((origin, r));
                }
            }
            ShardMsg::Responses { conn, responses } => {
                if let Some(c) = self.conns.get(conn) {
                    c.send(&responses);
                }
                return;
            }
            ShardMsg::Watch {
                conn,
                response,
                link,
            } => {
                self.send_watch_frame(conn, &response, &link);
                return;
            }
        }
        self.wake.notify();
    }

    /// The round loop; returns when the node stops and this shard drained.
    pub async fn run(self: Rc<Self>) {
        loop {
            self.wake.wait().await;
            loop {
                let busy = self.round();
                if self.state.borrow().stopped {
                    return;
                }
                if !busy {
                    break;
                }
                glommio::yield_if_needed().await;
            }
        }
    }

    /// Ticks until the shard stops; re-reads the fault file every 10 ticks.
    pub async fn run_ticker(me: Weak<Self>, tick: Duration) {
        let mut n = 0u64;
        if let Some(s) = me.upgrade() {
            s.greet_nodes();
        }
        loop {
            glommio::timer::sleep(tick).await;
            let Some(s) = me.upgrade() else { return };
            if s.state.borrow().stopped {
                return;
            }
            n += 1;
            if n.is_multiple_of(10) {
                s.poll_faults();
            }
            s.on_tick();
        }
    }

    /// Shard 0 opens a link to every other node at start, so that each
    /// learns this node's client address (and greets back: see
    /// `on_peer`) even before a raft message is due, as a node that joined
    /// and holds no replica yet needs to reach the meta region.
    fn greet_nodes(&self) {
        if self.id != 0 {
            return;
        }
        let ids: Vec<u64> = self
            .node
            .peer_addrs
            .read()
            .map(|a| a.keys().copied().collect())
            .unwrap_or_default();
        if let Some(t) = self.transport.get() {
            for id in ids {
                t.greet(id);
            }
        }
    }

    fn poll_faults(&self) {
        let mut file = self.fault_file.borrow_mut();
        let Some(f) = file.as_mut() else { return };
        match f.poll() {
            Some(Ok(rules)) => {
                if *self.faults.borrow() != rules {
                    tracing::warn!(shard = self.id, ?rules, "fault injection rules changed");
                }
                if rules.fail_log_write {
                    self.node.fail_log_write.store(true, Ordering::SeqCst);
                }
                *self.faults.borrow_mut() = rules;
            }
            Some(Err(e)) => tracing::error!(shard = self.id, "fault file ignored: {e}"),
            None => {}
        }
    }

    /// Waits for the log writer's reports (on a helper thread, since a
    /// crossbeam receiver cannot wake the executor).
    pub async fn run_persist_listener(me: Weak<Self>, rx: crossbeam_channel::Receiver<u64>) {
        loop {
            let r = rx.clone();
            let got = glommio::executor()
                .spawn_blocking(move || {
                    let first = r.recv_timeout(Duration::from_millis(200));
                    let mut max = match first {
                        Ok(s) => s,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Some(0),
                        Err(_) => return None,
                    };
                    while let Ok(s) = r.try_recv() {
                        max = max.max(s);
                    }
                    Some(max)
                })
                .await;
            let Some(s) = me.upgrade() else { return };
            match got {
                Some(0) => {}
                Some(seq) => s.on_persisted(seq),
                None => return,
            }
            if s.state.borrow().stopped {
                return;
            }
        }
    }

    /// Counts an answered request; logs it if slow.
    fn count(
        &self,
        op: &'static str,
        region: u64,
        started: Instant,
        result: &Result<Outcome, WireError>,
    ) {
        let latency = started.elapsed();
        if region != 0 {
            let mut ops = self.region_ops.borrow_mut();
            let e = ops.entry(region).or_default();
            if op == "get" || op == "meta_get" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let mut m = self.metrics.borrow_mut();
        m.request(op, result_name(result), latency);
        if latency.as_millis() as u64 >= self.node.cfg.slow_request_ms {
            m.slow(op);
            tracing::warn!(
                shard = self.id,
                op,
                region,
                result = result_name(result),
                latency_ms = latency.as_millis() as u64,
                "slow request"
            );
        }
    }

    /// Copies the shard's figures into its metrics; logs snapshots and
    /// compactions since the last report.
    fn report(&self, replicas: &Replicas) {
        let transport = self
            .transport
            .get()
            .map(|t| t.figures())
            .unwrap_or_default();
        let totals = replicas.totals();
        let before = self.last_counters.replace(totals.counters);
        for (what, now, was) in [
            (
                "snapshots sent",
                totals.counters.snapshots_sent,
                before.snapshots_sent,
            ),
            (
                "snapshots installed",
                totals.counters.snapshots_applied,
                before.snapshots_applied,
            ),
        ] {
            if now > was {
                tracing::info!(shard = self.id, count = now - was, "{what}");
            }
        }
        if totals.counters.compactions > before.compactions {
            tracing::debug!(
                shard = self.id,
                count = totals.counters.compactions - before.compactions,
                "raft logs compacted"
            );
        }
        let figures = ShardFigures {
            totals,
            cache: replicas.cache_stats(),
            transport,
            connections: self.conns.len(),
            pending: self.state.borrow().pending.len(),
            watches: self.watches.borrow().figures(),
            forwarded: self.node.forwarded[self.id].load(Ordering::Relaxed),
        };
        self.metrics.borrow_mut().report(&figures);
    }

    /// Publishes this shard's region rows for `Status` requests.
    fn publish_status(&self, replicas: &Replicas) {
        let secs = self
            .rates_at
            .replace(Instant::now())
            .elapsed()
            .as_secs_f64()
            .max(1e-3);
        let ops = std::mem::take(&mut *self.region_ops.borrow_mut());
        let Ok(mut board) = self.node.board.lock() else {
            return;
        };
        // Replicas removed from this shard (destroyed) leave the board.
        board.regions.retain(|id, row| {
            row.shard != self.id || replicas.peer(*id).is_some_and(|p| p.is_initialized())
        });
        for p in replicas.iter().filter(|p| p.is_initialized()) {
            let s = p.status();
            let (reads, writes) = ops.get(&p.region_id()).copied().unwrap_or_default();
            board.regions.insert(
                p.region_id(),
                RegionRow {
                    region: p.region().clone(),
                    shard: self.id,
                    role: match s.role {
                        raft::StateRole::Leader => Role::Leader,
                        raft::StateRole::Follower => Role::Follower,
                        raft::StateRole::Candidate => Role::Candidate,
                        raft::StateRole::PreCandidate => Role::PreCandidate,
                    },
                    leader_node: p.leader_node().unwrap_or(0),
                    applied_index: s.applied_index,
                    commit_index: s.commit_index,
                    log_entries: (s.last_index + 1).saturating_sub(s.first_index),
                    read_ops_per_sec: reads as f64 / secs,
                    write_ops_per_sec: writes as f64 / secs,
                    check: p.last_check(),
                },
            );
        }
    }

    fn fatal(&self, what: &str, e: impl std::fmt::Display) -> ! {
        tracing::error!(shard = self.id, "{what}: {e}; stopping the node");
        eprintln!(
            "corekv: FATAL: shard {}: {what}: {e}; stopping the node",
            self.id
        );
        std::process::exit(crate::server::exit::SHARD_FATAL);
    }

    /// One round. Returns true if it did anything (another round may be due).
    fn round(&self) -> bool {
        let node = &self.node;
        let now = node.now_ms();
        let wall = wall_ms();
        let mut inbox = std::mem::take(&mut *self.inbox.borrow_mut());
        // Bound the work of one round; the rest goes back.
        let rest_requests = if inbox.requests.len() > ROUND_REQUESTS_MAX {
            inbox.requests.split_off(ROUND_REQUESTS_MAX)
        } else {
            VecDeque::new()
        };
        let rest_raft = if inbox.raft.len() > ROUND_MESSAGES_MAX {
            inbox.raft.split_off(ROUND_MESSAGES_MAX)
        } else {
            Vec::new()
        };
        if !rest_requests.is_empty() || !rest_raft.is_empty() {
            let mut ib = self.inbox.borrow_mut();
            ib.requests = rest_requests
                .into_iter()
                .chain(ib.requests.drain(..))
                .collect();
            let later = std::mem::take(&mut ib.raft);
            ib.raft = rest_raft;
            ib.raft.extend(later);
            self.wake.notify();
        }

        let mut busy = false;
        let mut replies: Vec<Reply> = Vec::new();
        let mut out = Outbox::default();
        let mut replicas = self.replicas.borrow_mut();
        let stopping = node.is_stopping();

        if inbox.tick {
            busy = true;
            replicas.tick(now, &mut replies);
            let ticks = {
                let mut st = self.state.borrow_mut();
                st.ticks += 1;
                st.ticks
            };
            if ticks % BALANCE_EVERY_TICKS == 0 && !stopping {
                self.balance_leaders(&mut replicas);
            }
            if !stopping {
                if let Err(e) = replicas.sweep_expired(wall) {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
            if ticks % REPORT_EVERY_TICKS == 0 {
                self.report(&replicas);
            }
            // Ten times as often in the first period, so the status a
            // node shows right after it started (`ctl regions` once `corekv
            // dev` says ready) already lists its regions and leaders.
            let early = ticks < STATUS_EVERY_TICKS && ticks % REPORT_EVERY_TICKS == 0;
            if ticks % STATUS_EVERY_TICKS == 0 || early {
                self.publish_status(&replicas);
            }
            if !stopping {
                self.split_by_load_or_size(&mut replicas, now, &mut replies);
            }
        }
        if self.hand_over(&mut replicas, &mut replies) {
            busy = true;
        }
        for (region, led) in inbox.open.drain(..) {
            busy = true;
            match replicas.open_region(region, led, &mut replies) {
                Ok(opened) => {
                    for r in opened {
                        tracing::info!(
                            shard = self.id,
                            region = r.id,
                            "replica handed over from another shard opened"
                        );
                    }
                }
                Err(e) => self.fatal("opening a replica handed over", e),
            }
        }
        for env in inbox.raft.drain(..) {
            busy = true;
            if let Err(e) = replicas.step(env, &mut replies) {
                self.fatal("raft step", e);
            }
        }
        for (env, delivered) in inbox.reports.drain(..) {
            replicas.report_delivery(&env, delivered);
        }
        // Rounds the log writer made durable.
        let released = self.state.borrow_mut().log.persisted(inbox.persisted_seq);
        if !released.is_empty() {
            busy = true;
            let mut msgs = Vec::new();
            replicas.on_persisted(released, &mut msgs);
            for m in msgs {
                self.route_raft(m, &mut out);
            }
        }
        for (origin, req) in inbox.requests.drain(..) {
            busy = true;
            self.handle_request(
                origin,
                req,
                &mut replicas,
                &mut replies,
                &mut out,
                stopping,
                (now, wall),
            );
        }

        let mut round = Round::default();
        if let Err(e) = replicas.collect(&mut round) {
            self.fatal("collecting ready", e);
        }
        let Round {
            log,
            mut apply,
            messages,
            replies: applied,
            persist,
        } = round;
        replies.extend(applied);
        if !apply.is_empty() {
            busy = true;
            if let Err(e) = db::write(&node.db, apply.take(), false) {
                self.fatal("apply write", e);
            }
        }
        // Written: regions split off may open, replicas removed go,
        // watchers see the changes.
        self.open_splits(&mut replicas, &mut replies);
        self.follow_membership(&mut replicas, &mut replies);
        {
            let mut watches = self.watches.borrow_mut();
            watches.on_changes(&apply.take_changes(), now, &mut out.watch);
            watches.maintain(&replicas, &node.db, now, wall, &mut out.watch);
        }
        for m in messages {
            busy = true;
            self.route_raft(m, &mut out);
        }
        if !log.is_empty() || !persist.is_empty() {
            busy = true;
        }
        let staged = self.state.borrow_mut().log.stage(log, persist);
        match staged {
            Staged::Write { seq, batch } => {
                let task = WriteTask {
                    shard: self.id,
                    seq,
                    batch,
                    done: self.done_tx.clone(),
                };
                if node.log_tx.send(task).is_err() {
                    self.fatal("log writer", "stopped");
                }
            }
            Staged::Durable(persist) => {
                let mut msgs = Vec::new();
                replicas.on_persisted(persist, &mut msgs);
                for m in msgs {
                    self.route_raft(m, &mut out);
                }
            }
            Staged::Queued => {}
        }
        if let Err(e) = replicas.serve_reads(&mut replies) {
            self.fatal("serving reads", e);
        }
        if !replies.is_empty() {
            busy = true;
        }
        let mut st = self.state.borrow_mut();
        for r in replies {
            if r.id == AUTO_SPLIT_ID {
                if let Err(e) = &r.result {
                    tracing::warn!(error = %e, "automatic split not applied");
                }
                continue;
            }
            let Some(p) = st.pending.remove(&r.id) else {
                continue;
            };
            let result = match r.result {
                Ok(EngineResponse::Value(v)) => Ok(Outcome::Value(v)),
                Ok(EngineResponse::Write(w)) => Ok(Outcome::Write(w)),
                Err(e) if e.is_fatal() => {
                    drop(st);
                    self.fatal("request", e)
                }
                Err(e) => Err(WireError::from_engine(&e)),
            };
            self.count(p.op, p.region, p.started, &result);
            push_response(&mut out, p.origin, result);
        }
        self.metrics.borrow_mut().flush();
        // Leaders as this shard sees them, for routing answers.
        let router = self.router();
        for p in replicas.iter() {
            if let Some(i) = router.index_of(p.region_id()) {
                let leader = p.leader_node().unwrap_or(0);
                let before = router.set_leader(i, leader);
                if before != leader && leader != 0 {
                    tracing::info!(
                        shard = self.id,
                        region = p.region_id(),
                        leader_node = leader,
                        previous = before,
                        term = p.status().term,
                        "region leader changed"
                    );
                }
            }
        }
        if stopping {
            // Everything still pending is answered: the outcome of writes in
            // flight is unknown.
            for (_, p) in st.pending.drain() {
                let e = WireError::new(ErrorCode::Timeout, "node shutting down: outcome unknown");
                push_response(&mut out, p.origin, Err(e));
            }
            let since = *st.stop_since_ms.get_or_insert(now);
            // Wait (bounded) for log writes in flight, then stop.
            if st.log.is_drained() || now.saturating_sub(since) > 2000 {
                st.stopped = true;
            }
        }
        drop(st);
        drop(replicas);
        self.flush(out);
        busy
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_request(
        &self,
        origin: Origin,
        req: Request,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
        out: &mut Outbox,
        stopping: bool,
        (now, wall): (u64, u64),
    ) {
        let node = &self.node;
        let op = op_name(&req.op, req.system);
        let answer = |out: &mut Outbox, result: Result<Outcome, WireError>| {
            self.count(op, req.region_id, Instant::now(), &result);
            push_response(out, origin, result)
        };
        if stopping {
            let e = WireError::new(ErrorCode::ShuttingDown, "node shutting down");
            return answer(out, Err(e));
        }
        let key = match &req.op {
            Op::Routes => {
                return answer(out, Ok(self.routes()));
            }
            Op::Status => {
                return answer(out, Ok(Outcome::Status(crate::status::document(node))));
            }
            Op::Get { key, .. } => key.clone(),
            Op::Watch { keys, .. } => match keys.first() {
                Some(k) => k.clone(),
                None => {
                    let e = WireError::new(ErrorCode::InvalidRequest, "watch without a key");
                    return answer(out, Err(e));
                }
            },
            // Routed by the region id alone.
            Op::CancelWatch { .. }
            | Op::TransferLeader { .. }
            | Op::Split { .. }
            | Op::ChangePeer(_)
            | Op::MoveShard { .. }
            | Op::Check
                if req.region_id != 0 =>
            {
                Bytes::new()
            }
            Op::CancelWatch { .. }
            | Op::TransferLeader { .. }
            | Op::Split { .. }
            | Op::ChangePeer(_)
            | Op::MoveShard { .. }
            | Op::Check => {
                let e = WireError::new(ErrorCode::InvalidRequest, "request without a region id");
                return answer(out, Err(e));
            }
            Op::Write(w) if !req.system && w.keys().any(|k| corekv_engine::is_meta_key(k)) => {
                let e = WireError::new(
                    ErrorCode::InvalidRequest,
                    "keys beginning with 0xFF \"corekv/\" hold the cluster's metadata and are \
                     written by the cluster only",
                );
                return answer(out, Err(e));
            }
            Op::Write(w) if req.system => {
                if let Err(why) = corekv_net::meta::check_system_write(w) {
                    let e = WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("metadata write refused: {why}"),
                    );
                    return answer(out, Err(e));
                }
                match w.keys().next() {
                    Some(k) => k.clone(),
                    None => {
                        let e = WireError::new(ErrorCode::InvalidRequest, "write without a key");
                        return answer(out, Err(e));
                    }
                }
            }
            Op::Write(w) => match w.keys().next() {
                Some(k) => k.clone(),
                None => {
                    let e = WireError::new(ErrorCode::InvalidRequest, "write without a key");
                    return answer(out, Err(e));
                }
            },
        };
        let router = self.router();
        let index = if req.region_id != 0 {
            router.index_of(req.region_id)
        } else {
            router.index_of_hash(route_hash(&key))
        };
        let Some(index) = index else {
            let e = WireError::new(
                ErrorCode::RegionNotFound,
                format!(
                    "region {} has no replica on node {}",
                    req.region_id, node.cfg.node_id
                ),
            );
            return answer(out, Err(e));
        };
        let (region, owner) = router.get(index);
        if owner != self.id {
            if let Origin::Local { conn, .. } = origin {
                out.forward.entry((owner, conn)).or_default().push(req);
                return;
            }
            // The region moved to another shard while the request was
            // forwarded here: the client refreshes and retries.
            let e = WireError::new(
                ErrorCode::RegionNotFound,
                format!(
                    "region {} moved to another shard of node {}; retry",
                    region.id, node.cfg.node_id
                ),
            );
            return answer(out, Err(e));
        }
        let region_id = region.id;
        let current = replicas
            .peer(region_id)
            .map(|p| p.region().clone())
            .unwrap_or_else(|| region.clone());
        // A watch checks its keys itself (and says where a split moved them);
        // a shard move does not depend on the region's shape.
        let is_watch = matches!(req.op, Op::Watch { .. });
        if let Op::MoveShard { to_shard } = req.op {
            let to = to_shard as usize;
            let result = if to >= node.cfg.shards || to == self.id {
                Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "region {region_id} is on shard {} of {}: cannot move it to shard {to}",
                        self.id, node.cfg.shards
                    ),
                ))
            } else {
                let mut st = self.state.borrow_mut();
                if !st.moving.iter().any(|(r, _)| *r == region_id) {
                    st.moving.push((region_id, to));
                }
                tracing::info!(
                    region = region_id,
                    from = self.id,
                    to,
                    "shard move requested"
                );
                Ok(Outcome::Write(corekv_engine::WriteOutcome::Written {
                    version: 0,
                }))
            };
            return answer(out, result);
        }
        if req.region_id != 0 && req.epoch != current.epoch && !is_watch {
            let mut e = WireError::new(ErrorCode::EpochNotMatch, "region epoch changed");
            e.regions = vec![current];
            return answer(out, Err(e));
        }
        if matches!(req.op, Op::Get { .. } | Op::Write(_)) {
            // Off by default: no hashing or borrowing on the request path.
            let mut load = self.load.borrow_mut();
            if load.by_load() {
                load.record(region_id, route_hash(&key));
            }
        }
        match &req.op {
            Op::Watch { keys, from_version } => {
                let Some(peer) = replicas.peer(region_id) else {
                    let e = WireError::new(ErrorCode::RegionNotFound, "region not on this shard");
                    return answer(out, Err(e));
                };
                let target = origin.watch_target(self.id, req.id);
                let result = self.watches.borrow_mut().register(
                    target,
                    peer,
                    (keys.clone(), req.epoch),
                    *from_version,
                    &node.db,
                    now,
                    wall,
                    &mut out.watch,
                );
                // Accepted: the stream's first frame is the answer.
                if let Err(e) = result {
                    answer(out, Err(e));
                }
                return;
            }
            Op::CancelWatch { watch_id } => {
                let target = origin.watch_target(self.id, *watch_id);
                let existed = self.watches.borrow_mut().cancel(target);
                return answer(out, Ok(Outcome::Cancelled { existed }));
            }
            _ => {}
        }
        if let Op::Write(w) = &req.op {
            let adds_data = !matches!(w, corekv_engine::WriteRequest::Delete { .. });
            if adds_data && node.no_space.load(Ordering::Relaxed) {
                let e = WireError::new(
                    ErrorCode::NoSpace,
                    "node over its disk quota (--disk-quota-mb): writes that add data are \
                     refused until deletes free space; reads and deletes work",
                );
                return answer(out, Err(e));
            }
        }
        let mut st = self.state.borrow_mut();
        if st.pending.len() >= PENDING_REQUESTS_MAX {
            drop(st);
            let e = WireError::new(ErrorCode::Busy, "shard has too many requests pending");
            return answer(out, Err(e));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.pending.insert(
            id,
            Pending {
                origin,
                op,
                region: region_id,
                started: Instant::now(),
            },
        );
        drop(st);
        match req.op {
            Op::Get { key, consistency } => {
                // Fault injection only: skip ReadIndex on purpose.
                let consistency = if self.faults.borrow().stale_reads {
                    corekv_engine::Consistency::Stale
                } else {
                    consistency
                };
                replicas.read(region_id, id, key, consistency, now, replies)
            }
            Op::Write(w) => replicas.propose(region_id, id, w, req.session, wall, replies),
            Op::Split { split_hash } => match self.split_command(replicas, region_id, split_hash) {
                Ok(cmd) => {
                    tracing::info!(region = region_id, ?cmd, "split requested");
                    replicas.propose_admin(region_id, id, cmd, replies)
                }
                Err(e) => replies.push(Reply { id, result: Err(e) }),
            },
            Op::TransferLeader { to_node } => {
                tracing::info!(region = region_id, to_node, "preferred leader requested");
                let cmd = corekv_engine::admin::AdminCommand::PreferLeader { node_id: to_node };
                replicas.propose_admin(region_id, id, cmd, replies)
            }
            Op::ChangePeer(change) => {
                tracing::info!(region = region_id, ?change, "membership change requested");
                replicas.propose_change(region_id, id, change, replies)
            }
            Op::Check => {
                tracing::info!(region = region_id, "consistency check requested");
                replicas.propose_admin(region_id, id, AdminCommand::ComputeDigest, replies)
            }
            Op::Routes
            | Op::Status
            | Op::Watch { .. }
            | Op::CancelWatch { .. }
            | Op::MoveShard { .. } => {
                unreachable!("answered above")
            }
        }
    }

    /// The split of `region_id` at `split_hash` (0 = the middle of its
    /// range), with a new region id no region on this node has.
    fn split_command(
        &self,
        replicas: &Replicas,
        region_id: u64,
        split_hash: u64,
    ) -> Result<AdminCommand, corekv_engine::Error> {
        let region = replicas
            .peer(region_id)
            .ok_or(corekv_engine::Error::RegionNotFound(region_id))?
            .region()
            .clone();
        let split_hash = if split_hash != 0 {
            split_hash
        } else {
            region.middle()
        };
        // Ids come from the meta region's allocator (reserved ahead by
        // `meta`), so two splits anywhere never pick the same one.
        let new_region_id = crate::meta::take_region_id(&self.node).ok_or(
            corekv_engine::Error::Busy("no region id reserved from the meta region yet"),
        )?;
        let cmd = AdminCommand::Split {
            split_hash,
            new_region_id,
            new_peers: admin::split_peers(&region, new_region_id),
        };
        cmd.validate(&region)?;
        Ok(cmd)
    }

    /// Opens the replicas of regions split off this round (their state was
    /// just written) and those waiting for a replica they replace to
    /// finish its log writes; [`Shard::follow_membership`] shows them to
    /// the router. A region whose replica another shard of this node
    /// holds already (its messages created it there before the split was
    /// applied here) is opened by that shard.
    fn open_splits(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) {
        let (mut opened, elsewhere) = match replicas.open_splits(replies) {
            Ok(o) => o,
            Err(e) => self.fatal("opening a split region", e),
        };
        match replicas.open_waiting(replies) {
            Ok(more) => opened.extend(more),
            Err(e) => self.fatal("opening a replica", e),
        }
        for s in elsewhere {
            tracing::info!(
                shard = self.id,
                region = s.region.id,
                to = s.owner,
                "region split off; its replica is opened on the shard holding it"
            );
            if let Some(mesh) = self.mesh.get().cloned() {
                glommio::spawn_local(async move {
                    let _ = mesh
                        .send_to(s.owner, ShardMsg::Open(s.region.id, s.led))
                        .await;
                })
                .detach();
            }
        }
        for r in &opened {
            tracing::info!(
                shard = self.id,
                region = r.id,
                start = format_args!("{:016x}", r.start_hash),
                end = format_args!("{:016x}", r.end_hash),
                epoch = r.epoch.version,
                "region split off"
            );
        }
    }

    /// Hands the replicas asked to move to another shard over, each once
    /// none of its log writes is in flight: the placement is stored, the
    /// router points to the new shard (which gets requests and messages
    /// from now on) and that shard opens the replica from the database.
    /// Requests waiting here are answered as if the replica stopped.
    /// Returns true if one moved.
    fn hand_over(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) -> bool {
        if self.state.borrow().moving.is_empty() {
            return false;
        }
        let Some(mesh) = self.mesh.get().cloned() else {
            return false;
        };
        let moving = std::mem::take(&mut self.state.borrow_mut().moving);
        let mut moved = false;
        for (region, to) in moving {
            let Some(p) = replicas.peer(region) else {
                continue;
            };
            let led = p.is_leader();
            if replicas.take(region, to, replies).is_none() {
                // A log write of it is in flight: a later round.
                self.state.borrow_mut().moving.push((region, to));
                continue;
            }
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(
                db::cf(&self.node.db, corekv_engine::keys::CF_META),
                corekv_engine::keys::placement_key(region),
                (to as u32).to_be_bytes(),
            );
            if let Err(e) = db::write(&self.node.db, wb, true) {
                self.fatal("placement write", e);
            }
            self.node.move_region(region, to);
            self.board_forget(region);
            tracing::info!(
                region,
                from = self.id,
                to,
                "replica handed over to another shard"
            );
            let mesh = mesh.clone();
            glommio::spawn_local(async move {
                let _ = mesh.send_to(to, ShardMsg::Open(region, led)).await;
            })
            .detach();
            moved = true;
        }
        moved
    }

    fn board_forget(&self, region: u64) {
        if let Ok(mut board) = self.node.board.lock() {
            board.regions.remove(&region);
        }
    }

    /// Destroys the replicas removed from their regions and shows the
    /// router every replica whose range or members changed (a split, a
    /// membership change; a replica added here is routed to once its
    /// snapshot is in), storing the placement of the new ones.
    fn follow_membership(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) {
        let gone = match replicas.destroy_removed(replies) {
            Ok(g) => g,
            Err(e) => self.fatal("destroying a removed replica", e),
        };
        for r in &gone {
            tracing::info!(
                shard = self.id,
                region = r.id,
                "replica removed from this node"
            );
        }
        if !replicas.take_layout_changed() && gone.is_empty() {
            return;
        }
        let meta = db::cf(&self.node.db, corekv_engine::keys::CF_META);
        let mut wb = rocksdb::WriteBatch::default();
        let router = self.router();
        let mut mine = Vec::new();
        for p in replicas.iter().filter(|p| p.is_initialized()) {
            if router.index_of(p.region_id()).is_none() {
                tracing::info!(
                    shard = self.id,
                    region = p.region_id(),
                    "region now served on this shard"
                );
                wb.put_cf(
                    meta,
                    corekv_engine::keys::placement_key(p.region_id()),
                    (self.id as u32).to_be_bytes(),
                );
            }
            mine.push(p.region().clone());
        }
        if let Err(e) = db::write(&self.node.db, wb, false) {
            self.fatal("placement write", e);
        }
        self.node.update_shard_regions(self.id, mine);
    }

    fn routes(&self) -> Outcome {
        let node = &self.node;
        let router = self.router();
        let own = node.cfg.node_id;
        let regions = router
            .iter()
            .enumerate()
            .map(|(i, (r, shard))| {
                let leader_node = router.leader(i);
                RouteInfo {
                    region: r.clone(),
                    leader_node,
                    leader_shard: (leader_node == own).then_some(shard as u32),
                }
            })
            .collect();
        let regions = crate::meta::merged_routes(node, regions);
        let nodes = node
            .nodes
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        Outcome::Routes { regions, nodes }
    }

    /// Starts the split the load or size of a region led here calls for,
    /// if any (see [`crate::autosplit`]). The new region prefers the node
    /// leading the fewest regions, so the halves' leaders spread.
    fn split_by_load_or_size(&self, replicas: &mut Replicas, now: u64, replies: &mut Vec<Reply>) {
        let mut load = self.load.borrow_mut();
        if !load.enabled() {
            return;
        }
        let router = self.router();
        if router.len() as u64 >= crate::config::REGIONS_MAX {
            return;
        }
        let leading: Vec<corekv_engine::Region> = replicas
            .iter()
            .filter(|p| p.is_leader())
            .map(|p| p.region().clone())
            .collect();
        let sizes = self
            .node
            .board
            .lock()
            .map(|b| b.sizes.clone())
            .unwrap_or_default();
        let Some(plan) = load.decide(now, &leading, |id| sizes.get(&id).copied()) else {
            return;
        };
        drop(load);
        match self.split_command(replicas, plan.region_id, plan.split_hash) {
            Ok(mut cmd) => {
                if let corekv_engine::admin::AdminCommand::Split { new_peers, .. } = &mut cmd {
                    prefer_least_leading(new_peers, self.node.cfg.node_id, &router);
                }
                tracing::info!(
                    region = plan.region_id,
                    split_hash = format_args!("{:016x}", plan.split_hash),
                    reason = %plan.reason,
                    "splitting a region by itself"
                );
                replicas.propose_admin(plan.region_id, AUTO_SPLIT_ID, cmd, replies);
            }
            Err(e) => tracing::warn!(region = plan.region_id, error = %e, "automatic split"),
        }
    }

    /// Hands leadership of a region back to its preferred node once that node
    /// is caught up, so leaders stay spread over nodes.
    fn balance_leaders(&self, replicas: &mut Replicas) {
        let me = self.node.cfg.node_id;
        let ids: Vec<u64> = replicas
            .iter()
            .filter(|p| p.is_leader())
            .map(|p| p.region_id())
            .collect();
        for region_id in ids {
            let Some(p) = replicas.peer_mut(region_id) else {
                continue;
            };
            let preferred = preferred_leader(p.region());
            if preferred == me || preferred == 0 {
                continue;
            }
            let Some(target) = p.region().peer_on_node(preferred).map(|t| t.id) else {
                continue;
            };
            if p.is_caught_up(target) {
                tracing::info!(
                    region = region_id,
                    to_node = preferred,
                    "transferring leadership to the preferred node"
                );
                p.transfer_leader(target);
            }
        }
    }

    fn route_raft(&self, env: RaftEnvelope, out: &mut Outbox) {
        out.raft.entry(env.to_node).or_default().push(env);
    }

    /// This node's router as of the last split this shard saw.
    fn router(&self) -> Arc<crate::bootstrap::Router> {
        let version = self.node.router_version.load(Ordering::Acquire);
        let mut cached = self.router.borrow_mut();
        if cached.0 != version {
            *cached = (version, self.node.router());
        }
        cached.1.clone()
    }

    /// Routes incoming raft messages to the owning shard.
    fn accept_raft(&self, envs: Vec<RaftEnvelope>) {
        let router = self.router();
        let mut local = Vec::new();
        let mut out = Outbox::default();
        for env in envs {
            // A region not (yet) routed here goes to the shard holding a
            // replica of it, else to the shard a new replica of it belongs
            // on, which creates it if the message calls for one (see
            // `Replicas::step`).
            let owner = match router.index_of(env.region_id) {
                Some(i) => router.get(i).1,
                None => match self.node.directory.get(env.region_id) {
                    Some(c) => c.owner,
                    None => crate::bootstrap::default_shard(env.region_id, self.node.cfg.shards),
                },
            };
            if owner == self.id {
                local.push(env);
            } else {
                out.raft_to_shards.entry(owner).or_default().push(env);
            }
        }
        if !local.is_empty() {
            self.inbox.borrow_mut().raft.extend(local);
            self.wake.notify();
        }
        self.flush(out);
    }

    /// Queues a watch frame on connection `conn` of this shard; a frame for
    /// a connection that is gone tells the watch to stop.
    fn send_watch_frame(&self, conn: u64, response: &Response, link: &Arc<WatchLink>) {
        match self.conns.get(conn) {
            Some(c) => {
                c.send_watch(response, link);
            }
            None => link.close(),
        }
    }

    /// Sends a watch frame to the shard holding its connection. Frames to
    /// one shard leave in order (one sender task per shard at a time), so a
    /// watch's changes arrive in version order.
    fn forward_watch_frame(&self, mesh: &Rc<Senders<ShardMsg>>, f: WatchFrame) {
        let shard = f.target.shard;
        let start = {
            let mut q = self.watch_out.borrow_mut();
            let (queue, running) = q.entry(shard).or_default();
            queue.push_back(f);
            !std::mem::replace(running, true)
        };
        if !start {
            return;
        }
        let (mesh, me) = (mesh.clone(), self.me.clone());
        glommio::spawn_local(async move {
            loop {
                let next = {
                    let Some(s) = me.upgrade() else { return };
                    let mut q = s.watch_out.borrow_mut();
                    let (queue, running) = q.entry(shard).or_default();
                    let next = queue.pop_front();
                    if next.is_none() {
                        *running = false;
                    }
                    next
                };
                let Some(f) = next else { return };
                let msg = ShardMsg::Watch {
                    conn: f.target.conn,
                    response: f.response,
                    link: f.link.clone(),
                };
                if mesh.send_to(shard, msg).await.is_err() {
                    f.link.close();
                }
            }
        })
        .detach();
    }

    fn flush(&self, out: Outbox) {
        for (conn, resps) in out.local {
            if let Some(c) = self.conns.get(conn) {
                c.send(&resps);
            }
        }
        let mesh = self.mesh.get();
        for f in out.watch {
            if f.target.shard == self.id {
                self.send_watch_frame(f.target.conn, &f.response, &f.link);
            } else if let Some(m) = mesh {
                self.forward_watch_frame(m, f);
            }
        }
        if let Some(t) = self.transport.get() {
            for (to, envs) in out.raft {
                t.send(to, envs);
            }
        }
        for ((shard, conn), responses) in out.remote {
            if let Some(m) = mesh {
                let m = m.clone();
                // Answers must not be lost to a full queue: wait for room.
                glommio::spawn_local(async move {
                    let _ = m
                        .send_to(shard, ShardMsg::Responses { conn, responses })
                        .await;
                })
                .detach();
            }
        }
        for ((shard, conn), requests) in out.forward {
            let Some(m) = mesh else { continue };
            self.node.forwarded[self.id].fetch_add(requests.len() as u64, Ordering::Relaxed);
            if let Err(err) = m.try_send_to(
                shard,
                ShardMsg::Requests {
                    from_shard: self.id,
                    conn,
                    requests,
                },
            ) {
                if let Some(ShardMsg::Requests { requests, .. }) = returned(err) {
                    let resps: Vec<Response> = requests
                        .into_iter()
                        .map(|r| Response {
                            id: r.id,
                            result: Err(WireError::new(ErrorCode::Busy, "shard queue full")),
                        })
                        .collect();
                    if let Some(c) = self.conns.get(conn) {
                        c.send(&resps);
                    }
                }
            }
        }
        for (shard, envs) in out.raft_to_shards {
            if let Some(m) = mesh {
                // Raft tolerates loss: drop when the queue is full.
                let _ = m.try_send_to(shard, ShardMsg::Raft(envs));
            }
        }
    }
}

/// The message a failed channel send gives back.
fn returned<T>(e: glommio::GlommioError<T>) -> Option<T> {
    match e {
        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))
        | glommio::GlommioError::Closed(glommio::ResourceType::Channel(m)) => Some(m),
        _ => None,
    }
}

/// Metric label of an operation; the cluster's own reads and writes of the
/// meta region are `meta_get` and `meta_write`.
fn op_name(op: &Op, system: bool) -> &'static str {
    match op {
        Op::Get { .. } if system => "meta_get",
        Op::Write(_) if system => "meta_write",
        Op::Get { .. } => "get",
        Op::Routes => "routes",
        Op::Status => "status",
        Op::Watch { .. } => "watch",
        Op::CancelWatch { .. } => "cancel_watch",
        Op::TransferLeader { .. } => "transfer_leader",
        Op::Split { .. } => "split",
        Op::ChangePeer(_) => "change_peer",
        Op::MoveShard { .. } => "move_shard",
        Op::Check => "check",
        Op::Write(w) => match w {
            corekv_engine::WriteRequest::Put { .. } => "put",
            corekv_engine::WriteRequest::Delete { .. } => "delete",
            corekv_engine::WriteRequest::Cas { .. } => "cas",
            corekv_engine::WriteRequest::Incr { .. } => "incr",
            corekv_engine::WriteRequest::BatchPut { .. } => "batch_put",
        },
    }
}

/// Metric label of a result.
fn result_name(result: &Result<Outcome, WireError>) -> &'static str {
    use corekv_engine::WriteOutcome as W;
    match result {
        Ok(Outcome::Write(W::ConditionFailed { .. })) => "condition_failed",
        Ok(Outcome::Write(W::NotANumber)) => "not_a_number",
        Ok(Outcome::Write(W::WrongRegion)) => "epoch_not_match",
        Ok(Outcome::Write(W::ResultForgotten)) => "timeout",
        Ok(_) => "ok",
        Err(e) => match e.code {
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::EpochNotMatch => "epoch_not_match",
            ErrorCode::RegionNotFound => "region_not_found",
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Busy => "busy",
            ErrorCode::ProposalDropped => "proposal_dropped",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NoSpace => "no_space",
            _ => "internal",
        },
    }
}

fn push_response(out: &mut Outbox, origin: Origin, result: Result<Outcome, WireError>) {
    let r = Response {
        id: origin.client_id(),
        result,
    };
    match origin {
        Origin::Local { conn, .. } => out.local.entry(conn).or_default().push(r),
        Origin::Remote { shard, conn, .. } => out.remote.entry((shard, conn)).or_default().push(r),
    }
}

/// The client listener's view of a shard (weak: connection tasks must not
/// keep a stopped shard alive).
pub struct ShardClients(pub Weak<Shard>);

impl RequestHandler for ShardClients {
    fn on_requests(&self, conn: &Rc<ClientConn>, requests: Vec<Request>) {
        let Some(s) = self.0.upgrade() else {
            conn.close();
            return;
        };
        s.conns.insert(conn);
        let mut inbox = s.inbox.borrow_mut();
        for r in requests {
            let origin = Origin::Local {
                conn: conn.id,
                id: r.id,
            };
            inbox.requests.push_back((origin, r));
        }
        drop(inbox);
        s.wake.notify();
    }

    fn on_close(&self, conn_id: u64) {
        if let Some(s) = self.0.upgrade() {
            s.conns.remove(conn_id);
        }
    }
}

/// The raft transport's view of a shard (weak, as for clients).
pub struct ShardPeers(pub Weak<Shard>);

impl RaftHandler for ShardPeers {
    fn on_messages(&self, messages: Vec<RaftEnvelope>) {
        if let Some(s) = self.0.upgrade() {
            s.accept_raft(messages);
        }
    }

    fn on_peer(&self, node_id: u64, shard_count: u32, client_addr: String) {
        let Some(s) = self.0.upgrade() else { return };
        let info = NodeInfo {
            node_id,
            client_addr,
            shard_count,
        };
        let node = s.node.clone();
        if let Ok(mut nodes) = node.nodes.lock() {
            nodes.insert(node_id, info);
        };
        // Greet back, so the node learns this one's client address too.
        if let Some(t) = s.transport.get() {
            t.greet(node_id);
        }
    }

    fn on_report(&self, messages: Vec<RaftEnvelope>, delivered: bool) {
        let Some(s) = self.0.upgrade() else { return };
        s.inbox
            .borrow_mut()
            .reports
            .extend(messages.into_iter().map(|m| (m, delivered)));
        s.wake.notify();
    }
}
