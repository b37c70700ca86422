//! The meta region on a real cluster: it holds the node list, the routing
//! table and the region id allocator; its keys are written by the cluster
//! only; a node holding no replica still answers routing queries with the
//! whole table; splits take their ids from the allocator.

use std::time::{Duration, Instant};

use corekv_engine::region::{FIRST_ALLOCATED_ID, META_REGION_ID};
use corekv_engine::Consistency;
use corekv_net::client::covers_hash_space;
use corekv_net::meta;
use corekv_net::wire::ErrorCode;
use corekv_net::{ClientError, PutOptions};
use corekv_tests::TestCluster;
use corekv_tools::ctl;

/// Waits until `f` holds (the nodes write the meta region twice a second).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_meta_region_holds_nodes_routes_and_ids_and_any_node_routes_everything() {
    let started = Instant::now();
    let mut t = TestCluster::start(3, 1, &["--placement-moves-per-min", "0"]);
    let mut admin = t.client();
    admin.set_system(true);

    // The node list: every node recorded itself.
    eventually("three nodes in the node list", || {
        meta::read_nodes(&mut admin).is_ok_and(|n| n.len() == 3)
    });
    let nodes = meta::read_nodes(&mut admin).unwrap();
    for (n, node) in nodes.iter().zip(&t.cluster.nodes) {
        assert_eq!(
            (n.id, &n.client_addr, n.leaving),
            (node.id, &node.client_addr, false)
        );
    }
    // The routing table: the leaders' reports cover the hash space, the
    // meta region included.
    eventually("the leaders' reports cover the hash space", || {
        meta::read_routes(&mut admin, &[1, 2, 3]).is_ok_and(|r| {
            covers_hash_space(&r) && r.len() == 9 && r.iter().all(|x| x.leader_node != 0)
        })
    });
    let table = meta::read_routes(&mut admin, &[1, 2, 3]).unwrap();
    eprintln!(
        "node list and routing table complete {:?} after start",
        started.elapsed()
    );
    assert!(table
        .iter()
        .any(|r| r.region.id == META_REGION_ID && r.region.is_meta()));

    // Clients read the metadata keys but may not write them.
    let mut user = t.client();
    let got = user
        .get(&meta::nodes_key(), Consistency::Linearizable)
        .unwrap()
        .expect("the node list");
    assert_eq!(meta::decode_nodes(&got.value).unwrap(), nodes);
    match user.put(&meta::nodes_key(), b"1 x y up\n", PutOptions::default()) {
        Err(ClientError::Invalid { code, message }) => {
            assert_eq!(code, ErrorCode::InvalidRequest);
            assert!(message.contains("metadata"), "{message}");
        }
        other => panic!("a user write of the node list got {other:?}"),
    }
    assert_eq!(meta::read_nodes(&mut admin).unwrap(), nodes, "unchanged");
    // Nor can a client that marks its requests as the cluster's own write
    // anything but what the cluster writes there.
    let mut forger = t.client();
    forger.set_system(true);
    let refused = |r: Result<u64, ClientError>| match r {
        Err(ClientError::Invalid { code, message }) => {
            assert_eq!(code, ErrorCode::InvalidRequest);
            assert!(message.contains("metadata write refused"), "{message}");
        }
        other => panic!("a forged metadata write got {other:?}"),
    };
    refused(forger.put(&meta::routes_key(1), b"garbage", PutOptions::default()));
    refused(forger.put(&meta::nodes_key(), b"1 x y up\n", PutOptions::default()));
    let mut other = corekv_engine::META_PREFIX.to_vec();
    other.extend_from_slice(b"anything");
    refused(forger.put(&other, b"x", PutOptions::default()));
    match forger.delete(&meta::nodes_key(), None) {
        Err(ClientError::Invalid { message, .. }) => {
            assert!(message.contains("metadata write refused"), "{message}")
        }
        other => panic!("a forged delete of the node list got {other:?}"),
    }
    assert_eq!(meta::read_nodes(&mut admin).unwrap(), nodes, "unchanged");
    // The meta region does not split.
    let e = ctl::split(&mut admin, META_REGION_ID, None).unwrap_err();
    assert!(format!("{e:#}").contains("does not split"), "{e:#}");

    // Splits take their region ids from the allocator: distinct, from the
    // first allocated id up.
    let data: Vec<u64> = admin
        .routes()
        .iter()
        .filter(|r| !r.region.is_meta())
        .map(|r| r.region.id)
        .take(2)
        .collect();
    for r in &data {
        ctl::split(&mut admin, *r, None).unwrap();
    }
    admin.refresh().unwrap();
    let mut new: Vec<u64> = admin
        .routes()
        .iter()
        .map(|r| r.region.id)
        .filter(|id| *id > META_REGION_ID)
        .collect();
    new.sort_unstable();
    new.dedup();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|id| *id >= FIRST_ALLOCATED_ID), "{new:?}");
    let next: u64 = {
        let v = admin
            .get(&meta::next_region_id_key(), Consistency::Linearizable)
            .unwrap()
            .expect("the allocator's next id");
        String::from_utf8(v.value.to_vec())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(new.iter().all(|id| *id < next), "{new:?} below {next}");
    // A later reservation never hands them out again.
    let block = meta::reserve_region_ids(&mut admin, 4).unwrap();
    assert!(block.start >= next && block.end == block.start + 4);
    eprintln!("split ids {new:?}, allocator at {next}, then reserved {block:?}");

    // Node 4 is added: recorded in the meta region, and every node takes
    // its addresses from there.
    let idx = t.cluster.add_node();
    let (peer, client_addr) = (
        t.cluster.nodes[idx].peer_addr.clone(),
        t.cluster.nodes[idx].client_addr.clone(),
    );
    let told = ctl::add_node(&mut admin, 4, &peer, &client_addr).unwrap();
    assert!(told.contains("every node has taken it"), "{told}");
    assert!(meta::read_nodes(&mut admin)
        .unwrap()
        .iter()
        .any(|n| n.id == 4 && n.peer_addr == peer && !n.leaving));
    // The same id with another peer address is refused.
    let e = ctl::add_node(&mut admin, 4, "127.0.0.1:1", &client_addr).unwrap_err();
    assert!(
        format!("{e:#}").contains("known with peer address"),
        "{e:#}"
    );

    // It starts holding nothing (the driver is off), yet answers routing
    // queries with the whole table, and serves through it.
    t.cluster.start_node(idx).unwrap();
    eventually("node 4 routes the whole hash space", || {
        let mut c = t.client_of(idx);
        c.refresh().is_ok()
            && covers_hash_space(&c.routes())
            && c.routes().iter().any(|r| r.region.is_meta())
    });
    eprintln!(
        "node 4 routes the whole hash space {:?} after start",
        started.elapsed()
    );
    let mut via4 = t.client_of(idx);
    via4.put(b"via-node-4", b"v", PutOptions::default())
        .unwrap();
    let doc = admin.status_doc(&client_addr).unwrap();
    assert!(doc.regions.is_empty(), "{doc:?}");
    assert_eq!(
        &user
            .get(b"via-node-4", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value[..],
        b"v"
    );
    // Its peer address reached every node through the meta region.
    for i in 0..3 {
        let known = admin
            .status_doc(&t.cluster.nodes[i].client_addr)
            .unwrap()
            .known_nodes;
        assert!(known.contains(&4), "node {} knows {known:?}", i + 1);
    }
}
