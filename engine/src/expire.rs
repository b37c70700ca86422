//! Active expiry: the leader removes expired keys through raft.
//!
//! Reads never return an expired value (the expiry is an absolute time
//! chosen by the leader and replicated with the write), but an expired key
//! still takes memory and disk until it is removed. So each region's leader
//! sweeps its key range a slice at a time (a cursor that wraps around),
//! collects keys whose expiry has passed, and proposes one raft entry that
//! removes them: every replica applies the same removals at the same log
//! index. An entry removes a key only if its record still carries the
//! expiry the sweep saw and that time has passed at the entry's replicated
//! clock, so a key written again after the sweep is left alone.
//!
//! Expiry entries are normal raft entries whose context is
//! [`ENTRY_CONTEXT`]; their data is `format u8, now_ms u64, count u32`, then
//! per key `key (u32 len + bytes), expire_at_ms u64`.

use bytes::Bytes;

use crate::apply::ApplyBatch;
use crate::codec::{Decoder, Encoder};
use crate::db::cf;
use crate::error::Result;
use crate::hash::route_hash;
use crate::keys::{self, CF_DATA};
use crate::region::Region;
use crate::value::ValueRecord;

/// Context of raft entries that carry an [`ExpireCommand`].
pub const ENTRY_CONTEXT: &[u8] = b"expire";

/// Context of raft entries that only move the region's clock forward (see
/// `ApplyState::clock_ms`); their data is the leader's time, `u64` unix ms.
pub const CLOCK_CONTEXT: &[u8] = b"clock";

/// The data of a clock entry.
pub fn encode_clock(now_ms: u64) -> Vec<u8> {
    now_ms.to_be_bytes().to_vec()
}

/// Reads a clock entry's data.
pub fn decode_clock(data: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(data)
        .map(u64::from_be_bytes)
        .map_err(|_| crate::Error::Corruption(format!("clock entry of {} bytes", data.len())))
}
const FORMAT: u8 = 1;

/// Removal of expired keys, as replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpireCommand {
    /// Leader clock when proposed (unix ms).
    pub now_ms: u64,
    /// Keys with the expiry the sweep saw.
    pub keys: Vec<(Bytes, u64)>,
}

impl ExpireCommand {
    /// Encodes for a raft entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(16 + self.keys.len() * 32);
        e.u8(FORMAT).u64(self.now_ms).u32(self.keys.len() as u32);
        for (k, at) in &self.keys {
            e.bytes(k).u64(*at);
        }
        e.finish()
    }

    /// Decodes [`ExpireCommand::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<ExpireCommand> {
        let mut d = Decoder::new(buf, "expire command");
        d.version(FORMAT)?;
        let now_ms = d.u64()?;
        let n = d.u32()? as usize;
        let mut keys = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let k = Bytes::copy_from_slice(d.bytes()?);
            keys.push((k, d.u64()?));
        }
        d.finish()?;
        Ok(ExpireCommand { now_ms, keys })
    }
}

/// Where a region's sweep resumes.
#[derive(Debug, Default)]
pub struct SweepCursor {
    /// Next data key to look at; `None` = the start of the region.
    next: Option<Vec<u8>>,
    /// Full passes over the region completed.
    pub passes: u64,
}

/// What one sweep step found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Keys expired at the sweep's time, with their expiry.
    pub expired: Vec<(Bytes, u64)>,
    /// Some record looked at has an expiry (expired or not).
    pub saw_ttl: bool,
    /// The step reached the end of the region (the cursor wrapped).
    pub wrapped: bool,
}

/// Scans up to `scan_max` records of `region` from the cursor and returns at
/// most `keys_max` keys expired at `now_ms`.
pub fn sweep(
    db: &rocksdb::DB,
    region: &Region,
    cursor: &mut SweepCursor,
    now_ms: u64,
    scan_max: usize,
    keys_max: usize,
) -> Result<Swept> {
    let start = keys::data_range_start(region.start_hash);
    let end = keys::data_range_end(region.end_hash);
    let from = match cursor.next.take() {
        Some(k) if k >= start && k < end => k,
        _ => start,
    };
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(end);
    opts.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_DATA), opts);
    it.seek(&from);
    let mut out = Swept::default();
    let mut scanned = 0;
    while it.valid() && scanned < scan_max && out.expired.len() < keys_max {
        let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
        scanned += 1;
        if let (Some((_, user_key)), Ok(rec)) = (keys::split_data_key(k), ValueRecord::decode(v)) {
            out.saw_ttl |= rec.expire_at_ms != 0;
            if rec.is_expired(now_ms) {
                out.expired
                    .push((Bytes::copy_from_slice(user_key), rec.expire_at_ms));
            }
        }
        it.next();
    }
    it.status()?;
    if it.valid() {
        cursor.next = it.key().map(<[u8]>::to_vec);
    } else {
        cursor.passes += 1;
        out.wrapped = true;
    }
    Ok(out)
}

/// Applies an expiry entry; returns the keys removed.
pub fn apply(
    db: &rocksdb::DB,
    batch: &mut ApplyBatch,
    region: &Region,
    cmd: &ExpireCommand,
) -> Result<Vec<Bytes>> {
    let mut removed = Vec::new();
    for (key, at) in &cmd.keys {
        // Keys outside the region (it changed since the sweep) are skipped.
        if !region.contains(route_hash(key)) {
            continue;
        }
        let dk = keys::data_key(route_hash(key), key);
        let still = batch
            .current(db, &dk)?
            .is_some_and(|r| r.expire_at_ms == *at && r.is_expired(cmd.now_ms));
        if still {
            batch.delete(db, dk, true, crate::watch::ChangeKind::Expire);
            removed.push(key.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_command;
    use crate::command::{Command, Condition, WriteRequest};
    use crate::db::{self, DbConfig};

    fn put(key: &str, ttl_ms: Option<u64>) -> WriteRequest {
        WriteRequest::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            ttl_ms,
            condition: Condition::None,
        }
    }

    #[test]
    fn sweeps_find_expired_keys_and_removal_skips_rewritten_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::open(dir.path(), &DbConfig::default()).unwrap();
        let region = Region {
            id: 1,
            start_hash: 0,
            end_hash: 0,
            epoch: Default::default(),
            peers: Vec::new(),
        };
        let write = |batch: &mut ApplyBatch, index: u64, now_ms: u64, request: WriteRequest| {
            let cmd = Command {
                now_ms,
                session: None,
                request,
            };
            apply_command(&db, batch, &region, index, &cmd).unwrap();
        };
        let mut batch = ApplyBatch::default();
        for i in 0..50u64 {
            write(
                &mut batch,
                i + 1,
                1_000,
                put(&format!("ttl-{i}"), Some(100)),
            );
            write(&mut batch, 100 + i, 1_000, put(&format!("keep-{i}"), None));
        }
        db::write(&db, batch.take(), false).unwrap();

        // Not yet expired at 1,050; all 50 at 1,100. Small scans resume
        // where the last one stopped.
        let mut cursor = SweepCursor::default();
        let first = sweep(&db, &region, &mut cursor, 1_050, 1000, 1000).unwrap();
        assert!(first.expired.is_empty() && first.saw_ttl && first.wrapped);
        let mut found = Vec::new();
        while cursor.passes < 2 {
            found.extend(
                sweep(&db, &region, &mut cursor, 1_100, 7, 1000)
                    .unwrap()
                    .expired,
            );
        }
        found.sort();
        found.dedup();
        assert_eq!(found.len(), 50);
        assert!(found
            .iter()
            .all(|(k, at)| k.starts_with(b"ttl-") && *at == 1_100));

        // ttl-0 is written again, without a TTL, after the sweep saw it.
        let mut batch = ApplyBatch::default();
        write(&mut batch, 200, 1_150, put("ttl-0", None));
        db::write(&db, batch.take(), false).unwrap();
        let cmd = ExpireCommand {
            now_ms: 1_200,
            keys: found,
        };
        let mut batch = ApplyBatch::default();
        let removed = apply(&db, &mut batch, &region, &cmd).unwrap();
        db::write(&db, batch.take(), false).unwrap();
        assert_eq!(removed.len(), 49);
        assert!(crate::apply::load(&db, b"ttl-0").unwrap().is_some());
        assert!(crate::apply::load(&db, b"ttl-1").unwrap().is_none());
        assert!(crate::apply::load(&db, b"keep-1").unwrap().is_some());
        // Applying the same entry again removes nothing more.
        let mut batch = ApplyBatch::default();
        assert!(apply(&db, &mut batch, &region, &cmd).unwrap().is_empty());
    }

    #[test]
    fn commands_round_trip_and_reject_garbage() {
        let c = ExpireCommand {
            now_ms: 1_700_000_000_000,
            keys: vec![
                (Bytes::from_static(b"a"), 5),
                (Bytes::from_static(b"bb"), 7),
            ],
        };
        assert_eq!(ExpireCommand::decode(&c.encode()).unwrap(), c);
        let mut bad = c.encode();
        bad.truncate(bad.len() - 3);
        assert!(ExpireCommand::decode(&bad).is_err());
        assert!(ExpireCommand::decode(&[9, 0, 0]).is_err());
    }
}
