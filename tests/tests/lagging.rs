//! A node that falls behind while the cluster changes shape, on real
//! processes: a split while it is cut off (2 shards per node), a replica
//! move and a leader transfer while it is cut off, and SIGKILLs in the
//! middle of large writes. Each ends with what a client cannot see: the
//! lagging node's own copy of the data, read straight from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::{route_hash, Region};
use corekv_net::status::RegionStatus;
use corekv_net::{Client, ClientConfig, PutOptions};
use corekv_tests::{must_check_all, TestCluster};
use rand::{Rng, SeedableRng};

/// The status rows of `addr`'s replicas (see `corekv ctl regions`).
fn rows(c: &mut Client, addr: &str) -> Vec<RegionStatus> {
    c.status_doc(addr).map(|d| d.regions).unwrap_or_default()
}

/// SIGKILLs node 3 and starts it again; fails the test (with the log of
/// the node that exited) unless it answers within 30 s.
fn kill_and_restart_node_3(t: &mut TestCluster, kill: usize) {
    t.cluster.kill(2);
    t.cluster.start_node(2).unwrap();
    let addr = t.cluster.nodes[2].client_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !corekv_tools::dev::node_answers(&addr) {
        if let Some((id, status)) = t.cluster.exited() {
            panic!(
                "kill {kill}: node {id} exited ({status}) on restart:\n{}",
                exited_log(t, id)
            );
        }
        assert!(
            Instant::now() < deadline,
            "kill {kill}: node 3 never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of the log of node `id` (the one that exited).
fn exited_log(t: &TestCluster, id: u64) -> String {
    let n = t.cluster.nodes.iter().find(|n| n.id == id).expect("a node");
    corekv_tools::dev::tail(&n.dir.join("server.log"), 20)
}

/// `addr`'s replica of `region`: (applied index, conf_ver), if it has one.
fn replica_state(c: &mut Client, addr: &str, region: u64) -> Option<(u64, u64)> {
    rows(c, addr)
        .into_iter()
        .find(|r| r.id == region)
        .map(|r| (r.applied_index, r.epoch.conf_ver))
}

/// Waits until every replica of `region` on `addrs` has applied as far as
/// the furthest one and shows the same membership (the status board is
/// refreshed every second). Panics after `timeout`.
fn must_converge(c: &mut Client, addrs: &[String], region: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let states: Vec<Option<(u64, u64)>> =
            addrs.iter().map(|a| replica_state(c, a, region)).collect();
        let all = states.iter().all(|s| s.is_some());
        let first = states[0];
        if all && states.iter().all(|s| *s == first) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "region {region}: replicas on {addrs:?} never caught up: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads `key` from `addr`'s own replica of `region`.
fn local_read(addr: &str, region: &Region, key: &str) -> Option<Bytes> {
    corekv_tests::read_on_node(addr, region, key.as_bytes())
        .unwrap_or_else(|e| panic!("read of {key} in region {}: {e}", region.id))
}

/// Region `id` as `c`'s routing table has it.
fn region_in(c: &Client, id: u64) -> Region {
    c.routes()
        .iter()
        .find(|r| r.region.id == id)
        .unwrap_or_else(|| panic!("no region {id}"))
        .region
        .clone()
}

/// Keys of `region` hashing at or above `from`, named `PREFIX<n>`.
fn keys_above(region: &Region, from: u64, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| {
            let h = route_hash(k.as_bytes());
            region.contains(h) && h >= from
        })
        .take(n)
        .collect()
}

#[test]
fn a_split_while_a_node_is_cut_off_reaches_it_with_every_later_write() {
    // Two shards per node: region 4 lives on shard 1; the first region id
    // a node takes from the allocator is odd, so the new half's messages
    // arrive at shard 0 of the lagging node, the parent's shard being 1.
    let t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    let route = c
        .routes()
        .iter()
        .find(|r| r.region.id == 4)
        .expect("region 4")
        .clone();
    let region = route.region.clone();
    let mid = region.middle();
    // Node 3 hears nothing from here on: not the writes, not the split.
    t.cluster.set_faults(2, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let keys = keys_above(&region, mid, "lag-", 30);
    for k in &keys {
        c.put(k.as_bytes(), b"before-split", PutOptions::default())
            .unwrap();
    }
    c.split(region.id, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        c.refresh().unwrap();
        if let Some(r) = c.routes().iter().find(|r| r.region.start_hash == mid) {
            break r.region.clone();
        }
        assert!(Instant::now() < deadline, "the upper half never showed");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Written after the split.
    for (i, k) in keys.iter().enumerate() {
        if i % 3 == 0 {
            assert!(c.delete(k.as_bytes(), None).unwrap(), "{k} existed");
        } else {
            c.put(k.as_bytes(), b"after-split", PutOptions::default())
                .unwrap();
        }
    }
    t.cluster.set_faults(2, "").unwrap();
    let addrs = t.endpoints();
    must_converge(&mut c, &addrs, new.id, Duration::from_secs(30));
    must_converge(&mut c, &addrs, region.id, Duration::from_secs(30));
    c.refresh().unwrap();
    let new = region_in(&c, new.id);
    for node in &addrs {
        for (i, k) in keys.iter().enumerate() {
            let want = (i % 3 != 0).then(|| Bytes::from_static(b"after-split"));
            assert_eq!(
                local_read(node, &new, k),
                want,
                "{node}: key {k} (a write acknowledged after the split)"
            );
        }
    }
    must_check_all(&mut c);
}

#[test]
fn a_replica_cut_off_during_a_move_and_a_leader_transfer_catches_up() {
    // With 4 nodes region 1 starts on nodes 1, 2, 3. The placement driver
    // is off: its own leader moves would race the transfer below.
    let t = TestCluster::start(4, 1, &["--placement-moves-per-min", "0"]);
    let mut c = t.client();
    let region = region_in(&c, 1);
    let nodes: Vec<u64> = region.peers.iter().map(|p| p.node_id).collect();
    assert_eq!(nodes, vec![1, 2, 3]);
    let key = (0..)
        .map(|i| format!("moved-{i}"))
        .find(|k| region.contains(route_hash(k.as_bytes())))
        .unwrap();
    c.put(key.as_bytes(), b"v1", PutOptions::default()).unwrap();
    t.cluster.set_faults(1, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    corekv_tests::ctl_move(&mut c, 1, 3, 4).unwrap();
    c.transfer_leader(1, 4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        c.refresh().unwrap();
        if c.routes()
            .iter()
            .any(|r| r.region.id == 1 && r.leader_node == 4)
        {
            break;
        }
        if Instant::now() > deadline {
            let logs: String = [0usize, 3]
                .iter()
                .map(|&i| {
                    let log = t.cluster.nodes[i].dir.join("server.log");
                    format!("node {}:\n{}", i + 1, corekv_tools::dev::tail(&log, 30))
                })
                .collect();
            panic!("node 4 never led region 1; {:?}\n{logs}", c.routes());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.put(key.as_bytes(), b"v2", PutOptions::default()).unwrap();
    t.cluster.set_faults(1, "").unwrap();
    let members: Vec<String> = [0usize, 1, 3]
        .iter()
        .map(|&i| t.cluster.nodes[i].client_addr.clone())
        .collect();
    must_converge(&mut c, &members, 1, Duration::from_secs(20));
    // Two of the three voters (2 and 4) are enough without node 1.
    t.cluster.set_faults(0, "isolate\n").unwrap();
    let mut cfg = ClientConfig::new(t.endpoints());
    cfg.request_timeout = Duration::from_secs(15);
    let mut c2 = Client::connect(cfg).unwrap();
    c2.put(key.as_bytes(), b"v3", PutOptions::default())
        .expect("a write with nodes 2 and 4 up");
    let region = region_in(&c2, 1);
    let node2 = t.cluster.nodes[1].client_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_read(&node2, &region, &key).as_deref() != Some(&b"v3"[..]) {
        assert!(Instant::now() < deadline, "node 2 never applied v3");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.cluster.set_faults(0, "").unwrap();
    must_check_all(&mut c2);
}

#[test]
fn a_node_killed_in_the_middle_of_large_writes_always_starts_again() {
    let t = TestCluster::start(3, 2, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (mut c, stop) = (t.client(), stop.clone());
            std::thread::spawn(move || {
                let value = vec![b'x'; 900 << 10];
                let mut acked = 0u64;
                for i in 0u64.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let key = format!("big-{w}-{}", i % 20);
                    if c.put(key.as_bytes(), &value, PutOptions::default()).is_ok() {
                        acked += 1;
                    }
                }
                acked
            })
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut t = t;
    for round in 0..20 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        kill_and_restart_node_3(&mut t, round);
    }
    stop.store(true, Ordering::Release);
    let acked: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(acked > 20, "only {acked} large writes acknowledged");
    t.must_be_ready(Duration::from_secs(30));
    must_check_all(&mut t.client());
}

#[test]
fn a_node_killed_while_it_installs_a_large_snapshot_starts_again_and_catches_up() {
    // Logs compacted after 100 entries: a node 400 entries behind gets a
    // snapshot.
    let mut t = TestCluster::start(3, 1, &["--log-compact-entries", "100"]);
    let mut c = t.client();
    let region = region_in(&c, 1);
    t.cluster.set_faults(2, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // About 40 MB in region 1 that node 3 does not have.
    let keys = keys_above(&region, 0, "snap-", 500);
    let value = vec![b's'; 80 << 10];
    for k in &keys {
        c.put(k.as_bytes(), &value, PutOptions::default()).unwrap();
    }
    // Node 3 hears again and is sent a snapshot; it is killed again and
    // again meanwhile, and must start every time.
    t.cluster.set_faults(2, "").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for kill in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        kill_and_restart_node_3(&mut t, kill);
    }
    let addrs = t.endpoints();
    must_converge(&mut c, &addrs, 1, Duration::from_secs(60));
    let log = std::fs::read_to_string(t.cluster.nodes[2].dir.join("server.log")).unwrap();
    assert!(
        log.contains("snapshots installed"),
        "node 3 caught up by snapshot"
    );
    for k in keys.iter().step_by(50) {
        assert_eq!(
            local_read(&addrs[2], &region_in(&c, 1), k).map(|v| v.len()),
            Some(80 << 10),
            "node 3's copy of {k}"
        );
    }
    must_check_all(&mut c);
}
