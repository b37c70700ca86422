//! Shard ports on a real cluster: each shard of a node also listens on a
//! port of its own (`--shard-ports auto|off|FIRST`), the node's `Hello` lists
//! them, routing answers name the shard serving each region on its leader,
//! and a shard-aware client reaches that shard directly: nothing passes
//! between the shards of its leader, while a request sent to another shard's
//! port is passed on and still answered.

use std::io::Write;
use std::time::{Duration, Instant};

use corekv_engine::Consistency;
use corekv_net::message::{encode_hello, Frame, Op, Outcome, Request};
use corekv_net::status::{NodeStatus, Role};
use corekv_net::{Client, ClientConfig, PutOptions};
use corekv_tests::{data_routes, key_per_region, RawConn, TestCluster};

/// The ports a node's `Hello` lists.
fn hello_ports(addr: &str) -> Vec<u16> {
    let mut c = RawConn::connect_bare(addr);
    c.stream.write_all(&encode_hello(0, 0, &[])).unwrap();
    match c.read_frame() {
        Some(Frame::Hello {
            shard_ports,
            shard_count,
            ..
        }) => {
            assert_eq!(shard_count, 2);
            shard_ports
        }
        other => panic!("{addr}: expected hello, got {other:?}"),
    }
}

/// A node's status document.
fn status(c: &mut Client, addr: &str) -> NodeStatus {
    c.status_doc(addr).unwrap()
}

/// Requests each shard of the node at `addr` passed on to another shard.
fn forwarded(c: &mut Client, addr: &str) -> u64 {
    status(c, addr)
        .shards
        .iter()
        .map(|s| s.forwarded_requests)
        .sum()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn shards_listen_on_their_own_ports_and_shard_aware_clients_reach_them_directly() {
    // Node 1 counts its shard ports from a first port, node 2 has none,
    // node 3 lets the system pick them. No placement moves, so regions stay
    // on the shards the routing answers name.
    let first = corekv_tests::pick_base(3) + 50;
    let mut t = TestCluster::start_with(
        3,
        2,
        &["--placement-moves-per-min", "0"],
        vec![
            (1, vec!["--shard-ports".into(), first.to_string()]),
            (2, vec!["--shard-ports".into(), "off".into()]),
        ],
    );
    let addrs = t.endpoints();
    let mut admin = t.client();

    // Hello and status agree on the ports.
    let ports: Vec<Vec<u16>> = addrs.iter().map(|a| hello_ports(a)).collect();
    assert_eq!(
        ports[0],
        vec![first, first + 1],
        "node 1: from --shard-ports"
    );
    assert!(ports[1].is_empty(), "node 2 has --shard-ports off");
    assert_eq!(ports[2].len(), 2);
    assert!(ports[2].iter().all(|p| *p != 0 && *p != port_of(&addrs[2])));
    assert_ne!(ports[2][0], ports[2][1]);
    for (addr, p) in addrs.iter().zip(&ports) {
        let s = status(&mut admin, addr);
        let listed: Vec<u16> = s
            .shards
            .iter()
            .map(|x| x.port)
            .filter(|p| *p != 0)
            .collect();
        assert_eq!(&listed, p, "{addr}: status and hello");
    }

    // One key per data region, written.
    let keys = key_per_region(&admin);
    for (_, k) in &keys {
        admin
            .put(k.as_bytes(), k.as_bytes(), PutOptions::default())
            .unwrap();
    }

    // Routing answers name the shard serving each region on its leader: the
    // shard the leader's own status shows (the reports of other nodes' leaders
    // reach every node through the meta region within a second or so).
    let deadline = Instant::now() + Duration::from_secs(20);
    let routes = loop {
        let routes = data_routes(&t.client());
        let mut statuses = std::collections::HashMap::new();
        let agree = routes.iter().all(|r| {
            let Some(shard) = r.leader_shard else {
                return false;
            };
            let i = (r.leader_node - 1) as usize;
            let s = statuses
                .entry(i)
                .or_insert_with(|| status(&mut admin, &addrs[i]));
            s.regions
                .iter()
                .any(|x| x.id == r.region.id && x.role == Role::Leader && x.shard == shard as usize)
        });
        if agree {
            break routes;
        }
        assert!(
            Instant::now() < deadline,
            "routes never named every leader's shard: {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // A shard-aware client: nothing passes between the shards of nodes 1
    // and 3 (the nodes' own metadata requests may add one or two when a
    // leader changes; a client going to the shared port instead would pass
    // on about half of its 240 requests).
    let before: Vec<u64> = addrs.iter().map(|a| forwarded(&mut admin, a)).collect();
    let mut aware = t.client();
    for round in 0..10 {
        for (_, k) in &keys {
            let got = aware.get(k.as_bytes(), Consistency::Linearizable).unwrap();
            assert_eq!(got.unwrap().value, k.as_bytes());
            if round % 3 == 0 {
                aware
                    .put(k.as_bytes(), k.as_bytes(), PutOptions::default())
                    .unwrap();
            }
        }
    }
    let after: Vec<u64> = addrs.iter().map(|a| forwarded(&mut admin, a)).collect();
    for i in [0, 2] {
        assert!(
            after[i] - before[i] <= 2,
            "node {}: {} requests passed between shards for a shard-aware client",
            i + 1,
            after[i] - before[i]
        );
    }

    // A request sent to the port of the shard that does not serve its
    // region is passed on and answered.
    let mut sent = [0u64; 3];
    for r in routes.iter().filter(|r| r.leader_node != 2) {
        let i = (r.leader_node - 1) as usize;
        let other = 1 - r.leader_shard.unwrap() as usize;
        let host = addrs[i].rsplit_once(':').unwrap().0;
        let mut raw = RawConn::connect(&format!("{host}:{}", ports[i][other]));
        let (_, key) = keys.iter().find(|(id, _)| *id == r.region.id).unwrap();
        raw.send(&[Request {
            id: 7,
            region_id: r.region.id,
            epoch: r.region.epoch,
            op: Op::Get {
                key: bytes::Bytes::from(key.clone()),
                consistency: Consistency::Linearizable,
            },
            session: None,
            system: false,
        }]);
        match raw.read_frame() {
            Some(Frame::Responses(rs)) => match &rs[0].result {
                Ok(Outcome::Value(Some(v))) => assert_eq!(v.value, key.as_bytes()),
                other => panic!("region {}: {other:?}", r.region.id),
            },
            other => panic!("region {}: {other:?}", r.region.id),
        }
        sent[i] += 1;
    }
    assert!(sent[0] + sent[2] > 0, "nodes 1 and 3 lead no data region");
    for i in [0, 2] {
        let now = forwarded(&mut admin, &addrs[i]);
        assert!(
            now - after[i] >= sent[i],
            "node {}: {} requests to the wrong shard, {} passed on",
            i + 1,
            sent[i],
            now - after[i]
        );
    }

    // A client that is not shard-aware still reads everything, through the
    // shared client ports.
    let mut cfg = ClientConfig::new(addrs.clone());
    cfg.shard_aware = false;
    let mut plain = Client::connect(cfg).unwrap();
    for (_, k) in &keys {
        let got = plain.get(k.as_bytes(), Consistency::Linearizable).unwrap();
        assert_eq!(got.unwrap().value, k.as_bytes());
    }

    // Node 3 restarts and its shards listen on other ports: the client that
    // learnt the old ones finds the new ones and reads everything again.
    t.cluster.kill(2);
    t.cluster.start_node(2).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let restarted = hello_ports(&addrs[2]);
    eprintln!(
        "node 3 shard ports {:?}, after its restart {restarted:?}",
        ports[2]
    );
    assert_eq!(restarted.len(), 2);
    for (_, k) in &keys {
        let got = aware.get(k.as_bytes(), Consistency::Linearizable).unwrap();
        assert_eq!(got.unwrap().value, k.as_bytes());
    }
    // Once node 3 leads again, the client's reloaded routes send to its
    // shards: a read there works and leaves the client with the new ports.
    let deadline = Instant::now() + Duration::from_secs(20);
    let led = loop {
        let routes = data_routes(&t.client());
        if let Some(r) = routes
            .iter()
            .find(|r| r.leader_node == 3 && r.leader_shard.is_some())
        {
            break r.region.id;
        }
        assert!(Instant::now() < deadline, "node 3 never led a region again");
        std::thread::sleep(Duration::from_millis(200));
    };
    aware.refresh().unwrap();
    let (_, key) = keys.iter().find(|(id, _)| *id == led).unwrap();
    let got = aware
        .get(key.as_bytes(), Consistency::Linearizable)
        .unwrap();
    assert_eq!(got.unwrap().value, key.as_bytes());
    assert_eq!(aware.shard_ports_of(3).unwrap(), restarted);
}
