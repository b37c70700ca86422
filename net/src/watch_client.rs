//! Watches in the native client.
//!
//! [`crate::Client::watch`] groups the keys by region and runs one stream per
//! region on a thread of its own, with its own connection to the region's
//! leader. Each stream remembers the version up to which it has delivered
//! every change (the server's progress); after a lost connection, a leader
//! change or a server restart it asks the new leader for the changes after
//! that version, so the caller sees every change once, in version order per
//! region, with no gap. Only a `Compacted` answer (the region no longer
//! keeps the changes asked for) or an invalid request ends a stream; it is
//! passed on with the keys' current values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::route_hash;
use corekv_engine::watch::Change;

use crate::client::{wire_to_client, Client, ClientError, Conn, Result};
use crate::message::{decode_frame, encode_requests, Frame, Op, Outcome, Request, WireError};
use crate::routing::Routing;
use crate::wire::ErrorCode;

/// A connection that delivered nothing (not even progress) for this long is
/// taken for dead; servers send progress every second.
const SILENT_MAX: Duration = Duration::from_secs(3);
/// How often a stream looks at its stop flag while waiting.
const POLL: Duration = Duration::from_millis(200);

/// What one stream of a watch is doing, for diagnostics
/// ([`Watch::streams`]).
#[derive(Clone, Debug, Default)]
pub struct StreamStatus {
    /// Keys the stream follows.
    pub keys: usize,
    /// Region it last asked for.
    pub region: u64,
    /// Address it last sent the watch to.
    pub addr: String,
    /// Every change up to this version was delivered.
    pub cursor: u64,
    /// Watch requests sent.
    pub attempts: u32,
    /// Times a server accepted the watch.
    pub accepted: u32,
    /// Changes delivered.
    pub events: u64,
    /// Frames received.
    pub frames: u64,
    /// When the last frame came.
    pub last_frame: Option<Instant>,
    /// Why the last attempt ended, if one did.
    pub last_end: String,
}

impl std::fmt::Display for StreamStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "region {} via {} ({} keys): cursor {}, {} attempts, {} accepted, {} frames, {} changes, \
             last frame {}, last end: {}",
            self.region,
            if self.addr.is_empty() { "-" } else { &self.addr },
            self.keys,
            self.cursor,
            self.attempts,
            self.accepted,
            self.frames,
            self.events,
            self.last_frame
                .map_or("never".to_string(), |t| format!("{} ms ago", t.elapsed().as_millis())),
            if self.last_end.is_empty() { "-" } else { &self.last_end },
        )
    }
}

type SharedStatus = Arc<Mutex<StreamStatus>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut StreamStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// What streams hand to the [`Watch`].
enum Item {
    Event(Change),
    Failed(ClientError),
}

/// A running watch. Dropping it stops its streams.
pub struct Watch {
    rx: mpsc::Receiver<Item>,
    streams: Streams,
}

/// What every stream of a watch shares, to start more streams when a split
/// scatters a stream's keys over regions.
#[derive(Clone)]
struct Streams {
    cfg: crate::ClientConfig,
    tx: mpsc::Sender<Item>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    statuses: Arc<Mutex<Vec<SharedStatus>>>,
}

impl Streams {
    /// Starts a stream of `keys` (one region) after `from_version`; `ready`
    /// hears when a leader accepted it.
    fn spawn(
        &self,
        client: Client,
        keys: Vec<Bytes>,
        from_version: u64,
        ready: Option<mpsc::Sender<()>>,
    ) -> Result<()> {
        let me = self.clone();
        let status = SharedStatus::default();
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(status.clone());
        let handle = std::thread::Builder::new()
            .name("corekv-watch".into())
            .spawn(move || stream(client, keys, from_version, ready, me, status))
            .map_err(|e| ClientError::Protocol(format!("starting a watch thread: {e}")))?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }
}

impl Watch {
    /// The next change, waiting up to `timeout`; `Ok(None)` if none came.
    /// An error ends the watch of that error's keys (the other regions'
    /// streams go on).
    pub fn next(&self, timeout: Duration) -> Result<Option<Change>> {
        match self.rx.recv_timeout(timeout) {
            Ok(Item::Event(c)) => Ok(Some(c)),
            Ok(Item::Failed(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Protocol(
                "every stream of the watch ended".into(),
            )),
        }
    }
}

impl Watch {
    /// What each of the watch's streams is doing (one per region; a split
    /// adds streams), for diagnostics.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.streams
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.streams.stop.store(true, Ordering::Release);
        loop {
            let next = self
                .streams
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            match next {
                Some(t) => {
                    let _ = t.join();
                }
                None => return,
            }
        }
    }
}

impl Client {
    /// Watches `keys`: every change (put, delete, expiry) made after
    /// `from_version`, or from now when it is 0 (every change applied after
    /// this call returns is seen: it returns once each region's leader has
    /// accepted the watch). Versions are per region;
    /// give a version only for keys of one region (the usual case: resume
    /// from the last version a previous watch of the same keys returned).
    pub fn watch(&mut self, keys: &[&[u8]], from_version: u64) -> Result<Watch> {
        if keys.is_empty() {
            return Err(ClientError::Invalid {
                code: ErrorCode::InvalidRequest,
                message: "watch needs at least one key".into(),
            });
        }
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut groups: Vec<(u64, Vec<Bytes>)> = Vec::new();
        for k in keys {
            let hash = route_hash(k);
            let i = match self.route_index(hash) {
                Some(i) => i,
                None => {
                    self.refresh_routes(deadline)
                        .map_err(|last| ClientError::Unavailable { attempts: 1, last })?;
                    self.route_index(hash)
                        .ok_or_else(|| ClientError::Protocol("no region covers the key".into()))?
                }
            };
            let region = self.routes[i].region.id;
            match groups.iter_mut().find(|(r, _)| *r == region) {
                Some((_, g)) => g.push(Bytes::copy_from_slice(k)),
                None => groups.push((region, vec![Bytes::copy_from_slice(k)])),
            }
        }
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let streams = Streams {
            cfg: self.cfg.clone(),
            tx,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
            statuses: Arc::new(Mutex::new(Vec::new())),
        };
        let count = groups.len();
        let watch = Watch {
            rx,
            streams: streams.clone(),
        };
        for (_, keys) in groups {
            let client = Client::connect(self.cfg.clone())?;
            streams.spawn(client, keys, from_version, Some(ready_tx.clone()))?;
        }
        // A stream that fails drops its sender: the wait below ends then.
        drop(ready_tx);
        for _ in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if ready_rx.recv_timeout(left).is_err() {
                // A stream that ended with an error has passed it on.
                if let Ok(Item::Failed(e)) = watch.rx.try_recv() {
                    return Err(e);
                }
                return Err(ClientError::Unavailable {
                    attempts: 1,
                    last: "no leader accepted the watch in time".into(),
                });
            }
        }
        Ok(watch)
    }
}

/// How one attempt at streaming ended.
enum Ended {
    /// Try again (after a pause unless `hinted`).
    Retry { hinted: bool },
    /// The keys may be in several regions now (routes were reloaded).
    /// Keys still in region `kept` resume from the cursor, the others from
    /// `split_at` (0 = the cursor).
    Regroup { kept: u64, split_at: u64 },
    /// The watch is over.
    Done,
}

fn stream(
    mut c: Client,
    mut keys: Vec<Bytes>,
    from_version: u64,
    mut ready: Option<mpsc::Sender<()>>,
    streams: Streams,
    status: SharedStatus,
) {
    let (tx, stop) = (&streams.tx, &streams.stop);
    // Every change up to `cursor` was delivered (0 = start from now).
    let mut cursor = from_version;
    let mut attempt = 0u32;
    while !stop.load(Ordering::Acquire) {
        attempt += 1;
        let hash = route_hash(&keys[0]);
        update(&status, |s| s.keys = keys.len());
        let ended = attempt_stream(
            &mut c,
            &keys,
            hash,
            &mut cursor,
            attempt,
            (tx, &mut ready),
            stop,
            &status,
        );
        match ended {
            Ended::Done => return,
            Ended::Regroup { kept, split_at } => {
                let mut groups: Vec<(u64, Vec<Bytes>)> = Vec::new();
                for k in keys.drain(..) {
                    let region = c
                        .route_index(route_hash(&k))
                        .map_or(0, |i| c.routes[i].region.id);
                    match groups.iter_mut().find(|(r, _)| *r == region) {
                        Some((_, g)) => g.push(k),
                        None => groups.push((region, vec![k])),
                    }
                }
                let from = |region: u64| {
                    if region == kept || split_at == 0 {
                        cursor
                    } else {
                        split_at
                    }
                };
                let (first_region, first) = groups.remove(0);
                for (region, group) in groups {
                    let started = Client::connect(streams.cfg.clone())
                        .and_then(|client| streams.spawn(client, group, from(region), None));
                    if let Err(e) = started {
                        let _ = tx.send(Item::Failed(e));
                        return;
                    }
                }
                cursor = from(first_region);
                keys = first;
            }
            Ended::Retry { hinted: true } => {}
            Ended::Retry { hinted: false } => {
                let pause = Instant::now() + c.cfg.backoff_max * 2;
                c.backoff(attempt.min(4), pause);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt_stream(
    c: &mut Client,
    keys: &[Bytes],
    hash: u64,
    cursor: &mut u64,
    attempt: u32,
    (tx, ready): (&mpsc::Sender<Item>, &mut Option<mpsc::Sender<()>>),
    stop: &AtomicBool,
    status: &SharedStatus,
) -> Ended {
    let ended = |why: String| update(status, |s| s.last_end = why);
    let deadline = Instant::now() + c.cfg.request_timeout;
    let Some(i) = c.route_index(hash) else {
        let _ = c.refresh_routes(deadline);
        ended("no route for the keys".into());
        return Ended::Retry { hinted: false };
    };
    let Some((node, addr)) = c.target(i, attempt) else {
        let _ = c.refresh_routes(deadline);
        ended("no replica to ask".into());
        return Ended::Retry { hinted: false };
    };
    update(status, |s| {
        s.region = c.routes[i].region.id;
        s.addr = addr.clone();
        s.cursor = *cursor;
        s.attempts += 1;
    });
    let id = c.new_id();
    let req = Request {
        id,
        region_id: c.routes[i].region.id,
        epoch: c.routes[i].region.epoch,
        op: Op::Watch {
            keys: keys.to_vec(),
            from_version: *cursor,
        },
        session: None,
        system: false,
    };
    let lost = |c: &mut Client, addr: &str, why: &str| {
        ended(why.to_string());
        c.conns.remove(addr);
        c.mark_down(node);
        c.routes[i].leader_node = 0;
        Ended::Retry { hinted: false }
    };
    let sent = match c.conn(&addr, deadline) {
        Ok(conn) => {
            use std::io::Write;
            conn.stream.write_all(&encode_requests(&[req])).is_ok()
        }
        Err(_) => false,
    };
    if !sent {
        return lost(c, &addr, "could not send the watch");
    }
    let mut heard = Instant::now();
    let mut first = true;
    loop {
        if stop.load(Ordering::Acquire) {
            // Closing the connection ends the watch on the server.
            c.conns.remove(&addr);
            return Ended::Done;
        }
        if heard.elapsed() > SILENT_MAX {
            return lost(c, &addr, "the connection fell silent");
        }
        let conn = c.conns.get_mut(&addr).expect("connection open");
        let frame = match poll_frame(conn) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => return lost(c, &addr, &format!("connection lost: {e}")),
        };
        heard = Instant::now();
        let responses = match frame {
            Frame::Responses(rs) => rs,
            _ => return lost(c, &addr, "the server sent a frame that is not a response"),
        };
        update(status, |s| {
            s.frames += 1;
            s.last_frame = Some(heard);
        });
        for r in responses.into_iter().filter(|r| r.id == id) {
            match r.result {
                Ok(Outcome::Events { progress, events }) => {
                    // The first answer accepts the watch.
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    if first {
                        first = false;
                        update(status, |s| s.accepted += 1);
                    }
                    let mut sent = 0;
                    for e in events {
                        if e.version > *cursor {
                            if tx.send(Item::Event(e)).is_err() {
                                return Ended::Done;
                            }
                            sent += 1;
                        }
                    }
                    *cursor = (*cursor).max(progress);
                    update(status, |s| {
                        s.events += sent;
                        s.cursor = *cursor;
                    });
                }
                Ok(other) => {
                    let _ = tx.send(Item::Failed(ClientError::Protocol(format!(
                        "watch answered {other:?}"
                    ))));
                    return Ended::Done;
                }
                Err(e) => {
                    c.conns.remove(&addr);
                    ended(e.to_string());
                    return match c.routes.on_error(i, &e) {
                        Routing::Retry { hinted } => Ended::Retry { hinted },
                        Routing::Reload => {
                            let _ = c.refresh_routes(deadline);
                            let (kept, split_at) = match &e {
                                WireError::EpochNotMatch {
                                    regions,
                                    from_version,
                                    ..
                                } => (regions.first().map_or(0, |r| r.id), *from_version),
                                _ => (0, 0),
                            };
                            Ended::Regroup { kept, split_at }
                        }
                        Routing::Backoff => Ended::Retry { hinted: false },
                        Routing::Other if e.code() == ErrorCode::Timeout => {
                            c.routes.forget_leader(i);
                            Ended::Retry { hinted: false }
                        }
                        Routing::Other => {
                            let _ = tx.send(Item::Failed(wire_to_client(e)));
                            Ended::Done
                        }
                    };
                }
            }
        }
    }
}

/// Reads one frame, waiting at most [`POLL`]; `Ok(None)` if none came.
fn poll_frame(conn: &mut Conn) -> std::result::Result<Option<Frame>, String> {
    loop {
        match conn.frames.next_frame() {
            Ok(Some(body)) => return decode_frame(body).map(Some).map_err(|e| e.to_string()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if !conn.read_more(POLL)? {
            return Ok(None);
        }
    }
}
