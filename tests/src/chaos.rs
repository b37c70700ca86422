//! The fault-injection runner behind `corekv-chaos`.
//!
//! It starts a local cluster of real `corekv-server` processes, runs
//! concurrent clients doing get/put/cas/delete on register keys and
//! get/incr on counter keys (every written value unique; reads are
//! `Linearizable`, `Lease` or `Follower`), and meanwhile
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
//!
//! Last, what no client history shows: the consistency check (`corekv ctl
//! check --all`: every replica's digest against its leader's at one raft
//! index) and a read of every key written from every replica holding it,
//! which must equal the cluster's final value. A divergent replica fails
//! the run like a linearizability anomaly.

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
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Isolate,
        FaultKind::OneWay,
        FaultKind::CutLink,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Split,
        FaultKind::Lag,
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
        }
    }

    /// The kinds a run injects unless told otherwise: all but `move`
    /// (which needs a fourth node) and `kill-loop` (heavy on the disk).
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
    /// Print progress on stderr.
    pub progress: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            duration: Duration::from_secs(60),
            seed: 1,
            clients: 6,
            readers: 0,
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

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Operations recorded (failed ones excluded).
    pub operations: usize,
    /// Operations that definitely did not apply.
    pub failed: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Operations by kind and outcome (`get ok`, `put unknown`, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Distinct keys.
    pub keys: usize,
    /// Faults injected, in order.
    pub faults: Vec<FaultEvent>,
    /// Keys whose history is not linearizable.
    pub anomalies: Vec<String>,
    /// Keys the checker could not decide.
    pub undecided: Vec<String>,
    /// A small failing sub-history of one anomalous key.
    pub smallest_failure: Vec<Operation>,
    /// Time spent checking.
    pub check_time: Duration,
    /// Time spent shrinking the first failure.
    pub minimize_time: Duration,
    /// Where the history was written.
    pub history_file: PathBuf,
    /// Changes the watcher saw.
    pub watch_events: usize,
    /// What the watcher saw wrong (and why it stopped, if it did).
    pub watch_anomalies: Vec<String>,
    /// The state of every watch stream when the watcher stopped, one line
    /// each (printed with the watch's problems).
    pub watch_streams: Vec<String>,
    /// Key generations the watch check left out, and why.
    pub watch_unchecked: Vec<String>,
    /// The consistency check's report (every replica against its leader).
    pub convergence: String,
    /// Replicas that differ from their leader or hold another value of a
    /// key than the cluster's final one, and nodes that failed to start
    /// again after a SIGKILL.
    pub divergence: Vec<String>,
    /// Keys read from every replica holding them at the end.
    pub replica_reads: usize,
}

impl Report {
    /// True when every key's history is linearizable, every watch saw
    /// exactly the committed changes and every replica agrees.
    pub fn ok(&self) -> bool {
        self.linearizable() && self.watch_anomalies.is_empty() && self.converged()
    }

    /// True when every replica matches its leader and every key read from
    /// every replica gave the final value (and every restart worked).
    pub fn converged(&self) -> bool {
        self.divergence.is_empty()
    }

    /// True when every key's history is linearizable (the watch aside).
    pub fn linearizable(&self) -> bool {
        self.anomalies.is_empty() && self.undecided.is_empty()
    }

    /// A human-readable summary.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.kind.name()).or_default() += 1;
        }
        let _ = writeln!(s, "seed:        {}", self.seed);
        let _ = writeln!(
            s,
            "operations:  {} recorded ({} unknown outcome), {} definitely failed",
            self.operations, self.unknown, self.failed
        );
        let _ = writeln!(s, "keys:        {}", self.keys);
        let _ = writeln!(
            s,
            "faults:      {} ({})",
            self.faults.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "by kind:     {}",
            self.by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "history:     {}", self.history_file.display());
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  fault {:>6.1}s - {:>6.1}s  {}",
                f.start_us as f64 / 1e6,
                f.end_us as f64 / 1e6,
                f.detail
            );
        }
        for u in &self.watch_unchecked {
            let _ = writeln!(s, "not watched: {u}");
        }
        if self.watch_anomalies.is_empty() {
            let _ = writeln!(
                s,
                "watch:       {} changes seen, each committed change once and in order",
                self.watch_events
            );
        } else {
            let _ = writeln!(
                s,
                "watch:       {} changes seen, {} PROBLEM(S):",
                self.watch_events,
                self.watch_anomalies.len()
            );
            for p in self.watch_anomalies.iter().take(20) {
                let _ = writeln!(s, "  {p}");
            }
            let _ = writeln!(s, "watch streams when the watcher stopped:");
            for l in &self.watch_streams {
                let _ = writeln!(s, "  {l}");
            }
        }
        let _ = writeln!(s, "checked in:  {:.2?}", self.check_time);
        for l in self.convergence.lines() {
            let _ = writeln!(s, "replicas:    {l}");
        }
        if self.divergence.is_empty() {
            let _ = writeln!(
                s,
                "replicas:    {} keys read from every replica: all hold the final value",
                self.replica_reads
            );
        } else {
            let _ = writeln!(
                s,
                "replicas:    DIVERGED: {} problem(s):",
                self.divergence.len()
            );
            for d in self.divergence.iter().take(20) {
                let _ = writeln!(s, "  {d}");
            }
        }
        if self.anomalies.is_empty() && self.undecided.is_empty() {
            let _ = writeln!(s, "verdict:     linearizable (every key)");
        } else {
            let _ = writeln!(
                s,
                "verdict:     NOT LINEARIZABLE: {} key(s) {:?}; undecided: {:?}",
                self.anomalies.len(),
                self.anomalies,
                self.undecided
            );
            let _ = writeln!(
                s,
                "smallest failing sub-history ({} ops, found in {:.2?}; call µs, return µs):",
                self.smallest_failure.len(),
                self.minimize_time
            );
            for o in &self.smallest_failure {
                let _ = writeln!(s, "  {}", describe(o));
            }
        }
        if !self.ok() {
            let _ = writeln!(s, "rerun with --seed {}", self.seed);
        }
        s
    }
}

struct Shared {
    started: Instant,
    stop: AtomicBool,
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
    /// Keys written with large values by `kill-loop` faults.
    big_keys: Mutex<std::collections::BTreeSet<String>>,
    /// Nodes that did not start again after a SIGKILL.
    restart_failures: Mutex<Vec<String>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
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
        ops: Mutex::new(Vec::new()),
        failed: AtomicU64::new(0),
        by_kind: Mutex::new(BTreeMap::new()),
        failed_values: Mutex::new(HashSet::new()),
        watched: Mutex::new(BTreeMap::new()),
        watch_failure: Mutex::new(None),
        watch_stop: AtomicBool::new(false),
        watch_streams: Mutex::new(Vec::new()),
        watch_unchecked: Mutex::new(Vec::new()),
        big_keys: Mutex::new(Default::default()),
        restart_failures: Mutex::new(Vec::new()),
    });
    // The first generation's keys are watched before anyone writes them.
    let mut watch_client = connect(&endpoints, &shared)?;
    let first = watch_generation(&mut watch_client, 0, opts)
        .map_err(|e| anyhow::anyhow!("watching the first keys: {e}"))?;
    let watcher = {
        let (shared, opts) = (shared.clone(), opts.clone());
        std::thread::spawn(move || watch_loop(&shared, watch_client, first, &opts))
    };
    let mut workers = Vec::new();
    for c in 0..opts.clients {
        let (shared, endpoints, opts) = (shared.clone(), endpoints.clone(), opts.clone());
        workers.push(std::thread::spawn(move || {
            client_loop(c as u64 + 1, &shared, endpoints, &opts)
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
            FaultKind::Lag | FaultKind::KillLoop => {
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
        if matches {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    shared.watch_stop.store(true, Ordering::SeqCst);
    watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?;
    let big_keys = std::mem::take(&mut *shared.big_keys.lock().unwrap());
    let (convergence, mut divergence, replica_reads) =
        check_replicas(&endpoints, &used_keys, &big_keys, opts.progress)?;
    divergence.extend(std::mem::take(
        &mut *shared.restart_failures.lock().unwrap(),
    ));
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
    let watch_streams = std::mem::take(&mut *shared.watch_streams.lock().unwrap());
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

/// The faults that run their own course until `until`: `lag` and
/// `kill-loop` (see the module's documentation). Returns what was done.
fn during(
    cluster: &mut LocalCluster,
    base: &[String],
    shared: &Shared,
    kind: FaultKind,
    (victim, choice): (usize, usize),
    until: Instant,
) -> anyhow::Result<String> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let id = ids[victim];
    let mut cfg = ClientConfig::new(cluster_endpoints(cluster));
    cfg.request_timeout = Duration::from_secs(5);
    match kind {
        FaultKind::Lag => {
            cluster.set_faults(victim, &format!("{}isolate\n", base[victim]))?;
            std::thread::sleep(Duration::from_millis(300));
            let mut done = vec![format!("node {id} cut off")];
            if let Ok(mut c) = Client::connect(cfg) {
                // Led elsewhere: the lagging node must miss it.
                let held: Vec<_> = crate::data_routes(&c)
                    .into_iter()
                    .filter(|r| r.region.peer_on_node(id).is_some() && r.leader_node != id)
                    .collect();
                if !held.is_empty() {
                    let r = held[choice % held.len()].region.id;
                    done.push(match c.split(r, None) {
                        Ok(_) => format!("region {r} split"),
                        Err(e) => format!("region {r} split: {e}"),
                    });
                }
                // A replica of a region the lagging node holds moves
                // between two other nodes, and leads from its new place.
                let _ = c.refresh();
                let movable: Vec<_> = crate::data_routes(&c)
                    .into_iter()
                    .filter(|r| {
                        r.region.peer_on_node(id).is_some()
                            && r.leader_node != id
                            && ids.iter().any(|n| r.region.peer_on_node(*n).is_none())
                    })
                    .collect();
                if !movable.is_empty() {
                    let route = &movable[choice / 7 % movable.len()];
                    let r = route.region.clone();
                    // A follower's replica: the leader stays put meanwhile.
                    let from = r
                        .peers
                        .iter()
                        .map(|p| p.node_id)
                        .find(|n| *n != id && *n != route.leader_node)
                        .unwrap_or(0);
                    let to = ids
                        .iter()
                        .copied()
                        .find(|n| r.peer_on_node(*n).is_none())
                        .unwrap_or(0);
                    done.push(match crate::ctl_move(&mut c, r.id, from, to) {
                        Ok(_) => match c.transfer_leader(r.id, to) {
                            Ok(_) => format!("region {} moved {from} -> {to}, led from {to}", r.id),
                            Err(e) => format!("region {} moved {from} -> {to}; lead: {e}", r.id),
                        },
                        Err(e) => format!("region {} move {from} -> {to}: {e:#}", r.id),
                    });
                }
            }
            sleep_until_or(until, u64::MAX / 4);
            Ok(done.join(", "))
        }
        FaultKind::KillLoop => {
            let stop = Arc::new(AtomicBool::new(false));
            let acked = Arc::new(AtomicU64::new(0));
            let writer = {
                let (stop, acked, cfg) = (stop.clone(), acked.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let Ok(mut c) = Client::connect(cfg) else {
                        return Vec::new();
                    };
                    let mut keys = Vec::new();
                    for i in 0u64.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let key = format!("big-{choice}-{}", i % 8);
                        let mut value = format!("{i:020}").into_bytes();
                        value.resize(900 << 10, b'.');
                        if c.put(key.as_bytes(), &value, PutOptions::default()).is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        keys.push(key);
                    }
                    keys
                })
            };
            let mut kills = 0;
            let mut rng = StdRng::seed_from_u64(choice as u64);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..1000)));
                cluster.kill(victim);
                kills += 1;
                cluster.start_node(victim)?;
                let addr = cluster.nodes[victim].client_addr.clone();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !corekv_tools::dev::node_answers(&addr) && Instant::now() < deadline {
                    if let Some((n, status)) = cluster.exited() {
                        let log = cluster.nodes[victim].dir.join("server.log");
                        shared.restart_failures.lock().unwrap().push(format!(
                            "node {n} exited ({status}) when started after SIGKILL {kills}: {}",
                            corekv_tools::dev::tail(&log, 3).trim()
                        ));
                        cluster.start_node(victim)?;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            stop.store(true, Ordering::SeqCst);
            let keys = writer.join().unwrap_or_default();
            shared.big_keys.lock().unwrap().extend(keys);
            Ok(format!(
                "node {id} SIGKILLed and restarted {kills} times during 900 KB writes ({} acknowledged)",
                acked.load(Ordering::Relaxed)
            ))
        }
        _ => unreachable!("only lag and kill-loop run their own course"),
    }
}

/// The checks no client history makes, once every node is back and the
/// clients stopped: the consistency check of every region (retried while
/// some replica could not verify it, at most three times), then every key
/// in `keys` and `big_keys` read from every replica holding it, against
/// the cluster's linearizable value. Returns the check's report, the
/// problems found and how many keys were read everywhere.
fn check_replicas(
    endpoints: &[String],
    keys: &std::collections::BTreeSet<String>,
    big_keys: &std::collections::BTreeSet<String>,
    progress: bool,
) -> anyhow::Result<(String, Vec<String>, usize)> {
    let mut cfg = ClientConfig::new(endpoints.to_vec());
    cfg.request_timeout = Duration::from_secs(10);
    let mut c = Client::connect(cfg)?;
    let mut problems = Vec::new();
    let mut text = String::new();
    for attempt in 1..=3 {
        let report = corekv_tools::ctl::check(&mut c, None, Duration::from_secs(20))?;
        text = report.text.clone();
        if !report.mismatched.is_empty() || report.ok() || attempt == 3 {
            if !report.ok() {
                problems.push(format!(
                    "consistency check: mismatched regions {:?}, unverified {:?}",
                    report.mismatched, report.unverified
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    if progress {
        eprintln!("consistency check done; reading every key from every replica");
    }
    let mut read = 0;
    for key in keys.iter().chain(big_keys) {
        let want = match c.get(key.as_bytes(), Consistency::Linearizable) {
            Ok(v) => v.map(|v| v.value),
            Err(e) => {
                problems.push(format!("key {key}: no final read: {e}"));
                continue;
            }
        };
        let h = corekv_engine::route_hash(key.as_bytes());
        let Some(route) = c.routes().iter().find(|r| r.region.contains(h)).cloned() else {
            problems.push(format!("key {key}: no region routes it"));
            continue;
        };
        for p in &route.region.peers {
            let Some(addr) = c.nodes().get(&p.node_id).cloned() else {
                continue;
            };
            match crate::read_on_node(&addr, &route.region, key.as_bytes()) {
                Ok(got) if got == want => {}
                Ok(got) => problems.push(format!(
                    "key {key}: node {} holds {}, the cluster {}",
                    p.node_id,
                    shown(got.as_deref()),
                    shown(want.as_deref())
                )),
                Err(e) => problems.push(format!("key {key}: node {}: {e}", p.node_id)),
            }
        }
        read += 1;
    }
    Ok((text, problems, read))
}

/// A value as a problem line shows it: short values whole, long ones by
/// length and start.
fn shown(v: Option<&[u8]>) -> String {
    match v {
        None => "nothing".into(),
        Some(b) if b.len() <= 40 => format!("{:?}", String::from_utf8_lossy(b)),
        Some(b) => format!(
            "{} bytes starting {:?}",
            b.len(),
            String::from_utf8_lossy(&b[..20])
        ),
    }
}

/// The keys clients use in `generation`.
fn generation_keys(generation: u128, opts: &ChaosOptions) -> Vec<String> {
    (0..opts.keys)
        .map(|i| format!("g{generation}-reg-{i}"))
        .chain((0..2).map(|i| format!("g{generation}-counter-{i}")))
        .collect()
}

fn watch_generation(
    c: &mut Client,
    generation: u128,
    opts: &ChaosOptions,
) -> Result<Watch, String> {
    let keys = generation_keys(generation, opts);
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    // Leaders may be changing: try for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.watch(&refs, 0) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Watches each key generation from before it starts until told to stop,
/// gathering the changes into `shared.watched`; leaves the streams' states
/// in `shared.watch_streams`.
fn watch_loop(shared: &Shared, c: Client, first: Watch, opts: &ChaosOptions) {
    let mut watches = vec![Some(first)];
    watch_generations(shared, c, &mut watches, opts);
    let mut lines = Vec::new();
    for (g, w) in watches.iter().enumerate() {
        if let Some(w) = w {
            lines.extend(w.streams().iter().map(|s| format!("g{g}: {s}")));
        }
    }
    *shared.watch_streams.lock().unwrap() = lines;
}

fn watch_generations(
    shared: &Shared,
    mut c: Client,
    watches: &mut Vec<Option<Watch>>,
    opts: &ChaosOptions,
) {
    let rotation = opts.key_rotation.as_millis().max(1);
    let fail = |m: String| *shared.watch_failure.lock().unwrap() = Some(m);
    loop {
        let current = shared.started.elapsed().as_millis() / rotation;
        let next = watches.len() as u128;
        if next <= current + 2 && !shared.stop.load(Ordering::SeqCst) {
            // Opened up to two generations ahead. A watch that could not be
            // opened before its generation began (the cluster was
            // unavailable that long) would miss the first writes: that
            // generation is left out of the watch check, and said so.
            match watch_generation(&mut c, next, opts) {
                Ok(w) if shared.started.elapsed().as_millis() / rotation < next => {
                    watches.push(Some(w))
                }
                Ok(_) => {
                    shared.watch_unchecked.lock().unwrap().push((
                        next,
                        "its watch was accepted only after its writes began".into(),
                    ));
                    watches.push(None);
                }
                Err(e) => {
                    shared
                        .watch_unchecked
                        .lock()
                        .unwrap()
                        .push((next, format!("its watch could not be opened: {e}")));
                    watches.push(None);
                }
            }
        }
        for w in watches.iter().flatten() {
            loop {
                match w.next(Duration::ZERO) {
                    Ok(Some(ch)) => {
                        let key = String::from_utf8_lossy(&ch.key).into_owned();
                        shared
                            .watched
                            .lock()
                            .unwrap()
                            .entry(key)
                            .or_default()
                            .push(ch);
                    }
                    Ok(None) => break,
                    Err(e) => return fail(format!("a watch ended: {e}")),
                }
            }
        }
        if shared.watch_stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sleep_until_or(limit: Instant, ms: u64) {
    let until = (Instant::now() + Duration::from_millis(ms)).min(limit);
    if let Some(d) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn wait_until_node_leads(
    cluster: &LocalCluster,
    node: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect();
    loop {
        if let Ok(c) = Client::connect(ClientConfig::new(endpoints.clone())) {
            if c.routes().iter().any(|r| r.leader_node == node) {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "node {node} never led a region");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn inject(
    cluster: &mut LocalCluster,
    base: &[String],
    kind: FaultKind,
    (victim, other, choice): (usize, usize, usize),
) -> anyhow::Result<String> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let id = |i: usize| ids[i];
    let others: Vec<u64> = (0..ids.len()).filter(|&i| i != victim).map(id).collect();
    let rules = |extra: &str, i: usize| format!("{}{extra}", base[i]);
    Ok(match kind {
        FaultKind::Kill => {
            cluster.kill(victim);
            format!("SIGKILL node {}", id(victim))
        }
        FaultKind::Pause => {
            cluster.signal(victim, libc::SIGSTOP);
            format!("SIGSTOP node {}", id(victim))
        }
        FaultKind::Isolate => {
            cluster.set_faults(victim, &rules("isolate\n", victim))?;
            format!("node {} cut off from the others", id(victim))
        }
        FaultKind::OneWay => {
            let lines: String = others.iter().map(|o| format!("drop-to {o}\n")).collect();
            cluster.set_faults(victim, &rules(&lines, victim))?;
            format!("node {} can hear but not speak", id(victim))
        }
        FaultKind::CutLink => {
            let (a, b) = (id(victim), id(other));
            cluster.set_faults(
                victim,
                &rules(&format!("drop-to {b}\ndrop-from {b}\n"), victim),
            )?;
            cluster.set_faults(
                other,
                &rules(&format!("drop-to {a}\ndrop-from {a}\n"), other),
            )?;
            format!("link {a}-{b} cut")
        }
        FaultKind::Loss => {
            for i in 0..cluster.nodes.len() {
                cluster.set_faults(i, &rules("loss 0.3\n", i))?;
            }
            "30% of raft frames lost".to_string()
        }
        FaultKind::Delay => {
            for i in 0..cluster.nodes.len() {
                cluster.set_faults(i, &rules("delay-ms 40\n", i))?;
            }
            "raft frames delayed 40 ms".to_string()
        }
        FaultKind::Move => {
            let mut cfg = ClientConfig::new(cluster_endpoints(cluster));
            cfg.request_timeout = Duration::from_secs(2);
            match Client::connect(cfg) {
                Ok(mut c) => {
                    let routes = c.routes().to_vec();
                    let r = &routes[choice % routes.len()].region;
                    // From the victim if it holds a replica, to a node
                    // without one.
                    let from = r
                        .peer_on_node(id(victim))
                        .or_else(|| r.peers.get(choice % r.peers.len()))
                        .map_or(0, |p| p.node_id);
                    let to = ids.iter().copied().find(|n| r.peer_on_node(*n).is_none());
                    match to {
                        Some(to) => match crate::ctl_move(&mut c, r.id, from, to) {
                            Ok(report) => report.trim().to_string(),
                            Err(e) => format!("region {} move {from} -> {to}: {e:#}", r.id),
                        },
                        None => format!("region {}: a replica on every node", r.id),
                    }
                }
                Err(e) => format!("move: no node answered: {e}"),
            }
        }
        FaultKind::Lag | FaultKind::KillLoop => unreachable!("run by `during`"),
        FaultKind::Split => {
            let mut cfg = ClientConfig::new(cluster_endpoints(cluster));
            cfg.request_timeout = Duration::from_secs(2);
            match Client::connect(cfg) {
                Ok(mut c) => {
                    // The meta region owns a single hash: it never splits.
                    let routes = crate::data_routes(&c);
                    let region = routes[choice % routes.len()].region.id;
                    match c.split(region, None) {
                        Ok(_) => format!("region {region} split ({} regions)", routes.len() + 1),
                        Err(e) => format!("region {region} split: {e}"),
                    }
                }
                Err(e) => format!("split: no node answered: {e}"),
            }
        }
    })
}

fn cluster_endpoints(cluster: &LocalCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect()
}

fn heal(cluster: &mut LocalCluster, base: &[String]) -> anyhow::Result<()> {
    for (i, rules) in base.iter().enumerate() {
        cluster.set_faults(i, rules)?;
        cluster.signal(i, libc::SIGCONT);
        if !cluster.is_running(i) {
            cluster.start_node(i)?;
        }
    }
    // Fault files are re-read every 100 ms.
    std::thread::sleep(Duration::from_millis(150));
    Ok(())
}

fn connect(endpoints: &[String], shared: &Shared) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(endpoints.to_vec());
    cfg.request_timeout = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(cfg.clone()) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline || shared.stop.load(Ordering::SeqCst) => {
                anyhow::bail!("no node answers: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// How an attempted operation ended.
enum Done {
    Ok(Output),
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

fn classify<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> Output) -> Done {
    match r {
        Ok(v) => Done::Ok(ok(v)),
        Err(ClientError::ConditionFailed { .. }) => Done::Ok(Output::Cas(false)),
        Err(ClientError::NotANumber) => Done::Ok(Output::NotANumber),
        // The client gives up with `Unavailable` only when no attempt could
        // have been applied; that is a promise this run checks.
        Err(ClientError::Unavailable { .. }) => Done::Failed,
        Err(_) => Done::Unknown,
    }
}

fn read(c: &mut Client, key: &str, consistency: Consistency) -> Done {
    match c.get(key.as_bytes(), consistency) {
        Ok(v) => Done::Ok(Output::Value(
            v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
        )),
        // A read that got no answer constrains nothing.
        Err(_) => Done::Failed,
    }
}

fn record(shared: &Shared, client: u64, key: &str, input: Input, f: impl FnOnce() -> Done) {
    let call = shared.now_us();
    let done = f();
    let ret = shared.now_us();
    let kind = match &input {
        Input::Get => "get",
        Input::Put(_) => "put",
        Input::Delete => "delete",
        Input::Cas { .. } => "cas",
        Input::Incr(_) => "incr",
    };
    let (outcome, op) = match done {
        Done::Ok(out) => (
            "ok",
            Some(Operation {
                client,
                key: key.to_string(),
                call,
                ret: Some(ret),
                input,
                output: Some(out),
            }),
        ),
        Done::Unknown => (
            "unknown",
            Some(Operation {
                client,
                key: key.to_string(),
                call,
                ret: None,
                input,
                output: None,
            }),
        ),
        Done::Failed => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if let Input::Put(v) | Input::Cas { new: v, .. } = &input {
                shared.failed_values.lock().unwrap().insert(v.clone());
            }
            ("failed", None)
        }
    };
    *shared
        .by_kind
        .lock()
        .unwrap()
        .entry(format!("{kind} {outcome}"))
        .or_default() += 1;
    if let Some(op) = op {
        shared.ops.lock().unwrap().push(op);
    }
}

/// One client: random operations until told to stop. Returns the keys used.
fn client_loop(
    client: u64,
    shared: &Shared,
    endpoints: Vec<String>,
    opts: &ChaosOptions,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ client);
    let mut used = std::collections::BTreeSet::new();
    let Ok(mut c) = connect(&endpoints, shared) else {
        return Vec::new();
    };
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let generation =
            shared.started.elapsed().as_millis() / opts.key_rotation.as_millis().max(1);
        n += 1;
        let counter = rng.gen_bool(0.2);
        let key = if counter {
            format!("g{generation}-counter-{}", rng.gen_range(0..2))
        } else {
            format!("g{generation}-reg-{}", rng.gen_range(0..opts.keys))
        };
        used.insert(key.clone());
        let consistency = match rng.gen_range(0..10) {
            0..=1 => Consistency::Lease,
            2..=4 => Consistency::Follower,
            _ => Consistency::Linearizable,
        };
        let value = format!("c{client}-{n}");
        let reader = client as usize <= opts.readers;
        let roll = if reader { 0 } else { rng.gen_range(0..100) };
        if counter {
            if roll < 50 {
                record(shared, client, &key, Input::Get, || {
                    read(&mut c, &key, consistency)
                });
            } else {
                record(shared, client, &key, Input::Incr(1), || {
                    classify(c.incr(key.as_bytes(), 1), Output::Counter)
                });
            }
            continue;
        }
        match roll {
            0..=39 => {
                let mut seen = None;
                record(shared, client, &key, Input::Get, || {
                    let d = read(&mut c, &key, consistency);
                    if let Done::Ok(Output::Value(v)) = &d {
                        seen = Some(v.clone());
                    }
                    d
                });
                if let Some(v) = seen {
                    last_seen.insert(key.clone(), v);
                }
            }
            40..=64 => record(shared, client, &key, Input::Put(value.clone()), || {
                classify(
                    c.put(key.as_bytes(), value.as_bytes(), PutOptions::default()),
                    |_| Output::Written,
                )
            }),
            65..=84 => {
                let expected = last_seen.get(&key).cloned().flatten();
                record(
                    shared,
                    client,
                    &key,
                    Input::Cas {
                        expected: expected.clone(),
                        new: value.clone(),
                    },
                    || {
                        classify(
                            c.cas(
                                key.as_bytes(),
                                expected.as_deref().map(str::as_bytes),
                                value.as_bytes(),
                                None,
                            ),
                            |_| Output::Cas(true),
                        )
                    },
                );
            }
            _ => record(shared, client, &key, Input::Delete, || {
                classify(c.delete(key.as_bytes(), None), Output::Deleted)
            }),
        }
    }
    used.into_iter().collect()
}
