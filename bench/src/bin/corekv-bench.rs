//! `corekv-bench`: load a corekv cluster (or Redis) and report throughput and
//! latency percentiles per operation type.
//!
//! Without `--endpoints` or `--target`, it starts a local 3-node cluster in a
//! temporary directory, preloads it, runs, and stops it again.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use corekv_bench::cpu::{cpu_time, pids_listening_on, ServerCpu};
use corekv_bench::driver::{self, LoadSpec, Progress, Target};
use corekv_bench::report::Report;
use corekv_bench::workload::{KeyDist, Mix};
use corekv_engine::Consistency;
use corekv_net::Client;
use corekv_tools::dev::{DevOptions, LocalCluster};

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
    Follower,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientArg {
    Driver,
    Async,
}

#[derive(Parser)]
#[command(name = "corekv-bench", version, about = "corekv load generator")]
struct Args {
    /// corekv client addresses (absent: start a local 3-node cluster).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Run against a server speaking the Redis protocol instead:
    /// redis://HOST:PORT (a redis-server), or resp://HOST:PORT,... (corekv
    /// nodes' --resp-listen addresses; connections spread over them).
    #[arg(long)]
    target: Option<String>,
    /// read-only, read-heavy (95/5), mixed (50/50), write-only.
    #[arg(long, default_value = "read-heavy")]
    workload: String,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// uniform, zipfian[:THETA], hotspot (90% of operations on 1% of keys).
    #[arg(long, default_value = "uniform")]
    distribution: String,
    /// Simulated clients (each with its own connections).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 32)]
    pipeline: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: total operations per second (latency from intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Read consistency.
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: ConsistencyArg,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Skip writing every key before the run.
    #[arg(long)]
    no_preload: bool,
    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards per node of the embedded cluster (default: cores).
    #[arg(long)]
    shards: Option<usize>,
    /// Send every request to its node's client address (the shard there
    /// passes it on to the region's shard), as a client that is not
    /// shard-aware does; default: to the region's shard port.
    #[arg(long)]
    no_shard_ports: bool,
    /// Regions of the embedded cluster.
    #[arg(long, default_value_t = 8)]
    regions: u64,
    /// Which corekv client sends the run's requests: `driver` (this tool's
    /// own, on glommio) or `async` (the `corekv-client` library's
    /// AsyncClient on tokio, one shared instance; closed loop only). The
    /// preload always uses the driver.
    #[arg(long, value_enum, default_value = "driver")]
    client: ClientArg,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Seed of key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Turn authentication on in the embedded cluster (a node key, root's
    /// login) and log every connection in: the cost of the checks.
    #[arg(long)]
    auth: bool,
    /// Log in as this user (default root) with the token in FILE, for a
    /// cluster given with --endpoints that has authentication on.
    #[arg(long, value_name = "FILE", conflicts_with = "auth")]
    token_file: Option<std::path::PathBuf>,
    /// See --token-file.
    #[arg(long, requires = "token_file")]
    user: Option<String>,
    /// TLS on every port of the embedded cluster (a throwaway CA), and
    /// every connection speaks TLS: the cost of encryption.
    #[arg(long)]
    tls: bool,
    /// Speak TLS to a cluster given with --endpoints, trusting this CA
    /// (PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "tls")]
    tls_ca: Option<std::path::PathBuf>,
    /// Flags for every server of the embedded cluster, after `--`
    /// (e.g. `-- --split-load-ops 20000`).
    #[arg(last = true)]
    server_args: Vec<String>,
}

/// Logs every connection of the run in as `user` with `token`.
fn login(user: &str, token: &str) {
    let _ = driver::LOGIN.set(corekv_net::Credentials {
        user: user.into(),
        token: token.into(),
    });
}

fn free_base(nodes: u16) -> u16 {
    (0..50u16)
        .map(|i| 40_000 + i * 400)
        .find(|&b| {
            (1..=nodes).all(|i| {
                [b + i, b + 100 + i, b + 300 + i]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            })
        })
        .unwrap_or(40_000)
}

fn progress_thread(p: Arc<Progress>, label: &'static str) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut last = 0;
        let mut last_failed = 0;
        while !p.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let done = p.done.load(Ordering::Relaxed);
            let failed = p.failed.load(Ordering::Relaxed);
            eprintln!(
                "[{label} {:>5.1}s] {:>9} ops/s  errors {:>6}/s  total {}",
                started.elapsed().as_secs_f64(),
                done - last,
                failed - last_failed,
                done
            );
            last = done;
            last_failed = failed;
        }
    })
}

/// The ports the servers of `target` listen on for clients.
fn server_ports(target: &Target) -> Vec<u16> {
    let port = |a: &str| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    match target {
        Target::Redis(addrs) => addrs.iter().filter_map(|a| port(a)).collect(),
        Target::Corekv { nodes, .. } => nodes.values().filter_map(|a| port(a)).collect(),
    }
}

/// Runs the load; with `servers`, also measures their CPU from the end of
/// the warm-up to the end of the run.
fn load(
    spec: LoadSpec,
    target: Target,
    label: &'static str,
    servers: &[u32],
    async_client: bool,
) -> anyhow::Result<(corekv_bench::report::Stats, Duration, Option<ServerCpu>)> {
    let progress = Arc::new(Progress::default());
    let t = progress_thread(progress.clone(), label);
    let sampler = (!servers.is_empty()).then(|| {
        let (p, pids, warmup) = (progress.clone(), servers.to_vec(), spec.warmup);
        std::thread::spawn(move || {
            std::thread::sleep(warmup);
            (
                cpu_time(&pids),
                p.done.load(Ordering::Relaxed),
                Instant::now(),
            )
        })
    });
    let r = match (&target, async_client) {
        (Target::Corekv { nodes, .. }, true) => {
            driver::run_async(spec, nodes.values().cloned().collect(), progress.clone())
        }
        _ => driver::run(spec, target, progress.clone()),
    };
    let end = (cpu_time(servers), progress.done.load(Ordering::Relaxed));
    progress.stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    let (stats, elapsed) = r?;
    let cpu = sampler
        .and_then(|s| s.join().ok())
        .map(|(start, done, at)| {
            ServerCpu::between(start, end.0, servers.len(), end.1 - done, at.elapsed())
        });
    Ok((stats, elapsed, cpu))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mix = Mix::parse(&a.workload).map_err(anyhow::Error::msg)?;
    let dist = KeyDist::parse(&a.distribution).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(a.keys > 0, "--keys must be > 0");
    anyhow::ensure!(
        a.connections > 0 && a.pipeline > 0,
        "--connections and --pipeline must be > 0"
    );
    anyhow::ensure!(a.duration > 0.0, "--duration must be > 0");
    anyhow::ensure!(
        a.client == ClientArg::Driver || a.target.is_none(),
        "--client async is corekv's client: not for --target"
    );
    anyhow::ensure!(
        a.client == ClientArg::Driver || a.rate.is_none(),
        "--client async runs closed loop only (no --rate)"
    );
    let consistency = match a.consistency {
        ConsistencyArg::Linearizable => Consistency::Linearizable,
        ConsistencyArg::Lease => Consistency::Lease,
        ConsistencyArg::Stale => Consistency::Stale,
        ConsistencyArg::Follower => Consistency::Follower,
    };

    // The cluster: given, or embedded.
    let mut embedded: Option<(LocalCluster, tempfile::TempDir)> = None;
    let (target, target_name) = if let Some(t) = &a.target {
        let addrs = t
            .strip_prefix("redis://")
            .or_else(|| t.strip_prefix("resp://"))
            .ok_or_else(|| {
                anyhow::anyhow!("--target must be redis://HOST:PORT or resp://HOST:PORT,...")
            })?;
        let addrs: Vec<String> = addrs.split(',').map(String::from).collect();
        anyhow::ensure!(
            addrs.iter().all(|a| !a.is_empty()),
            "--target lists an empty address"
        );
        (Target::Redis(addrs), t.clone())
    } else {
        let endpoints = if a.endpoints.is_empty() {
            let dir = tempfile::Builder::new().prefix("corekv-bench-").tempdir()?;
            anyhow::ensure!(
                (1..=9).contains(&a.nodes),
                "--nodes must be 1..=9 for the embedded cluster"
            );
            eprintln!(
                "starting a local {}-node cluster in {}",
                a.nodes,
                dir.path().display()
            );
            let mut c = LocalCluster::start(DevOptions {
                nodes: a.nodes,
                base_port: free_base(a.nodes as u16),
                data_dir: dir.path().to_path_buf(),
                shards: a.shards,
                regions: Some(a.regions),
                extra_args: a.server_args.clone(),
                node_args: Vec::new(),
                fault_files: false,
                metrics: false,
                resp: false,
                node_key: a.auth,
                tls: a.tls,
            })?;
            if let Some(t) = c.client_tls() {
                let _ = driver::TLS.set(t);
                eprintln!("TLS on every port; every connection speaks TLS");
            }
            c.wait_ready(Duration::from_secs(60))?;
            if a.auth {
                let token = std::fs::read_to_string(c.enable_auth()?)?;
                login(corekv_net::auth::ROOT_USER, token.trim());
                eprintln!("authentication on; every connection logs in as root");
            }
            // Let leaders move to their preferred nodes before measuring.
            std::thread::sleep(Duration::from_secs(3));
            c.wait_ready(Duration::from_secs(60))?;
            let e = c.endpoints();
            embedded = Some((c, dir));
            e.split(',').map(String::from).collect()
        } else {
            if let Some(path) = &a.token_file {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?;
                let user = a.user.as_deref().unwrap_or(corekv_net::auth::ROOT_USER);
                login(user, token.trim());
            }
            if let Some(ca) = &a.tls_ca {
                let t = corekv_net::tls::client_tls(ca, None).map_err(anyhow::Error::msg)?;
                let _ = driver::TLS.set(t);
            }
            a.endpoints.clone()
        };
        // Leaders may be moving (balancing after start): wait until every
        // region has one.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (routes, nodes, shard_ports) = loop {
            let mut client = Client::connect(driver::client_config(endpoints.clone()))?;
            let routes = client.routes().to_vec();
            if routes.iter().all(|r| r.leader_node != 0) {
                let nodes = client.nodes().clone();
                let mut ports = std::collections::HashMap::new();
                if !a.no_shard_ports {
                    for n in nodes.keys() {
                        ports.insert(*n, client.shard_ports_of(*n)?);
                    }
                }
                break (routes, nodes, ports);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "some regions have no leader after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        (
            Target::Corekv {
                routes,
                nodes,
                shard_ports,
            },
            "corekv".to_string(),
        )
    };

    let spec = LoadSpec {
        mix,
        keys: a.keys,
        value_size: a.value_size,
        dist: dist.clone(),
        clients: a.connections,
        pipeline: a.pipeline,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        rate: a.rate,
        consistency,
        threads: a.threads,
        preload: false,
        seed: a.seed,
    };
    if !a.no_preload && mix != Mix::WriteOnly {
        eprintln!("preloading {} keys of {} bytes", a.keys, a.value_size);
        let preload = LoadSpec {
            preload: true,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(3600),
            rate: None,
            ..spec.clone()
        };
        let (stats, took, _) = load(preload, target.clone(), "preload", &[], false)?;
        let written = stats.write.len();
        eprintln!(
            "preloaded {written} keys in {took:.1?} ({:.0} writes/s), errors {:?}",
            written as f64 / took.as_secs_f64(),
            stats.errors
        );
        anyhow::ensure!(
            written == a.keys,
            "preload wrote {written} of {} keys",
            a.keys
        );
    }
    eprintln!(
        "running {} for {:.0}s after {:.0}s warm-up: {} clients x {} in flight{}{}",
        mix.name(),
        a.duration,
        a.warmup,
        a.connections,
        a.pipeline,
        a.rate
            .map(|r| format!(", open loop at {r:.0} ops/s"))
            .unwrap_or_default(),
        if a.client == ClientArg::Async {
            ", through the async client library"
        } else {
            ""
        }
    );
    let servers = pids_listening_on(&server_ports(&target));
    if servers.is_empty() {
        eprintln!("no local process listens on the target's ports: server CPU not measured");
    } else {
        eprintln!("measuring the CPU of server processes {servers:?}");
    }
    let (stats, elapsed, server_cpu) =
        load(spec, target, "run", &servers, a.client == ClientArg::Async)?;
    if a.target.is_none() {
        let endpoints = match &embedded {
            Some((c, _)) => c.endpoints().split(',').map(String::from).collect(),
            None => a.endpoints.clone(),
        };
        if let Ok(c) = Client::connect(driver::client_config(endpoints)) {
            // The regions holding the workload's keys: not the meta region.
            let data: Vec<_> = c
                .routes()
                .into_iter()
                .filter(|r| !r.region.is_meta())
                .collect();
            let leaders: std::collections::BTreeSet<u64> =
                data.iter().map(|r| r.leader_node).collect();
            eprintln!(
                "regions at the end: {} (led from {} node(s))",
                data.len(),
                leaders.len()
            );
        }
    }
    let report = Report {
        target: target_name,
        workload: mix.name().to_string(),
        distribution: dist.name(),
        consistency: format!("{:?}", consistency).to_lowercase(),
        elapsed,
        stats,
        server_cpu,
    };
    if let Some((mut c, _dir)) = embedded {
        c.stop();
    }
    let mut out = std::io::stdout();
    write!(out, "{}", report.to_table())?;
    if a.json {
        writeln!(out, "{}", report.to_json())?;
    }
    Ok(())
}
