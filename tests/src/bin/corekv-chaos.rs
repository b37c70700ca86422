//! `corekv-chaos`: runs a local cluster under faults with concurrent
//! clients, then checks the recorded history for linearizability and the
//! replicas against each other. Exits 0 when all is well, 1 when a key's
//! history is not linearizable, 2 when the run could not be made, 3 for a
//! watch problem, 4 when replicas diverged (or a node did not restart).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use corekv_tests::chaos::{run, ChaosOptions, FaultKind};

/// Fault-injection run of a local corekv cluster, checked for linearizability.
#[derive(Parser, Debug)]
#[command(name = "corekv-chaos", version)]
struct Args {
    /// Seconds of clients and faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the fault schedule and the clients' choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Of those, clients that speak the Redis protocol (the nodes then
    /// serve it on BASE+200+i); their operations are checked like the rest.
    #[arg(long, default_value_t = 0)]
    resp_clients: usize,
    /// Register keys in use at a time (plus 2 counters).
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Seconds before clients move to fresh keys.
    #[arg(long, default_value_t = 10)]
    key_rotation: u64,
    /// Faults to inject, comma-separated: kill, pause, isolate, one-way,
    /// cut-link, loss, delay, split, lag; not by default: idle (clients
    /// pause, regions hibernate, a node fails while they sleep), move
    /// (needs --nodes 4 or more) and kill-loop; `none` for none.
    #[arg(
        long,
        default_value = "kill,pause,isolate,one-way,cut-link,loss,delay,split,lag"
    )]
    faults: String,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards per node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Base port (clients on BASE+i, peers on BASE+100+i); default: a free one.
    #[arg(long)]
    base_port: Option<u16>,
    /// Where to save the history (default: `corekv-chaos-SEED.txt` in the
    /// system's temporary directory).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Deliberately break reads on node 1 (served without ReadIndex) and
    /// isolate it repeatedly; half the clients only read. The checker must
    /// report an anomaly.
    #[arg(long)]
    break_reads: bool,
    /// Turn authentication on before the clients start: the nodes share a
    /// node key, every client (native and Redis) logs in as a user with
    /// write:*, and the cluster's checks log in as well.
    #[arg(long)]
    auth: bool,
    /// TLS on every port (a throwaway CA in the cluster's directory): every
    /// client, native and Redis, and every peer link speaks TLS.
    #[arg(long)]
    tls: bool,
}

fn main() {
    let a = Args::parse();
    let faults = if a.faults == "none" {
        Vec::new()
    } else {
        match a
            .faults
            .split(',')
            .map(|s| FaultKind::parse(s.trim()))
            .collect()
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("corekv-chaos: {e}");
                std::process::exit(2);
            }
        }
    };
    let seed = a.seed.unwrap_or_else(rand_seed);
    let mut opts = ChaosOptions {
        duration: Duration::from_secs(a.duration),
        seed,
        clients: a.clients,
        resp_clients: a.resp_clients.min(a.clients),
        keys: a.keys,
        key_rotation: Duration::from_secs(a.key_rotation.max(1)),
        faults,
        nodes: a.nodes,
        shards: a.shards,
        base_port: a.base_port,
        history_file: a
            .history
            .unwrap_or_else(|| std::env::temp_dir().join(format!("corekv-chaos-{seed}.txt"))),
        break_reads: a.break_reads,
        auth: a.auth,
        tls: a.tls,
        progress: true,
        ..ChaosOptions::default()
    };
    if a.break_reads {
        opts.faults = vec![FaultKind::Isolate];
        opts.readers = opts.clients / 2;
        opts.fault_ms = (6000, 8000);
    }
    eprintln!(
        "corekv-chaos: {} nodes, {} clients, {} s, seed {seed}",
        opts.nodes, opts.clients, a.duration
    );
    match run(&opts) {
        Ok(report) => {
            print!("{}", report.render());
            let code = if !report.linearizable() {
                1
            } else if !report.converged() {
                4
            } else if !report.watch_anomalies.is_empty() {
                3
            } else {
                0
            };
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("corekv-chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

fn rand_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}
