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
    /// A pipelined write refused and not sent again (a later one of the
    /// pipeline may be applied): not applied.
    NotApplied(String),
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
                "UNCERTAIN the outcome is unknown: a write may or may not have been applied \
                 ({m}); read the key to find out"
            ),
            StoreError::Unavailable(m) => format!("CLUSTERDOWN no replica could answer: {m}"),
            // Not CLUSTERDOWN, which some clients retry on their own: this
            // one must not be resent behind the pipeline's later writes.
            StoreError::NotApplied(m) => format!("ERR not applied: {m}"),
        }
    }
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The error reply for a Redis client.
pub(crate) fn store_err(e: StoreError) -> crate::reply::Reply {
    crate::reply::Reply::Error(e.reply_text())
}

/// A write that needs no read first, as a pipeline may send several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastWrite {
    /// Set a key (with `if_absent`, only if it holds no live value).
    Put {
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
        if_absent: bool,
    },
    /// Delete a key.
    Delete { key: Bytes },
    /// Add to the integer at a key.
    Incr { key: Bytes, delta: i64 },
}

impl FastWrite {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            FastWrite::Put { key, .. }
            | FastWrite::Delete { key }
            | FastWrite::Incr { key, .. } => key,
        }
    }
}

/// What a [`FastWrite`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A put: written (false: its condition did not hold).
    Written(bool),
    /// A delete: a live value was removed.
    Deleted(bool),
    /// An increment: the new value.
    Counter(i64),
}

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
    /// One page of live keys in routing-hash order from `from_hash` (see
    /// `Client::scan_page`): the keys (values left out when `keys_only`)
    /// and where the next page starts (`None`: done). The cluster's own
    /// metadata keys are left out.
    #[allow(clippy::type_complexity)]
    fn scan(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
    ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)>;

    /// Like [`Store::scan`], only keys beginning with `prefix` (a page may
    /// then hold fewer keys, or none, and still be followed by more).
    #[allow(clippy::type_complexity)]
    fn scan_prefix(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
        prefix: &[u8],
    ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
        let (mut items, next) = self.scan(from_hash, limit, keys_only)?;
        items.retain(|(k, _)| k.starts_with(prefix));
        Ok((items, next))
    }

    /// Reads `keys` (all of one region) as a pipeline: in order, each
    /// linearizable, none older than the one before.
    fn get_pipelined(&mut self, keys: &[Bytes]) -> Vec<StoreResult<Option<Stored>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Applies `writes` (all of one region) as a pipeline: in order, as if
    /// one after another.
    fn write_pipelined(&mut self, writes: Vec<FastWrite>) -> Vec<StoreResult<Answer>> {
        writes
            .into_iter()
            .map(|w| match w {
                FastWrite::Put {
                    key,
                    value,
                    ttl_ms,
                    if_absent,
                } => self
                    .put(&key, &value, ttl_ms, if_absent)
                    .map(Answer::Written),
                FastWrite::Delete { key } => self.delete(&key).map(Answer::Deleted),
                FastWrite::Incr { key, delta } => self.incr(&key, delta).map(Answer::Counter),
            })
            .collect()
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
    /// A store that reaches the cluster through `endpoints`, logged in
    /// with `credentials` if given, over TLS if given.
    pub fn new(
        endpoints: Vec<String>,
        consistency: Consistency,
        credentials: Option<corekv_net::Credentials>,
        tls: Option<corekv_net::tls::ClientTls>,
    ) -> ClusterStore {
        let mut cfg = ClientConfig::new(endpoints);
        cfg.credentials = credentials;
        cfg.tls = tls;
        ClusterStore {
            cfg,
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
        ClientError::NotApplied(m) => StoreError::NotApplied(m),
        // Refused before anything was applied (a node without the node
        // key in a cluster with authentication on).
        ClientError::Unauthenticated(m) | ClientError::PermissionDenied(m) => {
            StoreError::Invalid(m)
        }
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
        let errors: Vec<StoreError> = results
            .into_iter()
            .filter_map(Result::err)
            .map(map_err)
            .collect();
        let Some(first) = errors.first().cloned() else {
            return Ok(());
        };
        // Not applied only if no region's part was, nor may have been.
        let unknown = errors.iter().find(|e| matches!(e, StoreError::Unknown(_)));
        match (written, unknown) {
            (0, None) => Err(first),
            (_, Some(u)) => Err(StoreError::Unknown(format!(
                "{written} of {} keys written, some may or may not be (a region's keys are \
                 written together): {}",
                items.len(),
                u.reply_text()
            ))),
            // Each region's part is atomic, the whole is not: say so.
            (_, None) => Err(StoreError::Invalid(format!(
                "only part of the keys were written ({written} of {}; a region's keys are \
                 written together): {}",
                items.len(),
                first.reply_text()
            ))),
        }
    }

    fn region_of(&mut self, key: &[u8]) -> u64 {
        match self.client() {
            Ok(c) => c.region_of(key),
            Err(_) => 0,
        }
    }

    fn scan(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
    ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
        self.scan_prefix(from_hash, limit, keys_only, &[])
    }

    /// The node filters by prefix: only matching keys cross the network.
    fn scan_prefix(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
        prefix: &[u8],
    ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
        let (items, next) = self
            .client()?
            .scan_prefix_page(from_hash, limit, keys_only, prefix)
            .map_err(map_err)?;
        let items = items
            .into_iter()
            .filter(|(k, _)| !corekv_engine::is_meta_key(k))
            .map(|(k, v)| {
                (
                    k,
                    Stored {
                        value: v.value,
                        version: v.version,
                        expire_at_ms: v.expire_at_ms,
                    },
                )
            })
            .collect();
        Ok((items, next))
    }

    fn write_pipelined(&mut self, writes: Vec<FastWrite>) -> Vec<StoreResult<Answer>> {
        use corekv_engine::{Condition, WriteRequest};
        let kinds: Vec<u8> = writes
            .iter()
            .map(|w| match w {
                FastWrite::Put { .. } => 0,
                FastWrite::Delete { .. } => 1,
                FastWrite::Incr { .. } => 2,
            })
            .collect();
        let reqs: Vec<WriteRequest> = writes
            .into_iter()
            .map(|w| match w {
                FastWrite::Put {
                    key,
                    value,
                    ttl_ms,
                    if_absent,
                } => WriteRequest::Put {
                    key,
                    value,
                    ttl_ms,
                    condition: if if_absent {
                        Condition::IfAbsent
                    } else {
                        Condition::None
                    },
                },
                FastWrite::Delete { key } => WriteRequest::Delete {
                    key,
                    if_version: None,
                },
                FastWrite::Incr { key, delta } => WriteRequest::Incr { key, delta },
            })
            .collect();
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return kinds.iter().map(|_| Err(e.clone())).collect(),
        };
        client
            .write_pipelined(reqs)
            .into_iter()
            .zip(kinds)
            .map(|(r, kind)| match (r, kind) {
                (Ok(_), 0) => Ok(Answer::Written(true)),
                (Ok((_, f)), 1) => Ok(Answer::Deleted(f.existed)),
                (Ok((_, f)), _) => Ok(Answer::Counter(f.counter)),
                (Err(ClientError::ConditionFailed { .. }), 0) => Ok(Answer::Written(false)),
                (Err(e), _) => Err(map_err(e)),
            })
            .collect()
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

        fn scan(
            &mut self,
            from_hash: u64,
            limit: u32,
            keys_only: bool,
        ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
            let mut live: Vec<(u64, Bytes, Stored)> = self
                .data
                .keys()
                .filter_map(|k| {
                    let h = corekv_engine::route_hash(k);
                    let s = self.live(k)?.clone();
                    (h >= from_hash).then(|| (h, k.clone(), s))
                })
                .collect();
            live.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let mut out = Vec::new();
            let mut last = None;
            for (h, k, mut s) in live {
                if out.len() >= limit as usize && last != Some(h) {
                    return Ok((out, Some(h)));
                }
                if keys_only {
                    s.value = Bytes::new();
                }
                out.push((k, s));
                last = Some(h);
            }
            Ok((out, None))
        }
    }
}
