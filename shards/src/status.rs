//! The node's status document (the `Status` request, `corekv ctl status` and
//! `corekv ctl regions`) and the background scan that counts each region's
//! keys and bytes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use corekv_engine::db::cf;
use corekv_engine::digest::Digest;
use corekv_engine::keys::{self, CF_DATA};
use corekv_engine::peer::CheckVerdict;
use corekv_net::status::{
    CheckStatus, DigestStatus, EpochStatus, LogWriterStatus, NodeStatus, PeerStatus, RegionStatus,
    Role, ShardStatus, Verdict,
};

use crate::node::NodeShared;

/// Seconds between two scans of region sizes.
pub const SIZE_SCAN_SECS: u64 = 10;

/// A replica's last consistency check as the status document shows it.
fn check_status(c: &CheckVerdict) -> CheckStatus {
    let verdict = match c.verdict() {
        "match" => Verdict::Match,
        "mismatch" => Verdict::Mismatch,
        _ => Verdict::Skipped,
    };
    CheckStatus {
        index: c.index,
        verdict,
        leader: digest_status(&c.leader),
        own: c.own.as_ref().map(digest_status),
    }
}

fn digest_status(d: &Digest) -> DigestStatus {
    DigestStatus {
        hash: d.hash,
        keys: d.keys,
        bytes: d.bytes,
    }
}

/// The status document of `node`, as JSON text.
pub fn document(node: &NodeShared) -> String {
    serde_json::to_string(&status(node)).unwrap_or_default()
}

/// Rounded to one decimal.
fn tenths(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The status document of `node`.
pub fn status(node: &NodeShared) -> NodeStatus {
    let (fsyncs, batches, entries, bytes) = node.log_stats.snapshot();
    let board = node.board.lock().map(|b| {
        let regions: Vec<RegionStatus> = b
            .regions
            .iter()
            .map(|(id, r)| {
                let (keys, bytes) = b.sizes.get(id).copied().unwrap_or_default();
                let region = &r.region;
                RegionStatus {
                    id: *id,
                    start_hash: region.start_hash,
                    end_hash: region.end_hash,
                    epoch: EpochStatus {
                        conf_ver: region.epoch.conf_ver,
                        version: region.epoch.version,
                    },
                    peers: region
                        .peers
                        .iter()
                        .map(|p| PeerStatus {
                            id: p.id,
                            node: p.node_id,
                        })
                        .collect(),
                    shard: r.shard,
                    role: r.role,
                    leader_node: r.leader_node,
                    applied_index: r.applied_index,
                    commit_index: r.commit_index,
                    log_entries: r.log_entries,
                    keys,
                    bytes,
                    read_ops_per_sec: tenths(r.read_ops_per_sec),
                    write_ops_per_sec: tenths(r.write_ops_per_sec),
                    check: r.check.as_ref().map(check_status),
                }
            })
            .collect();
        let ports = node.shard_ports.get();
        let shards: Vec<ShardStatus> = (0..node.cfg.shards)
            .map(|s| {
                let mine = regions.iter().filter(|r| r.shard == s);
                ShardStatus {
                    shard: s,
                    regions: mine.clone().count() as u64,
                    leaders: mine.filter(|r| r.role == Role::Leader).count() as u64,
                    port: ports.get(s).copied().unwrap_or(0),
                    forwarded_requests: node.forwarded[s]
                        .load(std::sync::atomic::Ordering::Relaxed),
                    cache_hit_ratio: b.shards.get(&s).and_then(|r| r.cache_hit_ratio),
                    hot_keys: b
                        .shards
                        .get(&s)
                        .map(|r| r.hot_keys.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        (regions, shards)
    });
    let (regions, shards) = board.unwrap_or_default();
    let known_nodes = node
        .peer_addrs
        .read()
        .map(|a| {
            let mut ids: Vec<u64> = a.keys().copied().collect();
            ids.sort_unstable();
            ids
        })
        .unwrap_or_default();
    NodeStatus {
        node_id: node.cfg.node_id,
        client_addr: node.cfg.client_listen.to_string(),
        peer_addr: node.cfg.peer_listen.to_string(),
        uptime_secs: node.started.elapsed().as_secs(),
        stopping: node.is_stopping(),
        shard_count: node.cfg.shards,
        leaders: node.router().led_by(node.cfg.node_id) as u64,
        known_nodes,
        leaving: node
            .retired
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default(),
        log_writer: LogWriterStatus {
            fsyncs,
            batches,
            entries,
            bytes,
            entries_per_fsync: if fsyncs == 0 {
                0.0
            } else {
                tenths(entries as f64 / fsyncs as f64)
            },
        },
        shards,
        regions,
        resp: node.resp.as_ref().map(|(addr, st)| {
            use std::sync::atomic::Ordering::Relaxed;
            corekv_net::status::RespStatus {
                addr: addr.to_string(),
                connections: st.open.load(Relaxed),
                accepted: st.accepted.load(Relaxed),
                rejected: st.rejected.load(Relaxed),
                commands: st.commands.load(Relaxed),
                error_replies: st.errors.load(Relaxed),
            }
        }),
        auth: Some(auth_status(&node.auth)),
    }
}

/// The status of a node's gate.
pub fn auth_status(gate: &corekv_net::auth::Gate) -> corekv_net::status::AuthStatus {
    use corekv_net::auth::AuthState;
    use std::sync::atomic::Ordering::Relaxed;
    let st = &gate.stats;
    corekv_net::status::AuthStatus {
        state: match gate.state() {
            AuthState::On => "on",
            AuthState::Off => "off",
            AuthState::Unknown => "unknown",
        }
        .into(),
        users: gate.table().map_or(0, |t| t.users.len() as u64),
        version: gate.version(),
        node_key: gate.node_key_fingerprint(),
        insecure: gate.insecure(),
        logins: st.logins.load(Relaxed),
        login_failures: st.login_failures.load(Relaxed),
        unauthenticated: st.unauthenticated.load(Relaxed),
        denied: st.denied.load(Relaxed),
        protected_refusals: st.protected_refusals.load(Relaxed),
        tls: gate.tls(),
        tls_client_auth: gate.client_certs(),
        tls_failures: st.tls_failures.load(Relaxed),
    }
}

/// Counts the keys and bytes of every region of the node, every
/// [`SIZE_SCAN_SECS`], on a thread of its own (RocksDB reads are safe from any
/// thread; the shards are not disturbed). Ends with the node.
pub fn spawn_size_scanner(node: Weak<NodeShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("corekv-sizes".into())
        .spawn(move || {
            let mut wait = Duration::from_secs(2);
            loop {
                std::thread::sleep(wait);
                wait = Duration::from_secs(SIZE_SCAN_SECS);
                let Some(node) = node.upgrade() else { return };
                if node.is_stopping() {
                    return;
                }
                scan(&node);
            }
        })?;
    Ok(())
}

fn scan(node: &Arc<NodeShared>) {
    let ranges: Vec<(u64, u64, u64)> = match node.board.lock() {
        Ok(b) => b
            .regions
            .iter()
            .map(|(id, r)| (*id, r.region.start_hash, r.region.end_hash))
            .collect(),
        Err(_) => return,
    };
    let db = &node.db;
    let snap = db.snapshot();
    let mut sizes = Vec::with_capacity(ranges.len());
    let scanned: std::collections::BTreeMap<u64, (u64, u64)> =
        ranges.iter().map(|(id, s, e)| (*id, (*s, *e))).collect();
    for (id, start, end) in ranges {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snap);
        opts.fill_cache(false);
        opts.set_iterate_upper_bound(keys::data_range_end(end));
        let mut it = db.raw_iterator_cf_opt(cf(db, CF_DATA), opts);
        it.seek(keys::data_range_start(start));
        let (mut n, mut bytes) = (0u64, 0u64);
        while it.valid() {
            n += 1;
            bytes += (it.key().map_or(0, |k| k.len()) + it.value().map_or(0, |v| v.len())) as u64;
            it.next();
        }
        sizes.push((id, (n, bytes)));
    }
    if let Ok(mut b) = node.board.lock() {
        b.sizes = sizes.into_iter().collect();
        b.scanned_ranges = scanned;
    }
}
