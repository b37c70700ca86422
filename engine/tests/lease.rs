//! Lease reads where a lease proves less than it seems: across a leader
//! transfer, and after the leader's process stood still.

use bytes::Bytes;
use corekv_engine::sim::{put, SimCluster, SimOptions};
use corekv_engine::{Consistency, Response, WriteOutcome};

fn sim(seed: u64) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(
        dir.path(),
        SimOptions {
            seed,
            ..SimOptions::default()
        },
    )
    .unwrap();
    (dir, c)
}

/// Elects region 1's leader, writes `k` = v1 and reads it there under
/// the lease; returns the leader.
fn must_lead_with_a_lease_on_v1(c: &mut SimCluster) -> u64 {
    let old = c.must_leader(1);
    assert!(matches!(
        c.write(put("k", "v1"), 5000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    assert_eq!(
        lease_read(c, old, 1000),
        Some(Some(Bytes::from_static(b"v1")))
    );
    old
}

/// A lease read at `node`, answered within `max_ms`: the value read, or
/// `None` for no answer / an error.
fn lease_read(c: &mut SimCluster, node: u64, max_ms: u64) -> Option<Option<Bytes>> {
    let id = c.read_in(node, 1, b"k", Consistency::Lease);
    match c.wait(id, max_ms).unwrap().map(|r| r.result) {
        Some(Ok(Response::Value(v))) => Some(v.map(|v| v.value)),
        _ => None,
    }
}

#[test]
fn a_lease_is_not_used_renewed_or_extended_across_a_leader_transfer() {
    for seed in [1, 2, 3, 4] {
        let (_d, mut c) = sim(seed);
        let old = must_lead_with_a_lease_on_v1(&mut c);
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != old).collect();
        let (next, third) = (others[0], others[1]);
        // The transfer's TimeoutNow waits on the link; meanwhile the old
        // leader keeps hearing the third node.
        c.net.filters.held.insert((old, next));
        assert!(c.transfer_leader(old, 1, next));
        let id = c.read_in(old, 1, b"k", Consistency::Lease);
        c.run_ms(60).unwrap();
        let _ = c.take_reply(id);
        // Now the old leader hears no one, and the transferee gets its
        // TimeoutNow: it is elected with the third node's vote and commits.
        c.net.filters.held.insert((next, old));
        c.net.filters.held.insert((third, old));
        c.net.filters.held.remove(&(old, next));
        assert!(c.run_until(1000, |c| c.leaders(1).contains(&next)).unwrap());
        let w = c.propose(next, put("k", "v2"));
        assert!(matches!(
            c.wait(w, 1000).unwrap().map(|r| r.result),
            Some(Ok(Response::Write(WriteOutcome::Written { .. })))
        ));
        assert!(c.leaders(1).contains(&old), "the old leader has not heard");
        // The old leader must not answer from its lease: v1 is stale.
        let got = lease_read(&mut c, old, 100);
        assert_ne!(
            got,
            Some(Some(Bytes::from_static(b"v1"))),
            "seed {seed}: a lease read after a transfer served a value overwritten since"
        );
    }
}

#[test]
fn a_lease_is_judged_by_the_time_of_the_read_not_of_the_last_tick() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = sim(seed);
        let old = must_lead_with_a_lease_on_v1(&mut c);
        // The leader's process stands still (a long GC pause, SIGSTOP) and
        // is cut off; the others elect a new leader and write.
        c.pause(old);
        c.net.filters.isolated.insert(old);
        assert!(c
            .run_until(3000, |c| c.leader(1).is_some_and(|l| l != old))
            .unwrap());
        assert!(matches!(
            c.write(put("k", "v2"), 3000).unwrap(),
            WriteOutcome::Written { .. }
        ));
        // It resumes: a read arrives before its ticker ran.
        c.resume(old);
        let got = lease_read(&mut c, old, 100);
        assert_ne!(
            got,
            Some(Some(Bytes::from_static(b"v1"))),
            "seed {seed}: a lease long past served a value overwritten since"
        );
    }
}

#[test]
fn a_timeout_now_that_arrives_after_its_transfer_was_given_up_finds_no_lease() {
    for seed in [1, 2, 3] {
        let (_d, mut c) = sim(seed);
        let old = must_lead_with_a_lease_on_v1(&mut c);
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != old).collect();
        let (next, third) = (others[0], others[1]);
        // The transferee's process stands still far longer than the
        // transfer (a long stall, SIGSTOP): the transfer is given up, and
        // the old leader goes on leading with the third node, lease reads
        // and all.
        c.pause(next);
        assert!(c.transfer_leader(old, 1, next));
        for _ in 0..10 {
            lease_read(&mut c, old, 200);
            c.run_ms(100).unwrap();
        }
        assert!(c.leaders(1) == vec![old], "seed {seed}: {:?}", c.leaders(1));
        // The transferee resumes and finds the TimeoutNow (still of the
        // current term): it is elected with the third node's vote and
        // commits, while the old leader hears no one.
        c.net.filters.held.insert((next, old));
        c.net.filters.held.insert((third, old));
        c.resume(next);
        assert!(c.run_until(1000, |c| c.leaders(1).contains(&next)).unwrap());
        let w = c.propose(next, put("k", "v2"));
        assert!(matches!(
            c.wait(w, 1000).unwrap().map(|r| r.result),
            Some(Ok(Response::Write(WriteOutcome::Written { .. })))
        ));
        let got = lease_read(&mut c, old, 100);
        assert_ne!(
            got,
            Some(Some(Bytes::from_static(b"v1"))),
            "seed {seed}: a lease read served a value overwritten since"
        );
    }
}
