//! Membership on a real cluster: a fourth node joins and receives replicas
//! (`ctl add-node`, `--join`, the placement driver), a node is drained
//! (`ctl remove-node`) with the move target killed in the middle, and every
//! key's history stays linearizable throughout.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_engine::PeerRole;
use corekv_net::message::RouteInfo;
use corekv_net::Client;
use corekv_tests::checker::Operation;
use corekv_tests::TestCluster;
use corekv_tools::ctl;

fn replicas_per_node(routes: &[RouteInfo]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in routes {
        for p in &r.region.peers {
            *m.entry(p.node_id).or_default() += 1;
        }
    }
    m
}

/// Every region has exactly three voters and no learner.
fn assert_three_voters(routes: &[RouteInfo]) {
    for r in routes {
        let voters = r
            .region
            .peers
            .iter()
            .filter(|p| p.role == PeerRole::Voter)
            .count();
        assert_eq!(
            (voters, r.region.peers.len()),
            (3, 3),
            "region {} has {:?}",
            r.region.id,
            r.region.peers
        );
    }
}

/// Paced puts and linearizable gets over `keys` from `threads` clients
/// until `stop`.
fn load(
    t: &TestCluster,
    keys: &[String],
    threads: u64,
    stop: &Arc<AtomicBool>,
    started: Instant,
) -> Vec<std::thread::JoinHandle<Vec<Operation>>> {
    corekv_tests::paced_load(
        t,
        keys,
        (threads, Duration::from_millis(5), 2),
        stop,
        started,
    )
}

fn routes(c: &mut Client) -> Vec<RouteInfo> {
    c.refresh().unwrap();
    c.routes().to_vec()
}

#[test]
fn a_joining_node_receives_replicas_and_a_drained_node_gives_them_all_up() {
    // The placement driver may move one replica per 2 s pass.
    let mut t = TestCluster::start(3, 1, &["--placement-moves-per-min", "60"]);
    let keys: Vec<String> = (0..32).map(|i| format!("m-{i}")).collect();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&t, &keys, 3, &stop, started);
    let mut admin = t.client();

    // Node 4 joins.
    let idx = t.cluster.add_node();
    let (peer, client_addr) = (
        t.cluster.nodes[idx].peer_addr.clone(),
        t.cluster.nodes[idx].client_addr.clone(),
    );
    let told = ctl::add_node(&mut admin, 4, &peer, &client_addr).unwrap();
    eprintln!("{told}");
    t.cluster.start_node(idx).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let before = replicas_per_node(&routes(&mut admin));
    assert_eq!(before.get(&4), None, "a joining node starts empty");

    // The placement driver moves replicas to it by itself: 27 replicas (8
    // regions and the meta region) over 4 nodes, 6 or 7 each.
    let moved_at = Instant::now();
    let after = loop {
        let now = routes(&mut admin);
        let counts = replicas_per_node(&now);
        let settled = now
            .iter()
            .all(|r| r.region.peers.iter().all(|p| p.role == PeerRole::Voter));
        let even = counts.values().all(|c| *c == 6 || *c == 7);
        if settled && counts.len() == 4 && even {
            break now;
        }
        assert!(
            moved_at.elapsed() < Duration::from_secs(90),
            "replicas per node after {:?}: {counts:?}",
            moved_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "balanced by the placement driver in {:?}",
        moved_at.elapsed()
    );
    assert_three_voters(&after);
    assert_eq!(replicas_per_node(&after).values().sum::<usize>(), 27);
    // `ctl balance` agrees: nothing left to move.
    let again = ctl::balance(
        &mut admin,
        true,
        &Default::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(!again.contains("replica:"), "{again}");
    // Then it gives node 4 leaders too, by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leaders = loop {
        let now = routes(&mut admin);
        let led = now.iter().filter(|r| r.leader_node == 4).count();
        if led > 0 {
            break led;
        }
        assert!(Instant::now() < deadline, "node 4 leads nothing: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "node 4 leads {leaders} regions {:?} after joining",
        moved_at.elapsed()
    );

    // Drain node 3; node 4, a target of the drain, is killed a moment in
    // and comes back; the drain is run again until it completes.
    let endpoints = t.endpoints();
    let drain = std::thread::spawn(move || {
        let mut c = Client::connect(corekv_net::ClientConfig::new(endpoints)).unwrap();
        ctl::remove_node(&mut c, 3, false, Duration::from_secs(4)).map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(400));
    t.cluster.kill(idx);
    let first = drain.join().unwrap();
    eprintln!("drain with node 4 killed: {first:?}");
    t.cluster.start_node(idx).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let mut done = None;
    for _ in 0..3 {
        match ctl::remove_node(&mut admin, 3, false, Duration::from_secs(30)) {
            Ok(r) => {
                done = Some(r);
                break;
            }
            Err(e) => eprintln!("drain again: {e:#}"),
        }
    }
    let report = done.expect("node 3 was never drained");
    eprintln!("{report}");
    let drained = routes(&mut admin);
    assert_three_voters(&drained);
    let counts = replicas_per_node(&drained);
    assert_eq!(
        counts.get(&3),
        None,
        "node 3 still holds replicas: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 27);
    // Node 3 destroyed its replicas: its status shows no region.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let own = t
            .client()
            .status_doc(&t.cluster.nodes[2].client_addr)
            .map_or(usize::MAX, |d| d.regions.len());
        if own == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 still routes {own} regions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Node 3 stops; the cluster serves on.
    t.cluster.stop_node(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let mut ops = corekv_tests::stop_load(&stop, workers);
    let writes = corekv_tests::check_histories(&mut t.client(), &keys, started, &mut ops, 100);
    eprintln!(
        "{} operations, {writes} acknowledged writes, every key linearizable",
        ops.len()
    );
}

#[test]
fn a_region_led_here_moves_to_another_shard_under_load_and_stays_there_after_a_restart() {
    // Placed by hand: the placement driver is off.
    let mut t = TestCluster::start(3, 2, &["--placement-moves-per-min", "0"]);
    let (route, _) = corekv_tests::region_led_by(&t, 1, "sh-");
    let r = route.region.clone();
    let keys: Vec<String> = (0..)
        .map(|i| format!("sh-{i}"))
        .filter(|k| r.contains(corekv_engine::route_hash(k.as_bytes())))
        .take(12)
        .collect();
    let addr = t.cluster.nodes[0].client_addr.clone();
    let mut admin = t.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let from = loop {
        if let Some(s) = corekv_net::admin::shard_of(&mut admin, &addr, r.id) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "region {} not in node 1's status",
            r.id
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let to = 1 - from as u32;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&t, &keys, 3, &stop, started);
    std::thread::sleep(Duration::from_millis(500));
    let report =
        corekv_net::admin::move_shard(&mut admin, r.id, 1, to, Duration::from_secs(10)).unwrap();
    eprintln!("{report}");
    // And back and forth once more, under the same load.
    corekv_net::admin::move_shard(&mut admin, r.id, 1, from as u32, Duration::from_secs(10))
        .unwrap();
    corekv_net::admin::move_shard(&mut admin, r.id, 1, to, Duration::from_secs(10)).unwrap();
    // Refused: a shard the node does not have.
    assert!(corekv_net::admin::move_shard(&mut admin, r.id, 1, 7, Duration::from_secs(1)).is_err());
    std::thread::sleep(Duration::from_millis(500));
    let mut ops = corekv_tests::stop_load(&stop, workers);

    // The placement is stored: after a restart the replica is still there.
    t.cluster.stop_node(0, Duration::from_secs(10));
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while corekv_net::admin::shard_of(&mut admin, &addr, r.id) != Some(to as usize) {
        assert!(
            Instant::now() < deadline,
            "after the restart region {} is not on shard {to}",
            r.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let writes = corekv_tests::check_histories(&mut t.client(), &keys, started, &mut ops, 50);
    eprintln!(
        "{} operations, {writes} acknowledged writes, every key linearizable",
        ops.len()
    );
}
