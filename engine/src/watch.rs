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

use bytes::Bytes;

use crate::codec::{Decoder, Encoder};
use crate::db::cf;
use crate::error::{Error, Result};
use crate::keys::{self, CF_HISTORY};

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A value was written (put, cas, incr, batch put).
    Put,
    /// The key was deleted.
    Delete,
    /// The key's value expired and was removed.
    Expire,
}

impl ChangeKind {
    fn tag(self) -> u8 {
        match self {
            ChangeKind::Put => 1,
            ChangeKind::Delete => 2,
            ChangeKind::Expire => 3,
        }
    }

    fn from_tag(t: u8) -> Result<ChangeKind> {
        Ok(match t {
            1 => ChangeKind::Put,
            2 => ChangeKind::Delete,
            3 => ChangeKind::Expire,
            t => return Err(Error::Corruption(format!("history change tag {t}"))),
        })
    }
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Bytes,
    /// Kind of change.
    pub kind: ChangeKind,
    /// The new value (puts only).
    pub value: Bytes,
    /// Log index of the entry that made the change.
    pub version: u64,
    /// Absolute expiry of the new value in unix ms; 0 = none (puts only).
    pub expire_at_ms: u64,
}

/// The changes one applied entry made in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryChanges {
    /// Region.
    pub region_id: u64,
    /// Log index (the version of every change in it).
    pub index: u64,
    /// The changes, in the order the entry made them.
    pub changes: Vec<Change>,
}

const RECORD_FORMAT: u8 = 1;

/// Encodes an entry's changes as a history record.
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(
        8 + changes
            .iter()
            .map(|c| 24 + c.key.len() + c.value.len())
            .sum::<usize>(),
    );
    e.u8(RECORD_FORMAT).u32(changes.len() as u32);
    for c in changes {
        e.u8(c.kind.tag()).bytes(&c.key);
        if c.kind == ChangeKind::Put {
            e.u64(c.expire_at_ms).bytes(&c.value);
        }
    }
    e.finish()
}

/// Decodes a history record of the entry at `index`.
pub fn decode_changes(index: u64, buf: &[u8]) -> Result<Vec<Change>> {
    let mut d = Decoder::new(buf, "history record");
    d.version(RECORD_FORMAT)?;
    let n = d.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = ChangeKind::from_tag(d.u8()?)?;
        let key = Bytes::copy_from_slice(d.bytes()?);
        let (expire_at_ms, value) = if kind == ChangeKind::Put {
            (d.u64()?, Bytes::copy_from_slice(d.bytes()?))
        } else {
            (0, Bytes::new())
        };
        out.push(Change {
            key,
            kind,
            value,
            version: index,
            expire_at_ms,
        });
    }
    d.finish()?;
    Ok(out)
}

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
    fn records_round_trip_and_garbage_is_refused() {
        let cs = vec![
            change("a", ChangeKind::Put, "1", 9),
            change("b", ChangeKind::Delete, "", 9),
            change("c", ChangeKind::Expire, "", 9),
        ];
        assert_eq!(decode_changes(9, &encode_changes(&cs)).unwrap(), cs);
        let mut bad = encode_changes(&cs);
        bad.truncate(bad.len() - 1);
        assert!(decode_changes(9, &bad).is_err());
        assert!(decode_changes(9, &[1, 0, 0, 0, 1, 9]).is_err());
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
