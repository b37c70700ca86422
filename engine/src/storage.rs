//! `raft::Storage` of one region replica over the node's shared RocksDB.
//!
//! Writes never go to RocksDB directly: they are added to a caller-owned batch
//! ([`LogBatch`] or a `rocksdb::WriteBatch`) so that the output of many regions
//! is written, and synced, once. The in-memory view (hard state, last index,
//! entry cache) is updated at once, because raft reads entries back through
//! this trait before the batch is on disk (`advance_append_async`). Entries are
//! served from the cache while they are not yet written; the cache always holds
//! every entry past the applied index.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::db::{cf, Db, LogBatch};
use crate::error::{Error, Result};
use crate::keys::{self, CF_DATA, CF_META, CF_RAFT};
use crate::region::{PeerRole, Region};
use crate::snapshot;
use crate::state::{ApplyState, PeerState, RegionLocalState};

/// Index of the empty log every bootstrapped replica starts from. Starting
/// above zero lets every initial replica hold the same "truncated" state, so a
/// new region needs no snapshot to start.
pub const INIT_INDEX: u64 = 5;
/// Term of [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// The raft storage of one region replica.
pub struct RegionStorage {
    region_id: u64,
    db: Db,
    hard_state: HardState,
    apply: ApplyState,
    last_index: u64,
    last_term: u64,
    /// Contiguous entries ending at `last_index`.
    cache: VecDeque<Entry>,
    /// Applied entries kept in the cache for replication.
    cache_entries: usize,
}

fn storage_err(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn conf_state_of(region: &Region) -> ConfState {
    let mut cs = ConfState::default();
    for p in &region.peers {
        match p.role {
            PeerRole::Voter => cs.voters.push(p.id),
            PeerRole::Learner => cs.learners.push(p.id),
        }
    }
    cs
}

impl RegionStorage {
    /// Adds the initial state of a new replica of `region` to `batch`: an empty
    /// log at [`INIT_INDEX`], membership from the region's peers.
    pub fn bootstrap(region: &Region, db: &Db, batch: &mut LogBatch) -> Result<()> {
        Self::write_initial(
            region,
            (INIT_INDEX, INIT_TERM, Some(0)),
            db,
            &mut batch.inner,
        );
        let hs = HardState {
            term: INIT_TERM,
            commit: INIT_INDEX,
            ..Default::default()
        };
        batch.inner.put_cf(
            cf(db, CF_RAFT),
            keys::hard_state_key(region.id),
            hs.write_to_bytes().expect("hard state encodes"),
        );
        batch.must_sync = true;
        Ok(())
    }

    /// Adds to `batch` a replica of `region` restored from a backup: the
    /// backup's data and client sessions, everything up to its applied
    /// index applied, the log starting empty after it (so versions go on
    /// from the backup's), no change history before it. `region` is the
    /// backup's region as the new cluster places it (its own replicas); the
    /// same on every replica, so they start in agreement.
    pub fn bootstrap_restored(
        region: &Region,
        data: &snapshot::SnapshotData,
        db: &Db,
        batch: &mut LogBatch,
    ) -> Result<()> {
        if (data.region.id, data.region.start_hash, data.region.end_hash)
            != (region.id, region.start_hash, region.end_hash)
        {
            return Err(Error::Corruption(format!(
                "backup of region {} [{:#x}, {:#x}) restored as region {} [{:#x}, {:#x})",
                data.region.id,
                data.region.start_hash,
                data.region.end_hash,
                region.id,
                region.start_hash,
                region.end_hash
            )));
        }
        let index = data.applied_index.max(INIT_INDEX);
        Self::write_initial(
            region,
            (index, INIT_TERM, data.clock_ms),
            db,
            &mut batch.inner,
        );
        let hs = HardState {
            term: INIT_TERM,
            commit: index,
            ..Default::default()
        };
        batch.inner.put_cf(
            cf(db, CF_RAFT),
            keys::hard_state_key(region.id),
            hs.write_to_bytes().expect("hard state encodes"),
        );
        let data_cf = cf(db, CF_DATA);
        for (k, v) in &data.pairs {
            match keys::split_data_key(k) {
                Some((hash, _)) if region.contains(hash) => batch.inner.put_cf(data_cf, k, v),
                _ => {
                    return Err(Error::Corruption(format!(
                        "backup of region {}: a record outside its range",
                        region.id
                    )))
                }
            }
        }
        let meta_cf = cf(db, CF_META);
        for (client, session) in &data.sessions {
            batch.inner.put_cf(
                meta_cf,
                keys::session_key(region.id, *client),
                session.encode(),
            );
        }
        crate::watch::set_floor(db, &mut batch.inner, region.id, index);
        batch.must_sync = true;
        Ok(())
    }

    /// Adds to `batch` the state of a replica of `region` whose log starts
    /// empty after `index` (of `term`), everything up to it applied, its
    /// clock at `clock_ms`: membership from the region's peers. Used at
    /// bootstrap and for the region a split makes (its log starts at the
    /// split entry, its clock at the parent's).
    ///
    /// No raft hard state is written: a replica of a split-off region may
    /// exist here already (created by that region's messages) and have
    /// voted, its vote possibly still on its way to disk; writing a hard
    /// state here could overwrite it. [`RegionStorage::open`] starts a
    /// replica whose stored term is older than its log at that log's term.
    pub fn write_initial(
        region: &Region,
        (index, term, clock_ms): (u64, u64, Option<u64>),
        db: &Db,
        batch: &mut rocksdb::WriteBatch,
    ) {
        let apply = ApplyState {
            applied_index: index,
            applied_term: term,
            truncated_index: index,
            truncated_term: term,
            conf_state: conf_state_of(region),
            clock_ms,
        };
        let local = RegionLocalState {
            state: PeerState::Normal,
            region: region.clone(),
        };
        let meta_cf = cf(db, CF_META);
        batch.put_cf(meta_cf, keys::apply_state_key(region.id), apply.encode());
        batch.put_cf(meta_cf, keys::region_state_key(region.id), local.encode());
    }

    /// Loads the storage of `region_id` from disk.
    pub fn open(db: Db, region_id: u64, cache_entries: usize) -> Result<RegionStorage> {
        let raft_cf = cf(&db, CF_RAFT);
        let meta_cf = cf(&db, CF_META);
        let mut hard_state = match db.get_cf(raft_cf, keys::hard_state_key(region_id))? {
            Some(b) => HardState::parse_from_bytes(&b)
                .map_err(|e| Error::Corruption(format!("hard state of {region_id}: {e}")))?,
            None => HardState::default(),
        };
        let apply = match db.get_cf(meta_cf, keys::apply_state_key(region_id))? {
            Some(b) => ApplyState::decode(&b)?,
            None => ApplyState::default(),
        };
        // The last entry is the greatest log key of the region.
        let last = {
            let mut it = db.raw_iterator_cf(raft_cf);
            it.seek_for_prev(keys::raft_log_key(region_id, u64::MAX));
            let mut last = None;
            if it.valid() {
                if let Some(index) = keys::raft_log_index(region_id, it.key().unwrap()) {
                    let e = Entry::parse_from_bytes(it.value().unwrap())
                        .map_err(|e| Error::Corruption(format!("entry of {region_id}: {e}")))?;
                    assert_eq!(e.index, index, "entry stored under its own index");
                    last = Some((e.index, e.term));
                }
            }
            it.status()?;
            last
        };
        let (last_index, last_term) = match last {
            Some((i, t)) if i > apply.truncated_index => (i, t),
            _ => (apply.truncated_index, apply.truncated_term),
        };
        assert!(
            hard_state.commit <= last_index,
            "region {region_id}: commit {} past last index {last_index}",
            hard_state.commit
        );
        assert!(
            apply.applied_index <= last_index,
            "region {region_id}: applied {} past last index {last_index}",
            apply.applied_index,
        );
        // The apply batch is written before the round's log batch, so a crash
        // between the two leaves the stored commit index behind the applied
        // index. Applied entries are committed: move the commit index up.
        if hard_state.commit < apply.applied_index {
            hard_state.commit = apply.applied_index;
        }
        // A region split off here starts with no hard state of its own (or
        // one from before its log began): its term is at least its log's.
        if hard_state.term < apply.truncated_term {
            hard_state.term = apply.truncated_term;
            hard_state.vote = 0;
        }
        Ok(RegionStorage {
            region_id,
            db,
            hard_state,
            apply,
            last_index,
            last_term,
            cache: VecDeque::new(),
            cache_entries,
        })
    }

    /// Region this storage belongs to.
    pub fn region_id(&self) -> u64 {
        self.region_id
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Current hard state (as last given to [`RegionStorage::set_hard_state`]).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Current apply state.
    pub fn apply_state(&self) -> &ApplyState {
        &self.apply
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.apply.applied_index
    }

    /// The region's clock as of the applied index, unix ms (see
    /// [`ApplyState::clock_ms`]); `None` while unknown.
    pub fn clock_ms(&self) -> Option<u64> {
        self.apply.clock_ms
    }

    /// The time an applied entry carrying leader time `ms` is judged by:
    /// the region's clock moved to at least `ms`, which it returns. While
    /// the clock is unknown (a replica of an earlier release's data), the
    /// entry's own time, the clock staying unknown. Persisted with the
    /// apply state.
    pub fn advance_clock(&mut self, ms: u64) -> u64 {
        match self.apply.clock_ms {
            Some(c) => {
                let now = c.max(ms);
                self.apply.clock_ms = Some(now);
                now
            }
            None => ms,
        }
    }

    /// Applies a clock entry's time `ms`: the clock becomes at least `ms`,
    /// known from here on at this index on every replica.
    pub fn set_clock(&mut self, ms: u64) {
        self.apply.clock_ms = Some(self.apply.clock_ms.unwrap_or(0).max(ms));
    }

    /// Index of the last log entry.
    pub fn last_index_now(&self) -> u64 {
        self.last_index
    }

    /// First index still in the log.
    pub fn first_index_now(&self) -> u64 {
        self.apply.truncated_index + 1
    }

    /// Number of entries in memory.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Appends `entries` (contiguous, possibly overwriting a conflicting tail).
    pub fn append(&mut self, entries: &[Entry], batch: &mut LogBatch) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first_index = first.index;
        assert!(
            first_index > self.apply.truncated_index,
            "region {}: append at {} into compacted log (truncated {})",
            self.region_id,
            first_index,
            self.apply.truncated_index
        );
        assert!(
            first_index <= self.last_index + 1,
            "region {}: append at {} leaves a hole after {}",
            self.region_id,
            first_index,
            self.last_index
        );
        let raft_cf = cf(&self.db, CF_RAFT);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, first_index + i as u64, "entries are contiguous");
            let bytes = e.write_to_bytes().expect("entry encodes");
            batch.entry_bytes += bytes.len() as u64;
            batch
                .inner
                .put_cf(raft_cf, keys::raft_log_key(self.region_id, e.index), bytes);
        }
        batch.entries += entries.len() as u64;
        batch.must_sync = true;
        let last = entries.last().unwrap();
        // A conflicting tail longer than the new entries must go.
        if last.index < self.last_index {
            batch.inner.delete_range_cf(
                raft_cf,
                keys::raft_log_key(self.region_id, last.index + 1),
                keys::raft_log_key(self.region_id, self.last_index + 1),
            );
        }
        // Cache: drop the overwritten tail, then push.
        while self.cache.back().is_some_and(|e| e.index >= first_index) {
            self.cache.pop_back();
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first_index)
        {
            self.cache.clear();
        }
        self.cache.extend(entries.iter().cloned());
        self.last_index = last.index;
        self.last_term = last.term;
        Ok(())
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hs: HardState, batch: &mut LogBatch) {
        batch.inner.put_cf(
            cf(&self.db, CF_RAFT),
            keys::hard_state_key(self.region_id),
            hs.write_to_bytes().expect("hard state encodes"),
        );
        if hs.term != self.hard_state.term || hs.vote != self.hard_state.vote {
            batch.must_sync = true;
        }
        self.hard_state = hs;
    }

    /// Moves the applied index (the caller writes the data of those entries into
    /// the same batch it later passes to [`RegionStorage::persist_apply_state`]).
    pub fn set_applied(&mut self, index: u64, term: u64) {
        assert!(
            index >= self.apply.applied_index,
            "region {}: applied index going back {} -> {}",
            self.region_id,
            self.apply.applied_index,
            index
        );
        self.apply.applied_index = index;
        self.apply.applied_term = term;
        self.trim_cache();
    }

    /// The membership as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.apply.conf_state
    }

    /// Replaces the membership as of the applied index.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.apply.conf_state = cs;
    }

    /// Adds the apply state to `batch`.
    pub fn persist_apply_state(&self, batch: &mut rocksdb::WriteBatch) {
        batch.put_cf(
            cf(&self.db, CF_META),
            keys::apply_state_key(self.region_id),
            self.apply.encode(),
        );
    }

    fn trim_cache(&mut self) {
        while self.cache.len() > self.cache_entries
            && self
                .cache
                .front()
                .is_some_and(|e| e.index <= self.apply.applied_index)
        {
            self.cache.pop_front();
        }
    }

    /// Removes log entries up to and including `index` (which must be applied).
    /// Returns false if nothing was removed.
    pub fn compact_to(&mut self, index: u64, batch: &mut rocksdb::WriteBatch) -> Result<bool> {
        assert!(
            index <= self.apply.applied_index,
            "region {}: compact to {} past applied {}",
            self.region_id,
            index,
            self.apply.applied_index
        );
        if index <= self.apply.truncated_index {
            return Ok(false);
        }
        let term = raft::Storage::term(self, index).map_err(|e| match e {
            raft::Error::Store(StorageError::Compacted) => Error::Compacted,
            other => Error::from(other),
        })?;
        batch.delete_range_cf(
            cf(&self.db, CF_RAFT),
            keys::raft_log_key(self.region_id, self.apply.truncated_index + 1),
            keys::raft_log_key(self.region_id, index + 1),
        );
        self.apply.truncated_index = index;
        self.apply.truncated_term = term;
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
        Ok(true)
    }

    /// Installs a snapshot received from the leader: the region's data, log,
    /// sessions, change history and state are replaced by the snapshot's,
    /// all in `batch`. Returns the region, its session table and its
    /// history floor as of the snapshot.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        batch: &mut LogBatch,
    ) -> Result<(Region, crate::session::SessionTable, u64)> {
        let meta = snap.get_metadata();
        let data = snapshot::SnapshotData::decode(&snap.data)?;
        if data.region.id != self.region_id || data.applied_index != meta.index {
            return Err(Error::Corruption(format!(
                "snapshot for region {} at {} does not match region {} at {}",
                data.region.id, data.applied_index, self.region_id, meta.index
            )));
        }
        let (raft_cf, meta_cf, data_cf) = (
            cf(&self.db, CF_RAFT),
            cf(&self.db, CF_META),
            cf(&self.db, CF_DATA),
        );
        // Old data of the range (and of the range this replica had before) goes.
        let mut ranges = vec![(data.region.start_hash, data.region.end_hash)];
        if let Some(old) = self.load_region()? {
            if (old.start_hash, old.end_hash) != ranges[0] {
                ranges.push((old.start_hash, old.end_hash));
            }
        }
        for (start, end) in ranges {
            batch.inner.delete_range_cf(
                data_cf,
                keys::data_range_start(start),
                keys::data_range_end(end),
            );
        }
        for (k, v) in &data.pairs {
            batch.inner.put_cf(data_cf, k, v);
        }
        batch.inner.delete_range_cf(
            meta_cf,
            keys::session_key(self.region_id, 0),
            keys::session_key(self.region_id, u64::MAX),
        );
        batch
            .inner
            .delete_cf(meta_cf, keys::session_key(self.region_id, u64::MAX));
        let mut clients = std::collections::BTreeMap::new();
        for (client, s) in &data.sessions {
            batch.inner.put_cf(
                meta_cf,
                keys::session_key(self.region_id, *client),
                s.encode(),
            );
            clients.insert(*client, s.clone());
        }
        batch.inner.delete_range_cf(
            raft_cf,
            keys::raft_log_key(self.region_id, 0),
            keys::raft_log_key(self.region_id, u64::MAX),
        );
        // The history is the snapshot's: watchers resume from its floor.
        crate::watch::prune(&self.db, &mut batch.inner, self.region_id, meta.index);
        let history = cf(&self.db, crate::keys::CF_HISTORY);
        for (index, changes) in &data.history {
            batch
                .inner
                .put_cf(history, keys::history_key(self.region_id, *index), changes);
        }
        crate::watch::set_floor(
            &self.db,
            &mut batch.inner,
            self.region_id,
            data.history_floor,
        );
        self.apply = ApplyState {
            applied_index: meta.index,
            applied_term: meta.term,
            truncated_index: meta.index,
            truncated_term: meta.term,
            conf_state: meta.get_conf_state().clone(),
            clock_ms: data.clock_ms,
        };
        self.persist_apply_state(&mut batch.inner);
        let local = RegionLocalState {
            state: PeerState::Normal,
            region: data.region.clone(),
        };
        batch.inner.put_cf(
            meta_cf,
            keys::region_state_key(self.region_id),
            local.encode(),
        );
        batch.must_sync = true;
        self.cache.clear();
        self.last_index = meta.index;
        self.last_term = meta.term;
        Ok((
            data.region,
            crate::session::SessionTable::from_clients(clients),
            data.history_floor,
        ))
    }

    /// Writes the region's metadata (as changed by an applied admin entry)
    /// into `batch`.
    pub fn persist_region(&self, region: &Region, batch: &mut rocksdb::WriteBatch) {
        let local = RegionLocalState {
            state: PeerState::Normal,
            region: region.clone(),
        };
        batch.put_cf(
            cf(&self.db, CF_META),
            keys::region_state_key(self.region_id),
            local.encode(),
        );
    }

    fn load_region(&self) -> Result<Option<Region>> {
        let meta_cf = cf(&self.db, CF_META);
        match self
            .db
            .get_cf(meta_cf, keys::region_state_key(self.region_id))?
        {
            Some(b) => Ok(Some(RegionLocalState::decode(&b)?.region)),
            None => Ok(None),
        }
    }

    fn read_entries_from_db(&self, low: u64, high: u64, out: &mut Vec<Entry>) -> Result<()> {
        let raft_cf = cf(&self.db, CF_RAFT);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(keys::raft_log_key(self.region_id, high).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(raft_cf, opts);
        it.seek(keys::raft_log_key(self.region_id, low));
        let mut expect = low;
        while it.valid() {
            let e = Entry::parse_from_bytes(it.value().unwrap()).map_err(|e| {
                Error::Corruption(format!("entry of region {}: {e}", self.region_id))
            })?;
            if e.index != expect {
                return Err(Error::Corruption(format!(
                    "region {}: log hole, found {} expecting {}",
                    self.region_id, e.index, expect
                )));
            }
            out.push(e);
            expect += 1;
            it.next();
        }
        it.status()?;
        if expect != high {
            return Err(Error::Corruption(format!(
                "region {}: log ends at {} before {}",
                self.region_id,
                expect - 1,
                high
            )));
        }
        Ok(())
    }
}

impl raft::Storage for RegionStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.apply.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low <= self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "region {}: entries up to {} past last index {}",
            self.region_id,
            high,
            self.last_index
        );
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        if low >= high {
            return Ok(out);
        }
        let cache_first = self.cache.front().map_or(u64::MAX, |e| e.index);
        if low < cache_first {
            self.read_entries_from_db(low, high.min(cache_first), &mut out)
                .map_err(storage_err)?;
        }
        if high > cache_first {
            let from = low.max(cache_first);
            let skip = (from - cache_first) as usize;
            let take = (high - from) as usize;
            out.extend(self.cache.iter().skip(skip).take(take).cloned());
        }
        raft::util::limit_size(&mut out, max_size);
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            assert!(
                first.index == low && last.index == low + out.len() as u64 - 1,
                "region {}: entries [{low}, {high}) returned {}..={}",
                self.region_id,
                first.index,
                last.index
            );
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply.truncated_index {
            return Ok(self.apply.truncated_term);
        }
        if idx < self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(front) = self.cache.front() {
            if idx >= front.index {
                return Ok(self.cache[(idx - front.index) as usize].term);
            }
        }
        let mut out = Vec::with_capacity(1);
        self.read_entries_from_db(idx, idx + 1, &mut out)
            .map_err(storage_err)?;
        Ok(out[0].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = snapshot::build(&self.db, self.region_id).map_err(storage_err)?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}
