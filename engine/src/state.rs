//! Persistent per-region and per-node records of the `meta` column family.

use protobuf::Message as _;
use raft::eraftpb::ConfState;

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::region::Region;

/// Whether a region replica is live on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Serving.
    Normal,
    /// Removed from this node; its data is gone or going.
    Tombstone,
}

/// What a node knows about one of its region replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLocalState {
    /// Live or removed.
    pub state: PeerState,
    /// The region's metadata as last applied here.
    pub region: Region,
}

const LOCAL_STATE_FORMAT: u8 = 1;
/// Format 3: the region clock, with a presence flag. Format 2 (a plain
/// clock) and format 1 (none: unknown) are still read.
const APPLY_STATE_FORMAT: u8 = 3;
const IDENT_FORMAT: u8 = 1;

impl RegionLocalState {
    /// Encodes for the `meta` CF.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(96);
        e.u8(LOCAL_STATE_FORMAT).u8(match self.state {
            PeerState::Normal => 0,
            PeerState::Tombstone => 1,
        });
        self.region.encode_to(&mut e);
        e.finish()
    }

    /// Decodes a record written by [`RegionLocalState::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(buf, "region local state");
        d.version(LOCAL_STATE_FORMAT)?;
        let state = match d.u8()? {
            0 => PeerState::Normal,
            1 => PeerState::Tombstone,
            s => return Err(Error::Corruption(format!("region local state: state {s}"))),
        };
        let region = Region::decode_from(&mut d)?;
        d.finish()?;
        Ok(RegionLocalState { state, region })
    }
}

/// How far a region replica has applied its log, and where the log begins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyState {
    /// Index of the last entry applied to the data.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// Last index removed from the log by compaction (first index - 1).
    pub truncated_index: u64,
    /// Term of that entry.
    pub truncated_term: u64,
    /// Raft membership as of `applied_index`.
    pub conf_state: ConfState,
    /// The region's clock as of `applied_index`: the latest leader time
    /// carried by an applied entry, unix ms. Expiry and time-dependent
    /// conditions are judged by it, so every replica at one index agrees,
    /// and it never goes back whoever leads. `None` when unknown: read from
    /// a record of an earlier release, until a clock entry sets it.
    pub clock_ms: Option<u64>,
}

impl ApplyState {
    /// Encodes for the `meta` CF.
    pub fn encode(&self) -> Vec<u8> {
        let cs = self
            .conf_state
            .write_to_bytes()
            .expect("conf state encodes");
        let mut e = Encoder::with_capacity(40 + cs.len());
        e.u8(APPLY_STATE_FORMAT)
            .u64(self.applied_index)
            .u64(self.applied_term)
            .u64(self.truncated_index)
            .u64(self.truncated_term)
            .bytes(&cs);
        match self.clock_ms {
            Some(ms) => e.u8(1).u64(ms),
            None => e.u8(0),
        };
        e.finish()
    }

    /// Decodes a record written by [`ApplyState::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(buf, "apply state");
        let format = d.u8()?;
        if !(1..=APPLY_STATE_FORMAT).contains(&format) {
            return Err(Error::Corruption(format!(
                "apply state: format version {format} (expected 1 to {APPLY_STATE_FORMAT})"
            )));
        }
        let applied_index = d.u64()?;
        let applied_term = d.u64()?;
        let truncated_index = d.u64()?;
        let truncated_term = d.u64()?;
        let conf_state = ConfState::parse_from_bytes(d.bytes()?)
            .map_err(|e| Error::Corruption(format!("apply state: conf state: {e}")))?;
        let clock_ms = match format {
            1 => None,
            2 => Some(d.u64()?),
            _ => match d.u8()? {
                0 => None,
                _ => Some(d.u64()?),
            },
        };
        d.finish()?;
        let s = ApplyState {
            applied_index,
            applied_term,
            truncated_index,
            truncated_term,
            conf_state,
            clock_ms,
        };
        if s.truncated_index > s.applied_index {
            return Err(Error::Corruption(format!(
                "apply state: truncated {} past applied {}",
                s.truncated_index, s.applied_index
            )));
        }
        Ok(s)
    }
}

/// Identity of a node's data directory, written once at bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreIdent {
    /// Cluster the directory belongs to.
    pub cluster_id: u64,
    /// Node id the directory belongs to.
    pub node_id: u64,
}

impl StoreIdent {
    /// Encodes for the `meta` CF.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(17);
        e.u8(IDENT_FORMAT).u64(self.cluster_id).u64(self.node_id);
        e.finish()
    }

    /// Decodes a record written by [`StoreIdent::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(buf, "store ident");
        d.version(IDENT_FORMAT)?;
        let s = StoreIdent {
            cluster_id: d.u64()?,
            node_id: d.u64()?,
        };
        d.finish()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Epoch;

    #[test]
    fn records_round_trip_and_reject_damage() {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let a = ApplyState {
            applied_index: 10,
            applied_term: 2,
            truncated_index: 5,
            truncated_term: 1,
            conf_state: cs,
            clock_ms: Some(1_700_000_000_123),
        };
        assert_eq!(ApplyState::decode(&a.encode()).unwrap(), a);
        let unknown = ApplyState {
            clock_ms: None,
            ..a.clone()
        };
        assert_eq!(ApplyState::decode(&unknown.encode()).unwrap(), unknown);
        // A format 1 record (before the region clock) reads as unknown; a
        // format 2 one carries a plain clock.
        let mut old = a.encode();
        old[0] = 1;
        old.truncate(old.len() - 9);
        assert_eq!(ApplyState::decode(&old).unwrap(), unknown);
        let mut two = a.encode();
        two[0] = 2;
        let at = two.len() - 9;
        two.remove(at);
        assert_eq!(ApplyState::decode(&two).unwrap(), a);
        let bad = ApplyState {
            truncated_index: 11,
            ..a.clone()
        };
        assert!(ApplyState::decode(&bad.encode()).is_err());

        let l = RegionLocalState {
            state: PeerState::Tombstone,
            region: Region {
                id: 3,
                start_hash: 0,
                end_hash: 0,
                epoch: Epoch::default(),
                peers: vec![],
            },
        };
        assert_eq!(RegionLocalState::decode(&l.encode()).unwrap(), l);
        let mut buf = l.encode();
        buf[1] = 9;
        assert!(RegionLocalState::decode(&buf).is_err());

        let i = StoreIdent {
            cluster_id: 7,
            node_id: 2,
        };
        assert_eq!(StoreIdent::decode(&i.encode()).unwrap(), i);
    }
}
