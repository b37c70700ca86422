//! Administration through the client: consistency checks, leader
//! transfers, splits, membership changes, shard moves, status documents,
//! region backups (each the async client's, run to its end).

use super::*;

impl Client {
    /// Backs up region `region_id` (see [`AsyncClient::backup_region`]).
    pub fn backup_region(
        &mut self,
        region_id: u64,
        progress: impl FnMut(u64, u64),
    ) -> Result<RegionBackup> {
        self.run(|c| c.backup_region(region_id, progress))
    }

    /// Starts a consistency check of `region_id` (see
    /// [`AsyncClient::check`]).
    pub fn check(&mut self, region_id: u64) -> Result<u64> {
        self.run(|c| c.check(region_id))
    }

    /// Makes the replica of `region_id` on `node_id` the region's preferred
    /// leader (see [`AsyncClient::transfer_leader`]).
    pub fn transfer_leader(&mut self, region_id: u64, node_id: u64) -> Result<u64> {
        self.run(|c| c.transfer_leader(region_id, node_id))
    }

    /// Splits region `region_id` at `split_hash` (`None`: the middle of its
    /// range; see [`AsyncClient::split`]).
    pub fn split(&mut self, region_id: u64, split_hash: Option<u64>) -> Result<u64> {
        self.run(|c| c.split(region_id, split_hash))
    }

    /// Changes region `region_id`'s replicas (see
    /// [`AsyncClient::change_peer`]).
    pub fn change_peer(
        &mut self,
        region_id: u64,
        change: corekv_types::membership::PeerChange,
    ) -> Result<u64> {
        self.run(|c| c.change_peer(region_id, change))
    }

    /// Asks the node at `addr` to move its replica of `region_id` to its
    /// shard `to_shard` (the move completes a moment later: see its status).
    pub fn move_shard_on(&mut self, addr: &str, region_id: u64, to_shard: u32) -> Result<()> {
        self.run(|c| c.move_shard_on(addr, region_id, to_shard))
    }

    /// Marks this client's requests as the cluster's own (or not): only
    /// such requests may write the metadata keys.
    pub fn set_system(&mut self, system: bool) {
        self.inner.set_system(system);
    }

    /// The status document of the node at `addr`.
    pub fn status_doc(&mut self, addr: &str) -> Result<crate::status::NodeStatus> {
        self.run(|c| c.status_doc(addr))
    }

    /// The status document of the node at `addr`, as its JSON text.
    pub fn status_of(&mut self, addr: &str) -> Result<String> {
        self.run(|c| c.status_of(addr))
    }
}
