//! Idle regions hibernate (no ticks, no heartbeats) and wake safely: a
//! sleeping region fails over as fast as an awake one, and a sleeping
//! leader cut off from the others never answers from what it had.

use bytes::Bytes;
use corekv_engine::sim::{put, SimCluster, SimOptions};
use corekv_engine::{Config, Consistency, Response, WriteOutcome};

fn sim(seed: u64, shards: usize, hibernate_after_ticks: usize) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(
        dir.path(),
        SimOptions {
            seed,
            regions: 4,
            shards,
            log_delay_ms: 2,
            log_jitter_ms: 3,
            config: Config {
                hibernate_after_ticks,
                ..Config::default()
            },
            ..SimOptions::default()
        },
    )
    .unwrap();
    (dir, c)
}

fn all_asleep(c: &SimCluster) -> bool {
    c.regions().iter().all(|r| {
        c.node_ids()
            .iter()
            .all(|&n| c.peer(n, r.id).is_some_and(|p| p.is_asleep()))
    })
}

fn read(c: &mut SimCluster, node: u64, consistency: Consistency, max_ms: u64) -> Option<Bytes> {
    let region = c.region_of(b"k");
    let id = c.read_in(node, region, b"k", consistency);
    match c.wait(id, max_ms).unwrap().map(|r| r.result) {
        Some(Ok(Response::Value(v))) => v.map(|v| v.value),
        _ => None,
    }
}

/// Writes `k` = v1, then lets the cluster fall asleep; returns the time
/// it took.
fn write_and_sleep(c: &mut SimCluster) -> u64 {
    assert!(matches!(
        c.write(put("k", "v1"), 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    let start = c.now_ms();
    assert!(
        c.run_until(3000, all_asleep).unwrap(),
        "seed {}: an idle cluster did not fall asleep",
        c.seed()
    );
    c.now_ms() - start
}

/// A 2-shard cluster that wrote `k` = v1 and fell asleep: the region of
/// `k`, its leader's node and the other nodes.
fn asleep(seed: u64) -> (tempfile::TempDir, SimCluster, u64, u64, Vec<u64>) {
    let (d, mut c) = sim(seed, 2, 50);
    write_and_sleep(&mut c);
    let region = c.region_of(b"k");
    let old = c.must_leader(region);
    let others: Vec<u64> = c.node_ids().iter().copied().filter(|&n| n != old).collect();
    (d, c, region, old, others)
}

#[test]
fn idle_regions_sleep_and_a_request_wakes_them() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = sim(seed, 2, 50);
        write_and_sleep(&mut c);
        let region = c.region_of(b"k");
        let leader = c.must_leader(region);
        let before = c.peer_counters(leader, region).unwrap();
        // Asleep for a while: nobody ticks, nobody campaigns.
        c.run_ms(5000).unwrap();
        assert!(all_asleep(&c), "seed {seed}: a region woke by itself");
        let after = c.peer_counters(leader, region).unwrap();
        assert_eq!(before.campaigns, after.campaigns);
        assert_eq!(before.read_index_rounds, after.read_index_rounds);
        // A linearizable read wakes the leader (and through it the region)
        // and sees the write.
        assert_eq!(
            read(&mut c, leader, Consistency::Linearizable, 1000),
            Some(Bytes::from_static(b"v1"))
        );
        assert!(!c.peer(leader, region).unwrap().is_asleep());
        // A write through a sleeping follower's node, too.
        let follower = c.node_ids().iter().copied().find(|&n| n != leader).unwrap();
        let w = c.propose_in(follower, region, put("k", "v2"));
        let got = c.wait(w, 2000).unwrap().map(|r| r.result);
        assert!(
            matches!(
                got,
                Some(Ok(Response::Write(WriteOutcome::Written { .. })))
                    | Some(Err(corekv_engine::Error::NotLeader { .. }))
            ),
            "seed {seed}: {got:?}"
        );
        assert!(
            c.run_until(3000, all_asleep).unwrap(),
            "seed {seed}: did not sleep again"
        );
    }
}

/// The same cluster with hibernation off and on: a crashed leader's region
/// elects a new one, and about as fast (simulated time).
#[test]
fn a_sleeping_region_fails_over_as_fast_as_an_awake_one() {
    let mut times = Vec::new();
    for hibernate in [0, 50] {
        let mut total = 0;
        for seed in [1, 2, 3, 4, 5, 6] {
            let (_d, mut c) = sim(seed, 1, hibernate);
            assert!(matches!(
                c.write(put("k", "v1"), 5000).unwrap(),
                WriteOutcome::Written { .. }
            ));
            c.run_ms(2000).unwrap();
            assert_eq!(all_asleep(&c), hibernate > 0, "seed {seed}");
            let region = c.region_of(b"k");
            let old = c.must_leader(region);
            c.crash(old);
            let start = c.now_ms();
            assert!(
                c.run_until(3000, |c| c.leaders(region).iter().any(|&n| n != old))
                    .unwrap(),
                "seed {seed}, hibernate {hibernate}: no new leader"
            );
            let took = c.now_ms() - start;
            // Every election timeout is under 300 ms; a sleeping follower
            // notices the silence within its leader's beat interval more.
            assert!(took <= 500, "seed {seed}, hibernate {hibernate}: {took} ms");
            total += took;
            let new = c.must_leader(region);
            assert_eq!(
                read(&mut c, new, Consistency::Linearizable, 2000),
                Some(Bytes::from_static(b"v1"))
            );
        }
        times.push(total);
    }
    // Summed over the seeds: sleeping costs at most one silence (150 ms)
    // more per failover.
    assert!(
        times[1] <= times[0] + 6 * 150,
        "awake {} ms, asleep {} ms",
        times[0],
        times[1]
    );
}

#[test]
fn a_sleeping_leader_cut_off_answers_no_read_from_what_it_had() {
    for seed in [1, 2, 3, 4] {
        let (_d, mut c, region, old, others) = asleep(seed);
        // Cut the sleeping leader off both ways: its beats stop, the others
        // wake and elect a leader, which commits v2.
        for &o in &others {
            c.net.filters.held.insert((old, o));
            c.net.filters.held.insert((o, old));
        }
        assert!(
            c.run_until(3000, |c| c
                .leaders(region)
                .iter()
                .any(|n| others.contains(n)))
                .unwrap(),
            "seed {seed}: the others elected no leader"
        );
        let new = *c
            .leaders(region)
            .iter()
            .find(|n| others.contains(n))
            .unwrap();
        let w = c.propose_in(new, region, put("k", "v2"));
        assert!(matches!(
            c.wait(w, 2000).unwrap().map(|r| r.result),
            Some(Ok(Response::Write(WriteOutcome::Written { .. })))
        ));
        assert!(
            c.leaders(region).contains(&old),
            "seed {seed}: the old leader heard"
        );
        // The old leader wakes for these reads: neither may answer v1.
        for consistency in [Consistency::Lease, Consistency::Linearizable] {
            let got = read(&mut c, old, consistency, 300);
            assert_ne!(
                got,
                Some(Bytes::from_static(b"v1")),
                "seed {seed}: a {consistency:?} read at a woken, cut-off leader served a \
                 value overwritten since"
            );
        }
        for &o in &others {
            c.net.filters.held.remove(&(old, o));
            c.net.filters.held.remove(&(o, old));
        }
        assert!(c
            .run_until(3000, |c| c.leaders(region) == vec![new])
            .unwrap());
        assert_eq!(
            read(&mut c, new, Consistency::Linearizable, 2000),
            Some(Bytes::from_static(b"v2"))
        );
    }
}

/// A sleeping leader that can still send (its beats go on) but hears no
/// one: the others stay asleep until a request wakes it, then it gives up
/// the lead (check-quorum counts only what it heard since waking) and the
/// others elect a leader that takes the write.
#[test]
fn a_sleeping_leader_that_hears_no_one_gives_up_once_woken() {
    for seed in [1, 2, 3, 4, 5, 6, 7, 8] {
        let (_d, mut c, region, old, others) = asleep(seed);
        for &o in &others {
            c.net.filters.held.insert((o, old));
        }
        c.run_ms(1000).unwrap();
        let w = c.propose_in(old, region, put("k", "v2"));
        // Woken by the write, it steps down one election timeout (150 ms)
        // later, not two: what it heard before the sleep does not count.
        assert!(
            c.run_until(200, |c| !c.leaders(region).contains(&old))
                .unwrap(),
            "seed {seed}: the woken leader did not give up within 200 ms"
        );
        let got = c.wait(w, 300).unwrap().map(|r| r.result);
        assert!(
            !matches!(got, Some(Ok(Response::Write(WriteOutcome::Written { .. })))),
            "seed {seed}: a leader that hears no one acknowledged a write"
        );
        assert!(
            c.run_until(3000, |c| !c.leaders(region).contains(&old)
                && c.leaders(region).iter().any(|n| others.contains(n)))
                .unwrap(),
            "seed {seed}: the cut-off leader kept the lead: {:?}",
            c.leaders(region)
        );
        let new = c.must_leader(region);
        let w = c.propose_in(new, region, put("k", "v3"));
        assert!(matches!(
            c.wait(w, 2000).unwrap().map(|r| r.result),
            Some(Ok(Response::Write(WriteOutcome::Written { .. })))
        ));
        assert_eq!(
            read(&mut c, new, Consistency::Linearizable, 2000),
            Some(Bytes::from_static(b"v3"))
        );
    }
}
