//! Region splits on a real 3-process cluster: under writes and a watch,
//! across restarts, and stale routing after them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::{route_hash, Consistency};
use corekv_net::message::{Frame, Op, Request, WireError};
use corekv_net::{Change, ClientError, PutOptions};
use corekv_tests::{region_led_by, RawConn, TestCluster};

#[test]
fn a_split_under_writes_loses_nothing_and_a_watch_across_it_sees_every_change_once() {
    let mut t = TestCluster::start(3, 2, &[]);
    let (route, _) = region_led_by(&t, 1, "s-");
    let r = route.region.clone();
    let mid = r.middle();
    // Keys of the region, half below the middle and half above.
    let mut low = Vec::new();
    let mut high = Vec::new();
    for k in (0..).map(|i| format!("s-{i}")) {
        let h = route_hash(k.as_bytes());
        if !r.contains(h) {
            continue;
        }
        if h < mid && low.len() < 5 {
            low.push(k);
        } else if h >= mid && high.len() < 5 {
            high.push(k);
        }
        if low.len() == 5 && high.len() == 5 {
            break;
        }
    }
    let keys: Vec<String> = low.iter().chain(high.iter()).cloned().collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let mut wc = t.client();
    let w = wc.watch(&refs, 0).unwrap();

    // Writes keep going through the split.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, keys, stop) = (t.client(), keys.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked: HashMap<String, (String, u64)> = HashMap::new();
            let mut tried: HashMap<String, String> = HashMap::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                let key = &keys[i % keys.len()];
                let value = format!("w{i}");
                tried.insert(value.clone(), key.clone());
                match c.put(key.as_bytes(), value.as_bytes(), PutOptions::default()) {
                    Ok(v) => {
                        acked.insert(value, (key.clone(), v));
                    }
                    Err(ClientError::Unknown(_)) => {}
                    Err(e) => panic!("put {key}: {e}"),
                }
                i += 1;
            }
            (acked, tried)
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let mut admin = t.client();
    let shown = corekv_tools::ctl::split(&mut admin, r.id, None).unwrap();
    eprint!("{shown}");
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Release);
    let (acked, tried) = writer.join().unwrap();

    // The layout: the region keeps the lower half, a new one the upper.
    let routes = admin.routes().to_vec();
    assert_eq!(
        routes.len(),
        10,
        "8 regions, the meta region and the new one"
    );
    let kept = routes.iter().find(|x| x.region.id == r.id).unwrap();
    assert_eq!(
        (kept.region.start_hash, kept.region.end_hash),
        (r.start_hash, mid)
    );
    assert_eq!(kept.region.epoch.version, r.epoch.version + 1);
    let new = routes.iter().find(|x| x.region.start_hash == mid).unwrap();
    assert_eq!(new.region.end_hash, r.end_hash);
    let new_id = new.region.id;

    // Last writes on each side: the watch must reach both.
    let mut c = t.client();
    let fin_low = c
        .put(low[0].as_bytes(), b"final", PutOptions::default())
        .unwrap();
    let fin_high = c
        .put(high[0].as_bytes(), b"final", PutOptions::default())
        .unwrap();
    let mut got: Vec<Change> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reached = |got: &Vec<Change>, k: &str, v: u64| {
        got.iter().any(|c| c.key == k.as_bytes() && c.version == v)
    };
    while !(reached(&got, &low[0], fin_low) && reached(&got, &high[0], fin_high)) {
        assert!(
            Instant::now() < deadline,
            "the watch stalled after {} changes",
            got.len()
        );
        if let Some(ch) = w.next(Duration::from_millis(100)).unwrap() {
            got.push(ch);
        }
    }
    // Each key's changes once, in order; every acknowledged write; nothing
    // that was not written.
    let mut per_key: HashMap<&[u8], Vec<u64>> = HashMap::new();
    for ch in &got {
        per_key.entry(&ch.key[..]).or_default().push(ch.version);
    }
    for (k, vs) in &per_key {
        assert!(
            vs.windows(2).all(|p| p[0] < p[1]),
            "{}: {vs:?}",
            String::from_utf8_lossy(k)
        );
    }
    let seen: HashMap<String, u64> = got
        .iter()
        .map(|c| (String::from_utf8_lossy(&c.value).into_owned(), c.version))
        .collect();
    for (value, (key, version)) in &acked {
        assert_eq!(seen.get(value), Some(version), "{key} = {value} missing");
    }
    let mut values = HashSet::new();
    for ch in got.iter().filter(|c| &c.value[..] != b"final") {
        let v = String::from_utf8_lossy(&ch.value).into_owned();
        assert_eq!(tried.get(&v).map(String::as_bytes), Some(&ch.key[..]));
        assert!(values.insert(v));
    }
    eprintln!(
        "split of region {} into {} and {new_id}: {} writes acknowledged, {} changes watched",
        r.id,
        r.id,
        acked.len(),
        got.len()
    );

    // A request routed with the old epoch is told about the new layout.
    let addr = t.cluster.nodes[0].client_addr.clone();
    let mut raw = RawConn::connect(&addr);
    raw.send(&[Request {
        id: 1,
        region_id: r.id,
        epoch: r.epoch,
        op: Op::Get {
            key: Bytes::copy_from_slice(high[1].as_bytes()),
            consistency: Consistency::Linearizable,
        },
        session: None,
        system: false,
    }]);
    match raw.read_frame() {
        Some(Frame::Responses(rs)) => match &rs[0].result {
            Err(WireError::EpochNotMatch { regions, .. }) => {
                assert_eq!(regions[0].end_hash, mid);
            }
            other => panic!("expected EpochNotMatch, got {other:?}"),
        },
        other => panic!("{other:?}"),
    }
    drop(raw);

    // Both halves survive a restart of every node.
    for i in 0..3 {
        t.cluster.stop_node(i, Duration::from_secs(10));
    }
    for i in 0..3 {
        t.cluster.start_node(i).unwrap();
    }
    t.must_be_ready(Duration::from_secs(30));
    let mut c = t.client();
    assert_eq!(c.routes().len(), 10);
    for k in [&low[0], &high[0]] {
        let v = c
            .get(k.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap();
        assert_eq!(&v.value[..], b"final");
    }
    let v = c
        .put(high[2].as_bytes(), b"after-restart", PutOptions::default())
        .unwrap();
    assert!(v > fin_high);
}

/// Keys whose hashes fall in the upper quarter of `r`'s range.
fn keys_in_upper_quarter(r: &corekv_engine::Region, prefix: &str, n: usize) -> Vec<String> {
    let from = u128::from(r.start_hash) + (r.end_u128() - u128::from(r.start_hash)) * 3 / 4;
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| {
            let h = route_hash(k.as_bytes());
            u128::from(h) >= from && r.contains(h)
        })
        .take(n)
        .collect()
}

#[test]
fn a_hot_region_splits_by_itself_where_its_load_halves_and_its_halves_lead_from_two_nodes() {
    // About 600 requests/s go to one region; the threshold is 400/s for two
    // seconds, so the region splits, and each half (~300/s) stays whole.
    let t = TestCluster::start(
        3,
        1,
        &[
            "--split-load-ops",
            "400",
            "--split-load-windows",
            "2",
            "--split-cooldown-ms",
            "600000",
        ],
    );
    let (route, _) = region_led_by(&t, 1, "hot-");
    let r = route.region.clone();
    let keys = keys_in_upper_quarter(&r, "hot-", 16);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = corekv_tests::paced_load(
        &t,
        &keys,
        (4, Duration::from_micros(6_500), 3),
        &stop,
        started,
    );

    // The split shows in the routing table.
    let mut admin = t.client();
    let deadline = Instant::now() + Duration::from_secs(40);
    let (kept, new) = loop {
        admin.refresh().unwrap();
        let routes = admin.routes().to_vec();
        if routes.len() > 9 {
            let kept = routes.iter().find(|x| x.region.id == r.id).unwrap().clone();
            let new = routes
                .iter()
                .find(|x| x.region.start_hash == kept.region.end_hash)
                .unwrap()
                .clone();
            break (kept, new);
        }
        assert!(
            Instant::now() < deadline,
            "the hot region did not split by itself"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let split_at = new.region.start_hash;
    // Where the load halves: inside the hot quarter, not the range's middle.
    let in_new = keys
        .iter()
        .filter(|k| new.region.contains(route_hash(k.as_bytes())))
        .count();
    eprintln!(
        "region {} split by load at {split_at:016x} ({} of the {} hot keys moved to region {})",
        r.id,
        in_new,
        keys.len(),
        new.region.id
    );
    assert!(
        (4..=12).contains(&in_new),
        "the cut leaves {in_new} of 16 hot keys in the new region"
    );
    assert_eq!(kept.region.end_hash, split_at);
    assert_eq!(new.region.end_hash, r.end_hash);
    // The new region prefers another node, and leadership moves there.
    let preferred = new.region.peers[0].node_id;
    assert_ne!(preferred, 1, "both halves prefer node 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        admin.refresh().unwrap();
        let leader = |id: u64| {
            admin
                .routes()
                .iter()
                .find(|x| x.region.id == id)
                .map_or(0, |x| x.leader_node)
        };
        if leader(new.region.id) == preferred && leader(r.id) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the halves are led by nodes {} and {}",
            leader(r.id),
            leader(new.region.id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Load goes on a moment with the halves on two nodes, then every key's
    // history (with a final read) must be linearizable.
    std::thread::sleep(Duration::from_secs(1));
    let mut ops = corekv_tests::stop_load(&stop, workers);
    let writes = corekv_tests::check_histories(&mut t.client(), &keys, started, &mut ops, 100);
    eprintln!(
        "{} operations ({writes} acknowledged writes) linearizable across the split",
        ops.len()
    );
}

#[test]
fn a_region_over_its_key_limit_splits_at_its_middle_and_keeps_every_key() {
    splits_by_size(&["--split-keys", "400"], 0);
}

#[test]
fn a_region_over_its_byte_limit_splits_at_its_middle_and_keeps_every_key() {
    // 600 values of 2.5 KiB: about 1.5 MiB, over 1 MiB; a half (at most
    // 380 keys) stays under it.
    splits_by_size(&["--split-keys", "0", "--split-mb", "1"], 2560);
}

/// 600 keys written to one region of a cluster started with `limit`: it
/// splits by itself at its middle, once, and keeps every key. Values are
/// the key, padded to `value_len` bytes.
fn splits_by_size(limit: &[&str], value_len: usize) {
    let mut args = vec!["--split-cooldown-ms", "600000"];
    args.extend_from_slice(limit);
    let t = TestCluster::start(3, 1, &args);
    let value_of = |k: &str| {
        let mut v = k.as_bytes().to_vec();
        v.resize(value_len.max(v.len()), b'.');
        v
    };
    let (route, _) = region_led_by(&t, 2, "big-");
    let r = route.region.clone();
    let keys: Vec<String> = (0..)
        .map(|i| format!("big-{i}"))
        .filter(|k| r.contains(route_hash(k.as_bytes())))
        .take(600)
        .collect();
    let mut c = t.client();
    let mut versions = HashMap::new();
    for k in &keys {
        let v = c
            .put(k.as_bytes(), &value_of(k), PutOptions::default())
            .unwrap();
        versions.insert(k.clone(), v);
    }
    // Sizes are counted every 10 s; the region then splits by itself.
    let deadline = Instant::now() + Duration::from_secs(40);
    let new = loop {
        c.refresh().unwrap();
        if let Some(kept) = c.routes().iter().find(|x| x.region.id == r.id) {
            if kept.region.end_hash != r.end_hash {
                let at = kept.region.end_hash;
                break c
                    .routes()
                    .iter()
                    .find(|x| x.region.start_hash == at)
                    .unwrap()
                    .clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "a region of 600 keys did not split"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        new.region.start_hash,
        r.middle(),
        "split at the middle of the range"
    );
    let moved = keys
        .iter()
        .filter(|k| new.region.contains(route_hash(k.as_bytes())))
        .count();
    eprintln!(
        "region {} split by size ({limit:?}): {moved} of 600 keys now in region {}",
        r.id, new.region.id
    );
    assert!((220..=380).contains(&moved), "{moved} keys moved");
    for k in &keys {
        let v = c
            .get(k.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(&v.value[..], &value_of(k)[..]);
        assert_eq!(v.version, versions[k]);
    }
    // Each half is under the limit now: no further split of them.
    std::thread::sleep(Duration::from_secs(12));
    c.refresh().unwrap();
    assert_eq!(c.routes().len(), 10, "one split only");
}

/// Region ids, ranges and epoch versions of the replicas node `i` holds
/// (its status document: its own view, not the routing table it would
/// answer, which the meta region's table completes).
fn layout_of(t: &TestCluster, i: usize) -> Option<Vec<(u64, u64, u64, u64)>> {
    let doc = t
        .client_of(i)
        .status_doc(&t.cluster.nodes[i].client_addr)
        .ok()?;
    let mut v: Vec<(u64, u64, u64, u64)> = doc
        .regions
        .iter()
        .map(|r| (r.id, r.start_hash, r.end_hash, r.epoch.version))
        .collect();
    v.sort_unstable();
    Some(v)
}

#[test]
fn a_leader_killed_as_it_splits_leaves_every_node_with_one_layout_and_every_write() {
    let mut t = TestCluster::start(3, 1, &[]);
    let (route, _) = region_led_by(&t, 1, "mid-");
    let r = route.region.clone();
    let keys: Vec<String> = (0..)
        .map(|i| format!("mid-{i}"))
        .filter(|k| r.contains(route_hash(k.as_bytes())))
        .take(40)
        .collect();
    let mut c = t.client();
    for k in &keys {
        c.put(k.as_bytes(), b"before", PutOptions::default())
            .unwrap();
    }
    // The split is proposed on node 1, which dies a moment later: the split
    // is committed or not, but never half applied.
    let splitter = {
        let mut admin = t.client();
        std::thread::spawn(move || admin.split(r.id, None).map_err(|e| e.to_string()))
    };
    std::thread::sleep(Duration::from_micros(500));
    t.cluster.kill(0);
    let outcome = splitter.join().unwrap();
    eprintln!("split as the leader died: {outcome:?}");
    // The others take over both halves (or the whole region).
    let mut versions = HashMap::new();
    for k in &keys {
        let v = c
            .put(k.as_bytes(), b"after", PutOptions::default())
            .unwrap();
        versions.insert(k.clone(), v);
    }
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    // Every node ends with the same layout.
    let deadline = Instant::now() + Duration::from_secs(30);
    let layout = loop {
        let tables: Vec<_> = (0..3).map(|i| layout_of(&t, i)).collect();
        if tables[0].is_some() && tables.iter().all(|x| *x == tables[0]) {
            break tables[0].clone().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the nodes disagree on the regions: {tables:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Eight regions and the meta region, one more if the split took.
    let split = layout.len() == 10;
    assert!(layout.len() == 9 || split, "{layout:?}");
    if outcome.is_ok() {
        assert!(split, "an acknowledged split is missing: {layout:?}");
    }
    eprintln!(
        "after the restart every node has {} regions ({})",
        layout.len(),
        if split { "split" } else { "not split" }
    );
    let mut c = t.client();
    for k in &keys {
        let v = c
            .get(k.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap();
        assert_eq!(&v.value[..], b"after", "{k}");
        assert_eq!(v.version, versions[k], "{k}");
    }
}

#[test]
fn a_watch_with_an_epoch_from_before_two_splits_is_told_the_split_that_moved_its_keys() {
    use corekv_net::message::Outcome;
    let t = TestCluster::start(3, 1, &[]);
    let (route, _) = region_led_by(&t, 1, "two-");
    let r = route.region.clone();
    let m1 = r.middle();
    let m2 = ((u128::from(r.start_hash) + u128::from(m1)) / 2) as u64;
    // Keys that stay in the region at the first split and leave at the second.
    let keys: Vec<String> = (0..)
        .map(|i| format!("two-{i}"))
        .filter(|k| (m2..m1).contains(&route_hash(k.as_bytes())))
        .take(3)
        .collect();
    let mut c = t.client();
    let mut written: Vec<(String, String, u64)> = Vec::new();
    let put_all = |c: &mut corekv_net::Client, round: &str, out: &mut Vec<_>| {
        for k in &keys {
            let value = format!("{round}-{k}");
            let v = c
                .put(k.as_bytes(), value.as_bytes(), PutOptions::default())
                .unwrap();
            out.push((k.clone(), value, v));
        }
    };
    put_all(&mut c, "first", &mut written);
    let from = written.iter().map(|w| w.2).max().unwrap();
    let mut admin = t.client();
    admin.split(r.id, Some(m1)).unwrap();
    put_all(&mut c, "between", &mut written);
    let between: Vec<u64> = written[3..].iter().map(|w| w.2).collect();
    admin.split(r.id, Some(m2)).unwrap();
    admin.refresh().unwrap();
    let second = admin
        .routes()
        .iter()
        .find(|x| x.region.start_hash == m2)
        .expect("the region split off second")
        .clone();
    // The region's leader is asked, with the epoch from before both
    // splits, for the changes after `from`: it sends those made while the
    // keys were still its own, then names the second split's version.
    let leader = admin
        .routes()
        .iter()
        .find(|x| x.region.id == r.id)
        .unwrap()
        .leader_node;
    let addr = t.cluster.nodes[leader as usize - 1].client_addr.clone();
    let mut raw = RawConn::connect(&addr);
    raw.send(&[Request {
        id: 7,
        region_id: r.id,
        epoch: r.epoch,
        op: Op::Watch {
            keys: keys
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
            from_version: from,
            prefix: None,
        },
        session: None,
        system: false,
    }]);
    let mut seen = Vec::new();
    let ended = loop {
        let Some(Frame::Responses(rs)) = raw.read_frame() else {
            panic!("the watch stream stopped after {seen:?}");
        };
        match &rs[0].result {
            Ok(Outcome::Events { events, .. }) => seen.extend(events.iter().map(|e| e.version)),
            Err(e) => break e.clone(),
            Ok(other) => panic!("{other:?}"),
        }
    };
    let WireError::EpochNotMatch {
        from_version: moved_at,
        ..
    } = ended
    else {
        panic!("expected EpochNotMatch, got {ended:?}");
    };
    eprintln!("changes {seen:?} from the old region, then: moved at version {moved_at}");
    assert_eq!(seen, between, "the changes made between the splits");
    // The keys left at the second split: their new region's log starts
    // right after it, so that is where the watch resumes.
    assert!(moved_at > *between.last().unwrap());
    let mut c2 = t.client();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let w = c2.watch(&refs, moved_at).unwrap();
    put_all(&mut c, "after", &mut written);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "saw {got:?}");
        if let Some(ch) = w.next(Duration::from_millis(100)).unwrap() {
            got.push(ch.version);
        }
    }
    let after: Vec<u64> = written[6..].iter().map(|w| w.2).collect();
    assert_eq!(got, after);
    assert!(second.region.contains(route_hash(keys[0].as_bytes())));
}

#[test]
fn a_watch_resumed_on_a_split_off_region_from_before_the_split_gets_the_earlier_changes_from_its_parent(
) {
    let t = TestCluster::start(3, 1, &[]);
    let (route, _) = region_led_by(&t, 1, "par-");
    let r = route.region.clone();
    let mid = r.middle();
    // Keys of the upper half: they move to the new region.
    let keys: Vec<String> = (0..)
        .map(|i| format!("par-{i}"))
        .filter(|k| {
            let h = route_hash(k.as_bytes());
            h >= mid && r.contains(h)
        })
        .take(3)
        .collect();
    let mut c = t.client();
    let mut versions = Vec::new();
    let mut put_round = |round: &str| {
        for k in &keys {
            let value = format!("{round}-{k}");
            let v = c
                .put(k.as_bytes(), value.as_bytes(), PutOptions::default())
                .unwrap();
            versions.push(v);
        }
    };
    put_round("a");
    put_round("b");
    let mut admin = t.client();
    admin.split(r.id, Some(mid)).unwrap();
    put_round("c");
    // A client whose routes are current resumes after the first change:
    // its request goes straight to the new region, whose own history
    // starts at the split.
    let mut fresh = t.client();
    fresh.refresh().unwrap();
    let new_region = fresh
        .routes()
        .iter()
        .find(|x| x.region.start_hash == mid)
        .expect("the new region")
        .region
        .id;
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let w = fresh.watch(&refs, versions[0]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < versions.len() - 1 {
        assert!(Instant::now() < deadline, "saw {got:?} of {versions:?}");
        match w.next(Duration::from_millis(100)) {
            Ok(Some(ch)) => got.push(ch.version),
            Ok(None) => {}
            Err(e) => panic!("the watch of region {new_region} ended: {e} (saw {got:?})"),
        }
    }
    assert_eq!(got, versions[1..], "every change after the first, in order");
}
