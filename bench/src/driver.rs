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
    decode_frame, encode_hello, encode_requests, Frame, Op, Outcome, Request, RouteInfo,
};
use corekv_net::wake::Wake;
use corekv_net::wire::ErrorCode;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::report::{OpKind, Stats};
use crate::workload::{KeyDist, KeyPicker, KeyTable, Mix};

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
    /// A Redis server at `host:port`.
    Redis(String),
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
}

struct ClientState {
    stats: RefCell<Stats>,
    inflight: Cell<usize>,
    done: Cell<u64>,
    failed: Cell<u64>,
    wake: Wake,
    shared: Arc<Shared>,
    /// Stale route hints learned from NotLeader answers: region → node.
    leader_hints: RefCell<HashMap<u64, u64>>,
    /// A region split (EpochNotMatch or RegionNotFound answered): reload
    /// the routing table before the next request.
    routes_stale: Cell<bool>,
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
        leader_hints: RefCell::new(HashMap::new()),
        routes_stale: Cell::new(false),
    });
    let result = match &shared.target {
        Target::Corekv { .. } => corekv_client(state.clone(), index).await,
        Target::Redis(addr) => redis_client(state.clone(), addr.clone(), index).await,
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

// ------------------------------------------------------------------ corekv

struct NodeConn {
    writer: futures_lite::io::WriteHalf<TcpStream>,
}

fn error_name(code: ErrorCode) -> String {
    format!("{code:?}")
}

type SentMap = Rc<RefCell<HashMap<u64, Sent, ahash::RandomState>>>;

async fn connect_corekv(
    state: Rc<ClientState>,
    addr: &str,
    sent: SentMap,
) -> anyhow::Result<NodeConn> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(&encode_hello(0, 0, &[])).await?;
    let (mut reader, writer) = futures_lite::io::split(stream);
    glommio::spawn_local(async move {
        let mut frames = FrameBuffer::new(64 << 20);
        let mut greeted = false;
        loop {
            let spare = frames.spare(256 * 1024);
            let n = reader.read(spare).await.unwrap_or(0);
            frames.filled(256 * 1024, n);
            if n == 0 {
                // Connection gone: everything in flight on it failed.
                let lost: Vec<Sent> = sent.borrow_mut().drain().map(|(_, s)| s).collect();
                let now = Instant::now();
                for s in lost {
                    state.complete(s, now, Err("connection lost"));
                }
                return;
            }
            let now = Instant::now();
            while let Ok(Some(body)) = frames.next_frame() {
                match decode_frame(body) {
                    Ok(Frame::Hello { .. }) => greeted = true,
                    Ok(Frame::Responses(rs)) if greeted => {
                        for r in rs {
                            let Some(s) = sent.borrow_mut().remove(&r.id) else {
                                continue;
                            };
                            match r.result {
                                Ok(Outcome::Write(corekv_engine::WriteOutcome::Written {
                                    ..
                                }))
                                | Ok(Outcome::Value(_)) => state.complete(s, now, Ok(())),
                                Ok(_) => state.complete(s, now, Err("unexpected outcome")),
                                Err(e) => {
                                    if matches!(
                                        e.code,
                                        ErrorCode::EpochNotMatch | ErrorCode::RegionNotFound
                                    ) {
                                        state.routes_stale.set(true);
                                    }
                                    if e.code == ErrorCode::NotLeader && e.leader_node != 0 {
                                        state
                                            .leader_hints
                                            .borrow_mut()
                                            .insert(s.region, e.leader_node);
                                    }
                                    state.complete(s, now, Err(&error_name(e.code)));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    })
    .detach();
    Ok(NodeConn { writer })
}

/// Where a batch goes: a node and one of its shard ports, or
/// [`NODE_PORT`] for the node's client address.
type Dest = (u64, u32);

/// The node's client address (any shard; the region's passes it on).
const NODE_PORT: u32 = u32::MAX;

fn has_port(ports: &HashMap<u64, Vec<u16>>, node: u64, shard: u32) -> bool {
    ports
        .get(&node)
        .and_then(|p| p.get(shard as usize))
        .is_some_and(|p| *p != 0)
}

fn dest_addr(
    nodes: &HashMap<u64, String>,
    ports: &HashMap<u64, Vec<u16>>,
    (node, shard): Dest,
) -> anyhow::Result<String> {
    let addr = nodes
        .get(&node)
        .ok_or_else(|| anyhow::anyhow!("no address for node {node}"))?;
    if shard == NODE_PORT {
        return Ok(addr.clone());
    }
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    Ok(format!("{host}:{}", ports[&node][shard as usize]))
}

async fn corekv_client(state: Rc<ClientState>, index: usize) -> anyhow::Result<()> {
    let shared = state.shared.clone();
    let Target::Corekv {
        routes,
        nodes,
        shard_ports,
    } = &shared.target
    else {
        unreachable!()
    };
    let mut routes: Vec<RouteInfo> = routes.clone();
    routes.sort_by_key(|r| r.region.start_hash);
    let spec = &shared.spec;
    let value = Bytes::from(vec![b'v'; spec.value_size]);
    let mut gen = Generator::new(&shared, index);
    let mut conns: HashMap<Dest, NodeConn> = HashMap::new();
    // One map of requests in flight per connection.
    let mut sent: HashMap<Dest, SentMap> = HashMap::new();
    let mut next_id = 1u64;
    let mut batches: HashMap<Dest, Vec<Request>> = HashMap::new();
    let mut done = false;
    while !done {
        let mut wake_at = None;
        let now = Instant::now();
        if state.routes_stale.replace(false) {
            // Rare (a split): a blocking reload is fine for a load generator.
            let endpoints: Vec<String> = nodes.values().cloned().collect();
            if let Ok(c) = corekv_net::Client::connect(corekv_net::ClientConfig::new(endpoints)) {
                routes = c.routes().to_vec();
                routes.sort_by_key(|r| r.region.start_hash);
            }
        }
        let refill = state.inflight.get() < refill_below(spec, gen.interval.is_some());
        while refill && state.inflight.get() < spec.pipeline {
            let op = match gen.next(&shared, now) {
                Ok(Some(op)) => op,
                Ok(None) => {
                    done = true;
                    break;
                }
                Err(at) => {
                    wake_at = Some(at);
                    break;
                }
            };
            let hash = shared.keys.hash(op.key);
            let i = routes.partition_point(|r| r.region.start_hash <= hash) - 1;
            let route = &mut routes[i];
            if let Some(hint) = state.leader_hints.borrow_mut().remove(&route.region.id) {
                if hint != route.leader_node {
                    route.leader_node = hint;
                    route.leader_shard = None;
                }
            }
            let follower_read =
                op.kind == OpKind::Read && spec.consistency == Consistency::Follower;
            let dest = if follower_read {
                // Follower reads spread over every replica of the region.
                let n = route.region.peers[next_id as usize % route.region.peers.len()].node_id;
                (n, NODE_PORT)
            } else if route.leader_node != 0 {
                let shard = route
                    .leader_shard
                    .filter(|s| has_port(shard_ports, route.leader_node, *s));
                (route.leader_node, shard.unwrap_or(NODE_PORT))
            } else {
                (route.region.peers[0].node_id, NODE_PORT)
            };
            let k = shared.keys.name(op.key);
            let req = Request {
                id: next_id,
                region_id: route.region.id,
                epoch: route.region.epoch,
                op: match op.kind {
                    OpKind::Read => Op::Get {
                        key: k,
                        consistency: spec.consistency,
                    },
                    OpKind::Write => Op::Write(WriteRequest::Put {
                        key: k,
                        value: value.clone(),
                        ttl_ms: None,
                        condition: Condition::None,
                    }),
                },
                session: None,
                system: false,
            };
            sent.entry(dest).or_default().borrow_mut().insert(
                next_id,
                Sent {
                    kind: op.kind,
                    at: op.intended,
                    region: route.region.id,
                },
            );
            next_id += 1;
            state.inflight.set(state.inflight.get() + 1);
            batches.entry(dest).or_default().push(req);
        }
        for (dest, reqs) in batches.iter_mut() {
            if reqs.is_empty() {
                continue;
            }
            if !conns.contains_key(dest) {
                let addr = dest_addr(nodes, shard_ports, *dest)?;
                let c = connect_corekv(state.clone(), &addr, sent[dest].clone()).await?;
                conns.insert(*dest, c);
            }
            let frame = encode_requests(reqs);
            reqs.clear();
            if let Err(e) = conns.get_mut(dest).unwrap().writer.write_all(&frame).await {
                conns.remove(dest);
                return Err(anyhow::anyhow!("write to node {} ({dest:?}): {e}", dest.0));
            }
        }
        state.publish();
        if !done {
            wait(&state, wake_at).await;
        }
    }
    drain(&state).await;
    state.publish();
    Ok(())
}

// ------------------------------------------------------------------- redis

fn put_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    put_decimal(out, parts.len());
    out.extend_from_slice(b"\r\n");
    for p in parts {
        out.push(b'$');
        put_decimal(out, p.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one RESP reply at the start of `buf`: (bytes used, was an error).
fn resp_reply(buf: &[u8]) -> Option<(usize, bool)> {
    let cr = buf.iter().position(|&b| b == b'\r')?;
    if buf.get(cr + 1)? != &b'\n' {
        return Some((cr + 1, true));
    }
    let line = &buf[..cr];
    match line.first()? {
        b'+' | b':' => Some((cr + 2, false)),
        b'-' => Some((cr + 2, true)),
        b'$' if line.get(1) == Some(&b'-') => Some((cr + 2, false)),
        b'$' => {
            let mut n = 0usize;
            for &d in &line[1..] {
                if !d.is_ascii_digit() {
                    return Some((cr + 2, true));
                }
                n = n * 10 + (d - b'0') as usize;
            }
            let total = cr + 2 + n + 2;
            (buf.len() >= total).then_some((total, false))
        }
        _ => Some((cr + 2, true)),
    }
}

async fn redis_client(state: Rc<ClientState>, addr: String, index: usize) -> anyhow::Result<()> {
    let shared = state.shared.clone();
    let spec = &shared.spec;
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let queue: Rc<RefCell<VecDeque<Sent>>> = Rc::new(RefCell::new(VecDeque::new()));
    {
        let (state, queue) = (state.clone(), queue.clone());
        glommio::spawn_local(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(512 * 1024);
            let mut start = 0usize;
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut chunk).await.unwrap_or(0);
                let now = Instant::now();
                if n == 0 {
                    let lost: Vec<Sent> = queue.borrow_mut().drain(..).collect();
                    for s in lost {
                        state.complete(s, now, Err("connection lost"));
                    }
                    return;
                }
                if start > 0 && start == buf.len() {
                    buf.clear();
                    start = 0;
                } else if start > 128 * 1024 {
                    buf.drain(..start);
                    start = 0;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut used = start;
                while let Some((len, is_err)) = resp_reply(&buf[used..]) {
                    used += len;
                    let Some(s) = queue.borrow_mut().pop_front() else {
                        continue;
                    };
                    let result = if is_err { Err("redis error") } else { Ok(()) };
                    state.complete(s, now, result);
                }
                start = used;
            }
        })
        .detach();
    }
    let value = vec![b'v'; spec.value_size];
    let mut gen = Generator::new(&shared, index);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut done = false;
    while !done {
        let mut wake_at = None;
        let now = Instant::now();
        let refill = state.inflight.get() < refill_below(spec, gen.interval.is_some());
        while refill && state.inflight.get() < spec.pipeline {
            let op = match gen.next(&shared, now) {
                Ok(Some(op)) => op,
                Ok(None) => {
                    done = true;
                    break;
                }
                Err(at) => {
                    wake_at = Some(at);
                    break;
                }
            };
            match op.kind {
                OpKind::Read => shared.keys.put_resp_get(op.key, &mut out),
                OpKind::Write => {
                    resp_command(&mut out, &[b"SET", &shared.keys.name(op.key), &value])
                }
            }
            queue.borrow_mut().push_back(Sent {
                kind: op.kind,
                at: op.intended,
                region: 0,
            });
            state.inflight.set(state.inflight.get() + 1);
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
            out.clear();
        }
        state.publish();
        if !done {
            wait(&state, wake_at).await;
        }
    }
    drain(&state).await;
    state.publish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse() {
        assert_eq!(resp_reply(b"+OK\r\n"), Some((5, false)));
        assert_eq!(resp_reply(b"$-1\r\n"), Some((5, false)));
        assert_eq!(resp_reply(b"$3\r\nabc\r\n"), Some((9, false)));
        assert_eq!(resp_reply(b"$3\r\nab"), None);
        assert_eq!(resp_reply(b"-ERR x\r\n"), Some((8, true)));
        let mut v = Vec::new();
        resp_command(&mut v, &[b"GET", b"k"]);
        assert_eq!(v, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
