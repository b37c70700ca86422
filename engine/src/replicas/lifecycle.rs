//! Replicas coming and going: bootstrap, regions split off, replicas handed
//! between owners, removed replicas destroyed.

use super::*;

/// Writes the initial state of every region in `regions` that has a replica
/// on `node_id` (a new cluster's bootstrap), synced.
pub fn bootstrap_regions(db: &Db, node_id: u64, regions: &[Region]) -> Result<()> {
    let mut batch = LogBatch::default();
    for r in regions.iter().filter(|r| r.peer_on_node(node_id).is_some()) {
        RegionStorage::bootstrap(r, db, &mut batch)?;
    }
    crate::db::write(db, batch.inner, true)
}

/// Adds to `batch` the removal of every record of the replica of `region`
/// on this node (data of its range, log, raft and apply state, sessions,
/// split records, change history, shard placement) and a tombstone that
/// keeps messages to any replica it had so far from recreating it.
pub fn destroy_replica(
    db: &Db,
    region: &Region,
    initialized: bool,
    batch: &mut rocksdb::WriteBatch,
) {
    use crate::keys::{self, CF_DATA, CF_HISTORY, CF_META, CF_RAFT};
    let id = region.id;
    if initialized {
        batch.delete_range_cf(
            crate::db::cf(db, CF_DATA),
            keys::data_range_start(region.start_hash),
            keys::data_range_end(region.end_hash),
        );
    }
    let raft = crate::db::cf(db, CF_RAFT);
    batch.delete_range_cf(
        raft,
        keys::raft_log_key(id, 0),
        keys::raft_log_key(id, u64::MAX),
    );
    batch.delete_cf(raft, keys::raft_log_key(id, u64::MAX));
    batch.delete_cf(raft, keys::hard_state_key(id));
    let meta = crate::db::cf(db, CF_META);
    for (lo, hi) in [
        (keys::session_key(id, 0), keys::session_key(id, u64::MAX)),
        (keys::split_key(id, 0), keys::split_key(id, u64::MAX)),
    ] {
        batch.delete_range_cf(meta, lo, hi);
        batch.delete_cf(meta, hi);
    }
    batch.delete_cf(meta, keys::apply_state_key(id));
    batch.delete_cf(meta, keys::placement_key(id));
    batch.delete_cf(meta, keys::origin_key(id));
    batch.delete_cf(meta, keys::check_key(id));
    batch.delete_cf(meta, keys::region_state_key(id));
    batch.put_cf(
        meta,
        keys::tombstone_key(id),
        crate::ids::last_peer_id(region.epoch.conf_ver).to_be_bytes(),
    );
    let history = crate::db::cf(db, CF_HISTORY);
    batch.delete_range_cf(
        history,
        keys::history_key(id, 0),
        keys::history_key(id, u64::MAX),
    );
    batch.delete_cf(history, keys::history_key(id, u64::MAX));
    batch.delete_cf(history, keys::history_floor_key(id));
}

/// Destroys (synced) every stored replica of a region whose membership no
/// longer includes `node_id`: one that applied its own removal and stopped
/// before it was cleaned up. Returns the regions destroyed.
pub fn destroy_stale_replicas(db: &Db, node_id: u64) -> Result<Vec<u64>> {
    let mut batch = rocksdb::WriteBatch::default();
    let mut gone = Vec::new();
    for region in list_regions(db)? {
        if region.peer_on_node(node_id).is_none() {
            destroy_replica(db, &region, true, &mut batch);
            gone.push(region.id);
        }
    }
    if !gone.is_empty() {
        crate::db::write(db, batch, true)?;
    }
    Ok(gone)
}

impl Replicas {
    /// Call once the round's apply batch is written. Ranges that applied
    /// splits shrank are shrunk in the directory too (the write is in
    /// RocksDB); the replicas of regions split off this round open here
    /// (a new region whose parent's replica here leads campaigns at once,
    /// so it has a leader without waiting for an election timeout), or, if
    /// another owner of the node holds the region already, are returned
    /// for that owner to open. Returns the regions opened here and those
    /// to open elsewhere.
    pub fn open_splits(
        &mut self,
        replies: &mut Vec<Reply>,
    ) -> Result<(Vec<Region>, Vec<SplitElsewhere>)> {
        let mut splits = Vec::new();
        for p in self.peers.values_mut() {
            if p.take_range_applied() {
                self.directory
                    .set_range(p.region_id(), Some(Span::of(p.region())));
            }
            let taken = p.take_splits();
            if !taken.is_empty() {
                splits.push((taken, p.is_leader()));
            }
        }
        let mut elsewhere = Vec::new();
        for (regions, leads) in splits {
            for region in regions {
                // Its data is on disk now: the range is the new region's,
                // whoever opens it.
                let owner = self.directory.split_off(&region, self.owner);
                if owner != self.owner {
                    elsewhere.push(SplitElsewhere {
                        region,
                        owner,
                        led: leads,
                    });
                } else if !self.opening.iter().any(|(r, _)| *r == region.id) {
                    self.opening.push((region.id, leads));
                }
            }
        }
        let opened = self.open_waiting(replies)?;
        Ok((opened, elsewhere))
    }

    /// Takes the replica of `region_id` out: it moves to owner `to` of this
    /// node, which opens it from the database with
    /// [`Replicas::open_region`]. Its waiting requests are answered through
    /// `replies` as if it stopped: proposals `Timeout`, reads
    /// `RegionNotFound`. Refused (`None`) while a log write of it is in
    /// flight: call again in a later round.
    pub fn take(&mut self, region_id: u64, to: usize, replies: &mut Vec<Reply>) -> Option<Region> {
        if self.peers.get(&region_id)?.has_unpersisted() {
            return None;
        }
        let mut p = self.peers.remove(&region_id)?;
        p.fail_pending(replies);
        self.directory.hand_over(region_id, to);
        // The read cache may hold its keys: were the replica to come back,
        // they would be stale.
        self.cache.clear();
        Some(p.region().clone())
    }

    /// Opens the stored replica of `region_id` here (see [`Replicas::take`],
    /// [`SplitElsewhere`]): at once, or, where a replica of the region this
    /// owner created (waiting for its first snapshot) still has a log write
    /// in flight, in the first round after that write is durable
    /// ([`Replicas::open_waiting`]). One that led where it came from takes
    /// the lead at once. Returns the regions opened now.
    pub fn open_region(
        &mut self,
        region_id: u64,
        led: bool,
        replies: &mut Vec<Reply>,
    ) -> Result<Vec<Region>> {
        if !self.opening.iter().any(|(r, _)| *r == region_id) {
            self.opening.push((region_id, led));
        }
        self.open_waiting(replies)
    }

    /// Opens the stored replicas waiting to be opened whose predecessor
    /// here has no log write in flight any more; call every round (cheap
    /// when none waits). A replica of the region that waited for its first
    /// snapshot is replaced: the stored one has its raft state, vote
    /// included, once that replica's writes landed.
    pub fn open_waiting(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        if self.opening.is_empty() {
            return Ok(Vec::new());
        }
        let mut opened = Vec::new();
        let waiting = std::mem::take(&mut self.opening);
        for (region_id, led) in waiting {
            if let Some(p) = self.peers.get(&region_id) {
                if p.is_initialized() {
                    // Opened already (it came by snapshot).
                    continue;
                }
                if p.has_unpersisted() {
                    self.opening.push((region_id, led));
                    continue;
                }
            }
            if let Some(mut old) = self.peers.remove(&region_id) {
                old.fail_pending(replies);
            }
            let mut peer = Peer::open(
                self.cfg.clone(),
                self.db.clone(),
                self.node_id,
                region_id,
                self.seed,
                &self.logger,
            )?;
            if let Err(c) = self.directory.open(peer.region(), self.owner) {
                return Err(Error::Corruption(format!(
                    "region {region_id} opened by owner {} while owner {} holds it",
                    self.owner, c.owner
                )));
            }
            if led {
                peer.resume_leadership(replies)?;
            }
            opened.push(peer.region().clone());
            self.peers.insert(region_id, peer);
            self.cache.clear();
            self.opened = true;
        }
        Ok(opened)
    }

    /// Destroys the replicas that learnt they were removed; call once the
    /// round's apply batch is written. A replica with a raft log write
    /// still on its way waits for a later round: that write landing after
    /// the destruction would leave a hard state behind for a later replica
    /// of the region here to trip on. Their pending requests fail with
    /// `RegionNotFound`. Returns the regions destroyed.
    pub fn destroy_removed(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_removed() && !p.has_unpersisted())
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut out = Vec::new();
        for id in &gone {
            let mut p = self.peers.remove(id).expect("listed");
            destroy_replica(&self.db, p.region(), p.is_initialized(), &mut batch);
            p.fail_pending(replies);
            out.push(p.region().clone());
        }
        crate::db::write(&self.db, batch, true)?;
        for id in gone {
            self.directory.remove(id);
        }
        self.cache.clear();
        Ok(out)
    }

    /// True (once) when a replica's range or members changed since the
    /// last call (snapshot, membership change, destroyed replica), or a
    /// stored replica was opened here.
    pub fn take_layout_changed(&mut self) -> bool {
        let mut changed = std::mem::take(&mut self.opened);
        for p in self.peers.values_mut() {
            changed |= p.take_layout_changed();
        }
        changed
    }
}
