//! A node that lags while a region's layout changes (splits, replica moves,
//! leader transfers), in the deterministic simulator with several shards
//! per node, as a server runs. Each test ends by comparing the replicas
//! themselves ([`SimCluster::check_convergence`]), not only what clients
//! saw.

use bytes::Bytes;
use corekv_engine::admin::{split_peers, AdminCommand};
use corekv_engine::membership::PeerChange;
use corekv_engine::sim::{put, SimCluster, SimOptions};
use corekv_engine::{route_hash, Config, PeerRole, Response, WriteOutcome, WriteRequest};

fn sim(opts: SimOptions) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(dir.path(), opts).unwrap();
    (dir, c)
}

fn must_write(c: &mut SimCluster, w: WriteRequest) {
    match c.write(w, 5000) {
        Ok(WriteOutcome::Written { .. } | WriteOutcome::Deleted { .. }) => {}
        other => panic!("seed {}: {other:?}", c.seed()),
    }
}

/// Splits region 1 at the middle of the hash space into region 2 through
/// its leader; returns the split's log index.
fn must_split(c: &mut SimCluster) -> u64 {
    let l = c.must_leader(1);
    let region = c.region_meta(l, 1).unwrap();
    let cmd = AdminCommand::Split {
        split_hash: 1 << 63,
        new_region_id: 2,
        new_peers: split_peers(&region, 2),
    };
    let id = c.propose_admin(l, 1, cmd);
    match c.wait(id, 5000).unwrap().map(|r| r.result) {
        Some(Ok(Response::Write(WriteOutcome::Written { version }))) => version,
        other => panic!("split: {other:?}"),
    }
}

/// A node not leading region 1 (the one that will lag).
fn a_follower(c: &mut SimCluster) -> u64 {
    let l = c.must_leader(1);
    [1, 2, 3].into_iter().find(|&n| n != l).unwrap()
}

fn upper_keys(n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("u{i}"))
        .filter(|k| route_hash(k.as_bytes()) >= 1 << 63)
        .take(n)
        .collect()
}

/// Runs until every running replica of `region` applied as far as the
/// leader's and shows its membership.
fn must_catch_up(c: &mut SimCluster, region: u64, nodes: &[u64]) {
    let ok = c
        .run_until(10_000, |c| {
            let Some(l) = c.leader(region) else {
                return false;
            };
            let (want, epoch) = (
                c.status(l, region).unwrap().applied_index,
                c.region_meta(l, region).unwrap().epoch,
            );
            nodes.iter().all(|&n| {
                c.peer(n, region).is_some_and(|p| {
                    p.is_initialized() && p.applied_index() == want && p.region().epoch == epoch
                })
            })
        })
        .unwrap();
    let states: Vec<_> = nodes
        .iter()
        .map(|&n| {
            c.peer(n, region)
                .map(|p| (n, p.applied_index(), p.region().epoch))
        })
        .collect();
    assert!(
        ok,
        "seed {}: region {region} never caught up on {nodes:?}: {states:?}",
        c.seed()
    );
}

#[test]
fn a_split_while_a_node_lags_reaches_it_with_every_later_write_on_two_shards() {
    for seed in [1, 2, 3, 4] {
        // Region 1 is on shard 0 of every node, region 2 (the upper half)
        // goes to shard 1 where no replica of it exists yet.
        let (_d, mut c) = sim(SimOptions {
            shards: 2,
            seed,
            ..SimOptions::default()
        });
        // A follower stops hearing region 1: it will apply neither the
        // writes before the split nor the split for a while, but hears the
        // new region.
        let lag = a_follower(&mut c);
        c.net.filters.blocked_regions.insert((1, lag));
        let keys = upper_keys(30);
        for k in &keys {
            must_write(&mut c, put(k, "before-split"));
        }
        must_split(&mut c);
        c.must_leader(2);
        for (i, k) in keys.iter().enumerate() {
            if i % 3 == 0 {
                must_write(
                    &mut c,
                    WriteRequest::Delete {
                        key: Bytes::copy_from_slice(k.as_bytes()),
                        if_version: None,
                    },
                );
            } else {
                must_write(&mut c, put(k, "after-split"));
            }
        }
        // The new region's leader tries to bring node 3 in meanwhile.
        c.run_ms(2000).unwrap();
        c.net.filters.blocked_regions.clear();
        must_catch_up(&mut c, 1, &[1, 2, 3]);
        must_catch_up(&mut c, 2, &[1, 2, 3]);
        for (i, k) in keys.iter().enumerate() {
            let got = c.local_get(lag, k.as_bytes()).unwrap().map(|v| v.value);
            let want = (i % 3 != 0).then(|| Bytes::from_static(b"after-split"));
            assert_eq!(got, want, "seed {seed}: node {lag}'s copy of {k}");
        }
        assert_eq!(c.check_convergence().unwrap(), Vec::<String>::new());
        assert_eq!(c.shard_of(lag, 2), Some(1), "opened where it was created");
    }
}

fn small_logs() -> Config {
    Config {
        log_compact_entries: 20,
        log_retain_entries: 5,
        ..Config::default()
    }
}

#[test]
fn a_new_region_elects_through_a_node_whose_parent_skipped_the_split() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = sim(SimOptions {
            seed,
            config: small_logs(),
            ..SimOptions::default()
        });
        let lag = a_follower(&mut c);
        c.net.filters.isolated.insert(lag);
        must_split(&mut c);
        c.must_leader(2);
        // Region 1's log moves far past the split: node 3 will get a
        // snapshot of it, never the split entry.
        let lower: Vec<String> = (0..)
            .map(|i| format!("l{i}"))
            .filter(|k| route_hash(k.as_bytes()) < 1 << 63)
            .take(150)
            .collect();
        for k in &lower {
            must_write(&mut c, put(k, "v"));
        }
        // It catches up on region 1 before region 2's leader reaches it.
        c.net.filters.blocked_regions.insert((2, lag));
        c.net.filters.isolated.clear();
        must_catch_up(&mut c, 1, &[1, 2, 3]);
        assert!(
            c.peer(lag, 2).is_none_or(|p| !p.is_initialized()),
            "seed {seed}: node {lag} got region 2 without hearing from it"
        );
        assert!(
            c.status(lag, 1).unwrap().first_index > 20,
            "seed {seed}: region 1 reached node {lag} by snapshot"
        );
        // Region 2's leader dies before it ever reached that node: the
        // other replica needs its vote.
        let l2 = c.leader(2).unwrap();
        c.crash(l2);
        c.net.filters.blocked_regions.clear();
        let up: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != l2).collect();
        assert!(
            c.run_until(10_000, |c| c.leader(2).is_some()).unwrap(),
            "seed {seed}: region 2 has no leader with nodes {up:?} up"
        );
        must_write(&mut c, put(&upper_keys(1)[0], "elected"));
        must_catch_up(&mut c, 2, &up);
        assert_eq!(c.check_convergence().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn a_replica_cut_off_through_a_move_and_a_leader_transfer_catches_up() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = sim(SimOptions {
            seed,
            spare_nodes: 1,
            ..SimOptions::default()
        });
        let l = c.must_leader(1);
        must_write(&mut c, put("k", "v1"));
        let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != l).collect();
        let (lagging, moved) = (followers[0], followers[1]);
        c.net.filters.isolated.insert(lagging);
        c.must_change(1, PeerChange::AddLearner { node_id: 4 });
        c.must_change(
            1,
            PeerChange::Promote {
                node_id: 4,
                remove_node: moved,
            },
        );
        let settled = c
            .run_until(10_000, |c| {
                c.leader(1).is_some_and(|l| {
                    let r = c.region_meta(l, 1).unwrap();
                    r.peers.len() == 3
                        && r.peer_on_node(4).is_some_and(|p| p.role == PeerRole::Voter)
                        && !c.has_replica(moved, 1)
                })
            })
            .unwrap();
        assert!(settled, "seed {seed}: the move did not settle");
        let l = c.leader(1).unwrap();
        assert!(c.transfer_leader(l, 1, 4));
        assert!(c.run_until(5000, |c| c.leader(1) == Some(4)).unwrap());
        must_write(&mut c, put("k", "v2"));
        c.net.filters.isolated.clear();
        must_catch_up(&mut c, 1, &[l, lagging, 4]);
        // With the old leader's node cut off, the other two voters serve.
        c.net.filters.isolated.insert(l);
        must_write(&mut c, put("k", "v3"));
        assert_eq!(
            c.local_get(lagging, b"k").unwrap().map(|v| v.value),
            Some(Bytes::from_static(b"v3"))
        );
        c.net.filters.isolated.clear();
        c.run_ms(1000).unwrap();
        assert_eq!(c.check_convergence().unwrap(), Vec::<String>::new());
    }
}
