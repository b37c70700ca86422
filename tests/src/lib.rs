//! Black-box tests of real corekv clusters: `corekv-server` processes on
//! 127.0.0.1, driven through the native client and raw protocol frames.
//!
//! # Layout
//! - this file: [`TestCluster`] (ports, data directories, process cleanup,
//!   one cluster at a time per test binary) and raw-protocol helpers.
//! - `checker.rs`: the per-key linearizability checker.
//! - `chaos/`: the fault-injection runner (binary `corekv-chaos`): faults,
//!   workload, watcher, report.
//! - `watch_check.rs`: checks a watch's changes against the recorded operations.
//! - `tests/*.rs`: the tests.
//!
//! Where new code goes: a new fault in `chaos/fault.rs`, a new check of
//! replicas or histories in `chaos/report.rs`, helpers for real-process
//! clusters in this file; a test of one crate's internals in that crate.
#![deny(missing_docs)]

pub mod chaos;
pub mod checker;
pub mod watch_check;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corekv_net::frame::FrameBuffer;
use corekv_net::message::RouteInfo;
use corekv_net::message::{
    decode_frame_with_fields, encode_hello, encode_requests, Frame, Request, ResponseFields,
};
use corekv_net::Client;
use corekv_tools::dev::{server_binary, DevOptions, LocalCluster};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds off every other cluster of this test process while alive: for a
/// test that starts servers itself (as a user would), not through
/// [`TestCluster`].
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

/// A cluster of real processes for one test. Dropping it kills every process
/// and removes its data.
pub struct TestCluster {
    /// The processes.
    pub cluster: LocalCluster,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

fn ports_free(base: u16, nodes: u16) -> bool {
    (1..=nodes).all(|i| {
        [base + i, base + 100 + i, base + 200 + i, base + 300 + i]
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
    })
}

/// `threads` clients of `t`, each paced at one operation per `pace`, cycling
/// over `keys`: every `write_every`-th operation a put of a unique value,
/// the others linearizable gets, until `stop`. Each thread returns its
/// operations with their outcomes (failed reads are left out; a put
/// without an answer has no return time).
pub fn paced_load(
    t: &TestCluster,
    keys: &[String],
    (threads, pace, write_every): (u64, Duration, u64),
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
) -> Vec<std::thread::JoinHandle<Vec<checker::Operation>>> {
    use checker::{Input, Operation, Output};
    (0..threads)
        .map(|w| {
            let (mut c, keys, stop) = (t.client(), keys.to_vec(), stop.clone());
            std::thread::spawn(move || {
                let now = || started.elapsed().as_micros() as u64;
                let mut ops = Vec::new();
                let mut next = Instant::now();
                for i in 0u64.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    next += pace;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let key = keys[(i as usize * 7 + w as usize) % keys.len()].clone();
                    let call = now();
                    let (input, output) = if i.is_multiple_of(write_every) {
                        let value = format!("w{w}-{i}");
                        let r = c.put(key.as_bytes(), value.as_bytes(), Default::default());
                        (Input::Put(value), r.ok().map(|_| Output::Written))
                    } else {
                        match c.get(key.as_bytes(), corekv_engine::Consistency::Linearizable) {
                            Ok(v) => (
                                Input::Get,
                                Some(Output::Value(
                                    v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
                                )),
                            ),
                            Err(_) => continue,
                        }
                    };
                    let ret = output.as_ref().map(|_| now());
                    ops.push(Operation {
                        client: w + 1,
                        key,
                        call,
                        ret,
                        input,
                        output,
                    });
                }
                ops
            })
        })
        .collect()
}

/// Stops a [`paced_load`] and gathers its operations.
pub fn stop_load(
    stop: &std::sync::atomic::AtomicBool,
    workers: Vec<std::thread::JoinHandle<Vec<checker::Operation>>>,
) -> Vec<checker::Operation> {
    stop.store(true, Ordering::Release);
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

/// Reads every key of `keys` once more (linearizable) into `ops`, asserts
/// more than `writes_min` writes were acknowledged, and checks each key's
/// history for linearizability (panics with a minimal failing history).
/// Returns the number of acknowledged writes.
pub fn check_histories(
    c: &mut Client,
    keys: &[String],
    started: Instant,
    ops: &mut Vec<checker::Operation>,
    writes_min: usize,
) -> usize {
    use checker::{check_key, describe, minimize, Input, Operation, Output, Verdict};
    for k in keys {
        let call = started.elapsed().as_micros() as u64;
        let v = c
            .get(k.as_bytes(), corekv_engine::Consistency::Linearizable)
            .unwrap();
        ops.push(Operation {
            client: 99,
            key: k.clone(),
            call,
            ret: Some(started.elapsed().as_micros() as u64),
            input: Input::Get,
            output: Some(Output::Value(
                v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
            )),
        });
    }
    let writes = ops
        .iter()
        .filter(|o| o.output == Some(Output::Written))
        .count();
    assert!(writes > writes_min, "only {writes} writes acknowledged");
    for k in keys {
        let mine: Vec<Operation> = ops.iter().filter(|o| &o.key == k).cloned().collect();
        match check_key(&mine) {
            Verdict::Linearizable => {}
            other => panic!(
                "key {k}: {other:?}:\n{}",
                minimize(&mine)
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    writes
}

/// Moves `region`'s replica from node `from` to node `to` (`corekv ctl
/// move-replica`), each step waiting up to 5 s.
pub fn ctl_move(
    c: &mut Client,
    region: u64,
    from: u64,
    to: u64,
) -> corekv_net::admin::Result<String> {
    corekv_net::admin::move_replica(c, region, from, to, Duration::from_secs(5))
}

/// A base port whose cluster ports are free (see `corekv dev`), with room
/// for one node added later ([`LocalCluster::add_node`]). Bases stay
/// in 10000..31600 (ports up to base + 303), below Linux's ephemeral range
/// (32768..), so client sockets of earlier tests never hold them.
pub fn pick_base(nodes: u16) -> u16 {
    const SLOTS: u16 = 108;
    let seed = (std::process::id() % u32::from(SLOTS)) as u16;
    loop {
        let n = NEXT_BASE.fetch_add(1, Ordering::SeqCst);
        let base = 10_000 + ((seed + n) % SLOTS) * 200;
        if ports_free(base, nodes + 1) {
            return base;
        }
    }
}

impl TestCluster {
    /// Starts `nodes` servers with `shards` shards each and waits until every
    /// region has a leader.
    pub fn start(nodes: u64, shards: usize, extra: &[&str]) -> TestCluster {
        Self::start_with(nodes, shards, extra, Vec::new())
    }

    /// Like [`TestCluster::start`], with extra flags for some nodes; every node
    /// gets a fault file ([`LocalCluster::set_faults`]).
    pub fn start_with(
        nodes: u64,
        shards: usize,
        extra: &[&str],
        node_args: Vec<(u64, Vec<String>)>,
    ) -> TestCluster {
        Self::start_opts(nodes, shards, extra, node_args, false, false, false)
    }

    /// Like [`TestCluster::start`], every node also serving the Redis
    /// protocol on BASE+200+i (`DevNode::resp_addr`).
    pub fn start_resp(nodes: u64, shards: usize, extra: &[&str]) -> TestCluster {
        Self::start_opts(nodes, shards, extra, Vec::new(), true, false, false)
    }

    /// Like [`TestCluster::start_resp`], every node holding the cluster's
    /// node key (authentication still off: [`LocalCluster::enable_auth`]).
    pub fn start_keyed(nodes: u64, shards: usize, extra: &[&str]) -> TestCluster {
        Self::start_opts(nodes, shards, extra, Vec::new(), true, true, false)
    }

    /// Like [`TestCluster::start_keyed`], with TLS on every port (a
    /// throwaway CA in the data directory; [`LocalCluster::client_tls`]).
    pub fn start_tls(nodes: u64, shards: usize, extra: &[&str]) -> TestCluster {
        Self::start_opts(nodes, shards, extra, Vec::new(), true, true, true)
    }

    fn start_opts(
        nodes: u64,
        shards: usize,
        extra: &[&str],
        node_args: Vec<(u64, Vec<String>)>,
        resp: bool,
        node_key: bool,
        tls: bool,
    ) -> TestCluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            server_binary().is_file(),
            "{} not built: run the tests with `cargo test --release --workspace`",
            server_binary().display()
        );
        let dir = tempfile::tempdir().unwrap();
        let base = pick_base(nodes as u16);
        let cluster = LocalCluster::start(DevOptions {
            nodes,
            base_port: base,
            data_dir: dir.path().to_path_buf(),
            shards: Some(shards),
            regions: Some(8),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            node_args,
            fault_files: true,
            metrics: true,
            resp,
            node_key,
            tls,
        })
        .unwrap();
        let mut t = TestCluster {
            cluster,
            _dir: dir,
            _serial: serial,
        };
        t.must_be_ready(Duration::from_secs(30));
        t
    }

    /// Waits until every running node sees a leader for every region.
    pub fn must_be_ready(&mut self, timeout: Duration) -> Duration {
        self.cluster
            .wait_ready(timeout)
            .unwrap_or_else(|e| panic!("cluster not ready: {e:#}"))
    }

    /// Client endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect()
    }

    /// A client of the whole cluster.
    pub fn client(&self) -> Client {
        Client::connect(self.cluster.client_config()).unwrap()
    }

    /// A client that only knows node `index`.
    pub fn client_of(&self, index: usize) -> Client {
        let mut cfg = self.cluster.client_config();
        cfg.endpoints = vec![self.cluster.nodes[index].client_addr.clone()];
        Client::connect(cfg).unwrap()
    }
}

/// Resident memory of process `pid`, KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fails the test unless `tool` is on PATH (`.ci/run` installs what the
/// tests need: redis-tools, redis-py).
pub fn need_tool(tool: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is needed by this test: apt-get install redis-tools (and pip install redis)"
    );
}

/// A raw protocol connection, for tests that speak frames directly.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    frames: FrameBuffer,
}

impl RawConn {
    /// Connects and exchanges hellos.
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut c = RawConn {
            stream,
            frames: FrameBuffer::new(64 << 20),
        };
        c.stream.write_all(&encode_hello(0, 0, &[])).unwrap();
        match c.read_frame() {
            Some(Frame::Hello { .. }) => c,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// Speaks frames over `stream` (no hello sent).
    pub fn over(stream: TcpStream) -> RawConn {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        RawConn {
            stream,
            frames: FrameBuffer::new(64 << 20),
        }
    }

    /// Connects without the hello.
    pub fn connect_bare(addr: &str) -> RawConn {
        RawConn::over(TcpStream::connect(addr).unwrap())
    }

    /// Sends requests.
    pub fn send(&mut self, reqs: &[Request]) {
        self.try_send(reqs).unwrap();
    }

    /// Sends requests; fails if the server is gone.
    pub fn try_send(&mut self, reqs: &[Request]) -> std::io::Result<()> {
        self.stream.write_all(&encode_requests(reqs))
    }

    /// Reads the next frame; `None` if the server closed the connection (or
    /// nothing came within the read timeout).
    pub fn read_frame(&mut self) -> Option<Frame> {
        self.read_frame_with_fields().map(|(f, _)| f)
    }

    /// Like [`RawConn::read_frame`], with the raw fields of each response
    /// (write outcomes are told apart by them).
    pub fn read_frame_with_fields(&mut self) -> Option<(Frame, Vec<ResponseFields>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(body) = self.frames.next_frame().ok()? {
                return Some(decode_frame_with_fields(body).expect("server frames decode"));
            }
            if Instant::now() > deadline {
                return None;
            }
            let spare = self.frames.spare(64 * 1024);
            match self.stream.read(spare) {
                Ok(0) | Err(_) => {
                    self.frames.filled(64 * 1024, 0);
                    return None;
                }
                Ok(n) => self.frames.filled(64 * 1024, n),
            }
        }
    }
}

/// A region whose preferred leader is `node`, once `node` leads it, and a
/// key (named `PREFIX<n>`) in it. Panics after 20 s.
pub fn region_led_by(t: &TestCluster, node: u64, prefix: &str) -> (RouteInfo, String) {
    let route = t
        .client()
        .routes()
        .iter()
        .find(|r| r.region.peers[0].node_id == node && !r.region.is_meta())
        .unwrap_or_else(|| panic!("no region prefers node {node}"))
        .clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = t
            .client()
            .routes()
            .iter()
            .find(|r| r.region.id == route.region.id)
            .map_or(0, |r| r.leader_node);
        if leader == node {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never led region {}",
            route.region.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let key = (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| {
            route
                .region
                .contains(corekv_engine::route_hash(k.as_bytes()))
        })
        .unwrap();
    (route, key)
}

/// Asserts `c` reads `k` = `v` (written by the test earlier) and can write.
pub fn assert_still_serves(c: &mut Client) {
    let got = c
        .get(b"k", corekv_engine::Consistency::Linearizable)
        .unwrap()
        .expect("k was written before");
    assert_eq!(got.value, &b"v"[..]);
    c.put(b"k2", b"v2", corekv_net::PutOptions::default())
        .unwrap();
}

/// The regions of `client`'s routing table that hold user keys: all but
/// the meta region.
pub fn data_routes(client: &Client) -> Vec<RouteInfo> {
    client
        .routes()
        .iter()
        .filter(|r| !r.region.is_meta())
        .cloned()
        .collect()
}

/// One key per data region of `client`'s routing table (found by trying
/// names; no user key reaches the meta region).
pub fn key_per_region(client: &Client) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for r in data_routes(client) {
        let key = (0..)
            .map(|i| format!("probe-{i}"))
            .find(|k| r.region.contains(corekv_engine::route_hash(k.as_bytes())))
            .unwrap();
        out.push((r.region.id, key));
    }
    out
}

/// Reads `key` from `addr`'s own replica of `region` (a stale read: what
/// that node holds, whoever leads). `Err` with the answer when the node
/// did not serve it (no replica there, epoch changed, no answer).
pub fn read_on_node(
    addr: &str,
    region: &corekv_engine::Region,
    key: &[u8],
) -> Result<Option<bytes::Bytes>, String> {
    read_on_node_as(addr, region, key, None)
}

/// [`read_on_node`], logged in with `login`.
pub fn read_on_node_as(
    addr: &str,
    region: &corekv_engine::Region,
    key: &[u8],
    login: Option<&corekv_net::Credentials>,
) -> Result<Option<bytes::Bytes>, String> {
    read_on_node_with(addr, region, key, login, None)
}

/// [`read_on_node_as`], over TLS when `tls` is given.
pub fn read_on_node_with(
    addr: &str,
    region: &corekv_engine::Region,
    key: &[u8],
    login: Option<&corekv_net::Credentials>,
    tls: Option<&corekv_net::tls::ClientTls>,
) -> Result<Option<bytes::Bytes>, String> {
    use corekv_net::message::{Op, Outcome};
    let tcp = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut stream = corekv_net::tls::SyncStream::dial(tcp, addr, tls)?;
    let mut frames = FrameBuffer::new(64 << 20);
    let mut next_frame = |stream: &mut corekv_net::tls::SyncStream| -> Option<Frame> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(body) = frames.next_frame().ok()? {
                return Some(decode_frame_with_fields(body).ok()?.0);
            }
            if Instant::now() > deadline {
                return None;
            }
            let spare = frames.spare(64 * 1024);
            match stream.read(spare) {
                Ok(0) | Err(_) => {
                    frames.filled(64 * 1024, 0);
                    return None;
                }
                Ok(n) => frames.filled(64 * 1024, n),
            }
        }
    };
    let creds = login.map(|c| (c.user.as_str(), c.token.as_str()));
    stream
        .write_all(&corekv_net::message::encode_client_hello(creds))
        .map_err(|e| e.to_string())?;
    match next_frame(&mut stream) {
        Some(Frame::Hello { .. }) => {}
        other => return Err(format!("{addr}: no hello: {other:?}")),
    }
    let req = Request {
        id: 1,
        region_id: region.id,
        epoch: region.epoch,
        op: Op::Get {
            key: bytes::Bytes::copy_from_slice(key),
            consistency: corekv_engine::Consistency::Stale,
        },
        session: None,
        system: false,
    };
    stream
        .write_all(&encode_requests(&[req]))
        .map_err(|e| e.to_string())?;
    match next_frame(&mut stream) {
        Some(Frame::Responses(mut rs)) if !rs.is_empty() => match rs.remove(0).result {
            Ok(Outcome::Value(v)) => Ok(v.map(|v| v.value)),
            other => Err(format!("{addr}: {other:?}")),
        },
        other => Err(format!("{addr}: no answer: {other:?}")),
    }
}

/// Runs `corekv ctl check --all` (every replica's digest against its
/// leader's) and panics with its report unless every replica matches. A
/// check some replica could not verify (it got a snapshot past the check's
/// index meanwhile) runs again, up to three times; a mismatch never does.
pub fn must_check_all(c: &mut Client) {
    for attempt in 1..=3 {
        let report = corekv_tools::ctl::check(c, None, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("consistency check: {e:#}"));
        assert!(
            report.mismatched.is_empty(),
            "consistency check:\n{}",
            report.text
        );
        if report.ok() {
            return;
        }
        assert!(attempt < 3, "consistency check:\n{}", report.text);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The sum of the series named `names` (any labels) on the metrics endpoint
/// at `addr`.
pub fn scrape_sum(addr: &str, names: &[&str]) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            names.contains(&name)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
