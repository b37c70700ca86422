//! A real 3-process cluster on 127.0.0.1: forming, reading and writing,
//! restarts, failover, linearizable reads across a leader change, bad input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use corekv_engine::{Consistency, Epoch};
use corekv_net::message::{Frame, Op, Request};
use corekv_net::wire::ErrorCode;
use corekv_net::{ClientError, PutOptions};
use corekv_tests::{assert_still_serves, key_per_region, region_led_by, RawConn, TestCluster};

fn leader_counts(t: &TestCluster) -> HashMap<u64, usize> {
    let c = t.client();
    let mut m = HashMap::new();
    for r in c.routes() {
        *m.entry(r.leader_node).or_insert(0) += 1;
    }
    m
}

#[test]
fn cluster_forms_and_every_region_gets_a_leader() {
    let mut t = TestCluster::start(3, 2, &[]);
    let took = t.must_be_ready(Duration::from_secs(10));
    let c = t.client();
    // Eight regions of data and the meta region.
    assert_eq!(c.routes().len(), 9);
    assert_eq!(c.routes().iter().filter(|r| r.region.is_meta()).count(), 1);
    assert!(c.routes().iter().all(|r| r.leader_node != 0));
    assert_eq!(c.nodes().len(), 3, "every node's client address is known");
    eprintln!(
        "cluster ready; leaders per node: {:?} ({took:?})",
        leader_counts(&t)
    );
}

#[test]
fn writes_are_readable_everywhere_and_survive_a_full_restart() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    for i in 0..200 {
        c.put(
            format!("key-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
            PutOptions::default(),
        )
        .unwrap();
    }
    for node in 0..3 {
        let mut only = t.client_of(node);
        for i in (0..200).step_by(7) {
            let v = only
                .get(format!("key-{i}").as_bytes(), Consistency::Linearizable)
                .unwrap()
                .unwrap();
            assert_eq!(v.value, format!("value-{i}").as_bytes());
        }
    }
    // Every node stops cleanly on SIGTERM...
    for i in 0..3 {
        let st = t.cluster.stop_node(i, Duration::from_secs(10));
        assert!(
            st.is_some_and(|s| s.success()),
            "node {i} did not exit cleanly: {st:?}"
        );
    }
    // ...and comes back with its data.
    for i in 0..3 {
        t.cluster.start_node(i).unwrap();
    }
    t.must_be_ready(Duration::from_secs(30));
    let mut c = t.client();
    for i in 0..200 {
        let v = c
            .get(format!("key-{i}").as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap_or_else(|| panic!("key-{i} lost in the restart"));
        assert_eq!(v.value, format!("value-{i}").as_bytes());
    }
}

#[test]
fn killing_the_busiest_leader_node_fails_over_and_it_catches_up() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    let keys = key_per_region(&c);
    for (_, k) in &keys {
        c.put(k.as_bytes(), b"before", PutOptions::default())
            .unwrap();
    }
    // Let leadership settle on the preferred nodes, then pick the busiest.
    std::thread::sleep(Duration::from_secs(2));
    let counts = leader_counts(&t);
    let (&victim, &led) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let index = t.cluster.nodes.iter().position(|n| n.id == victim).unwrap();
    let killed = Instant::now();
    t.cluster.kill(index);
    // Survivors elect new leaders for the victim's regions...
    let survivor = t.cluster.nodes[(index + 1) % 3].client_addr.clone();
    let elected = loop {
        let routes =
            corekv_net::Client::connect(corekv_net::ClientConfig::new(vec![survivor.clone()]))
                .map(|c| c.routes().to_vec())
                .unwrap_or_default();
        if !routes.is_empty()
            && routes
                .iter()
                .all(|r| r.leader_node != 0 && r.leader_node != victim)
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no new leaders 20 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // ...and every region accepts a write again.
    let mut c = t.client_of((index + 1) % 3);
    let mut window = Duration::ZERO;
    for (region, k) in &keys {
        loop {
            match c.put(k.as_bytes(), b"after", PutOptions::default()) {
                Ok(_) => break,
                Err(ClientError::Unknown(_)) | Err(ClientError::Unavailable { .. }) => {}
                Err(e) => panic!("region {region}: {e}"),
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "region {region} has no leader 20 s after the kill"
            );
        }
        window = window.max(killed.elapsed());
    }
    eprintln!(
        "killed node {victim} (leader of {led} regions): new leaders seen after {elected:?}, \
         every region accepted writes again after {window:?}"
    );
    // The restarted node catches up: a stale read from it sees the new values.
    t.cluster.start_node(index).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let mut only = t.client_of(index);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, k) in &keys {
        loop {
            let v = only.get(k.as_bytes(), Consistency::Stale).unwrap();
            if v.as_ref().is_some_and(|v| v.value == b"after"[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted node did not catch up on {k}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends a linearizable read for `key` straight to `addr` (no client
/// routing) and returns what it answered.
fn read_at(
    addr: &str,
    region: u64,
    epoch: Epoch,
    key: &str,
) -> Option<Result<Option<Vec<u8>>, ErrorCode>> {
    let mut conn = RawConn::connect(addr);
    conn.send(&[Request {
        id: 1,
        region_id: region,
        epoch,
        op: Op::Get {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            consistency: Consistency::Linearizable,
        },
        session: None,
        system: false,
    }]);
    match conn.read_frame()? {
        Frame::Responses(mut rs) => Some(match rs.remove(0).result {
            Ok(corekv_net::message::Outcome::Value(v)) => Ok(v.map(|v| v.value.to_vec())),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e.code()),
        }),
        other => panic!("unexpected {other:?}"),
    }
}

/// Writes until a leader acknowledges the write (after failover), at most 20 s.
fn put_once_a_leader_takes_it(c: &mut corekv_net::Client, key: &[u8], value: &[u8]) {
    let started = Instant::now();
    loop {
        match c.put(key, value, PutOptions::default()) {
            Ok(_) => return,
            Err(ClientError::Unknown(_)) | Err(ClientError::Unavailable { .. }) => {
                assert!(started.elapsed() < Duration::from_secs(20), "no new leader");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_deposed_leader_never_serves_a_stale_linearizable_read() {
    let t = TestCluster::start(3, 1, &[]);
    let mut c = t.client();
    let key = "linearizable-key";
    c.put(key.as_bytes(), b"v1", PutOptions::default()).unwrap();
    let route = c
        .routes()
        .iter()
        .find(|r| r.region.contains(corekv_engine::route_hash(key.as_bytes())))
        .unwrap()
        .clone();
    let old = route.leader_node;
    let old_index = t.cluster.nodes.iter().position(|n| n.id == old).unwrap();
    let old_addr = t.cluster.nodes[old_index].client_addr.clone();
    // Freeze the leader: it keeps believing it leads.
    t.cluster.signal(old_index, libc::SIGSTOP);
    let mut other = t.client_of((old_index + 1) % 3);
    put_once_a_leader_takes_it(&mut other, key.as_bytes(), b"v2");
    // v2 is acknowledged. Wake the old leader and read from it at once.
    t.cluster.signal(old_index, libc::SIGCONT);
    let mut answers = Vec::new();
    for _ in 0..20 {
        if let Some(a) = read_at(&old_addr, route.region.id, route.region.epoch, key) {
            answers.push(a);
        }
    }
    for v in answers.iter().flatten() {
        assert_eq!(
            v.as_deref(),
            Some(&b"v2"[..]),
            "stale read from the deposed leader: {answers:?}"
        );
    }
    assert!(
        answers.iter().any(|a| a.is_err()),
        "the deposed leader should refuse at least the first read: {answers:?}"
    );
    // And through the client every read sees v2.
    for _ in 0..20 {
        let v = c
            .get(key.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap();
        assert_eq!(v.value, &b"v2"[..]);
    }
}

#[test]
fn an_isolated_leader_never_serves_a_stale_linearizable_read() {
    // Node 1 checks its quorum only once a second, so after it is cut off it
    // keeps believing it leads well after the others elected a new leader.
    let mut t = TestCluster::start_with(
        3,
        1,
        &[],
        vec![(1, vec!["--election-ticks".into(), "100".into()])],
    );
    // A region whose preferred leader is node 1, and a key in it.
    let (route, key) = region_led_by(&t, 1, "iso-");
    t.must_be_ready(Duration::from_secs(10));
    let mut c = t.client();
    c.put(key.as_bytes(), b"v1", PutOptions::default()).unwrap();

    t.cluster.set_faults(0, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_millis(250)); // the rules are re-read every 100 ms
    let mut other = t.client_of(1);
    put_once_a_leader_takes_it(&mut other, key.as_bytes(), b"v2");
    // v2 is acknowledged by the majority; node 1, cut off, may still think it
    // leads. A linearizable read there must not return v1.
    let old = t.cluster.nodes[0].client_addr.clone();
    let answers: Vec<_> = (0..3)
        .filter_map(|_| read_at(&old, route.region.id, route.region.epoch, &key))
        .collect();
    for v in answers.iter().flatten() {
        assert_ne!(
            v.as_deref(),
            Some(&b"v1"[..]),
            "stale read from the isolated leader: {answers:?}"
        );
    }
    t.cluster.set_faults(0, "").unwrap();
    let v = c
        .get(key.as_bytes(), Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!(v.value, &b"v2"[..]);
}

#[test]
fn bad_input_gets_an_error_and_the_server_keeps_serving() {
    let t = TestCluster::start(3, 2, &[]);
    let addr = t.cluster.nodes[0].client_addr.clone();
    let mut good = t.client();
    good.put(b"k", b"v", PutOptions::default()).unwrap();

    // Random bytes (a plausible small length, then garbage).
    let mut garbage = RawConn::connect(&addr);
    let mut bytes = 64u32.to_le_bytes().to_vec();
    bytes.extend((0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    std::io::Write::write_all(&mut garbage.stream, &bytes).unwrap();
    match garbage.read_frame() {
        Some(Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::BadFrame),
        other => panic!("random bytes: {other:?}"),
    }
    assert!(
        garbage.read_frame().is_none(),
        "connection closed after the error"
    );

    // A frame announcing 4 GiB.
    let mut huge = RawConn::connect(&addr);
    std::io::Write::write_all(&mut huge.stream, &u32::MAX.to_le_bytes()).unwrap();
    match huge.read_frame() {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code(), ErrorCode::BadFrame);
            assert!(e.message().contains("over the limit"), "{}", e.message());
        }
        other => panic!("4 GiB frame: {other:?}"),
    }

    // A truncated frame, then the client goes away.
    let mut cut = RawConn::connect(&addr);
    std::io::Write::write_all(&mut cut.stream, &1000u32.to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut cut.stream, &[1, 2, 3]).unwrap();
    drop(cut);

    // Requests before the hello.
    let mut rude = RawConn::connect_bare(&addr);
    rude.send(&[Request {
        id: 1,
        region_id: 0,
        epoch: Epoch::default(),
        op: Op::Routes,
        session: None,
        system: false,
    }]);
    match rude.read_frame() {
        Some(Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::BadFrame),
        other => panic!("no hello: {other:?}"),
    }

    // A 2 MiB value is refused with its typed error.
    let big = vec![b'x'; 2 << 20];
    match good.put(b"big", &big, PutOptions::default()) {
        Err(ClientError::Invalid { code, .. }) => assert_eq!(code, ErrorCode::ValueTooLarge),
        other => panic!("2 MiB value: {other:?}"),
    }
    let long_key = vec![b'k'; 5000];
    match good.put(&long_key, b"v", PutOptions::default()) {
        Err(ClientError::Invalid { code, .. }) => assert_eq!(code, ErrorCode::KeyTooLarge),
        other => panic!("5000-byte key: {other:?}"),
    }

    // Everyone else is still served.
    let mut fresh = t.client();
    assert_still_serves(&mut fresh);
}

#[test]
fn follower_reads_never_return_an_overwritten_value_during_a_partition_or_after_failover() {
    let mut t = TestCluster::start(3, 1, &[]);
    let mut c = t.client();
    let key = b"follower-key";
    c.put(key, b"v1", PutOptions::default()).unwrap();
    let region = c
        .routes()
        .iter()
        .find(|r| r.region.contains(corekv_engine::route_hash(key)))
        .unwrap()
        .clone();
    let leader = region.leader_node;
    let follower = region
        .region
        .peers
        .iter()
        .map(|p| p.node_id)
        .find(|&n| n != leader)
        .unwrap();
    let fi = t
        .cluster
        .nodes
        .iter()
        .position(|n| n.id == follower)
        .unwrap();

    // A follower is cut off; the other two go on taking writes.
    t.cluster.set_faults(fi, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_millis(250));
    for i in 0..30 {
        let v = format!("p{i}");
        c.put(key, v.as_bytes(), PutOptions::default()).unwrap();
        // Reads go round-robin over the replicas, the cut-off one included:
        // it answers NotLeader after a while and the client tries the next.
        let got = c.get(key, Consistency::Follower).unwrap().unwrap();
        assert_eq!(got.value, v.as_bytes(), "read {i}");
    }
    t.cluster.set_faults(fi, "").unwrap();

    // The leader node dies; a new leader takes writes; follower reads follow.
    let li = t.cluster.nodes.iter().position(|n| n.id == leader).unwrap();
    t.cluster.kill(li);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let v = format!("f{n}");
        match c.put(key, v.as_bytes(), PutOptions::default()) {
            Ok(_) => {
                let got = c.get(key, Consistency::Follower).unwrap().unwrap();
                assert_eq!(got.value, v.as_bytes(), "after failover, read {n}");
                n += 1;
            }
            Err(ClientError::Unknown(_)) | Err(ClientError::Unavailable { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n > 10, "only {n} writes after failover");
    t.cluster.start_node(li).unwrap();
    t.must_be_ready(Duration::from_secs(30));
}

#[test]
fn a_transferred_leader_stays_and_comes_back_after_a_failover() {
    // Placed by hand: the placement driver, which would even out leader
    // counts again, is off.
    let mut t = TestCluster::start(3, 2, &["--placement-moves-per-min", "0"]);
    let (route, key) = region_led_by(&t, 1, "moved-");
    let region = route.region.id;
    let mut c = t.client();
    c.put(key.as_bytes(), b"before", PutOptions::default())
        .unwrap();
    let took =
        corekv_net::admin::transfer_leader(&mut c, region, 3, Duration::from_secs(10)).unwrap();
    eprintln!("leadership of region {region} moved to node 3 in {took:?}");
    let leader_of = |t: &TestCluster| {
        t.client()
            .routes()
            .iter()
            .find(|r| r.region.id == region)
            .map_or(0, |r| r.leader_node)
    };
    // The automatic balancing (every second) keeps it there.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(leader_of(&t), 3);
    let v = c
        .put(key.as_bytes(), b"after", PutOptions::default())
        .unwrap();
    assert_eq!(
        c.get(key.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .version,
        v
    );
    // Node 3 dies: another node leads; back up and caught up, node 3 leads
    // again, since the preference is part of the replicated region.
    t.cluster.kill(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ![1, 2].contains(&leader_of(&t)) {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.cluster.start_node(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of(&t) != 3 {
        assert!(Instant::now() < deadline, "node 3 never took the lead back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.get(key.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value,
        &b"after"[..]
    );
    // A node without a replica is refused.
    let e = c.transfer_leader(region, 9).unwrap_err();
    assert!(e.to_string().contains("no replica on node 9"), "{e}");
}

#[test]
fn ctl_balance_spreads_leaders_piled_on_one_node_back_over_all() {
    // On command only: the placement driver is off.
    let t = TestCluster::start(3, 1, &["--placement-moves-per-min", "0"]);
    let policy = corekv_shards::placement::Policy::default();
    let mut c = t.client();
    // Pile every region's leadership on node 1.
    let regions: Vec<u64> = c.routes().iter().map(|r| r.region.id).collect();
    for r in &regions {
        corekv_net::admin::transfer_leader(&mut c, *r, 1, Duration::from_secs(15)).unwrap();
    }
    assert_eq!(leader_counts(&t).get(&1), Some(&regions.len()));
    // The dry run shows the plan and moves nothing.
    let plan = corekv_tools::ctl::balance(&mut c, true, &policy, Duration::from_secs(15)).unwrap();
    eprint!("{plan}");
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("would move")).count(),
        6
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leader_counts(&t).get(&1), Some(&regions.len()));
    // Run: 9 regions (8 and the meta region) end up led 3/3/3, and stay so.
    let done = corekv_tools::ctl::balance(&mut c, false, &policy, Duration::from_secs(15)).unwrap();
    eprint!("{done}");
    std::thread::sleep(Duration::from_secs(3));
    let mut counts: Vec<usize> = leader_counts(&t).values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![3, 3, 3], "{:?}", leader_counts(&t));
    c.refresh().unwrap();
    let again = corekv_tools::ctl::balance(&mut c, true, &policy, Duration::from_secs(15)).unwrap();
    assert_eq!(again.trim(), "balanced: nothing to move");
    assert_still_serves_after_put(&mut c);
}

fn assert_still_serves_after_put(c: &mut corekv_net::Client) {
    c.put(b"k", b"v", PutOptions::default()).unwrap();
    assert_still_serves(c);
}
