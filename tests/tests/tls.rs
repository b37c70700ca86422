//! TLS on real clusters: every port speaks it, plain TCP and garbage close
//! only their own connection, clients that do not trust the CA fail, peers
//! must hold a certificate from the cluster's CA naming the node they claim
//! to be, and mutual TLS refuses clients without a certificate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use corekv_engine::Consistency;
use corekv_net::peer_codec::encode_peer_hello;
use corekv_net::tls::{client_tls, ClientTls, SyncStream};
use corekv_net::{Client, PutOptions};
use corekv_tests::{need_tool, TestCluster};
use corekv_tools::certs::DevCa;

fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// True if the other side closed the connection (or broke it) within a
/// few seconds, whatever it sent first (a TLS alert, say); false if it
/// stayed open and silent.
fn closed_by_server(s: &mut SyncStream) -> bool {
    s.tcp()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut b = [0u8; 64];
    for _ in 0..64 {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
    false
}

fn client_with(t: &TestCluster, tls: Option<ClientTls>) -> Result<Client, corekv_net::ClientError> {
    let mut cfg = t.cluster.client_config();
    cfg.tls = tls;
    cfg.request_timeout = Duration::from_secs(2);
    Client::connect(cfg)
}

fn tls_dir(t: &TestCluster) -> std::path::PathBuf {
    t.cluster
        .ca_file()
        .expect("a TLS cluster has a CA")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Node 1's Redis port.
fn resp_port(t: &TestCluster) -> String {
    let addr = t.cluster.nodes[0].resp_addr.as_ref().unwrap();
    addr.rsplit(':').next().unwrap().to_string()
}

fn redis_cli_tls(port: &str, ca: &Path, extra: &[&str], cmd: &[&str]) -> std::process::Output {
    std::process::Command::new("redis-cli")
        .args(["-p", port, "--tls", "--cacert"])
        .arg(ca)
        .args(extra)
        .args(cmd)
        .output()
        .expect("redis-cli runs")
}

#[test]
fn every_port_speaks_tls_and_refuses_what_does_not() {
    need_tool("redis-cli");
    let t = TestCluster::start_tls(3, 2, &[]);
    let ca = t.cluster.ca_file().unwrap();

    // A client that trusts the CA writes and reads (shard ports too: the
    // client is shard-aware by default).
    let mut c = t.client();
    let v = c
        .put(b"tls/k", b"v1", PutOptions::default())
        .expect("put over TLS");
    assert!(v > 0);
    assert_eq!(
        c.get(b"tls/k", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"v1"
    );

    // Plain TCP to a TLS client port: closed, nothing answered; the error
    // says what to do.
    let e = client_with(&t, None).err().expect("plain client refused");
    assert!(e.to_string().contains("--tls-ca"), "{e}");
    let mut plain = SyncStream::Plain(tcp(&t.cluster.nodes[0].client_addr));
    plain
        .write_all(&corekv_net::message::encode_client_hello(None))
        .unwrap();
    assert!(closed_by_server(&mut plain), "plain hello on a TLS port");

    // A client trusting another CA does not get through.
    let other_dir = tempfile::tempdir().unwrap();
    let other = DevCa::open_or_make(other_dir.path()).unwrap();
    let wrong = client_tls(&other.ca_file(), None).unwrap();
    let e = client_with(&t, Some(wrong))
        .err()
        .expect("wrong CA refused");
    assert!(e.to_string().contains("TLS"), "{e}");

    // Garbage where a handshake belongs closes that connection only, on
    // the client and the Redis ports; the node goes on serving.
    for addr in [
        t.cluster.nodes[0].client_addr.clone(),
        t.cluster.nodes[0].resp_addr.clone().unwrap(),
    ] {
        let mut g = SyncStream::Plain(tcp(&addr));
        g.write_all(b"\x16\x03\x01\x00\x05garbage and more garbage\r\n")
            .unwrap();
        assert!(closed_by_server(&mut g), "garbage on {addr}");
    }
    let mut again = t.client_of(0);
    assert_eq!(
        again
            .get(b"tls/k", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"v1"
    );

    // A handshake that never finishes holds nothing forever: a silent
    // connection is closed (HELLO_WAIT, 10 s from the accept).
    let mut silent = SyncStream::Plain(tcp(&t.cluster.nodes[1].client_addr));
    let started = Instant::now();
    silent
        .tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 8];
    let r = silent.read(&mut b);
    assert!(
        matches!(r, Ok(0)) || r.is_err() && started.elapsed() < Duration::from_secs(19),
        "a silent connection stayed open: {r:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));

    // Redis clients: redis-cli with --tls --cacert; without TLS refused.
    let port = resp_port(&t);
    let out = redis_cli_tls(&port, &ca, &[], &["SET", "tls/r", "from-redis"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let out = redis_cli_tls(&port, &ca, &[], &["GET", "tls/k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "GET", "tls/k"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("v1"),
        "plain redis-cli was served: {out:?}"
    );
    // redis-py over TLS.
    let script = format!(
        "import redis\nr = redis.Redis(port={port}, ssl=True, ssl_ca_certs='{}')\nprint(r.get('tls/r').decode())",
        ca.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from-redis",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The peer port: a certificate from another CA does not get in; one
    // from the cluster's CA must name the node its hello claims.
    let peer = t.cluster.nodes[0].peer_addr.clone();
    let (ocert, okey) = other.node(2, &[]).unwrap();
    let outsider = client_tls(&ca, Some((&ocert, &okey))).unwrap();
    let outsider_in = match SyncStream::dial(tcp(&peer), &peer, Some(&outsider)) {
        Err(_) => false,
        Ok(mut s) => {
            let _ = s.write_all(&encode_peer_hello(2, 2, &t.cluster.nodes[1].client_addr));
            let _ = s.flush();
            !closed_by_server(&mut s)
        }
    };
    assert!(
        !outsider_in,
        "a certificate from another CA reached the peer port"
    );
    let ours = DevCa::open_or_make(&tls_dir(&t)).unwrap();
    let (cert2, key2) = ours.node(2, &[]).unwrap();
    let node2 = client_tls(&ca, Some((&cert2, &key2))).unwrap();
    // Claiming to be node 3 with node 2's certificate: dropped.
    let mut s = SyncStream::dial(tcp(&peer), &peer, Some(&node2)).unwrap();
    s.write_all(&encode_peer_hello(3, 2, &t.cluster.nodes[2].client_addr))
        .unwrap();
    s.flush().unwrap();
    assert!(
        closed_by_server(&mut s),
        "node 2's certificate posed as node 3"
    );
    // As itself it is let in (the connection stays open): the check above
    // is about the name, not about every connection.
    let mut s = SyncStream::dial(tcp(&peer), &peer, Some(&node2)).unwrap();
    s.write_all(&encode_peer_hello(2, 2, &t.cluster.nodes[1].client_addr))
        .unwrap();
    s.flush().unwrap();
    assert!(!closed_by_server(&mut s), "node 2 refused as itself");
    // Greeted as itself, it cannot then send messages in node 3's name.
    let mut forged = raft::eraftpb::Message::default();
    forged.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    let env = corekv_engine::RaftEnvelope {
        region_id: 1,
        from_node: 3,
        to_node: 1,
        message: forged,
        removed_at: 0,
        epoch: Default::default(),
        control: Default::default(),
    };
    s.write_all(&corekv_net::peer_codec::encode_raft_batch(&[env]))
        .unwrap();
    s.flush().unwrap();
    assert!(
        closed_by_server(&mut s),
        "node 2's connection sent a message as node 3"
    );

    // The cluster itself still works over its TLS peer links.
    let mut c = t.client();
    c.put(b"tls/after", b"ok", PutOptions::default()).unwrap();
    assert_eq!(
        c.get(b"tls/after", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"ok"
    );
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate() {
    need_tool("redis-cli");
    let t = TestCluster::start_tls(3, 1, &["--tls-client-auth"]);
    let ca = t.cluster.ca_file().unwrap();
    // The cluster's client certificate: served.
    let mut c = t.client();
    c.put(b"mtls/k", b"v", PutOptions::default()).unwrap();
    // Trusting the CA but presenting no certificate: refused.
    let bare = client_tls(&ca, None).unwrap();
    assert!(
        client_with(&t, Some(bare)).is_err(),
        "no client certificate"
    );
    // A certificate from another CA: refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = DevCa::open_or_make(other_dir.path()).unwrap();
    let (oc, ok) = other.client().unwrap();
    let foreign = client_tls(&ca, Some((&oc, &ok))).unwrap();
    assert!(
        client_with(&t, Some(foreign)).is_err(),
        "foreign certificate"
    );
    // redis-cli with and without the client certificate.
    let port = resp_port(&t);
    let dir = tls_dir(&t);
    let cert = dir.join(corekv_tools::certs::CLIENT_CERT_FILE);
    let key = dir.join(corekv_tools::certs::CLIENT_KEY_FILE);
    let out = redis_cli_tls(
        &port,
        &ca,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &["GET", "mtls/k"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v", "{out:?}");
    let out = redis_cli_tls(&port, &ca, &[], &["GET", "mtls/k"]);
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "v", "{out:?}");
}

#[test]
fn ten_thousand_connections_that_never_log_in_are_bounded_and_hold_no_one_up() {
    // Two shards: the node's client port spreads connections over both
    // (each takes up to --connections-max, 10,000 by default).
    let t = TestCluster::start_tls(3, 2, &[]);
    let root = std::fs::read_to_string(t.cluster.enable_auth().unwrap()).unwrap();
    let addr = t.cluster.nodes[0].client_addr.clone();
    let pid = t.cluster.pid(0).expect("running");
    let rss_before = corekv_tests::rss_kib(pid);
    let mut cfg = t.cluster.client_config();
    cfg.endpoints = vec![addr.clone()];
    cfg.credentials = Some(corekv_net::Credentials {
        user: corekv_net::auth::ROOT_USER.into(),
        token: root.trim().into(),
    });
    let mut good = Client::connect(cfg.clone()).unwrap();
    good.put(b"held/k", b"v", PutOptions::default()).unwrap();

    // 10,000 connections that never start their handshake, let alone log in.
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(&addr).unwrap());
    }
    // A new client, TLS and logged in, is served meanwhile, and so is the
    // one already open.
    let mut fresh = Client::connect(cfg).unwrap();
    assert_eq!(
        fresh
            .get(b"held/k", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"v"
    );
    good.put(b"held/k", b"v2", PutOptions::default()).unwrap();
    let grown = corekv_tests::rss_kib(pid).saturating_sub(rss_before);
    eprintln!(
        "10,000 silent connections: server RSS grew {} MiB",
        grown / 1024
    );
    assert!(grown < 512 * 1024, "server RSS grew {grown} KiB");

    // They hold nothing for long: the handshake wait closes every one.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in idle.iter_mut().step_by(100) {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 8];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a silent connection stayed open: {r:?}"
        );
    }
    drop(idle);
    assert_eq!(
        good.get(b"held/k", Consistency::Linearizable)
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"v2"
    );
}

/// Connects to `addr`, starts a TLS record that announces 512 bytes and
/// then sends one byte a second; returns how long the server took to close
/// the connection, or None if it was still open after `patience`.
fn drip_until_closed(addr: &str, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    if s.write_all(b"\x16\x03\x01\x02\x00\x01").is_err() {
        return Some(started.elapsed());
    }
    let mut b = [0u8; 64];
    while started.elapsed() < patience {
        match s.read(&mut b) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
        if s.write_all(&[0x01]).is_err() {
            return Some(started.elapsed());
        }
    }
    None
}

#[test]
fn handshakes_and_greetings_are_bounded_and_peer_links_back_off() {
    // One shard per node: one peer listener per node, so the pending-
    // connection bound below is the listener's.
    let t = TestCluster::start_tls(3, 1, &[]);
    let ca = t.cluster.ca_file().unwrap();
    let peer = t.cluster.nodes[0].peer_addr.clone();
    let ours = DevCa::open_or_make(&tls_dir(&t)).unwrap();

    // A client certificate from the cluster's CA names no node: the peer
    // port drops it right after the handshake, before any greeting.
    let (ccert, ckey) = ours.client().unwrap();
    let client_cert = client_tls(&ca, Some((&ccert, &ckey))).unwrap();
    let refused = match SyncStream::dial(tcp(&peer), &peer, Some(&client_cert)) {
        Err(_) => true,
        Ok(mut s) => closed_by_server(&mut s),
    };
    assert!(refused, "a client certificate stayed on the peer port");

    // A node's certificate that never says hello: closed within the
    // greeting wait (10 s from the accept, handshake included).
    let (cert2, key2) = ours.node(2, &[]).unwrap();
    let node2 = client_tls(&ca, Some((&cert2, &key2))).unwrap();
    let started = Instant::now();
    let mut mute = SyncStream::dial(tcp(&peer), &peer, Some(&node2)).unwrap();
    mute.tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 8];
    let r = mute.read(&mut b);
    let held = started.elapsed();
    assert!(
        (matches!(r, Ok(0)) || r.is_err()) && held < Duration::from_secs(14),
        "a peer connection without a hello stayed {held:?}: {r:?}"
    );

    // Connections that never finish a handshake are bounded: past the
    // pending bound the oldest one is closed, and a node's own link still
    // gets in (it greets at once, so silent connections cannot lock it out).
    let mut pending: Vec<TcpStream> = (0..corekv_net::transport::PEER_PENDING_MAX)
        .map(|_| TcpStream::connect(&peer).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut link = SyncStream::dial(tcp(&peer), &peer, Some(&node2)).unwrap();
    link.write_all(&encode_peer_hello(2, 1, &t.cluster.nodes[1].client_addr))
        .unwrap();
    link.flush().unwrap();
    assert!(
        !closed_by_server(&mut link),
        "a node's link was shut out by silent connections"
    );
    pending[0]
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let r = pending[0].read(&mut b);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref().is_err_and(|e| !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
        "the oldest pending connection was not closed past the bound: {r:?}"
    );
    drop(pending);
    drop(link);

    // A handshake that drips a byte a second is still bounded as a whole,
    // on the client, Redis and peer ports alike.
    let ports = [
        t.cluster.nodes[1].client_addr.clone(),
        t.cluster.nodes[1].resp_addr.clone().unwrap(),
        t.cluster.nodes[1].peer_addr.clone(),
    ];
    let drips: Vec<_> = ports
        .iter()
        .cloned()
        .map(|a| std::thread::spawn(move || drip_until_closed(&a, Duration::from_secs(20))))
        .collect();
    for (addr, d) in ports.iter().zip(drips) {
        let closed = d.join().unwrap();
        assert!(
            closed.is_some_and(|e| e < Duration::from_secs(14)),
            "a dripping handshake on {addr} was held: {closed:?}"
        );
    }
    let mut c = t.client();
    c.put(b"bounded/k", b"v", PutOptions::default()).unwrap();

    // Node 3's place is taken by a listener that refuses the other nodes'
    // certificates (it trusts another CA for clients): TLS 1.3 lets the
    // dialer finish its side first, so the refusal shows only as a broken
    // connection. Nodes 1 and 2 must back off, not redial per message.
    let mut t = t;
    let peer3 = t.cluster.nodes[2].peer_addr.clone();
    t.cluster.kill(2);
    let other_dir = tempfile::tempdir().unwrap();
    let other = DevCa::open_or_make(other_dir.path()).unwrap();
    let (cert3, key3) = ours.node(3, &[]).unwrap();
    let refuser = corekv_net::tls::node_tls(
        &corekv_net::tls::TlsFiles {
            cert: cert3,
            key: key3,
            ca: other.ca_file(),
        },
        true,
    )
    .unwrap()
    .peers;
    // The killed node's sockets may linger a moment.
    let bind_by = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match std::net::TcpListener::bind(&peer3) {
            Ok(l) => break l,
            Err(e) if Instant::now() < bind_by => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{peer3}: {e}"),
        }
    };
    listener.set_nonblocking(true).unwrap();
    let window = Duration::from_secs(8);
    let started = Instant::now();
    let mut dials = 0u32;
    while started.elapsed() < window {
        match listener.accept() {
            Ok((s, _)) => {
                dials += 1;
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let _ = SyncStream::accept(s, &refuser);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    eprintln!("{dials} dials to the refusing node 3 in {window:?}");
    // Two links, each backing off from 20 ms to 1 s: a dozen dials each in
    // 8 s; redialing per message would be hundreds.
    assert!(
        dials <= 40,
        "{dials} dials in {window:?} to a peer that refuses the certificate"
    );
    assert!(dials >= 2, "the nodes stopped dialing node 3 ({dials})");
    c.put(b"bounded/k2", b"v", PutOptions::default()).unwrap();
}
