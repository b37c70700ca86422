//! Writes and reads of region replicas in the deterministic simulator:
//! size limits, TTLs, conditions and counters, exactly-once apply across
//! crashes and retries, cached, lease and follower reads, active expiry.

use bytes::Bytes;
use corekv_engine::sim::{CrashPoint, SimCluster};
use corekv_engine::{
    Condition, Config, Consistency, Error, Expiry, Response, TxnCheck, TxnOp, WriteOutcome,
    WriteRequest,
};
use raft::StateRole;

mod common;
use common::*;

#[test]
fn oversize_key_and_value_are_refused_before_raft() {
    let (_d, mut c) = cluster(1, 19, Config::default());
    let leader = must_elect(&mut c, 1);
    let last = c.status(leader, 1).unwrap().last_index;
    let big_key = WriteRequest::Put {
        key: Bytes::from(vec![b'k'; 4097]),
        value: b("v"),
        ttl_ms: None,
        condition: Condition::None,
    };
    let id = c.propose(leader, big_key);
    let r = c.take_reply(id).expect("answered at once");
    assert!(matches!(
        r.result,
        Err(Error::KeyTooLarge {
            len: 4097,
            max: 4096
        })
    ));
    let big_value = put("k", vec![b'v'; (1 << 20) + 1]);
    let id = c.propose(leader, big_value);
    let r = c.take_reply(id).expect("answered at once");
    assert!(matches!(r.result, Err(Error::ValueTooLarge { .. })));
    let id = c.read(leader, &[], Consistency::Linearizable);
    assert!(matches!(
        c.take_reply(id).unwrap().result,
        Err(Error::KeyTooLarge { len: 0, .. })
    ));
    c.run_ms(100).unwrap();
    assert_eq!(
        c.status(leader, 1).unwrap().last_index,
        last,
        "nothing reached the log"
    );
}

#[test]
fn ttl_expiry_is_identical_on_every_replica() {
    let (_d, mut c) = cluster(1, 23, Config::default());
    must_elect(&mut c, 1);
    let w = WriteRequest::Put {
        key: b("session"),
        value: b("token"),
        ttl_ms: Some(1000),
        condition: Condition::None,
    };
    c.write(w, 5000).unwrap();
    c.run_ms(100).unwrap();
    let records: Vec<_> = [1, 2, 3]
        .iter()
        .map(|&n| c.dump_data(n).unwrap()[&b"session".to_vec()].clone())
        .collect();
    assert!(records[0].expire_at_ms > 0);
    assert!(records.iter().all(|r| r == &records[0]), "{records:?}");
    assert_eq!(must_get(&mut c, "session"), Some(b("token")));
    let expire_at = records[0].expire_at_ms;
    c.run_until(5000, |c| c.wall_ms() >= expire_at).unwrap();
    assert_eq!(must_get(&mut c, "session"), None, "expired value returned");
    for n in [1, 2, 3] {
        assert_eq!(c.local_get(n, b"session").unwrap(), None, "node {n}");
    }
    // Expiry counts as absent for conditions, identically on every replica.
    let again = WriteRequest::Put {
        key: b("session"),
        value: b("new"),
        ttl_ms: None,
        condition: Condition::IfAbsent,
    };
    assert!(matches!(
        c.write(again, 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
}

#[test]
fn conditional_writes_and_counters() {
    let (_d, mut c) = cluster(1, 29, Config::default());
    must_elect(&mut c, 1);
    let v1 = must_put(&mut c, "k", "a");
    let if_absent = WriteRequest::Put {
        key: b("k"),
        value: b("b"),
        ttl_ms: None,
        condition: Condition::IfAbsent,
    };
    assert_eq!(
        c.write(if_absent, 5000).unwrap(),
        WriteOutcome::ConditionFailed {
            current_version: Some(v1)
        }
    );
    let wrong_version = WriteRequest::Put {
        key: b("k"),
        value: b("b"),
        ttl_ms: None,
        condition: Condition::IfVersion(v1 + 100),
    };
    assert!(matches!(
        c.write(wrong_version, 5000).unwrap(),
        WriteOutcome::ConditionFailed { .. }
    ));
    let right_version = WriteRequest::Put {
        key: b("k"),
        value: b("b"),
        ttl_ms: None,
        condition: Condition::IfVersion(v1),
    };
    let WriteOutcome::Written { version: v2 } = c.write(right_version, 5000).unwrap() else {
        panic!()
    };
    assert!(v2 > v1, "versions grow");
    let cas = |expected: Option<&str>, value: &str| WriteRequest::Cas {
        key: b("k"),
        expected: expected.map(b),
        value: b(value),
        ttl_ms: None,
    };
    assert!(matches!(
        c.write(cas(Some("a"), "c"), 5000).unwrap(),
        WriteOutcome::ConditionFailed { .. }
    ));
    assert!(matches!(
        c.write(cas(Some("b"), "c"), 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    assert_eq!(must_get(&mut c, "k"), Some(b("c")));
    let del = |v: Option<u64>| WriteRequest::Delete {
        key: b("k"),
        if_version: v,
    };
    assert!(matches!(
        c.write(del(Some(1)), 5000).unwrap(),
        WriteOutcome::ConditionFailed { .. }
    ));
    assert_eq!(
        c.write(del(None), 5000).unwrap(),
        WriteOutcome::Deleted { existed: true }
    );
    assert_eq!(
        c.write(del(None), 5000).unwrap(),
        WriteOutcome::Deleted { existed: false }
    );
    for expect in [5, 10, 3] {
        let delta = if expect == 3 { -7 } else { 5 };
        let r = c
            .write(WriteRequest::Incr { key: b("n"), delta }, 5000)
            .unwrap();
        assert!(matches!(r, WriteOutcome::Counter { value, .. } if value == expect));
    }
    must_put(&mut c, "text", "abc");
    assert_eq!(
        c.write(
            WriteRequest::Incr {
                key: b("text"),
                delta: 1
            },
            5000
        )
        .unwrap(),
        WriteOutcome::NotANumber
    );
}

#[test]
fn transactions_write_all_or_nothing_and_identically_on_every_replica() {
    let (_d, mut c) = cluster(1, 31, Config::default());
    must_elect(&mut c, 1);
    let va = must_put(&mut c, "a", "1");
    must_put(&mut c, "gone", "x");
    let put = |k: &str, v: &str, expiry| TxnOp::Put {
        key: b(k),
        value: b(v),
        expiry,
    };
    let txn = |checks: Vec<TxnCheck>, ops| WriteRequest::Txn { checks, ops };
    let check = |k: &str, version| TxnCheck { key: b(k), version };
    // One failing check and nothing is written, not even the ops whose
    // own checks hold.
    let failing = txn(
        vec![check("a", Some(va)), check("b", Some(va))],
        vec![put("a", "2", Expiry::Never), put("b", "2", Expiry::Never)],
    );
    assert_eq!(
        c.write(failing, 5000).unwrap(),
        WriteOutcome::ConditionFailed {
            current_version: None
        }
    );
    assert_eq!(must_get(&mut c, "a"), Some(b("1")));
    assert_eq!(must_get(&mut c, "b"), None);
    // All checks hold: every op lands, in order, at one version.
    let far = c.wall_ms() + 3_600_000;
    let ok = txn(
        vec![check("a", Some(va)), check("b", None)],
        vec![
            put("a", "2", Expiry::Never),
            put("b", "first", Expiry::After(60_000)),
            put("b", "second", Expiry::At(far)),
            TxnOp::Delete { key: b("gone") },
        ],
    );
    let WriteOutcome::Written { version } = c.write(ok, 5000).unwrap() else {
        panic!("transaction not written")
    };
    assert!(version > va);
    assert_eq!(must_get(&mut c, "a"), Some(b("2")));
    assert_eq!(must_get(&mut c, "b"), Some(b("second")));
    assert_eq!(must_get(&mut c, "gone"), None);
    c.run_ms(100).unwrap();
    let dumps: Vec<_> = [1, 2, 3].iter().map(|&n| c.dump_data(n).unwrap()).collect();
    assert!(dumps.iter().all(|d| d == &dumps[0]), "replicas differ");
    let b_record = &dumps[0][&b"b".to_vec()];
    assert_eq!((b_record.version, b_record.expire_at_ms), (version, far));
    assert!(!dumps[0].contains_key(b"gone".as_slice()));
    // The same checks again fail now: the versions moved.
    let stale = txn(
        vec![check("a", Some(va))],
        vec![put("a", "3", Expiry::Never)],
    );
    assert_eq!(
        c.write(stale, 5000).unwrap(),
        WriteOutcome::ConditionFailed {
            current_version: Some(version)
        }
    );
    // An absolute expiry already past leaves the key unreadable.
    let past = txn(vec![], vec![put("a", "old", Expiry::At(1))]);
    assert!(matches!(
        c.write(past, 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    assert_eq!(must_get(&mut c, "a"), None);
    // Checks alone: a read of several keys validated at one point.
    let holds = txn(vec![check("a", None), check("b", Some(version))], vec![]);
    assert!(matches!(
        c.write(holds, 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    let fails = txn(vec![check("b", None)], vec![]);
    assert!(matches!(
        c.write(fails, 5000).unwrap(),
        WriteOutcome::ConditionFailed { .. }
    ));
    assert_eq!(must_get(&mut c, "b"), Some(b("second")));
}

#[test]
fn scan_pages_chained_from_zero_return_every_live_key_once_in_hash_order() {
    let (_d, mut c) = cluster(4, 37, Config::default());
    for r in 1..=4 {
        must_elect(&mut c, r);
    }
    let mut live = std::collections::BTreeSet::new();
    for i in 0..300 {
        let key = format!("k{i}");
        let ttl_ms = (i % 10 == 0).then_some(50);
        c.write(
            WriteRequest::Put {
                key: b(&key),
                value: b("v"),
                ttl_ms,
                condition: Condition::None,
            },
            5000,
        )
        .unwrap();
        if ttl_ms.is_none() {
            live.insert(key);
        }
    }
    // Large values: a page ends at its byte budget, not at its key limit.
    let big = "x".repeat(256 << 10);
    for i in 0..100 {
        must_put(&mut c, &format!("big{i}"), &big);
        live.insert(format!("big{i}"));
    }
    c.run_ms(200).unwrap(); // the keys with a ttl expire
    for (limit, keys_only) in [(7, true), (10_000, false)] {
        let mut seen = std::collections::BTreeSet::new();
        let (mut from, mut pages, mut last) = (0u64, 0, None);
        loop {
            let (items, next, read_index) = c.scan_page(from, limit, keys_only, 5000).unwrap();
            pages += 1;
            // The page holds what was applied up to its index, no more.
            assert!(
                items.iter().all(|(_, r)| r.version <= read_index),
                "a key newer than the page's index {read_index}"
            );
            for (k, r) in &items {
                let h = corekv_engine::route_hash(k);
                assert!(
                    h >= from && next.is_none_or(|n| h < n),
                    "key outside its page"
                );
                assert!(last.is_none_or(|l| (l, k.clone()) < (h, k.clone())));
                last = Some(h);
                assert_eq!(r.value.is_empty(), keys_only || k.is_empty());
                let k = String::from_utf8(k.to_vec()).unwrap();
                assert!(seen.insert(k.clone()), "{k} twice");
            }
            let bytes: usize = items.iter().map(|(k, r)| k.len() + r.value.len()).sum();
            assert!(
                bytes <= (4 << 20) + (256 << 10) + 4096,
                "page of {bytes} bytes"
            );
            match next {
                Some(n) => {
                    assert!(n > from, "pages move on");
                    from = n;
                }
                None => break,
            }
        }
        assert_eq!(
            seen, live,
            "limit {limit}: every live key once, no expired one"
        );
        assert!(
            pages >= 6,
            "limit {limit}: {pages} pages (4 regions, and budgets)"
        );
    }
    // A page read after a write was acknowledged is read at or past it
    // (what a client's cache relies on to prove it caught up).
    let version = must_put(&mut c, "after-the-scans", "v");
    let hash = corekv_engine::route_hash(b"after-the-scans");
    let (items, _, read_index) = c.scan_page(hash, 1, true, 5000).unwrap();
    assert!(
        read_index >= version,
        "read at {read_index}, write at {version}"
    );
    assert_eq!(&items[0].0[..], b"after-the-scans");
}

#[test]
fn crash_and_restart_never_applies_twice_or_skips() {
    let (_d, mut c) = cluster(1, 31, Config::default());
    must_elect(&mut c, 1);
    let mut acked = 0i64;
    for round in 0..5 {
        for _ in 0..40 {
            if let Ok(WriteOutcome::Counter { .. }) = c.write(
                WriteRequest::Incr {
                    key: b("ctr"),
                    delta: 1,
                },
                3000,
            ) {
                acked += 1;
            }
        }
        // Crash a different node each round, twice the whole cluster.
        let victims: Vec<u64> = if round % 2 == 0 {
            vec![1, 2, 3]
        } else {
            vec![round as u64 % 3 + 1]
        };
        for &v in &victims {
            c.crash(v);
        }
        for &v in &victims {
            c.restart(v).unwrap();
        }
        must_elect(&mut c, 1);
    }
    assert_eq!(acked, 200, "every increment was acknowledged");
    let got = must_get(&mut c, "ctr").unwrap();
    assert_eq!(got, b("200"));
    c.run_ms(300).unwrap();
    for n in [1, 2, 3] {
        assert_eq!(c.local_get(n, b"ctr").unwrap().unwrap().value, b("200"));
    }
}

#[test]
fn crash_between_apply_and_log_writes_applies_each_entry_once() {
    let (_d, mut c) = cluster(1, 41, Config::default());
    must_elect(&mut c, 1);
    let incr = || WriteRequest::Incr {
        key: b("ctr"),
        delta: 1,
    };
    let mut acked = 0i64;
    let mut unknown = 0i64;
    for round in 0..12u64 {
        let victim = round % 3 + 1;
        let point = if round % 2 == 0 {
            CrashPoint::AfterApplyWrite
        } else {
            CrashPoint::BeforeWrites
        };
        c.crash_in_next_apply(victim, point);
        for _ in 0..10 {
            match c.write(incr(), 2000) {
                Ok(WriteOutcome::Counter { .. }) => acked += 1,
                Err(Error::Timeout) => unknown += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            !c.crash_pending(),
            "round {round}: the planned crash struck"
        );
        if !c.is_up(victim) {
            c.restart(victim).unwrap();
        }
        must_elect(&mut c, 1);
    }
    c.run_ms(500).unwrap();
    let value: i64 = std::str::from_utf8(&must_get(&mut c, "ctr").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        value >= acked && value <= acked + unknown,
        "counter {value}: {acked} acknowledged, {unknown} unknown"
    );
    for n in [1, 2, 3] {
        let local: i64 = std::str::from_utf8(&c.local_get(n, b"ctr").unwrap().unwrap().value)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(local, value, "node {n}");
    }
}

#[test]
fn cached_reads_follow_every_write_and_delete() {
    let (_d, mut c) = cluster(1, 43, Config::default());
    must_elect(&mut c, 1);
    assert_eq!(must_get(&mut c, "k"), None, "absence is cached");
    for i in 0..5 {
        must_put(&mut c, "k", &format!("v{i}"));
        assert_eq!(must_get(&mut c, "k"), Some(b(format!("v{i}"))));
    }
    let del = WriteRequest::Delete {
        key: b("k"),
        if_version: None,
    };
    c.write(del, 5000).unwrap();
    assert_eq!(must_get(&mut c, "k"), None);
    let incr = WriteRequest::Incr {
        key: b("k"),
        delta: 3,
    };
    c.write(incr, 5000).unwrap();
    assert_eq!(must_get(&mut c, "k"), Some(b("3")));
}

#[test]
fn a_retried_write_is_applied_once_and_answered_with_its_first_outcome() {
    let (_d, mut c) = cluster(1, 47, small_log_config());
    let leader = must_elect(&mut c, 1);
    let tag = |seq, retry| {
        Some(corekv_engine::SessionTag {
            client_id: 99,
            seq,
            retry,
        })
    };
    let incr = || WriteRequest::Incr {
        key: b("n"),
        delta: 1,
    };
    let answer = |c: &mut SimCluster, node, (seq, retry)| {
        let id = c.propose_tagged(node, incr(), tag(seq, retry));
        c.wait(id, 3000).unwrap().expect("answered").result
    };
    let first = answer(&mut c, leader, (1, false));
    assert!(matches!(
        first,
        Ok(Response::Write(WriteOutcome::Counter { value: 1, .. }))
    ));
    // The reply was "lost": the client sends the same write again.
    let again = answer(&mut c, leader, (1, true));
    assert_eq!(
        format!("{again:?}"),
        format!("{first:?}"),
        "first outcome returned"
    );
    let second = answer(&mut c, leader, (2, false));
    assert!(matches!(
        second,
        Ok(Response::Write(WriteOutcome::Counter { value: 2, .. }))
    ));
    assert_eq!(must_get(&mut c, "n"), Some(b("2")));

    // The table survives a full restart...
    for n in [1, 2, 3] {
        c.crash(n);
    }
    for n in [1, 2, 3] {
        c.restart(n).unwrap();
    }
    let leader = must_elect(&mut c, 1);
    let retried = answer(&mut c, leader, (2, true));
    assert!(matches!(
        retried,
        Ok(Response::Write(WriteOutcome::Counter { value: 2, .. }))
    ));
    assert_eq!(must_get(&mut c, "n"), Some(b("2")));

    // ...and reaches a replica that catches up by snapshot.
    let lagging = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
    c.crash(lagging);
    for i in 0..1500 {
        must_put(&mut c, &format!("k{i}"), "v");
    }
    c.restart(lagging).unwrap();
    assert!(c
        .run_until(5000, |c| c.status(lagging, 1).unwrap().applied_index
            >= c.status(leader, 1).unwrap().applied_index)
        .unwrap());
    assert!(
        c.status(lagging, 1).unwrap().first_index > 1000,
        "caught up by snapshot"
    );
    assert_eq!(c.sessions(lagging, 1), c.sessions(leader, 1));
    assert_eq!(c.sessions(lagging, 1).unwrap().len(), 1);
}

#[test]
fn a_retry_after_the_region_forgot_its_client_is_never_applied_twice() {
    use corekv_engine::session::{CLIENTS_PER_REGION, SESSION_IDLE_MS};
    let (_d, mut c) = cluster(1, 53, Config::default());
    let leader = must_elect(&mut c, 1);
    let tag = |client_id, seq, retry| {
        Some(corekv_engine::SessionTag {
            client_id,
            seq,
            retry,
        })
    };
    let incr = |key: &str| WriteRequest::Incr {
        key: b(key),
        delta: 1,
    };
    let answer = |c: &mut SimCluster, key: &str, t| {
        let id = c.propose_tagged(c.leader(1).unwrap(), incr(key), t);
        c.wait(id, 5000).unwrap().expect("answered").result
    };
    assert!(matches!(
        answer(&mut c, "n", tag(99, 1, false)),
        Ok(Response::Write(WriteOutcome::Counter { value: 1, .. }))
    ));
    // As many other clients write to the region: client 99 is forgotten.
    let mut last = 0;
    for client in 1000..1000 + CLIENTS_PER_REGION as u64 {
        last = c.propose_tagged(leader, incr("other"), tag(client, 1, false));
    }
    assert!(c.wait(last, 20_000).unwrap().unwrap().result.is_ok());
    assert!(c.sessions(leader, 1).unwrap().len() <= CLIENTS_PER_REGION);
    // Its write's answer was lost; the retry must not count twice.
    let retried = answer(&mut c, "n", tag(99, 1, true));
    assert!(
        matches!(retried, Err(Error::Timeout)),
        "a retry of a forgotten write: {retried:?}"
    );
    assert_eq!(must_get(&mut c, "n"), Some(b("1")));

    // The same after the client was idle too long (region time).
    assert!(matches!(
        answer(&mut c, "m", tag(7, 1, false)),
        Ok(Response::Write(WriteOutcome::Counter { value: 1, .. }))
    ));
    c.run_ms(SESSION_IDLE_MS + 1000).unwrap();
    must_put(&mut c, "clock", "moves");
    let retried = answer(&mut c, "m", tag(7, 1, true));
    assert!(matches!(retried, Err(Error::Timeout)), "{retried:?}");
    assert_eq!(must_get(&mut c, "m"), Some(b("1")));
}

#[test]
fn lease_reads_stop_when_the_lease_cannot_be_renewed() {
    let (_d, mut c) = cluster(1, 37, Config::default());
    let leader = must_elect(&mut c, 1);
    must_put(&mut c, "k", "v");
    // Establish the lease with one lease read.
    assert_eq!(
        c.get(b"k", Consistency::Lease, 2000)
            .unwrap()
            .unwrap()
            .value,
        b("v")
    );
    // Within the lease a lease read needs no network at all.
    c.net.filters.isolated.insert(leader);
    let id = c.read(leader, b"k", Consistency::Lease);
    c.tick().unwrap();
    let r = c.take_reply(id).expect("served from the lease");
    assert!(matches!(r.result, Ok(Response::Value(Some(_)))));
    // After the lease ran out the isolated leader answers none.
    c.run_ms(c.config().election_timeout_ms()).unwrap();
    let id = c.read(leader, b"k", Consistency::Lease);
    c.run_ms(500).unwrap();
    if let Some(r) = c.take_reply(id) {
        assert!(r.result.is_err(), "stale lease read: {r:?}");
    }
}

fn follower_read(
    c: &mut SimCluster,
    node: u64,
    key: &str,
    max_ms: u64,
) -> Option<corekv_engine::Reply> {
    let id = c.read(node, key.as_bytes(), Consistency::Follower);
    c.wait(id, max_ms).unwrap()
}

fn value_of(reply: &Option<corekv_engine::Reply>) -> Option<Bytes> {
    match reply {
        Some(corekv_engine::Reply {
            result: Ok(corekv_engine::Response::Value(v)),
            ..
        }) => v.as_ref().map(|r| r.value.clone()),
        other => panic!("no value: {other:?}"),
    }
}

#[test]
fn follower_reads_see_every_acknowledged_write_across_a_leader_change() {
    let (_d, mut c) = cluster(1, 11, Config::default());
    let first = must_elect(&mut c, 1);
    let followers: Vec<u64> = c
        .node_ids()
        .iter()
        .copied()
        .filter(|&n| n != first)
        .collect();
    for i in 0..20 {
        let v = format!("v{i}");
        must_put(&mut c, "k", &v);
        // Right after the acknowledgement, on a follower that may not have
        // applied it yet: the read index makes it wait.
        let f = followers[i % 2];
        assert_eq!(
            value_of(&follower_read(&mut c, f, "k", 3000)),
            Some(b(&v)),
            "read {i} at {f}"
        );
    }
    // The leader goes away; a new one is elected and takes a write.
    c.net.filters.isolated.insert(first);
    c.run_until(3000, |c| c.leader(1).is_some_and(|l| l != first))
        .unwrap();
    let second = c.leader(1).unwrap();
    must_put(&mut c, "k", "after-change");
    let other = followers.iter().copied().find(|&n| n != second).unwrap();
    assert_eq!(
        value_of(&follower_read(&mut c, other, "k", 3000)),
        Some(b("after-change"))
    );
    // The old leader, back as a follower, also sees the latest write.
    c.net.filters.isolated.clear();
    // Until it hears from the new leader it answers NotLeader (retryable).
    let early = follower_read(&mut c, first, "k", 3000);
    assert!(
        matches!(
            &early,
            Some(corekv_engine::Reply {
                result: Err(Error::NotLeader { .. }),
                ..
            })
        ) || value_of(&early) == Some(b("after-change")),
        "{early:?}"
    );
    c.run_until(3000, |c| {
        c.status(first, 1)
            .is_some_and(|s| s.role == StateRole::Follower && s.leader_id != 0)
    })
    .unwrap();
    assert_eq!(
        value_of(&follower_read(&mut c, first, "k", 3000)),
        Some(b("after-change"))
    );
}

#[test]
fn a_cut_off_follower_refuses_follower_reads_instead_of_serving_stale_data() {
    let (_d, mut c) = cluster(1, 12, Config::default());
    let leader = must_elect(&mut c, 1);
    must_put(&mut c, "k", "old");
    c.run_ms(200).unwrap();
    let cut = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
    assert_eq!(c.local_get(cut, b"k").unwrap().unwrap().value, b("old"));
    c.net.filters.isolated.insert(cut);
    must_put(&mut c, "k", "new");
    // The cut-off replica still holds "old" locally, but must not serve it.
    let reply = follower_read(&mut c, cut, "k", 5000).expect("answered in time");
    match reply.result {
        Err(corekv_engine::Error::NotLeader { .. }) => {}
        other => panic!("a cut-off follower answered {other:?}"),
    }
    assert_eq!(c.local_get(cut, b"k").unwrap().unwrap().value, b("old"));
    // Healed, it serves the latest value.
    c.net.filters.isolated.clear();
    c.run_ms(500).unwrap();
    assert_eq!(
        value_of(&follower_read(&mut c, cut, "k", 3000)),
        Some(b("new"))
    );
}

#[test]
fn expired_keys_are_removed_from_every_replica_through_raft() {
    let (_d, mut c) = cluster(2, 13, Config::default());
    must_elect(&mut c, 1);
    must_elect(&mut c, 2);
    for i in 0..200 {
        let key = b(format!("session-{i}"));
        c.write(
            WriteRequest::Put {
                key,
                value: b("s"),
                ttl_ms: Some(300),
                condition: Condition::None,
            },
            3000,
        )
        .unwrap();
        must_put(&mut c, &format!("config-{i}"), "c");
    }
    let nodes = c.node_ids().to_vec();
    // Hidden from reads at once, and gone from storage within a few sweeps.
    c.run_ms(400).unwrap();
    assert_eq!(must_get(&mut c, "session-7"), None);
    c.run_ms(3000).unwrap();
    for &n in &nodes {
        let data = c.dump_data(n).unwrap();
        let sessions = data.keys().filter(|k| k.starts_with(b"session-")).count();
        let configs = data.keys().filter(|k| k.starts_with(b"config-")).count();
        assert_eq!((sessions, configs), (0, 200), "node {n}");
    }
    // Every replica applied the same removals (one leader per region swept).
    let removed: u64 = nodes
        .iter()
        .map(|&n| {
            (1..=2)
                .map(|r| c.peer_counters(n, r).map_or(0, |p| p.expired_keys))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(removed, 200 * nodes.len() as u64);
}

#[test]
fn sweeps_stop_while_a_region_has_no_expiring_keys_and_resume_with_a_ttl_write() {
    let (_d, mut c) = cluster(1, 14, Config::default());
    let leader = must_elect(&mut c, 1);
    for i in 0..50 {
        must_put(&mut c, &format!("plain-{i}"), "v");
    }
    let sweeps = |c: &SimCluster| c.peer_counters(leader, 1).unwrap().expire_sweeps;
    c.run_ms(3000).unwrap();
    let settled = sweeps(&c);
    c.run_ms(5000).unwrap();
    assert_eq!(
        sweeps(&c),
        settled,
        "kept sweeping a region without expiries"
    );
    c.write(
        WriteRequest::Put {
            key: b("short"),
            value: b("lived"),
            ttl_ms: Some(100),
            condition: Condition::None,
        },
        3000,
    )
    .unwrap();
    c.run_ms(3000).unwrap();
    assert!(sweeps(&c) > settled);
    for &n in c.node_ids() {
        assert!(c.local_get(n, b"short").unwrap().is_none());
        assert_eq!(c.peer_counters(n, 1).unwrap().expired_keys, 1, "node {n}");
    }
}
