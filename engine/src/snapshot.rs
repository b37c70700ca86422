//! Region snapshots: the region's data and metadata at its applied index.
//!
//! A snapshot is built from one RocksDB snapshot, so the data, the apply state
//! and the region metadata in it are consistent with each other. It also
//! carries the newest part of the region's change history (up to
//! [`SNAPSHOT_HISTORY_BYTES_MAX`]), so that a watch resumes on a replica
//! that got its data by snapshot (a replica moved to another node, then
//! made leader) from a version shortly before it. It is held in
//! memory as one message; regions are kept small by splitting (see
//! `docs/architecture.md`).

use bytes::Bytes;
use raft::eraftpb::Snapshot;

use crate::db::cf;
use crate::error::{Error, Result};
use crate::keys::{self, CF_DATA, CF_META};
use crate::session::ClientSession;
use crate::state::{ApplyState, RegionLocalState};

pub use corekv_types::snapshot::{SnapshotData, SNAPSHOT_HISTORY_BYTES_MAX};

/// Builds a snapshot of `region_id` at its current applied index.
pub fn build(db: &rocksdb::DB, region_id: u64) -> Result<Snapshot> {
    let snap = db.snapshot();
    let meta_cf = cf(db, CF_META);
    let local = snap
        .get_cf(meta_cf, keys::region_state_key(region_id))?
        .ok_or(Error::RegionNotFound(region_id))?;
    let local = RegionLocalState::decode(&local)?;
    let apply = snap
        .get_cf(meta_cf, keys::apply_state_key(region_id))?
        .ok_or_else(|| Error::Corruption(format!("region {region_id} has no apply state")))?;
    let apply = ApplyState::decode(&apply)?;
    let region = local.region;

    let mut opts = rocksdb::ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.set_iterate_upper_bound(keys::data_range_end(region.end_hash));
    opts.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_DATA), opts);
    it.seek(keys::data_range_start(region.start_hash));
    let mut pairs = Vec::new();
    while it.valid() {
        pairs.push((it.key().unwrap().to_vec(), it.value().unwrap().to_vec()));
        it.next();
    }
    it.status()?;

    let mut sessions = Vec::new();
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_snapshot(&snap);
    let mut it = db.raw_iterator_cf_opt(meta_cf, opts);
    it.seek(keys::session_key(region_id, 0));
    while it.valid() {
        let Some(client) = keys::session_client(region_id, it.key().unwrap()) else {
            break;
        };
        sessions.push((client, ClientSession::decode(it.value().unwrap())?));
        it.next();
    }
    it.status()?;
    // The newest history records, within the budget; the floor rises
    // past every record left out.
    let history_cf = cf(db, crate::keys::CF_HISTORY);
    let mut floor = match snap.get_cf(history_cf, keys::history_floor_key(region_id))? {
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Corruption(format!("history floor of region {region_id}")))?,
        None => apply.applied_index,
    }
    .min(apply.applied_index);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.fill_cache(false);
    opts.set_iterate_lower_bound(keys::history_key(region_id, floor + 1).to_vec());
    opts.set_iterate_upper_bound(
        keys::history_key(region_id, apply.applied_index.saturating_add(1)).to_vec(),
    );
    let mut it = db.raw_iterator_cf_opt(history_cf, opts);
    it.seek_to_last();
    let mut history = Vec::new();
    let mut bytes = 0;
    while it.valid() {
        let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
        let Some(index) = keys::history_index(region_id, k) else {
            break;
        };
        if bytes + v.len() > SNAPSHOT_HISTORY_BYTES_MAX {
            floor = floor.max(index);
            break;
        }
        bytes += v.len();
        history.push((index, v.to_vec()));
        it.prev();
    }
    it.status()?;
    history.retain(|(i, _)| *i > floor);
    history.reverse();
    let data = SnapshotData {
        region,
        applied_index: apply.applied_index,
        clock_ms: apply.clock_ms,
        pairs,
        sessions,
        history_floor: floor,
        history,
    };
    let mut s = Snapshot {
        data: Bytes::from(data.encode()),
        ..Default::default()
    };
    let m = s.mut_metadata();
    m.index = apply.applied_index;
    m.term = apply.applied_term;
    m.set_conf_state(apply.conf_state);
    Ok(s)
}
