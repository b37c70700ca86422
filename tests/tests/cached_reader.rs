//! The async client's local cache (`AsyncClient::cached`) against real
//! processes: no value read from it is older than its bound, checked
//! against the times of the acknowledged writes, while a leader is cut off
//! from its peers with the cache's watch still connected to it (the case
//! where the watch's own progress would vouch for a log the others have
//! moved past); it serves again once healed; it reloads after a split, and
//! a cache smaller than its prefix reads what it does not hold from the
//! cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_client::aio::{CacheOptions, Cached, Selection};
use corekv_client::{AsyncClient, Consistency, PutOptions};
use corekv_tests::{scrape_sum, TestCluster};

const KEYS: usize = 24;

fn key(i: usize) -> String {
    format!("/cfg/k{i}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An acknowledged write: key, the version it made, when its answer came.
type Acked = (usize, u64, Instant);
/// A read answered by the cache: key, version read, when the read
/// returned.
type Hit = (usize, u64, Instant);

/// Every hit must show a value no older than `bound`: no write to the key
/// newer than the version read may have been acknowledged more than
/// `bound` before the read. Per key, hits never go back. Returns the
/// oldest staleness seen.
fn check_hits(acked: &[Acked], hits: &[Hit], bound: Duration) -> Duration {
    let mut by_key: HashMap<usize, Vec<(u64, Instant)>> = HashMap::new();
    for &(k, version, at) in acked {
        by_key.entry(k).or_default().push((version, at));
    }
    let mut last_seen: HashMap<usize, u64> = HashMap::new();
    let mut worst = Duration::ZERO;
    for &(k, seq, at) in hits {
        let before = last_seen.insert(k, seq).unwrap_or(0);
        assert!(
            seq >= before,
            "{}: read version {seq} after {before}",
            key(k)
        );
        // The earliest acknowledgement of a newer version.
        let newer = by_key
            .get(&k)
            .and_then(|w| w.iter().filter(|(v, _)| *v > seq).map(|(_, t)| *t).min());
        if let Some(superseded_at) = newer {
            if let Some(age) = at.checked_duration_since(superseded_at) {
                worst = worst.max(age);
                assert!(
                    age <= bound,
                    "{}: the cache answered version {seq} {age:?} after a newer write was \
                     acknowledged (bound {bound:?})",
                    key(k)
                );
            }
        }
    }
    worst
}

/// Waits until no node serves a watch (a dropped cache cancels its own,
/// on connections its client keeps open).
fn assert_no_watches_left(t: &TestCluster) {
    let started = Instant::now();
    loop {
        let left: f64 = t
            .cluster
            .nodes
            .iter()
            .map(|n| scrape_sum(n.metrics_addr.as_ref().unwrap(), &["corekv_watches"]))
            .sum();
        if left == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{left} watches still served after the caches were dropped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the cache answers every key with `want`, from memory.
fn all_cached(cache: &Cached, want: &[u8]) -> bool {
    (0..KEYS).all(|i| {
        cache
            .get_cached(key(i).as_bytes())
            .is_some_and(|v| v.is_some_and(|v| v.value == want))
    })
}

/// Waits (20 s at most) until the cache answers every key with `want`.
async fn until_cached(cache: &Cached, want: &[u8]) {
    let started = Instant::now();
    while !all_cached(cache, want) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}, last reload: {}",
            cache.stats(),
            cache.last_reload()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The region of `key(k)`, by the client's table.
fn route_of(client: &AsyncClient, k: usize) -> corekv_client::message::RouteInfo {
    let h = corekv_engine::route_hash(key(k).as_bytes());
    client
        .routes()
        .into_iter()
        .find(|r| r.region.contains(h))
        .unwrap()
}

#[test]
fn a_cached_read_is_never_older_than_its_bound_while_a_leader_is_cut_off() {
    let t = TestCluster::start(3, 2, &[]);
    let mut blocking = t.client();
    for i in 0..KEYS {
        blocking
            .put(key(i).as_bytes(), b"0", PutOptions::default())
            .unwrap();
    }
    let region = blocking
        .routes()
        .iter()
        .find(|r| {
            r.region
                .contains(corekv_engine::route_hash(key(0).as_bytes()))
        })
        .unwrap()
        .clone();
    let victim = t
        .cluster
        .nodes
        .iter()
        .position(|n| n.id == region.leader_node)
        .expect("the region has a leader");
    let cfg = t.cluster.client_config();
    let bound = Duration::from_millis(500);
    let rt = runtime();
    let client = rt.block_on(AsyncClient::connect(cfg)).unwrap();
    let cache = Arc::new(rt.block_on(async {
        client.cached(
            Selection::Prefix(bytes::Bytes::from_static(b"/cfg/")),
            CacheOptions::new(bound),
        )
    }));

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let misses = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // One writer, in order: per key, sequence numbers and acknowledgement
    // times both increase.
    let writer = {
        let (c, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        rt.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) {
                seq += 1;
                let k = seq as usize % KEYS;
                let (name, value) = (key(k), seq.to_string());
                let put = c.put(name.as_bytes(), value.as_bytes(), PutOptions::default());
                if let Ok(version) = put.await {
                    acked.lock().unwrap().push((k, version, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let reader = {
        let (cache, stop, hits, misses) =
            (cache.clone(), stop.clone(), hits.clone(), misses.clone());
        rt.spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let k = (n * 7) % KEYS;
                match cache.get_cached(key(k).as_bytes()) {
                    Some(Some(v)) => {
                        hits.lock().unwrap().push((k, v.version, Instant::now()));
                    }
                    Some(None) => panic!("the cache says {} has no value", key(k)),
                    None => {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let hits_now = || hits.lock().unwrap().len();
    let wait_for_hits = |what: &str| {
        let from = hits_now();
        let started = Instant::now();
        while hits_now() < from + 200 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: the cache serves nothing: {:?}, last reload: {}",
                cache.stats(),
                cache.last_reload()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    };
    let warm = wait_for_hits("after the start");
    std::thread::sleep(Duration::from_secs(2));

    // The leader of /cfg/k0's region loses its peers; client traffic to it
    // still flows, so the cache's watch stays on it until it steps down.
    let misses_before = misses.load(Ordering::Relaxed);
    t.cluster.set_faults(victim, "isolate\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let misses_cut = misses.load(Ordering::Relaxed) - misses_before;
    t.cluster.set_faults(victim, "").unwrap();
    let healed = wait_for_hits("after healing");

    // The node leading /cfg/k0's region now stops dead: its watches fall
    // silent while another replica takes over. Once it has, a writer that
    // knows only the other nodes writes /cfg/k0 there (the first writer
    // waits on the stopped node).
    let leader = route_of(&client, 0).leader_node;
    let paused = t.cluster.nodes.iter().position(|n| n.id == leader).unwrap();
    let misses_before = misses.load(Ordering::Relaxed);
    t.cluster.signal(paused, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1000));
    let mut live = t.cluster.client_config();
    live.endpoints = (0..t.cluster.nodes.len())
        .filter(|&i| i != paused)
        .map(|i| t.cluster.nodes[i].client_addr.clone())
        .collect();
    let side_stop = Arc::new(AtomicBool::new(false));
    let side = {
        let (stop, acked) = (side_stop.clone(), acked.clone());
        rt.spawn(async move {
            let c = AsyncClient::connect(live).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let (name, value) = (key(0), format!("side-{n}"));
                let put = c.put(name.as_bytes(), value.as_bytes(), PutOptions::default());
                if let Ok(version) = put.await {
                    acked.lock().unwrap().push((0, version, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(2000));
    side_stop.store(true, Ordering::Release);
    let side_writes = rt.block_on(side).unwrap();
    t.cluster.signal(paused, libc::SIGCONT);
    let misses_paused = misses.load(Ordering::Relaxed) - misses_before;
    let resumed = wait_for_hits("after the pause");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    rt.block_on(async {
        writer.await.unwrap();
        reader.await.unwrap();
    });

    let acked = acked.lock().unwrap().clone();
    let hits = hits.lock().unwrap().clone();
    let worst = check_hits(&acked, &hits, bound);
    let stats = cache.stats();
    println!(
        "{} writes acknowledged, {} cache hits, worst staleness {worst:?} (bound {bound:?}); \
         misses while cut off: {misses_cut}, while paused: {misses_paused} ({side_writes} \
         writes tried meanwhile); first hits after \
         {warm:?}, after healing {healed:?}, after the pause {resumed:?}; {stats:?}, last reload: {}",
        acked.len(),
        hits.len(),
        cache.last_reload()
    );
    assert!(
        acked.len() > 500,
        "only {} writes acknowledged",
        acked.len()
    );
    // Every watch the cache opened, including those left behind on the
    // stopped node, ends with it.
    drop(Arc::into_inner(cache).expect("the reader is done"));
    std::thread::sleep(Duration::from_millis(100));
    assert_no_watches_left(&t);
    drop(client);
    // The cut-off or stopped leader's region cannot prove freshness: its
    // keys miss.
    assert!(misses_cut > 0, "no read missed while a leader was cut off");
    assert!(
        misses_paused > 0,
        "no read missed while a leader was stopped"
    );
}

#[test]
fn a_cache_of_keys_reloads_after_a_split_not_after_a_replica_move_and_a_small_cache_reads_the_rest_from_the_cluster(
) {
    // Four nodes: a region's replica can move to the one without it.
    let t = TestCluster::start(4, 1, &[]);
    let mut blocking = t.client();
    for i in 0..KEYS {
        blocking
            .put(key(i).as_bytes(), b"first", PutOptions::default())
            .unwrap();
    }
    let cfg = t.cluster.client_config();
    let rt = runtime();
    // Made (and dropped) outside the runtime: its calls block, so the
    // async code below makes them in `block_in_place`.
    let mut admin = t.client();
    rt.block_on(async {
        let client = AsyncClient::connect(cfg).await.unwrap();
        let keys: Vec<bytes::Bytes> = (0..KEYS).map(|i| key(i).into()).collect();
        let cache = client.cached(
            Selection::Keys(keys),
            CacheOptions::new(Duration::from_secs(2)),
        );
        let mut changes = cache.subscribe();
        until_cached(&cache, b"first").await;
        client
            .put(key(3).as_bytes(), b"second", PutOptions::default())
            .await
            .unwrap();
        let c = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("no change came")
            .unwrap();
        assert_eq!(
            (&c.key[..], &c.value[..]),
            (key(3).as_bytes(), &b"second"[..])
        );

        // A split of the keys' region: the cache loads again, then serves
        // what is current.
        let region = route_of(&client, 0);
        client.split(region.region.id, None).await.unwrap();
        for i in 0..KEYS {
            client
                .put(key(i).as_bytes(), b"third", PutOptions::default())
                .await
                .unwrap();
        }
        until_cached(&cache, b"third").await;
        let stats = cache.stats();
        assert!(stats.resyncs >= 1, "no reload after the split: {stats:?}");
        assert!(stats.hits > 0 && stats.invalidations > 0, "{stats:?}");
        println!(
            "cache of keys after a split: {stats:?}, last reload: {}",
            cache.last_reload()
        );

        // A replica of the keys' region moves to the node without one: the
        // range is the same, the cache goes on without a reload.
        client.refresh().await.unwrap();
        let region = route_of(&client, 0);
        let holders: Vec<u64> = region.region.peers.iter().map(|p| p.node_id).collect();
        let to = t
            .cluster
            .nodes
            .iter()
            .map(|n| n.id)
            .find(|n| !holders.contains(n))
            .unwrap();
        let from = *holders.iter().find(|&&n| n != region.leader_node).unwrap();
        tokio::task::block_in_place(|| {
            corekv_tests::ctl_move(&mut admin, region.region.id, from, to)
        })
        .unwrap();
        // Right after the move a leader may change: a put that did not get
        // its answer is tried again.
        for i in 0..KEYS {
            let mut tries = 0;
            while let Err(e) = client
                .put(key(i).as_bytes(), b"fourth", PutOptions::default())
                .await
            {
                tries += 1;
                assert!(tries < 10, "put {} after the move: {e}", key(i));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        until_cached(&cache, b"fourth").await;
        // Probes keep proving it through the new membership.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(all_cached(&cache, b"fourth"), "{:?}", cache.stats());
        let after = cache.stats();
        assert_eq!(
            after.resyncs,
            stats.resyncs,
            "the cache reloaded after a replica move: {}",
            cache.last_reload()
        );

        // A prefix cache with room for 5 of the 24 keys: the rest are read
        // from the cluster, and still right.
        let mut opts = CacheOptions::new(Duration::from_secs(2));
        opts.entries_max = 5;
        let small = client.cached(Selection::Prefix("/cfg/".into()), opts);
        let started = Instant::now();
        while small.stats().fresh_regions == 0 || small.stats().regions == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{:?}",
                small.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..KEYS {
            let v = small.get(key(i).as_bytes()).await.unwrap().unwrap();
            assert_eq!(v.value, &b"fourth"[..], "{}", key(i));
        }
        let s = small.stats();
        assert!(!s.complete && s.entries <= 5, "{s:?}");
        assert!(s.misses >= (KEYS - 5) as u64, "{s:?}");
        // A key the cache does not hold has no answer of its own.
        let held = (0..KEYS)
            .filter(|&i| small.get_cached(key(i).as_bytes()).is_some())
            .count();
        assert!(held <= 5, "{held} keys answered by a cache of 5");
        let got = client
            .get(key(0).as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        assert!(got.is_some());
        // The client and its connections stay; the caches' watches go.
        drop((cache, small));
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::block_in_place(|| assert_no_watches_left(&t));
        assert!(client.connections() > 0);
    });
}
