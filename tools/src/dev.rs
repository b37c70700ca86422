//! A local cluster of `corekv-server` processes on loopback.
//!
//! Node `i` (1-based) listens for clients on `127.0.0.1:BASE+i` and for peers
//! on `127.0.0.1:BASE+100+i` (with the options below, for Redis clients on
//! BASE+200+i and for metrics on BASE+300+i). Children get `PR_SET_PDEATHSIG`, so they stop
//! with their parent even if it is killed; [`LocalCluster`] stops them on drop.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corekv_net::{Client, ClientConfig, Credentials};

/// Settings of a local cluster.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Number of nodes.
    pub nodes: u64,
    /// Base port (clients on BASE+i, peers on BASE+100+i).
    pub base_port: u16,
    /// Data directory (one sub-directory per node).
    pub data_dir: PathBuf,
    /// Shards per node.
    pub shards: Option<usize>,
    /// Regions of the new cluster.
    pub regions: Option<u64>,
    /// Extra flags for every server.
    pub extra_args: Vec<String>,
    /// Extra flags for one node: (node id, flags).
    pub node_args: Vec<(u64, Vec<String>)>,
    /// Give every node `--fault-file <node dir>/faults` (fault injection for
    /// tests; see [`LocalCluster::set_faults`]).
    pub fault_files: bool,
    /// Give node `i` `--metrics-listen 127.0.0.1:BASE+300+i`.
    pub metrics: bool,
    /// Give node `i` `--resp-listen 127.0.0.1:BASE+200+i`.
    pub resp: bool,
    /// Give every node the node key `<data dir>/node.key` (made if
    /// missing), so authentication can be turned on
    /// ([`LocalCluster::enable_auth`]).
    pub node_key: bool,
    /// TLS on every port: a throwaway CA and node certificates in
    /// `<data dir>/tls` (made if missing; see [`crate::certs`]).
    pub tls: bool,
}

/// One running node.
pub struct DevNode {
    /// Node id.
    pub id: u64,
    /// Client address.
    pub client_addr: String,
    /// Peer address.
    pub peer_addr: String,
    /// Metrics address, if enabled.
    pub metrics_addr: Option<String>,
    /// Redis-protocol address, if enabled.
    pub resp_addr: Option<String>,
    /// Its data directory.
    pub dir: PathBuf,
    /// Started with `--join` (added to a running cluster).
    pub join: bool,
    child: Option<Child>,
}

/// A running local cluster; stopping it (or dropping it) stops every child.
pub struct LocalCluster {
    /// The nodes.
    pub nodes: Vec<DevNode>,
    server_bin: PathBuf,
    opts: DevOptions,
    /// The node key, if the nodes have one: the cluster's own checks
    /// (readiness, [`LocalCluster::enable_auth`]) log in with it.
    node_key: Option<String>,
    /// The CA that signs the nodes' certificates (with [`DevOptions::tls`]).
    ca: Option<crate::certs::DevCa>,
    /// How the cluster's own clients and tests dial it over TLS: the CA,
    /// and the client certificate for mutual TLS.
    client_tls: Option<corekv_net::tls::ClientTls>,
}

/// Finds `corekv-server`: `$COREKV_SERVER_BIN` if set, else next to the
/// running executable, then in its parent directory (test binaries live in
/// `target/*/deps`), then on `PATH`.
pub fn server_binary() -> PathBuf {
    // Another build of the server (an earlier release, say, to check that a
    // test fails on it).
    if let Some(p) = std::env::var_os("COREKV_SERVER_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("corekv-server");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("corekv-server")
}

impl LocalCluster {
    /// Starts the nodes (not waiting for leaders; see [`LocalCluster::wait_ready`]).
    pub fn start(opts: DevOptions) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(
            opts.nodes >= 1 && opts.nodes <= 99,
            "--nodes must be 1..=99"
        );
        anyhow::ensure!(
            u32::from(opts.base_port) + 300 + opts.nodes as u32 <= 65535,
            "--base-port too high"
        );
        let server_bin = server_binary();
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            nodes.push(DevNode {
                id: i,
                client_addr: format!("127.0.0.1:{}", opts.base_port + i as u16),
                peer_addr: format!("127.0.0.1:{}", opts.base_port + 100 + i as u16),
                metrics_addr: opts
                    .metrics
                    .then(|| format!("127.0.0.1:{}", opts.base_port + 300 + i as u16)),
                resp_addr: opts
                    .resp
                    .then(|| format!("127.0.0.1:{}", opts.base_port + 200 + i as u16)),
                dir: opts.data_dir.join(format!("node-{i}")),
                join: false,
                child: None,
            });
        }
        let node_key = if opts.node_key {
            Some(node_key(&opts.data_dir)?)
        } else {
            None
        };
        let (ca, client_tls) = if opts.tls {
            let ca = crate::certs::DevCa::open_or_make(&opts.data_dir.join("tls"))?;
            let (cert, key) = ca.client()?;
            let tls = corekv_net::tls::client_tls(&ca.ca_file(), Some((&cert, &key)))
                .map_err(anyhow::Error::msg)?;
            (Some(ca), Some(tls))
        } else {
            (None, None)
        };
        let mut c = LocalCluster {
            nodes,
            node_key,
            server_bin,
            opts,
            ca,
            client_tls,
        };
        for i in 0..c.nodes.len() {
            c.start_node(i)?;
        }
        Ok(c)
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (Re)starts node at `index` from its data directory.
    pub fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let cluster = self.initial_cluster();
        let n = &mut self.nodes[index];
        anyhow::ensure!(n.child.is_none(), "node {} is running", n.id);
        std::fs::create_dir_all(&n.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("server.log"))?;
        let mut cmd = Command::new(&self.server_bin);
        cmd.arg("--id")
            .arg(n.id.to_string())
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--client-listen")
            .arg(&n.client_addr)
            .arg("--peer-listen")
            .arg(&n.peer_addr)
            .arg("--initial-cluster")
            .arg(&cluster);
        if let Some(s) = self.opts.shards {
            cmd.arg("--shards").arg(s.to_string());
        }
        if let Some(r) = self.opts.regions {
            cmd.arg("--regions").arg(r.to_string());
        }
        cmd.args(&self.opts.extra_args);
        for (id, args) in &self.opts.node_args {
            if *id == n.id {
                cmd.args(args);
            }
        }
        if self.opts.fault_files {
            cmd.arg("--fault-file").arg(n.dir.join("faults"));
        }
        if n.join {
            cmd.arg("--join");
        }
        if let Some(m) = &n.metrics_addr {
            cmd.arg("--metrics-listen").arg(m);
        }
        if let Some(r) = &n.resp_addr {
            cmd.arg("--resp-listen").arg(r);
        }
        if self.node_key.is_some() {
            cmd.arg("--auth-key-file")
                .arg(self.opts.data_dir.join(NODE_KEY_FILE));
        }
        if let Some(ca) = &self.ca {
            let ips: Vec<std::net::IpAddr> = [&n.client_addr, &n.peer_addr]
                .into_iter()
                .chain(n.resp_addr.as_ref())
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip())
                .collect();
            let (cert, key) = ca.node(n.id, &ips)?;
            cmd.arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--tls-ca")
                .arg(ca.ca_file());
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "starting {}: {e} (build it with `cargo build --release -p corekv-shards`)",
                self.server_bin.display()
            )
        })?;
        n.child = Some(child);
        Ok(())
    }

    /// Adds node `nodes.len() + 1` (same port layout) without starting it;
    /// it will start with `--join`. Returns its index. Tell the cluster
    /// first (`corekv ctl add-node`, [`crate::ctl::add_node`]).
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len() as u64 + 1;
        let base = self.opts.base_port;
        self.nodes.push(DevNode {
            id: i,
            client_addr: format!("127.0.0.1:{}", base + i as u16),
            peer_addr: format!("127.0.0.1:{}", base + 100 + i as u16),
            metrics_addr: self
                .opts
                .metrics
                .then(|| format!("127.0.0.1:{}", base + 300 + i as u16)),
            resp_addr: self
                .opts
                .resp
                .then(|| format!("127.0.0.1:{}", base + 200 + i as u16)),
            dir: self.opts.data_dir.join(format!("node-{i}")),
            join: true,
            child: None,
        });
        self.nodes.len() - 1
    }

    /// Writes the fault rules of node `index` (see `corekv_net::faults`);
    /// an empty string removes every fault. Needs `fault_files`.
    pub fn set_faults(&self, index: usize, rules: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.opts.fault_files, "cluster started without fault files");
        let path = self.nodes[index].dir.join("faults");
        if rules.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            // Write then rename, so the node never reads half a file.
            let tmp = self.nodes[index].dir.join("faults.tmp");
            std::fs::write(&tmp, rules)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Client endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sends `signal` to node `index`'s process.
    pub fn signal(&self, index: usize, signal: i32) {
        if let Some(c) = &self.nodes[index].child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// SIGKILLs node `index` and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut c) = self.nodes[index].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `index` and waits up to `grace` before SIGKILL; returns
    /// its exit status if it exited by itself.
    pub fn stop_node(&mut self, index: usize, grace: Duration) -> Option<std::process::ExitStatus> {
        self.signal(index, libc::SIGTERM);
        self.reap(index, Instant::now() + grace)
    }

    /// Waits for node `index` to exit until `deadline`, then SIGKILLs it.
    fn reap(&mut self, index: usize, deadline: Instant) -> Option<std::process::ExitStatus> {
        let mut c = self.nodes[index].child.take()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Returns the id of a node whose process ended by itself, if any.
    pub fn exited(&mut self) -> Option<(u64, std::process::ExitStatus)> {
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(st)) = c.try_wait() {
                    n.child = None;
                    return Some((n.id, st));
                }
            }
        }
        None
    }

    /// Process id of node `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.as_ref().map(|c| c.id())
    }

    /// True if node `index` runs.
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].child.is_some()
    }

    /// Waits until every running node answers and sees a leader for every
    /// region; returns how long it took.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some((id, st)) = self.exited() {
                anyhow::bail!(
                    "node {id} exited ({st}); its log:\n{}",
                    tail(&self.nodes[id as usize - 1].dir.join("server.log"), 20)
                );
            }
            // A node that joined may hold no region yet: it only has to answer.
            let running: Vec<(String, bool)> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| (n.client_addr.clone(), n.join))
                .collect();
            let login = self.node_login();
            let ready = |(a, join): &(String, bool)| {
                if *join {
                    node_answers_with(a, login.clone(), self.client_tls.clone())
                } else {
                    sees_all_leaders(a, login.clone(), self.client_tls.clone())
                }
            };
            if running.iter().all(ready) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                anyhow::bail!("cluster not ready after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every node: one SIGTERM each, then SIGKILL for any still running
    /// after 10 s.
    pub fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..self.nodes.len() {
            self.reap(i, deadline);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Where a local cluster's node key is kept, in its data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// Where [`LocalCluster::enable_auth`] keeps root's token.
pub const ROOT_TOKEN_FILE: &str = "root.token";

/// The node key of the cluster in `dir`, made (random, mode 0600) if
/// missing.
fn node_key(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(NODE_KEY_FILE);
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let key = corekv_net::auth::hex(&raw);
    crate::ctl::write_secret(&path, &key)?;
    Ok(key)
}

impl LocalCluster {
    /// How to dial the cluster over TLS (with [`DevOptions::tls`]): trusts
    /// its CA and presents the client certificate.
    pub fn client_tls(&self) -> Option<corekv_net::tls::ClientTls> {
        self.client_tls.clone()
    }

    /// The CA certificate file (with [`DevOptions::tls`]).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|c| c.ca_file())
    }

    /// Client settings for the cluster: its endpoints, over TLS if it has
    /// TLS (anonymous; set `credentials` to log in).
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new(self.endpoints().split(',').map(String::from).collect());
        cfg.tls = self.client_tls.clone();
        cfg
    }

    /// How the cluster's own checks log in: as a node, if the nodes have
    /// a key.
    pub fn node_login(&self) -> Option<Credentials> {
        self.node_key.as_ref().map(|k| Credentials {
            user: corekv_net::auth::NODE_USER.into(),
            token: k.clone(),
        })
    }

    /// Turns authentication on (the nodes need a key: [`DevOptions::node_key`])
    /// and waits until every running node has it; returns the file holding
    /// root's token (made, or rotated if the file was lost).
    pub fn enable_auth(&self) -> anyhow::Result<PathBuf> {
        let login = self
            .node_login()
            .ok_or_else(|| anyhow::anyhow!("the nodes have no node key"))?;
        let path = self.opts.data_dir.join(ROOT_TOKEN_FILE);
        let mut cfg = ClientConfig::new(self.endpoints().split(',').map(String::from).collect());
        cfg.credentials = Some(login.clone());
        cfg.system = true;
        cfg.tls = self.client_tls.clone();
        let mut client = Client::connect(cfg)?;
        match corekv_net::auth::set_enabled(&mut client, true)?.0 {
            Some(token) => crate::ctl::write_secret(&path, &token)?,
            None if path.is_file() => {}
            None => {
                let (token, _) =
                    corekv_net::auth::rotate_token(&mut client, corekv_net::auth::ROOT_USER)?;
                crate::ctl::write_secret(&path, &token)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let on = client
                    .status_doc(&n.client_addr)
                    .ok()
                    .and_then(|d| d.auth)
                    .is_some_and(|a| a.state == "on");
                if on {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {} did not take authentication on within 10 s",
                    n.id
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(path)
    }
}

fn sees_all_leaders(
    addr: &str,
    login: Option<Credentials>,
    tls: Option<corekv_net::tls::ClientTls>,
) -> bool {
    let mut cfg = ClientConfig::new(vec![addr.to_string()]);
    cfg.request_timeout = Duration::from_millis(500);
    cfg.attempts_max = 1;
    cfg.credentials = login;
    cfg.tls = tls;
    let Ok(client) = Client::connect(cfg) else {
        return false;
    };
    !client.routes().is_empty() && client.routes().iter().all(|r| r.leader_node != 0)
}

/// True when the node at `addr` answers a routes request from a client
/// logged in with `login`.
pub fn node_answers_as(addr: &str, login: Option<Credentials>) -> bool {
    node_answers_with(addr, login, None)
}

/// [`node_answers_as`], over TLS when `tls` is given.
pub fn node_answers_with(
    addr: &str,
    login: Option<Credentials>,
    tls: Option<corekv_net::tls::ClientTls>,
) -> bool {
    let mut cfg = ClientConfig::new(vec![addr.to_string()]);
    cfg.request_timeout = Duration::from_millis(500);
    cfg.attempts_max = 1;
    cfg.credentials = login;
    cfg.tls = tls;
    Client::connect(cfg).is_ok()
}

/// True if the node at `addr` answers and knows a leader for every region.
pub fn node_sees_all_leaders(addr: &str) -> bool {
    sees_all_leaders(addr, None, None)
}

/// True when the node at `addr` answers a routes request.
pub fn node_answers(addr: &str) -> bool {
    node_answers_as(addr, None)
}

/// The last `lines` lines of a file, after the first panic message in it
/// (a panic's backtrace would push its message out of the tail).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    let last = v[v.len().saturating_sub(lines)..].join("\n");
    match v.iter().position(|l| l.contains("panicked at")) {
        Some(p) if p + 3 < v.len().saturating_sub(lines) => {
            format!("{}\n...\n{last}", v[p..p + 3].join("\n"))
        }
        _ => last,
    }
}

/// Runs `corekv dev` in the foreground: start, print `ready endpoints=...`,
/// then wait for Ctrl-C/SIGTERM or a node dying, and stop everything.
/// With `auth`, the nodes get a node key and authentication is turned on
/// before the ready line, which then names root's token file (`token=`).
pub fn run_dev(mut opts: DevOptions, auth: bool) -> anyhow::Result<()> {
    opts.node_key |= auth;
    let signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    let mut cluster = LocalCluster::start(opts.clone())?;
    eprintln!(
        "corekv dev: {} nodes, data in {}, logs in <node dir>/server.log",
        opts.nodes,
        opts.data_dir.display()
    );
    let took = match cluster.wait_ready(Duration::from_secs(60)) {
        Ok(t) => t,
        Err(e) => {
            cluster.stop();
            return Err(e);
        }
    };
    let token = if auth {
        match cluster.enable_auth() {
            Ok(p) => Some(p),
            Err(e) => {
                cluster.stop();
                return Err(e.context("turning authentication on"));
            }
        }
    } else {
        None
    };
    let resp: Vec<&str> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.resp_addr.as_deref())
        .collect();
    let mut ready = format!("ready endpoints={}", cluster.endpoints());
    if !resp.is_empty() {
        ready += &format!(" resp={}", resp.join(","));
    }
    if let Some(t) = &token {
        ready += &format!(" token={}", t.display());
    }
    let ca = cluster.ca_file();
    if let Some(ca) = &ca {
        ready += &format!(" ca={}", ca.display());
    }
    println!("{ready}");
    std::io::stdout().flush()?;
    if let Some(t) = &token {
        eprintln!(
            "corekv dev: authentication on; log in as root with `--token-file {}` \
             (redis-cli: AUTH root TOKEN)",
            t.display()
        );
    }
    if let Some(ca) = &ca {
        eprintln!(
            "corekv dev: TLS on every port; trust the CA with `--tls-ca {}` (redis-cli: --tls \
             --cacert {})",
            ca.display(),
            ca.display()
        );
    }
    eprintln!(
        "corekv dev: every region has a leader ({took:.2?}); try `corekv --endpoints {} put greeting hello`",
        cluster.endpoints()
    );
    let metrics: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| {
            n.metrics_addr
                .as_ref()
                .map(|a| format!("http://{a}/metrics"))
        })
        .collect();
    if !metrics.is_empty() {
        eprintln!("corekv dev: metrics at {}", metrics.join(" "));
    }
    if let Some(first) = resp.first() {
        let port = first.rsplit(':').next().unwrap_or_default();
        eprintln!("corekv dev: Redis clients welcome: `redis-cli -p {port}`");
    }
    let mut signals = signals;
    loop {
        if signals.pending().next().is_some() {
            eprintln!("corekv dev: stopping");
            break;
        }
        if let Some((id, st)) = cluster.exited() {
            eprintln!(
                "corekv dev: node {id} exited ({st}); stopping the cluster. Its log:\n{}",
                tail(&cluster.nodes[id as usize - 1].dir.join("server.log"), 20)
            );
            cluster.stop();
            anyhow::bail!("node {id} exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop();
    Ok(())
}
