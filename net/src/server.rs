//! The client listener of one shard (glommio, io_uring).
//!
//! A shard accepts on the node's client address (shared by every shard of
//! the node; the kernel spreads connections over them) and, when the node
//! has them, on its own port, so a shard-aware client reaches the shard
//! serving a region without the hop between shards.
//!
//! Each accepted connection gets a reader task and a writer task. The reader
//! expects a `Hello` first, answers it, then decodes request batches and hands
//! them to the shard's [`RequestHandler`]. Responses are queued on a bounded
//! per-connection queue drained by the writer; a client that does not read
//! its responses fills the queue and is disconnected. A malformed or oversized
//! frame gets an error frame and the connection is closed; the listener keeps
//! serving everyone else. A connection with more than
//! `inflight_requests_max` unanswered requests is not read from until answers
//! go out, so one client cannot queue unbounded work in the shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};

use crate::auth::{Gate, LoginAttempt, LoginStep, Principal};
use crate::frame::FrameBuffer;
use crate::message::{
    decode_frame_shared, encode_error_frame, encode_hello, encode_responses, Frame, Request,
    Response, WireError,
};
use crate::tls;
use crate::wake::Wake;
use crate::wire::{ErrorCode, PROTOCOL_VERSION};

/// Limits of one shard's client listener.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest request frame, in bytes.
    pub frame_bytes_max: usize,
    /// Open connections per shard; more are refused with an error frame.
    pub connections_max: usize,
    /// Response frames queued per connection before it is closed.
    pub queued_frames_max: usize,
    /// Requests of one connection being served at once; past it the
    /// connection is not read until answers go out (backpressure).
    pub inflight_requests_max: usize,
}

/// What the listener tells the server about itself in `Hello`.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Node id.
    pub node_id: u64,
    /// Shards of the node.
    pub shard_count: u32,
    /// Per-shard client ports.
    pub shard_ports: Arc<ShardPorts>,
    /// Users, the node key and protected mode: what logins and requests
    /// are checked against.
    pub gate: Arc<crate::auth::Gate>,
    /// TLS for every connection (None: plain TCP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The node's per-shard client ports, index = shard: each shard fills in
/// its own once it listens (0 until then; empty when the node has none).
#[derive(Debug, Default)]
pub struct ShardPorts(Vec<AtomicU16>);

impl ShardPorts {
    /// `shards` ports, none known yet.
    pub fn new(shards: usize) -> ShardPorts {
        ShardPorts((0..shards).map(|_| AtomicU16::new(0)).collect())
    }

    /// Records that `shard` listens on `port`.
    pub fn set(&self, shard: usize, port: u16) {
        if let Some(p) = self.0.get(shard) {
            p.store(port, Ordering::Release);
        }
    }

    /// The ports as `Hello` gives them.
    pub fn get(&self) -> Vec<u16> {
        self.0.iter().map(|p| p.load(Ordering::Acquire)).collect()
    }
}

/// Ties a watch, on the shard serving it, to the connection it streams to
/// (maybe on another shard): how many of its frames are queued and not yet
/// written, and whether the connection is gone.
#[derive(Debug, Default)]
pub struct WatchLink {
    /// Frames queued on the connection and not yet written to the socket.
    pub outstanding: AtomicUsize,
    /// The connection closed: the watch can be dropped.
    pub closed: AtomicBool,
}

impl WatchLink {
    /// Frames of this watch still queued.
    pub fn queued(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection gone.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Bytes written to a socket in one go at most when frames queued up behind
/// each other (they go out in one write instead of one each).
pub const COALESCE_BYTES_MAX: usize = 1 << 20;

/// What a writer keeps of its joining buffer between writes: a connection
/// that once joined 1 MiB does not hold 1 MiB for the rest of its life.
pub(crate) const COALESCE_BUFFER_KEPT: usize = 64 << 10;

/// The item held back from the last turn, else the next of `rx` (waits);
/// None once `rx` is closed and empty.
pub(crate) async fn held_or_next<T>(
    held: &mut Option<T>,
    rx: &local_channel::LocalReceiver<T>,
) -> Option<T> {
    match held.take() {
        Some(item) => Some(item),
        None => rx.recv().await,
    }
}

/// The next item of `rx` if one is queued now (never waits).
pub(crate) async fn queued_now<T>(rx: &local_channel::LocalReceiver<T>) -> Option<T> {
    futures_lite::future::poll_once(rx.recv()).await.flatten()
}

/// Keys and values in one response frame at most: the answers of a round
/// (say, 100 gets of 1 MiB values pipelined on one connection) go in
/// several frames rather than one larger than a client takes (64 MiB by
/// default). A single larger answer still goes alone.
pub const RESPONSE_FRAME_PAYLOAD_MAX: usize = 8 << 20;

/// Bytes of keys and values an answer carries (what its frame grows with).
fn payload_bytes(r: &Response) -> usize {
    use corekv_wire::message::Outcome;
    64 + match &r.result {
        Ok(Outcome::Value(Some(v))) => v.value.len(),
        Ok(Outcome::Scanned { items, .. }) | Ok(Outcome::Events { events: items, .. }) => {
            items.iter().map(|c| c.key.len() + c.value.len() + 32).sum()
        }
        Ok(Outcome::BackupChunk(c)) => c.data.len(),
        Ok(Outcome::Status(s)) => s.len(),
        Ok(Outcome::Routes { regions, nodes }) => 128 * (regions.len() + nodes.len()),
        _ => 0,
    }
}

/// A frame waiting for the connection's writer.
struct OutFrame {
    bytes: Vec<u8>,
    /// The watch whose frame this is: told when it is written.
    link: Option<Arc<WatchLink>>,
}

/// One client connection, as the shard sees it.
pub struct ClientConn {
    /// Shard-local connection id.
    pub id: u64,
    out: RefCell<Option<LocalSender<OutFrame>>>,
    /// Watches streaming to this connection, told when it closes.
    links: RefCell<Vec<Arc<WatchLink>>>,
    /// Requests handed to the shard and not answered yet.
    inflight: Cell<usize>,
    answered: Wake,
}

impl ClientConn {
    /// Queues responses in as few frames as [`RESPONSE_FRAME_PAYLOAD_MAX`]
    /// allows (one, unless their values are large). Returns false (and
    /// closes the connection) if the client is not reading.
    pub fn send(&self, responses: &[Response]) -> bool {
        self.inflight
            .set(self.inflight.get().saturating_sub(responses.len()));
        self.answered.notify();
        let mut from = 0;
        let mut bytes = 0;
        for (i, r) in responses.iter().enumerate() {
            let b = payload_bytes(r);
            if i > from && bytes + b > RESPONSE_FRAME_PAYLOAD_MAX {
                if !self.push(encode_responses(&responses[from..i])) {
                    return false;
                }
                (from, bytes) = (i, 0);
            }
            bytes += b;
        }
        self.push(encode_responses(&responses[from..]))
    }

    /// Queues one response of a watch stream. The watch counted the frame
    /// in its link when it made it; the count goes down once the frame is
    /// written. Returns false (and closes the connection) if the client is
    /// not reading.
    pub fn send_watch(&self, response: &Response, link: &Arc<WatchLink>) -> bool {
        if self.is_closed() {
            link.close();
            return false;
        }
        {
            let mut links = self.links.borrow_mut();
            links.retain(|l| !l.is_closed());
            if !links.iter().any(|l| Arc::ptr_eq(l, link)) {
                links.push(link.clone());
            }
        }
        self.push_frame(OutFrame {
            bytes: encode_responses(std::slice::from_ref(response)),
            link: Some(link.clone()),
        })
    }

    fn push(&self, frame: Vec<u8>) -> bool {
        self.push_frame(OutFrame {
            bytes: frame,
            link: None,
        })
    }

    fn push_frame(&self, frame: OutFrame) -> bool {
        let ok = match self.out.borrow().as_ref() {
            Some(q) => q.try_send(frame).is_ok(),
            None => return false,
        };
        if !ok {
            self.close();
        }
        ok
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.out.borrow().is_none()
    }

    /// Stops the connection: queued frames are still written, then it closes.
    pub fn close(&self) {
        self.out.borrow_mut().take();
        for l in self.links.borrow_mut().drain(..) {
            l.close();
        }
        self.answered.notify();
    }
}

/// The shard side of the listener.
pub trait RequestHandler {
    /// A batch of requests arrived on `conn`.
    fn on_requests(&self, conn: &Rc<ClientConn>, requests: Vec<Request>);
    /// `conn` is gone; answers for it can be dropped.
    fn on_close(&self, conn_id: u64);
}

/// What the accept loops of one shard share.
struct Accepting {
    info: ServerInfo,
    limits: ServerLimits,
    handler: Rc<dyn RequestHandler>,
    /// Open connections, over every listener.
    open: Cell<usize>,
    /// Next connection id (unique in the shard, over every listener).
    next_id: Cell<u64>,
}

/// Accepts connections on every listener of the shard (the node's client
/// address and the shard's own port), forever.
pub async fn serve(
    listeners: Vec<TcpListener>,
    info: ServerInfo,
    limits: ServerLimits,
    handler: Rc<dyn RequestHandler>,
) {
    let ctx = Rc::new(Accepting {
        info,
        limits,
        handler,
        open: Cell::new(0),
        next_id: Cell::new(1),
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| glommio::spawn_local(accept(l, ctx.clone())))
        .collect();
    for l in loops {
        l.await;
    }
}

async fn accept(listener: TcpListener, ctx: Rc<Accepting>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors and the like: back off briefly.
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if ctx.open.get() >= ctx.limits.connections_max {
            glommio::spawn_local(refuse(stream, ctx.info.tls.is_some())).detach();
            continue;
        }
        let id = ctx.next_id.get();
        ctx.next_id.set(id + 1);
        ctx.open.set(ctx.open.get() + 1);
        let ctx = ctx.clone();
        // The handshake and the hello share one wait from the accept.
        let hello_by = std::time::Instant::now() + HELLO_WAIT;
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            // The handshake holds a connection slot and is bounded in time;
            // garbage or plain TCP closes this connection only.
            let stream = match &ctx.info.tls {
                None => Some(tls::Stream::Plain(stream)),
                Some(cfg) => {
                    let acceptor = tls::TlsAcceptor::from(cfg.clone());
                    match tls::by_deadline(hello_by, tls::accept(&acceptor, stream)).await {
                        Some(Ok(s)) => Some(s),
                        _ => {
                            ctx.info
                                .gate
                                .stats
                                .tls_failures
                                .fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    }
                }
            };
            if let Some(stream) = stream {
                connection(stream, peer, id, hello_by, &ctx).await;
            }
            ctx.handler.on_close(id);
            ctx.open.set(ctx.open.get() - 1);
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, tls: bool) {
    // Over TLS the refusal could only be read after a handshake, which is
    // what a full node must not spend: the connection is just closed.
    if !tls {
        let e = WireError::new(ErrorCode::Busy, "too many connections");
        let _ = stream.write_all(&encode_error_frame(&e)).await;
    }
    let _ = stream.close().await;
}

async fn connection(
    stream: tls::Stream<TcpStream>,
    peer: Option<std::net::SocketAddr>,
    id: u64,
    hello_by: std::time::Instant,
    ctx: &Accepting,
) {
    let (info, limits, handler) = (&ctx.info, &ctx.limits, &ctx.handler);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded::<OutFrame>(limits.queued_frames_max);
    let conn = Rc::new(ClientConn {
        id,
        out: RefCell::new(Some(tx)),
        links: RefCell::new(Vec::new()),
        inflight: Cell::new(0),
        answered: Wake::default(),
    });
    let writer_task = glommio::spawn_local(async move {
        // Frames that queued up while the shard ran go out in one write.
        let mut joined = Vec::new();
        let mut links = Vec::new();
        let mut held: Option<OutFrame> = None;
        while let Some(first) = held_or_next(&mut held, &rx).await {
            links.extend(first.link);
            let mut more = Vec::new();
            let mut bytes = first.bytes.len();
            while let Some(f) = queued_now(&rx).await {
                if bytes + f.bytes.len() > COALESCE_BYTES_MAX {
                    held = Some(f);
                    break;
                }
                bytes += f.bytes.len();
                links.extend(f.link);
                more.push(f.bytes);
            }
            let written = if more.is_empty() {
                writer.write_all(&first.bytes).await.is_ok()
            } else {
                joined.clear();
                joined.extend_from_slice(&first.bytes);
                for b in &more {
                    joined.extend_from_slice(b);
                }
                let ok = writer.write_all(&joined).await.is_ok();
                joined.clear();
                joined.shrink_to(COALESCE_BUFFER_KEPT);
                ok
            };
            // TLS may hold the tail of a write until a flush (a no-op on
            // plain TCP).
            let written = written && writer.flush().await.is_ok();
            for l in links.drain(..) {
                l.outstanding.fetch_sub(1, Ordering::AcqRel);
                if !written {
                    l.close();
                }
            }
            if !written {
                break;
            }
        }
        let _ = writer.close().await;
    });

    let mut frames = FrameBuffer::new(limits.frame_bytes_max);
    let mut greeted = false;
    let mut principal = Principal::Anonymous;
    // Read size adapts: small for idle or chatty clients, up to 256 KiB for
    // clients that send large batches.
    let mut want = 4096usize;
    let fail = |conn: &ClientConn, code: ErrorCode, msg: String| {
        conn.push(encode_error_frame(&WireError::new(code, msg)));
        conn.close();
    };
    'read: loop {
        // A client with too much unanswered work is not read from until
        // answers go out; its socket buffer fills and TCP slows it down.
        while conn.inflight.get() >= limits.inflight_requests_max && !conn.is_closed() {
            conn.answered.wait().await;
        }
        if conn.is_closed() {
            break;
        }
        let spare = frames.spare(want);
        let room = spare.len();
        let read = reader.read(spare);
        let got = if greeted {
            Some(read.await)
        } else {
            // A connection that does not say hello in time holds no slot.
            tls::by_deadline(hello_by, read).await
        };
        let n = match got {
            Some(Ok(0)) | Some(Err(_)) | None => {
                frames.filled(room, 0);
                conn.close();
                break;
            }
            Some(Ok(n)) => n,
        };
        frames.filled(room, n);
        want = if n == room {
            (want * 2).min(256 * 1024)
        } else {
            (want / 2).max(4096)
        };
        loop {
            let body = match frames.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    fail(&conn, ErrorCode::BadFrame, e.to_string());
                    break 'read;
                }
            };
            // One copy per frame; keys and values are slices of it.
            let body = bytes::Bytes::copy_from_slice(body);
            match decode_frame_shared(&body) {
                Ok(Frame::Hello {
                    protocol_version,
                    user,
                    token,
                    ..
                }) if !greeted => {
                    if protocol_version != PROTOCOL_VERSION {
                        fail(
                            &conn,
                            ErrorCode::UnsupportedVersion,
                            format!(
                                "protocol version {protocol_version} (this server speaks {PROTOCOL_VERSION})"
                            ),
                        );
                        break 'read;
                    }
                    if !user.is_empty() || !token.is_empty() {
                        match login(&info.gate, &user, &token).await {
                            Ok(p) => principal = p,
                            Err(e) => {
                                conn.push(encode_error_frame(&e));
                                conn.close();
                                break 'read;
                            }
                        }
                    }
                    if let Some(why) = info.gate.protected_refusal(peer, &principal) {
                        fail(&conn, ErrorCode::Unauthenticated, why);
                        break 'read;
                    }
                    greeted = true;
                    let hello =
                        encode_hello(info.node_id, info.shard_count, &info.shard_ports.get());
                    if !conn.push(hello) {
                        break 'read;
                    }
                }
                Ok(Frame::Requests(mut reqs)) if greeted => {
                    // Authentication may have gone off since the hello.
                    if let Some(why) = info.gate.protected_refusal(peer, &principal) {
                        fail(&conn, ErrorCode::Unauthenticated, why);
                        break 'read;
                    }
                    conn.inflight.set(conn.inflight.get() + reqs.len());
                    let mut refused = Vec::new();
                    reqs.retain(|r| match info.gate.authorize(&principal, r) {
                        Ok(()) => true,
                        Err(e) => {
                            refused.push(Response {
                                id: r.id,
                                result: Err(e),
                            });
                            false
                        }
                    });
                    if !refused.is_empty() && !conn.send(&refused) {
                        break 'read;
                    }
                    // A connection with no login has nothing to do while
                    // authentication is on: it goes once told, and holds no
                    // slot meanwhile.
                    if matches!(principal, Principal::Anonymous)
                        && info.gate.state() == crate::auth::AuthState::On
                        && reqs.is_empty()
                    {
                        conn.close();
                        break 'read;
                    }
                    if !reqs.is_empty() {
                        handler.on_requests(&conn, reqs)
                    }
                }
                Ok(Frame::Requests(_)) => {
                    fail(&conn, ErrorCode::BadFrame, "hello expected first".into());
                    break 'read;
                }
                Ok(Frame::Hello { .. }) => {
                    fail(&conn, ErrorCode::BadFrame, "a second hello".into());
                    break 'read;
                }
                Ok(other) => {
                    fail(
                        &conn,
                        ErrorCode::BadFrame,
                        format!("unexpected frame from a client: {other:?}"),
                    );
                    break 'read;
                }
                Err(e) => {
                    fail(&conn, ErrorCode::BadFrame, e.to_string());
                    break 'read;
                }
            }
            if conn.is_closed() {
                break 'read;
            }
        }
    }
    conn.close();
    writer_task.await;
}

/// Checks credentials, waiting (without blocking the shard) for the node to
/// reread the users when its copy does not know them.
async fn login(gate: &Gate, user: &str, token: &str) -> Result<Principal, WireError> {
    let started = std::time::Instant::now();
    let mut attempt = LoginAttempt::default();
    loop {
        match gate.login_step(user, token.as_bytes(), started, &mut attempt) {
            LoginStep::Done(r) => return r,
            LoginStep::Wait(d) => glommio::timer::sleep(d).await,
        }
    }
}

/// How long a new connection has, from the accept, to finish its TLS
/// handshake and send its hello (and log in).
pub const HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shard-local registry of open connections, for routing answers back.
#[derive(Default)]
pub struct Connections {
    conns: RefCell<std::collections::HashMap<u64, Rc<ClientConn>>>,
}

impl Connections {
    /// Remembers `conn`.
    pub fn insert(&self, conn: &Rc<ClientConn>) {
        self.conns
            .borrow_mut()
            .entry(conn.id)
            .or_insert_with(|| conn.clone());
    }

    /// Forgets a closed connection.
    pub fn remove(&self, id: u64) {
        self.conns.borrow_mut().remove(&id);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.borrow().is_empty()
    }

    /// The connection `id`, if open.
    pub fn get(&self, id: u64) -> Option<Rc<ClientConn>> {
        self.conns.borrow().get(&id).cloned()
    }
}
