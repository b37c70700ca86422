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
use corekv_net::message::{Outcome, Response, WireError};
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

struct Watcher {
    region: u64,
    /// The region's epoch when the keys were last checked to be in it.
    epoch: corekv_engine::Epoch,
    keys: HashSet<Bytes, ahash::RandomState>,
    /// Every change up to this version was sent.
    cursor: u64,
    synced: bool,
    link: Arc<WatchLink>,
    last_sent_ms: u64,
    /// The region split off `parent` at log index `at` on this node, and
    /// the watch resumes from before that: the changes up to `at` come from
    /// the parent's history here.
    parent: Option<(u64, u64)>,
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
    /// Watches by region and key.
    by_key: HashMap<(u64, Bytes), Vec<WatchTarget>, ahash::RandomState>,
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
        for k in w.keys {
            let ix = (w.region, k);
            if let Some(v) = self.by_key.get_mut(&ix) {
                v.retain(|t| *t != target);
                if v.is_empty() {
                    self.by_key.remove(&ix);
                }
            }
        }
        if let Some(v) = self.by_region.get_mut(&w.region) {
            v.retain(|t| *t != target);
            if v.is_empty() {
                self.by_region.remove(&w.region);
            }
        }
        true
    }

    /// Starts a watch of `keys` of the region `peer` leads, after
    /// `from_version` (0 = from now). The first frame acknowledges it.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        target: WatchTarget,
        peer: &Peer,
        (keys, client_epoch): (Vec<Bytes>, corekv_engine::Epoch),
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
        if keys.is_empty() || keys.len() > self.limits.keys_max {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a watch takes 1 to {} keys, got {}",
                    self.limits.keys_max,
                    keys.len()
                ),
            ));
        }
        let moved: Vec<Bytes> = keys
            .iter()
            .filter(|k| !peer.region().contains(route_hash(k)))
            .cloned()
            .collect();
        // A watch resuming from before a split that moved some of its keys
        // away first gets their changes up to the split from this region's
        // history, then ends (see `split_ending`); one resuming after it is
        // sent to the keys' regions.
        let mut epoch = peer.region().epoch;
        if !moved.is_empty() {
            // The split that moved them (the earliest, if they left in
            // different splits: a later one's keys then get `Compacted`,
            // never a gap).
            let at = if from_version == 0 {
                Some(0)
            } else {
                moved
                    .iter()
                    .map(|k| peer.split_index_moving(client_epoch.version, route_hash(k)))
                    .collect::<Option<Vec<u64>>>()
                    .and_then(|v| v.into_iter().min())
            };
            // Unknown (the keys were never here, or this replica was restored
            // from a snapshot taken after the split): the keys' regions
            // check the version against their own history.
            match at.unwrap_or(0) {
                at if from_version != 0 && from_version < at => epoch = client_epoch,
                at => {
                    return Err(WireError::EpochNotMatch {
                        regions: vec![peer.region().clone()],
                        from_version: at,
                        message: format!(
                            "watched keys are not in region {}: watch each region's keys \
                             separately{}",
                            peer.region_id(),
                            if at > 0 {
                                format!(", the moved ones from version {at}")
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
                None => return Err(compacted(db, &keys, from_version, floor, wall_ms)),
            }
        }
        let cursor = if from_version == 0 {
            applied
        } else {
            from_version
        };
        let region = peer.region_id();
        let mut set = HashSet::with_capacity_and_hasher(keys.len(), ahash::RandomState::new());
        for k in keys {
            if set.insert(k.clone()) {
                self.by_key.entry((region, k)).or_default().push(target);
            }
        }
        self.by_region.entry(region).or_default().push(target);
        self.watchers.insert(
            target,
            Watcher {
                region,
                epoch,
                keys: set,
                cursor,
                synced: cursor >= applied,
                link: Arc::new(WatchLink::default()),
                last_sent_ms: now_ms,
                parent,
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
    pub fn on_changes(&mut self, entries: &[EntryChanges], now_ms: u64, out: &mut Vec<WatchFrame>) {
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
            for c in &e.changes {
                let Some(ts) = self.by_key.get(&(e.region_id, c.key.clone())) else {
                    continue;
                };
                for t in ts {
                    let w = &self.watchers[t];
                    if w.synced && e.index > w.cursor {
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
                let changes = pending.remove(&t).unwrap_or_default();
                self.deliver(t, changes, last, now_ms, out);
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
            if peer.region().epoch != w.epoch {
                let moved = w
                    .keys
                    .iter()
                    .any(|k| !peer.region().contains(route_hash(k)));
                if !moved {
                    self.watchers.get_mut(&t).unwrap().epoch = peer.region().epoch;
                } else if let Some(e) = self.split_ending(t, peer, applied, now_ms, out) {
                    self.end(t, e, out);
                    continue;
                }
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
                        let keys: Vec<Bytes> = w.keys.iter().cloned().collect();
                        let e = compacted(db, &keys, w.cursor, at, wall_ms);
                        self.end(t, e, out);
                        continue;
                    }
                    (parent, at)
                }
                _ => (w.region, applied),
            };
            if source == w.region && w.cursor < peer.history_floor() {
                let keys: Vec<Bytes> = w.keys.iter().cloned().collect();
                let e = compacted(db, &keys, w.cursor, peer.history_floor(), wall_ms);
                self.end(t, e, out);
                continue;
            }
            self.catchups += 1;
            let page = match watch::read(db, source, w.cursor, upto, budget, |k| w.keys.contains(k))
            {
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
            if w.cursor >= applied {
                w.synced = true;
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
        applied: u64,
        now_ms: u64,
        out: &mut Vec<WatchFrame>,
    ) -> Option<WireError> {
        let w = &self.watchers[&t];
        // Unknown split (should not happen): resume everything from the
        // cursor, which is safe if possibly Compacted.
        let at = w
            .keys
            .iter()
            .filter(|k| !peer.region().contains(route_hash(k)))
            .map(|k| peer.split_index_moving(w.epoch.version, route_hash(k)))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().min())
            .unwrap_or(0);
        let reached = if w.synced { applied } else { w.cursor };
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
                "region {} split at version {at}: watch the keys of each region separately, \
                 the moved ones from version {at}",
                peer.region_id()
            ),
        })
    }
}

/// The `Compacted` error: the history after `from` is gone; the keys'
/// current state comes with it to restart from.
fn compacted(db: &rocksdb::DB, keys: &[Bytes], from: u64, floor: u64, wall_ms: u64) -> WireError {
    let mut current = Vec::with_capacity(keys.len());
    for k in keys {
        let change = match apply::get(db, k, wall_ms) {
            Ok(Some(r)) => Change {
                key: k.clone(),
                kind: ChangeKind::Put,
                value: r.value,
                version: r.version,
                expire_at_ms: r.expire_at_ms,
            },
            Ok(None) => Change {
                key: k.clone(),
                kind: ChangeKind::Delete,
                value: Bytes::new(),
                version: 0,
                expire_at_ms: 0,
            },
            Err(err) => {
                return WireError::new(
                    ErrorCode::Internal,
                    format!("reading the current values: {err}"),
                )
            }
        };
        current.push(change);
    }
    WireError::Compacted {
        current,
        message: format!(
            "changes after version {from} are no longer kept (history starts after {floor}): \
             restart from the current values sent with this error"
        ),
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
