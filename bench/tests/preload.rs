//! The preload writes every key even while leaders move: a write refused by
//! a replica that no longer leads is sent again, as the native client would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_bench::driver::{self, LoadSpec, Progress, Target};
use corekv_bench::workload::{KeyDist, Mix};
use corekv_engine::Consistency;
use corekv_tests::{data_routes, TestCluster};

#[test]
fn a_preload_while_leaders_move_writes_every_key() {
    let t = TestCluster::start(3, 1, &[]);
    let client = t.client();
    let target = Target::Corekv {
        routes: client.routes().to_vec(),
        nodes: client.nodes().clone(),
        shard_ports: HashMap::new(),
    };
    let keys = 150_000;
    let spec = LoadSpec {
        mix: Mix::WriteOnly,
        keys,
        value_size: 16,
        dist: KeyDist::parse("uniform").unwrap(),
        clients: 4,
        pipeline: 64,
        duration: Duration::from_secs(120),
        warmup: Duration::ZERO,
        rate: None,
        consistency: Consistency::Linearizable,
        threads: 1,
        preload: true,
        seed: 7,
    };
    // Leaders move every 100 ms while the preload runs.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mover = {
        let (stop, mut c, started) = (stop.clone(), t.client(), started.clone());
        std::thread::spawn(move || {
            let mut moves = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (i, r) in data_routes(&c).iter().enumerate() {
                    let to = (moves + i as u64) % 3 + 1;
                    if c.transfer_leader(r.region.id, to).is_ok() {
                        moves += 1;
                    }
                }
                started.store(moves, Ordering::Release);
                std::thread::sleep(Duration::from_millis(100));
            }
            moves
        })
    };
    // The preload starts once a first round of moves is under way (a move
    // is committed before the leader hands over, within about a second).
    let wait = Instant::now() + Duration::from_secs(30);
    while started.load(Ordering::Acquire) < 8 && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stats, took) = driver::run(spec, target, Arc::new(Progress::default())).unwrap();
    stop.store(true, Ordering::Relaxed);
    let moves = mover.join().unwrap();
    let refused: u64 = stats.errors.values().sum();
    eprintln!(
        "preload of {keys} keys in {took:.1?} with {moves} leader moves: {} written, refused {:?}",
        stats.write.len(),
        stats.errors
    );
    assert!(
        refused > 0,
        "no write was refused ({moves} leader moves): the test did not exercise a retry"
    );
    assert_eq!(stats.write.len(), keys, "errors {:?}", stats.errors);
}
