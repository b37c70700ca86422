//! Node metrics in the Prometheus text format (`--metrics-listen ADDR`,
//! `GET /metrics`), built with the `prometheus` crate.
//!
//! Shards own their series (label `shard`): per-request counters and latency
//! histograms are updated in the shard's round (latencies through a local,
//! unsynchronised histogram flushed once per round); raft, cache, transport
//! and connection figures are refreshed from the shard's state every few
//! ticks. Log-writer and RocksDB figures are read when the endpoint is
//! scraped. See `docs/operations.md` for what they mean.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use corekv_engine::replicas::ReplicaTotals;
use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::log_writer::LogStats;

/// Every metric family of a node.
pub struct Metrics {
    /// The registry the endpoint encodes.
    pub registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    slow_requests: IntCounterVec,
    raft: HashMap<&'static str, IntCounterVec>,
    gauges: HashMap<&'static str, IntGaugeVec>,
    log: HashMap<&'static str, IntCounter>,
    rocksdb: HashMap<&'static str, IntGauge>,
    resp: HashMap<&'static str, IntCounter>,
    resp_connections: IntGauge,
    auth: HashMap<&'static str, IntCounter>,
    auth_enabled: IntGauge,
}

/// Counters of logins and refusals: (name suffix, help).
const AUTH_COUNTERS: &[(&str, &str)] = &[
    ("logins", "Logins accepted (native and Redis protocol)."),
    (
        "login_failures",
        "Logins refused: unknown user or wrong token.",
    ),
    (
        "unauthenticated",
        "Requests refused for want of a login while authentication is on.",
    ),
    ("denied", "Requests refused by the user's roles."),
    (
        "protected_refusals",
        "Connections refused by protected mode (authentication off, not from 127.0.0.1 or ::1).",
    ),
    (
        "tls_failures",
        "TLS handshakes on client ports that failed or timed out (plain TCP, untrusted certificates, garbage).",
    ),
];

/// Counters of the Redis-protocol listener: (name suffix, help).
const RESP_COUNTERS: &[(&str, &str)] = &[
    ("connections", "Redis-protocol connections accepted."),
    (
        "rejected_connections",
        "Redis-protocol connections refused (over --resp-connections-max).",
    ),
    ("commands", "Redis-protocol commands answered."),
    (
        "error_replies",
        "Redis-protocol commands answered with an error.",
    ),
    (
        "protocol_errors",
        "Redis-protocol connections closed for a malformed or oversized request.",
    ),
];

/// Raft counters per shard: (name suffix, help).
const RAFT_COUNTERS: &[(&str, &str)] = &[
    ("proposals", "Proposals handed to raft."),
    ("campaigns", "Elections started (pre-vote or vote)."),
    ("became_leader", "Times a replica became leader."),
    (
        "leader_changes",
        "Times a replica saw its region's leader change.",
    ),
    (
        "read_index_rounds",
        "Read index rounds issued (one covers a batch of reads).",
    ),
    ("log_compactions", "Raft log compactions."),
    ("snapshots_sent", "Snapshots sent to lagging followers."),
    ("snapshots_applied", "Snapshots received and installed."),
    (
        "entries_applied",
        "Raft entries applied to the state machine.",
    ),
    (
        "expired_keys_removed",
        "Expired keys removed by applied expiry entries.",
    ),
    (
        "consistency_checks",
        "Consistency checks a replica verified against its leader's digest.",
    ),
    (
        "consistency_mismatches",
        "Consistency checks where a replica's digest differed from its leader's.",
    ),
    (
        "hibernations",
        "Times a region replica went to sleep (its region was idle).",
    ),
    ("wakes", "Times a sleeping region replica woke."),
    ("cache_hits", "Reads answered from the hot-key cache."),
    ("cache_misses", "Reads that went to RocksDB."),
    (
        "transport_frames_sent",
        "Raft transport frames written to peers.",
    ),
    (
        "transport_bytes_sent",
        "Raft transport bytes written to peers.",
    ),
    (
        "transport_frames_dropped",
        "Raft transport frames dropped (queue full, unreachable, faults).",
    ),
    (
        "requests_forwarded",
        "Client requests passed on to the shard serving their region (sent to another shard's port or to the shared client port).",
    ),
    ("watch_events", "Changes sent to watches."),
    (
        "watch_catchups",
        "History reads of watches catching up (resumed from a version, or fell behind).",
    ),
];

/// Gauges per shard: (name suffix, help).
const GAUGES: &[(&str, &str)] = &[
    ("regions", "Region replicas on the shard."),
    ("leaders", "Region replicas that lead."),
    (
        "regions_asleep",
        "Region replicas asleep (idle regions hibernate: no ticks, no heartbeats).",
    ),
    (
        "apply_lag_entries",
        "Sum over replicas of commit index minus applied index.",
    ),
    ("raft_log_entries", "Entries held in the raft logs."),
    ("reads_pending", "Reads waiting for their read index."),
    ("proposals_pending", "Proposals waiting to be applied."),
    ("requests_pending", "Client requests the shard holds."),
    ("cache_bytes", "Bytes held by the hot-key cache."),
    ("cache_entries", "Keys held by the hot-key cache."),
    ("transport_queued_frames", "Raft frames queued to peers."),
    ("client_connections", "Open client connections."),
    ("watches", "Watches the shard serves."),
];

/// Log writer counters: (name suffix, help).
const LOG_COUNTERS: &[(&str, &str)] = &[
    ("fsyncs", "Synced raft log writes."),
    ("batches", "Shard batches written by the log writer."),
    ("entries", "Raft entries written by the log writer."),
    ("bytes", "Bytes written by the log writer."),
];

/// RocksDB gauges: (name suffix, help).
const ROCKSDB_GAUGES: &[(&str, &str)] = &[
    ("memtable_bytes", "Bytes in all memtables."),
    (
        "pending_compaction_bytes",
        "Estimated bytes compaction still has to rewrite.",
    ),
    ("block_cache_usage_bytes", "Bytes in the block cache."),
    ("block_cache_hits", "Block cache hits since start."),
    ("block_cache_misses", "Block cache misses since start."),
];

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are valid and registered once")
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn Collector>| must(registry.register(c));
        let requests = must(IntCounterVec::new(
            Opts::new(
                "corekv_requests_total",
                "Client requests answered, by operation and result.",
            ),
            &["shard", "op", "result"],
        ));
        reg(Box::new(requests.clone()));
        let request_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "corekv_request_duration_seconds",
                "Time from a request's arrival on the shard to its answer.",
            )
            .buckets(must(exponential_buckets(0.000_05, 2.0, 18))),
            &["shard", "op"],
        ));
        reg(Box::new(request_seconds.clone()));
        let slow_requests = must(IntCounterVec::new(
            Opts::new(
                "corekv_slow_requests_total",
                "Requests over --slow-request-ms.",
            ),
            &["shard", "op"],
        ));
        reg(Box::new(slow_requests.clone()));
        let mut raft = HashMap::new();
        for (name, help) in RAFT_COUNTERS {
            let c = must(IntCounterVec::new(
                Opts::new(format!("corekv_{name}_total"), *help),
                &["shard"],
            ));
            reg(Box::new(c.clone()));
            raft.insert(*name, c);
        }
        let mut gauges = HashMap::new();
        for (name, help) in GAUGES {
            let g = must(IntGaugeVec::new(
                Opts::new(format!("corekv_{name}"), *help),
                &["shard"],
            ));
            reg(Box::new(g.clone()));
            gauges.insert(*name, g);
        }
        let mut log = HashMap::new();
        for (name, help) in LOG_COUNTERS {
            let c = must(IntCounter::new(
                format!("corekv_log_writer_{name}_total"),
                *help,
            ));
            reg(Box::new(c.clone()));
            log.insert(*name, c);
        }
        let mut rocksdb = HashMap::new();
        for (name, help) in ROCKSDB_GAUGES {
            let g = must(IntGauge::new(format!("corekv_rocksdb_{name}"), *help));
            reg(Box::new(g.clone()));
            rocksdb.insert(*name, g);
        }
        let mut resp = HashMap::new();
        for (name, help) in RESP_COUNTERS {
            let c = must(IntCounter::new(format!("corekv_resp_{name}_total"), *help));
            reg(Box::new(c.clone()));
            resp.insert(*name, c);
        }
        let resp_connections = must(IntGauge::new(
            "corekv_resp_connections",
            "Redis-protocol connections open.",
        ));
        reg(Box::new(resp_connections.clone()));
        let mut auth = HashMap::new();
        for (name, help) in AUTH_COUNTERS {
            let c = must(IntCounter::new(format!("corekv_auth_{name}_total"), *help));
            reg(Box::new(c.clone()));
            auth.insert(*name, c);
        }
        let auth_enabled = must(IntGauge::new(
            "corekv_auth_enabled",
            "1 while authentication is on, 0 while off, -1 while not known yet.",
        ));
        reg(Box::new(auth_enabled.clone()));
        Metrics {
            auth,
            auth_enabled,
            registry,
            resp,
            resp_connections,
            requests,
            request_seconds,
            slow_requests,
            raft,
            gauges,
            log,
            rocksdb,
        }
    }

    /// The series of one shard.
    pub fn shard(self: &Arc<Self>, shard: usize) -> ShardMetrics {
        ShardMetrics {
            metrics: self.clone(),
            label: shard.to_string(),
            counters: HashMap::default(),
            latency: HashMap::default(),
            last: Last::default(),
        }
    }

    /// Copies the Redis-protocol listener's counters in (at scrape time).
    pub fn refresh_resp(&self, st: &corekv_resp::RespStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, now) in [
            ("connections", st.accepted.load(Relaxed)),
            ("rejected_connections", st.rejected.load(Relaxed)),
            ("commands", st.commands.load(Relaxed)),
            ("error_replies", st.errors.load(Relaxed)),
            ("protocol_errors", st.protocol_errors.load(Relaxed)),
        ] {
            let c = &self.resp[name];
            c.inc_by(now.saturating_sub(c.get()));
        }
        self.resp_connections.set(st.open.load(Relaxed) as i64);
    }

    /// Copies the gate's counters in (at scrape time).
    pub fn refresh_auth(&self, gate: &corekv_net::auth::Gate) {
        use corekv_net::auth::AuthState;
        use std::sync::atomic::Ordering::Relaxed;
        let st = &gate.stats;
        for (name, now) in [
            ("logins", st.logins.load(Relaxed)),
            ("login_failures", st.login_failures.load(Relaxed)),
            ("unauthenticated", st.unauthenticated.load(Relaxed)),
            ("denied", st.denied.load(Relaxed)),
            ("protected_refusals", st.protected_refusals.load(Relaxed)),
            ("tls_failures", st.tls_failures.load(Relaxed)),
        ] {
            let c = &self.auth[name];
            c.inc_by(now.saturating_sub(c.get()));
        }
        self.auth_enabled.set(match gate.state() {
            AuthState::On => 1,
            AuthState::Off => 0,
            AuthState::Unknown => -1,
        });
    }

    /// Copies the log writer's and RocksDB's figures in (at scrape time).
    pub fn refresh(&self, log: &LogStats, db: &rocksdb::DB, opts: &rocksdb::Options) {
        let (fsyncs, batches, entries, bytes) = log.snapshot();
        for (name, now) in [
            ("fsyncs", fsyncs),
            ("batches", batches),
            ("entries", entries),
            ("bytes", bytes),
        ] {
            let c = &self.log[name];
            c.inc_by(now.saturating_sub(c.get()));
        }
        let prop = |p: &str| {
            corekv_engine::keys::COLUMN_FAMILIES
                .iter()
                .filter_map(|cf| {
                    db.property_int_value_cf(corekv_engine::db::cf(db, cf), p)
                        .ok()
                        .flatten()
                })
                .sum::<u64>()
        };
        self.rocksdb["memtable_bytes"].set(prop("rocksdb.cur-size-all-mem-tables") as i64);
        self.rocksdb["pending_compaction_bytes"]
            .set(prop("rocksdb.estimate-pending-compaction-bytes") as i64);
        let cache = db
            .property_int_value_cf(
                corekv_engine::db::cf(db, corekv_engine::keys::CF_DATA),
                "rocksdb.block-cache-usage",
            )
            .ok()
            .flatten()
            .unwrap_or(0);
        self.rocksdb["block_cache_usage_bytes"].set(cache as i64);
        self.rocksdb["block_cache_hits"]
            .set(opts.get_ticker_count(rocksdb::statistics::Ticker::BlockCacheHit) as i64);
        self.rocksdb["block_cache_misses"]
            .set(opts.get_ticker_count(rocksdb::statistics::Ticker::BlockCacheMiss) as i64);
    }

    /// The whole registry in the text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 * 1024);
        must(TextEncoder::new().encode(&self.registry.gather(), &mut out));
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Last totals copied into the shared counters (they only grow by deltas).
#[derive(Default)]
struct Last {
    totals: ReplicaTotals,
    cache_hits: u64,
    cache_misses: u64,
    frames_sent: u64,
    bytes_sent: u64,
    frames_dropped: u64,
    watch_events: u64,
    watch_catchups: u64,
    forwarded: u64,
}

/// One shard's handles on the node metrics (single-threaded).
pub struct ShardMetrics {
    metrics: Arc<Metrics>,
    label: String,
    counters: HashMap<(&'static str, &'static str), IntCounter, ahash::RandomState>,
    latency: HashMap<&'static str, prometheus::local::LocalHistogram, ahash::RandomState>,
    last: Last,
}

/// What the shard reports every few ticks.
pub struct ShardFigures {
    /// Replica totals.
    pub totals: ReplicaTotals,
    /// Cache (hits, misses, entries, bytes).
    pub cache: (u64, u64, usize, usize),
    /// Transport (frames sent, bytes sent, frames dropped, frames queued).
    pub transport: (u64, u64, u64, usize),
    /// Open client connections.
    pub connections: usize,
    /// Requests held.
    pub pending: usize,
    /// Watches (served, changes sent, history catch-ups).
    pub watches: (usize, u64, u64),
    /// Client requests passed on to other shards.
    pub forwarded: u64,
}

impl ShardMetrics {
    /// Counts one answered request and its latency.
    #[inline]
    pub fn request(&mut self, op: &'static str, result: &'static str, latency: Duration) {
        let m = &self.metrics;
        let label = &self.label;
        self.counters
            .entry((op, result))
            .or_insert_with(|| m.requests.with_label_values(&[label, op, result]))
            .inc();
        self.latency
            .entry(op)
            .or_insert_with(|| m.request_seconds.with_label_values(&[label, op]).local())
            .observe(latency.as_secs_f64());
    }

    /// Counts a request over the slow threshold.
    pub fn slow(&self, op: &'static str) {
        self.metrics
            .slow_requests
            .with_label_values(&[&self.label, op])
            .inc();
    }

    /// Publishes the round's latencies.
    pub fn flush(&mut self) {
        for h in self.latency.values_mut() {
            h.flush();
        }
    }

    /// Copies the shard's state into its series.
    pub fn report(&mut self, f: &ShardFigures) {
        let m = &self.metrics;
        let l = &self.label;
        let c = f.totals.counters;
        let p = self.last.totals.counters;
        let deltas = [
            ("proposals", c.proposals, p.proposals),
            ("campaigns", c.campaigns, p.campaigns),
            ("became_leader", c.became_leader, p.became_leader),
            ("leader_changes", c.leader_changes, p.leader_changes),
            (
                "read_index_rounds",
                c.read_index_rounds,
                p.read_index_rounds,
            ),
            ("log_compactions", c.compactions, p.compactions),
            ("snapshots_sent", c.snapshots_sent, p.snapshots_sent),
            (
                "snapshots_applied",
                c.snapshots_applied,
                p.snapshots_applied,
            ),
            ("entries_applied", c.entries_applied, p.entries_applied),
            ("expired_keys_removed", c.expired_keys, p.expired_keys),
            ("consistency_checks", c.digest_checks, p.digest_checks),
            (
                "consistency_mismatches",
                c.digest_mismatches,
                p.digest_mismatches,
            ),
            ("hibernations", c.hibernations, p.hibernations),
            ("wakes", c.wakes, p.wakes),
            ("cache_hits", f.cache.0, self.last.cache_hits),
            ("cache_misses", f.cache.1, self.last.cache_misses),
            (
                "transport_frames_sent",
                f.transport.0,
                self.last.frames_sent,
            ),
            ("transport_bytes_sent", f.transport.1, self.last.bytes_sent),
            (
                "transport_frames_dropped",
                f.transport.2,
                self.last.frames_dropped,
            ),
            ("watch_events", f.watches.1, self.last.watch_events),
            ("watch_catchups", f.watches.2, self.last.watch_catchups),
            ("requests_forwarded", f.forwarded, self.last.forwarded),
        ];
        for (name, now, before) in deltas {
            m.raft[name]
                .with_label_values(&[l])
                .inc_by(now.saturating_sub(before));
        }
        let t = &f.totals;
        for (name, v) in [
            ("regions", t.regions as i64),
            ("leaders", t.leaders as i64),
            ("regions_asleep", t.asleep as i64),
            ("apply_lag_entries", t.apply_lag as i64),
            ("raft_log_entries", t.log_entries as i64),
            ("reads_pending", t.reads_pending as i64),
            ("proposals_pending", t.proposals_pending as i64),
            ("requests_pending", f.pending as i64),
            ("cache_entries", f.cache.2 as i64),
            ("cache_bytes", f.cache.3 as i64),
            ("transport_queued_frames", f.transport.3 as i64),
            ("client_connections", f.connections as i64),
            ("watches", f.watches.0 as i64),
        ] {
            m.gauges[name].with_label_values(&[l]).set(v);
        }
        self.last = Last {
            totals: f.totals,
            cache_hits: f.cache.0,
            cache_misses: f.cache.1,
            frames_sent: f.transport.0,
            bytes_sent: f.transport.1,
            frames_dropped: f.transport.2,
            watch_events: f.watches.1,
            watch_catchups: f.watches.2,
            forwarded: f.forwarded,
        };
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own until the
/// process ends. `refresh` runs before each scrape.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: impl Fn(&Metrics) + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("corekv-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).unwrap_or(0);
                let line = String::from_utf8_lossy(&req[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = if line.starts_with("GET ") && path == "/metrics" {
                    refresh(&metrics);
                    ("200 OK", "text/plain; version=0.0.4", metrics.encode())
                } else {
                    ("404 Not Found", "text/plain", b"try GET /metrics\n".to_vec())
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        })?;
    Ok(())
}
