//! Node limits on a real cluster: the disk quota (`--disk-quota-mb`).

use std::time::{Duration, Instant};

use corekv_engine::Consistency;
use corekv_net::wire::ErrorCode;
use corekv_net::{ClientError, PutOptions};
use corekv_tests::{scrape_sum, TestCluster};

fn is_no_space(e: &ClientError) -> bool {
    matches!(e, ClientError::Invalid { code, .. } if *code == ErrorCode::NoSpace)
}

#[test]
fn over_the_disk_quota_writes_get_no_space_while_reads_deletes_and_failover_work() {
    let mut t = TestCluster::start(3, 1, &["--disk-quota-mb", "8"]);
    let mut c = t.client();
    let value = vec![b'x'; 256 << 10];
    let mut written = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let key = format!("big-{i}");
        match c.put(key.as_bytes(), &value, PutOptions::default()) {
            Ok(_) => written.push(key),
            Err(e) if is_no_space(&e) => {
                refused = Some(e);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused.expect("never refused with NoSpace");
    assert!(refused.to_string().contains("disk quota"), "{refused}");
    let over_at = written.len();
    assert!(
        over_at >= 16,
        "refused after only {over_at} values of 256 KiB"
    );

    // Nodes measure their own data, so the others cross the quota a little
    // later: keep adding until every node refuses.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut extra = 0;
    loop {
        let small = c.put(b"small", b"1", PutOptions::default());
        let counter = c.incr(b"counter", 1);
        if matches!(&small, Err(e) if is_no_space(e))
            && matches!(&counter, Err(e) if is_no_space(e))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted: {small:?} {counter:?}"
        );
        let key = format!("extra-{extra}");
        extra += 1;
        match c.put(key.as_bytes(), &value, PutOptions::default()) {
            Ok(_) => written.push(key),
            Err(e) if is_no_space(&e) => {}
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reads and deletes work.
    let got = c
        .get(written[0].as_bytes(), Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!(got.value.len(), value.len());
    assert!(c.delete(written[0].as_bytes(), None).unwrap());

    // A node dies: leaders move, reads go on.
    t.cluster.kill(0);
    let mut c = t.client_of(1);
    for k in written.iter().skip(1).step_by(5) {
        let got = c
            .get(k.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap();
        assert_eq!(got.value.len(), value.len());
    }
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let mut c = t.client();

    // Deleting the data frees the space and writes resume.
    for k in written.iter().skip(1) {
        c.delete(k.as_bytes(), None).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.put(b"small", b"1", PutOptions::default()) {
            Ok(_) => break,
            Err(e) if is_no_space(&e) => {
                assert!(Instant::now() < deadline, "writes never resumed");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        c.get(b"small", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value,
        &b"1"[..]
    );
}

#[test]
fn caches_and_memtables_stay_within_the_memory_budget() {
    let t = TestCluster::start(3, 1, &["--memory-budget-mb", "64"]);
    let mut c = t.client();
    // 96 MiB of distinct values, written and then all read (twice), so
    // every cache fills up and has to evict.
    let value = vec![b'm'; 64 << 10];
    for i in 0..1536 {
        c.put(format!("m-{i}").as_bytes(), &value, PutOptions::default())
            .unwrap();
    }
    for _ in 0..2 {
        for i in 0..1536 {
            let v = c
                .get(format!("m-{i}").as_bytes(), Consistency::Follower)
                .unwrap()
                .unwrap();
            assert_eq!(v.value.len(), value.len());
        }
    }
    std::thread::sleep(Duration::from_millis(1500)); // metrics refresh
    let budget = (64u64 << 20) as f64;
    for n in &t.cluster.nodes {
        let addr = n.metrics_addr.clone().unwrap();
        let used = scrape_sum(
            &addr,
            &[
                "corekv_cache_bytes",
                "corekv_rocksdb_block_cache_usage_bytes",
                "corekv_rocksdb_memtable_bytes",
            ],
        );
        eprintln!(
            "node {}: caches and memtables {:.1} MiB",
            n.id,
            used / (1 << 20) as f64
        );
        assert!(used > 0.0 && used <= budget, "node {}: {used} bytes", n.id);
    }
}
