//! Exactly-once writes, durability under SIGKILL, fail-stop on a log write
//! failure, and abuse by clients, on real processes.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::{Consistency, Epoch, SessionTag, WriteRequest};
use corekv_net::message::{Frame, Op, Request};
use corekv_net::PutOptions;
use corekv_tests::{assert_still_serves, region_led_by, RawConn, TestCluster};

fn incr(id: u64, key: &str, seq: u64) -> Request {
    Request {
        id,
        region_id: 0,
        epoch: Epoch::default(),
        op: Op::Write(WriteRequest::Incr {
            key: Bytes::copy_from_slice(key.as_bytes()),
            delta: 1,
        }),
        session: Some(SessionTag {
            client_id: 4242,
            seq,
            retry: false,
        }),
        system: false,
    }
}

/// Sends `req` to the leader of its region (by trying every node) and
/// returns the new counter value and version it was answered with.
fn ask_leader(t: &TestCluster, req: &Request) -> (i64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in &t.cluster.nodes {
            let mut c = RawConn::connect(&n.client_addr);
            c.send(std::slice::from_ref(req));
            if let Some((Frame::Responses(rs), fields)) = c.read_frame_with_fields() {
                if rs[0].result.is_ok() {
                    return (fields[0].counter, fields[0].version);
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_write_retried_after_its_reply_was_lost_is_applied_once() {
    let t = TestCluster::start(3, 2, &[]);
    let first = ask_leader(&t, &incr(1, "counter", 1));
    assert_eq!(first.0, 1);
    // The client never saw that reply: it sends the same write again, on a
    // new connection, maybe to another node.
    let again = ask_leader(&t, &incr(2, "counter", 1));
    assert_eq!(again, first, "answered with the first outcome");
    let next = ask_leader(&t, &incr(3, "counter", 2));
    assert_eq!(next.0, 2);
    assert!(next.1 > first.1);
    let v = t
        .client()
        .get(b"counter", Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!(v.value, &b"2"[..]);

    // A write whose reply is dropped by closing the connection right after
    // sending it, then retried.
    for n in &t.cluster.nodes {
        let mut c = RawConn::connect(&n.client_addr);
        c.send(&[incr(4, "counter", 3)]);
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let retried = ask_leader(&t, &incr(5, "counter", 3));
    assert_eq!(retried.0, 3, "applied once");
    let v = t
        .client()
        .get(b"counter", Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!(v.value, &b"3"[..]);
}

#[test]
fn acknowledged_writes_survive_sigkill_of_any_node_and_of_all() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    let mut acked = Vec::new();
    for i in 0..300 {
        let v = format!("v{i}");
        c.put(
            format!("d{i}").as_bytes(),
            v.as_bytes(),
            PutOptions::default(),
        )
        .unwrap();
        acked.push((format!("d{i}"), v));
        if i == 100 {
            t.cluster.kill(1); // one node dies mid-stream
        }
        if i == 150 {
            t.cluster.start_node(1).unwrap();
        }
    }
    for i in 0..3 {
        t.cluster.kill(i); // the whole cluster loses power
    }
    for i in 0..3 {
        t.cluster.start_node(i).unwrap();
    }
    t.must_be_ready(Duration::from_secs(30));
    let mut c = t.client();
    for (k, v) in &acked {
        let got = c
            .get(k.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {k} lost"));
        assert_eq!(got.value, v.as_bytes(), "{k}");
    }
}

#[test]
fn a_failed_log_write_stops_the_node_and_acknowledges_nothing_after_it() {
    let mut t = TestCluster::start(3, 1, &[]);
    let mut c = t.client();
    // A key led by node 1 once leadership settles on preferred nodes.
    let (_, key) = region_led_by(&t, 1, "f");
    c.put(key.as_bytes(), b"before", PutOptions::default())
        .unwrap();

    let mut raw = RawConn::connect(&t.cluster.nodes[0].client_addr);
    t.cluster.set_faults(0, "fail-log-write\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The node's next log write fails: this put's, or one of the meta
    // region's (the nodes write it by themselves), in which case the node
    // may be gone already and the put is not even received.
    let _ = raw.try_send(&[Request {
        id: 1,
        region_id: 0,
        epoch: Epoch::default(),
        op: Op::Write(WriteRequest::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"after"),
            ttl_ms: None,
            condition: corekv_engine::Condition::None,
        }),
        session: None,
        system: false,
    }]);
    match raw.read_frame() {
        None => {}
        Some(Frame::Responses(rs)) => assert!(rs[0].result.is_err(), "acknowledged: {rs:?}"),
        Some(other) => panic!("{other:?}"),
    }
    // The node stopped itself with the fail-stop code.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some((id, st)) = t.cluster.exited() {
            assert_eq!(id, 1);
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 kept running after the failure"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(corekv_shards::server::exit::LOG_WRITE_FAILED),
        "{status}"
    );
    // What was acknowledged before is there; the cluster goes on.
    t.cluster.set_faults(0, "").unwrap();
    let mut other = t.client_of(1);
    let v = other
        .get(key.as_bytes(), Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert!(v.value == b"before"[..] || v.value == b"after"[..]);
    other.put(b"later", b"ok", PutOptions::default()).unwrap();
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
}

fn reset_on_close(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

#[test]
fn abusive_clients_do_not_stop_the_server_serving_others() {
    let t = TestCluster::start(3, 2, &[]);
    let addr = t.cluster.nodes[0].client_addr.clone();
    let pid = t.cluster.pid(0).expect("running");
    let mut good = t.client();
    good.put(b"k", b"v", PutOptions::default()).unwrap();

    // 10,000 connections opened at once and left idle.
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(std::net::TcpStream::connect(&addr).unwrap());
    }
    let started = Instant::now();
    let v = t
        .client_of(0)
        .get(b"k", Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!(v.value, &b"v"[..]);
    eprintln!(
        "10,000 idle connections: a new client served in {:?}; server RSS {} MiB",
        started.elapsed(),
        corekv_tests::rss_kib(pid) / 1024
    );
    assert!(
        corekv_tests::rss_kib(pid) < 1024 * 1024,
        "server RSS {} KiB",
        corekv_tests::rss_kib(pid)
    );
    // Closed with a reset: 10,000 sockets in TIME_WAIT would hold ports that
    // later tests bind.
    for s in &idle {
        reset_on_close(s);
    }
    drop(idle);

    // A client that sends and never reads its replies.
    let mut rude = RawConn::connect(&addr);
    let gets: Vec<Request> = (0..200)
        .map(|i| Request {
            id: i,
            region_id: 0,
            epoch: Epoch::default(),
            op: Op::Get {
                key: Bytes::from_static(b"k"),
                consistency: Consistency::Stale,
            },
            session: None,
            system: false,
        })
        .collect();
    let frame = corekv_net::message::encode_requests(&gets);
    rude.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..20_000 {
        if rude.stream.write_all(&frame).is_err() {
            break; // the server stopped reading from it, or closed it
        }
    }
    // A flood of oversized frames from many connections.
    for _ in 0..200 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        reset_on_close(&s);
        let _ = s.write_all(&(512u32 << 20).to_le_bytes());
        let _ = s.write_all(&[0u8; 4096]);
    }
    // Everyone else is still served, and memory stayed bounded.
    let mut fresh = t.client_of(0);
    assert_still_serves(&mut fresh);
    let rss = corekv_tests::rss_kib(pid);
    eprintln!("after the abuse: server RSS {} MiB", rss / 1024);
    assert!(rss < 1024 * 1024, "server RSS {rss} KiB");
    drop(rude);
}

/// The fault tool's `delay-ms` holds each raft frame that long from when it
/// was sent; it must not turn a link into a queue served one delay at a time
/// (which leaves a backlog that stalls the cluster long after the fault).
#[test]
fn an_injected_delay_holds_raft_frames_without_throttling_the_links() {
    let t = TestCluster::start(3, 1, &[]);
    let mut c = t.client();
    c.put(b"k", b"v", PutOptions::default()).unwrap();
    for i in 0..3 {
        t.cluster.set_faults(i, "delay-ms 40\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(250)); // the rules are re-read every 100 ms
                                                    // Writes go on, each a few delays long.
    let during = Instant::now();
    let mut acknowledged = 0;
    for i in 0..4 {
        let key = format!("delayed-{i}");
        match c.put(key.as_bytes(), b"x", PutOptions::default()) {
            Ok(_) => acknowledged += 1,
            Err(e) => eprintln!("{key}: {e}"),
        }
    }
    let took = during.elapsed();
    eprintln!("4 writes with raft frames held 40 ms: {acknowledged} acknowledged in {took:?}");
    assert_eq!(acknowledged, 4);
    for i in 0..3 {
        t.cluster.set_faults(i, "").unwrap();
    }
    std::thread::sleep(Duration::from_millis(250));
    // Healed: nothing is left queued behind the delay.
    let after = Instant::now();
    for i in 0..20 {
        let key = format!("healed-{i}");
        c.put(key.as_bytes(), b"y", PutOptions::default()).unwrap();
    }
    let took = after.elapsed();
    eprintln!("20 writes right after healing: {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "writes after healing took {took:?}: frames still queued behind the delay"
    );
    assert_still_serves(&mut c);
}
