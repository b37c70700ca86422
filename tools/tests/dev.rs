//! `corekv dev` and the CLI as a user runs them: the ready line, a CLI
//! session with its exit codes, and no server left behind when `corekv dev`
//! stops or dies.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corekv_tools::dev::server_binary;

static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A base port whose ports are free, below Linux's ephemeral range (32768..)
/// so that client sockets of other tests never hold them.
fn free_base() -> u16 {
    const SLOTS: u16 = 54;
    let seed = (std::process::id() % u32::from(SLOTS)) as u16;
    let skip = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    (0..SLOTS)
        .map(|i| 10_200 + ((seed + skip + i) % SLOTS) * 400)
        .find(|&b| {
            (1..=3u16).all(|i| {
                [b + i, b + 100 + i, b + 200 + i, b + 300 + i]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            })
        })
        .expect("free ports")
}

fn pids_of_servers(data_dir: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("corekv-server") && cmd.contains(data_dir) {
                out.push(pid);
            }
        }
    }
    out
}

struct Dev {
    child: Child,
    endpoints: String,
    data_dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev() -> Dev {
    assert!(
        server_binary().is_file(),
        "corekv-server not built: run `cargo test --release --workspace`"
    );
    let data_dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["dev", "--base-port", &base.to_string(), "--shards", "1"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a line from corekv dev").unwrap();
    let (endpoints, resp) = line
        .strip_prefix("ready endpoints=")
        .and_then(|rest| rest.split_once(" resp="))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert_eq!(endpoints.split(',').count(), 3);
    let want: Vec<String> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", base + 200 + i))
        .collect();
    assert_eq!(
        resp,
        want.join(","),
        "Redis-protocol ports in the ready line"
    );
    // Each of them answers a Redis client.
    for addr in &want {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"+PONG\r\n", "{addr}");
    }
    Dev {
        child,
        endpoints: endpoints.to_string(),
        data_dir,
    }
}

fn cli(endpoints: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_cluster_serves_the_cli_and_stops_its_servers() {
    let mut dev = start_dev();
    let e = dev.endpoints.clone();
    let (code, out, _) = cli(&e, &["put", "greeting", "hello"]);
    assert_eq!(code, 0);
    let version: u64 = out.trim().parse().expect("put prints the version");
    let (code, out, _) = cli(&e, &["get", "greeting"]);
    // Into a pipe, the bytes unchanged: no newline added.
    assert_eq!((code, out.as_str()), (0, "hello"));
    let (code, _, err) = cli(&e, &["get", "missing"]);
    assert_eq!((code, err.trim()), (1, "(not found)"));
    let (code, _, err) = cli(&e, &["put", "greeting", "x", "--if-absent"]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("current version {version}")), "{err}");
    let (code, _, _) = cli(
        &e,
        &["put", "greeting", "x", "--if-version", &version.to_string()],
    );
    assert_eq!(code, 0);
    assert_eq!(cli(&e, &["incr", "n", "5"]).1, "5\n");
    assert_eq!(cli(&e, &["incr", "n"]).1, "6\n");
    assert_eq!(cli(&e, &["incr", "n", "-10"]).1, "-4\n");
    assert_eq!(cli(&e, &["del", "n"]).1, "1\n");
    assert_eq!(cli(&e, &["del", "n"]).1, "0\n");
    let (code, out, _) = cli(&e, &["get", "greeting", "--consistency", "stale"]);
    assert_eq!(code, 0);
    assert!(out == "x" || out == "hello", "{out}");

    // SIGTERM: every server stops, then corekv dev exits.
    let dir = dev.data_dir.path().to_string_lossy().into_owned();
    assert_eq!(pids_of_servers(&dir).len(), 3);
    unsafe {
        libc::kill(dev.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "corekv dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids_of_servers(&dir).is_empty(), "servers left behind");
}

#[test]
fn servers_stop_when_corekv_dev_is_killed() {
    let mut dev = start_dev();
    let dir = dev.data_dir.path().to_string_lossy().into_owned();
    assert_eq!(pids_of_servers(&dir).len(), 3);
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids_of_servers(&dir).is_empty() {
        assert!(Instant::now() < deadline, "servers outlived corekv dev");
        std::thread::sleep(Duration::from_millis(50));
    }
}
