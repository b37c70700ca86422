//! The command table: every command's arity, flags and key positions (what
//! `COMMAND` reports, what arity errors and key routing use), and the data
//! commands themselves.
//!
//! A data command is a function of a [`View`]: it reads and changes the
//! keys it names in memory and gives the reply. The same function serves a
//! command on its own and inside MULTI/EXEC, so both behave alike; the view
//! is then committed as one checked transaction (see `view`). A few hot
//! commands also have a direct path (`fast`) that needs no prior read.

use bytes::Bytes;

use crate::reply::Reply;
use crate::view::View;

mod fast;
mod keys;
mod strings;

pub use fast::{as_fast_write, fast_path, write_reply, WriteReply};

/// What runs a command.
#[derive(Clone, Copy)]
pub enum Run {
    /// A data command on a view of its keys.
    Data(fn(&mut View, &[Bytes]) -> Reply),
    /// Handled by the connection (server, connection, MULTI and
    /// whole-keyspace commands).
    Conn,
}

/// One command.
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: exact when positive, minimum when negative; counts the
    /// name.
    pub arity: i32,
    /// Flags as `COMMAND` gives them.
    pub flags: &'static [&'static str],
    /// First key, last key (negative: from the end), step; 0, 0, 0 = none.
    pub keys: (i32, i32, i32),
    /// How it runs.
    pub run: Run,
}

impl Spec {
    /// True if `args` (name included) has an acceptable length.
    pub fn arity_ok(&self, n: usize) -> bool {
        let n = n as i32;
        if self.arity >= 0 {
            n == self.arity
        } else {
            n >= -self.arity
        }
    }

    /// The keys `args` names.
    pub fn keys_of(&self, args: &[Bytes]) -> Vec<Bytes> {
        let (first, last, step) = self.keys;
        if first <= 0 || step <= 0 {
            return Vec::new();
        }
        let last = if last < 0 {
            args.len() as i32 + last
        } else {
            last.min(args.len() as i32 - 1)
        };
        (first..=last)
            .step_by(step as usize)
            .filter_map(|i| args.get(i as usize).cloned())
            .collect()
    }

    /// True for a command that may write.
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "fast"];
const C: &[&str] = &["fast", "loading", "stale"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $run:expr) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            run: $run,
        }
    };
}

use Run::{Conn, Data};

/// Every command known, in alphabetical order.
pub static COMMANDS: &[Spec] = &[
    spec!("append", 3, W, (1, 1, 1), Data(strings::append)),
    spec!("auth", -2, C, (0, 0, 0), Conn),
    spec!("client", -2, C, (0, 0, 0), Conn),
    spec!("command", -1, C, (0, 0, 0), Conn),
    spec!("config", -2, C, (0, 0, 0), Conn),
    spec!("copy", -3, W, (1, 2, 1), Data(keys::copy)),
    spec!("dbsize", 1, R, (0, 0, 0), Conn),
    spec!("debug", -2, C, (0, 0, 0), Conn),
    spec!("decr", 2, W, (1, 1, 1), Data(strings::decr)),
    spec!("decrby", 3, W, (1, 1, 1), Data(strings::decrby)),
    spec!("del", -2, W, (1, -1, 1), Data(keys::del)),
    spec!("discard", 1, C, (0, 0, 0), Conn),
    spec!("echo", 2, C, (0, 0, 0), Conn),
    spec!("exec", 1, C, (0, 0, 0), Conn),
    spec!("exists", -2, R, (1, -1, 1), Data(keys::exists)),
    spec!("expire", -3, WF, (1, 1, 1), Data(keys::expire)),
    spec!("expireat", -3, WF, (1, 1, 1), Data(keys::expireat)),
    spec!("expiretime", 2, R, (1, 1, 1), Data(keys::expiretime)),
    spec!("flushall", -1, W, (0, 0, 0), Conn),
    spec!("flushdb", -1, W, (0, 0, 0), Conn),
    spec!("get", 2, R, (1, 1, 1), Data(strings::get)),
    spec!("getdel", 2, WF, (1, 1, 1), Data(strings::getdel)),
    spec!("getex", -2, WF, (1, 1, 1), Data(strings::getex)),
    spec!("getrange", 4, R, (1, 1, 1), Data(strings::getrange)),
    spec!("getset", 3, W, (1, 1, 1), Data(strings::getset)),
    spec!("hello", -1, C, (0, 0, 0), Conn),
    spec!("incr", 2, W, (1, 1, 1), Data(strings::incr)),
    spec!("incrby", 3, W, (1, 1, 1), Data(strings::incrby)),
    spec!("incrbyfloat", 3, W, (1, 1, 1), Data(strings::incrbyfloat)),
    spec!("info", -1, C, (0, 0, 0), Conn),
    spec!("keys", 2, R, (0, 0, 0), Conn),
    spec!("mget", -2, R, (1, -1, 1), Data(strings::mget)),
    spec!("mset", -3, W, (1, -1, 2), Data(strings::mset)),
    spec!("msetnx", -3, W, (1, -1, 2), Data(strings::msetnx)),
    spec!("multi", 1, C, (0, 0, 0), Conn),
    spec!("persist", 2, WF, (1, 1, 1), Data(keys::persist)),
    spec!("pexpire", -3, WF, (1, 1, 1), Data(keys::pexpire)),
    spec!("pexpireat", -3, WF, (1, 1, 1), Data(keys::pexpireat)),
    spec!("pexpiretime", 2, R, (1, 1, 1), Data(keys::pexpiretime)),
    spec!("ping", -1, C, (0, 0, 0), Conn),
    spec!("psetex", 4, W, (1, 1, 1), Data(strings::psetex)),
    spec!("pttl", 2, R, (1, 1, 1), Data(keys::pttl)),
    spec!("quit", -1, C, (0, 0, 0), Conn),
    spec!("randomkey", 1, R, (0, 0, 0), Conn),
    spec!("rename", 3, W, (1, 2, 1), Data(keys::rename)),
    spec!("renamenx", 3, WF, (1, 2, 1), Data(keys::renamenx)),
    spec!("reset", 1, C, (0, 0, 0), Conn),
    spec!("scan", -2, R, (0, 0, 0), Conn),
    spec!("select", 2, C, (0, 0, 0), Conn),
    spec!("set", -3, W, (1, 1, 1), Data(strings::set)),
    spec!("setex", 4, W, (1, 1, 1), Data(strings::setex)),
    spec!("setnx", 3, WF, (1, 1, 1), Data(strings::setnx)),
    spec!("setrange", 4, W, (1, 1, 1), Data(strings::setrange)),
    spec!("strlen", 2, R, (1, 1, 1), Data(strings::strlen)),
    spec!("substr", 4, R, (1, 1, 1), Data(strings::getrange)),
    spec!("time", 1, C, (0, 0, 0), Conn),
    spec!("ttl", 2, R, (1, 1, 1), Data(keys::ttl)),
    spec!("type", 2, R, (1, 1, 1), Data(keys::type_of)),
    spec!("unlink", -2, WF, (1, -1, 1), Data(keys::del)),
    spec!("unwatch", 1, C, (0, 0, 0), Conn),
    spec!("watch", -2, C, (1, -1, 1), Conn),
];

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    let lower = name.to_ascii_lowercase();
    COMMANDS
        .binary_search_by(|s| s.name.as_bytes().cmp(&lower[..]))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Redis's reply to a command it does not know.
pub fn unknown(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let mut shown = String::new();
    for a in args.iter().skip(1).take(16) {
        shown.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Reply::err(format!(
        "unknown command '{name}', with args beginning with: {shown}"
    ))
}

/// Redis's reply to a wrong number of arguments.
pub fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// Redis's reply to an argument that is not an integer.
pub fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// Redis's reply to a malformed option list.
pub fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// Parses an integer as Redis does (no sign but '-', no spaces, no
/// leading zeros).
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// True if `a` equals `word`, ignoring ASCII case.
pub fn is(a: &[u8], word: &str) -> bool {
    a.eq_ignore_ascii_case(word.as_bytes())
}

#[cfg(test)]
mod tests;
