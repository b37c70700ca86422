//! A node's data directory on first start and on restart: the cluster's
//! initial regions, this node's identity, and which shard owns each region.
//!
//! Layout of a new cluster (the same on every node, computed from
//! `--initial-cluster` and `--regions`): region `r` (ids 1..=R) covers the
//! r-th of R equal slices of the hash space; its replicas are on
//! `min(3, N)` nodes starting at node index `(r-1) mod N`; replica ids are
//! `r * 1000 + node_id` (`corekv_engine::ids::region_peer_id`). Its preferred leader is the first of those nodes, so
//! leaders spread evenly over nodes, and on each node region `r` is placed on
//! shard `(r-1) mod shards`, so they spread over cores too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use corekv_engine::db::{self, cf, Db};
use corekv_engine::keys::{self, CF_META};
use corekv_engine::peer::list_regions;
use corekv_engine::region::META_REGION_ID;
use corekv_engine::replicas::bootstrap_regions;
use corekv_engine::state::StoreIdent;
use corekv_engine::{route_hash, Region};

use crate::config::NodeConfig;
use crate::error::StartError;

/// Replicas per region.
pub const REPLICAS: usize = 3;

/// The regions of a new cluster of `nodes` (sorted ids) with `count` data
/// regions: ids `1..=count` share the hash space below
/// [`corekv_engine::META_HASH`] evenly, and the meta region
/// ([`META_REGION_ID`]) owns that one hash. Replicas and preferred leaders go
/// round the nodes, the meta region taking the turn after the last data
/// region.
pub fn initial_regions(nodes: &[u64], count: u64) -> Vec<Region> {
    let n = nodes.len();
    let replicas = REPLICAS.min(n);
    let region = |i: usize, id: u64, start_hash: u64, end_hash: u64| {
        Region::initial(
            id,
            start_hash,
            end_hash,
            (0..replicas).map(|k| nodes[(i + k) % n]),
        )
    };
    let mut regions: Vec<Region> = Region::even_ranges(count)
        .into_iter()
        .enumerate()
        .map(|(i, (start, end))| {
            let end = if end == 0 {
                corekv_engine::META_HASH
            } else {
                end
            };
            region(i, i as u64 + 1, start, end)
        })
        .collect();
    regions.push(region(
        count as usize,
        META_REGION_ID,
        corekv_engine::META_HASH,
        0,
    ));
    regions
}

/// The regions of a new cluster of `nodes` restored from a backup: the
/// backup's data regions (ids and ranges, in hash order) with replicas
/// and preferred leaders placed as [`initial_regions`] places them, and
/// the meta region.
pub fn restored_regions(nodes: &[u64], backup: &[corekv_net::backup::RegionEntry]) -> Vec<Region> {
    let n = nodes.len();
    let replicas = REPLICAS.min(n);
    let place = |i: usize, id: u64, start_hash: u64, end_hash: u64| {
        Region::initial(
            id,
            start_hash,
            end_hash,
            (0..replicas).map(|k| nodes[(i + k) % n]),
        )
    };
    let mut regions: Vec<Region> = backup
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut region = place(i, r.id, r.start_hash, r.end_hash);
            // Routing answers of the new cluster are newer than any of
            // the old one a client may still hold.
            region.epoch.version = r.epoch_version + 1;
            region
        })
        .collect();
    regions.push(place(
        backup.len(),
        META_REGION_ID,
        corekv_engine::META_HASH,
        0,
    ));
    regions
}

/// Writes this node's replicas of a new cluster restored from `backup`
/// (see [`restored_regions`]): the data regions from their backups, the
/// meta region empty but for the region id allocator, which starts past
/// every restored id.
fn bootstrap_restored(
    db: &Db,
    node_id: u64,
    regions: &[Region],
    backup: &corekv_net::backup::Backup,
) -> Result<(), String> {
    use corekv_engine::storage::RegionStorage;
    let mut batch = corekv_engine::LogBatch::default();
    let mut next_id = corekv_engine::region::FIRST_ALLOCATED_ID;
    for (region, data) in regions.iter().zip(&backup.regions) {
        next_id = next_id.max(region.id + 1);
        if region.peer_on_node(node_id).is_some() {
            RegionStorage::bootstrap_restored(region, data, db, &mut batch)
                .map_err(|e| e.to_string())?;
        }
    }
    let meta = regions.last().expect("the meta region");
    if meta.peer_on_node(node_id).is_some() {
        RegionStorage::bootstrap(meta, db, &mut batch).map_err(|e| e.to_string())?;
        // As a put applied at the meta region's first index would leave it.
        let key = corekv_net::meta::next_region_id_key();
        let record = corekv_engine::ValueRecord {
            value: next_id.to_string().into_bytes().into(),
            version: corekv_engine::storage::INIT_INDEX,
            expire_at_ms: 0,
        };
        batch.inner.put_cf(
            cf(db, keys::CF_DATA),
            keys::data_key(route_hash(&key), &key),
            record.encode(),
        );
    }
    db::write(db, batch.inner, true).map_err(|e| e.to_string())
}

/// The shard a region's replica goes on unless placed otherwise.
pub fn default_shard(region_id: u64, shards: usize) -> usize {
    corekv_engine::directory::default_owner(region_id, shards)
}

/// The node that should lead `region` when it is up: its first replica.
pub fn preferred_leader(region: &Region) -> u64 {
    region.peers.first().map_or(0, |p| p.node_id)
}

/// What [`open`] found or created.
pub struct Opened {
    /// The node's database.
    pub db: Db,
    /// Its options (for statistics).
    pub db_options: rocksdb::Options,
    /// True if this start created the data directory's state.
    pub fresh: bool,
    /// Regions with a replica on this node, with their shard.
    pub placement: Vec<(Region, usize)>,
}

/// Opens (bootstrapping if empty) the data directory of `cfg`.
pub fn open(cfg: &NodeConfig) -> Result<Opened, StartError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| StartError::DataDir(format!("data dir {}: {e}", cfg.data_dir.display())))?;
    let (db, db_options) =
        db::open_with_options(&cfg.data_dir.join("db"), &cfg.db).map_err(|e| {
            StartError::DataDir(format!(
                "opening RocksDB in {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
    let meta = cf(&db, CF_META);
    let ident = db
        .get_cf(meta, keys::store_ident_key())
        .map_err(|e| StartError::DataDir(e.to_string()))?;
    let fresh = match ident {
        Some(b) => {
            let ident = StoreIdent::decode(&b).map_err(|e| StartError::DataDir(e.to_string()))?;
            if ident.node_id != cfg.node_id {
                return Err(StartError::DataDir(format!(
                    "data dir {} belongs to node {}, not {}",
                    cfg.data_dir.display(),
                    ident.node_id,
                    cfg.node_id
                )));
            }
            if let Some(dir) = &cfg.restore {
                tracing::warn!(
                    backup = %dir.display(),
                    "the data directory holds this node already: --restore ignored"
                );
            }
            false
        }
        None => {
            let nodes: Vec<u64> = cfg.initial_cluster.keys().copied().collect();
            // A node joining a running cluster starts empty.
            let regions = if let Some(dir) = &cfg.restore {
                let backup = corekv_net::backup::read(dir).map_err(StartError::Restore)?;
                let regions = restored_regions(&nodes, &backup.manifest.regions);
                bootstrap_restored(&db, cfg.node_id, &regions, &backup).map_err(|e| {
                    StartError::Restore(format!("restoring {}: {e}", dir.display()))
                })?;
                tracing::info!(
                    backup = %dir.display(),
                    regions = backup.regions.len(),
                    keys = backup.regions.iter().map(|r| r.pairs.len()).sum::<usize>(),
                    "new cluster restored from a backup"
                );
                regions
            } else if cfg.join {
                Vec::new()
            } else {
                let regions = initial_regions(&nodes, cfg.regions);
                bootstrap_regions(&db, cfg.node_id, &regions)
                    .map_err(|e| StartError::DataDir(e.to_string()))?;
                regions
            };
            let mut wb = rocksdb::WriteBatch::default();
            for r in regions
                .iter()
                .filter(|r| r.peer_on_node(cfg.node_id).is_some())
            {
                let shard = default_shard(r.id, cfg.shards) as u32;
                wb.put_cf(meta, keys::placement_key(r.id), shard.to_be_bytes());
            }
            let cluster_id = route_hash(
                format!("{:?}", cfg.initial_cluster.keys().collect::<Vec<_>>()).as_bytes(),
            );
            // The identity goes last: a crash before it leaves a directory
            // that bootstraps again from scratch.
            wb.put_cf(
                meta,
                keys::store_ident_key(),
                StoreIdent {
                    cluster_id,
                    node_id: cfg.node_id,
                }
                .encode(),
            );
            db::write(&db, wb, true).map_err(|e| StartError::DataDir(e.to_string()))?;
            true
        }
    };
    // A replica that applied its own removal and stopped before it was
    // cleaned up goes now.
    let stale = corekv_engine::replicas::destroy_stale_replicas(&db, cfg.node_id).map_err(|e| {
        StartError::DataDir(format!("removing replicas taken out of their regions: {e}"))
    })?;
    if !stale.is_empty() {
        tracing::info!(regions = ?stale, "replicas removed from this node cleaned up");
    }
    let mut placement = Vec::new();
    let mut moved = rocksdb::WriteBatch::default();
    for r in list_regions(&db).map_err(|e| StartError::DataDir(e.to_string()))? {
        let stored = db
            .get_cf(meta, keys::placement_key(r.id))
            .map_err(|e| StartError::DataDir(e.to_string()))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes);
        let shard = match stored {
            Some(s) if (s as usize) < cfg.shards => s as usize,
            // New region, or fewer shards than before: place it again.
            _ => {
                let s = default_shard(r.id, cfg.shards) as u32;
                moved.put_cf(meta, keys::placement_key(r.id), s.to_be_bytes());
                s as usize
            }
        };
        placement.push((r, shard));
    }
    if !moved.is_empty() {
        db::write(&db, moved, true).map_err(|e| StartError::DataDir(e.to_string()))?;
    }
    Ok(Opened {
        db,
        db_options,
        fresh,
        placement,
    })
}

/// Regions by id with their owning shard and last seen leader: O(1)
/// lookups. A router never changes its regions; a split makes a new one
/// (see `NodeShared::update_shard_regions`), and shards pick it up at their
/// next round, so lookups take no lock.
pub struct Router {
    regions: Vec<(Region, usize)>,
    by_id: BTreeMap<u64, usize>,
    /// Leader node of each region (by index), as last seen; 0 = unknown.
    leaders: Vec<AtomicU64>,
}

impl Router {
    /// A router over `placement`.
    pub fn new(mut placement: Vec<(Region, usize)>) -> Router {
        placement.sort_by_key(|(r, _)| r.start_hash);
        let by_id = placement
            .iter()
            .enumerate()
            .map(|(i, (r, _))| (r.id, i))
            .collect();
        let leaders = placement.iter().map(|_| AtomicU64::new(0)).collect();
        Router {
            regions: placement,
            by_id,
            leaders,
        }
    }

    /// A router where `shard`'s regions are `regions` (as its replicas now
    /// have them) and every other shard's are unchanged; known leaders carry
    /// over.
    pub fn with_shard_regions(&self, shard: usize, regions: Vec<Region>) -> Router {
        let mut placement: Vec<(Region, usize)> = self
            .regions
            .iter()
            .filter(|(_, s)| *s != shard)
            .cloned()
            .collect();
        placement.extend(regions.into_iter().map(|r| (r, shard)));
        let next = Router::new(placement);
        for (i, (r, _)) in next.regions.iter().enumerate() {
            if let Some(old) = self.index_of(r.id) {
                next.leaders[i].store(self.leader(old), Ordering::Relaxed);
            }
        }
        next
    }

    /// A router where region `id` is on `shard`; everything else and the
    /// known leaders carry over.
    pub fn with_region_on(&self, id: u64, shard: usize) -> Router {
        let placement = self
            .regions
            .iter()
            .map(|(r, s)| (r.clone(), if r.id == id { shard } else { *s }))
            .collect();
        let next = Router::new(placement);
        for (i, l) in self.leaders.iter().enumerate() {
            next.leaders[i].store(l.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        next
    }

    /// Index of region `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Index of the region owning `hash` on this node, if any.
    pub fn index_of_hash(&self, hash: u64) -> Option<usize> {
        let i = self
            .regions
            .partition_point(|(r, _)| r.start_hash <= hash)
            .checked_sub(1)?;
        self.regions[i].0.contains(hash).then_some(i)
    }

    /// Region and shard at `index`.
    pub fn get(&self, index: usize) -> (&Region, usize) {
        let (r, s) = &self.regions[index];
        (r, *s)
    }

    /// Leader node of the region at `index` as last seen (0 = unknown).
    pub fn leader(&self, index: usize) -> u64 {
        self.leaders[index].load(Ordering::Relaxed)
    }

    /// Records the leader of the region at `index`; returns the previous one.
    pub fn set_leader(&self, index: usize, node: u64) -> u64 {
        self.leaders[index].swap(node, Ordering::Relaxed)
    }

    /// Every region with its shard.
    pub fn iter(&self) -> impl Iterator<Item = (&Region, usize)> {
        self.regions.iter().map(|(r, s)| (r, *s))
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True if the node has no region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Regions whose leader is known.
    pub fn with_leader(&self) -> usize {
        (0..self.len()).filter(|i| self.leader(*i) != 0).count()
    }

    /// Regions led by `node`.
    pub fn led_by(&self, node: u64) -> usize {
        (0..self.len()).filter(|i| self.leader(*i) == node).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_layout_spreads_replicas_and_leaders() {
        let regions = initial_regions(&[1, 2, 3], 8);
        assert_eq!(regions.len(), 9);
        let meta = &regions[8];
        assert!(meta.is_meta() && meta.id == META_REGION_ID);
        assert!(meta.contains(route_hash(b"\xffcorekv/nodes")));
        assert!(regions[..8].iter().all(|r| !r.is_meta()));
        assert_eq!(regions[7].end_hash, corekv_engine::META_HASH);
        for r in &regions {
            assert_eq!(r.peers.len(), 3);
            let mut nodes: Vec<u64> = r.peers.iter().map(|p| p.node_id).collect();
            nodes.sort();
            assert_eq!(nodes, vec![1, 2, 3]);
        }
        let leaders: Vec<u64> = regions.iter().map(preferred_leader).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3, 1, 2, 3]);
        let single = initial_regions(&[7], 2);
        assert_eq!(single[0].peers.len(), 1);
        let five = initial_regions(&[1, 2, 3, 4, 5], 5);
        assert!(five.iter().all(|r| r.peers.len() == 3));
        assert_eq!(five[5].peers[0].node_id, 1);
        assert_eq!(
            five[4].peers.iter().map(|p| p.node_id).collect::<Vec<_>>(),
            vec![5, 1, 2]
        );
    }

    #[test]
    fn router_finds_regions_by_hash_and_id() {
        let placement: Vec<(Region, usize)> = initial_regions(&[1, 2, 3], 8)
            .into_iter()
            .map(|r| {
                let s = (r.id % 2) as usize;
                (r, s)
            })
            .collect();
        let router = Router::new(placement);
        for h in [0u64, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX] {
            let i = router.index_of_hash(h).unwrap();
            assert!(router.get(i).0.contains(h));
        }
        assert_eq!(router.get(router.index_of(5).unwrap()).0.id, 5);
        assert_eq!(router.index_of(99), None);
        let meta = router.index_of_hash(u64::MAX).unwrap();
        assert_eq!(router.get(meta).0.id, META_REGION_ID);
    }
}
