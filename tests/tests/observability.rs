//! Metrics endpoint, status documents and `corekv ctl` on a real cluster.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use corekv_engine::Consistency;
use corekv_net::status::Role;
use corekv_net::PutOptions;
use corekv_tests::TestCluster;

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Parses the text format strictly enough to catch malformed output:
/// returns series name (with labels) -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn sum(m: &HashMap<String, f64>, prefix: &str, needle: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(needle))
        .map(|(_, v)| v)
        .sum()
}

fn metrics_addrs(t: &TestCluster) -> Vec<String> {
    t.cluster
        .nodes
        .iter()
        .map(|n| n.metrics_addr.clone().expect("metrics enabled"))
        .collect()
}

#[test]
fn metrics_endpoint_serves_every_named_family_and_counters_move() {
    let t = TestCluster::start(3, 2, &[]);
    let addrs = metrics_addrs(&t);
    let m = parse(&scrape(&addrs[0]));
    for family in [
        "corekv_requests_total",
        "corekv_request_duration_seconds_bucket",
        "corekv_proposals_total",
        "corekv_campaigns_total",
        "corekv_leader_changes_total",
        "corekv_read_index_rounds_total",
        "corekv_apply_lag_entries",
        "corekv_raft_log_entries",
        "corekv_log_compactions_total",
        "corekv_snapshots_sent_total",
        "corekv_snapshots_applied_total",
        "corekv_log_writer_fsyncs_total",
        "corekv_log_writer_entries_total",
        "corekv_transport_queued_frames",
        "corekv_transport_frames_dropped_total",
        "corekv_client_connections",
        "corekv_cache_bytes",
        "corekv_rocksdb_memtable_bytes",
        "corekv_rocksdb_pending_compaction_bytes",
        "corekv_rocksdb_block_cache_hits",
    ] {
        assert!(
            m.keys().any(|k| k.starts_with(family)),
            "{family} missing from /metrics"
        );
    }
    let before: Vec<_> = addrs.iter().map(|a| parse(&scrape(a))).collect();
    let mut c = t.client();
    for i in 0..50 {
        c.put(format!("m{i}").as_bytes(), b"v", PutOptions::default())
            .unwrap();
        c.get(
            format!("m{i}").as_bytes(),
            corekv_engine::Consistency::Linearizable,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<_> = addrs.iter().map(|a| parse(&scrape(a))).collect();
    let total = |ms: &[HashMap<String, f64>], needle: &str| -> f64 {
        ms.iter()
            .map(|m| sum(m, "corekv_requests_total", needle))
            .sum()
    };
    let puts =
        total(&after, "op=\"put\",result=\"ok\"") - total(&before, "op=\"put\",result=\"ok\"");
    let gets =
        total(&after, "op=\"get\",result=\"ok\"") - total(&before, "op=\"get\",result=\"ok\"");
    assert_eq!(puts, 50.0, "successful puts counted once each");
    assert_eq!(gets, 50.0, "successful gets counted once each");
    let fsyncs: f64 = after
        .iter()
        .map(|m| sum(m, "corekv_log_writer_fsyncs_total", ""))
        .sum::<f64>()
        - before
            .iter()
            .map(|m| sum(m, "corekv_log_writer_fsyncs_total", ""))
            .sum::<f64>();
    assert!(fsyncs > 0.0, "writes were synced");
    let observed: f64 = after
        .iter()
        .map(|m| sum(m, "corekv_request_duration_seconds_count", "op=\"put\""))
        .sum();
    assert!(observed >= 50.0, "latencies observed: {observed}");
}

#[test]
fn a_leader_change_shows_in_metrics_and_status() {
    let mut t = TestCluster::start(3, 1, &[]);
    let addrs = metrics_addrs(&t);
    std::thread::sleep(Duration::from_secs(2)); // leaders settle on their preferred nodes
    let docs = corekv_tools::ctl::gather(t.endpoints(), Duration::from_secs(5)).unwrap();
    assert_eq!(docs.len(), 3);
    let rows = corekv_net::status::merge_regions(&docs);
    assert_eq!(rows.len(), 9, "eight regions of data and the meta region");
    assert!(
        rows.iter().all(|r| r.region.role == Role::Leader),
        "{rows:?}"
    );
    let victim = rows[0].region.leader_node;
    let index = t.cluster.nodes.iter().position(|n| n.id == victim).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != index).collect();
    let became = |t: &TestCluster| -> f64 {
        let _ = t;
        survivors
            .iter()
            .map(|&i| sum(&parse(&scrape(&addrs[i])), "corekv_became_leader_total", ""))
            .sum()
    };
    let before = became(&t);
    t.cluster.kill(index);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if became(&t) > before {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader in the metrics");
    }
    // The survivors' status documents agree: every region has a leader again
    // and none is the dead node.
    let endpoints: Vec<String> = survivors
        .iter()
        .map(|&i| t.cluster.nodes[i].client_addr.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let docs = corekv_tools::ctl::gather(endpoints.clone(), Duration::from_secs(5)).unwrap();
        let rows = corekv_net::status::merge_regions(&docs);
        if rows.len() == 9
            && rows
                .iter()
                .all(|r| r.region.role == Role::Leader && r.region.leader_node != victim)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions without a live leader: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn expired_keys_are_removed_on_every_replica_and_counted() {
    let t = TestCluster::start(3, 1, &[]);
    let mut c = t.client();
    for i in 0..100 {
        let opts = PutOptions {
            ttl: Some(Duration::from_millis(200)),
            ..PutOptions::default()
        };
        c.put(format!("ttl-{i}").as_bytes(), b"x", opts).unwrap();
        c.put(format!("stays-{i}").as_bytes(), b"y", PutOptions::default())
            .unwrap();
    }
    // Each of the 3 replicas removes each of the 100 keys once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let removed = loop {
        let removed: f64 = metrics_addrs(&t)
            .iter()
            .map(|a| sum(&parse(&scrape(a)), "corekv_", "expired_keys_removed"))
            .sum();
        if removed >= 300.0 || Instant::now() > deadline {
            break removed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(removed, 300.0);
    for i in (0..100).step_by(7) {
        assert_eq!(
            c.get(format!("ttl-{i}").as_bytes(), Consistency::Linearizable)
                .unwrap(),
            None
        );
        assert!(c
            .get(format!("stays-{i}").as_bytes(), Consistency::Follower)
            .unwrap()
            .is_some());
    }
}

/// `ctl hotkeys` names a key that takes most of the requests, with the
/// node and shard serving it; `ctl status` shows each shard's cache hit
/// ratio; and once the load stops the regions hibernate (metrics say so).
#[test]
fn hot_keys_cache_ratio_and_hibernation_show_in_status_and_metrics() {
    let t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    c.put(b"hot", b"v", PutOptions::default()).unwrap();
    for i in 0..20 {
        c.put(format!("cold{i}").as_bytes(), b"v", PutOptions::default())
            .unwrap();
    }
    let until = Instant::now() + Duration::from_millis(2500);
    let mut i = 0u64;
    while Instant::now() < until {
        c.get(b"hot", Consistency::Linearizable).unwrap();
        i += 1;
        if i.is_multiple_of(4) {
            c.get(
                format!("cold{}", i % 20).as_bytes(),
                Consistency::Linearizable,
            )
            .unwrap();
        }
    }
    let docs = corekv_tools::ctl::gather(t.endpoints(), Duration::from_secs(5)).unwrap();
    let rows = corekv_tools::ctl::hot_keys(&docs, None, 5);
    assert!(!rows.is_empty(), "no hot key listed");
    assert_eq!(rows[0].key, "hot", "{rows:?}");
    assert!(rows[0].ops_per_sec > 10.0, "{rows:?}");
    let leader = c
        .routes()
        .iter()
        .find(|r| r.region.id == rows[0].region)
        .map(|r| r.leader_node);
    assert_eq!(leader, Some(rows[0].node), "listed on the node leading it");
    let only = corekv_tools::ctl::hot_keys(&docs, Some(rows[0].region + 1000), 5);
    assert!(only.is_empty(), "--region filters: {only:?}");
    let ratios: Vec<f64> = docs
        .iter()
        .filter_map(|d| match d {
            corekv_net::status::NodeReport::Up(d) => Some(d),
            _ => None,
        })
        .flat_map(|d| d.shards.iter().filter_map(|s| s.cache_hit_ratio))
        .collect();
    assert!(
        ratios.iter().any(|r| *r > 0.5),
        "the shard serving the hot key answers it from its cache: {ratios:?}"
    );
    // Idle now: the regions fall asleep within a few seconds.
    let addrs = metrics_addrs(&t);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let asleep: f64 = addrs
            .iter()
            .map(|a| sum(&parse(&scrape(a)), "corekv_regions_asleep", ""))
            .sum();
        if asleep > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no region fell asleep when idle");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A sleeping cluster still answers at once, and reads what was written.
    assert_eq!(
        c.get(b"hot", Consistency::Linearizable)
            .unwrap()
            .map(|v| v.value),
        Some(bytes::Bytes::from_static(b"v"))
    );
}
