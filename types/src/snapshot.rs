//! The payload of a region snapshot: a region's data, sessions and newest
//! change history at one applied index (built by the engine, see
//! `corekv_engine::snapshot`; also the region files of a backup).

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::keys;
use crate::region::Region;
use crate::session::ClientSession;

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
    /// The region's clock at that index (the apply state's clock).
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
