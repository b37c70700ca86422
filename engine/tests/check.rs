//! The consistency check: every replica's digest at one raft index against
//! the leader's. It must find a replica that diverged behind raft's back,
//! and find nothing when none did, even with writes applied in the same
//! round as the check.

use corekv_engine::sim::{put, SimCluster, SimOptions};
use corekv_engine::WriteOutcome;

fn verdicts(c: &mut SimCluster) -> Vec<(u64, &'static str)> {
    c.check(1, 5000)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.verdict()))
        .collect()
}

#[test]
fn a_replica_changed_behind_raft_is_named_and_agreeing_replicas_pass() {
    for seed in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SimCluster::new(
            dir.path(),
            SimOptions {
                seed,
                ..SimOptions::default()
            },
        )
        .unwrap();
        assert!(c.run_until(5000, |c| c.leader(1).is_some()).unwrap());
        for i in 0..100 {
            assert!(matches!(
                c.write(put(&format!("k{i}"), "v"), 5000).unwrap(),
                WriteOutcome::Written { .. }
            ));
        }
        let all_match = vec![(1, "match"), (2, "match"), (3, "match")];
        assert_eq!(verdicts(&mut c), all_match, "seed {seed}");
        // Writes applied in the same round as the check, on every replica.
        let leader = c.leader(1).unwrap();
        for i in 0..50 {
            c.propose(leader, put(&format!("k{i}"), "w"));
        }
        let checked = c.check(1, 5000).unwrap();
        assert!(
            checked.values().all(|v| v.verdict() == "match"),
            "seed {seed}"
        );
        // The digest describes the data at the check's index, those writes
        // included: nothing changed data since, so it is what is stored.
        let (_, stored) = c.digest(leader, 1).unwrap().unwrap();
        assert_eq!(checked[&leader].leader, stored, "seed {seed}");
        // One replica diverges without any client seeing it.
        let victim = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        c.corrupt(victim, b"k7", b"not what was written").unwrap();
        let got = verdicts(&mut c);
        for (n, v) in &got {
            let want = if *n == victim { "mismatch" } else { "match" };
            assert_eq!(*v, want, "seed {seed}: node {n} in {got:?}");
        }
        assert_eq!(c.peer_counters(victim, 1).unwrap().digest_mismatches, 1);
        assert_eq!(c.peer_counters(leader, 1).unwrap().digest_mismatches, 0);
    }
}

#[test]
fn a_scheduled_check_finds_a_diverged_replica_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = SimCluster::new(
        dir.path(),
        SimOptions {
            config: corekv_engine::Config {
                consistency_check_interval_ms: 1000,
                ..corekv_engine::Config::default()
            },
            ..SimOptions::default()
        },
    )
    .unwrap();
    let leader = c.must_leader(1);
    for i in 0..20 {
        assert!(matches!(
            c.write(put(&format!("k{i}"), "v"), 5000).unwrap(),
            WriteOutcome::Written { .. }
        ));
    }
    let victim = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    c.corrupt(victim, b"k3", b"changed behind raft").unwrap();
    // Nobody asks: within two intervals the leader checks by itself.
    c.run_ms(2500).unwrap();
    assert!(c.peer_counters(victim, 1).unwrap().digest_mismatches >= 1);
    assert_eq!(c.peer_counters(leader, 1).unwrap().digest_mismatches, 0);
    assert!(c.peer_counters(leader, 1).unwrap().digest_checks >= 1);
}
