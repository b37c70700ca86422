//! What commands need of the cluster, and its implementation over the
//! native client.
//!
//! Every operation here is one linearizable read or one raft write of a
//! region. Read-modify-writes are built on top (see `view`) as a read of the
//! keys followed by a transaction that checks their versions, retried on
//! conflict: never a read and an unconditional write.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use corekv_engine::{Consistency, TxnCheck, TxnOp};
use corekv_net::client::{Client, ClientConfig, ClientError, PutOptions};

/// A value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The bytes.
    pub value: Bytes,
    /// Version (raft index of the write).
    pub version: u64,
    /// Absolute expiry, unix ms; 0 = none.
    pub expire_at_ms: u64,
}

/// Why an operation did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// INCR on a value that is not a 64-bit decimal integer, or an overflow.
    NotANumber,
    /// The request is refused (key or value too large, ...).
    Invalid(String),
    /// A write may or may not have been applied.
    Unknown(String),
    /// No replica could answer in time.
    Unavailable(String),
}

impl StoreError {
    /// The reply text (with its error code) for a Redis client.
    pub fn reply_text(&self) -> String {
        match self {
            StoreError::NotANumber => "ERR value is not an integer or out of range".into(),
            StoreError::Invalid(m) => format!("ERR {m}"),
            // Not TRYAGAIN: Redis clients retry that on their own, and a
            // write that may have been applied must not be sent again blindly.
            StoreError::Unknown(m) => format!(
                "UNCERTAIN the write may or may not have been applied ({m}); read the key to \
                 find out"
            ),
            StoreError::Unavailable(m) => format!("CLUSTERDOWN no replica could answer: {m}"),
        }
    }
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The cluster as the commands see it.
pub trait Store {
    /// Linearizable read of `key`.
    fn get(&mut self, key: &[u8]) -> StoreResult<Option<Stored>>;
    /// Sets `key`; with `if_absent`, only if it holds no live value.
    /// Returns whether it was written.
    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        if_absent: bool,
    ) -> StoreResult<bool>;
    /// Deletes `key`; returns whether a live value was removed.
    fn delete(&mut self, key: &[u8]) -> StoreResult<bool>;
    /// Adds `delta` to the integer at `key` (absent = 0), keeping its expiry.
    fn incr(&mut self, key: &[u8], delta: i64) -> StoreResult<i64>;
    /// Applies `ops` if every check holds, in one raft entry (all keys in
    /// one region). Returns false if a check failed (nothing written).
    fn txn(&mut self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> StoreResult<bool>;
    /// Sets every pair; pairs of one region are written atomically.
    fn put_many(&mut self, items: &[(Bytes, Bytes)]) -> StoreResult<()>;
    /// The region holding `key` (0 if not known).
    fn region_of(&mut self, key: &[u8]) -> u64;
    /// Reads `keys` (all of one region) as a pipeline: in order, each
    /// linearizable, none older than the one before.
    fn get_pipelined(&mut self, keys: &[Bytes]) -> Vec<StoreResult<Option<Stored>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
}

/// Unix time now, in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster through the native client, connected on first use (an idle
/// Redis connection costs the cluster nothing).
pub struct ClusterStore {
    cfg: ClientConfig,
    consistency: Consistency,
    client: Option<Client>,
}

impl ClusterStore {
    /// A store that reaches the cluster through `endpoints`.
    pub fn new(endpoints: Vec<String>, consistency: Consistency) -> ClusterStore {
        ClusterStore {
            cfg: ClientConfig::new(endpoints),
            consistency,
            client: None,
        }
    }

    fn client(&mut self) -> StoreResult<&mut Client> {
        if self.client.is_none() {
            self.client = Some(Client::connect(self.cfg.clone()).map_err(map_err)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

fn map_err(e: ClientError) -> StoreError {
    match e {
        ClientError::NotANumber => StoreError::NotANumber,
        ClientError::Invalid { message, .. } => StoreError::Invalid(message),
        ClientError::Unknown(m) => StoreError::Unknown(m),
        ClientError::Unavailable { last, .. } => StoreError::Unavailable(last),
        // Anything else (an answer the client did not understand): what
        // became of a write is not known.
        other => StoreError::Unknown(other.to_string()),
    }
}

impl Store for ClusterStore {
    fn get(&mut self, key: &[u8]) -> StoreResult<Option<Stored>> {
        let consistency = self.consistency;
        let v = self.client()?.get(key, consistency).map_err(map_err)?;
        Ok(v.map(|v| Stored {
            value: v.value,
            version: v.version,
            expire_at_ms: v.expire_at_ms,
        }))
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        if_absent: bool,
    ) -> StoreResult<bool> {
        let opts = PutOptions {
            ttl: ttl_ms.map(Duration::from_millis),
            if_absent,
            if_version: None,
        };
        match self.client()?.put(key, value, opts) {
            Ok(_) => Ok(true),
            Err(ClientError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<bool> {
        self.client()?.delete(key, None).map_err(map_err)
    }

    fn incr(&mut self, key: &[u8], delta: i64) -> StoreResult<i64> {
        self.client()?.incr(key, delta).map_err(map_err)
    }

    fn txn(&mut self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> StoreResult<bool> {
        match self.client()?.txn(checks, ops) {
            Ok(_) => Ok(true),
            Err(ClientError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    fn put_many(&mut self, items: &[(Bytes, Bytes)]) -> StoreResult<()> {
        let pairs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let results = self.client()?.batch_put(&pairs);
        let written = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(e) if written == 0 => Err(map_err(e)),
            // Each region's part is atomic, the whole is not: say so.
            Some(e) => Err(StoreError::Invalid(format!(
                "only part of the keys were written ({written} of {}; a region's keys are \
                 written together): {}",
                items.len(),
                map_err(e).reply_text()
            ))),
        }
    }

    fn region_of(&mut self, key: &[u8]) -> u64 {
        match self.client() {
            Ok(c) => c.region_of(key),
            Err(_) => 0,
        }
    }

    fn get_pipelined(&mut self, keys: &[Bytes]) -> Vec<StoreResult<Option<Stored>>> {
        let consistency = self.consistency;
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return keys.iter().map(|_| Err(e.clone())).collect(),
        };
        client
            .get_pipelined(keys, consistency)
            .into_iter()
            .map(|r| {
                r.map(|v| {
                    v.map(|v| Stored {
                        value: v.value,
                        version: v.version,
                        expire_at_ms: v.expire_at_ms,
                    })
                })
                .map_err(map_err)
            })
            .collect()
    }
}

/// A single-process store with the cluster's rules (versions, expiry,
/// checked transactions, regions by key hash), for the command tests.
#[cfg(test)]
pub mod mem {
    use super::*;
    use corekv_engine::Expiry;
    use std::collections::HashMap;

    /// In-memory store; `regions` regions split the hash space evenly.
    pub struct MemStore {
        pub data: HashMap<Bytes, Stored>,
        pub version: u64,
        pub regions: u64,
        /// Writes (txn or not) that reached the store.
        pub writes: u64,
    }

    impl MemStore {
        pub fn new(regions: u64) -> MemStore {
            MemStore {
                data: HashMap::new(),
                version: 0,
                regions,
                writes: 0,
            }
        }

        fn live(&self, key: &[u8]) -> Option<&Stored> {
            let now = now_ms();
            self.data
                .get(key)
                .filter(|s| s.expire_at_ms == 0 || s.expire_at_ms > now)
        }

        fn bump(&mut self) -> u64 {
            self.version += 1;
            self.writes += 1;
            self.version
        }
    }

    impl Store for MemStore {
        fn get(&mut self, key: &[u8]) -> StoreResult<Option<Stored>> {
            Ok(self.live(key).cloned())
        }

        fn put(
            &mut self,
            key: &[u8],
            value: &[u8],
            ttl_ms: Option<u64>,
            if_absent: bool,
        ) -> StoreResult<bool> {
            if if_absent && self.live(key).is_some() {
                return Ok(false);
            }
            let version = self.bump();
            let expire_at_ms = ttl_ms.map_or(0, |t| now_ms() + t);
            self.data.insert(
                Bytes::copy_from_slice(key),
                Stored {
                    value: Bytes::copy_from_slice(value),
                    version,
                    expire_at_ms,
                },
            );
            Ok(true)
        }

        fn delete(&mut self, key: &[u8]) -> StoreResult<bool> {
            let existed = self.live(key).is_some();
            self.bump();
            self.data.remove(key);
            Ok(existed)
        }

        fn incr(&mut self, key: &[u8], delta: i64) -> StoreResult<i64> {
            let (old, exp) = match self.live(key) {
                None => (0, 0),
                Some(s) => (
                    std::str::from_utf8(&s.value)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or(StoreError::NotANumber)?,
                    s.expire_at_ms,
                ),
            };
            let new = old.checked_add(delta).ok_or(StoreError::NotANumber)?;
            let version = self.bump();
            self.data.insert(
                Bytes::copy_from_slice(key),
                Stored {
                    value: Bytes::from(new.to_string()),
                    version,
                    expire_at_ms: exp,
                },
            );
            Ok(new)
        }

        fn txn(&mut self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> StoreResult<bool> {
            let regions: std::collections::HashSet<u64> = checks
                .iter()
                .map(|c| c.key.clone())
                .chain(ops.iter().map(|o| o.key().clone()))
                .map(|k| self.region_of(&k))
                .collect();
            if regions.len() > 1 {
                return Err(StoreError::Invalid("keys of several regions".into()));
            }
            for c in &checks {
                if self.live(&c.key).map(|s| s.version) != c.version {
                    return Ok(false);
                }
            }
            let version = self.bump();
            for op in ops {
                match op {
                    TxnOp::Put { key, value, expiry } => {
                        let expire_at_ms = match expiry {
                            Expiry::Never => 0,
                            Expiry::After(t) => now_ms() + t,
                            Expiry::At(t) => t.max(1),
                        };
                        self.data.insert(
                            key,
                            Stored {
                                value,
                                version,
                                expire_at_ms,
                            },
                        );
                    }
                    TxnOp::Delete { key } => {
                        self.data.remove(&key);
                    }
                }
            }
            Ok(true)
        }

        fn put_many(&mut self, items: &[(Bytes, Bytes)]) -> StoreResult<()> {
            for (k, v) in items {
                self.put(k, v, None, false)?;
            }
            Ok(())
        }

        fn region_of(&mut self, key: &[u8]) -> u64 {
            let h = corekv_engine::route_hash(key);
            1 + (h / (u64::MAX / self.regions).max(1)).min(self.regions - 1)
        }
    }
}
