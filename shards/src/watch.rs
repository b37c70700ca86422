//! The watches one shard serves, for the regions it leads.
//!
//! A watch follows the changes of some keys of one region. It is *synced*
//! while it gets changes straight from the shard's apply batches, right after
//! they are written; it is *catching up* while it reads them from the
//! region's change history (`corekv_engine::watch`): after registering with
//! an older version, or after its connection fell behind. A watch never
//! holds more than [`WatchLimits::frames_max`] frames on its connection;
//! past that it stops taking live changes and catches up from the history
//! once the client reads again, so a slow client costs history reads, not
//! memory. If it falls behind the history's floor, it ends with `Compacted`
//! and the keys' current values. A watch ends with `NotLeader` when the
//! replica stops leading its region; the client resumes elsewhere from the
//! last version it saw.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use corekv_engine::watch::{self, Change, ChangeKind, EntryChanges};
use corekv_engine::{apply, route_hash, Peer, Replicas};
use corekv_net::message::{Outcome, Response, WatchRange, WireError};
use corekv_net::server::WatchLink;
use corekv_net::wire::ErrorCode;

/// Where a watch's frames go: a connection on some shard of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WatchTarget {
    /// Shard holding the connection.
    pub shard: usize,
    /// Connection id on that shard.
    pub conn: u64,
    /// Id of the watch request (every frame answers it).
    pub watch_id: u64,
}

/// Bounds of the watches of one shard.
#[derive(Clone, Debug)]
pub struct WatchLimits {
    /// Watches served at once.
    pub watchers_max: usize,
    /// Keys of one watch.
    pub keys_max: usize,
    /// Frames of one watch queued on its connection at once.
    pub frames_max: usize,
    /// Changes per frame (a frame never splits one entry's changes).
    pub events_per_frame: usize,
    /// History records read per round for catching-up watches, in total.
    pub catchup_entries_per_round: usize,
    /// A watch with nothing to send gets its progress this often, ms.
    pub heartbeat_ms: u64,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            watchers_max: 10_000,
            keys_max: 1024,
            frames_max: 16,
            events_per_frame: 256,
            catchup_entries_per_round: 4096,
            heartbeat_ms: 1000,
        }
    }
}

/// What a watch follows: some keys, or every key under a prefix in a range
/// of hashes (one region's part of the prefix, as the client saw it).
enum Filter {
    Keys(HashSet<Bytes, ahash::RandomState>),
    Prefix(WatchRange),
}

/// The hashes `[start, end)` of a range (`end` 0 = to the end of the hash
/// space) as an inclusive last hash.
fn last_hash(end: u64) -> u64 {
    if end == 0 {
        u64::MAX
    } else {
        end - 1
    }
}

impl Filter {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Filter::Keys(keys) => keys.contains(key),
            Filter::Prefix(r) => {
                key.starts_with(&r.prefix) && {
                    let h = route_hash(key);
                    h >= r.start_hash && h <= last_hash(r.end_hash)
                }
            }
        }
    }

    /// Whether some of what the watch follows is outside `peer`'s region
    /// now: `None` if nothing is; else the log index of the earliest split
    /// since `version` that moved some of it away (`Some(None)` when this
    /// replica does not know it).
    fn moved(&self, peer: &Peer, version: u64) -> Option<Option<u64>> {
        let region = peer.region();
        match self {
            Filter::Keys(keys) => {
                let mut moved = keys
                    .iter()
                    .map(|k| route_hash(k))
                    .filter(|h| !region.contains(*h))
                    .peekable();
                moved.peek()?;
                // The earliest, if they left in different splits: a later
                // one's keys then get `Compacted`, never a gap.
                Some(
                    moved
                        .map(|h| peer.split_index_moving(version, h))
                        .collect::<Option<Vec<u64>>>()
                        .and_then(|v| v.into_iter().min()),
                )
            }
            Filter::Prefix(r) => {
                if r.start_hash < region.start_hash {
                    // Hashes before the region were never split off it.
                    return Some(None);
                }
                let last = last_hash(r.end_hash);
                if last <= last_hash(region.end_hash) {
                    return None;
                }
                // Every split since `version` that moved a hash of the
                // range moved the range's last one too (a split moves the
                // hashes at and past its point): the first of them is the
                // earliest.
                Some(peer.split_index_moving(version, last))
            }
        }
    }

    /// Like [`Filter::moved`] for a prefix range, by log index: the first
    /// split at or after `index` that moved some of the range away.
    fn moved_since(&self, peer: &Peer, index: u64) -> Option<Option<u64>> {
        let region = peer.region();
        let Filter::Prefix(r) = self else {
            return self.moved(peer, 0);
        };
        if r.start_hash < region.start_hash {
            return Some(None);
        }
        let last = last_hash(r.end_hash);
        if last <= last_hash(region.end_hash) {
            return None;
        }
        Some(peer.split_index_after(index, last))
    }

    /// The current values of what the watch follows, for `Compacted`;
    /// a prefix with more than `max` live keys sends none (the client
    /// lists the prefix instead).
    fn current(
        &self,
        db: &rocksdb::DB,
        region: &corekv_engine::Region,
        max: usize,
        wall_ms: u64,
    ) -> Result<Vec<Change>, String> {
        let keys: Vec<Bytes> = match self {
            Filter::Keys(keys) => keys.iter().cloned().collect(),
            Filter::Prefix(r) => {
                match prefix_keys(db, r, region, max).map_err(|e| e.to_string())? {
                    Some(found) => found,
                    None => return Ok(Vec::new()),
                }
            }
        };
        let mut current = Vec::with_capacity(keys.len());
        for k in keys {
            let change = match apply::get(db, &k, wall_ms).map_err(|e| e.to_string())? {
                Some(r) => Change {
                    key: k,
                    kind: ChangeKind::Put,
                    value: r.value,
                    version: r.version,
                    expire_at_ms: r.expire_at_ms,
                },
                None if matches!(self, Filter::Prefix(_)) => continue,
                None => Change {
                    key: k,
                    kind: ChangeKind::Delete,
                    value: Bytes::new(),
                    version: 0,
                    expire_at_ms: 0,
                },
            };
            current.push(change);
        }
        Ok(current)
    }
}

/// Records a `Compacted` answer looks at, at most, for a prefix's keys.
const CURRENT_EXAMINED_MAX: usize = 100_000;

/// The keys under the range's prefix stored in its hashes within `region`
/// (expired ones too: the caller reads each); `None` when there are more
/// than `max`, or more than [`CURRENT_EXAMINED_MAX`] records to look at.
fn prefix_keys(
    db: &rocksdb::DB,
    r: &WatchRange,
    region: &corekv_engine::Region,
    max: usize,
) -> corekv_engine::Result<Option<Vec<Bytes>>> {
    use corekv_engine::keys;
    let start = r.start_hash.max(region.start_hash);
    let end = match (r.end_hash, region.end_hash) {
        (0, e) | (e, 0) => e,
        (a, b) => a.min(b),
    };
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::data_range_end(end));
    opts.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(corekv_engine::db::cf(db, keys::CF_DATA), opts);
    it.seek(keys::data_range_start(start));
    let mut out = Vec::new();
    let mut examined = 0;
    while it.valid() {
        examined += 1;
        if examined > CURRENT_EXAMINED_MAX {
            return Ok(None);
        }
        if let Some((_, key)) = it.key().and_then(keys::split_data_key) {
            if key.starts_with(&r.prefix) {
                if out.len() == max {
                    return Ok(None);
                }
                out.push(Bytes::copy_from_slice(key));
            }
        }
        it.next();
    }
    it.status()?;
    Ok(Some(out))
}

struct Watcher {
    region: u64,
    /// The region's epoch when the watch was last checked to be in it.
    epoch: corekv_engine::Epoch,
    filter: Filter,
    /// Every change up to this version was sent.
    cursor: u64,
    synced: bool,
    link: Arc<WatchLink>,
    last_sent_ms: u64,
    /// The region split off `parent` at log index `at` on this node, and
    /// the watch resumes from before that: the changes up to `at` come from
    /// the parent's history here.
    parent: Option<(u64, u64)>,
    /// A split at this log index moved part of what the watch follows
    /// away: it gets the changes up to there, then ends.
    cut: Option<u64>,
}

/// A frame to send: the response to a watch request, over its link.
pub struct WatchFrame {
    /// Destination.
    pub target: WatchTarget,
    /// The response (events or a final error).
    pub response: Response,
    /// The watch's link (counts the frame until it is written).
    pub link: Arc<WatchLink>,
}

/// The registry of one shard.
pub struct Watches {
    limits: WatchLimits,
    watchers: HashMap<WatchTarget, Watcher, ahash::RandomState>,
    /// Key watches by region and key.
    by_key: HashMap<(u64, Bytes), Vec<WatchTarget>, ahash::RandomState>,
    /// Prefix watches by region.
    by_prefix: HashMap<u64, Vec<WatchTarget>, ahash::RandomState>,
    /// Watches by region.
    by_region: HashMap<u64, Vec<WatchTarget>, ahash::RandomState>,
    /// Changes sent so far.
    events_sent: u64,
    /// History reads so far.
    catchups: u64,
}

fn events(progress: u64, events: Vec<Change>) -> Result<Outcome, WireError> {
    Ok(Outcome::Events { progress, events })
}

/// Splits changes (in version order) into frames of at most `max` changes,
/// never splitting one version. Returns (last version of the frame, frame).
fn frames_of(changes: Vec<Change>, max: usize) -> Vec<(u64, Vec<Change>)> {
    let mut out: Vec<(u64, Vec<Change>)> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some((v, f)) if f.len() < max || *v == c.version => {
                *v = c.version;
                f.push(c);
            }
            _ => out.push((c.version, vec![c])),
        }
    }
    out
}

impl Watches {
    /// An empty registry.
    pub fn new(limits: WatchLimits) -> Watches {
        Watches {
            limits,
            watchers: HashMap::default(),
            by_key: HashMap::default(),
            by_prefix: HashMap::default(),
            by_region: HashMap::default(),
            events_sent: 0,
            catchups: 0,
        }
    }

    /// (watches served, changes sent, history reads) for metrics.
    pub fn figures(&self) -> (usize, u64, u64) {
        (self.watchers.len(), self.events_sent, self.catchups)
    }

    /// Watches served now.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// True when no watch is served.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    fn send(
        &mut self,
        target: WatchTarget,
        result: Result<Outcome, WireError>,
        now_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) {
        let Some(w) = self.watchers.get_mut(&target) else {
            return;
        };
        w.last_sent_ms = now_ms;
        // Counted from now until written, wherever it travels meanwhile.
        w.link
            .outstanding
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        out.push(WatchFrame {
            target,
            response: Response {
                id: target.watch_id,
                result,
            },
            link: w.link.clone(),
        });
    }

    /// Ends a watch with a final error.
    fn end(&mut self, target: WatchTarget, e: WireError, out: &mut Vec<WatchFrame>) {
        self.send(target, Err(e), 0, out);
        self.remove(target);
    }

    fn remove(&mut self, target: WatchTarget) -> bool {
        let Some(w) = self.watchers.remove(&target) else {
            return false;
        };
        match w.filter {
            Filter::Keys(keys) => {
                for k in keys {
                    unlist(&mut self.by_key, (w.region, k), target);
                }
            }
            Filter::Prefix(_) => unlist(&mut self.by_prefix, w.region, target),
        }
        unlist(&mut self.by_region, w.region, target);
        true
    }

    /// Starts a watch of `keys` of the region `peer` leads, or of the keys
    /// under a prefix in a range of its hashes, after `from_version` (0 =
    /// from now). The first frame acknowledges it.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        target: WatchTarget,
        peer: &Peer,
        (keys, range, client_epoch): (Vec<Bytes>, Option<WatchRange>, corekv_engine::Epoch),
        from_version: u64,
        db: &rocksdb::DB,
        now_ms: u64,
        wall_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) -> Result<(), WireError> {
        if !peer.is_leader() {
            return Err(WireError::NotLeader {
                leader_node: peer.leader_node().unwrap_or(0),
                message: format!("not the leader of region {}", peer.region_id()),
            });
        }
        let filter = match range {
            Some(_) if !keys.is_empty() => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    "a watch follows keys or a prefix, not both",
                ));
            }
            Some(r) if r.end_hash != 0 && r.end_hash <= r.start_hash => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a prefix watch's hash range [{}, {}) is empty",
                        r.start_hash, r.end_hash
                    ),
                ));
            }
            Some(r) if r.prefix.len() > corekv_engine::config::KEY_BYTES_MAX => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a watched prefix has at most {} bytes, got {}",
                        corekv_engine::config::KEY_BYTES_MAX,
                        r.prefix.len()
                    ),
                ));
            }
            Some(r) => Filter::Prefix(r),
            None if keys.is_empty() || keys.len() > self.limits.keys_max => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a watch takes 1 to {} keys, got {}",
                        self.limits.keys_max,
                        keys.len()
                    ),
                ));
            }
            None => {
                let mut set =
                    HashSet::with_capacity_and_hasher(keys.len(), ahash::RandomState::new());
                set.extend(keys);
                Filter::Keys(set)
            }
        };
        // A watch resuming from before a split that moved some of what it
        // follows away first gets their changes up to the split from this
        // region's history, then ends (see `split_ending`); one resuming
        // after it is sent to the new regions.
        let epoch = peer.region().epoch;
        let mut cut = None;
        let moved = match &filter {
            Filter::Keys(_) => filter.moved(peer, client_epoch.version),
            // A range is cut by every split of its region: the one that
            // matters is the first at or after the version resumed from.
            Filter::Prefix(_) => filter.moved_since(peer, from_version),
        };
        if let Some(at) = moved {
            let at = if from_version == 0 { Some(0) } else { at };
            // Unknown (they were never here, or this replica was restored
            // from a snapshot taken after the split): the other regions
            // check the version against their own history.
            let unknown = at.is_none()
                && from_version != 0
                && matches!(&filter, Filter::Prefix(r) if r.start_hash >= peer.region().start_hash);
            if unknown {
                // A split this replica does not know cut the range: the
                // version may be past it, where the new regions number
                // versions apart from this one. Only the current values
                // are safe.
                let floor = peer.applied_index();
                let keys_max = self.limits.keys_max;
                return Err(compacted(
                    db,
                    (&filter, peer),
                    keys_max,
                    from_version,
                    floor,
                    wall_ms,
                ));
            }
            match at.unwrap_or(0) {
                at if from_version != 0 && from_version < at => cut = Some(at),
                at => {
                    return Err(WireError::EpochNotMatch {
                        regions: vec![peer.region().clone()],
                        from_version: at,
                        message: format!(
                            "the watch reaches past region {}: watch each region's part \
                             separately{}",
                            peer.region_id(),
                            if at > 0 {
                                format!(", the moved part from version {at}")
                            } else {
                                String::new()
                            }
                        ),
                    });
                }
            }
        }
        if self.watchers.contains_key(&target) {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("watch {} already runs on this connection", target.watch_id),
            ));
        }
        if self.watchers.len() >= self.limits.watchers_max {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!(
                    "this shard serves {} watches already (--watchers-max)",
                    self.limits.watchers_max
                ),
            ));
        }
        let applied = peer.applied_index();
        let floor = peer.history_floor();
        let mut parent = None;
        if from_version != 0 && from_version < floor {
            // A region split off here keeps no history from before the
            // split, but its parent's history on this node has it.
            match parent_history(db, peer.region_id(), from_version, floor) {
                Some(p) => parent = Some(p),
                None => {
                    let keys_max = self.limits.keys_max;
                    return Err(compacted(
                        db,
                        (&filter, peer),
                        keys_max,
                        from_version,
                        floor,
                        wall_ms,
                    ));
                }
            }
        }
        let cursor = if from_version == 0 {
            applied
        } else {
            from_version
        };
        let region = peer.region_id();
        match &filter {
            Filter::Keys(keys) => {
                for k in keys {
                    self.by_key
                        .entry((region, k.clone()))
                        .or_default()
                        .push(target);
                }
            }
            Filter::Prefix(_) => self.by_prefix.entry(region).or_default().push(target),
        }
        self.by_region.entry(region).or_default().push(target);
        self.watchers.insert(
            target,
            Watcher {
                region,
                epoch,
                filter,
                cursor,
                synced: cursor >= applied,
                link: Arc::new(WatchLink::default()),
                last_sent_ms: now_ms,
                parent,
                cut,
            },
        );
        self.send(target, events(cursor, Vec::new()), now_ms, out);
        Ok(())
    }

    /// Ends the watch `target`; true if it was running.
    pub fn cancel(&mut self, target: WatchTarget) -> bool {
        self.remove(target)
    }

    /// Hands the changes of this round's apply batch (already written) to
    /// the synced watches.
    pub fn on_changes(
        &mut self,
        entries: &[EntryChanges],
        replicas: &Replicas,
        now_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) {
        if self.watchers.is_empty() || entries.is_empty() {
            return;
        }
        let mut pending: HashMap<WatchTarget, Vec<Change>, ahash::RandomState> = HashMap::default();
        let mut last_index: HashMap<u64, u64, ahash::RandomState> = HashMap::default();
        for e in entries {
            if !self.by_region.contains_key(&e.region_id) {
                continue;
            }
            last_index.insert(e.region_id, e.index);
            let prefixed = self.by_prefix.get(&e.region_id);
            for c in &e.changes {
                let keyed = self.by_key.get(&(e.region_id, c.key.clone()));
                let ts = keyed.into_iter().flatten();
                for t in ts.chain(prefixed.into_iter().flatten()) {
                    let w = &self.watchers[t];
                    if w.synced && e.index > w.cursor && w.filter.matches(&c.key) {
                        pending.entry(*t).or_default().push(c.clone());
                    }
                }
            }
        }
        for (region, last) in last_index {
            let targets = self.by_region.get(&region).cloned().unwrap_or_default();
            for t in targets {
                let Some(w) = self.watchers.get(&t) else {
                    continue;
                };
                if !w.synced || w.cursor >= last {
                    continue;
                }
                // A split that cut what the watch follows stops it at the
                // split's index (`maintain` ends it there), so a cursor is
                // valid in every region the watch's keys went to; a split
                // this replica cannot place leaves it to `maintain`.
                let peer = replicas.peer(region);
                let limit = match (w.cut, peer) {
                    (Some(at), _) => Some(at),
                    (None, None) => {
                        self.watchers.get_mut(&t).expect("watch exists").synced = false;
                        continue;
                    }
                    (None, Some(p)) if p.region().epoch != w.epoch => {
                        match w.filter.moved(p, w.epoch.version) {
                            None => None,
                            Some(Some(at)) => Some(at),
                            Some(None) => {
                                self.watchers.get_mut(&t).expect("watch exists").synced = false;
                                continue;
                            }
                        }
                    }
                    (None, Some(_)) => None,
                };
                let upto = limit.map_or(last, |at| at.min(last));
                if w.cursor >= upto {
                    continue;
                }
                let mut changes = pending.remove(&t).unwrap_or_default();
                changes.retain(|c| c.version <= upto);
                self.deliver(t, changes, upto, now_ms, out);
            }
        }
    }

    /// Sends `changes` (every change of the watch's keys after its cursor up
    /// to `upto`) as frames while the connection has room; the rest waits
    /// for catch-up from the history.
    fn deliver(
        &mut self,
        t: WatchTarget,
        changes: Vec<Change>,
        upto: u64,
        now_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) {
        let frames = frames_of(changes, self.limits.events_per_frame);
        let n = frames.len();
        for (i, (last, frame)) in frames.into_iter().enumerate() {
            let w = self.watchers.get_mut(&t).expect("watch exists");
            if w.link.queued() >= self.limits.frames_max {
                w.synced = false;
                return;
            }
            // The last frame covers everything up to `upto`.
            let progress = if i + 1 == n { upto } else { last };
            w.cursor = progress;
            self.events_sent += frame.len() as u64;
            self.send(t, events(progress, frame), now_ms, out);
        }
        if n == 0 {
            if let Some(w) = self.watchers.get_mut(&t) {
                w.cursor = upto;
                // A long catch-up with nothing to send still says how far
                // it got, as synced watches do: clients take a silent
                // watch for a lost one.
                if now_ms.saturating_sub(w.last_sent_ms) >= self.limits.heartbeat_ms
                    && w.link.queued() < self.limits.frames_max
                {
                    self.send(t, events(upto, Vec::new()), now_ms, out);
                }
            }
        }
    }

    /// Catches watches up from the history, ends watches whose region this
    /// replica no longer leads or whose connection closed, and sends
    /// progress to idle ones. Run once per round, after `on_changes`.
    pub fn maintain(
        &mut self,
        replicas: &Replicas,
        db: &rocksdb::DB,
        now_ms: u64,
        wall_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) {
        if self.watchers.is_empty() {
            return;
        }
        let targets: Vec<WatchTarget> = self.watchers.keys().copied().collect();
        let mut budget = self.limits.catchup_entries_per_round;
        for t in targets {
            let w = &self.watchers[&t];
            if w.link.is_closed() {
                self.remove(t);
                continue;
            }
            let peer = replicas.peer(w.region).filter(|p| p.is_leader());
            let Some(peer) = peer else {
                let e = WireError::NotLeader {
                    leader_node: replicas
                        .peer(w.region)
                        .and_then(Peer::leader_node)
                        .unwrap_or(0),
                    message: format!(
                        "this replica no longer leads region {}: resume the watch from the last version seen",
                        w.region
                    ),
                };
                self.end(t, e, out);
                continue;
            };
            let applied = peer.applied_index();
            // A split cut what the watch follows at `cap`: it goes up to
            // there, then ends.
            let mut cap = applied;
            if w.cut.is_none() && peer.region().epoch != w.epoch {
                match w.filter.moved(peer, w.epoch.version) {
                    None => self.watchers.get_mut(&t).unwrap().epoch = peer.region().epoch,
                    Some(Some(at)) => self.watchers.get_mut(&t).unwrap().cut = Some(at),
                    Some(None) => {
                        // Where the split was is not known here (this
                        // replica came by a snapshot taken after it): the
                        // cursor may be past it, and the new regions number
                        // their versions apart from this one; only the
                        // current values are safe.
                        let keys_max = self.limits.keys_max;
                        let e =
                            compacted(db, (&w.filter, peer), keys_max, w.cursor, applied, wall_ms);
                        self.end(t, e, out);
                        continue;
                    }
                }
            }
            if let Some(at) = self.watchers[&t].cut {
                if let Some(e) = self.split_ending(t, peer, at, applied, now_ms, out) {
                    self.end(t, e, out);
                    continue;
                }
                cap = at.min(applied);
            }
            let w = &self.watchers[&t];
            if w.synced {
                // Entries without changes to anything still move progress.
                if now_ms.saturating_sub(w.last_sent_ms) >= self.limits.heartbeat_ms
                    && w.link.queued() < self.limits.frames_max
                {
                    let progress = w.cursor.max(applied);
                    self.watchers.get_mut(&t).unwrap().cursor = progress;
                    self.send(t, events(progress, Vec::new()), now_ms, out);
                }
                continue;
            }
            if budget == 0 || w.link.queued() >= self.limits.frames_max {
                continue;
            }
            // Before the split that made the region: the parent's history.
            let (source, upto) = match w.parent {
                Some((parent, at)) if w.cursor < at => {
                    if parent_history(db, w.region, w.cursor, at).is_none() {
                        let keys_max = self.limits.keys_max;
                        let e = compacted(db, (&w.filter, peer), keys_max, w.cursor, at, wall_ms);
                        self.end(t, e, out);
                        continue;
                    }
                    (parent, at)
                }
                _ => (w.region, cap),
            };
            if source == w.region && w.cursor < peer.history_floor() {
                let floor = peer.history_floor();
                let keys_max = self.limits.keys_max;
                let e = compacted(db, (&w.filter, peer), keys_max, w.cursor, floor, wall_ms);
                self.end(t, e, out);
                continue;
            }
            self.catchups += 1;
            let page =
                match watch::read(db, source, w.cursor, upto, budget, |k| w.filter.matches(k)) {
                    Ok(p) => p,
                    Err(err) => {
                        let e = WireError::new(
                            ErrorCode::Internal,
                            format!("reading the change history: {err}"),
                        );
                        self.end(t, e, out);
                        continue;
                    }
                };
            let scanned = (page.scanned_to - w.cursor).max(1);
            budget = budget.saturating_sub(usize::try_from(scanned).unwrap_or(usize::MAX));
            let scanned_to = page.scanned_to;
            self.deliver(t, page.changes, scanned_to, now_ms, out);
            let w = self.watchers.get_mut(&t).unwrap();
            if w.cursor >= applied && cap == applied {
                w.synced = true;
            }
            // Caught up to the split that cut it: ends now.
            if let Some(at) = w.cut.filter(|at| w.cursor >= *at) {
                if let Some(e) = self.split_ending(t, peer, at, applied, now_ms, out) {
                    self.end(t, e, out);
                }
            }
        }
    }
}

/// The parent history a watch of `region` resuming after `from` can read
/// (see [`Watcher::parent`]): `region` split off its parent on this node at
/// index `at` == `floor` (its own history starts there), and the parent's
/// history here still goes back to `from`.
fn parent_history(db: &rocksdb::DB, region: u64, from: u64, floor: u64) -> Option<(u64, u64)> {
    let (parent, at) = watch::origin(db, region).ok().flatten()?;
    let parent_floor = watch::floor(db, parent).ok().flatten()?;
    (at == floor && parent_floor <= from && from < at).then_some((parent, at))
}

impl Watches {
    /// A watch some of whose keys a split moved to another region: once it
    /// has everything up to the split, it gets progress up to the split and
    /// the error that ends it (`EpochNotMatch`, `current_version` = the split
    /// index: the moved keys resume there in their new region).
    fn split_ending(
        &mut self,
        t: WatchTarget,
        peer: &Peer,
        at: u64,
        applied: u64,
        now_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) -> Option<WireError> {
        let w = &self.watchers[&t];
        let reached = if w.synced { applied.min(at) } else { w.cursor };
        if reached < at {
            return None;
        }
        if at > 0 {
            self.send(t, events(at, Vec::new()), now_ms, out);
        }
        Some(WireError::EpochNotMatch {
            regions: vec![peer.region().clone()],
            from_version: at,
            message: format!(
                "region {} split at version {at}: watch each region's part separately, \
                 the moved part from version {at}",
                peer.region_id()
            ),
        })
    }
}

/// The `Compacted` error: the history after `from` is gone; the current
/// state of what the watch follows comes with it to restart from (for a
/// prefix with more than `keys_max` keys, none: the client lists it).
fn compacted(
    db: &rocksdb::DB,
    (filter, peer): (&Filter, &Peer),
    keys_max: usize,
    from: u64,
    floor: u64,
    wall_ms: u64,
) -> WireError {
    let current = match filter.current(db, peer.region(), keys_max, wall_ms) {
        Ok(c) => c,
        Err(err) => {
            return WireError::new(
                ErrorCode::Internal,
                format!("reading the current values: {err}"),
            )
        }
    };
    let relist = matches!(filter, Filter::Prefix(_)) && current.is_empty();
    WireError::Compacted {
        current,
        message: format!(
            "changes after version {from} are no longer kept (history starts after {floor}): \
             restart from the current values {}",
            if relist {
                "(list the prefix: more keys than a watch carries, or none)"
            } else {
                "sent with this error"
            }
        ),
    }
}

/// Takes `target` off `index[key]`, dropping the entry when it empties.
fn unlist<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, Vec<WatchTarget>, ahash::RandomState>,
    key: K,
    target: WatchTarget,
) {
    if let Some(v) = index.get_mut(&key) {
        v.retain(|t| *t != target);
        if v.is_empty() {
            index.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, version: u64) -> Change {
        Change {
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: ChangeKind::Put,
            value: Bytes::new(),
            version,
            expire_at_ms: 0,
        }
    }

    #[test]
    fn frames_never_split_a_version() {
        let changes = vec![c("a", 1), c("b", 1), c("c", 1), c("a", 2), c("b", 3)];
        let f = frames_of(changes, 2);
        let shape: Vec<(u64, usize)> = f.iter().map(|(v, f)| (*v, f.len())).collect();
        assert_eq!(shape, vec![(1, 3), (3, 2)]);
        assert!(frames_of(Vec::new(), 2).is_empty());
    }
}
