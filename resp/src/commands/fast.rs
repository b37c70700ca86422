//! Direct paths for the hottest commands outside MULTI: each maps onto one
//! operation of the cluster with no read first (a plain SET is one put, an
//! INCR one replicated increment), alone or as a pipelined run of one
//! region. Anything they do not cover goes through a view and a checked
//! transaction, with the same result.

use bytes::Bytes;

use super::strings::{parse_set, ExpireOpt};
use super::{not_integer, parse_int};
use crate::reply::Reply;
use crate::store::{store_err, Answer, FastWrite, Store, StoreError};

fn done<T>(r: Result<T, StoreError>, f: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(t) => f(t),
        Err(e) => store_err(e),
    }
}

/// The reply of `args` if a direct path serves it; None to use a view
/// (which also answers malformed arguments with their error).
pub fn fast_path(store: &mut dyn Store, name: &str, a: &[Bytes]) -> Option<Reply> {
    if let Some((w, kind)) = as_fast_write(name, a) {
        let key = w.key().clone();
        let r = store.write_pipelined(vec![w]).pop()?;
        return Some(write_reply(store, &key, kind, r, true));
    }
    Some(match name {
        "get" => done(store.get(&a[1]), |v| Reply::opt(v.map(|s| s.value))),
        "del" | "unlink" => {
            let mut n = 0;
            for (done, k) in a[1..].iter().enumerate() {
                match store.delete(k) {
                    Ok(existed) => n += i64::from(existed),
                    Err(e) if done == 0 => return Some(store_err(e)),
                    // Keys before it are deleted already: the command as a
                    // whole was applied in part.
                    Err(e) => {
                        return Some(store_err(StoreError::Unknown(format!(
                            "{done} of the {} keys were deleted, then: {}",
                            a.len() - 1,
                            e.reply_text()
                        ))))
                    }
                }
            }
            Reply::Int(n)
        }
        "exists" => {
            let mut n = 0;
            for k in &a[1..] {
                match store.get(k) {
                    Ok(v) => n += i64::from(v.is_some()),
                    Err(e) => return Some(store_err(e)),
                }
            }
            Reply::Int(n)
        }
        "mget" => {
            let mut out = Vec::with_capacity(a.len() - 1);
            let mut read = 0usize;
            for k in &a[1..] {
                match store.get(k) {
                    Ok(v) => {
                        read += v.as_ref().map_or(0, |s| s.value.len());
                        if read > crate::view::READ_BYTES_MAX {
                            return Some(Reply::err(format!(
                                "the command reads more than {} MiB of values: ask for fewer keys",
                                crate::view::READ_BYTES_MAX >> 20
                            )));
                        }
                        out.push(Reply::opt(v.map(|s| s.value)))
                    }
                    Err(e) => return Some(store_err(e)),
                }
            }
            Reply::Array(out)
        }
        "mset" => {
            if a.len() % 2 == 0 {
                return Some(super::wrong_arity("mset"));
            }
            let items: Vec<(Bytes, Bytes)> = a[1..]
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            done(store.put_many(&items), |_| Reply::Ok)
        }
        _ => return None,
    })
}

/// How the reply of a pipelined write is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteReply {
    /// SET: OK, or nil when NX did not hold.
    Set,
    /// SETNX: 1 or 0.
    SetNx,
    /// SETEX, PSETEX: OK.
    SetEx,
    /// INCR and its kin: the new value.
    Incr,
    /// DEL or UNLINK of one key: 1 or 0.
    Del,
}

/// The command as a write that needs no read first, if it is one (with
/// valid arguments: anything else runs on its own and gets its error).
pub fn as_fast_write(name: &str, a: &[Bytes]) -> Option<(FastWrite, WriteReply)> {
    let key = a.get(1)?.clone();
    let put = |value: &Bytes, ttl_ms, if_absent| FastWrite::Put {
        key: key.clone(),
        value: value.clone(),
        ttl_ms,
        if_absent,
    };
    Some(match name {
        "set" if a.len() >= 3 => {
            let o = parse_set(a).ok()?;
            let ttl = match o.expire {
                ExpireOpt::Unset => None,
                ExpireOpt::In(ms) => Some(ms),
                _ => return None,
            };
            if o.get || o.xx {
                return None;
            }
            (put(&a[2], ttl, o.nx), WriteReply::Set)
        }
        "setnx" if a.len() == 3 => (put(&a[2], None, true), WriteReply::SetNx),
        "setex" | "psetex" if a.len() == 4 => {
            let unit = if name == "setex" { 1000 } else { 1 };
            let n = parse_int(&a[2])?;
            let ms = (n as u64).checked_mul(unit)?;
            if n <= 0 || ms > corekv_engine::command::TTL_MS_MAX {
                return None;
            }
            (put(&a[3], Some(ms), false), WriteReply::SetEx)
        }
        "incr" | "decr" if a.len() == 2 => {
            let delta = if name == "incr" { 1 } else { -1 };
            (FastWrite::Incr { key, delta }, WriteReply::Incr)
        }
        "incrby" | "decrby" if a.len() == 3 => {
            let d = parse_int(&a[2])?;
            let delta = if name == "incrby" {
                d
            } else {
                d.checked_neg()?
            };
            (FastWrite::Incr { key, delta }, WriteReply::Incr)
        }
        "del" | "unlink" if a.len() == 2 => (FastWrite::Delete { key }, WriteReply::Del),
        _ => return None,
    })
}

/// The reply of a pipelined write.
/// `look`: the key may be read to tell an overflow from a value that is no
/// integer (false when a later write of the pipeline changed it already).
pub fn write_reply(
    store: &mut dyn Store,
    key: &[u8],
    kind: WriteReply,
    r: Result<Answer, StoreError>,
    look: bool,
) -> Reply {
    match (r, kind) {
        (Ok(Answer::Written(true)), WriteReply::Set | WriteReply::SetEx) => Reply::Ok,
        (Ok(Answer::Written(false)), WriteReply::Set) => Reply::Nil,
        (Ok(Answer::Written(w)), WriteReply::SetNx) => Reply::Int(i64::from(w)),
        (Ok(Answer::Counter(n)), WriteReply::Incr) => Reply::Int(n),
        (Ok(Answer::Deleted(d)), WriteReply::Del) => Reply::Int(i64::from(d)),
        // The engine does not tell overflow from garbage: look.
        (Err(StoreError::NotANumber), WriteReply::Incr) if !look => not_integer(),
        (Err(StoreError::NotANumber), WriteReply::Incr) => match store.get(key) {
            Ok(Some(s)) if parse_int(&s.value).is_some() => {
                Reply::err("increment or decrement would overflow")
            }
            _ => not_integer(),
        },
        (Err(e), _) => store_err(e),
        (Ok(other), kind) => Reply::err(format!("unexpected answer {other:?} to {kind:?}")),
    }
}
