//! Client writes as they travel through the raft log, and their outcomes.
//!
//! A [`Command`] is what a leader proposes: the write plus the leader's clock
//! at proposal time (`now_ms`). Expiry and expiry-dependent conditions are
//! computed from that logged time, never from a replica's own clock, so every
//! replica applies the same entry to the same result.

use bytes::Bytes;

use crate::codec::{Decoder, Encoder};
use crate::config::{Config, KEY_BYTES_MAX};
use crate::error::{Error, Result};

/// Condition of a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always write.
    None,
    /// Write only if the key holds no live value.
    IfAbsent,
    /// Write only if the key's current version is exactly this.
    IfVersion(u64),
}

/// One key-value pair of a batch put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutItem {
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Time to live in ms from the proposal; `None` = no expiry.
    pub ttl_ms: Option<u64>,
}

/// When a value written by a transaction expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Never.
    Never,
    /// This many ms after the proposal (the leader's clock, as for puts).
    After(u64),
    /// At this unix time in ms, as given (a time already past leaves the
    /// key expired: it is never read again).
    At(u64),
}

/// What a transaction requires of a key before it writes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnCheck {
    /// Key.
    pub key: Bytes,
    /// The key's live version must be exactly this; `None`: the key must
    /// hold no live value.
    pub version: Option<u64>,
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Set a key.
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// When it expires.
        expiry: Expiry,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: Bytes,
    },
}

impl TxnOp {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// A write a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRequest {
    /// Set a key.
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// Time to live in ms from the proposal; `None` = no expiry.
        ttl_ms: Option<u64>,
        /// Condition that must hold.
        condition: Condition,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: Bytes,
        /// Delete only if the current version is exactly this.
        if_version: Option<u64>,
    },
    /// Compare-and-swap on the value bytes.
    Cas {
        /// Key.
        key: Bytes,
        /// Expected current value; `None` = the key must be absent.
        expected: Option<Bytes>,
        /// New value.
        value: Bytes,
        /// Time to live of the new value in ms; `None` = no expiry.
        ttl_ms: Option<u64>,
    },
    /// Add to a decimal integer value (absent = 0). The expiry is kept.
    Incr {
        /// Key.
        key: Bytes,
        /// Amount to add.
        delta: i64,
    },
    /// Several puts applied atomically (all keys must be in one region).
    BatchPut {
        /// The pairs.
        items: Vec<PutItem>,
    },
    /// Several writes applied atomically, only if every check holds (all
    /// keys must be in one region): how read-modify-writes are made safe.
    Txn {
        /// Conditions on the keys' versions, judged before any op.
        checks: Vec<TxnCheck>,
        /// The writes, in order (a later op on a key wins).
        ops: Vec<TxnOp>,
    },
}

/// Result of an applied write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The value(s) were written with this version.
    Written {
        /// New version.
        version: u64,
    },
    /// A delete was applied; `existed` says whether a live value was removed.
    Deleted {
        /// A live value was removed.
        existed: bool,
    },
    /// An increment was applied.
    Counter {
        /// New value.
        value: i64,
        /// New version.
        version: u64,
    },
    /// The condition did not hold; nothing was written.
    ConditionFailed {
        /// Version of the live value, if any.
        current_version: Option<u64>,
    },
    /// Incr on a value that is not a decimal i64, or an overflow.
    NotANumber,
    /// A key is outside the region's range at apply time (the region split
    /// after the write was routed). Nothing was written.
    WrongRegion,
    /// A retry of a write whose first outcome is no longer remembered (see
    /// `session`): the write may or may not have been applied.
    ResultForgotten,
}

impl WriteOutcome {
    /// Appends the outcome (for the session table).
    pub fn encode_to(&self, e: &mut Encoder) {
        match self {
            WriteOutcome::Written { version } => e.u8(1).u64(*version),
            WriteOutcome::Deleted { existed } => e.u8(2).u8(u8::from(*existed)),
            WriteOutcome::Counter { value, version } => e.u8(3).i64(*value).u64(*version),
            WriteOutcome::ConditionFailed { current_version } => {
                e.u8(4);
                put_opt_u64(e, *current_version);
                e
            }
            WriteOutcome::NotANumber => e.u8(5),
            WriteOutcome::WrongRegion => e.u8(6),
            WriteOutcome::ResultForgotten => e.u8(7),
        };
    }

    /// Reads an outcome written by [`WriteOutcome::encode_to`].
    pub fn decode_from(d: &mut Decoder<'_>) -> Result<WriteOutcome> {
        Ok(match d.u8()? {
            1 => WriteOutcome::Written { version: d.u64()? },
            2 => WriteOutcome::Deleted {
                existed: d.u8()? != 0,
            },
            3 => WriteOutcome::Counter {
                value: d.i64()?,
                version: d.u64()?,
            },
            4 => WriteOutcome::ConditionFailed {
                current_version: get_opt_u64(d)?,
            },
            5 => WriteOutcome::NotANumber,
            6 => WriteOutcome::WrongRegion,
            7 => WriteOutcome::ResultForgotten,
            t => return Err(Error::Corruption(format!("write outcome tag {t}"))),
        })
    }
}

impl WriteRequest {
    /// The keys the write touches.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let single = match self {
            WriteRequest::Put { key, .. }
            | WriteRequest::Delete { key, .. }
            | WriteRequest::Cas { key, .. }
            | WriteRequest::Incr { key, .. } => Some(key),
            WriteRequest::BatchPut { .. } | WriteRequest::Txn { .. } => None,
        };
        let many: &[PutItem] = match self {
            WriteRequest::BatchPut { items } => items,
            _ => &[],
        };
        let (checks, ops): (&[TxnCheck], &[TxnOp]) = match self {
            WriteRequest::Txn { checks, ops } => (checks, ops),
            _ => (&[], &[]),
        };
        single
            .into_iter()
            .chain(many.iter().map(|i| &i.key))
            .chain(checks.iter().map(|c| &c.key))
            .chain(ops.iter().map(TxnOp::key))
    }

    /// True if the write gives some key an expiry.
    pub fn sets_ttl(&self) -> bool {
        match self {
            WriteRequest::Put { ttl_ms, .. } | WriteRequest::Cas { ttl_ms, .. } => ttl_ms.is_some(),
            WriteRequest::BatchPut { items } => items.iter().any(|i| i.ttl_ms.is_some()),
            WriteRequest::Txn { ops, .. } => ops.iter().any(|o| {
                matches!(
                    o,
                    TxnOp::Put {
                        expiry: Expiry::After(_) | Expiry::At(_),
                        ..
                    }
                )
            }),
            WriteRequest::Delete { .. } | WriteRequest::Incr { .. } => false,
        }
    }

    /// Refuses keys and values over the limits before anything reaches raft.
    pub fn validate(&self, cfg: &Config) -> Result<()> {
        let check_value = |v: &Bytes| {
            if v.len() > cfg.value_bytes_max {
                Err(Error::ValueTooLarge {
                    len: v.len(),
                    max: cfg.value_bytes_max,
                })
            } else {
                Ok(())
            }
        };
        for key in self.keys() {
            check_key(key)?;
        }
        match self {
            WriteRequest::Put { value, ttl_ms, .. } => {
                check_value(value)?;
                check_ttl(*ttl_ms)?;
            }
            WriteRequest::Cas {
                expected,
                value,
                ttl_ms,
                ..
            } => {
                check_value(value)?;
                if let Some(e) = expected {
                    check_value(e)?;
                }
                check_ttl(*ttl_ms)?;
            }
            WriteRequest::BatchPut { items } => {
                if items.is_empty() {
                    return Err(Error::InvalidRequest("empty batch".into()));
                }
                let mut total = 0usize;
                for i in items {
                    check_value(&i.value)?;
                    check_ttl(i.ttl_ms)?;
                    total += i.key.len() + i.value.len();
                }
                if total > cfg.entry_bytes_max {
                    return Err(Error::InvalidRequest(format!(
                        "batch of {total} bytes is over the limit of {}",
                        cfg.entry_bytes_max
                    )));
                }
            }
            WriteRequest::Txn { checks, ops } => {
                if ops.is_empty() && checks.is_empty() {
                    return Err(Error::InvalidRequest("empty transaction".into()));
                }
                let mut total = 0usize;
                for c in checks {
                    total += c.key.len() + 16;
                }
                for o in ops {
                    if let TxnOp::Put { value, expiry, .. } = o {
                        check_value(value)?;
                        if let Expiry::After(t) = expiry {
                            check_ttl(Some(*t))?;
                        }
                        total += value.len();
                    }
                    total += o.key().len() + 16;
                }
                if total > cfg.entry_bytes_max {
                    return Err(Error::InvalidRequest(format!(
                        "transaction of {total} bytes is over the limit of {}",
                        cfg.entry_bytes_max
                    )));
                }
            }
            WriteRequest::Delete { .. } | WriteRequest::Incr { .. } => {}
        }
        Ok(())
    }
}

/// Refuses empty keys and keys over [`KEY_BYTES_MAX`].
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Longest TTL accepted: 100 years, in ms.
pub const TTL_MS_MAX: u64 = 100 * 365 * 24 * 3600 * 1000;

fn check_ttl(ttl_ms: Option<u64>) -> Result<()> {
    match ttl_ms {
        Some(0) => Err(Error::InvalidRequest("ttl must be > 0".into())),
        Some(t) if t > TTL_MS_MAX => Err(Error::InvalidRequest(format!(
            "ttl of {t} ms is over the limit of {TTL_MS_MAX} ms"
        ))),
        _ => Ok(()),
    }
}

/// Identifies a client's write for de-duplication of retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTag {
    /// Client id, unique per client instance.
    pub client_id: u64,
    /// Sequence number of the write within that client.
    pub seq: u64,
    /// An earlier attempt of this write may have been applied (its answer
    /// was lost). A region that no longer knows what became of it answers
    /// "outcome unknown" rather than applying it again.
    pub retry: bool,
}

/// A write as proposed to raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Leader's wall clock at proposal time, unix ms. Expiry is computed from it.
    pub now_ms: u64,
    /// Client session of the write, if the client sent one.
    pub session: Option<SessionTag>,
    /// The write.
    pub request: WriteRequest,
}

const COMMAND_FORMAT: u8 = 1;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_CAS: u8 = 3;
const OP_INCR: u8 = 4;
const OP_BATCH_PUT: u8 = 5;
const OP_TXN: u8 = 6;

fn put_opt_u64(e: &mut Encoder, v: Option<u64>) {
    match v {
        Some(v) => e.u8(1).u64(v),
        None => e.u8(0),
    };
}

fn get_opt_u64(d: &mut Decoder<'_>) -> Result<Option<u64>> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(d.u64()?)),
        t => Err(Error::Corruption(format!("command: option tag {t}"))),
    }
}

fn get_bytes(d: &mut Decoder<'_>) -> Result<Bytes> {
    Ok(Bytes::copy_from_slice(d.bytes()?))
}

impl Command {
    /// Encodes for a raft entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        e.u8(COMMAND_FORMAT).u64(self.now_ms);
        match self.session {
            Some(s) => e
                .u8(if s.retry { 2 } else { 1 })
                .u64(s.client_id)
                .u64(s.seq),
            None => e.u8(0),
        };
        match &self.request {
            WriteRequest::Put {
                key,
                value,
                ttl_ms,
                condition,
            } => {
                e.u8(OP_PUT).bytes(key).bytes(value);
                put_opt_u64(&mut e, *ttl_ms);
                match condition {
                    Condition::None => e.u8(0),
                    Condition::IfAbsent => e.u8(1),
                    Condition::IfVersion(v) => e.u8(2).u64(*v),
                };
            }
            WriteRequest::Delete { key, if_version } => {
                e.u8(OP_DELETE).bytes(key);
                put_opt_u64(&mut e, *if_version);
            }
            WriteRequest::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                e.u8(OP_CAS).bytes(key);
                match expected {
                    Some(x) => e.u8(1).bytes(x),
                    None => e.u8(0),
                };
                e.bytes(value);
                put_opt_u64(&mut e, *ttl_ms);
            }
            WriteRequest::Incr { key, delta } => {
                e.u8(OP_INCR).bytes(key).i64(*delta);
            }
            WriteRequest::BatchPut { items } => {
                e.u8(OP_BATCH_PUT).u32(items.len() as u32);
                for i in items {
                    e.bytes(&i.key).bytes(&i.value);
                    put_opt_u64(&mut e, i.ttl_ms);
                }
            }
            WriteRequest::Txn { checks, ops } => {
                e.u8(OP_TXN).u32(checks.len() as u32);
                for c in checks {
                    e.bytes(&c.key);
                    put_opt_u64(&mut e, c.version);
                }
                e.u32(ops.len() as u32);
                for o in ops {
                    match o {
                        TxnOp::Put { key, value, expiry } => {
                            e.u8(1).bytes(key).bytes(value);
                            match expiry {
                                Expiry::Never => e.u8(0),
                                Expiry::After(t) => e.u8(1).u64(*t),
                                Expiry::At(t) => e.u8(2).u64(*t),
                            };
                        }
                        TxnOp::Delete { key } => {
                            e.u8(2).bytes(key);
                        }
                    }
                }
            }
        }
        e.finish()
    }

    /// Decodes an entry written by [`Command::encode`].
    pub fn decode(buf: &[u8]) -> Result<Command> {
        let mut d = Decoder::new(buf, "command");
        d.version(COMMAND_FORMAT)?;
        let now_ms = d.u64()?;
        let session = match d.u8()? {
            0 => None,
            t @ (1 | 2) => Some(SessionTag {
                client_id: d.u64()?,
                seq: d.u64()?,
                retry: t == 2,
            }),
            t => return Err(Error::Corruption(format!("command: session tag {t}"))),
        };
        let request = match d.u8()? {
            OP_PUT => {
                let key = get_bytes(&mut d)?;
                let value = get_bytes(&mut d)?;
                let ttl_ms = get_opt_u64(&mut d)?;
                let condition = match d.u8()? {
                    0 => Condition::None,
                    1 => Condition::IfAbsent,
                    2 => Condition::IfVersion(d.u64()?),
                    t => return Err(Error::Corruption(format!("command: condition {t}"))),
                };
                WriteRequest::Put {
                    key,
                    value,
                    ttl_ms,
                    condition,
                }
            }
            OP_DELETE => WriteRequest::Delete {
                key: get_bytes(&mut d)?,
                if_version: get_opt_u64(&mut d)?,
            },
            OP_CAS => {
                let key = get_bytes(&mut d)?;
                let expected = match d.u8()? {
                    0 => None,
                    1 => Some(get_bytes(&mut d)?),
                    t => return Err(Error::Corruption(format!("command: expected tag {t}"))),
                };
                WriteRequest::Cas {
                    key,
                    expected,
                    value: get_bytes(&mut d)?,
                    ttl_ms: get_opt_u64(&mut d)?,
                }
            }
            OP_INCR => WriteRequest::Incr {
                key: get_bytes(&mut d)?,
                delta: d.i64()?,
            },
            OP_BATCH_PUT => {
                let n = d.u32()? as usize;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(PutItem {
                        key: get_bytes(&mut d)?,
                        value: get_bytes(&mut d)?,
                        ttl_ms: get_opt_u64(&mut d)?,
                    });
                }
                WriteRequest::BatchPut { items }
            }
            OP_TXN => {
                let n = d.u32()? as usize;
                let mut checks = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    checks.push(TxnCheck {
                        key: get_bytes(&mut d)?,
                        version: get_opt_u64(&mut d)?,
                    });
                }
                let n = d.u32()? as usize;
                let mut ops = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    ops.push(match d.u8()? {
                        1 => {
                            let key = get_bytes(&mut d)?;
                            let value = get_bytes(&mut d)?;
                            let expiry = match d.u8()? {
                                0 => Expiry::Never,
                                1 => Expiry::After(d.u64()?),
                                2 => Expiry::At(d.u64()?),
                                t => return Err(Error::Corruption(format!("command: expiry {t}"))),
                            };
                            TxnOp::Put { key, value, expiry }
                        }
                        2 => TxnOp::Delete {
                            key: get_bytes(&mut d)?,
                        },
                        t => return Err(Error::Corruption(format!("command: txn op {t}"))),
                    });
                }
                WriteRequest::Txn { checks, ops }
            }
            op => return Err(Error::Corruption(format!("command: op {op}"))),
        };
        d.finish()?;
        Ok(Command {
            now_ms,
            session,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn every_op_round_trips() {
        let reqs = vec![
            WriteRequest::Put {
                key: b("k"),
                value: b("v"),
                ttl_ms: Some(5),
                condition: Condition::IfVersion(9),
            },
            WriteRequest::Put {
                key: b("k"),
                value: b(""),
                ttl_ms: None,
                condition: Condition::IfAbsent,
            },
            WriteRequest::Delete {
                key: b("k"),
                if_version: Some(3),
            },
            WriteRequest::Cas {
                key: b("k"),
                expected: Some(b("old")),
                value: b("new"),
                ttl_ms: None,
            },
            WriteRequest::Cas {
                key: b("k"),
                expected: None,
                value: b("new"),
                ttl_ms: Some(1),
            },
            WriteRequest::Incr {
                key: b("n"),
                delta: -7,
            },
            WriteRequest::BatchPut {
                items: vec![
                    PutItem {
                        key: b("a"),
                        value: b("1"),
                        ttl_ms: None,
                    },
                    PutItem {
                        key: b("b"),
                        value: b("2"),
                        ttl_ms: Some(10),
                    },
                ],
            },
            WriteRequest::Txn {
                checks: vec![
                    TxnCheck {
                        key: b("a"),
                        version: Some(4),
                    },
                    TxnCheck {
                        key: b("b"),
                        version: None,
                    },
                ],
                ops: vec![
                    TxnOp::Put {
                        key: b("a"),
                        value: b("x"),
                        expiry: Expiry::Never,
                    },
                    TxnOp::Put {
                        key: b("b"),
                        value: b("y"),
                        expiry: Expiry::After(7),
                    },
                    TxnOp::Put {
                        key: b("c"),
                        value: b(""),
                        expiry: Expiry::At(1_700_000_000_000),
                    },
                    TxnOp::Delete { key: b("d") },
                ],
            },
        ];
        for request in reqs {
            let c = Command {
                now_ms: 123,
                session: Some(SessionTag {
                    client_id: 1,
                    seq: 2,
                    retry: true,
                }),
                request,
            };
            let buf = c.encode();
            assert_eq!(Command::decode(&buf).unwrap(), c);
            for cut in 0..buf.len() {
                assert!(Command::decode(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn limits_are_enforced_before_raft() {
        let cfg = Config::default();
        let put = |k: usize, v: usize| WriteRequest::Put {
            key: Bytes::from(vec![b'k'; k]),
            value: Bytes::from(vec![b'v'; v]),
            ttl_ms: None,
            condition: Condition::None,
        };
        assert!(put(KEY_BYTES_MAX, cfg.value_bytes_max)
            .validate(&cfg)
            .is_ok());
        assert!(matches!(
            put(KEY_BYTES_MAX + 1, 1).validate(&cfg),
            Err(Error::KeyTooLarge {
                len: 4097,
                max: 4096
            })
        ));
        assert!(matches!(
            put(0, 1).validate(&cfg),
            Err(Error::KeyTooLarge { len: 0, .. })
        ));
        assert!(matches!(
            put(1, cfg.value_bytes_max + 1).validate(&cfg),
            Err(Error::ValueTooLarge { .. })
        ));
        let empty = WriteRequest::BatchPut { items: vec![] };
        assert!(matches!(
            empty.validate(&cfg),
            Err(Error::InvalidRequest(_))
        ));
        let empty = WriteRequest::Txn {
            checks: vec![],
            ops: vec![],
        };
        assert!(matches!(
            empty.validate(&cfg),
            Err(Error::InvalidRequest(_))
        ));
    }
}
