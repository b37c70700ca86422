//! The raft transport of one shard (glommio, io_uring TCP).
//!
//! Outgoing: one link per destination node, created on first use. A link has a
//! bounded queue of frames (each frame = every message of one round for that
//! node) and a task that connects with capped exponential backoff, sends a
//! hello, then writes frames in order. When the queue is full the frame is
//! dropped and its messages are reported undelivered, so raft treats the peer
//! as unreachable instead of memory growing. A frame lost with a broken
//! connection is not resent: raft retransmits.
//!
//! Incoming: [`serve_peers`] accepts connections, checks the hello and hands
//! every decoded batch to the shard's [`RaftHandler`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_engine::RaftEnvelope;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use raft::eraftpb::MessageType;

use crate::faults::FaultRules;
use crate::frame::FrameBuffer;
use crate::peer_codec::{decode_peer_frame, encode_peer_hello, encode_raft_batch, PeerFrame};

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub node_id: u64,
    /// This node's shard count (sent in the hello).
    pub shard_count: u32,
    /// This node's client address (sent in the hello).
    pub client_addr: String,
    /// Frames queued per destination before frames are dropped.
    pub queued_frames_max: usize,
    /// Largest transport frame accepted, in bytes.
    pub frame_bytes_max: usize,
    /// First reconnect delay; doubles per failure.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// TLS to other nodes (None: plain TCP): each is verified against the
    /// CA and the name `node-<id>.corekv`, and sees this node's certificate.
    pub tls: Option<crate::tls::ClientTls>,
}

/// The shard side of the transport.
pub trait RaftHandler {
    /// Messages arrived from another node.
    fn on_messages(&self, messages: Vec<RaftEnvelope>);
    /// A peer introduced itself.
    fn on_peer(&self, node_id: u64, shard_count: u32, client_addr: String);
    /// The fate of messages this shard sent that raft must hear about:
    /// snapshots (delivered or not) and messages that could not be sent.
    fn on_report(&self, messages: Vec<RaftEnvelope>, delivered: bool);
}

struct Link {
    queue: LocalSender<Outgoing>,
}

struct Outgoing {
    frame: Vec<u8>,
    /// Not before this (an injected delay, fault rules): each frame is held
    /// from when it was queued, so a delay adds latency without limiting
    /// how many frames a link carries.
    send_at: Option<Instant>,
    /// Messages whose fate raft must hear about (snapshots).
    tracked: Vec<RaftEnvelope>,
}

/// Node id → raft transport address, shared by every shard of a node and
/// extended when a node joins.
pub type PeerAddrs = std::sync::Arc<std::sync::RwLock<HashMap<u64, SocketAddr>>>;

/// Outgoing links of one shard.
pub struct Transport {
    cfg: TransportConfig,
    peers: PeerAddrs,
    links: RefCell<HashMap<u64, Link>>,
    handler: Rc<dyn RaftHandler>,
    faults: Rc<RefCell<FaultRules>>,
    frames_sent: std::cell::Cell<u64>,
    bytes_sent: std::cell::Cell<u64>,
    frames_dropped: std::cell::Cell<u64>,
}

fn must_track(e: &RaftEnvelope) -> bool {
    e.message.get_msg_type() == MessageType::MsgSnapshot
}

impl Transport {
    /// A transport that sends to `peers` (node id → peer address).
    pub fn new(
        cfg: TransportConfig,
        peers: PeerAddrs,
        handler: Rc<dyn RaftHandler>,
        faults: Rc<RefCell<FaultRules>>,
    ) -> Rc<Transport> {
        Rc::new(Transport {
            cfg,
            peers,
            links: RefCell::new(HashMap::new()),
            handler,
            faults,
            frames_sent: Default::default(),
            bytes_sent: Default::default(),
            frames_dropped: Default::default(),
        })
    }

    /// (frames sent, bytes sent, frames dropped, frames queued now).
    pub fn figures(&self) -> (u64, u64, u64, usize) {
        let queued = self.links.borrow().values().map(|l| l.queue.len()).sum();
        (
            self.frames_sent.get(),
            self.bytes_sent.get(),
            self.frames_dropped.get(),
            queued,
        )
    }

    fn dropped(&self) {
        self.frames_dropped.set(self.frames_dropped.get() + 1);
    }

    fn addr_of(&self, to_node: u64) -> Option<SocketAddr> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to_node)
            .copied()
    }

    /// Sends one round's messages for `to_node` as one frame.
    pub fn send(self: &Rc<Self>, to_node: u64, messages: Vec<RaftEnvelope>) {
        if messages.is_empty() {
            return;
        }
        let addr = self.addr_of(to_node);
        let Some(addr) = addr else {
            self.dropped();
            self.handler.on_report(messages, false);
            return;
        };
        let delay_ms = {
            let f = self.faults.borrow();
            if f.blocks_to(to_node) || (f.loss > 0.0 && rand::random::<f64>() < f.loss) {
                drop(f);
                self.dropped();
                self.handler.on_report(messages, false);
                return;
            }
            f.delay_ms
        };
        let tracked: Vec<RaftEnvelope> =
            messages.iter().filter(|e| must_track(e)).cloned().collect();
        let out = Outgoing {
            frame: encode_raft_batch(&messages),
            send_at: (delay_ms > 0).then(|| Instant::now() + Duration::from_millis(delay_ms)),
            tracked,
        };
        if let Err(e) = self.enqueue(to_node, addr, out) {
            let out = match e {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(o))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(o)) => o,
                _ => return,
            };
            // Full: drop, and let raft know the peer is unreachable.
            self.dropped();
            self.handler.on_report(messages, false);
            drop(out);
        }
    }

    /// Sends `to_node` an empty batch, opening the link if none is open: the
    /// node then receives this node's hello (and with it the client
    /// address) before any raft message is due, as a node that joined and
    /// holds no replica yet needs to reach the cluster.
    pub fn greet(self: &Rc<Self>, to_node: u64) {
        let addr = self.addr_of(to_node);
        let Some(addr) = addr else { return };
        let out = Outgoing {
            frame: encode_raft_batch(&[]),
            send_at: None,
            tracked: Vec::new(),
        };
        let _ = self.enqueue(to_node, addr, out);
    }

    /// Queues `out` on the link to `to_node`, opening it if needed.
    fn enqueue(
        self: &Rc<Self>,
        to_node: u64,
        addr: SocketAddr,
        out: Outgoing,
    ) -> Result<(), glommio::GlommioError<Outgoing>> {
        let mut links = self.links.borrow_mut();
        let link = links.entry(to_node).or_insert_with(|| {
            let (tx, rx) = local_channel::new_bounded(self.cfg.queued_frames_max);
            let me = self.clone();
            glommio::spawn_local(async move { me.run_link(to_node, addr, rx).await }).detach();
            Link { queue: tx }
        });
        link.queue.try_send(out)
    }

    async fn run_link(
        self: Rc<Self>,
        to_node: u64,
        addr: SocketAddr,
        rx: local_channel::LocalReceiver<Outgoing>,
    ) {
        let hello = encode_peer_hello(
            self.cfg.node_id,
            self.cfg.shard_count,
            &self.cfg.client_addr,
        );
        let mut stream: Option<crate::tls::Stream<TcpStream>> = None;
        let mut delay = self.cfg.backoff_base;
        // When the current connection was made: one that breaks sooner
        // than LINK_STABLE (the other side refused it: over TLS 1.3 a
        // refused certificate shows only as a broken connection) counts as
        // a failed dial, so a refusing peer is redialed with backoff, not
        // once per frame.
        let mut connected_at = Instant::now();
        // A frame taken while gathering a batch that must wait (an injected
        // delay): it starts the next turn.
        let mut held: Option<Outgoing> = None;
        let mut joined = Vec::new();
        while let Some(out) = crate::server::held_or_next(&mut held, &rx).await {
            if let Some(wait) = out
                .send_at
                .and_then(|t| t.checked_duration_since(Instant::now()))
            {
                glommio::timer::sleep(wait).await;
            }
            if stream.is_none() {
                if let Some(mut s) = self.dial(to_node, addr).await {
                    if s.write_all(&hello).await.is_ok() && s.flush().await.is_ok() {
                        stream = Some(s);
                        connected_at = Instant::now();
                    }
                }
            }
            let Some(s) = stream.as_mut() else {
                // Not connected: this frame is lost; wait before the next try
                // and report what raft must know.
                self.dropped();
                if !out.tracked.is_empty() {
                    self.handler.on_report(out.tracked, false);
                }
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(self.cfg.backoff_max);
                continue;
            };
            // Frames queued behind this one go out in the same write, in
            // order (up to COALESCE_BYTES_MAX).
            let mut batch = vec![out];
            let mut bytes = batch[0].frame.len();
            while bytes < crate::server::COALESCE_BYTES_MAX {
                match crate::server::queued_now(&rx).await {
                    Some(next)
                        if next.send_at.is_none()
                            && bytes + next.frame.len() <= crate::server::COALESCE_BYTES_MAX =>
                    {
                        bytes += next.frame.len();
                        batch.push(next);
                    }
                    Some(next) => {
                        held = Some(next);
                        break;
                    }
                    None => break,
                }
            }
            let result = if batch.len() == 1 {
                s.write_all(&batch[0].frame).await
            } else {
                joined.clear();
                for o in &batch {
                    joined.extend_from_slice(&o.frame);
                }
                let r = s.write_all(&joined).await;
                joined.clear();
                joined.shrink_to(crate::server::COALESCE_BUFFER_KEPT);
                r
            };
            // TLS holds written bytes until a flush (a no-op on plain TCP).
            let result = match result {
                Ok(()) => s.flush().await,
                e => e,
            };
            let written = result.is_ok();
            let mut pause = None;
            if !written {
                stream = None;
                if connected_at.elapsed() < LINK_STABLE {
                    pause = Some(delay);
                    delay = (delay * 2).min(self.cfg.backoff_max);
                } else {
                    delay = self.cfg.backoff_base;
                }
            }
            for out in batch {
                if written {
                    self.frames_sent.set(self.frames_sent.get() + 1);
                    self.bytes_sent
                        .set(self.bytes_sent.get() + out.frame.len() as u64);
                } else {
                    self.dropped();
                }
                if !out.tracked.is_empty() {
                    self.handler.on_report(out.tracked, written);
                }
            }
            if let Some(pause) = pause {
                glommio::timer::sleep(pause).await;
            }
        }
    }
}

/// How long a peer connection must last for its loss to count as a broken
/// link (redialed at once) rather than a refusal (redialed with backoff).
const LINK_STABLE: Duration = Duration::from_secs(1);

impl Transport {
    /// A connection to `to_node` at `addr`, TLS when configured (the other
    /// side must prove it is that node).
    async fn dial(&self, to_node: u64, addr: SocketAddr) -> Option<crate::tls::Stream<TcpStream>> {
        let s = TcpStream::connect_timeout(addr, Duration::from_millis(500))
            .await
            .ok()?;
        let _ = s.set_nodelay(true);
        let Some(tls) = &self.cfg.tls else {
            return Some(crate::tls::Stream::Plain(s));
        };
        let name = rustls::pki_types::ServerName::try_from(crate::tls::node_name(to_node)).ok()?;
        crate::tls::connect(tls, name, s).await.ok()
    }
}

/// Peer connections a listener holds that have not said hello yet (TCP,
/// TLS handshake, greeting); past it the oldest of them is closed.
pub const PEER_PENDING_MAX: usize = 128;
/// Peer connections a listener holds in all.
pub const PEER_CONNECTIONS_MAX: usize = 4096;
/// How long, from the accept, a peer connection has to finish its TLS
/// handshake and say hello.
pub const PEER_HELLO_WAIT: Duration = Duration::from_secs(10);

/// Accepts raft connections from other nodes until the listener fails;
/// each is read on its own task. Over TLS the peer's certificate must come
/// from the CA and name a node (`node-<id>.corekv`), and its hello must
/// name that node.
pub async fn serve_peers(
    listener: TcpListener,
    frame_bytes_max: usize,
    handler: Rc<dyn RaftHandler>,
    faults: Rc<RefCell<FaultRules>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let counts = Rc::new(PeerCounts::default());
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if counts.open.get() >= PEER_CONNECTIONS_MAX {
            drop(stream);
            continue;
        }
        // Full of connections that have not greeted: the oldest one goes.
        // A node's own dial greets within milliseconds of its accept, so
        // only a flood far faster than that could push it out; a bounded
        // set of silent connections cannot lock new links out.
        // (Connections no longer pending leave the line here, in this
        // task: a task's handle is never dropped by the task itself.)
        loop {
            let front = counts.waiting.borrow().front().map(|(id, _)| *id);
            match front {
                Some(id) if !counts.is_pending(id) => {
                    let done = counts.waiting.borrow_mut().pop_front();
                    drop(done);
                }
                _ => break,
            }
        }
        if counts.pending() >= PEER_PENDING_MAX {
            let oldest = counts.waiting.borrow_mut().pop_front();
            if let Some((_, oldest)) = oldest {
                oldest.cancel();
            }
        }
        let _ = stream.set_nodelay(true);
        keep_alive(&stream);
        let hello_by = Instant::now() + PEER_HELLO_WAIT;
        let slot = PeerSlot::new(counts.clone());
        let id = slot.id;
        let (handler, faults, tls) = (handler.clone(), faults.clone(), tls.clone());
        let task = glommio::spawn_local(async move {
            let stream = match tls {
                None => crate::tls::Stream::Plain(stream),
                Some(cfg) => {
                    let acceptor = crate::tls::TlsAcceptor::from(cfg);
                    let accepted =
                        crate::tls::by_deadline(hello_by, crate::tls::accept(&acceptor, stream));
                    match accepted.await {
                        Some(Ok(s)) => s,
                        _ => return,
                    }
                }
            };
            // A certificate that names no node (a client's) has no
            // business here, hello or not.
            if let Some(certs) = stream.peer_certificates() {
                if crate::tls::certified_nodes(certs).is_empty() {
                    return;
                }
            }
            peer_connection(stream, frame_bytes_max, handler, faults, hello_by, slot).await
        })
        .detach();
        // Unless it is already over (greeted or gone), it waits in line.
        if counts.is_pending(id) {
            counts.waiting.borrow_mut().push_back((id, task));
        }
    }
}

/// TCP keepalive on a peer connection: a peer that vanished without a FIN
/// (power loss, a partition the dialer gave up on) is noticed in about a
/// minute, so its connection does not hold a slot forever.
fn keep_alive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is `stream`'s, open for the whole borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_tcp_keepalive(&ka);
}

/// A listener's connections: how many, which have not greeted yet, and
/// the line of accepted connections (oldest first) the oldest pending one
/// is pushed out of.
#[derive(Default)]
struct PeerCounts {
    open: std::cell::Cell<usize>,
    next_id: std::cell::Cell<u64>,
    waiting: RefCell<std::collections::VecDeque<(u64, glommio::task::JoinHandle<()>)>>,
    pending_ids: RefCell<std::collections::HashSet<u64>>,
}

impl PeerCounts {
    fn is_pending(&self, id: u64) -> bool {
        self.pending_ids.borrow().contains(&id)
    }

    fn pending(&self) -> usize {
        self.pending_ids.borrow().len()
    }
}

/// One connection's place in [`PeerCounts`]: pending until greeted, open
/// until dropped.
struct PeerSlot {
    counts: Rc<PeerCounts>,
    id: u64,
}

impl PeerSlot {
    fn new(counts: Rc<PeerCounts>) -> PeerSlot {
        let id = counts.next_id.get();
        counts.next_id.set(id + 1);
        counts.open.set(counts.open.get() + 1);
        counts.pending_ids.borrow_mut().insert(id);
        PeerSlot { counts, id }
    }

    /// No longer pending (idempotent).
    fn greeted(&mut self) {
        self.counts.pending_ids.borrow_mut().remove(&self.id);
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.greeted();
        self.counts.open.set(self.counts.open.get() - 1);
    }
}

async fn peer_connection(
    mut stream: crate::tls::Stream<TcpStream>,
    frame_bytes_max: usize,
    handler: Rc<dyn RaftHandler>,
    faults: Rc<RefCell<FaultRules>>,
    hello_by: Instant,
    mut slot: PeerSlot,
) {
    let mut frames = FrameBuffer::new(frame_bytes_max);
    let mut greeted = false;
    let mut from = 0;
    loop {
        let spare = frames.spare(256 * 1024);
        let read = stream.read(spare);
        let got = if greeted {
            Some(read.await)
        } else {
            crate::tls::by_deadline(hello_by, read).await
        };
        let n = match got {
            Some(Ok(0)) | Some(Err(_)) | None => return,
            Some(Ok(n)) => n,
        };
        frames.filled(256 * 1024, n);
        loop {
            let body = match frames.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => return,
            };
            match decode_peer_frame(body) {
                Ok(PeerFrame::Hello {
                    node_id,
                    shard_count,
                    client_addr,
                }) => {
                    // Over TLS, the certificate must name the node the
                    // hello claims; a node of the cluster cannot pose as
                    // another.
                    if let Some(certs) = stream.peer_certificates() {
                        if !crate::tls::certifies_node(certs, node_id) {
                            return;
                        }
                    } else if !matches!(stream, crate::tls::Stream::Plain(_)) {
                        return;
                    }
                    greeted = true;
                    slot.greeted();
                    from = node_id;
                    handler.on_peer(node_id, shard_count, client_addr);
                }
                // Over TLS, every message must come from the node the
                // certificate names: one node's certificate cannot speak
                // for another.
                Ok(PeerFrame::Raft(envs))
                    if greeted
                        && !matches!(stream, crate::tls::Stream::Plain(_))
                        && envs.iter().any(|e| e.from_node != from) =>
                {
                    return
                }
                Ok(PeerFrame::Raft(envs)) if greeted => {
                    // An empty batch is a greeting (`Transport::greet`).
                    if !envs.is_empty() && !faults.borrow().blocks_from(from) {
                        handler.on_messages(envs);
                    }
                }
                // Not a corekv peer, or a broken one: drop the connection.
                Ok(PeerFrame::Raft(_)) | Err(_) => return,
            }
        }
    }
}
