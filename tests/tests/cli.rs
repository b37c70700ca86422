//! The `corekv` command line against a real cluster: values from stdin and
//! files byte for byte, raw and JSON output, and the size limit.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corekv_tests::TestCluster;

fn corekv() -> std::path::PathBuf {
    corekv_tools::dev::server_binary().with_file_name("corekv")
}

/// Runs `corekv --endpoints ... ARGS` with `stdin` on its standard input
/// (None: no standard input at all).
fn run(t: &TestCluster, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(corekv())
        .arg("--endpoints")
        .arg(t.endpoints().join(","))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corekv runs");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        // A refused value may make corekv exit before reading all of it.
        let _ = w.write_all(input);
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Bytes that are not UTF-8 and hold newlines and zeros.
fn binary(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|i| match i % 97 {
            0 => b'\n',
            1 => 0,
            2 => 0xff,
            _ => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

#[test]
fn values_from_stdin_and_files_come_back_byte_for_byte() {
    let t = TestCluster::start(3, 1, &[]);
    let dir = tempfile::tempdir().unwrap();

    // 500 KB of binary from stdin: stored, and `get` into a pipe gives the
    // same bytes, with no newline added.
    let big = binary(500 * 1024);
    let o = run(&t, &["put", "cli/stdin"], Some(&big));
    assert!(o.status.success(), "{}", stderr(&o));
    let version: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(version > 0);
    let o = run(&t, &["get", "cli/stdin"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout == big,
        "get returned {} bytes, not the 500 KB put",
        o.stdout.len()
    );

    // An empty stdin is refused (a missing value, most likely), nothing
    // written; an empty value is given as ''.
    let o = run(&t, &["put", "cli/empty"], Some(b""));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("stdin was empty"), "{}", stderr(&o));
    assert_eq!(run(&t, &["get", "cli/empty"], None).status.code(), Some(1));
    let o = run(&t, &["put", "cli/empty", ""], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(run(&t, &["get", "cli/empty"], None).stdout, b"");

    // From a file, the same.
    let path = dir.path().join("config.json");
    let json = br#"{"feature": {"enabled": true}, "limit": 5}"#;
    std::fs::write(&path, json).unwrap();
    let o = run(
        &t,
        &["put", "cli/file", "--file", path.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&t, &["get", "cli/file"], None);
    assert_eq!(o.stdout, json);
    // A file that is not there: a clear error, nothing written.
    let o = run(&t, &["put", "cli/nofile", "--file", "/nonexistent/v"], None);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("/nonexistent/v"), "{}", stderr(&o));
    assert_eq!(run(&t, &["get", "cli/nofile"], None).status.code(), Some(1));

    // 5 MB from stdin is over the node's limit (1 MiB by default): refused
    // with the size error, nothing written.
    let huge = binary(5 * 1024 * 1024);
    let o = run(&t, &["put", "cli/huge"], Some(&huge));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("5242880 bytes is over the limit of 1048576"),
        "{e}"
    );
    assert_eq!(run(&t, &["get", "cli/huge"], None).status.code(), Some(1));
    // Over the most any node takes (8 MiB): refused before it is sent.
    let o = run(&t, &["put", "cli/huge"], Some(&binary(9 * 1024 * 1024)));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("too large"), "{}", stderr(&o));

    // JSON output: UTF-8 values as text, others as base64; version; ttl.
    let o = run(&t, &["put", "cli/ttl", "hello", "--ttl", "60"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let put_version: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let o = run(&t, &["get", "cli/ttl", "--output", "json"], None);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["key"], "cli/ttl");
    assert_eq!(j["value"], "hello");
    assert_eq!(j["version"], put_version);
    let ttl = j["ttl_ms"].as_u64().expect("ttl_ms");
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    let o = run(&t, &["get", "cli/stdin", "--output", "json"], None);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j.get("value").is_none() && j.get("ttl_ms").is_none(), "{j}");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(j["value_base64"].as_str().unwrap())
        .unwrap();
    assert!(decoded == big);
    assert_eq!(j["version"], version);
}

/// Lists `prefix` in pages of `page` keys with the client API, following
/// `after`; the keys in the order they came.
fn list_in_pages(c: &mut corekv_net::Client, prefix: &[u8], page: usize) -> Vec<bytes::Bytes> {
    let mut keys = Vec::new();
    let mut after: Option<bytes::Bytes> = None;
    loop {
        let (items, more) = c
            .list_prefix(prefix, after.as_deref(), page, true, |_| {})
            .expect("list");
        keys.extend(items.iter().map(|(k, _)| k.clone()));
        if !more {
            return keys;
        }
        after = items.last().map(|(k, _)| k.clone());
    }
}

#[test]
fn a_prefix_lists_in_key_order_in_pages_through_splits_and_a_leader_kill() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    // 10,000 keys under the prefix, and neighbours that are not under it.
    let wanted: Vec<String> = (0..10_000)
        .map(|i| format!("/app/payments/{i:05}"))
        .collect();
    let others: Vec<String> = (0..1_000)
        .map(|i| format!("/app/billing/{i:04}"))
        .chain((0..200).map(|i| format!("/app/payments-old/{i}")))
        .chain((0..200).map(|i| format!("/app/payment{i}")))
        .collect();
    for chunk in wanted.chunks(500).chain(others.chunks(500)) {
        let items: Vec<(&[u8], &[u8])> =
            chunk.iter().map(|k| (k.as_bytes(), k.as_bytes())).collect();
        for r in c.batch_put(&items) {
            r.unwrap();
        }
    }
    let expect: Vec<bytes::Bytes> = wanted
        .iter()
        .map(|k| bytes::Bytes::copy_from_slice(k.as_bytes()))
        .collect();

    // The CLI: key order, values, limits with a continuation, keys only,
    // JSON.
    let o = run(&t, &["list", "/app/payments/", "--limit", "3"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/app/payments/00000 /app/payments/00000\n/app/payments/00001 /app/payments/00001\n\
         /app/payments/00002 /app/payments/00002\n"
    );
    assert!(
        stderr(&o).contains("--after '/app/payments/00002'"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &t,
        &[
            "list",
            "/app/payments/",
            "--keys-only",
            "--after",
            "/app/payments/09997",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/app/payments/09998\n/app/payments/09999\n"
    );
    assert!(!stderr(&o).contains("more keys"), "{}", stderr(&o));
    let o = run(
        &t,
        &["list", "/app/billing/", "--json", "--limit", "1"],
        None,
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["key"], "/app/billing/0000");
    assert_eq!(j["value"], "/app/billing/0000");
    assert!(j["version"].as_u64().unwrap() > 0);
    let o = run(&t, &["list", "/app/payments/", "--keys-only"], None);
    let listed: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(listed.len(), 10_000);
    assert!(listed.iter().zip(&wanted).all(|(a, b)| a == b));

    // Listing in pages of 700 while regions split and a leader dies: every
    // key once, in order, every time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let mut c = t.client();
        let stop = stop.clone();
        let expect = expect.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                let got = list_in_pages(&mut c, b"/app/payments/", 700);
                assert!(
                    got == expect,
                    "round {rounds}: {} keys listed, first difference at {:?}",
                    got.len(),
                    got.iter().zip(&expect).position(|(a, b)| a != b)
                );
                rounds += 1;
            }
            rounds
        })
    };
    let mut admin = t.client();
    for r in corekv_tests::data_routes(&admin).into_iter().take(3) {
        admin.split(r.region.id, None).expect("split");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Node 1 leads some regions: it dies mid-listing.
    t.cluster.kill(0);
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = lister
        .join()
        .expect("every listing held every key once, in order");
    assert!(rounds >= 3, "{rounds}");
    assert!(corekv_tests::data_routes(&t.client_of(1)).len() >= 11);
}
