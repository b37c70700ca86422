//! Key commands (deletion, existence, expiry, renames), on a view of their
//! keys.

use bytes::Bytes;

use super::{is, not_integer, parse_int, syntax_error};
use crate::reply::Reply;
use crate::view::{Ttl, View};

pub fn del(v: &mut View, a: &[Bytes]) -> Reply {
    let mut n = 0;
    for k in &a[1..] {
        if v.del(k) {
            n += 1;
        }
    }
    Reply::Int(n)
}

pub fn exists(v: &mut View, a: &[Bytes]) -> Reply {
    Reply::Int(a[1..].iter().filter(|k| v.get(k).is_some()).count() as i64)
}

pub fn type_of(v: &mut View, a: &[Bytes]) -> Reply {
    Reply::Status(
        if v.get(&a[1]).is_some() {
            "string"
        } else {
            "none"
        }
        .into(),
    )
}

/// How EXPIRE and its kin take their time argument.
#[derive(Clone, Copy)]
enum When {
    /// Relative, in this many ms per unit.
    In(u64),
    /// Absolute unix time, this many ms per unit.
    At(u64),
}

fn expire_generic(v: &mut View, a: &[Bytes], when: When, cmd: &str) -> Reply {
    let Some(n) = parse_int(&a[2]) else {
        return not_integer();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a[3..] {
        if is(opt, "nx") {
            nx = true;
        } else if is(opt, "xx") {
            xx = true;
        } else if is(opt, "gt") {
            gt = true;
        } else if is(opt, "lt") {
            lt = true;
        } else {
            return Reply::err(format!(
                "Unsupported option {}",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("GT and LT options at the same time are not compatible");
    }
    let invalid = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    let unit = match when {
        When::In(u) | When::At(u) => u as i64,
    };
    let Some(ms) = n.checked_mul(unit) else {
        return invalid();
    };
    let (new_at, relative) = match when {
        When::In(_) => match (v.now_ms as i64).checked_add(ms) {
            Some(t) => (t, true),
            None => return invalid(),
        },
        When::At(_) => (ms, false),
    };
    let Some((value, ttl)) = v.get(&a[1]).map(|(x, t)| (x.clone(), t)) else {
        return Reply::Int(0);
    };
    let current = v.expire_at(ttl);
    let allowed = match current {
        // No expiry counts as an infinite one.
        None => !(xx || gt),
        Some(cur) => !nx && (!gt || new_at > cur as i64) && (!lt || new_at < cur as i64),
    };
    if !allowed {
        return Reply::Int(0);
    }
    if new_at <= v.now_ms as i64 {
        v.del(&a[1]);
        return Reply::Int(1);
    }
    if ms as u64 > corekv_engine::command::TTL_MS_MAX && relative {
        return invalid();
    }
    let ttl = if relative {
        Ttl::After(ms as u64)
    } else {
        Ttl::At(new_at as u64)
    };
    v.set(&a[1], value, ttl);
    Reply::Int(1)
}

pub fn expire(v: &mut View, a: &[Bytes]) -> Reply {
    expire_generic(v, a, When::In(1000), "expire")
}

pub fn pexpire(v: &mut View, a: &[Bytes]) -> Reply {
    expire_generic(v, a, When::In(1), "pexpire")
}

pub fn expireat(v: &mut View, a: &[Bytes]) -> Reply {
    expire_generic(v, a, When::At(1000), "expireat")
}

pub fn pexpireat(v: &mut View, a: &[Bytes]) -> Reply {
    expire_generic(v, a, When::At(1), "pexpireat")
}

/// TTL-like answers: -2 absent, -1 no expiry, else `f` of the remaining or
/// absolute time.
fn ttl_generic(v: &mut View, a: &[Bytes], f: impl Fn(&View, Ttl) -> i64) -> Reply {
    match v.get(&a[1]) {
        None => Reply::Int(-2),
        Some((_, Ttl::None)) => Reply::Int(-1),
        Some((_, t)) => Reply::Int(f(v, t)),
    }
}

pub fn ttl(v: &mut View, a: &[Bytes]) -> Reply {
    ttl_generic(v, a, |v, t| (v.ttl_ms(t).unwrap_or(0) as i64 + 500) / 1000)
}

pub fn pttl(v: &mut View, a: &[Bytes]) -> Reply {
    ttl_generic(v, a, |v, t| v.ttl_ms(t).unwrap_or(0) as i64)
}

pub fn expiretime(v: &mut View, a: &[Bytes]) -> Reply {
    ttl_generic(v, a, |v, t| v.expire_at(t).unwrap_or(0) as i64 / 1000)
}

pub fn pexpiretime(v: &mut View, a: &[Bytes]) -> Reply {
    ttl_generic(v, a, |v, t| v.expire_at(t).unwrap_or(0) as i64)
}

pub fn persist(v: &mut View, a: &[Bytes]) -> Reply {
    match v.get(&a[1]).map(|(x, t)| (x.clone(), t)) {
        Some((value, t)) if t != Ttl::None => {
            v.set(&a[1], value, Ttl::None);
            Reply::Int(1)
        }
        _ => Reply::Int(0),
    }
}

fn rename_generic(v: &mut View, a: &[Bytes], nx: bool) -> Reply {
    let Some((value, ttl)) = v.get(&a[1]).map(|(x, t)| (x.clone(), t)) else {
        return Reply::err("no such key");
    };
    if a[1] == a[2] {
        return if nx { Reply::Int(0) } else { Reply::Ok };
    }
    if nx && v.get(&a[2]).is_some() {
        return Reply::Int(0);
    }
    v.del(&a[1]);
    v.set(&a[2], value, ttl);
    if nx {
        Reply::Int(1)
    } else {
        Reply::Ok
    }
}

pub fn rename(v: &mut View, a: &[Bytes]) -> Reply {
    rename_generic(v, a, false)
}

pub fn renamenx(v: &mut View, a: &[Bytes]) -> Reply {
    rename_generic(v, a, true)
}

pub fn copy(v: &mut View, a: &[Bytes]) -> Reply {
    let mut replace = false;
    let mut i = 3;
    while i < a.len() {
        if is(&a[i], "replace") {
            replace = true;
            i += 1;
        } else if is(&a[i], "db") && i + 1 < a.len() {
            match parse_int(&a[i + 1]) {
                Some(0) => {}
                Some(_) => return Reply::err("DB index is out of range"),
                None => return not_integer(),
            }
            i += 2;
        } else {
            return syntax_error();
        }
    }
    if a[1] == a[2] {
        return Reply::err("source and destination objects are the same");
    }
    let Some((value, ttl)) = v.get(&a[1]).map(|(x, t)| (x.clone(), t)) else {
        return Reply::Int(0);
    };
    if !replace && v.get(&a[2]).is_some() {
        return Reply::Int(0);
    }
    v.set(&a[2], value, ttl);
    Reply::Int(1)
}
