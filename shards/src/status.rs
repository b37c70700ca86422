//! The node's status document (the `Status` request, `corekv ctl status` and
//! `corekv ctl regions`) and the background scan that counts each region's
//! keys and bytes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use corekv_engine::db::cf;
use corekv_engine::keys::{self, CF_DATA};
use serde_json::json;

use crate::node::NodeShared;

/// Seconds between two scans of region sizes.
pub const SIZE_SCAN_SECS: u64 = 10;

fn digest_json(d: &corekv_engine::digest::Digest) -> serde_json::Value {
    json!({"hash": format!("{:016x}", d.hash), "keys": d.keys, "bytes": d.bytes})
}

/// The status document of `node`, as JSON text.
pub fn document(node: &NodeShared) -> String {
    let (fsyncs, batches, entries, bytes) = node.log_stats.snapshot();
    let board = node.board.lock().map(|b| {
        let regions: Vec<_> = b
            .regions
            .iter()
            .map(|(id, r)| {
                let (keys, bytes) = b.sizes.get(id).copied().unwrap_or_default();
                let region = &r.region;
                json!({
                    "id": id,
                    "start_hash": region.start_hash,
                    "end_hash": region.end_hash,
                    "epoch": {"conf_ver": region.epoch.conf_ver, "version": region.epoch.version},
                    "peers": region.peers.iter().map(|p| json!({"id": p.id, "node": p.node_id})).collect::<Vec<_>>(),
                    "shard": r.shard,
                    "role": r.role,
                    "leader_node": r.leader_node,
                    "applied_index": r.applied_index,
                    "commit_index": r.commit_index,
                    "log_entries": r.log_entries,
                    "keys": keys,
                    "bytes": bytes,
                    "read_ops_per_sec": (r.read_ops_per_sec * 10.0).round() / 10.0,
                    "write_ops_per_sec": (r.write_ops_per_sec * 10.0).round() / 10.0,
                    "check": r.check.map(|c| json!({
                        "index": c.index,
                        "verdict": c.verdict(),
                        "leader": digest_json(&c.leader),
                        "own": c.own.as_ref().map(digest_json),
                    })),
                })
            })
            .collect::<Vec<_>>();
        let mut per_shard = std::collections::BTreeMap::<usize, (u64, u64)>::new();
        for r in b.regions.values() {
            let e = per_shard.entry(r.shard).or_default();
            e.0 += 1;
            if r.role == "leader" {
                e.1 += 1;
            }
        }
        let ports = node.shard_ports.get();
        let shards: Vec<_> = (0..node.cfg.shards)
            .map(|s| {
                let (regions, leaders) = per_shard.get(&s).copied().unwrap_or_default();
                json!({
                    "shard": s,
                    "regions": regions,
                    "leaders": leaders,
                    "port": ports.get(s).copied().unwrap_or(0),
                    "forwarded_requests": node.forwarded[s].load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        (regions, shards)
    });
    let (regions, shards) = board.unwrap_or_default();
    let leaders = node.router().led_by(node.cfg.node_id);
    json!({
        "node_id": node.cfg.node_id,
        "client_addr": node.cfg.client_listen.to_string(),
        "peer_addr": node.cfg.peer_listen.to_string(),
        "uptime_secs": node.started.elapsed().as_secs(),
        "stopping": node.is_stopping(),
        "shard_count": node.cfg.shards,
        "leaders": leaders,
        "known_nodes": node.peer_addrs.read().map(|a| {
            let mut ids: Vec<u64> = a.keys().copied().collect();
            ids.sort_unstable();
            ids
        }).unwrap_or_default(),
        "leaving": node.retired.lock().map(|r| r.iter().copied().collect::<Vec<u64>>()).unwrap_or_default(),
        "log_writer": {
            "fsyncs": fsyncs,
            "batches": batches,
            "entries": entries,
            "bytes": bytes,
            "entries_per_fsync": if fsyncs == 0 { 0.0 } else { (entries as f64 / fsyncs as f64 * 10.0).round() / 10.0 },
        },
        "shards": shards,
        "regions": regions,
    })
    .to_string()
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
