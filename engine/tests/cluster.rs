//! Multi-node behaviour of region replicas in the deterministic simulator:
//! elections, replication, partitions, restarts, snapshots, history, splits,
//! bounded logs.

use std::collections::HashSet;

use corekv_engine::{Config, Consistency, Error, Response, WriteOutcome, WriteRequest};
use raft::StateRole;

mod common;
use common::*;

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
