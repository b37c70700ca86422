//! The commands' replies, on a session over an in-memory store with the
//! cluster's rules (the same sessions run over real clusters in the
//! workspace tests).

use super::*;
use crate::codec::split_args;
use crate::server::{RespConfig, Shared};
use crate::session::Session;
use crate::store::mem::MemStore;

fn test_config() -> RespConfig {
    RespConfig::for_tests()
}

fn session(regions: u64) -> Session {
    let cfg = test_config();
    Session::new(
        Shared::new(cfg, 7301),
        Box::new(MemStore::new(regions)),
        "test".into(),
    )
}

/// Runs an inline command and gives the RESP2 reply as text.
fn run(s: &mut Session, line: &str) -> String {
    let args = split_args(line.as_bytes()).expect("balanced quotes");
    let mut out = Vec::new();
    s.handle(args).encode(s.proto, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Inline command lines as a pipeline's commands.
fn pipeline(lines: &[&str]) -> Vec<Vec<Bytes>> {
    lines
        .iter()
        .map(|l| split_args(l.as_bytes()).unwrap())
        .collect()
}

fn check(s: &mut Session, pairs: &[(&str, &str)]) {
    for (cmd, want) in pairs {
        assert_eq!(run(s, cmd), *want, "{cmd}");
    }
}

#[test]
fn the_table_is_sorted_and_every_name_is_found() {
    for w in COMMANDS.windows(2) {
        assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
    }
    for s in COMMANDS {
        assert!(lookup(s.name.to_uppercase().as_bytes()).is_some());
    }
}

#[test]
fn strings_answer_as_redis_does() {
    let mut s = session(1);
    check(
        &mut s,
        &[
            ("GET k", "$-1\r\n"),
            ("SET k v", "+OK\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k w NX", "$-1\r\n"),
            ("SET k w XX GET", "$1\r\nv\r\n"),
            ("SET other x XX", "$-1\r\n"),
            (
                "SET k v EX 0",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v EX x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            ("SET k v NX XX", "-ERR syntax error\r\n"),
            ("SET k v EX 10 PX 10", "-ERR syntax error\r\n"),
            (
                "SET k",
                "-ERR wrong number of arguments for 'set' command\r\n",
            ),
            (
                "GET",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            ("SETNX k z", ":0\r\n"),
            ("SETNX n z", ":1\r\n"),
            ("GETSET k a", "$1\r\nw\r\n"),
            ("APPEND k bc", ":3\r\n"),
            ("STRLEN k", ":3\r\n"),
            ("STRLEN none", ":0\r\n"),
            ("GETRANGE k 0 -1", "$3\r\nabc\r\n"),
            ("GETRANGE k -2 -1", "$2\r\nbc\r\n"),
            ("GETRANGE k 5 9", "$0\r\n\r\n"),
            ("SETRANGE k 5 Z", ":6\r\n"),
            ("GET k", "$6\r\nabc\0\0Z\r\n"),
            ("SETRANGE k -1 Z", "-ERR offset is out of range\r\n"),
            ("GETDEL k", "$6\r\nabc\0\0Z\r\n"),
            ("GETDEL k", "$-1\r\n"),
            ("MSET a 1 b 2", "+OK\r\n"),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            ("MGET a b c", "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
            ("MSETNX a 5 c 6", ":0\r\n"),
            ("MSETNX c 6 d 7", ":1\r\n"),
            ("MGET c d", "*2\r\n$1\r\n6\r\n$1\r\n7\r\n"),
        ],
    );
}

#[test]
fn counters_answer_as_redis_does() {
    let mut s = session(1);
    check(
        &mut s,
        &[
            ("INCR n", ":1\r\n"),
            ("INCRBY n 10", ":11\r\n"),
            ("DECR n", ":10\r\n"),
            ("DECRBY n 20", ":-10\r\n"),
            (
                "INCRBY n x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            ("SET t abc", "+OK\r\n"),
            ("INCR t", "-ERR value is not an integer or out of range\r\n"),
            ("SET big 9223372036854775807", "+OK\r\n"),
            ("INCR big", "-ERR increment or decrement would overflow\r\n"),
            ("SET f 10.50", "+OK\r\n"),
            ("INCRBYFLOAT f 0.1", "$4\r\n10.6\r\n"),
            ("INCRBYFLOAT f -5.6", "$1\r\n5\r\n"),
            ("INCRBYFLOAT t 1", "-ERR value is not a valid float\r\n"),
            ("INCRBYFLOAT f x", "-ERR value is not a valid float\r\n"),
        ],
    );
}

#[test]
fn keys_and_expiry_answer_as_redis_does() {
    let mut s = session(1);
    check(
        &mut s,
        &[
            ("TTL k", ":-2\r\n"),
            ("SET k v", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("EXPIRETIME k", ":-1\r\n"),
            ("TYPE k", "+string\r\n"),
            ("TYPE none", "+none\r\n"),
            ("EXPIRE k 100 XX", ":0\r\n"),
            ("EXPIRE k 100 NX", ":1\r\n"),
            ("TTL k", ":100\r\n"),
            ("EXPIRE k 50 GT", ":0\r\n"),
            ("EXPIRE k 50 LT", ":1\r\n"),
            ("TTL k", ":50\r\n"),
            (
                "EXPIRE k 10 NX XX",
                "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
            ),
            (
                "EXPIRE k 10 GT LT",
                "-ERR GT and LT options at the same time are not compatible\r\n",
            ),
            ("EXPIRE k 10 FOO", "-ERR Unsupported option FOO\r\n"),
            ("EXPIRE none 10", ":0\r\n"),
            ("PERSIST k", ":1\r\n"),
            ("PERSIST k", ":0\r\n"),
            ("TTL k", ":-1\r\n"),
            ("SET e v PX 100000", "+OK\r\n"),
            ("SET e w KEEPTTL", "+OK\r\n"),
            ("EXPIREAT k 1", ":1\r\n"),
            ("EXISTS k e e none", ":2\r\n"),
            ("SET g v", "+OK\r\n"),
            ("GETEX g EX 30", "$1\r\nv\r\n"),
            ("TTL g", ":30\r\n"),
            ("GETEX g PERSIST", "$1\r\nv\r\n"),
            ("TTL g", ":-1\r\n"),
            ("RENAME none x", "-ERR no such key\r\n"),
            ("RENAME g h", "+OK\r\n"),
            ("EXISTS g h", ":1\r\n"),
            ("RENAMENX h e", ":0\r\n"),
            ("COPY h h2", ":1\r\n"),
            ("COPY h h2", ":0\r\n"),
            ("COPY h h2 REPLACE", ":1\r\n"),
            ("COPY h h2 DB 1", "-ERR DB index is out of range\r\n"),
            ("DEL h h2 none", ":2\r\n"),
            ("UNLINK e", ":1\r\n"),
        ],
    );
    // KEEPTTL kept the expiry, and PTTL is in ms.
    let mut s2 = session(1);
    run(&mut s2, "SET e v PX 100000");
    run(&mut s2, "SET e w KEEPTTL");
    let pttl: i64 = run(&mut s2, "PTTL e")[1..].trim().parse().unwrap();
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    run(&mut s2, "SET e w");
    assert_eq!(run(&mut s2, "PTTL e"), ":-1\r\n");
    // A past absolute expiry removes the key.
    assert_eq!(run(&mut s2, "SET e v PXAT 1"), "+OK\r\n");
    assert_eq!(run(&mut s2, "GET e"), "$-1\r\n");
}

#[test]
fn connection_commands_and_protocol_versions() {
    let mut s = session(1);
    check(
        &mut s,
        &[
            ("PING", "+PONG\r\n"),
            ("PING hi", "$2\r\nhi\r\n"),
            ("ECHO x", "$1\r\nx\r\n"),
            ("SELECT 0", "+OK\r\n"),
            ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ("CLIENT SETNAME app", "+OK\r\n"),
            ("CLIENT GETNAME", "$3\r\napp\r\n"),
            (
                "CLIENT SETNAME \"a b\"",
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            ),
            ("CLIENT ID", ":1\r\n"),
            (
                "CLIENT NOPE",
                "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n",
            ),
            ("HELLO 4", "-NOPROTO unsupported protocol version\r\n"),
            (
                "FOO a b",
                "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
            ),
            ("DEBUG SLEEP 0", "-ERR DEBUG is not supported by corekv\r\n"),
            ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            ("COMMAND COUNT", &format!(":{}\r\n", COMMANDS.len())),
        ],
    );
    assert!(run(&mut s, "AUTH x").starts_with("-ERR AUTH <password> called without"));
    assert!(run(&mut s, "INFO server").contains("redis_mode:standalone\r\n"));
    assert!(run(&mut s, "CLIENT LIST").contains("name=app"));
    // RESP3 after HELLO 3: maps and nulls change shape.
    let hello = run(&mut s, "HELLO 3");
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"));
    assert_eq!(run(&mut s, "GET none"), "_\r\n");
    assert_eq!(run(&mut s, "RESET"), "+RESET\r\n");
    assert_eq!(run(&mut s, "GET none"), "$-1\r\n");
    assert_eq!(run(&mut s, "QUIT"), "+OK\r\n");
    assert!(s.closing);
}

#[test]
fn multi_exec_runs_the_queue_at_once_and_watch_aborts_on_a_change() {
    let mut s = session(1);
    check(
        &mut s,
        &[
            ("EXEC", "-ERR EXEC without MULTI\r\n"),
            ("DISCARD", "-ERR DISCARD without MULTI\r\n"),
            ("MULTI", "+OK\r\n"),
            ("MULTI", "-ERR MULTI calls can not be nested\r\n"),
            ("SET a 1", "+QUEUED\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("SET t x", "+QUEUED\r\n"),
            ("INCR t", "+QUEUED\r\n"),
            ("GET a", "+QUEUED\r\n"),
            (
                "EXEC",
                "*5\r\n+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\n2\r\n",
            ),
            ("MULTI", "+OK\r\n"),
            ("SET a 1", "+QUEUED\r\n"),
            ("NOPE", "-ERR unknown command 'NOPE', with args beginning with: \r\n"),
            ("EXEC", "-EXECABORT Transaction discarded because of previous errors.\r\n"),
            ("GET a", "$1\r\n2\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SET a 9", "+QUEUED\r\n"),
            ("DISCARD", "+OK\r\n"),
            ("GET a", "$1\r\n2\r\n"),
        ],
    );
    // WATCH: a change by another client between WATCH and EXEC aborts.
    check(
        &mut s,
        &[
            ("WATCH a", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("INCR a", "+QUEUED\r\n"),
        ],
    );
    // Another write to `a`, as another client would make it.
    s.store_for_tests().put(b"a", b"100", None, false).unwrap();
    check(&mut s, &[("EXEC", "*-1\r\n"), ("GET a", "$3\r\n100\r\n")]);
    // Unchanged: EXEC runs.
    check(
        &mut s,
        &[
            ("WATCH a", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("EXEC", "*1\r\n:101\r\n"),
        ],
    );
}

#[test]
fn keys_of_several_regions_are_refused_where_atomicity_needs_one() {
    let mut s = session(64);
    // Find two keys in different regions.
    let mut other = None;
    for i in 0..1000 {
        let k = format!("k{i}");
        if s.store_for_tests().region_of(k.as_bytes()) != s.store_for_tests().region_of(b"k0") {
            other = Some(k);
            break;
        }
    }
    let other = other.expect("64 regions split 1000 keys");
    run(&mut s, "SET k0 v");
    assert_eq!(
        run(&mut s, &format!("RENAME k0 {other}")),
        format!("-{}\r\n", crate::session::CROSSSLOT)
    );
    run(&mut s, "MULTI");
    run(&mut s, "SET k0 1");
    run(&mut s, &format!("SET {other} 2"));
    assert_eq!(
        run(&mut s, "EXEC"),
        format!("-{}\r\n", crate::session::CROSSSLOT)
    );
    assert_eq!(run(&mut s, "GET k0"), "$1\r\nv\r\n");
    // MSET and DEL are served per region.
    assert_eq!(run(&mut s, &format!("MSET k0 a {other} b")), "+OK\r\n");
    assert_eq!(run(&mut s, &format!("DEL k0 {other}")), ":2\r\n");
}

#[test]
fn a_read_modify_write_is_retried_when_a_check_fails() {
    use crate::store::{Store, StoreResult, Stored};
    use corekv_engine::{TxnCheck, TxnOp};
    /// Fails the first transaction (another writer got in first).
    struct Racy {
        inner: MemStore,
        raced: bool,
    }
    impl Store for Racy {
        fn get(&mut self, k: &[u8]) -> StoreResult<Option<Stored>> {
            self.inner.get(k)
        }
        fn put(&mut self, k: &[u8], v: &[u8], t: Option<u64>, nx: bool) -> StoreResult<bool> {
            self.inner.put(k, v, t, nx)
        }
        fn delete(&mut self, k: &[u8]) -> StoreResult<bool> {
            self.inner.delete(k)
        }
        fn incr(&mut self, k: &[u8], d: i64) -> StoreResult<i64> {
            self.inner.incr(k, d)
        }
        fn txn(&mut self, c: Vec<TxnCheck>, o: Vec<TxnOp>) -> StoreResult<bool> {
            if !self.raced {
                self.raced = true;
                self.inner.put(b"k", b"other", None, false)?;
            }
            self.inner.txn(c, o)
        }
        fn put_many(&mut self, i: &[(Bytes, Bytes)]) -> StoreResult<()> {
            self.inner.put_many(i)
        }
        fn region_of(&mut self, k: &[u8]) -> u64 {
            self.inner.region_of(k)
        }
        fn scan(
            &mut self,
            f: u64,
            l: u32,
            k: bool,
        ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
            self.inner.scan(f, l, k)
        }
    }
    let cfg = test_config();
    let store = Racy {
        inner: MemStore::new(1),
        raced: false,
    };
    let mut s = Session::new(Shared::new(cfg, 0), Box::new(store), "test".into());
    run(&mut s, "SET k v");
    // The APPEND read "v", lost the race to "other", read again and
    // appended to what was there then.
    assert_eq!(run(&mut s, "APPEND k !"), ":6\r\n");
    assert_eq!(run(&mut s, "GET k"), "$6\r\nother!\r\n");
}

#[test]
fn config_patterns_match_like_globs_and_hostile_ones_cost_nothing() {
    use crate::session::glob;
    assert!(glob(b"*", b"save"));
    assert!(glob(b"SAVE", b"save"));
    assert!(glob(b"max*", b"maxmemory-policy"));
    assert!(glob(b"*memory*", b"maxmemory"));
    assert!(glob(b"s?ve", b"save"));
    assert!(!glob(b"s?ve", b"sve"));
    assert!(!glob(b"max*x", b"maxmemory"));
    assert!(glob(b"a*b*c", b"axxbyyc"));
    assert!(!glob(b"a*b*c", b"axxbyy"));
    // Exponential for a naive backtracking matcher; instant here.
    let mut hostile = vec![b'*'; 64 << 10];
    hostile.push(b'#');
    assert!(!glob(&hostile, b"proto-max-bulk-len"));
    let mut s = session(1);
    let stars = format!("CONFIG GET {}#", "*".repeat(40));
    assert_eq!(run(&mut s, &stars), "*0\r\n");
}

#[test]
fn hostile_arguments_are_refused_before_anything_is_built() {
    let mut s = session(1);
    let too_big = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
    check(
        &mut s,
        &[
            ("SETRANGE k 9223372036854775000 x", too_big),
            ("SETRANGE k 600000000 x", too_big),
            ("SETRANGE k 1048575 x", ":1048576\r\n"),
            ("APPEND k x", too_big),
            (
                "SETEX k 9999999999999 v",
                "-ERR invalid expire time in 'setex' command\r\n",
            ),
            ("MULTI", "+OK\r\n"),
            ("SETEX k 9999999999999 v", "+QUEUED\r\n"),
            ("SELECT 0", "+QUEUED\r\n"),
            ("PING", "+QUEUED\r\n"),
            (
                "EXEC",
                "*3\r\n-ERR invalid expire time in 'setex' command\r\n+OK\r\n+PONG\r\n",
            ),
            ("SET f 0.1", "+OK\r\n"),
            ("INCRBYFLOAT f 0.2", "$3\r\n0.3\r\n"),
        ],
    );
}

#[test]
fn a_value_the_cluster_reads_as_live_is_live_whatever_the_node_clock_says() {
    use crate::store::{Store, StoreResult, Stored};
    use corekv_engine::{TxnCheck, TxnOp};
    /// The region's clock is behind this node's: it still serves a value
    /// whose expiry this node's clock has passed.
    struct Behind {
        committed: Vec<(Vec<TxnCheck>, Vec<TxnOp>)>,
    }
    impl Store for Behind {
        fn get(&mut self, _: &[u8]) -> StoreResult<Option<Stored>> {
            Ok(Some(Stored {
                value: Bytes::from_static(b"live"),
                version: 7,
                expire_at_ms: 1,
            }))
        }
        fn put(&mut self, _: &[u8], _: &[u8], _: Option<u64>, _: bool) -> StoreResult<bool> {
            unreachable!("APPEND is a read-modify-write")
        }
        fn delete(&mut self, _: &[u8]) -> StoreResult<bool> {
            unreachable!()
        }
        fn incr(&mut self, _: &[u8], _: i64) -> StoreResult<i64> {
            unreachable!()
        }
        fn txn(&mut self, c: Vec<TxnCheck>, o: Vec<TxnOp>) -> StoreResult<bool> {
            self.committed.push((c, o));
            Ok(true)
        }
        fn put_many(&mut self, _: &[(Bytes, Bytes)]) -> StoreResult<()> {
            unreachable!()
        }
        fn region_of(&mut self, _: &[u8]) -> u64 {
            1
        }
        fn scan(
            &mut self,
            _: u64,
            _: u32,
            _: bool,
        ) -> StoreResult<(Vec<(Bytes, Stored)>, Option<u64>)> {
            unreachable!()
        }
    }
    let mut store = Behind {
        committed: Vec::new(),
    };
    let reply = crate::view::atomically(
        &mut store,
        &[Bytes::from_static(b"k")],
        (false, Default::default()),
        crate::store::now_ms,
        |v| {
            crate::view::Attempt::Commit(strings::append(
                v,
                &[
                    Bytes::new(),
                    Bytes::from_static(b"k"),
                    Bytes::from_static(b"!"),
                ],
            ))
        },
    )
    .unwrap();
    assert_eq!(reply, Reply::Int(5), "appended to the live value");
    let (checks, ops) = &store.committed[0];
    assert_eq!(checks[0].version, Some(7), "checked at the version read");
    assert!(matches!(&ops[0], TxnOp::Put { value, .. } if value.as_ref() == b"live!"));
}

#[test]
fn a_pipeline_answers_in_order_and_stops_at_quit() {
    let mut s = session(1);
    let cmds = pipeline(&[
        "SET a 1", "GET a", "GET a", "GET b", "INCR a", "GET a", "QUIT", "SET a 9",
    ]);
    let mut out = Vec::new();
    assert_eq!(s.handle_pipeline(&cmds, &mut out, usize::MAX), 7);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "+OK\r\n$1\r\n1\r\n$1\r\n1\r\n$-1\r\n:2\r\n$1\r\n2\r\n+OK\r\n"
    );
    assert!(s.closing);
    assert_eq!(
        s.store_for_tests()
            .get(b"a")
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"2"
    );
}

#[test]
fn a_pipeline_switching_protocols_encodes_each_reply_in_its_own() {
    let mut s = session(1);
    let cmds = pipeline(&["GET none", "HELLO 3", "GET none", "RESET", "GET none"]);
    let mut out = Vec::new();
    assert_eq!(s.handle_pipeline(&cmds, &mut out, usize::MAX), 5);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("$-1\r\n%7\r\n"), "{text}");
    assert!(text.ends_with("_\r\n+RESET\r\n$-1\r\n"), "{text}");
}

#[test]
fn a_pipeline_stops_at_its_reply_budget_so_replies_go_out_first() {
    let mut s = session(1);
    let cmds = pipeline(&["SET a 1", "PING", "PING", "PING"]);
    let mut out = Vec::new();
    // A budget of one byte: one command at a time.
    assert_eq!(s.handle_pipeline(&cmds, &mut out, 1), 1);
    assert_eq!(out, b"+OK\r\n");
    assert_eq!(s.handle_pipeline(&cmds[1..], &mut out, 1), 1);
}

#[test]
fn scan_keys_dbsize_randomkey_and_flushdb_walk_every_key_once() {
    let mut s = session(8);
    for i in 0..250 {
        run(&mut s, &format!("SET user:{i} v"));
    }
    for i in 0..20 {
        run(&mut s, &format!("SET other:{i} v"));
    }
    assert_eq!(run(&mut s, "DBSIZE"), ":270\r\n");
    run(&mut s, "EXPIRE user:1 100");
    assert!(run(&mut s, "INFO keyspace").contains("db0:keys=270,expires=1,avg_ttl=0\r\n"));
    // SCAN from 0 until 0: every key once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let args = split_args(format!("SCAN {cursor} MATCH user:* COUNT 7").as_bytes()).unwrap();
        let Reply::Array(parts) = s.handle(args) else {
            panic!("SCAN answers an array")
        };
        let (Reply::Bulk(next), Reply::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!("cursor and keys")
        };
        for k in keys {
            let Reply::Bulk(k) = k else { panic!() };
            assert!(k.starts_with(b"user:"));
            assert!(seen.insert(k.clone()), "{k:?} twice");
        }
        calls += 1;
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 250);
    assert!(calls > 10, "COUNT pages the scan ({calls} calls)");
    let Reply::Array(all) = s.handle(split_args(b"KEYS other:*").unwrap()) else {
        panic!()
    };
    assert_eq!(all.len(), 20);
    assert_eq!(run(&mut s, "KEYS nothing*"), "*0\r\n");
    assert_eq!(run(&mut s, "SCAN x"), "-ERR invalid cursor\r\n");
    assert_eq!(run(&mut s, "SCAN 0 COUNT 0"), "-ERR syntax error\r\n");
    assert!(run(&mut s, "RANDOMKEY").contains(':'));
    assert_eq!(run(&mut s, "FLUSHDB"), "+OK\r\n");
    assert_eq!(run(&mut s, "DBSIZE"), ":0\r\n");
    assert_eq!(run(&mut s, "RANDOMKEY"), "$-1\r\n");
    assert_eq!(run(&mut s, "SCAN 0"), "*2\r\n$1\r\n0\r\n*0\r\n");
}

/// A session on a node with authentication on: users `root` (admin) and
/// `app` (`write:cfg:`); returns their tokens.
fn session_with_users() -> (Session, String, String) {
    use corekv_net::auth::{AuthTable, Gate, Grant, User};
    let (root, root_token) = User::new("root", vec![Grant::Admin]).unwrap();
    let (app, app_token) = User::new("app", vec![Grant::Write(b"cfg:".to_vec())]).unwrap();
    let table = AuthTable {
        enabled: true,
        users: vec![app, root],
    };
    let mut cfg = test_config();
    cfg.gate = std::sync::Arc::new(Gate::new(None, false, Some(table)));
    let s = Session::new(
        Shared::new(cfg, 7301),
        Box::new(MemStore::new(2)),
        "test".into(),
    );
    (s, root_token, app_token)
}

#[test]
fn with_authentication_on_commands_wait_for_a_login_and_keep_to_its_roles() {
    let (mut s, root, app) = session_with_users();
    check(
        &mut s,
        &[
            (
                "GET cfg:a",
                "-NOAUTH Authentication required (AUTH user token).\r\n",
            ),
            (
                "PING",
                "-NOAUTH Authentication required (AUTH user token).\r\n",
            ),
            (
                "AUTH app wrong",
                "-WRONGPASS invalid user name or token, or the user does not exist\r\n",
            ),
            (
                "AUTH nobody wrong",
                "-WRONGPASS invalid user name or token, or the user does not exist\r\n",
            ),
            (&format!("AUTH app {app}"), "+OK\r\n"),
            ("SET cfg:a 1", "+OK\r\n"),
            ("GET cfg:a", "$1\r\n1\r\n"),
            // Patterns under its prefix: served, filtered by the store.
            ("KEYS cfg:*", "*1\r\n$5\r\ncfg:a\r\n"),
            ("SCAN 0 MATCH cfg:a COUNT 1000", "*2\r\n$1\r\n0\r\n*1\r\n$5\r\ncfg:a\r\n"),
            (
                "KEYS *",
                "-NOPERM user 'app' may not run 'keys' (it needs read:*, or a pattern under a prefix it may read)\r\n",
            ),
            (
                "KEYS c*",
                "-NOPERM user 'app' may not run 'keys' (it needs read:*, or a pattern under a prefix it may read)\r\n",
            ),
            // The pattern checked is the one used: the last MATCH.
            (
                "SCAN 0 MATCH cfg:* MATCH *",
                "-NOPERM user 'app' may not run 'scan' (it needs read:*, or a pattern under a prefix it may read)\r\n",
            ),
            ("SCAN 0 MATCH * MATCH cfg:a", "*2\r\n$1\r\n0\r\n*1\r\n$5\r\ncfg:a\r\n"),
            (
                "SCAN 0 MATCH other*",
                "-NOPERM user 'app' may not run 'scan' (it needs read:*, or a pattern under a prefix it may read)\r\n",
            ),
            (
                "SET other 1",
                "-NOPERM user 'app' may not write 'other'\r\n",
            ),
            ("GET other", "-NOPERM user 'app' may not read 'other'\r\n"),
            (
                "MSET cfg:b 1 other 2",
                "-NOPERM user 'app' may not write 'other'\r\n",
            ),
            ("GET cfg:b", "$-1\r\n"),
            (
                "DBSIZE",
                "-NOPERM user 'app' may not run 'dbsize' (it needs read:*)\r\n",
            ),
            (
                "FLUSHDB",
                "-NOPERM user 'app' may not run 'flushdb' (it needs write:*)\r\n",
            ),
            ("MULTI", "+OK\r\n"),
            ("SET cfg:c 1", "+QUEUED\r\n"),
            (
                "SET other 1",
                "-NOPERM user 'app' may not write 'other'\r\n",
            ),
            (
                "EXEC",
                "-EXECABORT Transaction discarded because of previous errors.\r\n",
            ),
            ("GET cfg:c", "$-1\r\n"),
            ("RESET", "+RESET\r\n"),
            (
                "GET cfg:a",
                "-NOAUTH Authentication required (AUTH user token).\r\n",
            ),
        ],
    );
    // HELLO: refused without a login, logs in with its AUTH option.
    let hello = run(&mut s, "HELLO 3");
    assert!(hello.starts_with("-NOAUTH"), "{hello}");
    let hello = run(&mut s, &format!("HELLO 3 AUTH root {root}"));
    assert!(hello.starts_with("%7"), "{hello}");
    assert_eq!(run(&mut s, "SET other 1"), "+OK\r\n");
    assert_eq!(run(&mut s, "DBSIZE"), ":2\r\n");
}

#[test]
fn a_pipelined_run_refuses_only_the_commands_the_login_may_not_run() {
    let (mut s, _, app) = session_with_users();
    assert_eq!(run(&mut s, &format!("AUTH app {app}")), "+OK\r\n");
    let cmds = pipeline(&[
        "SET cfg:a 1",
        "SET cfg:b 2",
        "SET other 3",
        "SET cfg:c 4",
        "GET cfg:a",
        "GET other",
        "GET cfg:c",
    ]);
    let mut out = Vec::new();
    assert_eq!(s.handle_pipeline(&cmds, &mut out, usize::MAX), 7);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "+OK\r\n+OK\r\n-NOPERM user 'app' may not write 'other'\r\n+OK\r\n\
         $1\r\n1\r\n-NOPERM user 'app' may not read 'other'\r\n$1\r\n4\r\n"
    );
    assert!(s.store_for_tests().get(b"other").unwrap().is_none());
}
