//! Moving a region's replica to another node (learner, joint change,
//! removal) in the deterministic simulator.

use bytes::Bytes;
use corekv_engine::membership::PeerChange;
use corekv_engine::sim::{SimCluster, SimOptions};
use corekv_engine::{Condition, Config, Consistency, Error, PeerRole, WriteOutcome, WriteRequest};

fn put(key: &str, value: &str) -> WriteRequest {
    WriteRequest::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ttl_ms: None,
        condition: Condition::None,
    }
}

/// Three voters on nodes 1-3 and an empty node 4; one region.
fn cluster(seed: u64) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 3,
            spare_nodes: 1,
            regions: 1,
            seed,
            config: Config::default(),
            ..SimOptions::default()
        },
    )
    .unwrap();
    (dir, c)
}

fn leader(c: &mut SimCluster) -> u64 {
    assert!(c.run_until(5000, |c| c.leader(1).is_some()).unwrap());
    c.leader(1).unwrap()
}

fn must_put(c: &mut SimCluster, key: &str, value: &str) {
    match c.write(put(key, value), 5000).unwrap() {
        WriteOutcome::Written { .. } => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// Moves the replica on `from` (not the leader) to node 4.
fn move_to_4(c: &mut SimCluster, from: u64) {
    c.must_change(1, PeerChange::AddLearner { node_id: 4 });
    c.must_change(
        1,
        PeerChange::Promote {
            node_id: 4,
            remove_node: from,
        },
    );
}

fn settled(c: &SimCluster, from: u64) -> bool {
    let Some(l) = c.leader(1) else { return false };
    let r = c.region_meta(l, 1).unwrap();
    r.peers.len() == 3
        && r.peer_on_node(4).is_some_and(|p| p.role == PeerRole::Voter)
        && !c.has_replica(from, 1)
}

/// Writes `k0..k{keys}`, then moves a follower's replica to node 4 and
/// waits until the move settled. Returns the node it left.
fn fill_and_move_a_follower_to_4(c: &mut SimCluster, keys: usize) -> u64 {
    let l = leader(c);
    for i in 0..keys {
        must_put(c, &format!("k{i}"), &format!("v{i}"));
    }
    let from = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
    assert!(!c.dump_data(from).unwrap().is_empty());
    move_to_4(c, from);
    assert!(
        c.run_until(10_000, |c| settled(c, from)).unwrap(),
        "seed {}: move did not settle",
        c.seed()
    );
    from
}

#[test]
fn a_replica_moves_to_a_new_node_keeps_every_write_and_the_old_one_is_destroyed() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = cluster(seed);
        let from = fill_and_move_a_follower_to_4(&mut c, 200);
        let r = c.region_meta(c.leader(1).unwrap(), 1).unwrap();
        // Learner added, joint entered, joint left.
        assert_eq!(r.epoch.conf_ver, 4, "seed {seed}: {r:?}");
        assert!(
            c.dump_data(from).unwrap().is_empty(),
            "old replica's data gone"
        );
        for i in 200..250 {
            must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
        }
        c.run_ms(500).unwrap();
        let on_4 = c.dump_data(4).unwrap();
        assert_eq!(on_4.len(), 250, "seed {seed}");

        // Node 4 now counts for the quorum: with the old leader down, the
        // other original voter and node 4 elect a leader and serve.
        let old = c.leader(1).unwrap();
        c.crash(old);
        assert!(c
            .run_until(5000, |c| c.leader(1).is_some_and(|n| n != old))
            .unwrap());
        for i in [0, 123, 249] {
            let v = c
                .get(format!("k{i}").as_bytes(), Consistency::Linearizable, 5000)
                .unwrap()
                .expect("present");
            assert_eq!(v.value, format!("v{i}").as_bytes());
        }
        must_put(&mut c, "after", "crash");

        // The node the replica left restarts without it, and messages to
        // the old replica do not bring it back.
        c.crash(from);
        c.restart(from).unwrap();
        c.restart(old).unwrap();
        c.run_ms(2000).unwrap();
        assert!(!c.has_replica(from, 1), "seed {seed}");
        assert!(c.dump_data(from).unwrap().is_empty());
    }
}

#[test]
fn a_replica_moved_away_and_back_to_a_node_starts_clean_and_keeps_every_write() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = cluster(seed);
        let from = fill_and_move_a_follower_to_4(&mut c, 100);
        for i in 100..150 {
            must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
        }
        // Back to the node it left: nothing of the destroyed replica (its
        // hard state included) may be left for the new one to trip on.
        c.must_change(1, PeerChange::AddLearner { node_id: from });
        c.must_change(
            1,
            PeerChange::Promote {
                node_id: from,
                remove_node: 4,
            },
        );
        assert!(
            c.run_until(10_000, |c| {
                c.leader(1).is_some_and(|l| {
                    let r = c.region_meta(l, 1).unwrap();
                    r.peer_on_node(from)
                        .is_some_and(|p| p.role == PeerRole::Voter)
                        && r.peer_on_node(4).is_none()
                }) && !c.has_replica(4, 1)
            })
            .unwrap(),
            "seed {seed}: move back did not settle"
        );
        for i in 150..200 {
            must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
        }
        c.run_ms(500).unwrap();
        assert_eq!(c.dump_data(from).unwrap().len(), 200, "seed {seed}");
        // It restarts from its own storage.
        c.crash(from);
        c.restart(from).unwrap();
        c.run_ms(1000).unwrap();
        assert_eq!(c.dump_data(from).unwrap().len(), 200, "seed {seed}");
        must_put(&mut c, "after", "restart");
    }
}

#[test]
fn a_replica_cut_off_while_it_is_removed_learns_it_when_the_network_heals() {
    let (_d, mut c) = cluster(9);
    let l = leader(&mut c);
    for i in 0..50 {
        must_put(&mut c, &format!("k{i}"), "v");
    }
    let from = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
    c.must_change(1, PeerChange::AddLearner { node_id: 4 });
    // Wait for the learner to hold the data, then cut the leaving replica
    // off: the joint change commits without it (majorities of {l, other,
    // 4} and {l, other, from}).
    assert!(c
        .run_until(5000, |c| c.dump_data(4).unwrap().len() == 50)
        .unwrap());
    c.net.filters.isolated.insert(from);
    c.must_change(
        1,
        PeerChange::Promote {
            node_id: 4,
            remove_node: from,
        },
    );
    c.run_ms(1000).unwrap();
    assert!(c.has_replica(from, 1), "cut off: it cannot know yet");
    c.net.filters.isolated.remove(&from);
    assert!(
        c.run_until(10_000, |c| settled(c, from)).unwrap(),
        "the removed replica was never told"
    );
    must_put(&mut c, "k0", "w");
}

#[test]
fn changes_that_would_break_the_region_are_refused() {
    let (_d, mut c) = cluster(4);
    let l = leader(&mut c);
    let refused = |c: &mut SimCluster, change: PeerChange| {
        let id = c.propose_change(l, 1, change);
        matches!(
            c.wait(id, 1000).unwrap().map(|r| r.result),
            Some(Err(Error::InvalidRequest(_)))
        )
    };
    assert!(refused(&mut c, PeerChange::Remove { node_id: l }));
    assert!(refused(&mut c, PeerChange::AddLearner { node_id: l }));
    assert!(refused(
        &mut c,
        PeerChange::Promote {
            node_id: 4,
            remove_node: 0
        }
    ));
    // A follower is no place to propose.
    let f = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
    let id = c.propose_change(f, 1, PeerChange::AddLearner { node_id: 4 });
    assert!(matches!(
        c.wait(id, 1000).unwrap().map(|r| r.result),
        Some(Err(Error::NotLeader { .. }))
    ));
}

#[test]
fn a_replica_that_missed_a_split_gets_the_new_region_once_its_own_range_shrinks() {
    use corekv_engine::admin::{split_peers, AdminCommand};
    let dir = tempfile::tempdir().unwrap();
    let mut c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 3,
            spare_nodes: 0,
            regions: 1,
            seed: 21,
            config: Config {
                log_compact_entries: 100,
                log_retain_entries: 20,
                ..Config::default()
            },
            ..SimOptions::default()
        },
    )
    .unwrap();
    let l = leader(&mut c);
    let lagging = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
    for i in 0..50 {
        must_put(&mut c, &format!("k{i}"), "before");
    }
    c.run_ms(300).unwrap();
    c.net.filters.isolated.insert(lagging);
    let region = c.region_meta(l, 1).unwrap();
    let split = AdminCommand::Split {
        split_hash: 1 << 63,
        new_region_id: 77,
        new_peers: split_peers(&region, 77),
    };
    let id = c.propose_admin(l, 1, split);
    assert!(c.wait(id, 3000).unwrap().unwrap().result.is_ok());
    // Enough writes to both halves that the lagging replica can only catch
    // up on region 1 by a snapshot (the log from the split is kept for 4 ×
    // 100 entries).
    for i in 0..1200 {
        must_put(&mut c, &format!("k{i}"), &format!("after-{i}"));
    }
    assert!(!c.has_replica(lagging, 77));
    // Region 77 reaches the lagging node first: its replica there is
    // created, but its snapshot must wait while region 1 there still
    // covers its range (installing it first would let region 1's snapshot
    // or entries overwrite region 77's newer data).
    c.net.filters.blocked_regions.insert((1, lagging));
    c.net.filters.isolated.remove(&lagging);
    c.run_ms(2000).unwrap();
    assert!(
        c.has_replica(lagging, 77),
        "created by its leader's messages"
    );
    assert!(
        c.region_meta(lagging, 77)
            .is_some_and(|r| r.epoch.version == 0),
        "region 77's snapshot was installed over region 1's range"
    );
    c.net.filters.blocked_regions.clear();
    let caught_up = c
        .run_until(20_000, |c| {
            c.region_meta(lagging, 77)
                .is_some_and(|r| r.end_hash == 0 && r.start_hash == 1 << 63)
                && c.dump_data(lagging).ok() == c.dump_data(l).ok()
        })
        .unwrap();
    assert!(
        caught_up,
        "the lagging replica never got region 77 and every key"
    );
    let kept = c.region_meta(lagging, 1).unwrap();
    assert_eq!(kept.end_hash, 1 << 63);
    assert!(
        c.peer_counters(lagging, 1).unwrap().snapshots_applied > 0,
        "region 1 was caught up by snapshot, not by applying the split"
    );
    assert_eq!(c.dump_data(lagging).unwrap().len(), 1200);
}

#[test]
fn a_leader_reopened_on_another_shard_leads_again_without_an_election_timeout() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = cluster(seed);
        let l = leader(&mut c);
        for i in 0..20 {
            must_put(&mut c, &format!("k{i}"), &format!("v{i}"));
        }
        let term = c.status(l, 1).unwrap().term;
        let tick = c.config().tick_interval_ms;
        assert!(c.reopen(l, 1).unwrap());
        // Two ticks: far below the election timeout (15 ticks or more).
        c.run_ms(2 * tick).unwrap();
        assert_eq!(c.leader(1), Some(l), "seed {seed}");
        assert!(c.status(l, 1).unwrap().term > term, "seed {seed}");
        must_put(&mut c, "after", "reopen");
        let v = c
            .get(b"k7", Consistency::Linearizable, 5000)
            .unwrap()
            .expect("present");
        assert_eq!(v.value, &b"v7"[..]);
        // A follower reopened stays a follower; the leader keeps leading.
        let f = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
        assert!(c.reopen(f, 1).unwrap());
        c.run_ms(2 * tick).unwrap();
        assert_eq!(c.leader(1), Some(l), "seed {seed}");
        must_put(&mut c, "after", "follower reopened");
    }
}

#[test]
fn a_replica_that_becomes_leader_and_then_applies_its_own_removal_steps_out_cleanly() {
    // The removal of a follower is proposed; the leader dies before it
    // learns the entry committed, and the follower, which holds the entry,
    // is elected. It commits and applies its own removal as leader, and
    // lives on while a log write of it is in flight: it must take no more
    // part (raft-rs would panic on the next commit it counts), and the two
    // others elect a leader among themselves and serve.
    let mut exercised = 0;
    for seed in 1..=12 {
        // Slow log writes keep the removed replica alive for some rounds,
        // as on a real node.
        let dir = tempfile::tempdir().unwrap();
        let mut c = SimCluster::new(
            dir.path(),
            SimOptions {
                nodes: 3,
                regions: 1,
                seed,
                log_delay_ms: 40,
                log_jitter_ms: 20,
                config: Config::default(),
                ..SimOptions::default()
            },
        )
        .unwrap();
        let l = leader(&mut c);
        for i in 0..20 {
            must_put(&mut c, &format!("k{i}"), "v");
        }
        let f = [1, 2, 3].into_iter().find(|&n| n != l).unwrap();
        let _ = c.propose_change(l, 1, PeerChange::Remove { node_id: f });
        c.tick().unwrap();
        c.tick().unwrap();
        c.crash(l);
        c.run_ms(5).unwrap();
        c.campaign(f, 1).unwrap();
        // Writes reach it as soon as it leads, before it applies its
        // removal: they follow the removal in its log.
        let led = c.run_until(2000, |c| c.leader(1) == Some(f)).unwrap();
        if led {
            for i in 0..5 {
                c.propose_in(f, 1, put(&format!("early{i}"), "x"));
            }
        }
        // Once it applied its removal it serves nothing, not even a read
        // at follower level (its state stopped at the removal).
        let removed = c
            .run_until(2000, |c| c.peer(f, 1).is_some_and(|p| p.is_removed()))
            .unwrap();
        if removed {
            for level in [Consistency::Follower, Consistency::Linearizable] {
                let id = c.read_in(f, 1, b"k0", level);
                let r = c.wait(id, 1000).unwrap().map(|r| r.result);
                assert!(
                    matches!(r, Some(Err(Error::RegionNotFound(1)))),
                    "seed {seed}: a removed replica answered a {level:?} read: {r:?}"
                );
            }
        }
        c.restart(l).unwrap();
        if led && removed {
            exercised += 1;
            // Writes sent to it are refused while the node that died comes
            // back; with the old code they reached raft and it panicked.
            for i in 0..50 {
                if c.has_replica(f, 1) {
                    c.propose_in(f, 1, put(&format!("late{i}"), "x"));
                }
                c.run_ms(10).unwrap();
            }
        }
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != f).collect();
        assert!(
            c.run_until(5000, |c| c.leader(1).is_some_and(|n| others.contains(&n)))
                .unwrap(),
            "seed {seed}: no leader among {others:?}"
        );
        must_put(&mut c, "after", "removal");
        let r = c.region_meta(c.leader(1).unwrap(), 1).unwrap();
        assert!(r.peer_on_node(f).is_none(), "seed {seed}: {r:?}");
        assert!(
            c.run_until(3000, |c| !c.has_replica(f, 1)).unwrap(),
            "seed {seed}: the removed replica stayed"
        );
    }
    assert!(
        exercised >= 3,
        "the removed replica led in {exercised} of 12 runs"
    );
}
