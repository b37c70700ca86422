//! Watches on a real 3-process cluster: every committed change exactly once
//! and in order across leader kills and restarts, resuming from a version,
//! compacted history, expiry events, slow watchers and watcher limits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::{route_hash, Consistency};
use corekv_net::message::{Frame, Op, Outcome, Request};
use corekv_net::wire::ErrorCode;
use corekv_net::{Change, ChangeKind, ClientError, PutOptions, Watch};
use corekv_tests::{region_led_by, RawConn, TestCluster};

/// Collects a watch's changes on a thread until one reaches version
/// `until` (set later; 0 = not yet known), or 60 s after it is set.
fn collect(w: Watch, until: Arc<AtomicU64>) -> std::thread::JoinHandle<Vec<Change>> {
    std::thread::spawn(move || {
        let mut got: Vec<Change> = Vec::new();
        let mut deadline = None;
        loop {
            let target = until.load(Ordering::Acquire);
            if target != 0 {
                if got.last().is_some_and(|c| c.version >= target) {
                    return got;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
                if Instant::now() > d {
                    return got;
                }
            }
            match w.next(Duration::from_millis(100)) {
                Ok(Some(c)) => got.push(c),
                Ok(None) => {}
                Err(e) => panic!("watch failed: {e}"),
            }
        }
    })
}

fn describe(c: &Change) -> String {
    format!(
        "{} {:?} {} {}",
        c.version,
        c.kind,
        String::from_utf8_lossy(&c.key),
        String::from_utf8_lossy(&c.value)
    )
}

#[test]
fn a_watcher_sees_every_committed_change_once_in_order_across_leader_changes() {
    let mut t = TestCluster::start(3, 2, &[]);
    // A region led by node 1, which is killed mid-run and restarted (and
    // then takes the lead back).
    let (route, first) = region_led_by(&t, 1, "w-");
    let keys: Vec<String> = (0..)
        .map(|i| format!("w-{i}"))
        .filter(|k| {
            route
                .region
                .contains(corekv_engine::route_hash(k.as_bytes()))
        })
        .take(3)
        .collect();
    assert_eq!(keys[0], first);
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();

    let mut watcher_client = t.client();
    let until = Arc::new(AtomicU64::new(0));
    let w = watcher_client.watch(&key_refs, 0).unwrap();
    let handle = collect(w, until.clone());

    let mut c = t.client();
    // Values are unique: value -> (key, acknowledged version).
    let mut attempted: HashMap<String, String> = HashMap::new();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut max_acked = 0u64;
    for i in 0..300 {
        if i == 100 {
            t.cluster.kill(0);
        }
        if i == 200 {
            t.cluster.start_node(0).unwrap();
        }
        let key = &keys[i % 3];
        if i % 25 == 24 {
            match c.delete(key.as_bytes(), None) {
                Ok(_) | Err(ClientError::Unknown(_)) => {}
                Err(e) => panic!("delete {key}: {e}"),
            }
            continue;
        }
        let value = format!("v{i}");
        attempted.insert(value.clone(), key.clone());
        match c.put(key.as_bytes(), value.as_bytes(), PutOptions::default()) {
            Ok(v) => {
                acked.insert(value, v);
                max_acked = max_acked.max(v);
            }
            Err(ClientError::Unknown(_)) => {}
            Err(e) => panic!("put {key}: {e}"),
        }
    }
    // Node 1 takes the lead back once it caught up (the watch follows).
    t.must_be_ready(Duration::from_secs(30));
    // A last write: every change before it has a lower version.
    let fin = c
        .put(keys[0].as_bytes(), b"final", PutOptions::default())
        .unwrap();
    attempted.insert("final".into(), keys[0].clone());
    acked.insert("final".into(), fin);
    assert!(fin > max_acked);
    until.store(fin, Ordering::Release);
    let got = handle.join().unwrap();
    assert!(
        got.last().is_some_and(|c| c.version == fin),
        "the watcher reached version {fin}; last: {:?}",
        got.last().map(describe)
    );
    let mut reader = t.client();

    // In order, each change once.
    let mut per_key: HashMap<&[u8], Vec<&Change>> = HashMap::new();
    for ch in &got {
        per_key.entry(&ch.key[..]).or_default().push(ch);
    }
    for (k, chs) in &per_key {
        for pair in chs.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "changes of {} out of order or repeated: {} then {}",
                String::from_utf8_lossy(k),
                describe(pair[0]),
                describe(pair[1])
            );
        }
    }
    // Every acknowledged write is there, with its version.
    let seen: HashMap<String, u64> = got
        .iter()
        .filter(|ch| ch.kind == ChangeKind::Put)
        .map(|ch| (String::from_utf8_lossy(&ch.value).to_string(), ch.version))
        .collect();
    for (value, version) in &acked {
        assert_eq!(
            seen.get(value),
            Some(version),
            "acknowledged write {value} at {version} missing from the watch"
        );
    }
    // Nothing invented: every put is a write that was attempted on that key,
    // and appears once.
    let mut values = HashSet::new();
    for ch in got.iter().filter(|ch| ch.kind == ChangeKind::Put) {
        let value = String::from_utf8_lossy(&ch.value).to_string();
        assert_eq!(
            attempted.get(&value).map(String::as_bytes),
            Some(&ch.key[..]),
            "a change nobody wrote: {}",
            describe(ch)
        );
        assert!(values.insert(value), "seen twice: {}", describe(ch));
    }
    assert!(got.iter().any(|ch| ch.kind == ChangeKind::Delete));
    // The last change of each key is what a linearizable read returns now.
    for k in &keys {
        let now = reader.get(k.as_bytes(), Consistency::Linearizable).unwrap();
        let last = per_key.get(k.as_bytes()).and_then(|v| v.last());
        match (now, last) {
            (Some(v), Some(ch)) => {
                assert_eq!(ch.kind, ChangeKind::Put);
                assert_eq!((ch.version, &ch.value), (v.version, &v.value));
            }
            (None, Some(ch)) => assert_ne!(ch.kind, ChangeKind::Put, "{k} is absent"),
            (None, None) => {}
            (Some(v), None) => panic!("{k} = {:?} but the watch saw no change", v.value),
        }
    }
    // Committed, and the same everywhere: a watch resuming from before the
    // first change, served from the history of whichever node leads now,
    // replays exactly what the live watch saw.
    let from = got.first().unwrap().version - 1;
    let mut replay_client = t.client();
    let replay = replay_client.watch(&key_refs, from).unwrap();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.len() < got.len() && Instant::now() < deadline {
        if let Some(ch) = replay.next(Duration::from_millis(200)).unwrap() {
            again.push(ch);
        }
    }
    assert_eq!(
        again.iter().map(describe).collect::<Vec<_>>(),
        got.iter().map(describe).collect::<Vec<_>>(),
        "the history replays the live stream"
    );
    eprintln!(
        "watch: {} changes over 2 leader changes, {} acknowledged writes all seen",
        got.len(),
        acked.len()
    );
}

#[test]
fn watches_resume_from_a_version_see_expiry_and_report_compacted_history() {
    let t = TestCluster::start(
        3,
        2,
        &["--watch-history-entries", "40", "--expire-sweep-ms", "100"],
    );
    let mut c = t.client();
    let mut versions = Vec::new();
    for i in 0..10 {
        versions.push(
            c.put(b"cfg", format!("c{i}").as_bytes(), PutOptions::default())
                .unwrap(),
        );
    }
    // Resume after the third write: the seven later ones, in order.
    let w = c.watch(&[b"cfg"], versions[2]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 7 && Instant::now() < deadline {
        if let Some(ch) = w.next(Duration::from_millis(200)).unwrap() {
            got.push(ch);
        }
    }
    let seen: Vec<(u64, Bytes)> = got.iter().map(|c| (c.version, c.value.clone())).collect();
    let want: Vec<(u64, Bytes)> = (3..10)
        .map(|i| (versions[i], Bytes::from(format!("c{i}"))))
        .collect();
    assert_eq!(seen, want);

    // A key with a time to live: the watch sees it expire.
    let p = c
        .put(
            b"cfg",
            b"short",
            PutOptions {
                ttl: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .unwrap();
    let mut expired = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while expired.is_none() && Instant::now() < deadline {
        if let Some(ch) = w.next(Duration::from_millis(200)).unwrap() {
            if ch.kind == ChangeKind::Expire {
                expired = Some(ch);
            } else {
                assert_eq!((ch.version, &ch.value[..]), (p, &b"short"[..]));
            }
        }
    }
    let expired = expired.expect("an expiry event within 10 s");
    assert!(expired.version > p);
    drop(w);

    // Far more writes than the history keeps: an old version is refused
    // with the current value to restart from.
    let mut last = 0;
    for i in 0..120 {
        last = c
            .put(b"cfg", format!("n{i}").as_bytes(), PutOptions::default())
            .unwrap();
    }
    // The refusal comes back from `watch` itself (it waits for the leader
    // to accept the watch).
    let refused = match c.watch(&[b"cfg", b"never-written"], versions[2]) {
        Ok(w) => w.next(Duration::from_secs(10)).map(|_| ()),
        Err(e) => Err(e),
    };
    match refused {
        Err(ClientError::Compacted { message, current }) => {
            assert!(message.contains("no longer kept"), "{message}");
            let cfg = current.iter().find(|c| &c.key[..] == b"cfg").unwrap();
            assert_eq!(
                (cfg.kind, cfg.version, &cfg.value[..]),
                (ChangeKind::Put, last, &b"n119"[..])
            );
            let absent = current
                .iter()
                .find(|c| &c.key[..] == b"never-written")
                .unwrap();
            assert_eq!(absent.kind, ChangeKind::Delete);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
}

/// Client address of the node leading `region` now.
fn leader_addr(t: &TestCluster, region: u64) -> String {
    let leader = t
        .client()
        .routes()
        .iter()
        .find(|r| r.region.id == region)
        .map_or(0, |r| r.leader_node);
    assert!(leader != 0, "region {region} has a leader");
    t.cluster.nodes[(leader - 1) as usize].client_addr.clone()
}

/// Sum of a metric family's series on a node's metrics endpoint.
fn metric_sum(addr: &str, family: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn watch_req(id: u64, key: &str, from_version: u64) -> Request {
    Request {
        id,
        region_id: 0,
        epoch: Default::default(),
        op: Op::Watch {
            keys: vec![Bytes::copy_from_slice(key.as_bytes())],
            from_version,
            prefix: None,
        },
        session: None,
        system: false,
    }
}

#[test]
fn a_slow_watcher_catches_up_from_history_and_watches_are_limited() {
    let t = TestCluster::start(3, 1, &["--watchers-max", "2"]);
    let (route, key) = region_led_by(&t, 2, "slow-");
    let mut addr = t.cluster.nodes[1].client_addr.clone();
    let mut slow = RawConn::connect(&addr);
    // A small, fixed receive buffer: what the client does not read stays
    // with the server.
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 32 * 1024;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                slow.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
    slow.send(&[watch_req(1, &key, 0)]);
    // Not read while 3,000 changes of 2 KiB (more than the kernel buffers
    // between server and client) are made: the server may hold only a few
    // frames for it and must fall back to the history.
    let mut c = t.client();
    let value = "x".repeat(2048);
    let mut versions = Vec::new();
    for i in 0..3000 {
        let v = format!("{i:05}{value}");
        versions.push(
            c.put(key.as_bytes(), v.as_bytes(), PutOptions::default())
                .unwrap(),
        );
    }
    let mut got: Vec<Change> = Vec::new();
    let mut acks = 0;
    let mut progress = 0;
    let mut resumed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.last().map(|c| c.version) != versions.last().copied() {
        assert!(
            Instant::now() < deadline,
            "caught up to {:?}",
            got.last().map(describe)
        );
        let ended = match slow.read_frame() {
            Some(Frame::Responses(rs)) => {
                let mut ended = false;
                for r in rs {
                    assert_eq!(r.id, 1);
                    match r.result {
                        Ok(Outcome::Events {
                            events,
                            progress: p,
                        }) => {
                            acks += usize::from(events.is_empty());
                            got.extend(events);
                            progress = progress.max(p);
                        }
                        // A leader change on this busy 2-core machine: resume
                        // at the new leader, as the client library does.
                        Err(e) if e.code() == ErrorCode::NotLeader => ended = true,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                ended
            }
            None => true,
            other => panic!("unexpected frame {other:?}"),
        };
        if ended {
            resumed += 1;
            assert!(resumed < 10, "the watch ended {resumed} times");
            std::thread::sleep(Duration::from_millis(300));
            addr = leader_addr(&t, route.region.id);
            slow = RawConn::connect(&addr);
            slow.send(&[watch_req(1, &key, progress)]);
        }
    }
    eprintln!(
        "slow watcher: {} changes, resumed {resumed} times",
        got.len()
    );
    assert!(acks >= 1);
    assert_eq!(got.iter().map(|c| c.version).collect::<Vec<_>>(), versions);
    for (i, ch) in got.iter().enumerate() {
        assert!(ch.value.starts_with(format!("{i:05}").as_bytes()));
    }

    // It fell behind and caught up from the history, as the metrics show.
    let metrics = t.cluster.nodes[1]
        .metrics_addr
        .clone()
        .expect("metrics enabled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&metrics, "corekv_watch_catchups_total") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no history catch-up counted; {} events sent",
            metric_sum(&metrics, "corekv_watch_events_total")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric_sum(&metrics, "corekv_watch_events_total") >= 3000.0);

    // The shard serves at most 2 watches: the slow one and one more.
    let mut conn = RawConn::connect(&addr);
    conn.send(&[watch_req(7, &key, 0), watch_req(8, &key, 0)]);
    let mut answers = HashMap::new();
    while answers.len() < 2 {
        match conn.read_frame() {
            Some(Frame::Responses(rs)) => {
                for r in rs {
                    answers.insert(r.id, r.result);
                }
            }
            other => panic!("expected answers, got {other:?}"),
        }
    }
    assert!(matches!(answers[&7], Ok(Outcome::Events { .. })));
    match &answers[&8] {
        Err(e) => assert_eq!(e.code(), ErrorCode::Busy, "{}", e.message()),
        other => panic!("expected Busy, got {other:?}"),
    }
    // Cancelling one makes room.
    conn.send(&[Request {
        id: 9,
        region_id: route.region.id,
        epoch: route.region.epoch,
        op: Op::CancelWatch { watch_id: 7 },
        session: None,
        system: false,
    }]);
    loop {
        match conn.read_frame_with_fields() {
            Some((Frame::Responses(rs), fields)) => {
                if let Some(i) = rs.iter().position(|r| r.id == 9) {
                    assert!(rs[i].result.is_ok(), "{:?}", rs[i]);
                    assert!(fields[i].existed, "the watch was running");
                    break;
                }
            }
            other => panic!("expected the cancel's answer, got {other:?}"),
        }
    }
    conn.send(&[watch_req(10, &key, 0)]);
    loop {
        match conn.read_frame() {
            Some(Frame::Responses(rs)) => {
                if let Some(r) = rs.into_iter().find(|r| r.id == 10) {
                    assert!(matches!(r.result, Ok(Outcome::Events { .. })), "{r:?}");
                    break;
                }
            }
            other => panic!("expected the watch's answer, got {other:?}"),
        }
    }
    // A closed connection frees its watch too.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 20;
    loop {
        id += 1;
        conn.send(&[watch_req(id, &key, 0)]);
        let r = loop {
            match conn.read_frame() {
                Some(Frame::Responses(rs)) => {
                    if let Some(r) = rs.into_iter().find(|r| r.id == id) {
                        break r;
                    }
                }
                other => panic!("expected an answer, got {other:?}"),
            }
        };
        if r.result.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed watch was never freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a writer of `/app/` and `/other/` keys did: acknowledged puts by
/// value (key, version), every value tried, the keys of acknowledged
/// deletes that removed something (one entry per delete).
struct PrefixWrites {
    acked: HashMap<String, (String, u64)>,
    tried: HashMap<String, String>,
    deletes: Vec<String>,
}

/// Writes under `/app/` (20 keys rewritten, and a new key every 7th
/// write) and, as often, under `/other/`, until `stop`.
fn prefix_writer(
    mut c: corekv_net::Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<PrefixWrites> {
    std::thread::spawn(move || {
        let mut w = PrefixWrites {
            acked: HashMap::new(),
            tried: HashMap::new(),
            deletes: Vec::new(),
        };
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) {
            let key = match i % 14 {
                7 => format!("/app/new-{i}"),
                n if n % 2 == 0 => format!("/app/k{}", i % 20),
                _ => format!("/other/k{}", i % 20),
            };
            i += 1;
            if i.is_multiple_of(31) {
                match c.delete(key.as_bytes(), None) {
                    Ok(true) => w.deletes.push(key),
                    Ok(false) | Err(ClientError::Unknown(_)) => {}
                    Err(e) => panic!("delete {key}: {e}"),
                }
                continue;
            }
            let value = format!("v{i}");
            w.tried.insert(value.clone(), key.clone());
            match c.put(key.as_bytes(), value.as_bytes(), PutOptions::default()) {
                Ok(v) => {
                    w.acked.insert(value, (key, v));
                }
                Err(ClientError::Unknown(_)) => {}
                Err(e) => panic!("put {key}: {e}"),
            }
        }
        w
    })
}

/// Checks the changes a prefix watch (started before the writes) delivered
/// against what was written: only keys under `/app/`, each change once and
/// in version order per key, every acknowledged `/app/` put and delete
/// there with its version, nothing that was not written, keys created
/// during the watch among them.
fn check_prefix_changes(what: &str, got: &[Change], writes: &PrefixWrites) {
    let mut per_key: HashMap<&[u8], Vec<u64>> = HashMap::new();
    for ch in got {
        assert!(
            ch.key.starts_with(b"/app/"),
            "{what}: a change outside the prefix: {}",
            describe(ch)
        );
        per_key.entry(&ch.key[..]).or_default().push(ch.version);
    }
    for (k, vs) in &per_key {
        assert!(
            vs.windows(2).all(|p| p[0] < p[1]),
            "{what}: changes of {} repeated or out of order: {vs:?}",
            String::from_utf8_lossy(k)
        );
    }
    let mut checked = 0;
    for (value, (key, version)) in &writes.acked {
        if !key.starts_with("/app/") {
            continue;
        }
        checked += 1;
        let ch = got
            .iter()
            .find(|c| c.key == key.as_bytes() && c.version == *version);
        assert!(
            ch.is_some_and(|c| c.kind == ChangeKind::Put && c.value == value.as_bytes()),
            "{what}: acknowledged put {key} = {value} at {version} missing"
        );
    }
    assert!(checked > 100, "{what}: only {checked} puts checked");
    let mut deleted: HashMap<&str, usize> = HashMap::new();
    for key in writes.deletes.iter().filter(|k| k.starts_with("/app/")) {
        *deleted.entry(key).or_default() += 1;
    }
    for (key, n) in deleted {
        let seen = got
            .iter()
            .filter(|c| c.key == key.as_bytes() && c.kind == ChangeKind::Delete)
            .count();
        assert!(
            seen >= n,
            "{what}: {n} acknowledged deletes of {key}, {seen} seen"
        );
    }
    for ch in got.iter().filter(|c| c.kind == ChangeKind::Put) {
        let value = String::from_utf8_lossy(&ch.value).to_string();
        assert_eq!(
            writes.tried.get(&value).map(String::as_bytes),
            Some(&ch.key[..]),
            "{what}: a change nobody wrote: {}",
            describe(ch)
        );
    }
    let new_keys = per_key
        .keys()
        .filter(|k| k.starts_with(b"/app/new-"))
        .count();
    assert!(
        new_keys > 10,
        "{what}: only {new_keys} keys created during the watch seen"
    );
}

/// Takes a watch's changes until, for every (key, version) of `finals`,
/// that change arrived (60 s at most).
fn collect_until(what: &str, w: &Watch, finals: &[(String, u64)]) -> Vec<Change> {
    let mut got: Vec<Change> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reached = |got: &[Change], (k, v): &(String, u64)| {
        got.iter().any(|c| c.key == k.as_bytes() && c.version == *v)
    };
    while !finals.iter().all(|f| reached(&got, f)) {
        assert!(
            Instant::now() < deadline,
            "{what}: stalled after {} changes; missing {:?}; streams:\n{}",
            got.len(),
            finals
                .iter()
                .filter(|f| !reached(&got, f))
                .collect::<Vec<_>>(),
            w.streams()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        if let Some(ch) = w.next(Duration::from_millis(100)).unwrap() {
            got.push(ch);
        }
    }
    got
}

#[test]
fn a_prefix_watch_sees_every_change_under_its_prefix_through_a_split_a_leader_kill_and_a_resume() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut wc = t.client();
    let live = wc.watch_prefix(b"/app/").unwrap();
    let token0 = live.resume_token().expect("a prefix watch has a token");
    assert!(
        token0.parts.len() >= 8,
        "one part per data region: {token0}"
    );
    // A second watch stops early; it resumes from its token after the
    // split and the kill.
    let mut wc2 = t.client();
    let early = wc2.watch_prefix(b"/app/").unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = prefix_writer(t.client(), stop.clone());
    let mut first_part = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_part.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "the early watch got {} changes",
            first_part.len()
        );
        if let Some(ch) = early.next(Duration::from_millis(100)).unwrap() {
            first_part.push(ch);
        }
    }
    let token = early.resume_token().unwrap();
    drop(early);
    let token: corekv_net::ResumeToken = token.to_string().parse().unwrap();

    // A split of the region holding /app/k0, then a kill of node 1 (which
    // leads some regions) and its restart, all under the writes.
    let mut admin = t.client();
    let r = admin
        .routes()
        .iter()
        .find(|r| r.region.contains(route_hash(b"/app/k0")))
        .unwrap()
        .region
        .clone();
    eprint!(
        "{}",
        corekv_tools::ctl::split(&mut admin, r.id, None).unwrap()
    );
    std::thread::sleep(Duration::from_millis(500));
    t.cluster.kill(0);
    std::thread::sleep(Duration::from_millis(1500));
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let writes = writer.join().unwrap();

    // A last put under the prefix in every region, the split-off one too.
    let mut c = t.client();
    c.refresh().unwrap();
    let mut finals = Vec::new();
    for route in corekv_tests::data_routes(&c) {
        let key = (0..)
            .map(|i| format!("/app/final-{i}"))
            .find(|k| route.region.contains(route_hash(k.as_bytes())))
            .unwrap();
        let v = c
            .put(key.as_bytes(), b"final", PutOptions::default())
            .unwrap();
        finals.push((key, v));
    }
    assert!(finals.len() >= 9, "the split added a region: {finals:?}");
    let not_final = |c: &Change| !c.key.starts_with(b"/app/final-");
    let got = collect_until("live watch", &live, &finals);
    let got: Vec<Change> = got.into_iter().filter(not_final).collect();
    check_prefix_changes("live watch", &got, &writes);

    // The early watch's first part plus what it got after resuming: each
    // change once, nothing missing: the same changes the live watch saw
    // (both started before the first write).
    let mut rc = t.client();
    let resumed = rc.watch_prefix_from(b"/app/", &token).unwrap();
    let rest = collect_until("resumed watch", &resumed, &finals);
    let mut joined = first_part.clone();
    joined.extend(rest.into_iter().filter(not_final));
    check_prefix_changes("early + resumed watch", &joined, &writes);
    let sorted = |cs: &[Change]| {
        let mut v: Vec<(Vec<u8>, u64)> = cs.iter().map(|c| (c.key.to_vec(), c.version)).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&joined),
        sorted(&got),
        "the resumed watch saw what the live one saw"
    );
    eprintln!(
        "live watch: {} changes; early watch {} + resumed {}; {} acknowledged puts",
        got.len(),
        first_part.len(),
        joined.len() - first_part.len(),
        writes.acked.len()
    );
}
