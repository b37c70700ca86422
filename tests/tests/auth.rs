//! Authentication on real clusters: users and their roles on the native
//! and Redis ports, logins across restarts, leader moves and rotation,
//! protected mode (clients from another address than 127.0.0.1, played
//! from 127.0.0.2), and `corekv dev --auth` as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::Consistency;
use corekv_net::auth::{self, Grant};
use corekv_net::message::{encode_client_hello, Frame, Op, Outcome, Request};
use corekv_net::wire::ErrorCode;
use corekv_net::{Client, ClientConfig, ClientError, Credentials, PutOptions};
use corekv_tests::{RawConn, TestCluster};

fn login(user: &str, token: &str) -> Option<Credentials> {
    Some(Credentials {
        user: user.into(),
        token: token.into(),
    })
}

fn client_as(endpoints: Vec<String>, creds: Option<Credentials>) -> Result<Client, ClientError> {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.credentials = creds;
    Client::connect(cfg)
}

/// An administration client (system mark), as `corekv ctl` makes one.
fn admin_as(endpoints: Vec<String>, creds: Option<Credentials>) -> Result<Client, ClientError> {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.credentials = creds;
    cfg.system = true;
    Client::connect(cfg)
}

/// Turns authentication on; root's token.
fn turn_on(t: &TestCluster) -> String {
    let path = t.cluster.enable_auth().expect("authentication on");
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn put(c: &mut Client, k: &str, v: &str) -> Result<u64, ClientError> {
    c.put(k.as_bytes(), v.as_bytes(), PutOptions::default())
}

fn value(c: &mut Client, k: &str) -> Option<String> {
    c.get(k.as_bytes(), Consistency::Linearizable)
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v.value).into_owned())
}

fn is_denied<T>(r: Result<T, ClientError>) -> bool {
    matches!(r, Err(ClientError::PermissionDenied(_)))
}

#[test]
fn requests_without_a_login_or_beyond_their_roles_are_refused_and_nothing_is_applied() {
    let t = TestCluster::start_keyed(3, 1, &[]);
    let mut early = t.client();
    put(&mut early, "k", "before").unwrap();
    let root_token = turn_on(&t);
    let mut root = admin_as(t.endpoints(), login("root", &root_token)).unwrap();

    // Anonymous: a connection made before the switch and a new one.
    match put(&mut early, "k", "after") {
        Err(ClientError::Unauthenticated(m)) => {
            assert!(m.contains("authentication required"), "{m}")
        }
        other => panic!("anonymous write after auth on: {other:?}"),
    }
    match client_as(t.endpoints(), None) {
        Err(ClientError::Unauthenticated(_)) => {}
        other => panic!("anonymous connect: {:?}", other.map(|_| ())),
    }
    match client_as(t.endpoints(), login("root", "not-the-token")) {
        Err(ClientError::Unauthenticated(m)) => {
            assert!(m.contains("wrong user name or token"), "{m}")
        }
        other => panic!("wrong token: {:?}", other.map(|_| ())),
    }
    assert_eq!(value(&mut root, "k").as_deref(), Some("before"));

    let reader_token = auth::add_user(&mut root, "reader", vec![Grant::Read(vec![])]).unwrap();
    let app_token = auth::add_user(
        &mut root,
        "app",
        vec![
            Grant::Write(b"/app/".to_vec()),
            Grant::Read(b"/shared/".to_vec()),
        ],
    )
    .unwrap();
    put(&mut root, "/shared/flag", "on").unwrap();
    put(&mut root, "/other/x", "root's").unwrap();

    // A read-only user reads everything, writes nothing.
    let mut reader = client_as(t.endpoints(), login("reader", &reader_token)).unwrap();
    assert_eq!(value(&mut reader, "k").as_deref(), Some("before"));
    assert!(is_denied(put(&mut reader, "k", "reader's")));
    assert!(is_denied(reader.delete(b"k", None)));
    assert!(is_denied(reader.incr(b"n", 1)));
    assert_eq!(value(&mut root, "k").as_deref(), Some("before"));
    assert_eq!(value(&mut root, "n"), None);
    // Scans are for read:* users; the meta region's keys stay out of them.
    let meta = corekv_engine::region::META_REGION_ID;
    let (items, _) = scan_region(&mut reader, meta);
    assert!(items.is_empty(), "metadata scanned by a user: {items:?}");

    // A prefix user stays in its prefixes.
    let mut app = client_as(t.endpoints(), login("app", &app_token)).unwrap();
    put(&mut app, "/app/x", "1").unwrap();
    assert_eq!(value(&mut app, "/app/x").as_deref(), Some("1"));
    assert_eq!(value(&mut app, "/shared/flag").as_deref(), Some("on"));
    assert!(is_denied(put(&mut app, "/shared/flag", "off")));
    assert!(is_denied(put(&mut app, "/other/x", "app's")));
    assert!(is_denied(app.get(b"/other/x", Consistency::Linearizable)));
    assert!(is_denied(app.scan_page(0, 10, true)));
    assert!(is_denied(app.watch(&[b"/other/x".as_slice()], 0)));
    assert!(app.watch(&[b"/app/x".as_slice()], 0).is_ok());
    assert_eq!(value(&mut root, "/other/x").as_deref(), Some("root's"));
    assert_eq!(value(&mut root, "/shared/flag").as_deref(), Some("on"));

    // Nor a non-admin with the system mark: no metadata, no user changes,
    // no placement operations.
    let mut app_sys = admin_as(t.endpoints(), login("app", &app_token)).unwrap();
    // Even in its own prefix, a write with the system mark is refused.
    assert!(is_denied(put(&mut app_sys, "/app/sys", "x")));
    assert_eq!(value(&mut root, "/app/sys"), None);
    assert!(is_denied(app.status_doc(&t.endpoints()[0])));
    assert!(is_denied(
        app_sys.get(&auth::auth_key(), Consistency::Linearizable)
    ));
    assert!(is_denied(auth::add_user(
        &mut app_sys,
        "mine",
        vec![Grant::Admin]
    )));
    assert!(is_denied(auth::set_enabled(&mut app_sys, false)));
    assert!(is_denied(
        app.get(&auth::auth_key(), Consistency::Linearizable)
    ));
    let region = app
        .routes()
        .iter()
        .find(|r| !r.region.is_meta())
        .unwrap()
        .region
        .id;
    let split = corekv_tools::ctl::split(&mut app, region, None);
    assert!(
        split
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{split:?}"
    );
    let to = app
        .routes()
        .iter()
        .find(|r| r.region.id == region)
        .unwrap()
        .region
        .peers[0]
        .node_id;
    let moved = corekv_net::admin::transfer_leader(&mut app, region, to, Duration::from_secs(2));
    assert!(moved.is_err(), "a non-admin moved a leader");
    let (table, _) = auth::read_auth(&mut root).unwrap().unwrap();
    assert_eq!(
        table
            .users
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["app", "reader", "root"]
    );
    assert!(table.enabled);

    // What was refused was counted, on the nodes that refused it.
    let docs = corekv_tools::ctl::gather_with({
        let mut c = ClientConfig::new(t.endpoints());
        c.credentials = login("root", &root_token);
        c
    })
    .unwrap();
    let (mut denied, mut unauth, mut failed) = (0, 0, 0);
    for d in corekv_tools::ctl::auth_rows(&docs) {
        let a = d.auth.expect("auth status");
        assert_eq!(a.state, "on");
        assert_eq!(a.users, 3);
        denied += a.denied;
        unauth += a.unauthenticated;
        failed += a.login_failures;
    }
    assert!(denied >= 10, "denied {denied}");
    assert!(unauth >= 2, "unauthenticated {unauth}");
    assert!(failed >= 1, "login failures {failed}");
}

/// One scan page of region `id`'s keys.
fn scan_region(c: &mut Client, id: u64) -> (Vec<Bytes>, Option<u64>) {
    let start = c
        .routes()
        .iter()
        .find(|r| r.region.id == id)
        .unwrap()
        .region
        .start_hash;
    let (items, next) = c.scan_page(start, 100, true).unwrap();
    (items.into_iter().map(|(k, _)| k).collect(), next)
}

/// A user who may read only `/cfg/` caches `/cfg/` and keys under it: the
/// cache's loads, watches and freshness probes stay within the prefix.
#[test]
fn a_user_with_read_on_a_prefix_alone_can_cache_it() {
    use corekv_client::aio::{CacheOptions, Selection};
    let t = TestCluster::start_keyed(3, 1, &[]);
    let root_token = turn_on(&t);
    let mut root = admin_as(t.endpoints(), login("root", &root_token)).unwrap();
    let token = auth::add_user(
        &mut root,
        "cfg-reader",
        vec![Grant::Read(b"/cfg/".to_vec())],
    )
    .unwrap();
    put(&mut root, "/cfg/limit", "100").unwrap();
    put(&mut root, "/cfg/mode", "blue").unwrap();
    let mut cfg = corekv_client::ClientConfig::new(t.endpoints());
    cfg.credentials = login("cfg-reader", &token);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = corekv_client::AsyncClient::connect(cfg).await.unwrap();
        let prefix = client.cached(
            Selection::Prefix(Bytes::from_static(b"/cfg/")),
            CacheOptions::new(Duration::from_secs(1)),
        );
        let keys = client.cached(
            Selection::Keys(vec![Bytes::from_static(b"/cfg/mode")]),
            CacheOptions::new(Duration::from_secs(1)),
        );
        let started = Instant::now();
        loop {
            let a = prefix.get_cached(b"/cfg/limit");
            let b = keys.get_cached(b"/cfg/mode");
            if let (Some(Some(a)), Some(Some(b))) = (a, b) {
                assert_eq!((&a.value[..], &b.value[..]), (&b"100"[..], &b"blue"[..]));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "never served from memory: {:?} ({}), {:?} ({})",
                prefix.stats(),
                prefix.last_reload(),
                keys.stats(),
                keys.last_reload()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Writes it may not do are still refused.
        let denied = client
            .put(b"/cfg/limit", b"1", corekv_client::PutOptions::default())
            .await;
        assert!(
            matches!(denied, Err(ClientError::PermissionDenied(_))),
            "{denied:?}"
        );
    });
}

#[test]
fn logins_hold_across_restarts_and_leader_moves_and_rotation_locks_out_new_connections() {
    let mut t = TestCluster::start_keyed(3, 1, &[]);
    let root_token = turn_on(&t);
    let mut root = admin_as(t.endpoints(), login("root", &root_token)).unwrap();
    let token = auth::add_user(&mut root, "svc", vec![Grant::Write(vec![])]).unwrap();

    // A user just added logs in through every node at once.
    for n in &t.cluster.nodes {
        let mut c = client_as(vec![n.client_addr.clone()], login("svc", &token)).unwrap();
        put(&mut c, &format!("fresh-{}", n.id), "x").unwrap();
    }

    // Node 1 killed and restarted: it checks logins from its kept copy
    // and the meta region alike.
    t.cluster.kill(0);
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let only_1 = vec![t.cluster.nodes[0].client_addr.clone()];
    let mut c = client_as(only_1.clone(), login("svc", &token)).unwrap();
    put(&mut c, "after-restart", "x").unwrap();
    match client_as(only_1.clone(), None) {
        Err(ClientError::Unauthenticated(_)) => {}
        other => panic!("anonymous after restart: {:?}", other.map(|_| ())),
    }

    // The meta region's leader moves: logins are unchanged.
    let meta = corekv_engine::region::META_REGION_ID;
    root.refresh().unwrap();
    let route = root
        .routes()
        .iter()
        .find(|r| r.region.id == meta)
        .unwrap()
        .clone();
    let to = route
        .region
        .peers
        .iter()
        .map(|p| p.node_id)
        .find(|n| *n != route.leader_node)
        .unwrap();
    corekv_net::admin::transfer_leader(&mut root, meta, to, Duration::from_secs(10)).unwrap();
    let mut c = client_as(t.endpoints(), login("svc", &token)).unwrap();
    put(&mut c, "after-move", "x").unwrap();

    // Rotation: the old token no longer logs in anywhere; the new one does.
    let (new, late) = auth::rotate_token(&mut root, "svc").unwrap();
    assert!(late.is_empty(), "nodes {late:?} did not take the rotation");
    assert_ne!(new, token);
    for n in &t.cluster.nodes {
        let one = vec![n.client_addr.clone()];
        match client_as(one.clone(), login("svc", &token)) {
            Err(ClientError::Unauthenticated(_)) => {}
            other => panic!("old token on node {}: {:?}", n.id, other.map(|_| ())),
        }
        let mut c = client_as(one, login("svc", &new)).unwrap();
        put(&mut c, "rotated", &n.id.to_string()).unwrap();
    }

    // Removed: no new connection.
    assert!(auth::remove_user(&mut root, "svc").unwrap().is_empty());
    match client_as(t.endpoints(), login("svc", &new)) {
        Err(ClientError::Unauthenticated(_)) => {}
        other => panic!("removed user: {:?}", other.map(|_| ())),
    }
    // The last admin cannot go while authentication is on.
    let last = auth::remove_user(&mut root, "root");
    assert!(matches!(last, Err(ClientError::Invalid { .. })), "{last:?}");
    // Off again: anonymous clients are served.
    auth::set_enabled(&mut root, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client_as(t.endpoints(), None) {
            if put(&mut c, "open-again", "x").is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "anonymous clients not served after auth off"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection to `addr` from `from` (another loopback address).
fn connect_from(from: &str, addr: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    let dst: SocketAddr = addr.parse().unwrap();
    s.connect_timeout(&dst.into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Hello from `from` with `creds`: the frame the node answers with.
fn hello_from(from: &str, addr: &str, creds: Option<(&str, &str)>) -> (RawConn, Option<Frame>) {
    let mut c = RawConn::over(connect_from(from, addr));
    c.stream.write_all(&encode_client_hello(creds)).unwrap();
    let f = c.read_frame();
    (c, f)
}

fn get_req(key: &str) -> Request {
    Request {
        id: 7,
        region_id: 0,
        epoch: Default::default(),
        op: Op::Get {
            key: Bytes::copy_from_slice(key.as_bytes()),
            consistency: Consistency::Linearizable,
        },
        session: None,
        system: false,
    }
}

/// The first line a Redis-protocol connection from `from` gets for `cmds`.
fn resp_line(stream: &mut TcpStream, cmd: &[&str]) -> String {
    let mut out = format!("*{}\r\n", cmd.len());
    for a in cmd {
        out += &format!("${}\r\n{a}\r\n", a.len());
    }
    stream.write_all(out.as_bytes()).unwrap();
    read_line(stream)
}

/// The next line the server sent.
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while stream.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

#[test]
fn protected_mode_serves_other_addresses_only_once_authentication_is_on() {
    let t = TestCluster::start_keyed(1, 2, &[]);
    let node = t.cluster.nodes[0].client_addr.clone();
    let resp = t.cluster.nodes[0].resp_addr.clone().unwrap();

    // From 127.0.0.1: served.
    let mut local = RawConn::connect_bare(&node);
    local.stream.write_all(&encode_client_hello(None)).unwrap();
    let shard_ports = match local.read_frame() {
        Some(Frame::Hello { shard_ports, .. }) => shard_ports,
        other => panic!("{other:?}"),
    };
    assert_eq!(shard_ports.len(), 2);

    // From 127.0.0.2: the client port, each shard port and the Redis port
    // answer with the protected-mode error and close.
    let mut ports = vec![node.clone()];
    ports.extend(shard_ports.iter().map(|p| format!("127.0.0.1:{p}")));
    for addr in &ports {
        match hello_from("127.0.0.2", addr, None) {
            (_, Some(Frame::Error(e))) => {
                assert_eq!(e.code(), ErrorCode::Unauthenticated);
                assert!(e.message().contains("protected mode"), "{}", e.message());
                assert!(
                    e.message().contains("corekv ctl auth enable"),
                    "{}",
                    e.message()
                );
            }
            (_, other) => panic!("{addr} from 127.0.0.2: {other:?}"),
        }
    }
    let mut r = connect_from("127.0.0.2", &resp);
    let line = resp_line(&mut r, &["PING"]);
    assert!(
        line.starts_with("-DENIED") && line.contains("protected mode"),
        "{line}"
    );

    // Authentication on: another address is served, once logged in.
    let root_token = turn_on(&t);
    match hello_from("127.0.0.2", &node, None) {
        (mut c, Some(Frame::Hello { .. })) => {
            c.send(&[get_req("k")]);
            match c.read_frame() {
                Some(Frame::Responses(rs)) => {
                    let e = rs[0].result.clone().unwrap_err();
                    assert_eq!(e.code(), ErrorCode::Unauthenticated, "{e:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        (_, other) => panic!("anonymous hello from 127.0.0.2 with auth on: {other:?}"),
    }
    for addr in &ports {
        match hello_from("127.0.0.2", addr, Some(("root", &root_token))) {
            (mut c, Some(Frame::Hello { .. })) => {
                c.send(&[get_req("k")]);
                match c.read_frame() {
                    Some(Frame::Responses(rs)) => {
                        assert!(matches!(rs[0].result, Ok(Outcome::Value(None))), "{rs:?}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            (_, other) => panic!("root from 127.0.0.2 on {addr}: {other:?}"),
        }
    }
    let mut r = connect_from("127.0.0.2", &resp);
    assert!(resp_line(&mut r, &["SET", "a", "1"]).starts_with("-NOAUTH"));
    assert_eq!(
        resp_line(&mut r, &["AUTH", "root", "wrong"])
            .split(' ')
            .next(),
        Some("-WRONGPASS")
    );
    assert_eq!(resp_line(&mut r, &["AUTH", "root", &root_token]), "+OK");
    assert_eq!(resp_line(&mut r, &["SET", "a", "1"]), "+OK");
    assert_eq!(resp_line(&mut r, &["GET", "a"]), "$1");
    assert_eq!(read_line(&mut r), "1");

    // Authentication off again: the connections from 127.0.0.2 that are
    // open lose their access with it (protected mode holds per request).
    let (mut c, hello) = hello_from("127.0.0.2", &node, Some(("root", &root_token)));
    assert!(matches!(hello, Some(Frame::Hello { .. })), "{hello:?}");
    let mut admin = admin_as(vec![node.clone()], login("root", &root_token)).unwrap();
    let (_, late) = auth::set_enabled(&mut admin, false).unwrap();
    assert!(late.is_empty());
    c.send(&[get_req("a")]);
    match c.read_frame() {
        Some(Frame::Error(e)) => assert!(e.message().contains("protected mode"), "{e:?}"),
        other => panic!("a remote connection after auth off: {other:?}"),
    }
    let line = resp_line(&mut r, &["GET", "a"]);
    assert!(line.starts_with("-DENIED"), "{line}");

    // A node key that is not the cluster's does not log in as a node.
    match hello_from(
        "127.0.0.1",
        &node,
        Some((auth::NODE_USER, "0123456789abcdef0123456789abcdef")),
    ) {
        (_, Some(Frame::Error(e))) => assert_eq!(e.code(), ErrorCode::Unauthenticated),
        (_, other) => panic!("a forged node login: {other:?}"),
    }
}

#[test]
fn insecure_nodes_serve_every_address_and_keyless_clusters_cannot_turn_auth_on() {
    let t = TestCluster::start_resp(1, 1, &["--insecure"]);
    let node = t.cluster.nodes[0].client_addr.clone();
    match hello_from("127.0.0.2", &node, None) {
        (_, Some(Frame::Hello { .. })) => {}
        (_, other) => panic!("--insecure, from 127.0.0.2: {other:?}"),
    }
    let mut r = connect_from("127.0.0.2", t.cluster.nodes[0].resp_addr.as_ref().unwrap());
    assert_eq!(resp_line(&mut r, &["PING"]), "+PONG");
    // Without a node key, `ctl auth enable` says what is missing.
    let docs = corekv_tools::ctl::gather(t.endpoints(), Duration::from_secs(5)).unwrap();
    let mut c = admin_as(t.endpoints(), None).unwrap();
    let e = corekv_tools::ctl::auth_enable(&mut c, &docs, None).unwrap_err();
    assert!(e.to_string().contains("--auth-key-file"), "{e}");
    let a = corekv_tools::ctl::auth_rows(&docs)[0].auth.clone().unwrap();
    assert!(
        a.insecure && a.state == "off" && a.node_key.is_none(),
        "{a:?}"
    );
}

#[test]
fn redis_cli_and_redis_py_log_in_and_stay_within_their_roles() {
    corekv_tests::need_tool("redis-cli");
    let t = TestCluster::start_keyed(1, 1, &[]);
    let root_token = turn_on(&t);
    let mut root = admin_as(t.endpoints(), login("root", &root_token)).unwrap();
    let app = auth::add_user(&mut root, "app", vec![Grant::Write(b"cfg:".to_vec())]).unwrap();
    let resp = t.cluster.nodes[0].resp_addr.clone().unwrap();
    let port = resp.rsplit(':').next().unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(cli(&["SET", "cfg:a", "1"]).starts_with("NOAUTH"));
    assert_eq!(
        cli(&["--user", "app", "--pass", &app, "SET", "cfg:a", "1"]),
        "OK"
    );
    assert_eq!(cli(&["--user", "app", "--pass", &app, "GET", "cfg:a"]), "1");
    let denied = cli(&["--user", "app", "--pass", &app, "SET", "other", "1"]);
    assert!(denied.starts_with("NOPERM"), "{denied}");
    let denied = cli(&[
        "--user", "app", "--pass", &app, "MSET", "cfg:b", "1", "other", "2",
    ]);
    assert!(denied.starts_with("NOPERM"), "{denied}");
    assert!(cli(&["--user", "app", "--pass", &app, "DBSIZE"]).starts_with("NOPERM"));
    let wrong = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"])
        .args(["--user", "app", "--pass", "nope", "GET", "cfg:a"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wrong.stderr).to_string()
        + &String::from_utf8_lossy(&wrong.stdout);
    assert!(said.contains("WRONGPASS"), "{said}");
    assert_eq!(value(&mut root, "other"), None);
    assert_eq!(value(&mut root, "cfg:b"), None);
    // RESP3 with HELLO 3 AUTH.
    assert!(cli(&["-3", "--user", "app", "--pass", &app, "GET", "cfg:a"]).contains('1'));

    let script = r#"
import sys, redis
port, token = int(sys.argv[1]), sys.argv[2]
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, username="app", password=token, protocol=proto)
    assert r.set("cfg:py", "v%d" % proto)
    assert r.get("cfg:py") == b"v%d" % proto
    try:
        r.set("elsewhere", "x")
        raise SystemExit("write outside the prefix accepted")
    except redis.exceptions.NoPermissionError:
        pass
try:
    redis.Redis(host="127.0.0.1", port=port, username="app", password="wrong").ping()
    raise SystemExit("wrong token accepted")
except redis.exceptions.AuthenticationError:
    pass
try:
    redis.Redis(host="127.0.0.1", port=port).get("cfg:py")
    raise SystemExit("anonymous read accepted")
except redis.exceptions.AuthenticationError:
    pass
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port, &app])
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "redis-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(value(&mut root, "elsewhere"), None);
}

#[test]
fn a_flood_of_wrong_tokens_is_counted_and_logged_in_clients_carry_on() {
    let t = TestCluster::start_keyed(1, 1, &[]);
    let root_token = turn_on(&t);
    let node = t.cluster.nodes[0].client_addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tries = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = RawConn::connect_bare(&node);
                    c.stream
                        .write_all(&encode_client_hello(Some(("root", "guess"))))
                        .unwrap();
                    match c.read_frame() {
                        Some(Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::Unauthenticated),
                        other => panic!("a wrong token got {other:?}"),
                    }
                    tries += 1;
                }
                tries
            })
        })
        .collect();
    let mut root = client_as(t.endpoints(), login("root", &root_token)).unwrap();
    for i in 0..200 {
        put(&mut root, &format!("during-{i}"), "x").unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tries: u64 = flood.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(tries >= 8, "{tries} wrong logins");
    let docs = corekv_tools::ctl::gather_with({
        let mut c = ClientConfig::new(t.endpoints());
        c.credentials = login("root", &root_token);
        c
    })
    .unwrap();
    let a = corekv_tools::ctl::auth_rows(&docs)[0].auth.clone().unwrap();
    assert!(
        a.login_failures >= tries,
        "{} counted of {tries}",
        a.login_failures
    );

    // Connections that never log in are closed: a native one without a
    // hello, a Redis one without AUTH (both after 10 s), a native one
    // whose anonymous request was refused (at once).
    let silent = TcpStream::connect(&node).unwrap();
    let resp = TcpStream::connect(t.cluster.nodes[0].resp_addr.as_ref().unwrap()).unwrap();
    let mut refused = RawConn::connect_bare(&node);
    refused
        .stream
        .write_all(&encode_client_hello(None))
        .unwrap();
    assert!(matches!(refused.read_frame(), Some(Frame::Hello { .. })));
    refused.send(&[get_req("k")]);
    assert!(matches!(refused.read_frame(), Some(Frame::Responses(_))));
    let mut one = [0u8; 1];
    assert!(
        matches!(refused.stream.read(&mut one), Ok(0)),
        "still open after its refusal"
    );
    let started = Instant::now();
    for mut s in [silent, resp] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "a silent connection got an answer"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(19),
        "silent connections kept for {took:?}"
    );
}

/// Stops a child process when dropped (a failing test leaks nothing).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_auth_refuses_anonymous_writes_and_takes_the_token_file() {
    let _serial = corekv_tests::serial();
    let bin = corekv_tools::dev::server_binary().with_file_name("corekv");
    let dir = tempfile::tempdir().unwrap();
    let base = corekv_tests::pick_base(1);
    let mut child = Command::new(&bin)
        .args(["dev", "--auth", "--nodes", "1", "--shards", "1"])
        .arg("--base-port")
        .arg(base.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corekv dev starts");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut guard = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    if !line.starts_with("ready ") {
        let _ = guard.0.wait();
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!("corekv dev --auth did not say ready: {line:?}\n{err}");
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_string()
    };
    let (endpoints, token_file) = (field("endpoints"), field("token"));
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("--endpoints")
            .arg(&endpoints)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let (code, _, err) = run(&["put", "greeting", "hello"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("authentication required"), "{err}");
    assert!(err.contains("not logged in"), "{err}");
    let (code, _, err) = run(&["--token-file", &token_file, "put", "greeting", "hello"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(&["--token-file", &token_file, "get", "greeting"]);
    assert_eq!((code, out.as_str()), (Some(0), "hello"));
    let token = std::fs::read_to_string(&token_file).unwrap();
    let out = Command::new(&bin)
        .arg("--endpoints")
        .arg(&endpoints)
        .args(["ctl", "user", "add", "reader", "--role", "read"])
        .env("COREKV_TOKEN", token.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(reader.len(), 64, "{reader:?}");
    let (code, _, err) = run(&[
        "--user", "reader", "--token", &reader, "put", "greeting", "bye",
    ]);
    assert_eq!(code, Some(3));
    assert!(err.contains("permission denied"), "{err}");
    let (code, out, _) = run(&["--user", "reader", "--token", &reader, "get", "greeting"]);
    assert_eq!((code, out.as_str()), (Some(0), "hello"));
    let (code, out, _) = run(&["--token-file", &token_file, "ctl", "auth", "status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("authentication on (2 users"), "{out}");
    let (code, out, _) = run(&["--token-file", &token_file, "ctl", "user", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("reader") && out.contains("read:*") && !out.contains(reader.as_str()),
        "{out}"
    );
}
