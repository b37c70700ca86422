//! Node settings: command-line flags, optionally on top of a TOML file
//! (`--config node.toml`, same names in kebab-case), validated into a
//! [`NodeConfig`] before anything is written. See `docs/node.example.toml`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use corekv_engine::{Config as EngineConfig, DbConfig};

use crate::error::in_range;
pub use crate::error::ConfigError;
use serde::Deserialize;

/// Flags of `corekv-server`; every field may also come from the file.
#[derive(clap::Parser, Debug, Default, Deserialize)]
#[command(
    name = "corekv-server",
    version,
    about = "corekv node: a shard per core, raft regions on a shared RocksDB"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerArgs {
    /// TOML file with any of these settings; flags win over it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (1..=999), one of --initial-cluster.
    #[arg(long)]
    pub id: Option<u64>,
    /// Data directory (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for raft traffic from other nodes, HOST:PORT.
    #[arg(long)]
    pub peer_listen: Option<String>,
    /// Address for clients, HOST:PORT.
    #[arg(long)]
    pub client_listen: Option<String>,
    /// Peer addresses of every node: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Shards (pinned executors). Default: number of cores.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Regions a new cluster starts with (bootstrap only). Default 8.
    #[arg(long)]
    pub regions: Option<u64>,
    /// Raft tick, ms. Default 10.
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Minimum election timeout, in ticks. Default 15.
    #[arg(long)]
    pub election_ticks: Option<usize>,
    /// Heartbeat interval, in ticks. Default 3.
    #[arg(long)]
    pub heartbeat_ticks: Option<usize>,
    /// Leaders sweep their regions for expired keys this often, ms; 0 turns
    /// active expiry off (expired values are still never read). Default 1000.
    #[arg(long)]
    pub expire_sweep_ms: Option<u64>,
    /// A request pending this long is answered Timeout (outcome unknown), ms.
    /// Default 5000.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Watches one shard serves at once; more get `Busy`. Default 10000.
    #[arg(long)]
    pub watchers_max: Option<usize>,
    /// A region led here that serves this many requests per second for
    /// `--split-load-windows` seconds in a row splits where its load halves;
    /// 0 = never by load. Default 20000 (it pays when the nodes have cores
    /// of their own; docs/operations.md says what it costs when they share).
    #[arg(long)]
    pub split_load_ops: Option<u64>,
    /// Seconds in a row a region must be over `--split-load-ops`. Default 10.
    #[arg(long)]
    pub split_load_windows: Option<u32>,
    /// A region with more keys than this splits at the middle of its range;
    /// 0 = never by size. Default 4000000.
    #[arg(long)]
    pub split_keys: Option<u64>,
    /// A region holding more than this many MiB of keys and values splits
    /// at the middle of its range; 0 = never by size. Default 256.
    #[arg(long)]
    pub split_mb: Option<u64>,
    /// Time between two automatic splits started by one shard, ms.
    /// Default 30000.
    #[arg(long)]
    pub split_cooldown_ms: Option<u64>,
    /// Moves per minute the placement driver may make to even out replicas
    /// per node, leaders per node and replicas per shard (it runs on the
    /// node leading the first region); 0 turns it off. Default 6.
    #[arg(long)]
    pub placement_moves_per_min: Option<u32>,
    /// Requests/s (reads plus writes) below which the placement driver
    /// balances leaders and shards by count instead of by load; also the
    /// smallest imbalance it acts on. Default 1000.
    #[arg(long)]
    pub placement_min_load: Option<f64>,
    /// Log indexes of change history each region keeps for watchers that
    /// resume from a version; 0 = none. Default 10000.
    #[arg(long)]
    pub watch_history_entries: Option<u64>,
    /// A region compacts its raft log once this many applied entries are in
    /// it (keeping a tenth, at most 1000, for followers a little behind); a
    /// follower more than four times this far behind catches up by
    /// snapshot. Default 10000; at least 20.
    #[arg(long)]
    pub log_compact_entries: Option<u64>,
    /// Region leaders run the consistency check (`corekv ctl check`) by
    /// themselves this often, seconds; 0 = only when asked. Each check reads
    /// every region once on every replica. Default 0.
    #[arg(long)]
    pub consistency_check_secs: Option<u64>,
    /// A region whose leader found nothing new this many ticks in a row
    /// hibernates: no ticks and no heartbeats until a request or a message
    /// wakes it; its followers watch one beat per node instead. 0 = never.
    /// Default 50 (500 ms at the default tick).
    #[arg(long)]
    pub hibernate_ticks: Option<usize>,
    /// Largest value, bytes. Default 1 MiB; at most 8 MiB.
    #[arg(long)]
    pub value_bytes_max: Option<usize>,
    /// Largest client frame, bytes. Default 16 MiB.
    #[arg(long)]
    pub frame_bytes_max: Option<usize>,
    /// Client connections per shard. Default 10000.
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Each shard's own client port, beside --client-listen: shard-aware
    /// clients send a region's requests straight to the shard serving it.
    /// `auto` (the system picks free ports; clients learn them from the
    /// node's Hello), `off`, or a first port P (shard i listens on P+i, on
    /// the --client-listen host). Default auto.
    #[arg(long)]
    pub shard_ports: Option<String>,
    /// RocksDB block cache, MiB. Default 256.
    #[arg(long)]
    pub block_cache_mb: Option<usize>,
    /// Memory for caches and write buffers of the node, MiB (at least 64):
    /// half for RocksDB's block cache, a quarter for the shards' hot-key
    /// caches, a quarter for memtables. Replaces --block-cache-mb. Default:
    /// none (256 MiB block cache, 64 MiB hot-key cache per shard, 16 MiB
    /// memtables).
    #[arg(long)]
    pub memory_budget_mb: Option<usize>,
    /// Serve Prometheus metrics on HOST:PORT (`GET /metrics`). Default: off.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Serve the Redis protocol (RESP2/RESP3) on HOST:PORT: redis-cli and
    /// Redis client libraries reach the cluster through this node, every
    /// read linearizable (docs/resp.md). Default: off.
    #[arg(long)]
    pub resp_listen: Option<String>,
    /// Redis-protocol connections at most; more are refused. Default 10000.
    #[arg(long)]
    pub resp_connections_max: Option<usize>,
    /// Requests slower than this are counted and logged, ms. Default 500.
    #[arg(long)]
    pub slow_request_ms: Option<u64>,
    /// Disk quota for data (the data column family's files and memtables),
    /// MiB; over it, writes that add data get `NoSpace` while reads and
    /// deletes go on. 0 = none (default).
    #[arg(long)]
    pub disk_quota_mb: Option<u64>,
    /// Fault-injection rules for raft traffic, re-read when the file changes
    /// (testing only; see docs/reliability.md).
    #[arg(long)]
    pub fault_file: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    /// Default: $COREKV_LOG, else info.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Join a running cluster instead of starting a new one: on its first
    /// start the node creates no region and receives replicas as they move
    /// to it (run `corekv ctl add-node` first). `--initial-cluster` lists
    /// the running nodes and this one.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub join: Option<bool>,
    /// Start a new cluster from the backup in this directory (`corekv ctl
    /// backup`): on its first start the node takes the backup's regions,
    /// their data and versions instead of empty regions (every node of the
    /// new cluster is started with the same backup). A damaged or partial
    /// backup is refused. A data directory that holds a node already is
    /// never overwritten: there the flag is ignored.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// The cluster's node key: a file holding a secret of at least 32
    /// characters, the same on every node (`openssl rand -hex 32 >
    /// node.key`). Nodes log in to each other with it; authentication
    /// (`corekv ctl auth enable`) needs it on every node. Default: none.
    #[arg(long)]
    pub auth_key_file: Option<PathBuf>,
    /// Serve clients from any address while authentication is off. Without
    /// it (protected mode), a node with authentication off answers client
    /// connections (native, shard and Redis ports) from addresses other than
    /// 127.0.0.1 and ::1 with an error that says how to turn it on.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// This node's TLS certificate chain (PEM, leaf first). With
    /// --tls-key and --tls-ca, every port but metrics speaks TLS: client,
    /// shard, Redis and peer. The certificate names the node as the DNS
    /// name `node-<id>.corekv` (peers check it) and the addresses clients
    /// dial (IP or DNS). Default: none (plain TCP, with a warning).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that signs the nodes' certificates and, with
    /// --tls-client-auth, the clients'.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: client connections (native, shard and Redis ports) must
    /// present a certificate signed by --tls-ca. Lifts protected mode.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub tls_client_auth: Option<bool>,
}

/// Validated settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node id.
    pub node_id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Raft listen address.
    pub peer_listen: SocketAddr,
    /// Client listen address.
    pub client_listen: SocketAddr,
    /// Peer address of every node.
    pub initial_cluster: BTreeMap<u64, SocketAddr>,
    /// Shards.
    pub shards: usize,
    /// Regions at bootstrap.
    pub regions: u64,
    /// Joins a running cluster: bootstraps no region.
    pub join: bool,
    /// Bootstraps the regions of this backup instead of empty ones.
    pub restore: Option<PathBuf>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// RocksDB settings.
    pub db: DbConfig,
    /// Largest client frame, bytes.
    pub frame_bytes_max: usize,
    /// Client connections per shard.
    pub connections_max: usize,
    /// Each shard's own client port.
    pub shard_ports: ShardPortMode,
    /// Log filter.
    pub log_level: String,
    /// Fault-injection rules file, if any.
    pub fault_file: Option<PathBuf>,
    /// Metrics endpoint address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Redis-protocol listen address, if any.
    pub resp_listen: Option<SocketAddr>,
    /// Redis-protocol connections at most.
    pub resp_connections_max: usize,
    /// Slow request threshold, ms.
    pub slow_request_ms: u64,
    /// Disk quota for data in bytes; 0 = none.
    pub disk_quota_bytes: u64,
    /// Watches per shard.
    pub watchers_max: usize,
    /// When regions split by themselves.
    pub split: crate::autosplit::SplitPolicy,
    /// Moves per minute of the placement driver (0 = off).
    pub placement_moves_per_min: u32,
    /// Requests/s below which the driver balances by count.
    pub placement_min_load: f64,
    /// The cluster's node key (content of `--auth-key-file`), if given.
    pub node_key: Option<String>,
    /// Protected mode off (`--insecure`).
    pub insecure: bool,
    /// TLS files (`--tls-cert`, `--tls-key`, `--tls-ca`), if given.
    pub tls: Option<corekv_net::tls::TlsFiles>,
    /// Clients must present a certificate (`--tls-client-auth`).
    pub tls_client_auth: bool,
}

/// Where each shard's own client port comes from (`--shard-ports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardPortMode {
    /// No shard ports: clients use the node's client address only.
    Off,
    /// Ports the system picks, given to clients in `Hello`.
    Auto,
    /// Shard i listens on this port + i.
    From(u16),
}

impl ShardPortMode {
    /// The address shard `shard` listens on besides the client address.
    pub fn addr(self, client_listen: SocketAddr, shard: usize) -> Option<SocketAddr> {
        let port = match self {
            ShardPortMode::Off => return None,
            ShardPortMode::Auto => 0,
            ShardPortMode::From(p) => p + shard as u16,
        };
        Some(SocketAddr::new(client_listen.ip(), port))
    }
}

fn parse_shard_ports(
    s: &str,
    shards: usize,
    taken: &[(&str, Option<SocketAddr>)],
) -> Result<ShardPortMode, ConfigError> {
    match s.trim() {
        "auto" => Ok(ShardPortMode::Auto),
        "off" => Ok(ShardPortMode::Off),
        p => {
            let first: u16 = p.parse().map_err(|_| {
                format!("--shard-ports {p:?}: give auto, off, or a first port number")
            })?;
            let last = u32::from(first) + shards as u32 - 1;
            if first == 0 || last > u32::from(u16::MAX) {
                return Err(ConfigError::Invalid(format!(
                    "--shard-ports {first}: ports {first}..={last} for {shards} shards are outside 1..=65535"
                )));
            }
            for (what, a) in taken {
                if let Some(a) = a {
                    if (u32::from(first)..=last).contains(&u32::from(a.port())) {
                        return Err(ConfigError::Invalid(format!(
                            "--shard-ports {first}: ports {first}..={last} include {what} {a}"
                        )));
                    }
                }
            }
            Ok(ShardPortMode::From(first))
        }
    }
}

pub use corekv_engine::ids::NODE_ID_MAX;
/// Most regions a cluster may start with.
pub const REGIONS_MAX: u64 = 4096;
const _: () = assert!(REGIONS_MAX < corekv_engine::region::META_REGION_ID);
/// Most shards per node.
pub const SHARDS_MAX: usize = 64;

fn addr(what: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .map_err(|e| format!("{what} {s:?}: {e}"))?
        .next()
        .ok_or_else(|| ConfigError::Invalid(format!("{what} {s:?}: no address")))
}

/// Smallest `--memory-budget-mb`.
pub const MEMORY_BUDGET_MIN_MB: usize = 64;

/// How a memory budget is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySplit {
    /// RocksDB block cache (half).
    pub block_cache_bytes: usize,
    /// Hot-key cache of each shard (a quarter, shared out).
    pub read_cache_bytes_per_shard: usize,
    /// Memtable size of the raft, data and meta column families (the
    /// history family's is half of it): each may hold two memtables, so
    /// seven of these make a quarter.
    pub write_buffer_bytes: usize,
}

/// Divides `budget` bytes over the caches and memtables of `shards` shards.
pub fn split_memory_budget(budget: usize, shards: usize) -> MemorySplit {
    MemorySplit {
        block_cache_bytes: budget / 2,
        read_cache_bytes_per_shard: budget / 4 / shards.max(1),
        write_buffer_bytes: budget / 28,
    }
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_cluster(s: &str) -> Result<BTreeMap<u64, SocketAddr>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, a) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--initial-cluster entry {part:?}: {id:?} is not a node id"))?;
        if id == 0 || id > NODE_ID_MAX {
            return Err(ConfigError::Invalid(format!(
                "--initial-cluster: node id {id} outside 1..={NODE_ID_MAX}"
            )));
        }
        let a = addr("--initial-cluster address", a.trim())?;
        if out.insert(id, a).is_some() {
            return Err(ConfigError::Invalid(format!(
                "--initial-cluster: node {id} listed twice"
            )));
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(out)
}

impl ServerArgs {
    /// Reads `--config` (if any) and lets the flags override it.
    pub fn merge_file(self) -> Result<ServerArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: ServerArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        macro_rules! pick {
            ($($f:ident),*) => { ServerArgs { config: self.config, $($f: self.$f.or(file.$f),)* } };
        }
        Ok(pick!(
            id,
            data_dir,
            peer_listen,
            client_listen,
            initial_cluster,
            shards,
            regions,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            request_timeout_ms,
            watchers_max,
            watch_history_entries,
            log_compact_entries,
            consistency_check_secs,
            hibernate_ticks,
            split_load_ops,
            split_load_windows,
            split_keys,
            split_mb,
            split_cooldown_ms,
            placement_moves_per_min,
            placement_min_load,
            expire_sweep_ms,
            value_bytes_max,
            frame_bytes_max,
            connections_max,
            shard_ports,
            block_cache_mb,
            memory_budget_mb,
            metrics_listen,
            resp_listen,
            resp_connections_max,
            slow_request_ms,
            disk_quota_mb,
            fault_file,
            log_level,
            join,
            restore,
            auth_key_file,
            insecure,
            tls_cert,
            tls_key,
            tls_ca,
            tls_client_auth
        ))
    }

    /// Checks every setting; the message says which one is wrong and why.
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        let node_id = self.id.ok_or(ConfigError::Missing("--id"))?;
        in_range("--id", node_id, 1, NODE_ID_MAX)?;
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("--data-dir"))?;
        let peer_listen = addr(
            "--peer-listen",
            self.peer_listen
                .as_deref()
                .ok_or(ConfigError::Missing("--peer-listen"))?,
        )?;
        let client_listen = addr(
            "--client-listen",
            self.client_listen
                .as_deref()
                .ok_or(ConfigError::Missing("--client-listen"))?,
        )?;
        if peer_listen == client_listen {
            return Err("--peer-listen and --client-listen must differ".into());
        }
        let initial_cluster = parse_cluster(
            self.initial_cluster
                .as_deref()
                .ok_or(ConfigError::Missing("--initial-cluster"))?,
        )?;
        match initial_cluster.get(&node_id) {
            None => return Err(ConfigError::Invalid(format!("--initial-cluster does not list this node ({node_id})"))),
            Some(a) if a.port() != peer_listen.port() => {
                return Err(ConfigError::Invalid(format!(
                    "--initial-cluster gives node {node_id} the peer address {a}, but --peer-listen is {peer_listen}"
                )))
            }
            _ => {}
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = self.shards.unwrap_or(cores);
        in_range("--shards", shards as u64, 1, SHARDS_MAX as u64)?;
        let regions = self.regions.unwrap_or(8);
        in_range("--regions", regions, 1, REGIONS_MAX)?;
        let mut engine = EngineConfig::default();
        if let Some(t) = self.tick_ms {
            engine.tick_interval_ms = t;
        }
        if let Some(e) = self.election_ticks {
            engine.election_tick = e;
            engine.election_tick_max = 2 * e;
        }
        if let Some(h) = self.heartbeat_ticks {
            engine.heartbeat_tick = h;
        }
        if let Some(ms) = self.expire_sweep_ms {
            engine.expire_sweep_ticks = ms.div_ceil(engine.tick_interval_ms.max(1));
        }
        if let Some(t) = self.request_timeout_ms {
            engine.request_timeout_ms = t;
        }
        if let Some(h) = self.watch_history_entries {
            engine.watch_history_entries = h;
        }
        if let Some(s) = self.consistency_check_secs {
            engine.consistency_check_interval_ms = s.saturating_mul(1000);
        }
        if let Some(t) = self.hibernate_ticks {
            engine.hibernate_after_ticks = t;
        }
        if let Some(n) = self.log_compact_entries {
            if n < 20 {
                return Err(ConfigError::Invalid(format!(
                    "--log-compact-entries {n}: at least 20"
                )));
            }
            engine.log_compact_entries = n;
            engine.log_retain_entries = (n / 10).min(1000);
        }
        let watchers_max = self.watchers_max.unwrap_or(10_000);
        if watchers_max == 0 {
            return Err("--watchers-max must be > 0".into());
        }
        let placement_min_load = self.placement_min_load.unwrap_or(1000.0);
        if !(placement_min_load.is_finite() && placement_min_load >= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "--placement-min-load {placement_min_load}: must be a number of requests/s >= 0"
            )));
        }
        let mut split = crate::autosplit::SplitPolicy::default();
        split.load_ops = self.split_load_ops.unwrap_or(split.load_ops);
        split.load_windows = self.split_load_windows.unwrap_or(split.load_windows);
        split.keys_max = self.split_keys.unwrap_or(split.keys_max);
        if let Some(mb) = self.split_mb {
            split.bytes_max = mb.checked_mul(1 << 20).ok_or("--split-mb is too large")?;
        }
        split.cooldown_ms = self.split_cooldown_ms.unwrap_or(split.cooldown_ms);
        if split.load_windows == 0 {
            return Err("--split-load-windows must be > 0".into());
        }
        if let Some(v) = self.value_bytes_max {
            engine.value_bytes_max = v;
            engine.entry_bytes_max = engine.entry_bytes_max.max(v + (64 << 10));
        }
        engine.lease_margin_ms = engine
            .lease_margin_ms
            .min(engine.election_tick as u64 * engine.tick_interval_ms / 2);
        let mut engine = engine
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let frame_bytes_max = self.frame_bytes_max.unwrap_or(16 << 20);
        if frame_bytes_max < engine.entry_bytes_max + (64 << 10) {
            return Err(ConfigError::Invalid(format!(
                "--frame-bytes-max {frame_bytes_max} must exceed the largest entry ({} bytes) by 64 KiB",
                engine.entry_bytes_max
            )));
        }
        let connections_max = self.connections_max.unwrap_or(10_000);
        if connections_max == 0 {
            return Err("--connections-max must be > 0".into());
        }
        let mut db = DbConfig::default();
        if let Some(mb) = self.block_cache_mb {
            db.block_cache_bytes = mb << 20;
        }
        if let Some(mb) = self.memory_budget_mb {
            if self.block_cache_mb.is_some() {
                return Err("give --memory-budget-mb or --block-cache-mb, not both".into());
            }
            if mb < MEMORY_BUDGET_MIN_MB {
                return Err(ConfigError::Invalid(format!(
                    "--memory-budget-mb {mb} is below the minimum of {MEMORY_BUDGET_MIN_MB}"
                )));
            }
            let budget = mb << 20;
            let split = split_memory_budget(budget, shards);
            db.block_cache_bytes = split.block_cache_bytes;
            db.write_buffer_bytes = split.write_buffer_bytes;
            engine.read_cache_bytes = split.read_cache_bytes_per_shard;
        }
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|a| addr("--metrics-listen", a))
            .transpose()?;
        let resp_listen = self
            .resp_listen
            .as_deref()
            .map(|a| addr("--resp-listen", a))
            .transpose()?;
        let others = [
            ("--peer-listen", Some(peer_listen)),
            ("--client-listen", Some(client_listen)),
            ("--metrics-listen", metrics_listen),
        ];
        if let Some(r) = resp_listen {
            if let Some((flag, _)) = others.iter().find(|(_, a)| *a == Some(r)) {
                return Err(format!("--resp-listen and {flag} must differ").into());
            }
        }
        let resp_connections_max = self.resp_connections_max.unwrap_or(10_000);
        in_range(
            "--resp-connections-max",
            resp_connections_max as u64,
            1,
            1_000_000,
        )?;
        let mut taken = others.to_vec();
        taken.push(("--resp-listen", resp_listen));
        let shard_ports = parse_shard_ports(
            self.shard_ports.as_deref().unwrap_or("auto"),
            shards,
            &taken,
        )?;
        let log_level = self
            .log_level
            .or_else(|| std::env::var("COREKV_LOG").ok())
            .unwrap_or_else(|| "info".into());
        let node_key = self
            .auth_key_file
            .as_deref()
            .map(read_node_key)
            .transpose()?;
        let tls = match (self.tls_cert, self.tls_key, self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(corekv_net::tls::TlsFiles { cert, key, ca }),
            _ => {
                return Err(
                    "--tls-cert, --tls-key and --tls-ca go together: give all three or none".into(),
                )
            }
        };
        if self.restore.is_some() && self.join == Some(true) {
            return Err("--restore starts a new cluster: it does not go with --join".into());
        }
        let tls_client_auth = self.tls_client_auth.unwrap_or(false);
        if tls_client_auth && tls.is_none() {
            return Err("--tls-client-auth needs --tls-cert, --tls-key and --tls-ca".into());
        }
        Ok(NodeConfig {
            node_id,
            data_dir,
            peer_listen,
            client_listen,
            initial_cluster,
            shards,
            regions,
            join: self.join.unwrap_or(false),
            restore: self.restore,
            engine,
            db,
            frame_bytes_max,
            connections_max,
            shard_ports,
            log_level,
            fault_file: self.fault_file,
            metrics_listen,
            resp_listen,
            resp_connections_max,
            slow_request_ms: self.slow_request_ms.unwrap_or(500),
            disk_quota_bytes: self.disk_quota_mb.unwrap_or(0).saturating_mul(1 << 20),
            watchers_max,
            split,
            placement_moves_per_min: self.placement_moves_per_min.unwrap_or(6),
            placement_min_load,
            node_key,
            insecure: self.insecure.unwrap_or(false),
            tls,
            tls_client_auth,
        })
    }
}

/// Shortest node key, in characters.
pub const NODE_KEY_MIN: usize = 32;

/// Reads a node key file: its content, surrounding whitespace removed.
fn read_node_key(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let key = text.trim();
    if key.len() < NODE_KEY_MIN || key.len() > corekv_net::auth::CREDENTIAL_BYTES_MAX {
        return Err(ConfigError::Invalid(format!(
            "--auth-key-file {}: the key is {} characters; give {NODE_KEY_MIN} to {}              (openssl rand -hex 32)",
            path.display(),
            key.len(),
            corekv_net::auth::CREDENTIAL_BYTES_MAX
        )));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(ConfigError::Invalid(format!(
            "--auth-key-file {}: the key holds whitespace",
            path.display()
        )));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests;
