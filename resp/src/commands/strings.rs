//! String commands, on a view of their keys.

use bytes::Bytes;

use super::{is, not_integer, parse_int, syntax_error, wrong_arity};
use crate::reply::Reply;
use crate::view::{Ttl, View};

pub fn get(v: &mut View, a: &[Bytes]) -> Reply {
    Reply::opt(v.get(&a[1]).map(|(x, _)| x.clone()))
}

/// Expiry options of SET and GETEX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireOpt {
    /// None given.
    Unset,
    /// EX / PX: this many ms from now.
    In(u64),
    /// EXAT / PXAT: at this unix ms.
    At(u64),
    /// KEEPTTL.
    Keep,
    /// PERSIST (GETEX).
    Persist,
}

/// Options of SET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOpts {
    pub nx: bool,
    pub xx: bool,
    pub get: bool,
    pub expire: ExpireOpt,
}

/// Reads one expiry option (`EX 10`) at `a[i]`; returns it and the next
/// index, None if `a[i]` is not one.
fn expire_opt(a: &[Bytes], i: usize, cmd: &str) -> Option<Result<(ExpireOpt, usize), Reply>> {
    let word = &a[i];
    let unit = if is(word, "ex") || is(word, "exat") {
        1000
    } else if is(word, "px") || is(word, "pxat") {
        1
    } else if is(word, "keepttl") && cmd == "set" {
        return Some(Ok((ExpireOpt::Keep, i + 1)));
    } else if is(word, "persist") && cmd == "getex" {
        return Some(Ok((ExpireOpt::Persist, i + 1)));
    } else {
        return None;
    };
    let Some(n) = a.get(i + 1) else {
        return Some(Err(syntax_error()));
    };
    let Some(n) = parse_int(n) else {
        return Some(Err(not_integer()));
    };
    let invalid = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Some(Err(invalid()));
    }
    let Some(ms) = (n as u64).checked_mul(unit) else {
        return Some(Err(invalid()));
    };
    let absolute = word.len() == 4;
    // The cluster's limit on a time to live; an absolute time has none.
    if !absolute && ms > corekv_engine::command::TTL_MS_MAX {
        return Some(Err(invalid()));
    }
    Some(Ok((
        if absolute {
            ExpireOpt::At(ms)
        } else {
            ExpireOpt::In(ms)
        },
        i + 2,
    )))
}

/// Parses SET's options (from `a[3]`).
pub fn parse_set(a: &[Bytes]) -> Result<SetOpts, Reply> {
    let mut o = SetOpts {
        nx: false,
        xx: false,
        get: false,
        expire: ExpireOpt::Unset,
    };
    let mut i = 3;
    while i < a.len() {
        if is(&a[i], "nx") && !o.xx {
            o.nx = true;
            i += 1;
        } else if is(&a[i], "xx") && !o.nx {
            o.xx = true;
            i += 1;
        } else if is(&a[i], "get") {
            o.get = true;
            i += 1;
        } else {
            match expire_opt(a, i, "set") {
                Some(Ok((e, next))) if o.expire == ExpireOpt::Unset => {
                    o.expire = e;
                    i = next;
                }
                Some(Err(r)) => return Err(r),
                _ => return Err(syntax_error()),
            }
        }
    }
    Ok(o)
}

/// The expiry a write gets from an option, given the key's current one.
fn ttl_for(e: ExpireOpt, current: Ttl) -> Ttl {
    match e {
        ExpireOpt::Unset | ExpireOpt::Persist => Ttl::None,
        ExpireOpt::In(ms) => Ttl::After(ms),
        ExpireOpt::At(at) => Ttl::At(at),
        ExpireOpt::Keep => current,
    }
}

/// Writes `value` with `ttl`; an absolute expiry already past removes the
/// key instead, as Redis does.
fn write(v: &mut View, key: &[u8], value: Bytes, ttl: Ttl) {
    match ttl {
        Ttl::At(t) if t <= v.now_ms => {
            v.del(key);
        }
        ttl => v.set(key, value, ttl),
    }
}

pub fn set(v: &mut View, a: &[Bytes]) -> Reply {
    let o = match parse_set(a) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let current = v.get(&a[1]).map(|(x, t)| (x.clone(), t));
    let old = || Reply::opt(current.as_ref().map(|(x, _)| x.clone()));
    if (o.nx && current.is_some()) || (o.xx && current.is_none()) {
        return if o.get { old() } else { Reply::Nil };
    }
    let cur_ttl = current.as_ref().map_or(Ttl::None, |(_, t)| *t);
    let ttl = ttl_for(o.expire, cur_ttl);
    let reply = if o.get { old() } else { Reply::Ok };
    write(v, &a[1], a[2].clone(), ttl);
    reply
}

pub fn setnx(v: &mut View, a: &[Bytes]) -> Reply {
    if v.get(&a[1]).is_some() {
        return Reply::Int(0);
    }
    v.set(&a[1], a[2].clone(), Ttl::None);
    Reply::Int(1)
}

fn setex_with(v: &mut View, a: &[Bytes], unit: u64, cmd: &str) -> Reply {
    let Some(n) = parse_int(&a[2]) else {
        return not_integer();
    };
    match (n as u64).checked_mul(unit) {
        Some(ms) if n > 0 && ms <= corekv_engine::command::TTL_MS_MAX => {}
        _ => return Reply::err(format!("invalid expire time in '{cmd}' command")),
    }
    v.set(&a[1], a[3].clone(), Ttl::After(n as u64 * unit));
    Reply::Ok
}

pub fn setex(v: &mut View, a: &[Bytes]) -> Reply {
    setex_with(v, a, 1000, "setex")
}

pub fn psetex(v: &mut View, a: &[Bytes]) -> Reply {
    setex_with(v, a, 1, "psetex")
}

pub fn getset(v: &mut View, a: &[Bytes]) -> Reply {
    let old = Reply::opt(v.get(&a[1]).map(|(x, _)| x.clone()));
    v.set(&a[1], a[2].clone(), Ttl::None);
    old
}

pub fn getdel(v: &mut View, a: &[Bytes]) -> Reply {
    let old = Reply::opt(v.get(&a[1]).map(|(x, _)| x.clone()));
    v.del(&a[1]);
    old
}

pub fn getex(v: &mut View, a: &[Bytes]) -> Reply {
    let mut opt = ExpireOpt::Unset;
    let mut i = 2;
    while i < a.len() {
        match expire_opt(a, i, "getex") {
            Some(Ok((e, next))) if opt == ExpireOpt::Unset => {
                opt = e;
                i = next;
            }
            Some(Err(r)) => return r,
            _ => return syntax_error(),
        }
    }
    let Some((value, ttl)) = v.get(&a[1]).map(|(x, t)| (x.clone(), t)) else {
        return Reply::Nil;
    };
    match opt {
        ExpireOpt::Unset => {}
        ExpireOpt::Persist if ttl == Ttl::None => {}
        e => {
            let new = ttl_for(e, ttl);
            write(v, &a[1], value.clone(), new);
        }
    }
    Reply::Bulk(value)
}

pub fn mget(v: &mut View, a: &[Bytes]) -> Reply {
    Reply::Array(
        a[1..]
            .iter()
            .map(|k| Reply::opt(v.get(k).map(|(x, _)| x.clone())))
            .collect(),
    )
}

pub fn mset(v: &mut View, a: &[Bytes]) -> Reply {
    if a.len() % 2 == 0 {
        return wrong_arity("mset");
    }
    for pair in a[1..].chunks(2) {
        v.set(&pair[0], pair[1].clone(), Ttl::None);
    }
    Reply::Ok
}

pub fn msetnx(v: &mut View, a: &[Bytes]) -> Reply {
    if a.len() % 2 == 0 {
        return wrong_arity("msetnx");
    }
    if a[1..].chunks(2).any(|p| v.get(&p[0]).is_some()) {
        return Reply::Int(0);
    }
    for pair in a[1..].chunks(2) {
        v.set(&pair[0], pair[1].clone(), Ttl::None);
    }
    Reply::Int(1)
}

pub fn strlen(v: &mut View, a: &[Bytes]) -> Reply {
    Reply::Int(v.get(&a[1]).map_or(0, |(x, _)| x.len() as i64))
}

pub fn append(v: &mut View, a: &[Bytes]) -> Reply {
    let (mut value, ttl) = match v.get(&a[1]) {
        Some((x, t)) => (x.to_vec(), t),
        None => (Vec::new(), Ttl::None),
    };
    if value.len() + a[2].len() > v.value_bytes_max {
        return Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)");
    }
    value.extend_from_slice(&a[2]);
    let n = value.len() as i64;
    v.set(&a[1], Bytes::from(value), ttl);
    Reply::Int(n)
}

pub fn getrange(v: &mut View, a: &[Bytes]) -> Reply {
    let (Some(mut start), Some(mut end)) = (parse_int(&a[2]), parse_int(&a[3])) else {
        return not_integer();
    };
    let Some((value, _)) = v.get(&a[1]) else {
        return Reply::text("");
    };
    let len = value.len() as i64;
    // Redis: negative offsets count from the end, then both are clamped.
    if start < 0 && end < 0 && start > end {
        return Reply::text("");
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0).min(len - 1);
    if len == 0 || start > end {
        return Reply::text("");
    }
    Reply::Bulk(value.slice(start as usize..=end as usize))
}

pub fn setrange(v: &mut View, a: &[Bytes]) -> Reply {
    let Some(offset) = parse_int(&a[2]) else {
        return not_integer();
    };
    if offset < 0 {
        return Reply::err("offset is out of range");
    }
    let current = v.get(&a[1]).map(|(x, t)| (x.clone(), t));
    if a[3].is_empty() {
        return Reply::Int(current.map_or(0, |(x, _)| x.len() as i64));
    }
    // Checked before anything is allocated: an offset near i64::MAX must
    // neither overflow nor make the node zero-fill gigabytes.
    match (offset as u64).checked_add(a[3].len() as u64) {
        Some(end) if end <= v.value_bytes_max as u64 => {}
        _ => return Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)"),
    }
    let (mut value, ttl) = current.map_or((Vec::new(), Ttl::None), |(x, t)| (x.to_vec(), t));
    let end = offset as usize + a[3].len();
    if value.len() < end {
        value.resize(end, 0);
    }
    value[offset as usize..end].copy_from_slice(&a[3]);
    let n = value.len() as i64;
    v.set(&a[1], Bytes::from(value), ttl);
    Reply::Int(n)
}

fn add(v: &mut View, key: &Bytes, delta: Option<i64>) -> Reply {
    let Some(delta) = delta else {
        return not_integer();
    };
    // The stored value is read as the engine's INCR reads it (so INCR
    // answers alike inside MULTI and out).
    let (old, ttl) = match v.get(key) {
        None => (0, Ttl::None),
        Some((x, t)) => match std::str::from_utf8(x)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(n) => (n, t),
            None => return not_integer(),
        },
    };
    let Some(new) = old.checked_add(delta) else {
        return Reply::err("increment or decrement would overflow");
    };
    v.set(key, Bytes::from(new.to_string()), ttl);
    Reply::Int(new)
}

pub fn incr(v: &mut View, a: &[Bytes]) -> Reply {
    add(v, &a[1], Some(1))
}

pub fn decr(v: &mut View, a: &[Bytes]) -> Reply {
    add(v, &a[1], Some(-1))
}

pub fn incrby(v: &mut View, a: &[Bytes]) -> Reply {
    add(v, &a[1], parse_int(&a[2]))
}

pub fn decrby(v: &mut View, a: &[Bytes]) -> Reply {
    match parse_int(&a[2]) {
        Some(i64::MIN) => Reply::err("decrement would overflow"),
        d => add(v, &a[1], d.map(|d| -d)),
    }
}

fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    (!f.is_nan()).then_some(f)
}

/// A float as INCRBYFLOAT writes it: plain decimal, 16 significant
/// digits at most (0.1 + 0.2 is "0.3", as Redis's long double gives), no
/// exponent, no trailing zeros.
pub fn format_float(f: f64) -> String {
    let exp = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    let decimals = (15 - exp).clamp(0, 17) as usize;
    let s = format!("{f:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

pub fn incrbyfloat(v: &mut View, a: &[Bytes]) -> Reply {
    let Some(delta) = parse_float(&a[2]) else {
        return Reply::err("value is not a valid float");
    };
    let (old, ttl) = match v.get(&a[1]) {
        None => (0.0, Ttl::None),
        Some((x, t)) => match parse_float(x) {
            Some(n) => (n, t),
            None => return Reply::err("value is not a valid float"),
        },
    };
    let new = old + delta;
    if !new.is_finite() {
        return Reply::err("increment would produce NaN or Infinity");
    }
    let text = format_float(new);
    v.set(&a[1], Bytes::from(text.clone()), ttl);
    Reply::text(text)
}
