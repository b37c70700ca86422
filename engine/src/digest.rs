//! A digest of one region replica's replicated state: every stored record of
//! its range (key, value, version, expiry, expired or not), its client
//! sessions and its clock. Replicas that applied the same log up to the same index have
//! the same digest; one that differs has silently diverged (a lost write, a
//! resurrected delete, a stale overwrite), which no client history shows
//! until someone reads that replica.
//!
//! The hash is xxh3-64 over the records in key order, each framed by its
//! lengths, then over the sessions in client order, then the clock (a
//! marker byte, and the time when known): stable across platforms and
//! releases of the same format.

use xxhash_rust::xxh3::Xxh3;

use crate::db::cf;
use crate::error::Result;
use crate::keys::{self, CF_DATA};
use crate::region::Region;
use crate::session::SessionTable;

/// What a replica's digest is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Stored records in the range.
    pub keys: u64,
    /// Bytes of keys and records.
    pub bytes: u64,
    /// The hash of records and sessions.
    pub hash: u64,
}

/// The digest of `region`'s data in `db` (as written), of `sessions` and
/// of the region's clock.
pub fn compute(
    db: &rocksdb::DB,
    region: (&Region, Option<u64>),
    sessions: &SessionTable,
) -> Result<Digest> {
    compute_over(db, region, sessions, &[])
}

/// Like [`compute`], with `pending` (data key → record, `None` = deleted,
/// sorted by key) written over what `db` holds: the state an apply batch
/// not yet written leads to ([`crate::apply::ApplyBatch::pending_in`]).
pub fn compute_over(
    db: &rocksdb::DB,
    (region, clock_ms): (&Region, Option<u64>),
    sessions: &SessionTable,
    pending: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<Digest> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::data_range_end(region.end_hash));
    opts.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_DATA), opts);
    it.seek(keys::data_range_start(region.start_hash));
    let mut h = Xxh3::new();
    let mut d = Digest::default();
    let mut add = |k: &[u8], v: &[u8]| {
        h.update(&(k.len() as u32).to_be_bytes());
        h.update(k);
        h.update(&(v.len() as u32).to_be_bytes());
        h.update(v);
        d.keys += 1;
        d.bytes += (k.len() + v.len()) as u64;
    };
    let mut pending = pending.iter().peekable();
    loop {
        let stored = it.valid().then(|| it.key().unwrap_or_default());
        let next = pending.peek().map(|(k, _)| k.as_slice());
        match (stored, next) {
            (None, None) => break,
            (Some(k), n) if n.is_none_or(|n| k < n) => {
                add(k, it.value().unwrap_or_default());
                it.next();
            }
            (s, Some(n)) => {
                if s == Some(n) {
                    // Written over by the batch.
                    it.next();
                }
                let (k, v) = pending.next().expect("peeked");
                if let Some(v) = v {
                    add(k, v);
                }
            }
            (Some(_), None) => unreachable!("the first arm takes it"),
        }
    }
    it.status()?;
    for (client, s) in sessions.clients() {
        h.update(&client.to_be_bytes());
        let e = s.encode();
        h.update(&(e.len() as u32).to_be_bytes());
        h.update(&e);
    }
    match clock_ms {
        Some(ms) => {
            h.update(&[1]);
            h.update(&ms.to_be_bytes());
        }
        None => h.update(&[0]),
    }
    d.hash = h.digest();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{self, DbConfig};
    use crate::value::ValueRecord;

    fn put(db: &rocksdb::DB, key: &[u8], record: &ValueRecord) {
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            cf(db, CF_DATA),
            keys::data_key(crate::route_hash(key), key),
            record.encode(),
        );
        db::write(db, b, false).unwrap();
    }

    #[test]
    fn any_difference_in_a_record_changes_the_digest_and_other_ranges_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::open(dir.path(), &DbConfig::default()).unwrap();
        let all = Region {
            id: 1,
            start_hash: 0,
            end_hash: 0,
            epoch: Default::default(),
            peers: vec![],
        };
        let sessions = SessionTable::default();
        let empty = compute(&db, (&all, None), &sessions).unwrap();
        let rec = |version, expire_at_ms, value: &'static [u8]| ValueRecord {
            version,
            expire_at_ms,
            value: bytes::Bytes::from_static(value),
        };
        put(&db, b"a", &rec(7, 0, b"x"));
        let one = compute(&db, (&all, None), &sessions).unwrap();
        assert_ne!(one, empty);
        assert_eq!((one.keys, empty.keys), (1, 0));
        for changed in [rec(8, 0, b"x"), rec(7, 5, b"x"), rec(7, 0, b"y")] {
            put(&db, b"a", &changed);
            assert_ne!(
                compute(&db, (&all, None), &sessions).unwrap().hash,
                one.hash
            );
        }
        put(&db, b"a", &rec(7, 0, b"x"));
        assert_eq!(compute(&db, (&all, None), &sessions).unwrap(), one);
        // An unwritten batch's records count as written.
        let dk = |k: &[u8]| keys::data_key(crate::route_hash(k), k);
        let over = [(dk(b"a"), None)];
        assert_eq!(
            compute_over(&db, (&all, None), &sessions, &over).unwrap(),
            empty
        );
        let mut over = vec![
            (dk(b"a"), Some(rec(7, 0, b"x").encode())),
            (dk(b"b"), Some(rec(9, 0, b"y").encode())),
        ];
        over.sort();
        put(&db, b"b", &rec(9, 0, b"y"));
        let both = compute(&db, (&all, None), &sessions).unwrap();
        let mut b = rocksdb::WriteBatch::default();
        b.delete_cf(cf(&db, CF_DATA), dk(b"b"));
        db::write(&db, b, false).unwrap();
        assert_eq!(
            compute_over(&db, (&all, None), &sessions, &over).unwrap(),
            both
        );
        // A region not covering the key does not see it.
        let h = crate::route_hash(b"a");
        let other = if h >= 1 << 63 {
            Region {
                end_hash: 1 << 63,
                ..all.clone()
            }
        } else {
            Region {
                start_hash: 1 << 63,
                ..all.clone()
            }
        };
        assert_eq!(compute(&db, (&other, None), &sessions).unwrap().keys, 0);
        // The clock counts.
        assert_ne!(
            compute(&db, (&all, Some(5)), &sessions).unwrap(),
            compute(&db, (&all, None), &sessions).unwrap()
        );
    }
}
