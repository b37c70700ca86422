//! The disk quota (`--disk-quota-mb`).
//!
//! A thread of its own measures the data column family (live SST files plus
//! memtables, which are bound for disk) twice a second. Over the quota it
//! sets `NodeShared::no_space`: the shards then refuse writes that add data
//! (put, cas, incr, batch put) with `NoSpace`, while reads, deletes, expiry
//! and raft traffic (leader changes included) go on. While over, it flushes
//! and compacts the data column family every few seconds so that deleted and
//! expired data frees its space. Below 90% of the quota, writes resume.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use corekv_engine::db::cf;
use corekv_engine::keys::CF_DATA;

use crate::node::NodeShared;

const CHECK_EVERY: Duration = Duration::from_millis(500);
const COMPACT_EVERY: Duration = Duration::from_secs(3);

/// Bytes the data column family takes (files and memtables).
pub fn data_bytes(db: &rocksdb::DB) -> u64 {
    let prop = |p: &str| {
        db.property_int_value_cf(cf(db, CF_DATA), p)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    prop("rocksdb.live-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
}

/// What the watcher does with a measurement: `Some(true)` = go over quota,
/// `Some(false)` = back under, `None` = no change.
pub fn decide(over_now: bool, used: u64, quota: u64) -> Option<bool> {
    if !over_now && used > quota {
        Some(true)
    } else if over_now && used < quota / 10 * 9 {
        Some(false)
    } else {
        None
    }
}

/// Starts the watcher; it ends with the node.
pub fn spawn_quota_watcher(node: Weak<NodeShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("corekv-quota".into())
        .spawn(move || {
            let mut last_compact: Option<Instant> = None;
            loop {
                std::thread::sleep(CHECK_EVERY);
                let Some(node) = node.upgrade() else { return };
                if node.is_stopping() {
                    return;
                }
                check(&node, &mut last_compact);
            }
        })?;
    Ok(())
}

fn check(node: &Arc<NodeShared>, last_compact: &mut Option<Instant>) {
    use std::sync::atomic::Ordering;
    let quota = node.cfg.disk_quota_bytes;
    let db = &node.db;
    let used = data_bytes(db);
    let over = node.no_space.load(Ordering::Relaxed);
    match decide(over, used, quota) {
        Some(true) => {
            node.no_space.store(true, Ordering::Relaxed);
            tracing::warn!(
                used_bytes = used,
                quota_bytes = quota,
                "data over the disk quota: writes refused with NoSpace until deletes free space"
            );
        }
        Some(false) => {
            node.no_space.store(false, Ordering::Relaxed);
            tracing::info!(
                used_bytes = used,
                quota_bytes = quota,
                "data back under the disk quota: writes accepted"
            );
        }
        None => {}
    }
    if node.no_space.load(Ordering::Relaxed)
        && last_compact.is_none_or(|t| t.elapsed() >= COMPACT_EVERY)
    {
        *last_compact = Some(Instant::now());
        // Deleted and expired data only frees space once compacted away.
        let data = cf(db, CF_DATA);
        if let Err(e) = db.flush_cf(data) {
            tracing::warn!(error = %e, "flushing data for the disk quota");
        }
        db.compact_range_cf(data, None::<&[u8]>, None::<&[u8]>);
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn over_at_the_quota_and_back_under_ninety_percent() {
        assert_eq!(decide(false, 100, 100), None);
        assert_eq!(decide(false, 101, 100), Some(true));
        assert_eq!(decide(true, 95, 100), None);
        assert_eq!(decide(true, 89, 100), Some(false));
        assert_eq!(decide(true, 200, 100), None);
    }
}
