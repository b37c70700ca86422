//! Watches in the native client.
//!
//! [`crate::Client::watch`] groups the keys by region and runs one stream per
//! region on a thread of its own, with its own client (and so its own
//! connection) to the region's leader. Each stream remembers the version up to which it has delivered
//! every change (the server's progress); after a lost connection, a leader
//! change or a server restart it asks the new leader for the changes after
//! that version, so the caller sees every change once, in version order per
//! region, with no gap. Only a `Compacted` answer (the region no longer
//! keeps the changes asked for) or an invalid request ends a stream; it is
//! passed on with the keys' current values.
//!
//! [`crate::Client::watch_prefix`] runs one stream per region too, each
//! following the prefix's keys in the region's hash range. When a split
//! cuts a stream's range, the stream keeps the part still in its region and
//! starts streams for the rest, from the version the split happened at.
//! [`Watch::resume_token`] names every part with the version up to which
//! the caller has taken every change: a later watch resumes from it with
//! no gap and no repeat.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_types::route_hash;
use corekv_types::watch::Change;

use crate::aio::{OpenWatch, Picked};
use crate::client::{wire_to_client, Client, ClientError, Result, RouteBy};
use crate::message::{Op, Outcome, Request, RouteInfo, WatchRange, WireError};
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
    /// A change, the stream it came from, and where that stream stands once
    /// the change is taken (given with the last change of each version: in
    /// one item, so a token made between the two cannot miss it).
    Event(usize, Change, Option<Part>),
    Failed(ClientError),
    /// Where prefix streams stand once the items sent before this one are
    /// taken: (stream, its part).
    Parts(Vec<(usize, Part)>),
}

/// One region's part of a prefix watch: the prefix's keys with a hash in
/// `[start_hash, end_hash)` (`end_hash` 0 = to the end), every change of
/// them up to `cursor` taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// First hash.
    pub start_hash: u64,
    /// Hash past the last (0 = the end of the hash space).
    pub end_hash: u64,
    /// Every change up to this version (of the part's region) was taken.
    pub cursor: u64,
}

/// Where a prefix watch stands: each part of the hash space with the
/// version up to which every change was taken. Its text form (`Display`,
/// `FromStr`) is what `corekv watch --prefix P --resume TOKEN` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeToken {
    /// The parts, in hash order, covering the hash space.
    pub parts: Vec<Part>,
}

impl std::fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w1")?;
        for p in &self.parts {
            write!(f, ".{:x}-{:x}-{}", p.start_hash, p.end_hash, p.cursor)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ResumeToken {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ResumeToken, String> {
        let bad = || format!("not a watch resume token: {s:?}");
        let mut it = s.trim().split('.');
        if it.next() != Some("w1") {
            return Err(bad());
        }
        let mut parts = Vec::new();
        for p in it {
            let f: Vec<&str> = p.split('-').collect();
            let [start, end, cursor] = f[..] else {
                return Err(bad());
            };
            parts.push(Part {
                start_hash: u64::from_str_radix(start, 16).map_err(|_| bad())?,
                end_hash: u64::from_str_radix(end, 16).map_err(|_| bad())?,
                cursor: cursor.parse().map_err(|_| bad())?,
            });
        }
        let token = ResumeToken { parts };
        token.check()?;
        Ok(token)
    }
}

impl ResumeToken {
    /// Checks that the parts are in order and cover the hash space (the
    /// meta region's one hash, `u64::MAX`, aside) without gap or overlap.
    fn check(&self) -> std::result::Result<(), String> {
        let mut next: u128 = 0;
        for p in &self.parts {
            let end = if p.end_hash == 0 {
                1u128 << 64
            } else {
                u128::from(p.end_hash)
            };
            if p.cursor == 0 {
                return Err(format!(
                    "the resume token's part {:x}-{:x} has no version",
                    p.start_hash, p.end_hash
                ));
            }
            if u128::from(p.start_hash) != next || end <= next {
                return Err(format!(
                    "the resume token's parts do not cover the hash space in order \
                     (part {:x}-{:x})",
                    p.start_hash, p.end_hash
                ));
            }
            next = end;
        }
        if next < u128::from(corekv_types::META_HASH) {
            return Err("the resume token's parts stop short of the end of the hash space".into());
        }
        Ok(())
    }
}

/// A running watch. Dropping it stops its streams.
pub struct Watch {
    rx: mpsc::Receiver<Item>,
    streams: Streams,
    /// Items read off the channel for [`Watch::resume_token`] but not yet
    /// taken by [`Watch::next`].
    early: RefCell<VecDeque<Item>>,
    /// The parts of a prefix watch by stream, as far as the caller took.
    parts: RefCell<BTreeMap<usize, Part>>,
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
    /// Numbers the streams.
    next_stream: Arc<AtomicUsize>,
}

/// What one stream follows.
#[derive(Clone, Debug)]
enum Subject {
    /// Keys of one region.
    Keys(Vec<Bytes>),
    /// A prefix's keys in a range of hashes of one region.
    Prefix(WatchRange),
}

impl Subject {
    /// The hash the stream is routed by.
    fn hash(&self) -> u64 {
        match self {
            Subject::Keys(keys) => route_hash(&keys[0]),
            Subject::Prefix(r) => r.start_hash,
        }
    }

    fn part(&self, cursor: u64) -> Option<Part> {
        match self {
            Subject::Keys(_) => None,
            Subject::Prefix(r) => Some(Part {
                start_hash: r.start_hash,
                end_hash: r.end_hash,
                cursor,
            }),
        }
    }
}

/// The parts of `[start, end)` (`end` 0 = to the end) in each region of
/// `routes`, in hash order: (region, start, end). The meta region, which
/// holds no user key, is left out. `None` if the routes leave a gap.
fn pieces(routes: &[RouteInfo], start: u64, end: u64) -> Option<Vec<(u64, u64, u64)>> {
    let wide = |h: u64| if h == 0 { 1u128 << 64 } else { u128::from(h) };
    if !crate::routing::covers_hash_space(routes) {
        return None;
    }
    let (start, end) = (u128::from(start), wide(end));
    let mut out = Vec::new();
    for r in routes.iter().filter(|r| !r.region.is_meta()) {
        let s = start.max(u128::from(r.region.start_hash));
        let e = end.min(wide(r.region.end_hash));
        if s < e {
            // Both fit: `s` < 2^64, and `e` is 2^64 only as the open end.
            out.push((r.region.id, s as u64, (e & u128::from(u64::MAX)) as u64));
        }
    }
    Some(out)
}

impl Streams {
    /// Starts stream number `number` of `subject` (one region) after
    /// `from_version`; `ready` hears when a leader accepted it.
    fn spawn(
        &self,
        client: Client,
        (number, subject): (usize, Subject),
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
            .spawn(move || stream(client, (number, subject), from_version, ready, me, status))
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
        let deadline = Instant::now() + timeout;
        loop {
            let early = self.early.borrow_mut().pop_front();
            let item = match early {
                Some(item) => item,
                None => match self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(item) => item,
                    Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(ClientError::Protocol(
                            "every stream of the watch ended".into(),
                        ))
                    }
                },
            };
            match item {
                Item::Event(n, c, part) => {
                    if let Some(p) = part {
                        self.parts.borrow_mut().insert(n, p);
                    }
                    return Ok(Some(c));
                }
                Item::Failed(e) => return Err(e),
                Item::Parts(parts) => self.parts.borrow_mut().extend(parts),
            }
        }
    }

    /// Where a prefix watch stands: every change up to each part's cursor
    /// was returned by [`Watch::next`]. `Client::watch_prefix_from` with it
    /// goes on from there, with no gap and no repeat. `None` for a watch of
    /// keys.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        // A stream's position counts once every change it sent before it
        // was taken: positions behind an untaken change of the same stream
        // wait (other streams' changes do not hold them back).
        let mut early = self.early.borrow_mut();
        while let Ok(item) = self.rx.try_recv() {
            early.push_back(item);
        }
        let mut parts = self.parts.borrow().clone();
        let mut waiting = std::collections::HashSet::new();
        for item in early.iter() {
            match item {
                Item::Event(n, _, _) => {
                    waiting.insert(*n);
                }
                Item::Parts(ps) => {
                    for (n, p) in ps {
                        if !waiting.contains(n) {
                            parts.insert(*n, *p);
                        }
                    }
                }
                Item::Failed(_) => {}
            }
        }
        if parts.is_empty() {
            return None;
        }
        let mut parts: Vec<Part> = parts.values().copied().collect();
        parts.sort_by_key(|p| p.start_hash);
        Some(ResumeToken { parts })
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
        let deadline = Instant::now() + self.config().request_timeout;
        let mut groups: Vec<(u64, Vec<Bytes>)> = Vec::new();
        for k in keys {
            let hash = route_hash(k);
            let region = match self.as_async().region_at(hash) {
                Some(r) => r,
                None => {
                    self.refresh()?;
                    self.as_async()
                        .region_at(hash)
                        .ok_or_else(|| ClientError::Protocol("no region covers the key".into()))?
                }
            };
            match groups.iter_mut().find(|(r, _)| *r == region) {
                Some((_, g)) => g.push(Bytes::copy_from_slice(k)),
                None => groups.push((region, vec![Bytes::copy_from_slice(k)])),
            }
        }
        let subjects = groups
            .into_iter()
            .map(|(_, keys)| (Subject::Keys(keys), from_version))
            .collect();
        self.start_watch(subjects, deadline)
    }

    /// Watches every key beginning with `prefix` (empty: every key): every
    /// change made after this call returns (it returns once each region's
    /// leader has accepted its part), including to keys created later.
    /// Changes come in version order per region; [`Watch::resume_token`]
    /// says where the caller stands.
    pub fn watch_prefix(&mut self, prefix: &[u8]) -> Result<Watch> {
        let deadline = Instant::now() + self.config().request_timeout;
        let pieces = self.prefix_pieces(0, 0)?;
        let subjects = pieces
            .into_iter()
            .map(|(_, start_hash, end_hash)| {
                let range = WatchRange {
                    prefix: Bytes::copy_from_slice(prefix),
                    start_hash,
                    end_hash,
                };
                (Subject::Prefix(range), 0)
            })
            .collect();
        self.start_watch(subjects, deadline)
    }

    /// Goes on with a prefix watch from where `token` says it stood
    /// ([`Watch::resume_token`] of a watch of the same prefix): the changes
    /// after each part's version. A part whose changes are no longer kept
    /// ends with `Compacted`.
    pub fn watch_prefix_from(&mut self, prefix: &[u8], token: &ResumeToken) -> Result<Watch> {
        token.check().map_err(|message| ClientError::Invalid {
            code: ErrorCode::InvalidRequest,
            message,
        })?;
        let deadline = Instant::now() + self.config().request_timeout;
        if !crate::routing::covers_hash_space(&self.routes()) {
            self.refresh()?;
        }
        let subjects = token
            .parts
            .iter()
            // The meta region's hash holds no user key.
            .filter(|p| p.start_hash != corekv_types::META_HASH)
            .map(|p| {
                let range = WatchRange {
                    prefix: Bytes::copy_from_slice(prefix),
                    start_hash: p.start_hash,
                    end_hash: p.end_hash,
                };
                (Subject::Prefix(range), p.cursor)
            })
            .collect();
        self.start_watch(subjects, deadline)
    }

    /// The parts of `[start, end)` in each region, from fresh routes if
    /// the ones at hand leave a gap.
    fn prefix_pieces(&mut self, start: u64, end: u64) -> Result<Vec<(u64, u64, u64)>> {
        if let Some(p) = pieces(&self.routes(), start, end) {
            return Ok(p);
        }
        self.refresh()?;
        pieces(&self.routes(), start, end).ok_or_else(|| {
            ClientError::Protocol("the routing table leaves part of the hash space out".into())
        })
    }

    /// Starts one stream per subject and waits until each is accepted.
    fn start_watch(&mut self, subjects: Vec<(Subject, u64)>, deadline: Instant) -> Result<Watch> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let streams = Streams {
            cfg: self.config().clone(),
            tx,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
            statuses: Arc::new(Mutex::new(Vec::new())),
            next_stream: Arc::new(AtomicUsize::new(0)),
        };
        let count = subjects.len();
        let mut parts = BTreeMap::new();
        for (i, (subject, from)) in subjects.iter().enumerate() {
            if let Some(p) = subject.part(*from) {
                parts.insert(i, p);
            }
        }
        streams.next_stream.store(count, Ordering::Release);
        let watch = Watch {
            rx,
            streams: streams.clone(),
            early: RefCell::new(VecDeque::new()),
            parts: RefCell::new(parts),
        };
        for (i, (subject, from)) in subjects.into_iter().enumerate() {
            let client = Client::connect(self.config().clone())?;
            streams.spawn(client, (i, subject), from, Some(ready_tx.clone()))?;
        }
        // Every stream drops its sender once accepted (or failed); streams
        // started by a split before their parent was accepted hold a clone.
        drop(ready_tx);
        let accepted = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(mpsc::RecvTimeoutError::Timeout) => break false,
            }
        };
        // A stream that ended with an error has passed it on; what came
        // before it stays for `next`.
        let failed = {
            let mut early = watch.early.borrow_mut();
            while let Ok(item) = watch.rx.try_recv() {
                early.push_back(item);
            }
            early
                .iter()
                .position(|i| matches!(i, Item::Failed(_)))
                .and_then(|p| early.remove(p))
        };
        if let Some(Item::Failed(e)) = failed {
            return Err(e);
        }
        if !accepted {
            return Err(ClientError::Unavailable {
                attempts: 1,
                last: "no leader accepted the watch in time".into(),
            });
        }
        Ok(watch)
    }
}

/// How one attempt at streaming ended.
enum Ended {
    /// Try again (after a pause unless `hinted`).
    Retry { hinted: bool },
    /// The keys (or the range) may be in several regions now (routes were
    /// reloaded). What is still in region `kept` resumes from the cursor,
    /// the rest from `split_at` (0 = the cursor).
    Regroup { kept: u64, split_at: u64 },
    /// The watch is over.
    Done,
}

fn stream(
    mut c: Client,
    (number, mut subject): (usize, Subject),
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
        update(&status, |s| {
            s.keys = match &subject {
                Subject::Keys(k) => k.len(),
                Subject::Prefix(_) => 0,
            }
        });
        let ended = attempt_stream(
            &mut c,
            (number, &subject),
            &mut cursor,
            attempt,
            (tx, &mut ready),
            stop,
            &status,
        );
        let (kept, split_at) = match ended {
            Ended::Done => return,
            Ended::Retry { hinted: true } => continue,
            Ended::Retry { hinted: false } => {
                pause(c.config(), attempt);
                continue;
            }
            Ended::Regroup { kept, split_at } => (kept, split_at),
        };
        let from = |region: u64| {
            if region == kept || split_at == 0 {
                cursor
            } else {
                split_at
            }
        };
        // (region, what the region holds of the subject)
        let mut groups: Vec<(u64, Subject)> = Vec::new();
        match subject {
            Subject::Keys(mut keys) => {
                for k in keys.drain(..) {
                    let region = c.as_async().region_at(route_hash(&k)).unwrap_or(0);
                    match groups.iter_mut().find(|(r, _)| *r == region) {
                        Some((_, Subject::Keys(g))) => g.push(k),
                        _ => groups.push((region, Subject::Keys(vec![k]))),
                    }
                }
            }
            Subject::Prefix(r) => match pieces(&c.routes(), r.start_hash, r.end_hash) {
                Some(p) if !p.is_empty() => {
                    for (region, start_hash, end_hash) in p {
                        let range = WatchRange {
                            prefix: r.prefix.clone(),
                            start_hash,
                            end_hash,
                        };
                        groups.push((region, Subject::Prefix(range)));
                    }
                }
                // Routes with a gap: ask again as before.
                _ => groups.push((kept, Subject::Prefix(r))),
            },
        }
        // Routes that still show the old shape (a node that has not applied
        // the split answered them): pause before asking again.
        if groups.len() == 1 && groups[0].0 == kept {
            pause(c.config(), attempt);
        }
        let (first_region, first) = groups.remove(0);
        let mut parts = Vec::new();
        let mut started = Vec::new();
        for (region, group) in groups {
            let n = streams.next_stream.fetch_add(1, Ordering::AcqRel);
            if let Some(p) = group.part(from(region)) {
                parts.push((n, p));
            }
            started.push((n, group, from(region)));
        }
        cursor = from(first_region);
        subject = first;
        if let Some(p) = subject.part(cursor) {
            parts.push((number, p));
        }
        // The caller's token covers the new streams' parts before they run.
        if !parts.is_empty() && tx.send(Item::Parts(parts)).is_err() {
            return;
        }
        for (n, group, from) in started {
            // Not accepted yet: the caller waits for these too.
            let started = Client::connect(streams.cfg.clone())
                .and_then(|client| streams.spawn(client, (n, group), from, ready.clone()));
            if let Err(e) = started {
                let _ = tx.send(Item::Failed(e));
                return;
            }
        }
    }
}

/// The pause before a stream asks again: the client's backoff for
/// `attempt`, within twice its longest.
fn pause(cfg: &crate::ClientConfig, attempt: u32) {
    let d = cfg
        .backoff_base
        .saturating_mul(1u32 << attempt.min(4))
        .min(cfg.backoff_max * 2);
    std::thread::sleep(d);
}

#[allow(clippy::too_many_arguments)]
fn attempt_stream(
    c: &mut Client,
    (number, subject): (usize, &Subject),
    cursor: &mut u64,
    attempt: u32,
    (tx, ready): (&mpsc::Sender<Item>, &mut Option<mpsc::Sender<()>>),
    stop: &AtomicBool,
    status: &SharedStatus,
) -> Ended {
    let ended = |why: String| update(status, |s| s.last_end = why);
    let ac = c.as_async().clone();
    let (region, node, addr) = match ac.pick(RouteBy::Hash(subject.hash()), attempt) {
        Picked::At(region, node, addr) => (region, node, addr),
        Picked::NoRoute => {
            let _ = c.refresh();
            ended("no route for the keys".into());
            return Ended::Retry { hinted: false };
        }
        Picked::NoReplica => {
            let _ = c.refresh();
            ended("no replica to ask".into());
            return Ended::Retry { hinted: false };
        }
    };
    let (region_id, epoch) = region;
    update(status, |s| {
        s.region = region_id;
        s.addr = addr.clone();
        s.cursor = *cursor;
        s.attempts += 1;
    });
    let lost = |why: &str| {
        ended(why.to_string());
        ac.close_link(&addr);
        ac.mark_down(node);
        ac.forget_leader(region_id, epoch);
        Ended::Retry { hinted: false }
    };
    let deadline = tokio::time::Instant::now() + c.config().request_timeout;
    let Ok(link) = c.block_on(ac.link(&addr, deadline)) else {
        return lost("could not connect");
    };
    let id = ac.new_id();
    let req = Request {
        id,
        region_id,
        epoch,
        op: match subject {
            Subject::Keys(keys) => Op::Watch {
                keys: keys.clone(),
                from_version: *cursor,
                prefix: None,
            },
            Subject::Prefix(range) => Op::Watch {
                keys: Vec::new(),
                from_version: *cursor,
                prefix: Some(range.clone()),
            },
        },
        session: None,
        system: false,
    };
    let Some(rx) = link.send_stream(req) else {
        return lost("could not send the watch");
    };
    // Dropped (on every way out) it cancels the watch on the server.
    let mut watch = OpenWatch {
        link,
        id,
        region,
        rx,
        first: Default::default(),
    };
    let mut heard = Instant::now();
    let mut first = true;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ended::Done;
        }
        if heard.elapsed() > SILENT_MAX {
            return lost("the connection fell silent");
        }
        // (The timer is made inside the runtime.)
        let next = async { tokio::time::timeout(POLL, watch.rx.recv()).await };
        let answer = match c.block_on(next) {
            Ok(Some(Ok((resp, _)))) => resp,
            Ok(Some(Err(e))) => return lost(&format!("connection lost: {e}")),
            Ok(None) => return lost("connection lost"),
            Err(_) => continue,
        };
        heard = Instant::now();
        update(status, |s| {
            s.frames += 1;
            s.last_frame = Some(heard);
        });
        match answer.result {
            Ok(Outcome::Events { progress, events }) => {
                if first {
                    first = false;
                    update(status, |s| s.accepted += 1);
                }
                let mut sent = 0;
                let floor = *cursor;
                let mut fresh = events.into_iter().filter(|e| e.version > floor).peekable();
                // A prefix stream's position moves past each version once
                // all of its changes are passed on.
                let mut told = floor;
                while let Some(e) = fresh.next() {
                    let v = e.version;
                    let part = if fresh.peek().is_none_or(|n| n.version != v) {
                        subject.part(v)
                    } else {
                        None
                    };
                    if part.is_some() {
                        told = v;
                    }
                    if tx.send(Item::Event(number, e, part)).is_err() {
                        return Ended::Done;
                    }
                    sent += 1;
                }
                *cursor = (*cursor).max(progress);
                if *cursor > told {
                    if let Some(p) = subject.part(*cursor) {
                        if tx.send(Item::Parts(vec![(number, p)])).is_err() {
                            return Ended::Done;
                        }
                    }
                }
                // The first answer accepts the watch (its position is
                // passed on first).
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
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
                ended(e.to_string());
                // This stream's link to a node that refused it goes (the
                // next attempt may go elsewhere).
                ac.close_link(&addr);
                return match ac.learn(region, &e) {
                    Routing::Retry { hinted } => Ended::Retry { hinted },
                    Routing::Reload => {
                        let _ = c.refresh();
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
                        ac.forget_leader(region_id, epoch);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> (Watch, mpsc::Sender<Item>) {
        let (tx, rx) = mpsc::channel();
        let streams = Streams {
            cfg: crate::ClientConfig::new(vec![]),
            tx: tx.clone(),
            stop: Arc::default(),
            threads: Arc::default(),
            statuses: Arc::default(),
            next_stream: Arc::default(),
        };
        let w = Watch {
            rx,
            streams,
            early: RefCell::default(),
            parts: RefCell::default(),
        };
        (w, tx)
    }

    fn part(cursor: u64) -> Part {
        Part {
            start_hash: 0,
            end_hash: 0,
            cursor,
        }
    }

    fn change(version: u64) -> Change {
        Change {
            key: Bytes::from_static(b"/app/k"),
            kind: corekv_types::watch::ChangeKind::Put,
            value: Bytes::from_static(b"v"),
            version,
            expire_at_ms: 0,
        }
    }

    /// A token made right after a change was taken, before its stream sent
    /// anything more, counts that change (a resume from it would repeat
    /// it otherwise), and not the ones not taken yet.
    #[test]
    fn a_token_made_right_after_a_change_is_taken_counts_it() {
        let (w, tx) = watch();
        w.parts.borrow_mut().insert(0, part(16));
        tx.send(Item::Event(0, change(17), Some(part(17)))).unwrap();
        tx.send(Item::Event(0, change(18), Some(part(18)))).unwrap();
        let got = w.next(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(got.version, 17);
        let token = w.resume_token().unwrap();
        assert_eq!(token.parts[0].cursor, 17, "{token}");
        // The untaken one is still delivered, then counted.
        assert_eq!(w.next(Duration::from_secs(1)).unwrap().unwrap().version, 18);
        assert_eq!(w.resume_token().unwrap().parts[0].cursor, 18);
    }
}
