//! The RESP listener: accepts connections, gives each a thread and a
//! session, and keeps the counts INFO, CLIENT LIST, metrics and status show.
//!
//! Each connection's commands go to the cluster through the native client
//! (one per connection, connected on its first command): straight to the
//! shard leading the key's region, on this node or another, with the same
//! routing, retries and exactly-once write sessions as any native client.
//! Pipelined commands are read together and their replies written together.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use corekv_net::tls::SyncStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use corekv_engine::Consistency;

use crate::codec::{Limits, RequestReader};
use crate::reply::Reply;
use crate::session::Session;
use crate::store::ClusterStore;

/// Settings of the listener.
#[derive(Clone, Debug)]
pub struct RespConfig {
    /// This node's id (INFO).
    pub node_id: u64,
    /// Where the sessions reach the cluster (this node's client address).
    pub endpoints: Vec<String>,
    /// Consistency of reads.
    pub consistency: Consistency,
    /// Open connections at most; more are refused with an error.
    pub connections_max: usize,
    /// Request limits.
    pub limits: Limits,
    /// Limits of what one command may read and build.
    pub view: crate::view::ViewLimits,
    /// The node's users and protected mode: logins (AUTH, HELLO AUTH) and
    /// each command are checked against it.
    pub gate: Arc<corekv_net::auth::Gate>,
    /// TLS on this port (None: plain TCP).
    pub tls: Option<Arc<corekv_net::tls::rustls::ServerConfig>>,
    /// TLS of the sessions' connections to the node (None: plain TCP).
    pub dial_tls: Option<corekv_net::tls::ClientTls>,
}

#[cfg(test)]
impl RespConfig {
    /// A listener without cluster, users or TLS, for the unit tests.
    pub(crate) fn for_tests() -> RespConfig {
        RespConfig {
            node_id: 1,
            endpoints: Vec::new(),
            consistency: Consistency::Linearizable,
            connections_max: 10,
            limits: Default::default(),
            view: Default::default(),
            gate: corekv_net::auth::Gate::open(),
            tls: None,
            dial_tls: None,
        }
    }
}

/// Counters of the listener.
#[derive(Debug, Default)]
pub struct RespStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused (over the limit).
    pub rejected: AtomicU64,
    /// Commands answered.
    pub commands: AtomicU64,
    /// Commands answered with an error.
    pub errors: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
}

#[derive(Clone, Debug)]
struct ClientInfo {
    addr: String,
    name: Option<String>,
    lib_name: Option<String>,
    lib_ver: Option<String>,
    since: Instant,
    last_cmd: &'static str,
    proto: u8,
}

/// What every connection of the listener shares.
pub struct Shared {
    /// Settings.
    pub cfg: RespConfig,
    /// Counters.
    pub stats: Arc<RespStats>,
    port: u16,
    started: Instant,
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
    /// When INFO last counted the keyspace, and what it found.
    keyspace: Mutex<Option<(Instant, (u64, u64))>>,
}

/// INFO counts the keys (a walk of every region) at most this often.
pub const KEYSPACE_CACHE: std::time::Duration = std::time::Duration::from_secs(5);

impl Shared {
    /// Shared state of a listener on `port`.
    pub fn new(cfg: RespConfig, port: u16) -> Arc<Shared> {
        Shared::with_stats(cfg, port, Arc::default())
    }

    /// Shared state of a listener on `port`, counting in `stats`.
    pub fn with_stats(cfg: RespConfig, port: u16, stats: Arc<RespStats>) -> Arc<Shared> {
        Arc::new(Shared {
            cfg,
            stats,
            port,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            clients: Mutex::new(BTreeMap::new()),
            keyspace: Mutex::new(None),
        })
    }

    pub(crate) fn register(&self, addr: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = ClientInfo {
            addr,
            name: None,
            lib_name: None,
            lib_ver: None,
            since: Instant::now(),
            last_cmd: "NULL",
            proto: 2,
        };
        self.with_clients(|c| {
            c.insert(id, info);
        });
        id
    }

    fn with_clients<T>(&self, f: impl FnOnce(&mut BTreeMap<u64, ClientInfo>) -> T) -> T {
        let mut g = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.with_clients(|c| c.remove(&id));
    }

    /// Records the last command of connection `id`.
    pub fn note_command(&self, id: u64, name: &'static str) {
        self.with_clients(|c| {
            if let Some(i) = c.get_mut(&id) {
                i.last_cmd = name;
            }
        });
    }

    /// Sets the name of connection `id`.
    pub fn set_client_name(&self, id: u64, name: Option<String>) {
        self.with_clients(|c| {
            if let Some(i) = c.get_mut(&id) {
                i.name = name;
            }
        });
    }

    /// The name of connection `id`.
    pub fn client_name(&self, id: u64) -> Option<String> {
        self.with_clients(|c| c.get(&id).and_then(|i| i.name.clone()))
    }

    /// Sets the library name or version of connection `id`.
    pub fn set_lib(&self, id: u64, name: Option<String>, ver: Option<String>) {
        self.with_clients(|c| {
            if let Some(i) = c.get_mut(&id) {
                if name.is_some() {
                    i.lib_name = name;
                }
                if ver.is_some() {
                    i.lib_ver = ver;
                }
            }
        });
    }

    /// Records the protocol of connection `id`.
    pub fn set_proto(&self, id: u64, proto: u8) {
        self.with_clients(|c| {
            if let Some(i) = c.get_mut(&id) {
                i.proto = proto;
            }
        });
    }

    fn line(id: u64, i: &ClientInfo) -> String {
        format!(
            "id={id} addr={} laddr=- fd=-1 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 \
             ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
             omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            i.addr,
            i.name.as_deref().unwrap_or(""),
            i.since.elapsed().as_secs(),
            i.last_cmd,
            i.proto,
            i.lib_name.as_deref().unwrap_or(""),
            i.lib_ver.as_deref().unwrap_or(""),
        )
    }

    /// `CLIENT INFO` of connection `id`.
    pub fn client_line(&self, id: u64) -> String {
        self.with_clients(|c| c.get(&id).map(|i| Self::line(id, i)).unwrap_or_default()) + "\n"
    }

    /// `CLIENT LIST`.
    pub fn client_list(&self) -> String {
        self.with_clients(|c| {
            c.iter()
                .map(|(id, i)| Self::line(*id, i) + "\n")
                .collect::<String>()
        })
    }

    /// True if INFO with `section` shows the keyspace.
    pub fn info_wants_keyspace(section: Option<&bytes::Bytes>) -> bool {
        section.is_none_or(|w| {
            let w = w.to_ascii_lowercase();
            w == b"all" || w == b"default" || w == b"everything" || w == b"keyspace"
        })
    }

    /// The keyspace counts INFO last showed, if younger than
    /// [`KEYSPACE_CACHE`].
    pub fn cached_keyspace(&self) -> Option<(u64, u64)> {
        let g = self.keyspace.lock().unwrap_or_else(|p| p.into_inner());
        g.filter(|(at, _)| at.elapsed() < KEYSPACE_CACHE)
            .map(|(_, counts)| counts)
    }

    /// Remembers keyspace counts (keys, keys with an expiry).
    pub fn set_keyspace(&self, counts: (u64, u64)) {
        *self.keyspace.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), counts));
    }

    /// The INFO text, all sections or one; `keyspace` (keys, keys with an
    /// expiry) fills its section.
    pub fn info(&self, section: Option<&bytes::Bytes>, keyspace: Option<(u64, u64)>) -> String {
        let want = |s: &str| {
            section.is_none_or(|w| {
                let w = w.to_ascii_lowercase();
                w == b"all" || w == b"default" || w == b"everything" || w == s.as_bytes()
            })
        };
        let st = &self.stats;
        let mut out = String::new();
        if want("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\ncorekv_version:{}\r\n\
                 corekv_node_id:{}\r\ncorekv_consistency:{:?}\r\nos:{}\r\narch_bits:64\r\n\
                 process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                crate::REDIS_VERSION,
                env!("CARGO_PKG_VERSION"),
                self.cfg.node_id,
                self.cfg.consistency,
                std::env::consts::OS,
                std::process::id(),
                self.port,
                self.started.elapsed().as_secs(),
            ));
        }
        if want("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                st.open.load(Ordering::Relaxed),
                self.cfg.connections_max
            ));
        }
        if want("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 rejected_connections:{}\r\ntotal_error_replies:{}\r\n\r\n",
                st.accepted.load(Ordering::Relaxed),
                st.commands.load(Ordering::Relaxed),
                st.rejected.load(Ordering::Relaxed),
                st.errors.load(Ordering::Relaxed),
            ));
        }
        if want("replication") {
            out.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
        }
        if want("keyspace") {
            out.push_str("# Keyspace\r\n");
            if let Some((keys, expires)) = keyspace.filter(|(k, _)| *k > 0) {
                out.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
            }
        }
        out
    }
}

/// A running listener.
pub struct RespServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<RespStats>,
}

/// Starts serving `listener` on a thread of its own, counting in `stats`.
pub fn start(
    listener: TcpListener,
    cfg: RespConfig,
    stats: Arc<RespStats>,
) -> std::io::Result<RespServer> {
    let addr = listener.local_addr()?;
    let shared = Shared::with_stats(cfg, addr.port(), stats.clone());
    std::thread::Builder::new()
        .name("corekv-resp".into())
        .spawn(move || accept_loop(listener, shared))?;
    Ok(RespServer { addr, stats })
}

/// Stack of a connection thread: enough for the client and a command.
const CONN_STACK_BYTES: usize = 256 << 10;

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            // Out of file descriptors and the like: back off briefly.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let st = &shared.stats;
        if st.open.load(Ordering::Relaxed) as usize >= shared.cfg.connections_max {
            st.rejected.fetch_add(1, Ordering::Relaxed);
            // Over TLS the error could only be read after a handshake,
            // which a full node does not spend: the connection is closed.
            if shared.cfg.tls.is_none() {
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
            }
            continue;
        }
        st.accepted.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard::new(shared.clone());
        let spawned = std::thread::Builder::new()
            .name("corekv-resp-conn".into())
            .stack_size(CONN_STACK_BYTES)
            .spawn(move || {
                // Counted open until this thread ends, even by a panic.
                let open = open;
                connection(stream, &open.0);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread for a Redis connection: {e}");
        }
    }
}

/// Counts a connection open for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: Arc<Shared>) -> OpenGuard {
        shared.stats.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(shared)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection may stay silent without a login while
/// authentication is on.
pub const LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Replies buffered before they are written, at most (then they go out
/// before the next commands run).
const OUT_BYTES_MAX: usize = 1 << 20;

/// Pipelined commands run together at most.
const PIPELINE_RUN_MAX: usize = 16;

fn connection(tcp: TcpStream, shared: &Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let peer_addr = tcp.peer_addr().ok();
    // The handshake is bounded in time; garbage or plain TCP on a TLS port
    // closes this connection only.
    let mut stream = match &shared.cfg.tls {
        None => SyncStream::Plain(tcp),
        Some(cfg) => match SyncStream::accept(tcp, cfg) {
            Ok(s) => s,
            Err(_) => {
                shared
                    .cfg
                    .gate
                    .stats
                    .tls_failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let anonymous = corekv_net::auth::Principal::Anonymous;
    if let Some(why) = shared.cfg.gate.protected_refusal(peer_addr, &anonymous) {
        let _ =
            stream.write_all(format!("-DENIED {}\r\n", why.replace(['\r', '\n'], " ")).as_bytes());
        return;
    }
    let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    // With authentication on, a connection that stays silent without a
    // login is closed (see `serve`); logged-in ones just wake up.
    if shared.cfg.gate.state() == corekv_net::auth::AuthState::On {
        let _ = stream.tcp().set_read_timeout(Some(LOGIN_WAIT));
    }
    // The sessions' own connections to the node log in as the node; each
    // command is checked here against the Redis client's login.
    let store = ClusterStore::new(
        shared.cfg.endpoints.clone(),
        shared.cfg.consistency,
        shared.cfg.gate.node_credentials(),
        shared.cfg.dial_tls.clone(),
    );
    let mut session = Session::new(shared.clone(), Box::new(store), peer);
    if serve(&mut stream, &mut session, &shared.cfg.limits, &shared.stats) == End::ProtocolError {
        linger(stream.tcp());
    }
}

/// How long a connection closed for a protocol error keeps reading what
/// its client still sends, at most, and how much of it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// Closes a connection whose client may still be sending (a value over
/// the limit, say) so that it reads the error reply: closing a socket with
/// unread input resets the connection, and the reset can reach the client
/// before the reply does. The write side is shut first (the client sees
/// the reply, then the end), then input is drained until the client
/// closes or the time or byte budget runs out.
fn linger(tcp: &TcpStream) {
    if tcp.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut sink = vec![0u8; 64 << 10];
    let mut drained = 0;
    let mut reader = tcp;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Why `serve` returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The client left or QUIT, or the connection broke.
    Closed,
    /// The client broke the protocol; the error reply was written.
    ProtocolError,
}

/// Reads commands and writes replies until the client leaves, QUITs or
/// breaks the protocol.
pub(crate) fn serve<S: Read + Write>(
    stream: &mut S,
    session: &mut Session,
    limits: &Limits,
    stats: &RespStats,
) -> End {
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(16 << 10);
    let mut reader = RequestReader::new(*limits);
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return End::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && session.may_idle() =>
            {
                continue
            }
            Err(_) => return End::Closed,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut close = None;
        // The complete commands that arrived, a few at a time (their
        // replies are bounded before they are written).
        loop {
            let mut cmds = Vec::new();
            let mut bad = None;
            while cmds.len() < PIPELINE_RUN_MAX {
                match reader.next(&mut buf) {
                    Ok(Some(args)) => cmds.push(args),
                    Ok(None) => break,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            let more = cmds.len() == PIPELINE_RUN_MAX;
            let mut done = 0;
            while done < cmds.len() && !session.closing {
                done += session.handle_pipeline(&cmds[done..], &mut out, OUT_BYTES_MAX);
                // A pipeline of large replies is written as it goes,
                // never held whole.
                if out.len() >= OUT_BYTES_MAX {
                    if stream.write_all(&out).is_err() {
                        return End::Closed;
                    }
                    out.clear();
                }
            }
            if session.closing {
                close = Some(End::Closed);
                break;
            }
            if let Some(e) = bad {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                Reply::err(format!("Protocol error: {}", e.0)).encode(session.proto, &mut out);
                close = Some(End::ProtocolError);
                break;
            }
            if !more {
                break;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return End::Closed;
            }
            out.clear();
            out.shrink_to(64 << 10);
        }
        if let Some(end) = close {
            return end;
        }
        if buf.capacity() > (1 << 20) && buf.is_empty() {
            buf = BytesMut::with_capacity(16 << 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    fn test_shared() -> Arc<Shared> {
        Shared::new(RespConfig::for_tests(), 0)
    }

    /// A client still sending a value over the limit reads the error reply,
    /// not a reset: the connection lingers after the protocol error.
    #[test]
    fn a_value_over_the_limit_gets_its_error_not_a_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = test_shared();
        let server = std::thread::spawn(move || {
            for _ in 0..20 {
                let (mut tcp, _) = listener.accept().unwrap();
                let mut session =
                    Session::new(shared.clone(), Box::new(MemStore::new(1)), "test".into());
                let limits = Limits::default();
                if serve(&mut tcp, &mut session, &limits, &shared.stats) == End::ProtocolError {
                    linger(&tcp);
                }
            }
        });
        let body = vec![b'x'; 2 << 20];
        for round in 0..20 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // The whole command is written before the reply is read, as
            // simple clients do: the server replies after the length, long
            // before the body is in, and must not reset the connection
            // while the body is still coming.
            let mut cmd = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", body.len()).into_bytes();
            cmd.extend_from_slice(&body);
            cmd.extend_from_slice(b"\r\n");
            let w = c.write_all(&cmd);
            assert!(w.is_ok(), "round {round}: writing the command: {w:?}");
            let mut reply = Vec::new();
            let r = c.read_to_end(&mut reply);
            assert!(r.is_ok(), "round {round}: {r:?} after {reply:?}");
            assert_eq!(
                String::from_utf8_lossy(&reply),
                "-ERR Protocol error: invalid bulk length\r\n",
                "round {round}"
            );
        }
        server.join().unwrap();
    }
}
