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
//!
//! # Layout
//! - this file: the shard's state, its inbox, its tasks (round loop,
//!   ticker, log-writer listener) and what they queue;
//! - `round`: one round, in order;
//! - `requests`: client requests handed to replicas, and their answers;
//! - `handover`: splits opened, replicas handed to other shards, membership;
//! - `housekeeping`: metrics, status board, faults, automatic splits,
//!   preferred leaders;
//! - `flush`: a round's output to nodes, shards and connections;
//! - `handlers`: the connection and transport handlers that fill the inbox.
//!
//! The order of a round and its log side (sequence numbers, readies
//! released when their batch is durable) are `corekv_engine::round`, which
//! the simulator drives too; this crate gives it the shard's I/O.

use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_engine::admin::{self, AdminCommand};
use corekv_engine::peer::{Reply, Response as EngineResponse};
use corekv_engine::round::{Flow, RoundHost, RoundInbox, ShardRound};
use corekv_engine::{db, route_hash, RaftEnvelope, Replicas};
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

mod flush;
mod handlers;
mod handover;
mod housekeeping;
mod requests;
mod round;

pub use handlers::{ShardClients, ShardPeers};
use requests::push_response;

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

/// What arrived since the last round: the engine round's part, and the
/// client requests.
#[derive(Default)]
struct Inbox {
    round: RoundInbox,
    requests: VecDeque<(Origin, Request)>,
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
    /// The engine's round: log batches handed to the log writer and not
    /// yet durable.
    round: RefCell<ShardRound>,
    inbox: RefCell<Inbox>,
    state: RefCell<State>,
    wake: Wake,
    conns: Connections,
    transport: OnceCell<Rc<Transport>>,
    mesh: OnceCell<Rc<Senders<ShardMsg>>>,
    done_tx: crate::log_writer::Done,
    /// Fault-injection rules applied by the transport (empty = none).
    pub faults: Rc<RefCell<FaultRules>>,
    fault_file: RefCell<Option<FaultFile>>,
    metrics: RefCell<ShardMetrics>,
    /// Requests answered per region since the last status refresh:
    /// (reads, writes).
    region_ops: RefCell<HashMap<u64, (u64, u64), ahash::RandomState>>,
    rates_at: std::cell::Cell<Instant>,
    /// Every replica slept at the end of the last round: the ticker waits a
    /// beat interval instead of a tick.
    all_asleep: std::cell::Cell<bool>,
    /// Sampled request keys (`ctl hotkeys`).
    hot_keys: RefCell<crate::hotkeys::HotKeys>,
    /// Cache (hits, misses) at the last status refresh.
    cache_at_status: std::cell::Cell<(u64, u64)>,
    last_counters: std::cell::Cell<corekv_engine::peer::PeerCounters>,
    watches: RefCell<Watches>,
    /// Region backups being fetched (`ctl backup`).
    backups: RefCell<crate::backup::Backups>,
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
        done_tx: crate::log_writer::Done,
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
            round: RefCell::new(ShardRound::default()),
            inbox: RefCell::new(Inbox::default()),
            state: RefCell::new(State {
                pending: HashMap::default(),
                next_id: 1,
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
            all_asleep: std::cell::Cell::new(false),
            hot_keys: RefCell::new(Default::default()),
            cache_at_status: std::cell::Cell::new((0, 0)),
            last_counters: Default::default(),
            watches: RefCell::new(Watches::new(WatchLimits {
                watchers_max,
                ..WatchLimits::default()
            })),
            backups: RefCell::new(Default::default()),
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
        self.inbox.borrow_mut().round.tick = true;
        self.wake.notify();
    }

    /// Records that the log writer made rounds up to `seq` durable.
    pub fn on_persisted(&self, seq: u64) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.round.persisted_seq = inbox.round.persisted_seq.max(seq);
        drop(inbox);
        self.wake.notify();
    }

    /// Takes a message from another shard.
    pub fn on_shard_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Raft(envs) => self.inbox.borrow_mut().round.raft.extend(envs),
            ShardMsg::Open(region, led) => self.inbox.borrow_mut().round.open.push((region, led)),
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

    /// Ticks until the shard stops; re-reads the fault file every 10
    /// ticks. While every replica sleeps, a tick comes every beat interval
    /// instead (see `corekv_engine::hibernate`).
    pub async fn run_ticker(me: Weak<Self>, tick: Duration) {
        let mut n = 0u64;
        let mut idle_tick = tick;
        if let Some(s) = me.upgrade() {
            s.greet_nodes();
            idle_tick = Duration::from_millis(s.node.cfg.engine.beat_interval()).max(tick);
        }
        let mut asleep = false;
        loop {
            glommio::timer::sleep(if asleep { idle_tick } else { tick }).await;
            let Some(s) = me.upgrade() else { return };
            if s.state.borrow().stopped {
                return;
            }
            n += 1;
            if n.is_multiple_of(10) {
                s.poll_faults();
            }
            s.on_tick();
            // Let the round with this tick run first: it may wake a replica
            // (then ticks come every tick again).
            drop(s);
            futures_lite::future::yield_now().await;
            let Some(s) = me.upgrade() else { return };
            asleep = s.all_asleep.get();
        }
    }

    /// Takes the log writer's reports: waits for a ring of the doorbell
    /// (`bell`, the shard's end of the socket [`crate::log_writer::Done`]
    /// rings), then takes every sequence number queued. Ends at the first
    /// ring after the shard stopped or went, or when the socket closes (else
    /// with its executor).
    pub async fn run_persist_listener(
        me: Weak<Self>,
        rx: crossbeam_channel::Receiver<u64>,
        mut bell: glommio::net::UnixStream,
    ) {
        use futures_lite::AsyncReadExt;
        let mut rings = [0u8; 256];
        loop {
            let mut max = 0;
            while let Ok(s) = rx.try_recv() {
                max = max.max(s);
            }
            {
                let Some(s) = me.upgrade() else { return };
                if max > 0 {
                    s.on_persisted(max);
                }
                if s.state.borrow().stopped {
                    return;
                }
            }
            match bell.read(&mut rings).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    let Some(s) = me.upgrade() else { return };
                    s.fatal("log writer doorbell", e);
                }
            }
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
}
