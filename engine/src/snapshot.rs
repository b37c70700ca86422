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

use crate::codec::{Decoder, Encoder};
use crate::db::cf;
use crate::error::{Error, Result};
use crate::keys::{self, CF_DATA, CF_META};
use crate::region::Region;
use crate::session::ClientSession;
use crate::state::{ApplyState, RegionLocalState};

/// Format 4: the change history after the clock; format 3 (the clock with
/// a presence flag), 2 (a plain clock) and 1 (none: unknown) payloads are
/// still read (without history).
const SNAPSHOT_FORMAT: u8 = 4;

/// Bytes of change history a snapshot carries at most (its newest records).
pub const SNAPSHOT_HISTORY_BYTES_MAX: usize = 16 << 20;

fn format(d: &mut Decoder<'_>) -> Result<u8> {
    match d.u8()? {
        f @ 1..=SNAPSHOT_FORMAT => Ok(f),
        f => Err(Error::Corruption(format!(
            "snapshot: format version {f} (expected 1 to {SNAPSHOT_FORMAT})"
        ))),
    }
}

/// The payload of a region snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotData {
    /// Region metadata as of the snapshot.
    pub region: Region,
    /// Applied index the data corresponds to.
    pub applied_index: u64,
    /// The region's clock at that index (see [`ApplyState::clock_ms`]).
    pub clock_ms: Option<u64>,
    /// Every `data` CF pair of the region: (data key, value record).
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The region's client sessions.
    pub sessions: Vec<(u64, ClientSession)>,
    /// Watchers can resume from this version on with `history`.
    pub history_floor: u64,
    /// Change history records after `history_floor`: (log index, the
    /// entry's encoded changes, see `crate::watch`).
    pub history: Vec<(u64, Vec<u8>)>,
}

impl SnapshotData {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut e = Encoder::with_capacity(64 + size);
        e.u8(SNAPSHOT_FORMAT);
        self.region.encode_to(&mut e);
        e.u64(self.applied_index);
        match self.clock_ms {
            Some(ms) => e.u8(1).u64(ms),
            None => e.u8(0),
        };
        e.u64(self.pairs.len() as u64);
        for (k, v) in &self.pairs {
            e.bytes(k).bytes(v);
        }
        e.u32(self.sessions.len() as u32);
        for (client, s) in &self.sessions {
            e.u64(*client).bytes(&s.encode());
        }
        e.u64(self.history_floor).u32(self.history.len() as u32);
        for (index, changes) in &self.history {
            e.u64(*index).bytes(changes);
        }
        e.finish()
    }

    /// The region a payload is for, without decoding its data.
    pub fn region_of(buf: &[u8]) -> Result<Region> {
        let mut d = Decoder::new(buf, "snapshot");
        format(&mut d)?;
        Region::decode_from(&mut d)
    }

    /// Decodes and checks a payload: every key must be inside the region.
    pub fn decode(buf: &[u8]) -> Result<SnapshotData> {
        let mut d = Decoder::new(buf, "snapshot");
        let f = format(&mut d)?;
        let region = Region::decode_from(&mut d)?;
        let applied_index = d.u64()?;
        let clock_ms = match f {
            1 => None,
            2 => Some(d.u64()?),
            _ => match d.u8()? {
                0 => None,
                _ => Some(d.u64()?),
            },
        };
        let count = d.u64()?;
        let mut pairs = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let k = d.bytes()?.to_vec();
            let v = d.bytes()?.to_vec();
            match keys::split_data_key(&k) {
                Some((h, _)) if region.contains(h) => {}
                _ => {
                    return Err(Error::Corruption(format!(
                        "snapshot of region {}: key outside the region",
                        region.id
                    )))
                }
            }
            pairs.push((k, v));
        }
        let n = d.u32()? as usize;
        let mut sessions = Vec::with_capacity(n.min(crate::session::CLIENTS_PER_REGION));
        for _ in 0..n {
            let client = d.u64()?;
            sessions.push((client, ClientSession::decode(d.bytes()?)?));
        }
        let (history_floor, history) = if f < 4 {
            (applied_index, Vec::new())
        } else {
            let floor = d.u64()?;
            let n = d.u32()? as usize;
            let mut history = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let index = d.u64()?;
                let changes = d.bytes()?.to_vec();
                if index <= floor || index > applied_index {
                    return Err(Error::Corruption(format!(
                        "snapshot of region {}: history record {index} outside ({floor}, {applied_index}]",
                        region.id
                    )));
                }
                history.push((index, changes));
            }
            (floor, history)
        };
        d.finish()?;
        Ok(SnapshotData {
            region,
            applied_index,
            clock_ms,
            pairs,
            sessions,
            history_floor,
            history,
        })
    }
}

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
