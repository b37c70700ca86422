//! Expiry judged by the region's clock: replicated with the log and never
//! going back, whatever the clock of the node serving or leading.

use bytes::Bytes;
use corekv_engine::sim::{SimCluster, SimOptions};
use corekv_engine::{Condition, Config, Consistency, Response, WriteOutcome, WriteRequest};

fn put(key: &str, ttl_ms: Option<u64>, condition: Condition) -> WriteRequest {
    WriteRequest::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        ttl_ms,
        condition,
    }
}

fn read_at(c: &mut SimCluster, node: u64, consistency: Consistency) -> Option<Option<Bytes>> {
    let id = c.read_in(node, 1, b"k", consistency);
    match c.wait(id, 2000).unwrap().map(|r| r.result) {
        Some(Ok(Response::Value(v))) => Some(v.map(|v| v.value)),
        other => panic!("read at node {node}: {other:?}"),
    }
}

#[test]
fn a_value_read_as_expired_stays_expired_at_every_replica_and_leader() {
    for seed in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SimCluster::new(
            dir.path(),
            SimOptions {
                seed,
                // No active expiry: only the clock decides what reads see.
                config: Config {
                    expire_sweep_ticks: 0,
                    ..Config::default()
                },
                ..SimOptions::default()
            },
        )
        .unwrap();
        assert!(c.run_until(5000, |c| c.leader(1).is_some()).unwrap());
        let leader = c.leader(1).unwrap();
        let slow = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        // This node's clock is two seconds behind the leader's.
        c.set_clock_offset(slow, -2000);
        assert!(matches!(
            c.write(put("k", Some(1000), Condition::None), 5000)
                .unwrap(),
            WriteOutcome::Written { .. }
        ));
        c.run_ms(1500).unwrap();
        assert_eq!(
            read_at(&mut c, leader, Consistency::Linearizable),
            Some(None),
            "seed {seed}: expired at the leader"
        );
        // The slow node serves a linearizable follower read after that.
        assert_eq!(
            read_at(&mut c, slow, Consistency::Follower),
            Some(None),
            "seed {seed}: a follower read brought an expired value back"
        );
        // The slow node leads: a put-if-absent sees the key gone.
        assert!(c.transfer_leader(leader, 1, slow));
        assert!(c.run_until(3000, |c| c.leader(1) == Some(slow)).unwrap());
        let id = c.propose(slow, put("k", None, Condition::IfAbsent));
        match c.wait(id, 3000).unwrap().map(|r| r.result) {
            Some(Ok(Response::Write(WriteOutcome::Written { .. }))) => {}
            other => panic!("seed {seed}: put-if-absent on an expired key: {other:?}"),
        }
    }
}
