//! A local cache of a prefix or of some keys, kept current by watches, that
//! never answers with a value older than a stated bound.
//!
//! [`AsyncClient::cached`] loads what it follows (a linearizable scan of
//! the prefix, page by page, or linearizable reads of the keys), then
//! follows every change by one watch per region, started from the version
//! the load read at. Values are merged by version, so each key only moves
//! forward (monotonic per key).
//!
//! # The bound
//! A watch says how far it got (every change up to version `P` was sent),
//! but a leader cut off from its peers can go on saying so for a while
//! about a log the others have moved past. So the cache proves freshness
//! itself: every quarter of the bound it sends each region a linearizable
//! probe (a one-key scan) at time `t0`; the answer names the region's
//! applied index `V` at a moment after `t0`. Once the region's watch has
//! delivered every change up to `V`, the cache holds everything the region
//! had at `t0`: the region is *fresh as of* `t0`. A read at time `t` is
//! answered from the cache only if its region is fresh as of some
//! `t0 >= t - max_staleness`; otherwise (a partition, a slow watch, a lost
//! connection, a probe that failed) it goes to the cluster, linearizable,
//! and the cache catches up on its own. A split or merge of a region, a
//! watch whose history is gone, or a probe that finds the region changed
//! starts a resync: everything is loaded again (reads go to the cluster
//! meanwhile). Only the client's own monotonic clock is used.
//!
//! Servers send a watch's progress once a second when it has no changes,
//! so an idle region proves a probe up to about a second after it; with
//! `max_staleness` under about 1.5 s idle regions are answered from the
//! cluster part of the time.
//!
//! # What it does not give
//! A cached read is not linearizable: it may miss writes of the last
//! `max_staleness`, and two keys in different regions may be seen at
//! different moments. Use [`AsyncClient::get`] where that matters. Expiry
//! (TTL) is judged by the client's clock: a value past its expiry by it is
//! read from the cluster, but a client clock behind the cluster's may show
//! a value the cluster has expired until the expiry's change arrives.
//! A list of keys may hold at most 1,024 keys of one region (a watch's
//! limit): more, and its loads fail (see [`Cached::last_reload`]).
//!
//! # Bounds
//! At most [`CacheOptions::entries_max`] keys and
//! [`CacheOptions::bytes_max`] bytes of keys and values. A prefix larger
//! than that is cached in part: keys not held are read from the cluster
//! (and kept, if a read proves nothing changed them meanwhile and there is
//! room).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use corekv_types::watch::{Change, ChangeKind};
use corekv_types::{route_hash, Consistency};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{AsyncClient, Routed};
use crate::client::{ClientError, Result, Value};
use crate::message::{Op, Outcome, WatchRange};
use crate::routing::Routing;

/// What a cache follows.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Every key beginning with these bytes.
    Prefix(Bytes),
    /// These keys.
    Keys(Vec<Bytes>),
}

impl Selection {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            Selection::Prefix(p) => key.starts_with(p),
            Selection::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// Settings of a cache.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// A value is never older than this when read from the cache.
    pub max_staleness: Duration,
    /// Keys held at most (deleted keys of a list count too).
    pub entries_max: usize,
    /// Bytes of keys and values held at most.
    pub bytes_max: usize,
    /// Keys per page when loading a prefix.
    pub page: u32,
}

impl CacheOptions {
    /// A cache never staler than `max_staleness`, with room for 100,000
    /// keys and 64 MiB.
    pub fn new(max_staleness: Duration) -> CacheOptions {
        CacheOptions {
            max_staleness,
            entries_max: 100_000,
            bytes_max: 64 << 20,
            page: 1000,
        }
    }
}

/// Counters of a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads the cache could not answer (not held, or its region not
    /// provably fresh); [`Cached::get`] read them from the cluster.
    pub misses: u64,
    /// Held values replaced or removed by a change.
    pub invalidations: u64,
    /// Times everything was loaded again (after a split, a lost history).
    pub resyncs: u64,
    /// Keys held.
    pub entries: usize,
    /// Bytes of keys and values held.
    pub bytes: usize,
    /// Regions followed.
    pub regions: usize,
    /// Regions provably fresh within the bound now.
    pub fresh_regions: usize,
    /// A prefix cache holds every key under its prefix (it fit within the
    /// bounds): a key it does not hold has no live value. Always false for
    /// a cache of keys.
    pub complete: bool,
}

/// A cache of a prefix or of keys (see the module documentation). Cheap to
/// share by reference; dropping it stops its watches.
pub struct Cached {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    client: AsyncClient,
    what: Selection,
    opts: CacheOptions,
    view: RwLock<View>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    resyncs: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// Why the last load ended (empty: none ended).
    last_reload: std::sync::Mutex<String>,
}

#[derive(Default)]
struct View {
    /// Bumped by every resync: tasks of an earlier one change nothing.
    generation: u64,
    /// The regions followed, by first hash; empty while loading.
    regions: Vec<RegionView>,
    entries: HashMap<Bytes, Entry>,
    bytes: usize,
    /// Every key of the selection is held (absent = no live value).
    complete: bool,
}

struct RegionView {
    routed: Routed,
    start_hash: u64,
    /// 0 = the end of the hash space.
    end_hash: u64,
    /// Loaded, and its watch running.
    loaded: bool,
    /// Every change up to here was applied.
    progress: u64,
    /// Probes answered but not yet caught up with: (sent at, index).
    proofs: Vec<(Instant, u64)>,
    /// Everything the region had at this moment is here.
    fresh_as_of: Option<Instant>,
    /// Changes of keys not held, seen since the start (a read that saw
    /// none of them may keep what it read).
    dropped: u64,
    /// A read asked for a key of the region since the last probe.
    asked: std::sync::atomic::AtomicBool,
}

impl RegionView {
    fn contains(&self, hash: u64) -> bool {
        hash >= self.start_hash && (self.end_hash == 0 || hash < self.end_hash)
    }

    fn fresh(&self, now: Instant, bound: Duration) -> bool {
        self.loaded
            && self
                .fresh_as_of
                .is_some_and(|t| now.saturating_duration_since(t) <= bound)
    }

    fn caught_up(&mut self) {
        let progress = self.progress;
        let mut best = self.fresh_as_of;
        self.proofs.retain(|&(t0, index)| {
            if index <= progress {
                best = best.max(Some(t0));
                false
            } else {
                true
            }
        });
        self.fresh_as_of = best;
    }
}

/// A key's latest known state: a value, or none (deleted, or absent when
/// read) at `version`.
#[derive(Clone)]
struct Entry {
    value: Option<Value>,
    version: u64,
}

fn size_of(key: &[u8], e: &Entry) -> usize {
    key.len() + e.value.as_ref().map_or(0, |v| v.value.len()) + 32
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl View {
    fn region_of(&self, hash: u64) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.start_hash <= hash);
        let i = i.checked_sub(1)?;
        self.regions[i].contains(hash).then_some(i)
    }

    /// Puts `e` for `key` if it is newer than what is held, within the
    /// bounds. `insert`: a key not held may be added. Returns whether a
    /// held value changed.
    fn merge(&mut self, key: &Bytes, e: Entry, insert: bool, limits: (usize, usize)) -> Merge {
        match self.entries.get(key) {
            Some(old) if old.version >= e.version => Merge::Unchanged,
            Some(old) => {
                let grow = size_of(key, &e) as isize - size_of(key, old) as isize;
                if self.bytes as isize + grow > limits.1 as isize {
                    let old = self.entries.remove(key).expect("held");
                    self.bytes -= size_of(key, &old);
                    self.complete = false;
                    return Merge::Dropped;
                }
                self.bytes = (self.bytes as isize + grow) as usize;
                self.entries.insert(key.clone(), e);
                Merge::Changed
            }
            None if !insert => Merge::Dropped,
            None => {
                let size = size_of(key, &e);
                if self.entries.len() >= limits.0 || self.bytes + size > limits.1 {
                    self.complete = false;
                    return Merge::Dropped;
                }
                self.bytes += size;
                self.entries.insert(key.clone(), e);
                Merge::Added
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Merge {
    Unchanged,
    Changed,
    Added,
    /// Not held (no room, or not to be added).
    Dropped,
}

impl AsyncClient {
    /// A local cache of `what`, never staler than `opts.max_staleness`
    /// (see [`cache`](self::cache)). Returns at once; reads go to the
    /// cluster until the first load is done.
    pub fn cached(&self, what: Selection, opts: CacheOptions) -> Cached {
        let shared = Arc::new(Shared {
            client: self.clone(),
            what,
            opts,
            view: RwLock::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            changes: broadcast::channel(1024).0,
            last_reload: Default::default(),
        });
        let task = tokio::spawn(run(shared.clone())).abort_handle();
        Cached { shared, task }
    }
}

impl Cached {
    /// Reads `key`: from the cache when it holds it and its region is
    /// provably fresh within the bound, else from the cluster
    /// (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        if let Some(v) = self.get_cached(key) {
            return Ok(v);
        }
        let s = &self.shared;
        if !s.what.covers(key) {
            return s.client.get(key, Consistency::Linearizable).await;
        }
        // Kept only if no change of a key not held reached the region
        // while the read was under way (that change may be newer).
        let hash = route_hash(key);
        // A complete prefix has every change already: it takes none from
        // reads (a delete it applied meanwhile would be undone).
        let seen = {
            let v = s.view.read().unwrap();
            v.region_of(hash)
                .filter(|&i| v.regions[i].loaded && !v.complete)
                .map(|i| (v.generation, v.regions[i].dropped))
        };
        let got = s.client.get(key, Consistency::Linearizable).await?;
        // An absence is not kept: a read does not say at which version the
        // key was absent, and an older put still on its way would look
        // newer.
        let Some(value) = got.clone() else {
            return Ok(None);
        };
        let e = Entry {
            version: value.version,
            value: Some(value),
        };
        let limits = (s.opts.entries_max, s.opts.bytes_max);
        let mut v = s.view.write().unwrap();
        let key = Bytes::copy_from_slice(key);
        let now = v
            .region_of(hash)
            .map(|i| (v.generation, v.regions[i].dropped));
        if v.entries.contains_key(&key) {
            // A newer value of a key held is always safe to keep: later
            // changes are newer still, and a delete would have removed it
            // or left a newer version. One that does not fit removes the
            // key: that counts as a change not held, so an older read
            // under way cannot put its value back.
            if v.merge(&key, e, false, limits) == Merge::Dropped {
                if let Some(i) = v.region_of(hash) {
                    v.regions[i].dropped += 1;
                }
            }
        } else if seen.is_some() && now == seen && !v.complete {
            v.merge(&key, e, true, limits);
        }
        Ok(got)
    }

    /// The cache's answer for `key` alone: `None` if it cannot give one
    /// within the bound (not held, or its region not provably fresh);
    /// `Some(None)` if the key has no live value.
    pub fn get_cached(&self, key: &[u8]) -> Option<Option<Value>> {
        let s = &self.shared;
        if !s.what.covers(key) {
            return None;
        }
        let answer = self.answer(key);
        let counter = if answer.is_some() { &s.hits } else { &s.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    fn answer(&self, key: &[u8]) -> Option<Option<Value>> {
        let s = &self.shared;
        let v = s.view.read().unwrap();
        // The clock is read with the view held: what is returned is what
        // the cache held at `now`.
        let now = Instant::now();
        let r = &v.regions[v.region_of(route_hash(key))?];
        r.asked.store(true, Ordering::Relaxed);
        if !r.fresh(now, s.opts.max_staleness) {
            return None;
        }
        match v.entries.get(key) {
            Some(e) => match &e.value {
                // Past its expiry by this machine's clock: the region's
                // clock decides, ask it.
                Some(val) if val.expire_at_ms != 0 && val.expire_at_ms <= unix_ms() => None,
                value => Some(value.clone()),
            },
            None if v.complete => Some(None),
            None => None,
        }
    }

    /// The changes applied to the cache from now on (the load's values are
    /// not repeated). A receiver that falls more than 1024 changes behind
    /// loses the oldest ([`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// Why the cache last loaded again (a split, a lost history, …); empty
    /// if it never did.
    pub fn last_reload(&self) -> String {
        self.shared.last_reload.lock().unwrap().clone()
    }

    /// Counters and size.
    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        let v = s.view.read().unwrap();
        let now = Instant::now();
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
            entries: v.entries.len(),
            bytes: v.bytes,
            regions: v.regions.len(),
            fresh_regions: v
                .regions
                .iter()
                .filter(|r| r.fresh(now, s.opts.max_staleness))
                .count(),
            complete: v.complete,
        }
    }
}

/// Loads and follows, again after anything that needs a reload.
async fn run(s: Arc<Shared>) {
    let mut first = true;
    let mut pause = Duration::from_millis(100);
    loop {
        if !first {
            s.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let started = Instant::now();
        let why = follow(&s).await;
        {
            let mut v = s.view.write().unwrap();
            let generation = v.generation + 1;
            *v = View {
                generation,
                ..View::default()
            };
        }
        *s.last_reload.lock().unwrap() = why.to_string();
        // A load that keeps failing soon is retried less and less often.
        pause = if started.elapsed() < Duration::from_secs(30) {
            (pause * 2).min(Duration::from_secs(5))
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(pause).await;
    }
}

/// One load and the watches after it; returns what ended them.
async fn follow(s: &Arc<Shared>) -> ClientError {
    if let Err(e) = s.client.refresh().await {
        return e;
    }
    let routes = s.client.routes();
    let mut regions: Vec<RegionView> = routes
        .iter()
        .filter(|r| !r.region.is_meta())
        .filter(|r| match &s.what {
            Selection::Prefix(_) => true,
            Selection::Keys(keys) => keys.iter().any(|k| r.region.contains(route_hash(k))),
        })
        .map(|r| RegionView {
            routed: (r.region.id, r.region.epoch),
            start_hash: r.region.start_hash,
            end_hash: r.region.end_hash,
            loaded: false,
            progress: 0,
            proofs: Vec::new(),
            fresh_as_of: None,
            dropped: 0,
            // Proven once after the load, then when read.
            asked: true.into(),
        })
        .collect();
    regions.sort_by_key(|r| r.start_hash);
    let generation = {
        let mut v = s.view.write().unwrap();
        v.regions = regions;
        v.complete = matches!(s.what, Selection::Prefix(_));
        v.generation
    };
    let targets: Vec<(Routed, u64, u64)> = {
        let v = s.view.read().unwrap();
        v.regions
            .iter()
            .map(|r| (r.routed, r.start_hash, r.end_hash))
            .collect()
    };
    let mut tasks = JoinSet::new();
    for t in targets {
        let s = s.clone();
        tasks.spawn(async move { region(&s, generation, t).await });
    }
    match tasks.join_next().await {
        Some(Ok(e)) => e,
        Some(Err(e)) => ClientError::Protocol(format!("cache task failed: {e}")),
        None => ClientError::Protocol("nothing to follow".into()),
    }
}

/// Runs `f` on the region's view if the load `generation` is still the
/// current one.
fn with_region<T>(
    s: &Shared,
    generation: u64,
    routed: Routed,
    f: impl FnOnce(&mut View, usize) -> T,
) -> Option<T> {
    let mut v = s.view.write().unwrap();
    if v.generation != generation {
        return None;
    }
    let i = v.regions.iter().position(|r| r.routed == routed)?;
    Some(f(&mut v, i))
}

/// Loads one region, then follows it (watch and probes) until something
/// needs a reload.
async fn region(
    s: &Arc<Shared>,
    generation: u64,
    (routed, start_hash, end_hash): (Routed, u64, u64),
) -> ClientError {
    let limits = (s.opts.entries_max, s.opts.bytes_max);
    let range = WatchRange {
        prefix: match &s.what {
            Selection::Prefix(p) => p.clone(),
            Selection::Keys(_) => Bytes::new(),
        },
        start_hash,
        end_hash,
    };
    let keys: Vec<Bytes> = match &s.what {
        Selection::Prefix(_) => Vec::new(),
        Selection::Keys(keys) => {
            let mut ks: Vec<Bytes> = keys
                .iter()
                .filter(|k| {
                    let h = route_hash(k);
                    h >= start_hash && (end_hash == 0 || h < end_hash)
                })
                .cloned()
                .collect();
            ks.sort();
            ks.dedup();
            ks
        }
    };
    let spec = WatchSpec { keys, range };
    let probe = probe_of(&s.what, &spec, (start_hash, end_hash));
    let load_page = |v: &mut View, items: Vec<Change>| {
        for c in items {
            let e = Entry {
                version: c.version,
                value: Some(Value {
                    value: c.value,
                    version: c.version,
                    expire_at_ms: c.expire_at_ms,
                }),
            };
            v.merge(&c.key, e, true, limits);
        }
    };
    // The first page (or, for keys, a probe) gives the index the watch
    // starts from. The watch starts before the rest of the load, so a long
    // load of a busy region does not outrun the region's change history;
    // its frames wait in the link's queue and are applied once the load is
    // done (the region serves nothing until a probe sent after the load is
    // caught up with, so what an early frame briefly undoes is never seen).
    let (first_page, from) = match &s.what {
        Selection::Prefix(prefix) => {
            match scan(s, routed, start_hash, prefix.clone(), s.opts.page).await {
                Ok((items, next, index)) => (Some((items, next)), index),
                Err(e) => return e,
            }
        }
        Selection::Keys(_) => match scan(s, routed, probe.0, probe.1.clone(), 1).await {
            Ok(p) => (None, p.2),
            Err(e) => return e,
        },
    };
    let mut watch = match s.client.open_watch(routed, spec.op(from)).await {
        Ok(w) => w,
        Err(e) => return e.unwrap_or_else(|| unavailable("no leader accepted the watch")),
    };
    if let (Some((items, mut next)), Selection::Prefix(prefix)) = (first_page, &s.what) {
        if with_region(s, generation, routed, |v, _| load_page(v, items)).is_none() {
            return stale_load();
        }
        while let Some(from_hash) = next.filter(|n| *n != end_hash) {
            let page = match scan(s, routed, from_hash, prefix.clone(), s.opts.page).await {
                Ok(p) => p,
                Err(e) => return e,
            };
            if with_region(s, generation, routed, |v, _| load_page(v, page.0)).is_none() {
                return stale_load();
            }
            next = page.1;
        }
    }
    let first = std::mem::take(&mut watch.first);
    if apply(s, generation, routed, first).is_none() {
        return stale_load();
    }
    // A list's values, read now: the watch has every change since `from`,
    // and each read is at or after it, so the newer of the two is current.
    for k in &spec.keys {
        let got = match s.client.get(k, Consistency::Linearizable).await {
            Ok(g) => g,
            Err(e) => return e,
        };
        let e = Entry {
            version: got.as_ref().map_or(0, |g| g.version),
            value: got,
        };
        if with_region(s, generation, routed, |v, _| v.merge(k, e, true, limits)).is_none() {
            return stale_load();
        }
    }
    let loaded = with_region(s, generation, routed, |v, i| {
        let r = &mut v.regions[i];
        r.loaded = true;
        r.progress = r.progress.max(from);
        r.caught_up();
    });
    if loaded.is_none() {
        return stale_load();
    }
    let mut both = JoinSet::new();
    both.spawn(probe_loop(s.clone(), generation, routed, probe));
    both.spawn(follow_watch(
        s.clone(),
        generation,
        routed,
        (spec, from),
        watch,
    ));
    match both.join_next().await {
        Some(Ok(e)) => e,
        Some(Err(e)) => ClientError::Protocol(format!("cache task failed: {e}")),
        None => stale_load(),
    }
}

/// Where a region's probe scans: from its last hash (so it looks at a
/// record or two, not a page), within what the cache follows (so a user
/// allowed to read only that may send it).
fn probe_of(
    what: &Selection,
    spec: &WatchSpec,
    (start_hash, end_hash): (u64, u64),
) -> (u64, Bytes) {
    // The meta region owns the last hash of all: a data region ends before.
    let last = if end_hash == 0 {
        corekv_types::META_HASH - 1
    } else {
        end_hash - 1
    };
    let prefix = match what {
        Selection::Prefix(p) => p.clone(),
        Selection::Keys(_) => spec.keys.first().cloned().unwrap_or_default(),
    };
    (last.max(start_hash), prefix)
}

/// What a region's watch asks for.
struct WatchSpec {
    keys: Vec<Bytes>,
    range: WatchRange,
}

impl WatchSpec {
    fn op(&self, from_version: u64) -> Op {
        Op::Watch {
            keys: self.keys.clone(),
            from_version,
            prefix: self.keys.is_empty().then(|| self.range.clone()),
        }
    }
}

/// Applies the region's watch until something needs a reload; follows the
/// leader when it moves or the connection breaks.
async fn follow_watch(
    s: Arc<Shared>,
    generation: u64,
    routed: Routed,
    (spec, mut cursor): (WatchSpec, u64),
    mut watch: super::OpenWatch,
) -> ClientError {
    loop {
        // Servers send progress every second; silence is a lost link.
        let next = tokio::time::timeout(Duration::from_secs(3), watch.rx.recv()).await;
        // Otherwise the link broke, or fell silent.
        if let Ok(Some(Ok((resp, _)))) = next {
            match resp.result {
                Ok(Outcome::Events { progress, events }) => {
                    cursor = cursor.max(progress);
                    if apply(&s, generation, routed, (progress, events)).is_none() {
                        return stale_load();
                    }
                    continue;
                }
                Ok(other) => return ClientError::Protocol(format!("watch answered {other:?}")),
                // The leader moved (or is stopping): follow it. Anything
                // else (a split, a lost history) needs a reload.
                Err(e) => match s.client.learn(routed, &e) {
                    Routing::Retry { .. } | Routing::Backoff => {}
                    _ => return crate::client::wire_to_client(e),
                },
            }
        }
        // The same watch, from where it got, wherever the leader is now.
        watch = loop {
            match s.client.open_watch(routed, spec.op(cursor)).await {
                Ok(w) => break w,
                Err(Some(e)) => return e,
                Err(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let first = std::mem::take(&mut watch.first);
        if apply(&s, generation, routed, first).is_none() {
            return stale_load();
        }
    }
}

fn stale_load() -> ClientError {
    ClientError::Protocol("a newer load replaced this one".into())
}

fn unavailable(why: &str) -> ClientError {
    ClientError::Unavailable {
        attempts: 1,
        last: why.into(),
    }
}

/// Applies a watch answer to the region's view; `None` if the load was
/// replaced.
fn apply(
    s: &Shared,
    generation: u64,
    routed: Routed,
    (progress, events): (u64, Vec<Change>),
) -> Option<()> {
    let limits = (s.opts.entries_max, s.opts.bytes_max);
    let keys_list = matches!(s.what, Selection::Keys(_));
    let mut told = Vec::new();
    with_region(s, generation, routed, |v, i| {
        let mut last = 0;
        for c in events {
            last = last.max(c.version);
            if !s.what.covers(&c.key) {
                continue;
            }
            let e = Entry {
                version: c.version,
                value: (c.kind == ChangeKind::Put).then(|| Value {
                    value: c.value.clone(),
                    version: c.version,
                    expire_at_ms: c.expire_at_ms,
                }),
            };
            // A complete prefix takes new keys; a list holds every key
            // (a deleted one as a version, so an older read cannot bring
            // its value back); a partial prefix only updates what it holds.
            let insert = keys_list || v.complete;
            let merged = if e.value.is_none() && !keys_list && v.complete {
                match v.entries.get(&c.key) {
                    Some(old) if old.version < e.version => {
                        let old = v.entries.remove(&c.key).expect("held");
                        v.bytes -= size_of(&c.key, &old);
                        Merge::Changed
                    }
                    _ => Merge::Unchanged,
                }
            } else {
                v.merge(&c.key, e, insert, limits)
            };
            match merged {
                Merge::Changed => {
                    s.invalidations.fetch_add(1, Ordering::Relaxed);
                    told.push(c);
                }
                Merge::Added => told.push(c),
                Merge::Dropped => v.regions[i].dropped += 1,
                Merge::Unchanged => {}
            }
        }
        let r = &mut v.regions[i];
        r.progress = r.progress.max(progress).max(last);
        r.caught_up();
    })?;
    for c in told {
        let _ = s.changes.send(c);
    }
    Some(())
}

/// One linearizable page of region `routed` from `from_hash`: (items, next
/// hash, the index it was read at). An answer from another region (the
/// table changed) or from a node that does not give the index is an
/// error: the load starts again.
async fn scan(
    s: &Shared,
    routed: Routed,
    from_hash: u64,
    prefix: Bytes,
    limit: u32,
) -> Result<(Vec<Change>, Option<u64>, u64)> {
    let op = Op::Scan {
        from_hash,
        limit,
        keys_only: false,
        consistency: Consistency::Linearizable,
        prefix,
    };
    let (outcome, _, by) = s.client.execute(from_hash, op, true).await?;
    if !super::same_range(by, routed) {
        return Err(ClientError::Protocol(format!(
            "region {} changed (split or merged)",
            routed.0
        )));
    }
    match outcome {
        Outcome::Scanned { read_index: 0, .. } => Err(ClientError::Protocol(
            "the node does not say at which index it read (a release before the cache): \
             the cache cannot prove freshness"
                .into(),
        )),
        Outcome::Scanned {
            items,
            next_hash,
            read_index,
        } => Ok((items, next_hash, read_index)),
        other => Err(ClientError::Protocol(format!("scan answered {other:?}"))),
    }
}

/// Every quarter of the bound, if the region was read since the last time,
/// asks it for its applied index (linearizable) and records the proof; a
/// region nobody reads costs no probes (its next read goes to the cluster
/// and starts them again). Returns when the region changed.
async fn probe_loop(
    s: Arc<Shared>,
    generation: u64,
    routed: Routed,
    (from_hash, prefix): (u64, Bytes),
) -> ClientError {
    let every = (s.opts.max_staleness / 4).max(Duration::from_millis(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let asked = with_region(&s, generation, routed, |v, i| {
            v.regions[i].asked.swap(false, Ordering::Relaxed)
        });
        match asked {
            None => return stale_load(),
            Some(false) => continue,
            Some(true) => {}
        }
        let t0 = Instant::now();
        // A probe answered after the bound proves nothing still useful.
        let probe = tokio::time::timeout(
            s.opts.max_staleness,
            scan(&s, routed, from_hash, prefix.clone(), 1),
        )
        .await;
        let index = match probe {
            Ok(Ok((_, _, index))) => index,
            Ok(Err(ClientError::Protocol(why))) => return ClientError::Protocol(why),
            // Unreachable, no leader, timed out: no proof this time.
            Ok(Err(_)) | Err(_) => continue,
        };
        let kept = with_region(&s, generation, routed, |v, i| {
            let r = &mut v.regions[i];
            r.proofs.push((t0, index));
            r.caught_up();
        });
        if kept.is_none() {
            return stale_load();
        }
    }
}
