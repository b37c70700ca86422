//! The load loop: simulated clients on glommio executors, each keeping up to
//! `pipeline` requests in flight over its own connections.
//!
//! corekv clients route each request to the leader of its key's region, on
//! the port of the shard serving it there when the node has shard ports
//! (one connection per node shard, or per node, per client) and batch everything they send in one go
//! into one frame per node. Redis clients pipeline RESP commands on one
//! connection. In open-loop mode (`rate`), each client sends on a fixed
//! schedule and latency is measured from the *intended* send time, so a stall
//! shows up in the latencies instead of hiding behind fewer requests
//! (coordinated omission).
//!
//! # Layout
//! - this file: the load spec, the executors, the generator, the clients'
//!   shared state and completion;
//! - `corekv`: corekv clients (routing, shard ports, batching);
//! - `redis`: Redis clients (RESP pipelining).
//! - `async_client`: the load through `corekv_client::AsyncClient` on tokio
//!   (`--client async`), to measure the library against this driver.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::{Condition, Consistency, WriteRequest};
use corekv_net::frame::FrameBuffer;
use corekv_net::message::{
    decode_frame, encode_client_hello, encode_requests, Frame, Op, Outcome, Request, RouteInfo,
};
use corekv_net::routing::RouteTable;
use corekv_net::wake::Wake;
use corekv_net::wire::ErrorCode;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::report::{OpKind, Stats};

/// The login of every connection to corekv the driver makes (set once, by
/// the binary, when the cluster has authentication on).
pub static LOGIN: std::sync::OnceLock<corekv_net::Credentials> = std::sync::OnceLock::new();

/// TLS of every connection to corekv the driver makes (set once, by the
/// binary, when the cluster has TLS).
pub static TLS: std::sync::OnceLock<corekv_net::tls::ClientTls> = std::sync::OnceLock::new();

/// Client settings for `endpoints` with the driver's login and TLS.
pub fn client_config(endpoints: Vec<String>) -> corekv_net::ClientConfig {
    let mut cfg = corekv_net::ClientConfig::new(endpoints);
    cfg.credentials = LOGIN.get().cloned();
    cfg.tls = TLS.get().cloned();
    cfg
}
use crate::workload::{KeyDist, KeyPicker, KeyTable, Mix};

mod async_client;
mod corekv;
mod redis;

pub use async_client::run_async;

use corekv::corekv_client;
use redis::redis_client;

/// What to run against.
#[derive(Clone, Debug)]
pub enum Target {
    /// A corekv cluster: its routing table and node client addresses.
    Corekv {
        /// Regions with their leaders.
        routes: Vec<RouteInfo>,
        /// Node id → client address.
        nodes: HashMap<u64, String>,
        /// Node id → per-shard client ports (empty: send everything to the
        /// node's client address).
        shard_ports: HashMap<u64, Vec<u16>>,
    },
    /// Servers speaking the Redis protocol at these `host:port`s (a
    /// redis-server, or corekv nodes' `--resp-listen`): connection i goes to
    /// address i modulo their number.
    Redis(Vec<String>),
}

/// One phase of load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Operation mix.
    pub mix: Mix,
    /// Keys `0..keys`.
    pub keys: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Key distribution.
    pub dist: KeyDist,
    /// Simulated clients.
    pub clients: usize,
    /// Requests in flight per client.
    pub pipeline: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Open loop: total operations per second (None = closed loop).
    pub rate: Option<f64>,
    /// Read consistency (corekv).
    pub consistency: Consistency,
    /// Generator threads (glommio executors).
    pub threads: usize,
    /// Write every key once, in order, instead of the mix (preload).
    pub preload: bool,
    /// Seed of the key and operation choices.
    pub seed: u64,
}

/// Counters the progress line reads while the load runs.
#[derive(Default)]
pub struct Progress {
    /// Operations completed successfully.
    pub done: AtomicU64,
    /// Operations failed.
    pub failed: AtomicU64,
    /// Set to stop early.
    pub stop: AtomicBool,
}

struct Shared {
    keys: KeyTable,
    spec: LoadSpec,
    target: Target,
    progress: Arc<Progress>,
    next_preload: AtomicU64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs `spec` against `target`; returns the merged stats and the measured
/// time.
pub fn run(
    spec: LoadSpec,
    target: Target,
    progress: Arc<Progress>,
) -> anyhow::Result<(Stats, Duration)> {
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let threads = spec.threads.max(1);
    let shared = Arc::new(Shared {
        keys: KeyTable::new(spec.keys),
        spec,
        target,
        progress,
        next_preload: AtomicU64::new(0),
        start,
        measure_from,
        end,
    });
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (shared, results) = (shared.clone(), results.clone());
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("bench-{t}"))
            .spawn(move || async move {
                let mut tasks = Vec::new();
                let clients = shared.spec.clients;
                for c in (t..clients).step_by(threads) {
                    let shared = shared.clone();
                    tasks.push(glommio::spawn_local(async move { client(shared, c).await }));
                }
                let mut stats = Stats::default();
                for task in tasks {
                    stats.merge(&task.await);
                }
                results.lock().unwrap().push(stats);
            })
            .map_err(|e| anyhow::anyhow!("starting a generator executor: {e}"))?;
        handles.push(h);
    }
    for h in handles {
        h.join()
            .map_err(|e| anyhow::anyhow!("generator thread: {e:?}"))?;
    }
    let mut stats = Stats::default();
    for s in results.lock().unwrap().iter() {
        stats.merge(s);
    }
    let elapsed = if shared.spec.preload {
        shared.start.elapsed()
    } else {
        shared.spec.duration
    };
    Ok((stats, elapsed))
}

/// An operation sent and not answered yet.
#[derive(Clone, Copy)]
struct Sent {
    kind: OpKind,
    at: Instant,
    region: u64,
    /// The key (preload retries it) and how many times it was sent before.
    key: u64,
    attempt: u32,
}

/// Times a preload write is sent before the preload gives up on its key.
const PRELOAD_ATTEMPTS_MAX: u32 = 20;

struct ClientState {
    stats: RefCell<Stats>,
    inflight: Cell<usize>,
    done: Cell<u64>,
    failed: Cell<u64>,
    wake: Wake,
    shared: Arc<Shared>,
    /// The routing table (corekv targets), updated by every answer: leader
    /// hints from NotLeader; stale after EpochNotMatch or RegionNotFound
    /// (reloaded before the next request).
    routes: RefCell<RouteTable>,
    /// Preload: keys whose write failed (a leader moved, a region split),
    /// to send again, with the attempts made.
    retry: RefCell<Vec<(u64, u32)>>,
}

impl ClientState {
    /// Publishes the counts since the last call to the progress line (once per
    /// batch of answers: a shared atomic per operation would be contended).
    fn publish(&self) {
        let p = &self.shared.progress;
        p.done.fetch_add(self.done.replace(0), Ordering::Relaxed);
        p.failed
            .fetch_add(self.failed.replace(0), Ordering::Relaxed);
    }

    fn complete(&self, sent: Sent, now: Instant, result: Result<(), &str>) {
        let s = &self.shared;
        match result {
            Ok(()) => {
                self.done.set(self.done.get() + 1);
                if sent.at >= s.measure_from && now <= s.end || s.spec.preload {
                    self.stats.borrow_mut().record(sent.kind, now - sent.at);
                }
            }
            Err(kind) => {
                self.failed.set(self.failed.get() + 1);
                if now >= s.measure_from || s.spec.preload {
                    self.stats.borrow_mut().error(kind);
                }
                // A preload writes every key: what a leader move or a split
                // refused is sent again, not given up.
                if s.spec.preload && sent.attempt + 1 < PRELOAD_ATTEMPTS_MAX {
                    self.retry.borrow_mut().push((sent.key, sent.attempt + 1));
                }
            }
        }
        self.inflight.set(self.inflight.get() - 1);
        self.wake.notify();
    }
}

/// What the generator decided to send next.
struct NextOp {
    kind: OpKind,
    key: u64,
    intended: Instant,
    /// Times it was sent before (preload retries).
    attempt: u32,
}

/// What one refill of the pipeline ended with.
struct Refilled {
    /// The run is over for this client.
    done: bool,
    /// Open loop: nothing is due before this.
    wake_at: Option<Instant>,
}

impl ClientState {
    /// Fills the pipeline: takes operations while fewer than `pipeline` are
    /// in flight (once below the refill mark) and hands each to `send`,
    /// which queues it as the protocol wants.
    fn refill(
        &self,
        gen: &mut Generator,
        now: Instant,
        mut send: impl FnMut(&NextOp) -> anyhow::Result<()>,
    ) -> anyhow::Result<Refilled> {
        let spec = &self.shared.spec;
        let mut turn = Refilled {
            done: false,
            wake_at: None,
        };
        if self.inflight.get() >= refill_below(spec, gen.interval.is_some()) {
            return Ok(turn);
        }
        while self.inflight.get() < spec.pipeline {
            match self.next_op(gen, now) {
                Ok(Some(op)) => {
                    send(&op)?;
                    self.inflight.set(self.inflight.get() + 1);
                }
                Ok(None) => {
                    turn.done = true;
                    break;
                }
                Err(at) => {
                    turn.wake_at = Some(at);
                    break;
                }
            }
        }
        Ok(turn)
    }

    /// The next operation: a preload retry first, else the generator's. A
    /// preload is over once every key was sent and nothing is in flight or
    /// waiting to be sent again.
    fn next_op(&self, gen: &mut Generator, now: Instant) -> Result<Option<NextOp>, Instant> {
        let preload = self.shared.spec.preload;
        if preload {
            if let Some((key, attempt)) = self.retry.borrow_mut().pop() {
                return Ok(Some(NextOp {
                    kind: OpKind::Write,
                    key,
                    intended: now,
                    attempt,
                }));
            }
        }
        match gen.next(&self.shared, now) {
            // Answers still due may ask for retries: wait for them.
            Ok(None) if preload && self.inflight.get() > 0 => Err(now + Duration::from_millis(50)),
            other => other,
        }
    }
}

struct Generator {
    rng: SmallRng,
    picker: KeyPicker,
    interval: Option<Duration>,
    next_at: Instant,
}

impl Generator {
    fn new(shared: &Shared, client: usize) -> Generator {
        let spec = &shared.spec;
        let interval = spec
            .rate
            .map(|r| Duration::from_secs_f64(spec.clients as f64 / r.max(1e-9)));
        Generator {
            rng: SmallRng::seed_from_u64(
                spec.seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            picker: KeyPicker::new(spec.keys, &spec.dist),
            interval,
            next_at: shared.start,
        }
    }

    /// The next operation, or the time to wait until (open loop), or None
    /// when the run is over.
    fn next(&mut self, shared: &Shared, now: Instant) -> Result<Option<NextOp>, Instant> {
        if now >= shared.end || shared.progress.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let spec = &shared.spec;
        if spec.preload {
            let k = shared.next_preload.fetch_add(1, Ordering::Relaxed);
            if k >= spec.keys {
                return Ok(None);
            }
            return Ok(Some(NextOp {
                kind: OpKind::Write,
                key: k,
                intended: now,
                attempt: 0,
            }));
        }
        let intended = match self.interval {
            Some(iv) => {
                if self.next_at > now {
                    return Err(self.next_at);
                }
                let at = self.next_at;
                self.next_at += iv;
                at
            }
            None => now,
        };
        let kind = if self.rng.gen_range(0..100) < spec.mix.read_percent() {
            OpKind::Read
        } else {
            OpKind::Write
        };
        Ok(Some(NextOp {
            kind,
            key: self.picker.next(&mut self.rng),
            intended,
            attempt: 0,
        }))
    }
}

async fn client(shared: Arc<Shared>, index: usize) -> Stats {
    let now = Instant::now();
    if shared.start > now {
        glommio::timer::sleep(shared.start - now).await;
    }
    let state = Rc::new(ClientState {
        stats: RefCell::new(Stats::default()),
        inflight: Cell::new(0),
        done: Cell::new(0),
        failed: Cell::new(0),
        wake: Wake::default(),
        shared: shared.clone(),
        routes: RefCell::new(match &shared.target {
            Target::Corekv { routes, .. } => RouteTable::new(routes.clone()),
            Target::Redis(_) => RouteTable::default(),
        }),
        retry: RefCell::new(Vec::new()),
    });
    let result = match &shared.target {
        Target::Corekv { .. } => corekv_client(state.clone(), index).await,
        Target::Redis(addrs) => {
            let addr = addrs[index % addrs.len()].clone();
            redis_client(state.clone(), addr, index).await
        }
    };
    if let Err(e) = result {
        state.stats.borrow_mut().error(&format!("connection: {e}"));
    }
    let s = state.stats.borrow().clone();
    s
}

/// In-flight count under which a client sends more. A closed-loop client
/// sends its whole pipeline at once and waits for every answer before the
/// next batch — what `redis-benchmark -P` does — so both tools put the same
/// load on a server; an open-loop client sends on its schedule.
fn refill_below(spec: &LoadSpec, open_loop: bool) -> usize {
    if open_loop {
        spec.pipeline
    } else {
        1
    }
}

/// Waits for a completion, or until `until`, whichever comes first.
async fn wait(state: &ClientState, until: Option<Instant>) {
    match until {
        Some(t) => {
            let d = t.saturating_duration_since(Instant::now());
            futures_lite::future::or(state.wake.wait(), glommio::timer::sleep(d)).await;
        }
        None => state.wake.wait().await,
    }
}

/// Waits (bounded) for the operations in flight after the run ended.
async fn drain(state: &ClientState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.inflight.get() > 0 && Instant::now() < deadline {
        wait(state, Some(deadline)).await;
    }
}
