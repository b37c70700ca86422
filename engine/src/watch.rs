//! Change history for watchers.
//!
//! Every applied entry that changes keys leaves a history record in the
//! `history` column family, written in the same batch as the data it
//! describes: `0x01 region index` → the entry's changes (puts with their
//! values, deletes, expiries). A watcher that reconnects reads the record
//! range after the last version it saw, so it resumes without gaps or
//! duplicates on any replica, before or after a leader change.
//!
//! History is bounded: a region keeps the records of its last
//! `Config::watch_history_entries` log indexes. Below the region's *floor*
//! (`0x02 region`) records are gone: pruned, or never present on a replica
//! restored from a snapshot. Every change after the floor is present.

use crate::db::cf;
use crate::error::{Error, Result};
use crate::keys::{self, CF_HISTORY};

pub use corekv_types::watch::{decode_changes, encode_changes, Change, ChangeKind, EntryChanges};

/// The lowest version a watcher of `region_id` can resume from: every change
/// after it is in the history.
pub fn floor(db: &rocksdb::DB, region_id: u64) -> Result<Option<u64>> {
    match db.get_pinned_cf(cf(db, CF_HISTORY), keys::history_floor_key(region_id))? {
        Some(b) if b.len() == 8 => Ok(Some(u64::from_be_bytes(b[..].try_into().unwrap()))),
        Some(_) => Err(Error::Corruption(format!(
            "history floor of region {region_id}"
        ))),
        None => Ok(None),
    }
}

/// Writes the floor of `region_id` into `batch`.
pub fn set_floor(db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, region_id: u64, floor: u64) {
    batch.put_cf(
        cf(db, CF_HISTORY),
        keys::history_floor_key(region_id),
        floor.to_be_bytes(),
    );
}

/// Where region `region_id` split off, if it did on this node: (parent
/// region, index of the split entry). The parent's history up to that
/// index holds the changes of the region's keys before it existed.
pub fn origin(db: &rocksdb::DB, region_id: u64) -> Result<Option<(u64, u64)>> {
    match db.get_pinned_cf(cf(db, crate::keys::CF_META), keys::origin_key(region_id))? {
        Some(b) if b.len() == 16 => Ok(Some((
            u64::from_be_bytes(b[..8].try_into().unwrap()),
            u64::from_be_bytes(b[8..].try_into().unwrap()),
        ))),
        Some(_) => Err(Error::Corruption(format!("origin of region {region_id}"))),
        None => Ok(None),
    }
}

/// Removes the records of `region_id` at or below `up_to` and moves the floor
/// there.
pub fn prune(db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, region_id: u64, up_to: u64) {
    batch.delete_range_cf(
        cf(db, CF_HISTORY),
        keys::history_key(region_id, 0),
        keys::history_key(region_id, up_to.saturating_add(1)),
    );
    set_floor(db, batch, region_id, up_to);
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Changes that passed the filter, in version order.
    pub changes: Vec<Change>,
    /// Every change up to this version was looked at.
    pub scanned_to: u64,
}

/// Reads the history of `region_id` after version `after` up to `up_to`,
/// looking at most at `entries_max` records, keeping the changes `keep`
/// accepts. The caller checks the floor first.
pub fn read(
    db: &rocksdb::DB,
    region_id: u64,
    after: u64,
    up_to: u64,
    entries_max: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<HistoryPage> {
    let mut page = HistoryPage {
        changes: Vec::new(),
        scanned_to: after,
    };
    if after >= up_to {
        return Ok(page);
    }
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::history_key(region_id, up_to.saturating_add(1)).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_HISTORY), opts);
    it.seek(keys::history_key(region_id, after + 1));
    let mut seen = 0;
    while it.valid() && seen < entries_max {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let Some(index) = keys::history_index(region_id, k) else {
            break;
        };
        for c in decode_changes(index, v)? {
            if keep(&c.key) {
                page.changes.push(c);
            }
        }
        page.scanned_to = index;
        seen += 1;
        it.next();
    }
    it.status()?;
    if !it.valid() && seen < entries_max {
        // Nothing more below the bound: entries without changes count too.
        page.scanned_to = up_to;
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::db::{self, DbConfig};

    fn change(key: &str, kind: ChangeKind, value: &str, version: u64) -> Change {
        Change {
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind,
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            expire_at_ms: if kind == ChangeKind::Put { 77 } else { 0 },
        }
    }

    #[test]
    fn reads_pages_after_a_version_and_prunes_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::open(dir.path(), &DbConfig::default()).unwrap();
        let mut b = rocksdb::WriteBatch::default();
        let h = cf(&db, CF_HISTORY);
        for i in 1..=10u64 {
            let key = if i % 2 == 0 { "even" } else { "odd" };
            b.put_cf(
                h,
                keys::history_key(1, i),
                encode_changes(&[change(key, ChangeKind::Put, &i.to_string(), i)]),
            );
            // Another region's records are never read.
            b.put_cf(
                h,
                keys::history_key(2, i),
                encode_changes(&[change("even", ChangeKind::Delete, "", i)]),
            );
        }
        set_floor(&db, &mut b, 1, 0);
        db::write(&db, b, false).unwrap();

        let all = read(&db, 1, 0, 10, 100, |_| true).unwrap();
        assert_eq!(all.scanned_to, 10);
        let versions: Vec<u64> = all.changes.iter().map(|c| c.version).collect();
        assert_eq!(versions, (1..=10).collect::<Vec<_>>());

        let even = read(&db, 1, 3, 8, 100, |k| k == b"even").unwrap();
        let versions: Vec<u64> = even.changes.iter().map(|c| c.version).collect();
        assert_eq!(versions, vec![4, 6, 8]);
        assert!(even.changes.iter().all(|c| c.kind == ChangeKind::Put));
        assert_eq!(even.scanned_to, 8);

        let paged = read(&db, 1, 2, 10, 3, |_| true).unwrap();
        assert_eq!(paged.scanned_to, 5);
        assert_eq!(paged.changes.len(), 3);

        let mut b = rocksdb::WriteBatch::default();
        prune(&db, &mut b, 1, 6);
        db::write(&db, b, false).unwrap();
        assert_eq!(floor(&db, 1).unwrap(), Some(6));
        let rest = read(&db, 1, 0, 10, 100, |_| true).unwrap();
        assert_eq!(rest.changes.first().map(|c| c.version), Some(7));
        assert_eq!(
            read(&db, 2, 0, 10, 100, |_| true).unwrap().changes.len(),
            10
        );

        // A snapshot at 42 leaves nothing at or below it.
        let mut b = rocksdb::WriteBatch::default();
        prune(&db, &mut b, 1, 42);
        db::write(&db, b, false).unwrap();
        assert_eq!(floor(&db, 1).unwrap(), Some(42));
        assert!(read(&db, 1, 0, 100, 100, |_| true)
            .unwrap()
            .changes
            .is_empty());
    }
}
