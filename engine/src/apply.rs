//! The state machine: applying committed writes to the `data` column family.
//!
//! Writes of one round go into an [`ApplyBatch`] together with each region's
//! apply state, so data and applied index land atomically: after a crash an
//! entry is applied again only if its data was lost with it. Later entries of
//! the same round read the values earlier ones wrote from the batch's overlay.

use std::collections::HashMap;

use bytes::Bytes;

use crate::command::{Command, Condition, Expiry, TxnOp, WriteOutcome, WriteRequest};
use crate::db::cf;
use crate::error::Result;
use crate::hash::route_hash;
use crate::keys::{self, CF_DATA};
use crate::region::Region;
use crate::value::ValueRecord;
use crate::watch::{self, Change, ChangeKind, EntryChanges};

/// Unsynced write of applied data and apply states.
#[derive(Default)]
pub struct ApplyBatch {
    /// The RocksDB batch.
    pub inner: rocksdb::WriteBatch,
    /// Values written in this batch, by data key (`None` = deleted).
    overlay: HashMap<Vec<u8>, Option<ValueRecord>, ahash::RandomState>,
    /// Entries applied into this batch.
    pub entries: u64,
    /// Keys written since the last [`ApplyBatch::take_touched`], with their
    /// new state, for the read cache.
    touched: Vec<(Bytes, Option<ValueRecord>)>,
    /// Changes of the entry being applied.
    entry_changes: Vec<Change>,
    /// Changes of the entries applied since the last
    /// [`ApplyBatch::take_changes`], for watchers.
    changes: Vec<EntryChanges>,
}

impl ApplyBatch {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The records this batch writes (`None`: deletes) whose data keys are
    /// in `[start, end)`, in key order: what a read of that range sees once
    /// the batch is written, over what RocksDB holds.
    pub fn pending_in(&self, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .overlay
            .iter()
            .filter(|(k, _)| k.as_slice() >= start && k.as_slice() < end)
            .map(|(k, v)| (k.clone(), v.as_ref().map(ValueRecord::encode)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Takes the RocksDB batch out and starts a new, empty one.
    pub fn take(&mut self) -> rocksdb::WriteBatch {
        self.overlay.clear();
        self.entries = 0;
        std::mem::take(&mut self.inner)
    }

    pub(crate) fn current(&self, db: &rocksdb::DB, data_key: &[u8]) -> Result<Option<ValueRecord>> {
        if let Some(v) = self.overlay.get(data_key) {
            return Ok(v.clone());
        }
        match db.get_pinned_cf(cf(db, CF_DATA), data_key)? {
            Some(b) => Ok(Some(ValueRecord::decode(&b)?)),
            None => Ok(None),
        }
    }

    fn put(&mut self, db: &rocksdb::DB, data_key: Vec<u8>, record: ValueRecord) {
        self.inner
            .put_cf(cf(db, CF_DATA), &data_key, record.encode());
        let key = Bytes::copy_from_slice(&data_key[8..]);
        self.entry_changes.push(Change {
            key: key.clone(),
            kind: ChangeKind::Put,
            value: record.value.clone(),
            version: record.version,
            expire_at_ms: record.expire_at_ms,
        });
        self.touched.push((key, Some(record.clone())));
        self.overlay.insert(data_key, Some(record));
    }

    /// Deletes a key. `stored` says whether a record (live or expired) was
    /// there: only then do watchers hear of it, as a change of `kind`.
    pub(crate) fn delete(
        &mut self,
        db: &rocksdb::DB,
        data_key: Vec<u8>,
        stored: bool,
        kind: ChangeKind,
    ) {
        self.inner.delete_cf(cf(db, CF_DATA), &data_key);
        let key = Bytes::copy_from_slice(&data_key[8..]);
        if stored {
            self.entry_changes.push(Change {
                key: key.clone(),
                kind,
                value: Bytes::new(),
                version: 0,
                expire_at_ms: 0,
            });
        }
        self.touched.push((key, None));
        self.overlay.insert(data_key, None);
    }

    /// Closes the entry at `index` of `region_id`: its changes get their
    /// version, go into the history (when `keep_history`) and are kept for
    /// watchers.
    pub fn end_entry(&mut self, db: &rocksdb::DB, region_id: u64, index: u64, keep_history: bool) {
        if self.entry_changes.is_empty() {
            return;
        }
        let mut changes = std::mem::take(&mut self.entry_changes);
        for c in &mut changes {
            c.version = index;
        }
        if keep_history {
            self.inner.put_cf(
                cf(db, keys::CF_HISTORY),
                keys::history_key(region_id, index),
                watch::encode_changes(&changes),
            );
        }
        self.changes.push(EntryChanges {
            region_id,
            index,
            changes,
        });
    }

    /// The changes applied since the last call, in apply order.
    pub fn take_changes(&mut self) -> Vec<EntryChanges> {
        std::mem::take(&mut self.changes)
    }

    /// The keys written since the last call, with their new state.
    pub fn take_touched(&mut self) -> std::vec::Drain<'_, (Bytes, Option<ValueRecord>)> {
        self.touched.drain(..)
    }
}

/// Reads the stored record of `key`, expired or not.
pub fn load(db: &rocksdb::DB, key: &[u8]) -> Result<Option<ValueRecord>> {
    let dk = keys::data_key(route_hash(key), key);
    match db.get_pinned_cf(cf(db, CF_DATA), &dk)? {
        Some(b) => Ok(Some(ValueRecord::decode(&b)?)),
        None => Ok(None),
    }
}

/// Reads the live value of `key` at `now_ms` (unix ms). Expired values are
/// never returned.
pub fn get(db: &rocksdb::DB, key: &[u8], now_ms: u64) -> Result<Option<ValueRecord>> {
    Ok(load(db, key)?.filter(|r| !r.is_expired(now_ms)))
}

fn expiry(now_ms: u64, ttl_ms: Option<u64>) -> u64 {
    ttl_ms.map_or(0, |t| now_ms.saturating_add(t))
}

/// Stores `value` at `dk` as written by the entry at `index`.
fn write_value(
    db: &rocksdb::DB,
    batch: &mut ApplyBatch,
    dk: Vec<u8>,
    index: u64,
    expire_at_ms: u64,
    value: &Bytes,
) -> WriteOutcome {
    let record = ValueRecord {
        version: index,
        expire_at_ms,
        value: value.clone(),
    };
    batch.put(db, dk, record);
    WriteOutcome::Written { version: index }
}

/// Applies one committed write at log `index` of `region`.
pub fn apply_command(
    db: &rocksdb::DB,
    batch: &mut ApplyBatch,
    region: &Region,
    index: u64,
    cmd: &Command,
) -> Result<WriteOutcome> {
    if cmd.request.keys().any(|k| !region.contains(route_hash(k))) {
        return Ok(WriteOutcome::WrongRegion);
    }
    let now = cmd.now_ms;
    let live = |batch: &ApplyBatch, dk: &[u8]| -> Result<Option<ValueRecord>> {
        Ok(batch.current(db, dk)?.filter(|r| !r.is_expired(now)))
    };
    let outcome = match &cmd.request {
        WriteRequest::Put {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let dk = keys::data_key(route_hash(key), key);
            // An unconditional put needs no read of the current value.
            if *condition != Condition::None {
                let current = live(batch, &dk)?;
                let holds = match condition {
                    Condition::None => true,
                    Condition::IfAbsent => current.is_none(),
                    Condition::IfVersion(v) => current.as_ref().map(|c| c.version) == Some(*v),
                };
                if !holds {
                    return Ok(WriteOutcome::ConditionFailed {
                        current_version: current.map(|c| c.version),
                    });
                }
            }
            write_value(db, batch, dk, index, expiry(now, *ttl_ms), value)
        }
        WriteRequest::Delete { key, if_version } => {
            let dk = keys::data_key(route_hash(key), key);
            let stored = batch.current(db, &dk)?;
            let in_store = stored.is_some();
            let current = stored.filter(|r| !r.is_expired(now));
            if let Some(v) = if_version {
                if current.as_ref().map(|c| c.version) != Some(*v) {
                    return Ok(WriteOutcome::ConditionFailed {
                        current_version: current.map(|c| c.version),
                    });
                }
            }
            batch.delete(db, dk, in_store, ChangeKind::Delete);
            WriteOutcome::Deleted {
                existed: current.is_some(),
            }
        }
        WriteRequest::Cas {
            key,
            expected,
            value,
            ttl_ms,
        } => {
            let dk = keys::data_key(route_hash(key), key);
            let current = live(batch, &dk)?;
            let matches = match (expected, &current) {
                (None, None) => true,
                (Some(x), Some(c)) => c.value == *x,
                _ => false,
            };
            if !matches {
                return Ok(WriteOutcome::ConditionFailed {
                    current_version: current.map(|c| c.version),
                });
            }
            write_value(db, batch, dk, index, expiry(now, *ttl_ms), value)
        }
        WriteRequest::Incr { key, delta } => {
            let dk = keys::data_key(route_hash(key), key);
            let current = live(batch, &dk)?;
            let (old, expire_at_ms) = match &current {
                None => (0i64, 0),
                Some(c) => match std::str::from_utf8(&c.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => (n, c.expire_at_ms),
                    None => return Ok(WriteOutcome::NotANumber),
                },
            };
            let Some(new) = old.checked_add(*delta) else {
                return Ok(WriteOutcome::NotANumber);
            };
            let record = ValueRecord {
                version: index,
                expire_at_ms,
                value: Bytes::from(new.to_string()),
            };
            batch.put(db, dk, record);
            WriteOutcome::Counter {
                value: new,
                version: index,
            }
        }
        WriteRequest::BatchPut { items } => {
            for item in items {
                let dk = keys::data_key(route_hash(&item.key), &item.key);
                let record = ValueRecord {
                    version: index,
                    expire_at_ms: expiry(now, item.ttl_ms),
                    value: item.value.clone(),
                };
                batch.put(db, dk, record);
            }
            WriteOutcome::Written { version: index }
        }
        WriteRequest::Txn { checks, ops } => {
            // Every check is judged against the state before the entry;
            // nothing is written unless all hold.
            for c in checks {
                let dk = keys::data_key(route_hash(&c.key), &c.key);
                let current = live(batch, &dk)?.map(|r| r.version);
                if current != c.version {
                    return Ok(WriteOutcome::ConditionFailed {
                        current_version: current,
                    });
                }
            }
            for op in ops {
                let dk = keys::data_key(route_hash(op.key()), op.key());
                match op {
                    TxnOp::Put { value, expiry, .. } => {
                        let expire_at_ms = match *expiry {
                            Expiry::Never => 0,
                            Expiry::After(t) => now.saturating_add(t),
                            // 0 means "never" in a record: a time at or
                            // before the epoch is as expired as 1 ms.
                            Expiry::At(t) => t.max(1),
                        };
                        write_value(db, batch, dk, index, expire_at_ms, value);
                    }
                    TxnOp::Delete { .. } => {
                        let in_store = batch.current(db, &dk)?.is_some();
                        batch.delete(db, dk, in_store, ChangeKind::Delete);
                    }
                }
            }
            WriteOutcome::Written { version: index }
        }
    };
    Ok(outcome)
}
