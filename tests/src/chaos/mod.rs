//! The fault-injection runner behind `corekv-chaos`.
//!
//! It starts a local cluster of real `corekv-server` processes, runs
//! concurrent clients doing get/put/cas/delete on register keys and
//! get/incr on counter keys (every written value unique; reads are
//! `Linearizable`, `Lease` or `Follower`; 4% of register operations are prefix-scan
//! pages, each checked as a read of every register key its hash range
//! covers), and meanwhile
//! injects faults one at a time:
//!
//! - `kill`: SIGKILL a node, restart it from its data directory later;
//! - `pause`: SIGSTOP a node longer than an election timeout, then SIGCONT;
//! - `isolate`: cut a node off from both others (minority | majority);
//! - `one-way`: a node's messages to the others are lost, theirs still arrive;
//! - `cut-link`: the link between two nodes is cut both ways;
//! - `loss`: every node loses 30% of its outgoing raft frames;
//! - `delay`: every node holds its outgoing raft frames 40 ms;
//! - `split`: a region splits at the middle of its range;
//! - `lag`: a node is cut off while a region it holds splits and (with 4
//!   nodes or more) a replica of one moves and its leadership follows, then
//!   it catches up on all of it;
//! - `idle` (not a default): the clients pause long enough for the regions to hibernate,
//!   then a node is killed, isolated or paused while they sleep, and the
//!   clients come back while it still is: sleeping regions must fail over
//!   and wake as safely as awake ones;
//! - `move` (not a default; needs `--nodes 4` or more): a region's replica
//!   moves to a node without one (learner, catch-up, joint change);
//! - `kill-loop` (not a default): a node is SIGKILLed and restarted again
//!   and again while a writer stores 900 KB values; it must start every
//!   time.
//!
//! Network faults use the raft transport's fault filter (`--fault-file`,
//! see `corekv_net::faults`): the runner rewrites each node's fault file and
//! the node applies it within 100 ms. Client traffic is never filtered.
//!
//! Each operation is recorded with its invocation and completion times and
//! outcome: ok, failed (definitely not applied: the client gave up without
//! any attempt that could have been applied), or unknown. Clients move to a
//! fresh set of keys every `key_rotation`, which keeps each key's history
//! small enough to check exhaustively. After the run every fault is healed,
//! each key is read once more, and [`crate::checker`] checks every key.
//!
//! Meanwhile a watcher watches every key generation from before its first
//! write (the next generation's watch opens when the current one starts);
//! [`crate::watch_check`] checks what it saw against each key's operations:
//! every committed change once, in order, nothing that was not written.
//! A prefix watch of `g` (every generation's keys), opened before the
//! first write and kept through every fault, split and move, is checked
//! the same way, key by key, and must show nothing else.
//!
//! Last, what no client history shows: the consistency check (`corekv ctl
//! check --all`: every replica's digest against its leader's at one raft
//! index) and a read of every key written from every replica holding it,
//! which must equal the cluster's final value. A divergent replica fails
//! the run like a linearizability anomaly.
//!
//! # Layout
//! - this file: options, fault kinds, the shared state, [`run`];
//! - `fault`: injecting and healing faults;
//! - `workload`: the clients and how their operations are recorded;
//! - `watcher`: the watch that follows every key generation;
//! - `report`: the report and the replica-against-replica check.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_engine::Consistency;
use corekv_net::{Change, Client, ClientConfig, ClientError, PutOptions, Watch};
use corekv_tools::dev::{DevOptions, LocalCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::{check_key, describe, minimize, Input, Operation, Output, Verdict};
use crate::watch_check::check_watch;

mod fault;
mod report;
mod resp;
mod watcher;
mod workload;

use fault::*;
pub use report::Report;
use report::*;
use watcher::*;
use workload::*;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a node and restart it.
    Kill,
    /// SIGSTOP a node, then SIGCONT.
    Pause,
    /// Cut a node off from every other node.
    Isolate,
    /// A node's outgoing raft messages are dropped.
    OneWay,
    /// The link between two nodes is cut.
    CutLink,
    /// 30% of raft frames lost.
    Loss,
    /// Raft frames held 40 ms.
    Delay,
    /// A region splits at the middle of its range (not undone: the layout
    /// keeps changing through the run).
    Split,
    /// A region's replica moves to a node that has none (not undone).
    Move,
    /// A node is cut off while a region it holds splits and (4 nodes or
    /// more) a replica of one moves and its leadership follows.
    Lag,
    /// A node is SIGKILLed and restarted over and over during 900 KB writes.
    KillLoop,
    /// The clients pause, the regions sleep, a node fails while they do,
    /// the clients come back.
    Idle,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Isolate,
        FaultKind::OneWay,
        FaultKind::CutLink,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Split,
        FaultKind::Lag,
        FaultKind::Idle,
        FaultKind::Move,
        FaultKind::KillLoop,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Isolate => "isolate",
            FaultKind::OneWay => "one-way",
            FaultKind::CutLink => "cut-link",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Split => "split",
            FaultKind::Move => "move",
            FaultKind::Lag => "lag",
            FaultKind::KillLoop => "kill-loop",
            FaultKind::Idle => "idle",
        }
    }

    /// The kinds a run injects unless told otherwise: all but `idle` (its
    /// pauses thin the history), `move` (which needs a fourth node) and
    /// `kill-loop` (heavy on the disk).
    pub const DEFAULT: &'static [FaultKind] = FaultKind::ALL.split_at(9).0;

    /// Parses a name.
    pub fn parse(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?} (known: {})", names.join(", "))
            })
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// How long clients and faults run.
    pub duration: Duration,
    /// Seed of the fault schedule and the clients' choices.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Of those, clients that only read (they keep reading from whichever
    /// node they believe leads, which is where stale reads would show).
    pub readers: usize,
    /// Of those (the last ones), clients that speak the Redis protocol to
    /// the nodes' `--resp-listen` ports (GET, SET, DEL, INCR).
    pub resp_clients: usize,
    /// Register keys per key generation (plus 2 counter keys).
    pub keys: usize,
    /// Clients move to fresh keys this often.
    pub key_rotation: Duration,
    /// Faults to inject (empty: none).
    pub faults: Vec<FaultKind>,
    /// Pause between faults, and how long each lasts: drawn from these ranges (ms).
    pub quiet_ms: (u64, u64),
    /// See `quiet_ms`.
    pub fault_ms: (u64, u64),
    /// Nodes (3 or more) and shards per node.
    pub nodes: u64,
    /// Shards per node.
    pub shards: usize,
    /// Base port of the cluster (see `corekv dev`); `None` picks a free one.
    pub base_port: Option<u16>,
    /// Where the history goes.
    pub history_file: PathBuf,
    /// Deliberately break reads on node 1 (the `stale-reads` fault and a
    /// slow quorum check), to show that the checker notices.
    pub break_reads: bool,
    /// Authentication on: every client logs in (see [`login_config`]).
    pub auth: bool,
    /// TLS on every port: every client (native and Redis) speaks TLS.
    pub tls: bool,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The login of this run's clients, and of its faults and checks (set by
/// [`run`] when `auth` is on).
static LOGIN: std::sync::RwLock<Option<corekv_net::Credentials>> = std::sync::RwLock::new(None);
static ADMIN_LOGIN: std::sync::RwLock<Option<corekv_net::Credentials>> =
    std::sync::RwLock::new(None);

/// TLS of every client of this run (set by [`run`] when `tls` is on).
static TLS: std::sync::RwLock<Option<corekv_net::tls::ClientTls>> = std::sync::RwLock::new(None);

pub(crate) fn tls() -> Option<corekv_net::tls::ClientTls> {
    TLS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn login() -> Option<corekv_net::Credentials> {
    LOGIN.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Client settings for `endpoints` with the clients' login.
pub(crate) fn login_config(endpoints: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.credentials = login();
    cfg.tls = tls();
    cfg
}

/// Client settings for `endpoints` with the admin login (faults: splits,
/// moves; the final checks).
pub(crate) fn admin_config(endpoints: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.credentials = ADMIN_LOGIN
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    cfg.tls = tls();
    cfg
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            duration: Duration::from_secs(60),
            seed: 1,
            clients: 6,
            readers: 0,
            resp_clients: 0,
            keys: 6,
            key_rotation: Duration::from_secs(10),
            faults: FaultKind::DEFAULT.to_vec(),
            quiet_ms: (500, 2000),
            fault_ms: (1000, 4000),
            nodes: 3,
            shards: 1,
            base_port: None,
            history_file: std::env::temp_dir().join("corekv-chaos-history.txt"),
            break_reads: false,
            auth: false,
            tls: false,
            progress: true,
        }
    }
}

/// One fault as injected.
#[derive(Clone, Debug)]
pub struct FaultEvent {
    /// Kind.
    pub kind: FaultKind,
    /// What exactly (nodes involved).
    pub detail: String,
    /// Start and end, µs since the run started.
    pub start_us: u64,
    /// See `start_us`.
    pub end_us: u64,
}

struct Shared {
    started: Instant,
    stop: AtomicBool,
    /// The clients wait while this is set (`idle` faults).
    idle: AtomicBool,
    ops: Mutex<Vec<Operation>>,
    failed: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
    /// Values of writes reported as not applied.
    failed_values: Mutex<HashSet<String>>,
    /// What the watcher saw, by key.
    watched: Mutex<BTreeMap<String, Vec<Change>>>,
    /// Why the watcher stopped early, if it did.
    watch_failure: Mutex<Option<String>>,
    watch_stop: AtomicBool,
    /// Each watch stream's state when the watcher stopped.
    watch_streams: Mutex<Vec<String>>,
    /// Generations left out of the watch check, and why.
    watch_unchecked: Mutex<Vec<(u128, String)>>,
    /// What the prefix watch saw, by key.
    prefix_watched: Mutex<BTreeMap<String, Vec<Change>>>,
    /// Why the prefix watch stopped early, if it did.
    prefix_failure: Mutex<Option<String>>,
    /// Keys written with large values by `kill-loop` faults.
    big_keys: Mutex<std::collections::BTreeSet<String>>,
    /// Nodes that did not start again after a SIGKILL.
    restart_failures: Mutex<Vec<String>>,
    /// Scan pages that returned a key outside the prefix they asked for.
    scan_strays: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Counts one operation of `kind` (the report's "by kind" line).
    fn count(&self, kind: &str) {
        *self
            .by_kind
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default() += 1;
    }
}

/// Runs the cluster, clients and faults, then checks the history.
pub fn run(opts: &ChaosOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.nodes >= 3, "--nodes must be at least 3");
    anyhow::ensure!(
        opts.nodes >= 4 || !opts.faults.contains(&FaultKind::Move),
        "the move fault needs --nodes 4 or more (with 3, every node holds every region)"
    );
    anyhow::ensure!(
        opts.clients >= 1 && opts.keys >= 1,
        "--clients and --keys must be at least 1"
    );
    let dir = tempfile::tempdir()?;
    let base_port = opts
        .base_port
        .unwrap_or_else(|| crate::pick_base(opts.nodes as u16));
    let mut node_args = Vec::new();
    if opts.break_reads {
        // Node 1 checks its quorum only every 5 s, so once cut off it keeps
        // believing it leads long after the others moved on.
        node_args.push((
            1,
            ["--election-ticks", "500", "--request-timeout-ms", "6000"]
                .map(String::from)
                .to_vec(),
        ));
    }
    let mut cluster = LocalCluster::start(DevOptions {
        nodes: opts.nodes,
        base_port,
        data_dir: dir.path().to_path_buf(),
        shards: Some(opts.shards),
        regions: Some(8),
        extra_args: Vec::new(),
        node_args,
        fault_files: true,
        metrics: false,
        resp: opts.resp_clients > 0,
        node_key: opts.auth,
        tls: opts.tls,
    })?;
    let base_rules: Vec<String> = (0..opts.nodes)
        .map(|i| {
            if opts.break_reads && i == 0 {
                "stale-reads\n".to_string()
            } else {
                String::new()
            }
        })
        .collect();
    for (i, r) in base_rules.iter().enumerate() {
        cluster.set_faults(i, r)?;
    }
    cluster.wait_ready(Duration::from_secs(30))?;
    *LOGIN.write().unwrap_or_else(|e| e.into_inner()) = None;
    *ADMIN_LOGIN.write().unwrap_or_else(|e| e.into_inner()) = None;
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = cluster.client_tls();
    if opts.tls && opts.progress {
        eprintln!("corekv-chaos: TLS on every port; every client speaks TLS");
    }
    if opts.auth {
        let root = std::fs::read_to_string(cluster.enable_auth()?)?;
        let root = corekv_net::Credentials {
            user: corekv_net::auth::ROOT_USER.into(),
            token: root.trim().into(),
        };
        *ADMIN_LOGIN.write().unwrap_or_else(|e| e.into_inner()) = Some(root.clone());
        let mut cfg = admin_config(
            cluster
                .nodes
                .iter()
                .map(|n| n.client_addr.clone())
                .collect(),
        );
        cfg.system = true;
        let mut admin = Client::connect(cfg)?;
        let grants = vec![corekv_net::auth::Grant::Write(Vec::new())];
        let token = corekv_net::auth::add_user(&mut admin, "chaos", grants)?;
        *LOGIN.write().unwrap_or_else(|e| e.into_inner()) = Some(corekv_net::Credentials {
            user: "chaos".into(),
            token,
        });
        if opts.progress {
            eprintln!("corekv-chaos: authentication on; clients log in as user chaos (write:*)");
        }
    }
    if opts.break_reads {
        wait_until_node_leads(&cluster, 1, Duration::from_secs(20))?;
    }
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect();

    let shared = Arc::new(Shared {
        started: Instant::now(),
        stop: AtomicBool::new(false),
        idle: AtomicBool::new(false),
        ops: Mutex::new(Vec::new()),
        failed: AtomicU64::new(0),
        by_kind: Mutex::new(BTreeMap::new()),
        failed_values: Mutex::new(HashSet::new()),
        watched: Mutex::new(BTreeMap::new()),
        watch_failure: Mutex::new(None),
        watch_stop: AtomicBool::new(false),
        watch_streams: Mutex::new(Vec::new()),
        watch_unchecked: Mutex::new(Vec::new()),
        prefix_watched: Mutex::new(BTreeMap::new()),
        prefix_failure: Mutex::new(None),
        big_keys: Mutex::new(Default::default()),
        restart_failures: Mutex::new(Vec::new()),
        scan_strays: AtomicU64::new(0),
    });
    // The first generation's keys are watched before anyone writes them.
    let mut watch_client = connect(&endpoints, &shared)?;
    let first = watch_generation(&mut watch_client, 0, opts)
        .map_err(|e| anyhow::anyhow!("watching the first keys: {e}"))?;
    let watcher = {
        let (shared, opts) = (shared.clone(), opts.clone());
        std::thread::spawn(move || watch_loop(&shared, watch_client, first, &opts))
    };
    let mut prefix_client = connect(&endpoints, &shared)?;
    let prefix_watch = watch_prefix_of_all(&mut prefix_client)
        .map_err(|e| anyhow::anyhow!("watching the prefix of every generation: {e}"))?;
    let prefix_watcher = {
        let shared = shared.clone();
        std::thread::spawn(move || prefix_watch_loop(&shared, prefix_watch))
    };
    let mut workers = Vec::new();
    let resp_addrs: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.resp_addr.clone())
        .collect();
    for c in 0..opts.clients {
        let (shared, endpoints, opts) = (shared.clone(), endpoints.clone(), opts.clone());
        let over_resp = c >= opts.clients.saturating_sub(opts.resp_clients);
        let addrs = resp_addrs.clone();
        workers.push(std::thread::spawn(move || {
            if over_resp {
                resp::resp_client_loop(c as u64 + 1, &shared, addrs, &opts)
            } else {
                client_loop(c as u64 + 1, &shared, endpoints, &opts)
            }
        }));
    }

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut faults = Vec::new();
    let mut last_progress = Instant::now();
    let end = shared.started + opts.duration;
    while Instant::now() < end {
        sleep_until_or(end, rng.gen_range(opts.quiet_ms.0..=opts.quiet_ms.1));
        if Instant::now() >= end || opts.faults.is_empty() {
            continue;
        }
        let kind = opts.faults[rng.gen_range(0..opts.faults.len())];
        let n = opts.nodes as usize;
        let victim = if opts.break_reads {
            0
        } else {
            rng.gen_range(0..n)
        };
        let other = (victim + rng.gen_range(1..n)) % n;
        let start_us = shared.now_us();
        let lasting = rng.gen_range(opts.fault_ms.0..=opts.fault_ms.1);
        let choice: usize = rng.gen();
        let detail = match kind {
            // Faults that run their own course for `lasting` ms.
            FaultKind::Lag | FaultKind::KillLoop | FaultKind::Idle => {
                let until = Instant::now() + Duration::from_millis(lasting);
                during(
                    &mut cluster,
                    &base_rules,
                    &shared,
                    kind,
                    (victim, choice),
                    until,
                )?
            }
            _ => {
                let d = inject(&mut cluster, &base_rules, kind, (victim, other, choice))?;
                sleep_until_or(end + Duration::from_secs(1), lasting);
                d
            }
        };
        heal(&mut cluster, &base_rules)?;
        faults.push(FaultEvent {
            kind,
            detail,
            start_us,
            end_us: shared.now_us(),
        });
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let ops = shared.ops.lock().unwrap();
            eprintln!(
                "[{:>5.1}s] {} operations ({} unknown), {} faults",
                shared.started.elapsed().as_secs_f64(),
                ops.len(),
                ops.iter().filter(|o| o.output.is_none()).count(),
                faults.len()
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut used_keys = std::collections::BTreeSet::new();
    for w in workers {
        used_keys.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?,
        );
    }
    heal(&mut cluster, &base_rules)?;
    cluster.wait_ready(Duration::from_secs(60))?;
    // One last read of every key, after everything healed.
    let mut reader = connect(&endpoints, &shared)?;
    let mut finals = BTreeMap::new();
    for key in &used_keys {
        record(&shared, 0, key, Input::Get, || {
            let d = read(&mut reader, key, Consistency::Linearizable);
            if let Done::Ok(Output::Value(v)) = &d {
                finals.insert(key.clone(), v.clone());
            }
            d
        });
    }
    // The watcher has until every key's last change matches its final read
    // (streams cut by the last fault reconnect within a few seconds).
    let caught_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < caught_up && shared.watch_failure.lock().unwrap().is_none() {
        let watched = shared.watched.lock().unwrap();
        let matches = finals.iter().all(|(k, v)| {
            let last = watched.get(k).and_then(|e| e.last());
            let state = last.and_then(|c| {
                (c.kind == corekv_net::ChangeKind::Put)
                    .then(|| String::from_utf8_lossy(&c.value).into_owned())
            });
            state == *v
        });
        drop(watched);
        let watched = shared.prefix_watched.lock().unwrap();
        let prefix_matches = finals.iter().all(|(k, v)| {
            let last = watched.get(k).and_then(|e| e.last());
            let state = last.and_then(|c| {
                (c.kind == corekv_net::ChangeKind::Put)
                    .then(|| String::from_utf8_lossy(&c.value).into_owned())
            });
            state == *v || !k.starts_with(GENERATIONS_PREFIX)
        });
        drop(watched);
        if matches && (prefix_matches || shared.prefix_failure.lock().unwrap().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    shared.watch_stop.store(true, Ordering::SeqCst);
    watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?;
    let prefix_streams = prefix_watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the prefix watcher thread panicked"))?;
    let big_keys = std::mem::take(&mut *shared.big_keys.lock().unwrap());
    let (convergence, mut divergence, replica_reads) =
        check_replicas(&endpoints, &used_keys, &big_keys, opts.progress)?;
    divergence.extend(std::mem::take(
        &mut *shared.restart_failures.lock().unwrap(),
    ));
    let strays = shared.scan_strays.load(Ordering::Relaxed);
    if strays > 0 {
        divergence.push(format!(
            "{strays} scan page(s) returned keys outside their prefix"
        ));
    }
    cluster.stop();
    drop(dir);

    let ops = std::mem::take(&mut *shared.ops.lock().unwrap());
    let mut text = String::new();
    let mut sorted = ops.clone();
    sorted.sort_by_key(|o| o.call);
    for o in &sorted {
        text.push_str(&describe(o));
        text.push('\n');
    }
    std::fs::write(&opts.history_file, text)?;

    let checked = Instant::now();
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for o in &ops {
        by_key.entry(o.key.clone()).or_default().push(o.clone());
    }
    let verdicts: Vec<(String, Verdict)> = std::thread::scope(|s| {
        let handles: Vec<_> = by_key
            .iter()
            .map(|(k, h)| s.spawn(move || (k.clone(), check_key(h))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let anomalies: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::NotLinearizable)
        .map(|(k, _)| k.clone())
        .collect();
    let undecided = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Undecided(_)))
        .map(|(k, _)| k.clone())
        .collect();
    let check_time = checked.elapsed();
    let by_kind = std::mem::take(&mut *shared.by_kind.lock().unwrap());
    let watched = std::mem::take(&mut *shared.watched.lock().unwrap());
    let failed_values = std::mem::take(&mut *shared.failed_values.lock().unwrap());
    let mut watch_anomalies: Vec<String> = shared
        .watch_failure
        .lock()
        .unwrap()
        .take()
        .into_iter()
        .collect();
    let watch_unchecked = std::mem::take(&mut *shared.watch_unchecked.lock().unwrap());
    let unchecked_prefixes: Vec<String> = watch_unchecked
        .iter()
        .map(|(g, _)| format!("g{g}-"))
        .collect();
    let mut checked_keys = 0;
    for (key, key_ops) in &by_key {
        if unchecked_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
        {
            continue;
        }
        checked_keys += 1;
        let events = watched.get(key).map_or(&[][..], Vec::as_slice);
        watch_anomalies.extend(check_watch(
            key,
            events,
            key_ops,
            &failed_values,
            finals.get(key).cloned(),
        ));
    }
    if checked_keys == 0 && !by_key.is_empty() {
        watch_anomalies.push("no key generation could be watched".into());
    }
    // The prefix watch: every key of every generation, nothing else.
    let prefix_watched = std::mem::take(&mut *shared.prefix_watched.lock().unwrap());
    let prefix_anomalies_from = watch_anomalies.len();
    if let Some(f) = shared.prefix_failure.lock().unwrap().take() {
        watch_anomalies.push(f);
    }
    for (key, key_ops) in by_key
        .iter()
        .filter(|(k, _)| k.starts_with(GENERATIONS_PREFIX))
    {
        let events = prefix_watched.get(key).map_or(&[][..], Vec::as_slice);
        watch_anomalies.extend(check_watch(
            key,
            events,
            key_ops,
            &failed_values,
            finals.get(key).cloned(),
        ));
    }
    for key in prefix_watched.keys().filter(|k| !by_key.contains_key(*k)) {
        watch_anomalies.push(format!("{key}: changes of a key no client wrote"));
    }
    for a in &mut watch_anomalies[prefix_anomalies_from..] {
        *a = format!("prefix watch: {a}");
    }
    let mut watch_streams = std::mem::take(&mut *shared.watch_streams.lock().unwrap());
    watch_streams.extend(prefix_streams.into_iter().map(|l| format!("prefix: {l}")));
    let shrinking = Instant::now();
    // The smallest of the first few anomalies, shrunk.
    let smallest_failure = anomalies
        .iter()
        .take(5)
        .map(|k| minimize(&by_key[k]))
        .min_by_key(|h| h.len())
        .unwrap_or_default();
    Ok(Report {
        seed: opts.seed,
        operations: ops.len(),
        failed: shared.failed.load(Ordering::SeqCst) as usize,
        unknown: ops.iter().filter(|o| o.output.is_none()).count(),
        by_kind,
        keys: by_key.len(),
        faults,
        anomalies,
        undecided,
        smallest_failure,
        check_time,
        minimize_time: shrinking.elapsed(),
        history_file: opts.history_file.clone(),
        watch_events: watched.values().map(Vec::len).sum(),
        prefix_watch_events: prefix_watched.values().map(Vec::len).sum(),
        watch_anomalies,
        watch_streams,
        watch_unchecked: watch_unchecked
            .into_iter()
            .map(|(g, why)| format!("generation {g}: {why}"))
            .collect(),
        convergence,
        divergence,
        replica_reads,
    })
}
