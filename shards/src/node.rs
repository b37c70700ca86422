//! State shared by every shard of a node (read-mostly, no locks on the hot
//! path) and the node's start and stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use corekv_engine::Db;
use corekv_net::message::NodeInfo;

use crate::bootstrap::Router;
use crate::config::NodeConfig;
use crate::log_writer::{LogStats, WriteTask};

/// Everything the shards of one node share.
pub struct NodeShared {
    /// Settings.
    pub cfg: NodeConfig,
    /// The node's RocksDB.
    pub db: Db,
    /// Region → shard and leader; replaced when regions split.
    pub router: RwLock<Arc<Router>>,
    /// Which shard holds which replica and range (the engine's overlap
    /// and one-replica-per-node checks; taken only when replicas are
    /// created, opened, resized, moved or destroyed).
    pub directory: corekv_engine::Directory,
    /// When the other nodes' shards last beat (hibernating regions), shared
    /// by this node's shards.
    pub liveness: corekv_engine::hibernate::Liveness,
    /// Bumped whenever `router` is replaced.
    pub router_version: AtomicU64,
    /// Raft transport addresses of the other nodes (every shard sends
    /// with them; `nodes::add` extends them).
    pub peer_addrs: corekv_net::transport::PeerAddrs,
    /// Nodes marked as leaving (see `nodes::retire`).
    pub retired: Mutex<std::collections::BTreeSet<u64>>,
    /// Client addresses of the nodes heard from (and this one).
    pub nodes: Mutex<BTreeMap<u64, NodeInfo>>,
    /// The routing table as the meta region last gave it (see `meta`).
    pub meta_routes: Mutex<Vec<corekv_net::message::RouteInfo>>,
    /// Region ids reserved from the meta region's allocator, for splits.
    pub region_ids: Mutex<std::ops::Range<u64>>,
    /// Queue of the log writer.
    pub log_tx: crossbeam_channel::Sender<WriteTask>,
    /// Log writer counters.
    pub log_stats: Arc<LogStats>,
    /// Set when the node is shutting down (shared with the signal thread).
    pub stopping: Arc<AtomicBool>,
    /// Fault injection: the log writer fails its next write.
    pub fail_log_write: Arc<AtomicBool>,
    /// Each shard's own client port, as `Hello` gives them (`--shard-ports`).
    pub shard_ports: Arc<corekv_net::server::ShardPorts>,
    /// Client requests each shard passed on to the shard serving their
    /// region (they came in on another shard's connection).
    pub forwarded: Vec<AtomicU64>,
    /// Set while the data is over `--disk-quota-mb` (see `quota`).
    pub no_space: AtomicBool,
    /// Monotonic clock origin.
    pub started: Instant,
    /// The Redis-protocol listener's address and counters, if it has one.
    pub resp: Option<(std::net::SocketAddr, Arc<corekv_resp::RespStats>)>,
    /// Metrics of the node.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Users, node key and protected mode (see `corekv_net::auth`).
    pub auth: Arc<corekv_net::auth::Gate>,
    /// TLS of every port and of the node's own connections (None: plain).
    pub tls: Option<Arc<corekv_net::tls::NodeTls>>,
    /// What `Status` requests and `corekv ctl` show: refreshed by the shards
    /// and the size scanner, read when asked (never on the request path).
    pub board: Mutex<StatusBoard>,
}

/// One region replica as the status document shows it.
#[derive(Clone, Debug)]
pub struct RegionRow {
    /// Region metadata as applied here.
    pub region: corekv_engine::Region,
    /// Shard holding the replica.
    pub shard: usize,
    /// Its raft role.
    pub role: corekv_net::status::Role,
    /// Leader node (0 = unknown).
    pub leader_node: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Entries in the raft log.
    pub log_entries: u64,
    /// Reads served per second (over the last second).
    pub read_ops_per_sec: f64,
    /// Writes answered per second (over the last second).
    pub write_ops_per_sec: f64,
    /// The last consistency check this replica verified.
    pub check: Option<corekv_engine::peer::CheckVerdict>,
}

/// Status figures of the node.
#[derive(Default)]
pub struct StatusBoard {
    /// Replicas by region id.
    pub regions: std::collections::BTreeMap<u64, RegionRow>,
    /// (keys, bytes) of each region's data, from the last scan.
    pub sizes: std::collections::BTreeMap<u64, (u64, u64)>,
    /// The hash range (start, end) each region had when it was scanned: a
    /// size is only the region's while its range is the same.
    pub scanned_ranges: std::collections::BTreeMap<u64, (u64, u64)>,
    /// Per shard: cache hit ratio and hot keys over the last second.
    pub shards: std::collections::BTreeMap<usize, ShardRow>,
}

/// What one shard last published about its load.
#[derive(Clone, Debug, Default)]
pub struct ShardRow {
    /// Share of reads the hot-key cache answered (none: no reads).
    pub cache_hit_ratio: Option<f64>,
    /// Hottest keys first.
    pub hot_keys: Vec<corekv_net::status::HotKey>,
}

impl NodeShared {
    /// TLS for the node's own clients of the cluster (meta, placement,
    /// Redis sessions), if the node has TLS.
    pub fn dial_tls(&self) -> Option<corekv_net::tls::ClientTls> {
        self.tls.as_ref().map(|t| t.dial.clone())
    }

    /// Monotonic milliseconds since start.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// True once shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The current router (shards keep a copy and reload it when
    /// `router_version` moves).
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the regions of `shard` in the router (after a split).
    pub fn update_shard_regions(&self, shard: usize, regions: Vec<corekv_engine::Region>) {
        let mut r = self.router.write().unwrap_or_else(|e| e.into_inner());
        *r = Arc::new(r.with_shard_regions(shard, regions));
        self.router_version.fetch_add(1, Ordering::Release);
    }

    /// Routes region `id` to `shard` from now on.
    pub fn move_region(&self, id: u64, shard: usize) {
        let mut r = self.router.write().unwrap_or_else(|e| e.into_inner());
        *r = Arc::new(r.with_region_on(id, shard));
        self.router_version.fetch_add(1, Ordering::Release);
    }

    /// Number of regions whose leader is known.
    pub fn regions_with_leader(&self) -> usize {
        self.router().with_leader()
    }
}

/// Unix time in ms (expiry is absolute wall-clock time).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
