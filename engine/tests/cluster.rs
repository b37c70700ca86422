//! Multi-node behaviour of region replicas in the deterministic simulator.

use std::collections::HashSet;

use bytes::Bytes;
use corekv_engine::sim::{CrashPoint, SimCluster, SimOptions};
use corekv_engine::{Condition, Config, Consistency, Error, Response, WriteOutcome, WriteRequest};
use raft::StateRole;

fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> WriteRequest {
    WriteRequest::Put {
        key: b(key),
        value: b(value),
        ttl_ms: None,
        condition: Condition::None,
    }
}

fn cluster(regions: u64, seed: u64, config: Config) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 3,
            spare_nodes: 0,
            regions,
            seed,
            config,
            ..SimOptions::default()
        },
    )
    .unwrap();
    (dir, c)
}

fn must_elect(c: &mut SimCluster, region: u64) -> u64 {
    assert!(
        c.run_until(3000, |c| c.leader(region).is_some()).unwrap(),
        "no leader for region {region} within 3 s (seed {})",
        c.seed()
    );
    c.leader(region).unwrap()
}

fn must_put(c: &mut SimCluster, key: &str, value: &str) -> u64 {
    match c.write(put(key, value), 5000).unwrap() {
        WriteOutcome::Written { version } => version,
        other => panic!("unexpected {other:?}"),
    }
}

fn must_get(c: &mut SimCluster, key: &str) -> Option<Bytes> {
    c.get(key.as_bytes(), Consistency::Linearizable, 5000)
        .unwrap()
        .map(|v| v.value)
}

#[test]
fn elects_one_leader_per_region() {
    let (_d, mut c) = cluster(4, 7, Config::default());
    for r in 1..=4 {
        let leader = must_elect(&mut c, r);
        let term = c.status(leader, r).unwrap().term;
        let leaders: Vec<_> = c
            .node_ids()
            .to_vec()
            .into_iter()
            .filter(|&n| {
                let s = c.status(n, r).unwrap();
                s.role == StateRole::Leader && s.term == term
            })
            .collect();
        assert_eq!(leaders, vec![leader], "region {r}");
    }
}

#[test]
fn replicates_ten_thousand_writes_to_every_replica() {
    let (_d, mut c) = cluster(2, 11, Config::default());
    must_elect(&mut c, 1);
    must_elect(&mut c, 2);
    // Pipeline: many proposals in flight per round.
    let mut pending = Vec::new();
    for i in 0..10_000u32 {
        let key = format!("key-{i}");
        let region = c.region_of(key.as_bytes());
        let leader = c.leader(region).unwrap();
        pending.push(c.propose(leader, put(&key, format!("value-{i}"))));
        if pending.len() == 500 {
            for id in pending.drain(..) {
                let r = c.wait(id, 5000).unwrap().expect("answered");
                assert!(matches!(
                    r.result,
                    Ok(Response::Write(WriteOutcome::Written { .. }))
                ));
            }
        }
    }
    for id in pending.drain(..) {
        let r = c.wait(id, 5000).unwrap().expect("answered");
        assert!(r.result.is_ok());
    }
    c.run_ms(500).unwrap();
    let reference = c.dump_data(1).unwrap();
    assert_eq!(reference.len(), 10_000);
    for n in [2, 3] {
        assert_eq!(c.dump_data(n).unwrap(), reference, "node {n} diverges");
    }
    assert_eq!(reference[&b"key-1234".to_vec()].value, b("value-1234"));
}

#[test]
fn isolated_leader_cannot_commit_or_read_and_a_new_leader_takes_over() {
    let (_d, mut c) = cluster(1, 3, Config::default());
    let old = must_elect(&mut c, 1);
    must_put(&mut c, "k", "v1");
    c.net.filters.isolated.insert(old);

    // The old leader accepts the proposal but can never commit it.
    let w = c.propose(old, put("k", "from-old-leader"));
    // A linearizable read on the old leader must not be answered with data.
    let r = c.read(old, b"k", Consistency::Linearizable);
    c.run_until(3000, |c| c.leader(1).is_some_and(|l| l != old))
        .unwrap();
    let new = c.leader(1).expect("new leader");
    assert_ne!(new, old);
    must_put(&mut c, "k", "v2");
    c.run_ms(1000).unwrap();
    let w_reply = c.take_reply(w);
    assert!(
        !matches!(w_reply, Some(corekv_engine::Reply { result: Ok(_), .. })),
        "isolated leader committed: {w_reply:?}"
    );
    let r_reply = c.take_reply(r);
    assert!(
        !matches!(r_reply, Some(corekv_engine::Reply { result: Ok(_), .. })),
        "isolated leader served a read: {r_reply:?}"
    );
    // Check-quorum: the old leader stepped down.
    assert_ne!(c.status(old, 1).unwrap().role, StateRole::Leader);

    c.net.filters.isolated.clear();
    c.run_ms(1000).unwrap();
    assert_eq!(must_get(&mut c, "k"), Some(b("v2")));
    assert_eq!(c.local_get(old, b"k").unwrap().unwrap().value, b("v2"));
}

#[test]
fn minority_side_cannot_write_and_replicas_converge_after_healing() {
    let (_d, mut c) = cluster(1, 5, Config::default());
    let leader = must_elect(&mut c, 1);
    must_put(&mut c, "a", "1");
    // Leader alone on the minority side.
    let others: HashSet<u64> = c
        .node_ids()
        .iter()
        .copied()
        .filter(|&n| n != leader)
        .collect();
    c.net.filters.partition = vec![HashSet::from([leader]), others.clone()];
    let ids: Vec<u64> = (0..20)
        .map(|i| c.propose(leader, put(format!("minority-{i}"), "x")))
        .collect();
    c.run_until(3000, |c| c.leader(1).is_some_and(|l| others.contains(&l)))
        .unwrap();
    for i in 0..20 {
        must_put(&mut c, &format!("majority-{i}"), "y");
    }
    c.run_ms(500).unwrap();
    for id in &ids {
        if let Some(r) = c.take_reply(*id) {
            assert!(r.result.is_err(), "minority write succeeded: {r:?}");
        }
    }
    c.net.filters.partition.clear();
    c.run_ms(2000).unwrap();
    let reference = c.dump_data(1).unwrap();
    for n in [2, 3] {
        assert_eq!(c.dump_data(n).unwrap(), reference, "node {n}");
    }
    assert!(reference.keys().all(|k| !k.starts_with(b"minority")));
    assert_eq!(reference.len(), 21);
}

#[test]
fn restart_recovers_term_log_and_data() {
    let (_d, mut c) = cluster(1, 9, Config::default());
    must_elect(&mut c, 1);
    for i in 0..100 {
        must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }
    c.run_ms(200).unwrap();
    let before: Vec<_> = [1, 2, 3].iter().map(|&n| c.status(n, 1).unwrap()).collect();
    for n in [1, 2, 3] {
        c.crash(n);
    }
    for n in [1, 2, 3] {
        c.restart(n).unwrap();
    }
    for (i, n) in [1u64, 2, 3].iter().enumerate() {
        let s = c.status(*n, 1).unwrap();
        assert_eq!(s.term, before[i].term, "term of node {n}");
        assert_eq!(s.last_index, before[i].last_index, "log of node {n}");
        assert_eq!(
            s.applied_index, before[i].applied_index,
            "applied of node {n}"
        );
    }
    must_elect(&mut c, 1);
    assert_eq!(must_get(&mut c, "k42"), Some(b("v42")));
    must_put(&mut c, "after", "restart");
    assert_eq!(must_get(&mut c, "after"), Some(b("restart")));
}

fn small_log_config() -> Config {
    Config {
        log_compact_entries: 200,
        log_retain_entries: 50,
        entry_cache_entries: 64,
        ..Config::default()
    }
}

#[test]
fn lagging_node_catches_up_by_snapshot() {
    let (_d, mut c) = cluster(1, 13, small_log_config());
    let leader = must_elect(&mut c, 1);
    let lagging = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
    for i in 0..50 {
        must_put(&mut c, &format!("old-{i}"), "before");
    }
    c.run_ms(100).unwrap();
    assert!(c.local_get(lagging, b"old-7").unwrap().is_some());
    c.crash(lagging);
    // While it is down these keys are deleted: the snapshot must remove them.
    for i in 0..50 {
        let del = WriteRequest::Delete {
            key: b(format!("old-{i}")),
            if_version: None,
        };
        assert_eq!(
            c.write(del, 5000).unwrap(),
            WriteOutcome::Deleted { existed: true }
        );
    }
    for i in 0..1500 {
        must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }
    c.run_ms(200).unwrap();
    let s = c.status(leader, 1).unwrap();
    assert!(
        s.first_index > 1000,
        "leader compacted past the lagging node ({s:?})"
    );
    c.restart(lagging).unwrap();
    let before = c.status(lagging, 1).unwrap();
    assert!(before.last_index < s.first_index, "it needs a snapshot");
    assert!(c
        .run_until(5000, |c| c.status(lagging, 1).unwrap().applied_index
            >= c.status(leader, 1).unwrap().applied_index)
        .unwrap());
    let after = c.status(lagging, 1).unwrap();
    assert!(
        after.first_index > before.last_index + 1,
        "log restarted from a snapshot: {after:?}"
    );
    assert_eq!(c.dump_data(lagging).unwrap(), c.dump_data(leader).unwrap());
    assert_eq!(c.local_get(lagging, b"old-7").unwrap(), None);
    // And it keeps replicating normally afterwards.
    must_put(&mut c, "post", "snap");
    c.run_ms(200).unwrap();
    assert_eq!(
        c.local_get(lagging, b"post").unwrap().unwrap().value,
        b("snap")
    );
}

#[test]
fn change_history_is_the_same_on_every_replica_and_bounded() {
    let cfg = Config {
        watch_history_entries: 200,
        ..small_log_config()
    };
    let (_d, mut c) = cluster(1, 29, cfg);
    let leader = must_elect(&mut c, 1);
    let lagging = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
    for i in 0..100 {
        must_put(&mut c, &format!("k{}", i % 10), &format!("v{i}"));
    }
    let del = WriteRequest::Delete {
        key: b("k3"),
        if_version: None,
    };
    c.write(del, 5000).unwrap();
    c.run_ms(200).unwrap();
    let (_, on_leader) = c.history(leader, 1, 0).unwrap();
    assert_eq!(on_leader.len(), 101, "one change per write");
    assert_eq!(
        on_leader.last().unwrap().kind,
        corekv_engine::watch::ChangeKind::Delete
    );
    for n in c.node_ids().to_vec() {
        assert_eq!(c.history(n, 1, 0).unwrap().1, on_leader, "node {n}");
    }
    // Versions are the data's versions.
    let k1 = c.local_get(leader, b"k1").unwrap().unwrap();
    let last_k1 = on_leader
        .iter()
        .rev()
        .find(|ch| &ch.key[..] == b"k1")
        .unwrap();
    assert_eq!((last_k1.version, &last_k1.value), (k1.version, &k1.value));

    // A replica that misses a lot and is restored from a snapshot gets the
    // history the snapshot carries (its newest part, so that a watch can
    // resume there from before the snapshot); afterwards it records like
    // the others.
    c.crash(lagging);
    for i in 0..1500 {
        must_put(&mut c, &format!("k{}", i % 10), &format!("w{i}"));
    }
    c.restart(lagging).unwrap();
    assert!(c
        .run_until(5000, |c| c.status(lagging, 1).unwrap().applied_index
            >= c.status(leader, 1).unwrap().applied_index)
        .unwrap());
    assert!(c.peer_counters(lagging, 1).unwrap().snapshots_applied > 0);
    let snapshot_index = c.status(lagging, 1).unwrap().first_index - 1;
    let (snap_floor, _) = c.history(lagging, 1, 0).unwrap();
    assert!(
        snap_floor < snapshot_index,
        "history from {snap_floor}, before the snapshot at {snapshot_index}"
    );
    must_put(&mut c, "after", "snap");
    c.run_ms(200).unwrap();
    let (_, tail_lagging) = c.history(lagging, 1, snap_floor).unwrap();
    let (leader_floor, tail_leader) = c.history(leader, 1, snap_floor).unwrap();
    assert!(
        snap_floor >= leader_floor,
        "no more history than the leader's"
    );
    assert_eq!(tail_lagging, tail_leader);
    assert_eq!(tail_leader.last().unwrap().value, b("snap"));
    // Bounded: the leader keeps at most 200 + 50 indexes of history.
    let applied = c.status(leader, 1).unwrap().applied_index;
    assert!(
        applied - leader_floor <= 250,
        "floor {leader_floor}, applied {applied}"
    );
}

#[test]
fn a_preferred_leader_is_replicated_persisted_and_carried_by_snapshots() {
    use corekv_engine::admin::AdminCommand;
    let (_d, mut c) = cluster(1, 31, small_log_config());
    let leader = must_elect(&mut c, 1);
    let target = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
    let lagging = c
        .node_ids()
        .iter()
        .copied()
        .find(|&n| n != leader && n != target)
        .unwrap();
    // Only a voter replica of the region, and only through the leader.
    let bad = c.propose_admin(leader, 1, AdminCommand::PreferLeader { node_id: 77 });
    assert!(matches!(
        c.wait(bad, 1000).unwrap().unwrap().result,
        Err(Error::InvalidRequest(_))
    ));
    let follower = c.propose_admin(target, 1, AdminCommand::PreferLeader { node_id: target });
    assert!(matches!(
        c.wait(follower, 1000).unwrap().unwrap().result,
        Err(Error::NotLeader { .. })
    ));
    c.crash(lagging);
    let id = c.propose_admin(leader, 1, AdminCommand::PreferLeader { node_id: target });
    match c.wait(id, 3000).unwrap().unwrap().result {
        Ok(Response::Write(WriteOutcome::Written { .. })) => {}
        other => panic!("{other:?}"),
    }
    c.run_ms(100).unwrap();
    for n in [leader, target] {
        let r = c.region_meta(n, 1).unwrap();
        assert_eq!(r.peers[0].node_id, target, "node {n}: {r:?}");
        assert_eq!(r.peers.len(), 3);
    }
    // It survives a restart...
    c.crash(target);
    c.restart(target).unwrap();
    assert_eq!(c.region_meta(target, 1).unwrap().peers[0].node_id, target);
    // ...and reaches a replica that missed it through a snapshot.
    must_elect(&mut c, 1);
    for i in 0..1500 {
        must_put(&mut c, &format!("k{i}"), "v");
    }
    c.restart(lagging).unwrap();
    assert!(c
        .run_until(5000, |c| c.status(lagging, 1).unwrap().applied_index
            >= c.status(leader, 1).unwrap().applied_index)
        .unwrap());
    assert!(c.peer_counters(lagging, 1).unwrap().snapshots_applied > 0);
    assert_eq!(c.region_meta(lagging, 1).unwrap().peers[0].node_id, target);
}

#[test]
fn a_split_makes_two_regions_everywhere_and_no_replica_serves_the_other_half() {
    use corekv_engine::admin::{split_peers, AdminCommand};
    let (_d, mut c) = cluster(1, 37, Config::default());
    let leader = must_elect(&mut c, 1);
    let mut versions = Vec::new();
    for i in 0..200 {
        let v = match c
            .write(put(format!("k{i}"), format!("v{i}")), 5000)
            .unwrap()
        {
            WriteOutcome::Written { version } => version,
            o => panic!("{o:?}"),
        };
        versions.push(v);
    }
    let region = c.region_meta(leader, 1).unwrap();
    let mid = 1u64 << 63;
    // Bad split points are refused before raft.
    let bad = AdminCommand::Split {
        split_hash: 0,
        new_region_id: 77,
        new_peers: split_peers(&region, 77),
    };
    let id = c.propose_admin(leader, 1, bad);
    assert!(matches!(
        c.wait(id, 1000).unwrap().unwrap().result,
        Err(Error::InvalidRequest(_))
    ));
    // A key of the upper half, and a read of it queued on region 1 just
    // before the split: it must not be answered from region 1 after it.
    let upper = (0..200)
        .map(|i| format!("k{i}"))
        .find(|k| corekv_engine::route_hash(k.as_bytes()) >= mid)
        .unwrap();
    let lower = (0..200)
        .map(|i| format!("k{i}"))
        .find(|k| corekv_engine::route_hash(k.as_bytes()) < mid)
        .unwrap();
    let split = AdminCommand::Split {
        split_hash: mid,
        new_region_id: 77,
        new_peers: split_peers(&region, 77),
    };
    let id = c.propose_admin(leader, 1, split);
    let early_read = c.read_in(leader, 1, upper.as_bytes(), Consistency::Linearizable);
    let split_index = match c.wait(id, 3000).unwrap().unwrap().result {
        Ok(Response::Write(WriteOutcome::Written { version })) => version,
        other => panic!("{other:?}"),
    };
    match c.wait(early_read, 3000).unwrap().unwrap().result {
        // Served before the split applied: the value written before it.
        Ok(Response::Value(Some(v))) => assert!(v.version < split_index),
        Err(Error::EpochNotMatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(c.run_until(3000, |c| c.leader(77).is_some()).unwrap());
    for n in c.node_ids().to_vec() {
        let low = c.region_meta(n, 1).unwrap();
        let high = c.region_meta(n, 77).unwrap();
        assert_eq!((low.start_hash, low.end_hash), (0, mid), "node {n}");
        assert_eq!((high.start_hash, high.end_hash), (mid, 0), "node {n}");
        assert_eq!(low.epoch.version, region.epoch.version + 1);
        assert_eq!(high.epoch, low.epoch);
        assert!(c.status(n, 77).unwrap().applied_index >= split_index);
    }
    // Every key is still there, through its own region.
    for (i, version) in versions.iter().enumerate() {
        let v = c
            .get(format!("k{i}").as_bytes(), Consistency::Linearizable, 5000)
            .unwrap()
            .unwrap();
        assert_eq!((v.value, v.version), (b(format!("v{i}")), *version));
    }
    // Versions keep growing for keys that moved.
    let after = match c.write(put(&upper, "after"), 5000).unwrap() {
        WriteOutcome::Written { version } => version,
        o => panic!("{o:?}"),
    };
    assert!(after > split_index);
    // Region 1 refuses what is now region 77's, for writes and reads.
    let l1 = c.leader(1).unwrap();
    let w = c.propose_in(l1, 1, put(&upper, "wrong"));
    assert!(matches!(
        c.wait(w, 3000).unwrap().unwrap().result,
        Err(Error::EpochNotMatch { .. })
    ));
    let r = c.read_in(l1, 1, upper.as_bytes(), Consistency::Linearizable);
    assert!(matches!(
        c.wait(r, 3000).unwrap().unwrap().result,
        Err(Error::EpochNotMatch { .. })
    ));
    let r = c.read_in(
        c.leader(77).unwrap(),
        77,
        lower.as_bytes(),
        Consistency::Lease,
    );
    assert!(matches!(
        c.wait(r, 3000).unwrap().unwrap().result,
        Err(Error::EpochNotMatch { .. })
    ));
    // Both regions come back after a restart of every node.
    for n in c.node_ids().to_vec() {
        c.crash(n);
    }
    for n in c.node_ids().to_vec() {
        c.restart(n).unwrap();
    }
    must_elect(&mut c, 1);
    must_elect(&mut c, 77);
    let v = c
        .get(upper.as_bytes(), Consistency::Linearizable, 5000)
        .unwrap()
        .unwrap();
    assert_eq!((v.value, v.version), (b("after"), after));
    must_put(&mut c, &lower, "low");
}

#[test]
fn log_stays_bounded_under_sustained_writes() {
    let cfg = small_log_config();
    let bound = cfg.log_compact_entries + 100;
    let (_d, mut c) = cluster(1, 17, cfg);
    must_elect(&mut c, 1);
    let mut max_len = 0;
    for i in 0..5000 {
        must_put(&mut c, &format!("k{}", i % 100), &format!("v{i}"));
        if i % 50 == 0 {
            for n in [1, 2, 3] {
                let s = c.status(n, 1).unwrap();
                max_len = max_len.max(s.last_index + 1 - s.first_index);
            }
        }
    }
    assert!(
        max_len <= bound,
        "log grew to {max_len} entries (bound {bound})"
    );
    let s = c.status(1, 1).unwrap();
    assert!(s.last_index > 5000);
}

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
