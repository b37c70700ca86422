//! Starting and stopping a node: check the settings' resources, open or
//! bootstrap the data directory, start the log writer and one pinned glommio
//! executor per shard, and shut down cleanly on SIGTERM/SIGINT.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corekv_engine::Replicas;
use corekv_net::auth::AuthState;
use corekv_net::message::NodeInfo;
use corekv_net::server::{serve, ServerInfo, ServerLimits, ShardPorts};
use corekv_net::transport::{serve_peers, Transport, TransportConfig};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::bootstrap::{self, Router};
use crate::config::NodeConfig;
use crate::error::StartError;
use crate::log_writer::LogWriter;
use crate::node::NodeShared;
use crate::shard::{Shard, ShardClients, ShardMsg, ShardPeers};

/// Messages (each one a batch) queued from one shard to another.
pub const MESH_QUEUE_MSGS: usize = 4096;
/// Log batches (one per shard round) queued for the log writer before
/// shards wait.
pub const LOG_QUEUE_BATCHES: usize = 4096;

/// How `corekv-server` ends (its process exit status).
pub mod exit {
    use crate::error::StartError;

    /// It could not start (ports taken, data directory, threads), or a
    /// shard stopped with an error; the message says why.
    pub const START_FAILED: i32 = 1;
    /// A setting cannot be used (the message names it); nothing was
    /// written.
    pub const BAD_SETTINGS: i32 = 2;
    /// A shard hit a storage, raft or decoding failure it cannot go on
    /// from (fail-stop; nothing after it was acknowledged).
    pub const SHARD_FATAL: i32 = 70;
    /// A raft log write or sync failed (fail-stop).
    pub const LOG_WRITE_FAILED: i32 = 74;
    /// A second SIGINT/SIGTERM during a clean shutdown: stopped at once.
    pub const SECOND_SIGNAL: i32 = 130;

    /// The exit code of a start-up error.
    pub fn code(e: &StartError) -> i32 {
        match e {
            StartError::Config(_) => BAD_SETTINGS,
            _ => START_FAILED,
        }
    }
}
/// Largest raft transport frame (a snapshot travels in one).
pub const PEER_FRAME_BYTES_MAX: usize = 1 << 30;

/// Raises RLIMIT_MEMLOCK (io_uring locks memory for its rings). Returns a
/// warning to print if it stays low.
pub fn raise_memlock() -> Option<String> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) != 0 {
            return Some("cannot read RLIMIT_MEMLOCK".into());
        }
        if rl.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        let want = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) == 0 {
            return None;
        }
        let up = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &up);
        let now = if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) == 0 {
            rl.rlim_cur
        } else {
            0
        };
        Some(format!(
            "RLIMIT_MEMLOCK is {} KiB and could not be raised; io_uring may fail to start. \
             Run as root, or raise it: `ulimit -l unlimited` in the shell, \
             LimitMEMLOCK=infinity in a systemd unit, or a memlock line in /etc/security/limits.conf",
            now / 1024
        ))
    }
}

/// Raises the open-files limit to its hard limit (each client connection is a
/// file), and warns if that is below what `--connections-max` allows.
fn raise_nofile(wanted: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        if rl.rlim_cur < rl.rlim_max {
            let up = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        if (rl.rlim_cur as usize) < wanted {
            tracing::warn!(
                limit = rl.rlim_cur,
                wanted,
                "open-files limit is below what --connections-max allows; raise it (ulimit -n, LimitNOFILE)"
            );
        }
    }
}

fn listen_error(what: &str, addr: std::net::SocketAddr, e: impl std::fmt::Display) -> StartError {
    StartError::Listen {
        what: what.to_string(),
        addr,
        reason: e.to_string(),
    }
}

fn check_free(what: &str, addr: std::net::SocketAddr) -> Result<(), StartError> {
    corekv_net::listen::check_free(addr).map_err(|e| listen_error(what, addr, e))
}

/// A glommio listener on `addr`, shared with the other shards or the
/// shard's own.
fn listener(
    what: &str,
    addr: std::net::SocketAddr,
    shared: bool,
) -> Result<TcpListener, StartError> {
    use std::os::fd::IntoRawFd;
    let l = if shared {
        corekv_net::listen::shared_listener(addr, 1024)
    } else {
        corekv_net::listen::own_listener(addr, 1024)
    }
    .map_err(|e| listen_error(what, addr, e))?;
    // SAFETY: the fd is a bound, listening TCP socket we own; ownership moves
    // to the glommio listener.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(l.into_raw_fd()) })
}

/// Runs a node until SIGTERM/SIGINT. Errors are fit to show the user.
pub fn run(cfg: NodeConfig) -> Result<(), StartError> {
    if let Some(w) = raise_memlock() {
        tracing::warn!("{w}");
    }
    let resp_fds = if cfg.resp_listen.is_some() {
        // A Redis connection, and the native connections its client opens.
        cfg.resp_connections_max * 2
    } else {
        0
    };
    raise_nofile(cfg.connections_max * cfg.shards + resp_fds + 1024);
    check_free("--peer-listen", cfg.peer_listen)?;
    check_free("--client-listen", cfg.client_listen)?;
    // Bound before anything starts, so a taken port fails the start-up.
    let resp_listener = match cfg.resp_listen {
        Some(addr) => Some((
            std::net::TcpListener::bind(addr)
                .map_err(|e| listen_error("--resp-listen", addr, e))?,
            addr,
        )),
        None => None,
    };
    let resp_stats = Arc::new(corekv_resp::RespStats::default());
    let opened = bootstrap::open(&cfg)?;
    let db = opened.db.clone();
    let (log_tx, log_rx) = crossbeam_channel::bounded(LOG_QUEUE_BATCHES);
    let fail_log_write = Arc::new(AtomicBool::new(false));
    let writer = LogWriter::start(db.clone(), log_rx, fail_log_write.clone());
    let placement: HashMap<u64, usize> = opened.placement.iter().map(|(r, s)| (r.id, *s)).collect();
    let router = Router::new(opened.placement);
    let regions = router.len();
    let mut nodes = BTreeMap::new();
    nodes.insert(
        cfg.node_id,
        NodeInfo {
            node_id: cfg.node_id,
            client_addr: cfg.client_listen.to_string(),
            shard_count: cfg.shards as u32,
        },
    );
    let added = crate::nodes::load(&db)?;
    let retired = crate::nodes::load_retired(&db)?;
    for (id, _, client_addr) in &added {
        nodes.entry(*id).or_insert(NodeInfo {
            node_id: *id,
            client_addr: client_addr.clone(),
            shard_count: 0,
        });
    }
    let peer_addrs = Arc::new(std::sync::RwLock::new(crate::nodes::peer_addrs(
        cfg.node_id,
        &cfg.initial_cluster,
        &added,
    )));
    let stopping = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let gate = Arc::new(crate::auth::gate(&cfg, &db, opened.fresh)?);
    // The nodes' own clients (meta, placement, Redis sessions) come from
    // these; the meta region's node list extends them (`meta`).
    let mut node_ips: Vec<std::net::IpAddr> =
        cfg.initial_cluster.values().map(|a| a.ip()).collect();
    node_ips.extend([cfg.client_listen.ip(), cfg.peer_listen.ip()]);
    for (_, peer, client) in &added {
        node_ips.push(peer.ip());
        node_ips.extend(client.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
    }
    gate.trust_nodes(node_ips);
    let tls = match &cfg.tls {
        Some(files) => {
            let t = corekv_net::tls::node_tls(files, cfg.tls_client_auth)
                .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e)))?;
            gate.set_tls();
            if t.client_auth {
                gate.require_client_certs();
            }
            tracing::info!(
                cert = %files.cert.display(),
                ca = %files.ca.display(),
                client_auth = t.client_auth,
                "TLS on the client, shard, Redis and peer ports"
            );
            Some(Arc::new(t))
        }
        None => {
            tracing::warn!(
                "no TLS certificate (--tls-cert, --tls-key, --tls-ca): client, Redis and peer \
                 traffic, tokens included, crosses the network in clear text"
            );
            None
        }
    };
    if !cfg.insecure && !cfg.client_listen.ip().is_loopback() && gate.state() != AuthState::On {
        tracing::warn!(
            "protected mode: authentication is off, so clients from addresses other than \
             127.0.0.1 and ::1 are refused (turn it on with corekv ctl auth enable, or start \
             with --insecure)"
        );
    }
    if cfg.insecure {
        tracing::warn!(
            "--insecure: protected mode is off; while authentication is off anyone who can \
             reach the client ports can read and write every key"
        );
    }
    let node = Arc::new(NodeShared {
        board: Default::default(),
        directory: corekv_engine::Directory::default(),
        liveness: Default::default(),
        metrics: metrics.clone(),
        router: std::sync::RwLock::new(Arc::new(router)),
        router_version: AtomicU64::new(0),
        cfg: cfg.clone(),
        db,
        nodes: Mutex::new(nodes),
        meta_routes: Mutex::new(Vec::new()),
        region_ids: Mutex::new(0..0),
        retired: Mutex::new(retired),
        peer_addrs,
        log_tx,
        log_stats: writer.stats.clone(),
        stopping: stopping.clone(),
        fail_log_write,
        shard_ports: Arc::new(match cfg.shard_ports {
            crate::config::ShardPortMode::Off => ShardPorts::new(0),
            _ => ShardPorts::new(cfg.shards),
        }),
        forwarded: (0..cfg.shards).map(|_| AtomicU64::new(0)).collect(),
        no_space: AtomicBool::new(false),
        started: Instant::now(),
        resp: resp_listener
            .as_ref()
            .map(|(_, addr)| (*addr, resp_stats.clone())),
        auth: gate.clone(),
        tls: tls.clone(),
    });

    crate::meta::spawn(Arc::downgrade(&node))
        .map_err(|e| StartError::Runtime(format!("starting the meta region thread: {e}")))?;
    crate::status::spawn_size_scanner(Arc::downgrade(&node))
        .map_err(|e| StartError::Runtime(format!("starting the size scanner: {e}")))?;
    let policy = crate::placement::Policy {
        min_load: cfg.placement_min_load,
    };
    crate::placement::spawn(Arc::downgrade(&node), cfg.placement_moves_per_min, policy)
        .map_err(|e| StartError::Runtime(format!("starting the placement driver: {e}")))?;
    if cfg.disk_quota_bytes > 0 {
        crate::quota::spawn_quota_watcher(Arc::downgrade(&node))
            .map_err(|e| StartError::Runtime(format!("starting the disk quota watcher: {e}")))?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let (stats, db, opts) = (
            writer.stats.clone(),
            opened.db.clone(),
            opened.db_options.clone(),
        );
        let resp = resp_stats.clone();
        let auth = gate.clone();
        crate::metrics::serve(addr, metrics, move |m| {
            m.refresh(&stats, &db, &opts);
            m.refresh_resp(&resp);
            m.refresh_auth(&auth);
        })
        .map_err(|e| listen_error("--metrics-listen", addr, e))?;
    }
    let n = stopping;
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| StartError::Runtime(format!("installing signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("corekv-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "shutting down");
                    n.store(true, Ordering::SeqCst);
                } else {
                    eprintln!("corekv-server: second signal, exiting at once");
                    std::process::exit(exit::SECOND_SIGNAL);
                }
            }
        })
        .map_err(|e| StartError::Runtime(format!("starting the signal thread: {e}")))?;

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mesh = MeshBuilder::<ShardMsg, _>::full(cfg.shards, MESH_QUEUE_MSGS);
    let placement = Arc::new(placement);
    let fresh = opened.fresh;
    let mut handles = Vec::new();
    for i in 0..cfg.shards {
        let (node, mesh, placement) = (node.clone(), mesh.clone(), placement.clone());
        let h = LocalExecutorBuilder::new(Placement::Fixed(i % cores))
            .name(&format!("corekv-shard-{i}"))
            .spawn(move || async move { shard_main(i, node, mesh, placement, fresh).await })
            .map_err(|e| {
                StartError::Runtime(format!(
                    "cannot start the io_uring executor of shard {i}: {e}. If the cause is memory, \
                     raise RLIMIT_MEMLOCK (`ulimit -l unlimited`, or LimitMEMLOCK=infinity under systemd)"
                ))
            })?;
        handles.push(h);
    }
    if let Some((listener, addr)) = resp_listener {
        // Sessions reach the cluster through this node's client address.
        let mut own = cfg.client_listen;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let resp_cfg = corekv_resp::RespConfig {
            node_id: cfg.node_id,
            endpoints: vec![own.to_string()],
            consistency: corekv_engine::Consistency::Linearizable,
            connections_max: cfg.resp_connections_max,
            limits: corekv_resp::codec::Limits {
                bulk_bytes_max: cfg
                    .engine
                    .value_bytes_max
                    .max(corekv_engine::config::KEY_BYTES_MAX)
                    + 1024,
                query_bytes_max: cfg.engine.entry_bytes_max.max(cfg.engine.value_bytes_max) * 2
                    + (1 << 20),
                ..Default::default()
            },
            view: corekv_resp::view::ViewLimits {
                value_bytes_max: cfg.engine.value_bytes_max,
                read_bytes_max: corekv_resp::view::READ_BYTES_MAX,
            },
            gate: gate.clone(),
            tls: tls.as_ref().map(|t| t.clients.clone()),
            dial_tls: tls.as_ref().map(|t| t.dial.clone()),
        };
        corekv_resp::start(listener, resp_cfg, resp_stats).map_err(|e| {
            StartError::Runtime(format!("starting the Redis-protocol listener: {e}"))
        })?;
        tracing::info!(resp = %addr, "serving the Redis protocol");
    }
    tracing::info!(
        node = cfg.node_id,
        shards = cfg.shards,
        regions,
        clients = %cfg.client_listen,
        peers = %cfg.peer_listen,
        fresh = opened.fresh,
        "corekv-server running"
    );
    let mut failed = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(StartError::Runtime(format!("shard {i}: {e}"))),
            Err(e) => failed = Some(StartError::Runtime(format!("shard {i} executor: {e:?}"))),
        }
    }
    let stats = node.log_stats.snapshot();
    drop(node);
    writer.join();
    match Arc::try_unwrap(opened.db) {
        Ok(db) => drop(db),
        Err(_) => tracing::warn!("database still referenced at exit; the OS closes it"),
    }
    tracing::info!(
        fsyncs = stats.0,
        batches = stats.1,
        entries = stats.2,
        "corekv-server stopped"
    );
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// In a new cluster, replicas other than a region's preferred leader let
/// the longest election timeout and this many more ticks pass before their
/// first election timeout starts counting (unless they hear of a leader
/// first).
const FIRST_CAMPAIGN_HOLD_TICKS: u64 = 20;

async fn shard_main(
    id: usize,
    node: Arc<NodeShared>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    placement: Arc<HashMap<u64, usize>>,
    fresh: bool,
) -> Result<(), StartError> {
    let cfg = &node.cfg;
    let seed = rand_seed(cfg.node_id, id);
    let owner = corekv_engine::Owner {
        node_id: cfg.node_id,
        index: id,
        directory: node.directory.clone(),
        liveness: node.liveness.clone(),
    };
    let replicas = Replicas::open(
        Arc::new(cfg.engine.clone()),
        node.db.clone(),
        owner,
        seed,
        &crate::raft_log::logger(),
        |r| placement.get(&r.id) == Some(&id),
    )
    .map_err(|e| StartError::Runtime(format!("opening regions: {e}")))?;
    let mut replicas = replicas;
    if fresh {
        // A new cluster: each region's first leader should be its preferred
        // one (leaders spread over the nodes), not whichever replica's timer
        // ran out first, which the leader balancing would then move.
        let me = cfg.node_id;
        let hold = cfg.engine.election_tick_max as u64 + FIRST_CAMPAIGN_HOLD_TICKS;
        replicas.hold_first_campaign(hold, |r| crate::bootstrap::preferred_leader(r) == me);
    }
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (bell_tx, bell_rx) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| StartError::Runtime(format!("log writer doorbell: {e}")))?;
    let done_tx = crate::log_writer::Done::new(done_tx, bell_tx)
        .map_err(|e| StartError::Runtime(format!("log writer doorbell: {e}")))?;
    // The shard's end, read through this executor's ring (glommio reads it
    // with MSG_DONTWAIT first, then waits for readiness).
    let bell_rx = unsafe {
        <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(bell_rx),
        )
    };
    let shard = Shard::new(id, node.clone(), replicas, done_tx);

    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| StartError::Runtime("joining the shard mesh".into()))?;
    shard.set_mesh(Rc::new(senders));
    for (_, rx) in receivers.streams() {
        let s = Rc::downgrade(&shard);
        glommio::spawn_local(async move {
            while let Some(m) = rx.recv().await {
                match s.upgrade() {
                    Some(s) => s.on_shard_msg(m),
                    None => return,
                }
            }
        })
        .detach();
    }

    let peers = node.peer_addrs.clone();
    let raft_handler = Rc::new(ShardPeers(Rc::downgrade(&shard)));
    let transport = Transport::new(
        TransportConfig {
            node_id: cfg.node_id,
            shard_count: cfg.shards as u32,
            client_addr: cfg.client_listen.to_string(),
            queued_frames_max: 1024,
            frame_bytes_max: PEER_FRAME_BYTES_MAX,
            backoff_base: std::time::Duration::from_millis(20),
            backoff_max: std::time::Duration::from_secs(1),
            tls: node.dial_tls(),
        },
        peers,
        raft_handler.clone(),
        shard.faults.clone(),
    );
    shard.set_transport(transport);

    let peer_listener = listener("--peer-listen", cfg.peer_listen, true)?;
    glommio::spawn_local(serve_peers(
        peer_listener,
        PEER_FRAME_BYTES_MAX,
        raft_handler,
        shard.faults.clone(),
        node.tls.as_ref().map(|t| t.peers.clone()),
    ))
    .detach();
    let mut client_listeners = vec![listener("--client-listen", cfg.client_listen, true)?];
    if let Some(addr) = cfg.shard_ports.addr(cfg.client_listen, id) {
        let own = listener("--shard-ports", addr, false)?;
        let port = own
            .local_addr()
            .map_err(|e| listen_error("--shard-ports", addr, e))?
            .port();
        node.shard_ports.set(id, port);
        client_listeners.push(own);
    }
    glommio::spawn_local(serve(
        client_listeners,
        ServerInfo {
            node_id: cfg.node_id,
            shard_count: cfg.shards as u32,
            shard_ports: node.shard_ports.clone(),
            gate: node.auth.clone(),
            tls: node.tls.as_ref().map(|t| t.clients.clone()),
        },
        ServerLimits {
            frame_bytes_max: cfg.frame_bytes_max,
            connections_max: cfg.connections_max,
            queued_frames_max: 1024,
            inflight_requests_max: 8192,
        },
        Rc::new(ShardClients(Rc::downgrade(&shard))),
    ))
    .detach();
    let tick = std::time::Duration::from_millis(cfg.engine.tick_interval_ms);
    glommio::spawn_local(Shard::run_ticker(Rc::downgrade(&shard), tick)).detach();
    glommio::spawn_local(Shard::run_persist_listener(
        Rc::downgrade(&shard),
        done_rx,
        bell_rx,
    ))
    .detach();
    shard.clone().run().await;
    shard.close();
    Ok(())
}

fn rand_seed(node: u64, shard: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (node << 32) ^ (shard as u64).rotate_left(17) ^ u64::from(std::process::id())
}
