//! The keys of one command (or one MULTI/EXEC) read from the cluster, the
//! command run against them in memory, and the result written back as one
//! transaction that checks every version read: a read-modify-write that a
//! concurrent writer can never interleave with. On a conflict the whole
//! thing runs again from a fresh read.

use std::collections::HashMap;

use bytes::Bytes;
use corekv_engine::{Expiry, TxnCheck, TxnOp};

use crate::store::{Store, StoreError, StoreResult};

/// When a value in the view expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Never.
    None,
    /// At this unix time, ms.
    At(u64),
    /// This many ms after the write is proposed (the leader's clock).
    After(u64),
}

#[derive(Clone, Debug)]
struct Slot {
    /// Version read (None: absent).
    read: Option<u64>,
    /// Current value in the view.
    value: Option<(Bytes, Ttl)>,
    /// Changed by the commands run so far.
    dirty: bool,
}

/// Limits of one view.
#[derive(Clone, Copy, Debug)]
pub struct ViewLimits {
    /// Longest value a command may build (the cluster's value limit).
    pub value_bytes_max: usize,
    /// Bytes of values one view may read.
    pub read_bytes_max: usize,
}

impl Default for ViewLimits {
    fn default() -> Self {
        ViewLimits {
            value_bytes_max: 1 << 20,
            read_bytes_max: READ_BYTES_MAX,
        }
    }
}

/// Bytes of values one command (or MULTI) may read: past it, it is
/// refused rather than buffered.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// Keys as read, and as changed by the commands run on them.
pub struct View {
    slots: HashMap<Bytes, Slot>,
    /// Order keys were loaded in (ops are written in this order).
    order: Vec<Bytes>,
    /// Unix ms the view was read at.
    pub now_ms: u64,
    /// Longest value a command may build.
    pub value_bytes_max: usize,
}

impl View {
    /// Reads `keys` (each a linearizable read).
    pub fn load(
        store: &mut dyn Store,
        keys: &[Bytes],
        now_ms: u64,
        limits: ViewLimits,
    ) -> StoreResult<View> {
        let mut v = View {
            slots: HashMap::new(),
            order: Vec::new(),
            now_ms,
            value_bytes_max: limits.value_bytes_max,
        };
        let mut read = 0usize;
        for k in keys {
            if v.slots.contains_key(k) {
                continue;
            }
            let got = store.get(k)?;
            read += got.as_ref().map_or(0, |s| s.value.len());
            if read > limits.read_bytes_max {
                return Err(StoreError::Invalid(format!(
                    "the command reads more than {} MiB of values: ask for fewer keys",
                    limits.read_bytes_max >> 20
                )));
            }
            let slot = Slot {
                read: got.as_ref().map(|s| s.version),
                value: got.map(|s| {
                    let ttl = if s.expire_at_ms == 0 {
                        Ttl::None
                    } else {
                        Ttl::At(s.expire_at_ms)
                    };
                    (s.value, ttl)
                }),
                dirty: false,
            };
            v.slots.insert(k.clone(), slot);
            v.order.push(k.clone());
        }
        Ok(v)
    }

    fn slot(&self, key: &[u8]) -> &Slot {
        self.slots
            .get(key)
            .expect("a command touches only the keys it declared")
    }

    fn slot_mut(&mut self, key: &[u8]) -> &mut Slot {
        self.slots
            .get_mut(key)
            .expect("a command touches only the keys it declared")
    }

    /// The live value of `key` and its expiry. A value as read is live
    /// (the cluster judged its expiry by the region's clock; the commit
    /// checks it still is); one a command set with an absolute time already
    /// past is not.
    pub fn get(&self, key: &[u8]) -> Option<(&Bytes, Ttl)> {
        let slot = self.slot(key);
        match &slot.value {
            Some((_, Ttl::At(t))) if slot.dirty && *t <= self.now_ms => None,
            Some((v, ttl)) => Some((v, *ttl)),
            None => None,
        }
    }

    /// The version `key` had when read (None: absent).
    pub fn read_version(&self, key: &[u8]) -> Option<u64> {
        self.slot(key).read
    }

    /// Sets `key`.
    pub fn set(&mut self, key: &[u8], value: Bytes, ttl: Ttl) {
        let s = self.slot_mut(key);
        s.value = Some((value, ttl));
        s.dirty = true;
    }

    /// Removes `key`; returns whether it held a live value.
    pub fn del(&mut self, key: &[u8]) -> bool {
        let existed = self.get(key).is_some();
        let s = self.slot_mut(key);
        if s.value.is_some() {
            s.value = None;
            s.dirty = true;
        }
        existed
    }

    /// Remaining time to live of a live key in ms (None: no expiry).
    pub fn ttl_ms(&self, ttl: Ttl) -> Option<u64> {
        match ttl {
            Ttl::None => None,
            Ttl::At(t) => Some(t.saturating_sub(self.now_ms)),
            Ttl::After(ms) => Some(ms),
        }
    }

    /// Absolute expiry of a live key in unix ms (None: no expiry).
    pub fn expire_at(&self, ttl: Ttl) -> Option<u64> {
        match ttl {
            Ttl::None => None,
            Ttl::At(t) => Some(t),
            Ttl::After(ms) => Some(self.now_ms + ms),
        }
    }

    /// True if any command changed something.
    pub fn is_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }

    /// The checks (every key read, at the version read) and the writes.
    pub fn into_txn(self) -> (Vec<TxnCheck>, Vec<TxnOp>) {
        let mut checks = Vec::with_capacity(self.order.len());
        let mut ops = Vec::new();
        for k in &self.order {
            let s = &self.slots[k];
            checks.push(TxnCheck {
                key: k.clone(),
                version: s.read,
            });
            if !s.dirty {
                continue;
            }
            ops.push(match &s.value {
                Some((v, ttl)) => TxnOp::Put {
                    key: k.clone(),
                    value: v.clone(),
                    expiry: match *ttl {
                        Ttl::None => Expiry::Never,
                        Ttl::At(t) => Expiry::At(t),
                        Ttl::After(ms) => Expiry::After(ms),
                    },
                },
                None => TxnOp::Delete { key: k.clone() },
            });
        }
        (checks, ops)
    }
}

/// How many times a read-modify-write is retried after conflicts.
pub const CONFLICT_RETRIES: usize = 64;

/// What one attempt of [`atomically`] decided.
pub enum Attempt<T> {
    /// Done: commit the view's changes (if any) and answer `T`.
    Commit(T),
    /// Done without writing, whatever the view holds.
    Abort(T),
}

/// Runs `body` on a fresh view of `keys` until its transaction commits
/// without conflict. A view that changed nothing is answered at once when
/// `validate_reads` is false; otherwise its reads are checked in one raft
/// entry too (several keys read as of one moment).
pub fn atomically<T>(
    store: &mut dyn Store,
    keys: &[Bytes],
    (validate_reads, limits): (bool, ViewLimits),
    now_ms: impl Fn() -> u64,
    mut body: impl FnMut(&mut View) -> Attempt<T>,
) -> Result<T, StoreError> {
    for _ in 0..CONFLICT_RETRIES {
        let mut view = View::load(store, keys, now_ms(), limits)?;
        let out = match body(&mut view) {
            Attempt::Abort(t) => return Ok(t),
            Attempt::Commit(t) => t,
        };
        if !view.is_dirty() && !validate_reads {
            return Ok(out);
        }
        let (checks, ops) = view.into_txn();
        if checks.is_empty() && ops.is_empty() {
            return Ok(out);
        }
        if store.txn(checks, ops)? {
            return Ok(out);
        }
    }
    Err(StoreError::Unavailable(format!(
        "the keys kept changing: {CONFLICT_RETRIES} attempts conflicted with other writes"
    )))
}
