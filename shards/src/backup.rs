//! Region backups a shard holds for `corekv ctl backup` while it fetches
//! them in chunks.
//!
//! A backup is built at once from one RocksDB snapshot (the region's data,
//! client sessions and metadata at its applied index: the same payload a
//! lagging replica installs, [`corekv_engine::snapshot`]) and kept in
//! memory until its last chunk is served or it goes unused for
//! [`HELD_IDLE`]. A shard holds at most [`HELD_MAX`] at once; like a
//! raft snapshot, building one holds the shard for the time it takes to
//! read the region (regions are kept small by splitting).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_engine::Peer;
use corekv_net::message::{BackupChunk, Outcome, WireError};
use corekv_net::wire::ErrorCode;

/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Backups one shard holds at once.
pub const HELD_MAX: usize = 4;
/// A backup unused for this long is dropped.
pub const HELD_IDLE: Duration = Duration::from_secs(60);

struct Held {
    region: u64,
    applied_index: u64,
    bytes: Bytes,
    last_used: Instant,
}

/// The backups of one shard.
#[derive(Default)]
pub struct Backups {
    held: HashMap<u64, Held>,
    next_id: u64,
}

impl Backups {
    /// Answers `Backup { backup_id, offset }` for `region_id`: builds a
    /// backup when `backup_id` is 0 (on the region's leader only), then
    /// serves the chunk at `offset`.
    pub fn serve(
        &mut self,
        peer: Option<&Peer>,
        region_id: u64,
        (backup_id, offset): (u64, u64),
        db: &rocksdb::DB,
        now: Instant,
    ) -> Result<Outcome, WireError> {
        self.held
            .retain(|_, h| now.saturating_duration_since(h.last_used) < HELD_IDLE);
        let backup_id = if backup_id == 0 {
            self.build(peer, region_id, db, now)?
        } else {
            backup_id
        };
        let Some(h) = self.held.get_mut(&backup_id) else {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "backup {backup_id} is not held here (dropped after {} s unused, or the \
                     node restarted): start the region's backup again",
                    HELD_IDLE.as_secs()
                ),
            ));
        };
        if h.region != region_id {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "backup {backup_id} is of region {}, not {region_id}",
                    h.region
                ),
            ));
        }
        let total = h.bytes.len() as u64;
        if offset > total {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("backup {backup_id} has {total} bytes: no chunk at {offset}"),
            ));
        }
        h.last_used = now;
        let start = offset as usize;
        let end = (start + CHUNK_BYTES).min(h.bytes.len());
        let chunk = BackupChunk {
            backup_id,
            applied_index: h.applied_index,
            total,
            offset,
            data: h.bytes.slice(start..end),
        };
        if end == h.bytes.len() {
            self.held.remove(&backup_id);
        }
        Ok(Outcome::BackupChunk(chunk))
    }

    fn build(
        &mut self,
        peer: Option<&Peer>,
        region_id: u64,
        db: &rocksdb::DB,
        now: Instant,
    ) -> Result<u64, WireError> {
        let Some(peer) = peer else {
            return Err(WireError::new(
                ErrorCode::RegionNotFound,
                format!("region {region_id} is not on this shard"),
            ));
        };
        if !peer.is_leader() {
            return Err(WireError::NotLeader {
                leader_node: peer.leader_node().unwrap_or(0),
                message: format!("backups of region {region_id} are built by its leader"),
            });
        }
        if self.held.len() >= HELD_MAX {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!("this shard holds {HELD_MAX} backups being fetched already"),
            ));
        }
        let snap = corekv_engine::snapshot::build(db, region_id).map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("building the backup of region {region_id}: {e}"),
            )
        })?;
        // Ids start at a random point, so a chunk request for a backup of
        // an earlier run of the node is refused rather than served from
        // another backup.
        if self.next_id == 0 {
            self.next_id = rand_seed() >> 1;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.held.insert(
            id,
            Held {
                region: region_id,
                applied_index: snap.get_metadata().index,
                bytes: Bytes::from(snap.get_data().to_vec()),
                last_used: now,
            },
        );
        Ok(id)
    }
}

/// A per-process random value (the hasher's keys).
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = ahash::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_a_backup_not_held_is_refused_with_a_clear_error() {
        let mut b = Backups::default();
        let dir = tempfile::tempdir().unwrap();
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        let e = b.serve(None, 3, (42, 0), &db, Instant::now()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
        assert!(e.to_string().contains("not held here"), "{e}");
        let e = b.serve(None, 3, (0, 0), &db, Instant::now()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RegionNotFound, "{e}");
    }
}
