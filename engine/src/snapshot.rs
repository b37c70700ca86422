//! Region snapshots: the region's data and metadata at its applied index.
//!
//! A snapshot is built from one RocksDB snapshot, so the data, the apply state
//! and the region metadata in it are consistent with each other. It is held in
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

/// Format 2 adds the region clock; format 1 payloads read with clock 0.
const SNAPSHOT_FORMAT: u8 = 2;

fn format(d: &mut Decoder<'_>) -> Result<u8> {
    match d.u8()? {
        f @ (1 | SNAPSHOT_FORMAT) => Ok(f),
        f => Err(Error::Corruption(format!(
            "snapshot: format version {f} (expected 1 or {SNAPSHOT_FORMAT})"
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
        d.finish()?;
        Ok(SnapshotData {
            region,
            applied_index,
            clock_ms,
            pairs,
            sessions,
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
    let data = SnapshotData {
        region,
        applied_index: apply.applied_index,
        clock_ms: apply.clock_ms,
        pairs,
        sessions,
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
