//! Replicas coming and going: regions split off, replicas handed over to
//! another shard, membership changes followed.

use super::*;

impl Shard {
    /// Opens the replicas of regions split off this round (their state was
    /// just written) and those waiting for a replica they replace to
    /// finish its log writes; [`Shard::follow_membership`] shows them to
    /// the router. A region whose replica another shard of this node
    /// holds already (its messages created it there before the split was
    /// applied here) is opened by that shard.
    pub(super) fn open_splits(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) {
        let (mut opened, elsewhere) = match replicas.open_splits(replies) {
            Ok(o) => o,
            Err(e) => self.fatal("opening a split region", e),
        };
        match replicas.open_waiting(replies) {
            Ok(more) => opened.extend(more),
            Err(e) => self.fatal("opening a replica", e),
        }
        for s in elsewhere {
            tracing::info!(
                shard = self.id,
                region = s.region.id,
                to = s.owner,
                "region split off; its replica is opened on the shard holding it"
            );
            if let Some(mesh) = self.mesh.get().cloned() {
                glommio::spawn_local(async move {
                    let _ = mesh
                        .send_to(s.owner, ShardMsg::Open(s.region.id, s.led))
                        .await;
                })
                .detach();
            }
        }
        for r in &opened {
            tracing::info!(
                shard = self.id,
                region = r.id,
                start = format_args!("{:016x}", r.start_hash),
                end = format_args!("{:016x}", r.end_hash),
                epoch = r.epoch.version,
                "region split off"
            );
        }
    }

    /// Hands the replicas asked to move to another shard over, each once
    /// none of its log writes is in flight: the placement is stored, the
    /// router points to the new shard (which gets requests and messages
    /// from now on) and that shard opens the replica from the database.
    /// Requests waiting here are answered as if the replica stopped.
    /// Returns true if one moved.
    pub(super) fn hand_over(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) -> bool {
        if self.state.borrow().moving.is_empty() {
            return false;
        }
        let Some(mesh) = self.mesh.get().cloned() else {
            return false;
        };
        let moving = std::mem::take(&mut self.state.borrow_mut().moving);
        let mut moved = false;
        for (region, to) in moving {
            let Some(p) = replicas.peer(region) else {
                continue;
            };
            let led = p.is_leader();
            if replicas.take(region, to, replies).is_none() {
                // A log write of it is in flight: a later round.
                self.state.borrow_mut().moving.push((region, to));
                continue;
            }
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(
                db::cf(&self.node.db, corekv_engine::keys::CF_META),
                corekv_engine::keys::placement_key(region),
                (to as u32).to_be_bytes(),
            );
            if let Err(e) = db::write(&self.node.db, wb, true) {
                self.fatal("placement write", e);
            }
            self.node.move_region(region, to);
            self.board_forget(region);
            tracing::info!(
                region,
                from = self.id,
                to,
                "replica handed over to another shard"
            );
            let mesh = mesh.clone();
            glommio::spawn_local(async move {
                let _ = mesh.send_to(to, ShardMsg::Open(region, led)).await;
            })
            .detach();
            moved = true;
        }
        moved
    }

    pub(super) fn board_forget(&self, region: u64) {
        if let Ok(mut board) = self.node.board.lock() {
            board.regions.remove(&region);
        }
    }

    /// Destroys the replicas removed from their regions and shows the
    /// router every replica whose range or members changed (a split, a
    /// membership change; a replica added here is routed to once its
    /// snapshot is in), storing the placement of the new ones.
    pub(super) fn follow_membership(&self, replicas: &mut Replicas, replies: &mut Vec<Reply>) {
        let gone = match replicas.destroy_removed(replies) {
            Ok(g) => g,
            Err(e) => self.fatal("destroying a removed replica", e),
        };
        for r in &gone {
            tracing::info!(
                shard = self.id,
                region = r.id,
                "replica removed from this node"
            );
        }
        if !replicas.take_layout_changed() && gone.is_empty() {
            return;
        }
        let meta = db::cf(&self.node.db, corekv_engine::keys::CF_META);
        let mut wb = rocksdb::WriteBatch::default();
        let router = self.router();
        let mut mine = Vec::new();
        for p in replicas.iter().filter(|p| p.is_initialized()) {
            if router.index_of(p.region_id()).is_none() {
                tracing::info!(
                    shard = self.id,
                    region = p.region_id(),
                    "region now served on this shard"
                );
                wb.put_cf(
                    meta,
                    corekv_engine::keys::placement_key(p.region_id()),
                    (self.id as u32).to_be_bytes(),
                );
            }
            mine.push(p.region().clone());
        }
        if let Err(e) = db::write(&self.node.db, wb, false) {
            self.fatal("placement write", e);
        }
        self.node.update_shard_regions(self.id, mine);
    }
}
