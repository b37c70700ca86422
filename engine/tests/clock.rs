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

#[test]
fn a_region_whose_clock_is_unknown_gets_one_from_its_leader_at_once() {
    use corekv_engine::db::{self, DbConfig};
    use corekv_engine::keys::{self, CF_META};
    use corekv_engine::state::ApplyState;
    let dir = tempfile::tempdir().unwrap();
    let mut c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 1,
            ..SimOptions::default()
        },
    )
    .unwrap();
    assert!(c.run_until(3000, |c| c.leader(1).is_some()).unwrap());
    assert!(matches!(
        c.write(put("k", None, Condition::None), 3000).unwrap(),
        WriteOutcome::Written { .. }
    ));
    // Its apply state as an earlier release wrote it: no clock.
    c.crash(1);
    {
        let d = db::open(&dir.path().join("node-1"), &DbConfig::default()).unwrap();
        let meta = db::cf(&d, CF_META);
        let stored = d.get_cf(meta, keys::apply_state_key(1)).unwrap().unwrap();
        let mut old = ApplyState::decode(&stored).unwrap().encode();
        old[0] = 1;
        let len = old.len() - 9;
        old.truncate(len);
        assert_eq!(ApplyState::decode(&old).unwrap().clock_ms, None);
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(meta, keys::apply_state_key(1), old);
        db::write(&d, b, true).unwrap();
    }
    c.restart(1).unwrap();
    assert_eq!(c.peer(1, 1).unwrap().region_clock(), None);
    // A read waits for the clock, then is answered.
    let got = c.get(b"k", Consistency::Linearizable, 2000).unwrap();
    assert!(got.is_some());
    // The leader's first clock entry sets it, without any write.
    assert!(c
        .run_until(1000, |c| c
            .peer(1, 1)
            .and_then(|p| p.region_clock())
            .is_some())
        .unwrap());
    let clock = c.peer(1, 1).unwrap().region_clock().unwrap();
    assert!(
        clock + 1000 >= c.wall_ms_of(1),
        "{clock} vs {}",
        c.wall_ms_of(1)
    );
}
