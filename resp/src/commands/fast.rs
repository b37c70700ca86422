//! Direct paths for the hottest commands outside MULTI: each maps onto one
//! operation of the cluster with no read first (a plain SET is one put, an
//! INCR one replicated increment). Anything they do not cover goes through
//! a view and a checked transaction, with the same result.

use bytes::Bytes;

use super::strings::{parse_set, ExpireOpt};
use super::{not_integer, parse_int};
use crate::reply::Reply;
use crate::store::{Store, StoreError};

fn store_err(e: StoreError) -> Reply {
    Reply::Error(e.reply_text())
}

fn done<T>(r: Result<T, StoreError>, f: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(t) => f(t),
        Err(e) => store_err(e),
    }
}

/// The reply of `args` if a direct path serves it; None to use a view.
pub fn fast_path(store: &mut dyn Store, name: &str, a: &[Bytes]) -> Option<Reply> {
    Some(match name {
        "get" => done(store.get(&a[1]), |v| Reply::opt(v.map(|s| s.value))),
        "set" => {
            let o = match parse_set(a) {
                Ok(o) => o,
                Err(r) => return Some(r),
            };
            let ttl = match o.expire {
                ExpireOpt::Unset => None,
                ExpireOpt::In(ms) => Some(ms),
                _ => return None,
            };
            if o.get || o.xx {
                return None;
            }
            done(store.put(&a[1], &a[2], ttl, o.nx), |written| {
                if written {
                    Reply::Ok
                } else {
                    Reply::Nil
                }
            })
        }
        "setnx" => done(store.put(&a[1], &a[2], None, true), |w| {
            Reply::Int(i64::from(w))
        }),
        "setex" | "psetex" => {
            let unit = if name == "setex" { 1000 } else { 1 };
            let Some(n) = parse_int(&a[2]) else {
                return Some(not_integer());
            };
            match (n as u64).checked_mul(unit) {
                Some(ms) if n > 0 && ms <= corekv_engine::command::TTL_MS_MAX => {
                    done(store.put(&a[1], &a[3], Some(ms), false), |_| Reply::Ok)
                }
                _ => Reply::err(format!("invalid expire time in '{name}' command")),
            }
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match name {
                "incr" => 1,
                "decr" => -1,
                _ => match parse_int(&a[2]) {
                    Some(d) if name == "incrby" => d,
                    Some(d) if d != i64::MIN => -d,
                    Some(_) => return Some(Reply::err("decrement would overflow")),
                    None => return Some(not_integer()),
                },
            };
            match store.incr(&a[1], delta) {
                Ok(n) => Reply::Int(n),
                // The engine does not tell overflow from garbage: look.
                Err(StoreError::NotANumber) => match store.get(&a[1]) {
                    Ok(Some(s)) if parse_int(&s.value).is_some() => {
                        Reply::err("increment or decrement would overflow")
                    }
                    _ => not_integer(),
                },
                Err(e) => store_err(e),
            }
        }
        "del" | "unlink" => {
            let mut n = 0;
            for k in &a[1..] {
                match store.delete(k) {
                    Ok(existed) => n += i64::from(existed),
                    Err(e) => return Some(store_err(e)),
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
