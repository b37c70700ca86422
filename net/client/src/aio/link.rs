//! One pipelined connection of the async client: any number of requests in
//! flight, matched to their answers by request id.
//!
//! A writer task takes what callers queued and sends it in as few frames as
//! the queue allows (everything queued while the last frame was written goes
//! in the next one); a reader task hands each answer to the caller waiting
//! for its id. When either side fails the link is closed: every caller still
//! waiting learns its answer is lost, and the next call opens a new link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::FrameBuffer;
use crate::message::{
    decode_frame, decode_frame_with_fields, encode_client_hello, encode_requests, Frame, Request,
    Response, ResponseFields,
};
use crate::wire::ErrorCode;

/// Requests sent in one frame at most.
const FRAME_REQUESTS_MAX: usize = 256;

/// Keys and values in one frame at most, well under a node's frame limit
/// (16 MiB by default); a single larger request still goes alone.
const FRAME_PAYLOAD_MAX: usize = 4 << 20;

/// Keys and values a request carries (what its frame size grows with).
fn payload_bytes(r: &Request) -> usize {
    use crate::message::Op;
    use corekv_types::WriteRequest;
    64 + match &r.op {
        Op::Get { key, .. } => key.len(),
        Op::Write(WriteRequest::Put { key, value, .. }) => key.len() + value.len(),
        Op::Write(WriteRequest::Delete { key, .. }) => key.len(),
        _ => 0,
    }
}

/// Bytes read per read call at least.
const READ_BYTES: usize = 64 * 1024;

/// An answer, or why none will come.
pub(crate) type Answer = std::result::Result<(Response, ResponseFields), String>;

/// Who waits for the answers to a request: one caller for one answer, or a
/// watch for every frame of its stream.
enum Waiter {
    Once(oneshot::Sender<Answer>),
    Stream(mpsc::UnboundedSender<Answer>),
}

impl Waiter {
    fn fail(self, why: &str) {
        match self {
            Waiter::Once(tx) => {
                let _ = tx.send(Err(why.to_string()));
            }
            Waiter::Stream(tx) => {
                let _ = tx.send(Err(why.to_string()));
            }
        }
    }
}

type Waiters = Mutex<HashMap<u64, Waiter>>;

/// Why a link could not be opened.
pub(super) enum OpenError {
    /// The node refused the login: another node would say the same.
    Refused(String),
    /// Anything else (unreachable, timed out, not a corekv node).
    Failed(String),
}

/// A connection to one address.
pub(crate) struct Link {
    queue: mpsc::UnboundedSender<Request>,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
    /// The per-shard client ports the node's `Hello` gave (index = shard).
    pub(super) shard_ports: Vec<u16>,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Link {
    /// The last handle is gone: the socket closes with its tasks.
    fn drop(&mut self) {
        close(&self.waiters, &self.closed, "connection dropped");
        for t in &self.tasks {
            t.abort();
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Link {
    /// Connects to `addr`, logs in and reads the node's `Hello`, all within
    /// `budget`.
    pub(super) async fn open(
        addr: &str,
        cfg: &crate::ClientConfig,
        budget: Duration,
    ) -> std::result::Result<Link, OpenError> {
        let failed = |e: String| OpenError::Failed(format!("{addr}: {e}"));
        let (io, hello) = tokio::time::timeout(budget, Self::handshake(addr, cfg))
            .await
            .map_err(|_| failed("no hello within the connect timeout".into()))??;
        let shard_ports = match decode_frame(&hello).map_err(|e| failed(e.to_string()))? {
            Frame::Hello { shard_ports, .. } => shard_ports,
            Frame::Error(e) if e.code() == ErrorCode::Unauthenticated => {
                return Err(OpenError::Refused(format!("{addr}: {}", e.message())))
            }
            Frame::Error(e) => return Err(failed(e.message().to_string())),
            other => return Err(failed(format!("expected hello, got {other:?}"))),
        };
        let (rd, wr) = tokio::io::split(io);
        let (queue, rx) = mpsc::unbounded_channel();
        let waiters: Arc<Waiters> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_loop(
            wr,
            rx,
            waiters.clone(),
            closed.clone(),
            cfg.request_timeout,
        ));
        let reader = tokio::spawn(read_loop(
            rd,
            FrameBuffer::new(cfg.frame_bytes_max),
            waiters.clone(),
            closed.clone(),
        ));
        Ok(Link {
            queue,
            waiters,
            closed,
            shard_ports,
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }

    async fn handshake(
        addr: &str,
        cfg: &crate::ClientConfig,
    ) -> std::result::Result<(Box<dyn Io>, Vec<u8>), OpenError> {
        let failed = |e: String| OpenError::Failed(format!("{addr}: {e}"));
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tcp.set_nodelay(true).ok();
        let mut io: Box<dyn Io> = match &cfg.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = crate::tls::server_name_of(addr).map_err(OpenError::Failed)?;
                let s = tokio_rustls::TlsConnector::from(tls.0.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        failed(format!(
                            "TLS handshake: {e} (the node must serve TLS with a certificate \
                             from this CA that names {addr})"
                        ))
                    })?;
                Box::new(s)
            }
        };
        let creds = cfg
            .credentials
            .as_ref()
            .map(|c| (c.user.as_str(), c.token.as_str()));
        io.write_all(&encode_client_hello(creds))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut frames = FrameBuffer::new(cfg.frame_bytes_max);
        loop {
            if let Some(body) = frames.next_frame().map_err(|e| failed(e.to_string()))? {
                return Ok((io, body.to_vec()));
            }
            let n = io
                .read(frames.spare(READ_BYTES))
                .await
                .map_err(|e| failed(e.to_string()));
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    frames.filled(READ_BYTES, 0);
                    return Err(e);
                }
            };
            frames.filled(READ_BYTES, n);
            if n == 0 {
                let hint = if cfg.tls.is_none() {
                    " (if the cluster serves TLS, give its CA: ClientConfig::tls, --tls-ca)"
                } else {
                    ""
                };
                return Err(failed(format!("connection closed by the server{hint}")));
            }
        }
    }

    /// False once the connection failed.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Queues `req`; the receiver gets its answer, or an error once the
    /// link fails before the answer came. None: the link is closed and
    /// nothing was sent. Never blocks.
    pub(crate) fn send(&self, req: Request) -> Option<oneshot::Receiver<Answer>> {
        let (tx, rx) = oneshot::channel();
        self.queue_with(req, Waiter::Once(tx)).then_some(rx)
    }

    /// Queues a request answered by a stream of frames (a watch): the
    /// receiver gets each of them, then an error once the link fails. The
    /// stream's waiter stays until [`Link::forget`] or the link closes.
    pub(crate) fn send_stream(&self, req: Request) -> Option<mpsc::UnboundedReceiver<Answer>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.queue_with(req, Waiter::Stream(tx)).then_some(rx)
    }

    fn queue_with(&self, req: Request, waiter: Waiter) -> bool {
        let id = req.id;
        self.waiters.lock().unwrap().insert(id, waiter);
        // Checked after the waiter is in: a link that closes from now on
        // fails it; one that closed before is seen here.
        if !self.is_open() || self.queue.send(req).is_err() {
            self.waiters.lock().unwrap().remove(&id);
            return false;
        }
        true
    }

    /// Queues `req` with no one waiting for its answer (a watch's cancel).
    pub(crate) fn send_and_forget(&self, req: Request) {
        let (tx, _) = oneshot::channel();
        self.queue_with(req, Waiter::Once(tx));
    }

    /// Forgets the caller waiting for `id` (it gave up).
    pub(crate) fn forget(&self, id: u64) {
        self.waiters.lock().unwrap().remove(&id);
    }
}

/// Marks the link closed and fails every caller still waiting.
fn close(waiters: &Waiters, closed: &AtomicBool, why: &str) {
    closed.store(true, Ordering::Release);
    let all: Vec<_> = waiters.lock().unwrap().drain().collect();
    for (_, w) in all {
        w.fail(why);
    }
}

async fn write_loop(
    mut wr: tokio::io::WriteHalf<Box<dyn Io>>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
    write_wait: Duration,
) {
    let mut batch = Vec::with_capacity(FRAME_REQUESTS_MAX);
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut bytes = payload_bytes(&first);
        batch.push(first);
        // Let the tasks woken with this one queue theirs too: one frame for
        // all of them rather than one each.
        tokio::task::yield_now().await;
        while batch.len() < FRAME_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(r) if bytes + payload_bytes(&r) > FRAME_PAYLOAD_MAX => {
                    carry = Some(r);
                    break;
                }
                Ok(r) => {
                    bytes += payload_bytes(&r);
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its deadline passed) is not sent for.
        {
            let w = waiters.lock().unwrap();
            batch.retain(|r| w.contains_key(&r.id));
        }
        if batch.is_empty() {
            continue;
        }
        let frame = encode_requests(&batch);
        batch.clear();
        let wrote = tokio::time::timeout(write_wait, async {
            wr.write_all(&frame).await?;
            // TLS may hold the end of the frame until flushed.
            wr.flush().await
        })
        .await;
        match wrote {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                close(&waiters, &closed, &format!("write: {e}"));
                return;
            }
            Err(_) => {
                close(&waiters, &closed, "write: the node takes nothing in");
                return;
            }
        }
        if closed.load(Ordering::Acquire) {
            return;
        }
    }
}

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn Io>>,
    mut frames: FrameBuffer,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
) {
    let why = loop {
        // Every whole frame buffered, then more bytes.
        let mut failed = None;
        loop {
            match frames.next_frame() {
                Ok(Some(body)) => match decode_frame_with_fields(body) {
                    Ok((Frame::Responses(rs), fields)) => {
                        let mut w = waiters.lock().unwrap();
                        for (r, f) in rs.into_iter().zip(fields) {
                            let id = r.id;
                            // A watch's waiter stays for its next frames
                            // (until its reader is gone); any other goes.
                            let Some(waiter) = w.remove(&id) else {
                                continue;
                            };
                            match waiter {
                                Waiter::Stream(tx) => {
                                    if tx.send(Ok((r, f))).is_ok() {
                                        w.insert(id, Waiter::Stream(tx));
                                    }
                                }
                                Waiter::Once(tx) => {
                                    let _ = tx.send(Ok((r, f)));
                                }
                            }
                        }
                    }
                    Ok((Frame::Error(e), _)) => {
                        failed = Some(format!("closed by the server: {}", e.message()));
                        break;
                    }
                    Ok((other, _)) => {
                        failed = Some(format!("unexpected frame {other:?}"));
                        break;
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = failed {
            break why;
        }
        if closed.load(Ordering::Acquire) {
            break "closed".to_string();
        }
        let n = rd.read(frames.spare(READ_BYTES)).await;
        match n {
            Ok(0) => {
                frames.filled(READ_BYTES, 0);
                break "connection closed by the server".to_string();
            }
            Ok(n) => frames.filled(READ_BYTES, n),
            Err(e) => {
                frames.filled(READ_BYTES, 0);
                break format!("read: {e}");
            }
        }
    };
    close(&waiters, &closed, &why);
}
