//! Region metadata: the hash range a raft group owns, its epoch and its replicas.
//!
//! A region covers the half-open range `[start_hash, end_hash)` of the 64-bit
//! routing hash space ([`crate::hash::route_hash`]). `end_hash == 0` stands for
//! the end of the space (2^64), so the full space is `[0, 0)`.

use crate::codec::{Decoder, Encoder};
use crate::error::Result;

/// Version of a region's shape. A split bumps `version`; a membership change
/// bumps `conf_ver`. Requests carry the epoch they were routed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epoch {
    /// Bumped by every membership change.
    pub conf_ver: u64,
    /// Bumped by every split or merge.
    pub version: u64,
}

/// Role of one replica in the raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// Votes and counts for the quorum.
    Voter,
    /// Receives the log, does not vote.
    Learner,
}

/// One replica of a region: raft peer id and the node that hosts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerMeta {
    /// Raft id of the replica, unique in the cluster.
    pub id: u64,
    /// Node hosting the replica.
    pub node_id: u64,
    /// Voter or learner.
    pub role: PeerRole,
}

/// A region: one raft group and the slice of the hash space it owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// Cluster-unique region id.
    pub id: u64,
    /// First hash owned (inclusive).
    pub start_hash: u64,
    /// First hash not owned (exclusive); 0 means the end of the space.
    pub end_hash: u64,
    /// Current epoch.
    pub epoch: Epoch,
    /// Replicas.
    pub peers: Vec<PeerMeta>,
}

const REGION_FORMAT: u8 = 1;

/// Id of the meta region: it owns the one hash [`crate::META_HASH`], where
/// the cluster's metadata keys route. The regions a cluster starts with have
/// ids `1..=R` below it; the id allocator hands out ids from
/// [`FIRST_ALLOCATED_ID`].
pub const META_REGION_ID: u64 = 10_000;

/// First region id the meta region's allocator hands out (to splits).
pub const FIRST_ALLOCATED_ID: u64 = META_REGION_ID + 1;

impl Region {
    /// True when the region owns `hash`.
    #[inline]
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start_hash && (self.end_hash == 0 || hash < self.end_hash)
    }

    /// True for the meta region (the one owning [`crate::META_HASH`]).
    #[inline]
    pub fn is_meta(&self) -> bool {
        self.start_hash == crate::META_HASH
    }

    /// The first hash not owned, as a number (`end_hash` 0 is 2^64).
    pub fn end_u128(&self) -> u128 {
        if self.end_hash == 0 {
            1u128 << 64
        } else {
            u128::from(self.end_hash)
        }
    }

    /// The middle of the range (where a split with no point given cuts).
    pub fn middle(&self) -> u64 {
        ((u128::from(self.start_hash) + self.end_u128()) / 2) as u64
    }

    /// True when the two ranges share a hash.
    pub fn overlaps(&self, other: &Region) -> bool {
        u128::from(self.start_hash) < other.end_u128()
            && u128::from(other.start_hash) < self.end_u128()
    }

    /// The replica on `node_id`, if any.
    pub fn peer_on_node(&self, node_id: u64) -> Option<&PeerMeta> {
        self.peers.iter().find(|p| p.node_id == node_id)
    }

    /// The replica with raft id `peer_id`, if any.
    pub fn peer(&self, peer_id: u64) -> Option<&PeerMeta> {
        self.peers.iter().find(|p| p.id == peer_id)
    }

    /// A region as a new cluster starts it: epoch 1/1, a voter on each of
    /// `nodes` (the first is its preferred leader) with the region-start
    /// replica ids ([`crate::ids::region_peer_id`]).
    pub fn initial(
        id: u64,
        start_hash: u64,
        end_hash: u64,
        nodes: impl IntoIterator<Item = u64>,
    ) -> Region {
        Region {
            id,
            start_hash,
            end_hash,
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            peers: nodes
                .into_iter()
                .map(|node_id| PeerMeta {
                    id: crate::ids::region_peer_id(id, node_id),
                    node_id,
                    role: PeerRole::Voter,
                })
                .collect(),
        }
    }

    /// Splits `[0, 2^64)` into `count` regions of equal width (the last takes the
    /// remainder). Region ids are `first_id..first_id + count`.
    pub fn even_ranges(count: u64) -> Vec<(u64, u64)> {
        assert!(count >= 1, "at least one region");
        let bound = |i: u64| ((u128::from(i) << 64) / u128::from(count)) as u64;
        (0..count)
            .map(|i| {
                let end = if i + 1 == count { 0 } else { bound(i + 1) };
                (bound(i), end)
            })
            .collect()
    }

    /// Encodes the region for storage or the wire.
    pub fn encode_to(&self, e: &mut Encoder) {
        e.u8(REGION_FORMAT)
            .u64(self.id)
            .u64(self.start_hash)
            .u64(self.end_hash)
            .u64(self.epoch.conf_ver)
            .u64(self.epoch.version)
            .u32(self.peers.len() as u32);
        for p in &self.peers {
            e.u64(p.id).u64(p.node_id).u8(match p.role {
                PeerRole::Voter => 0,
                PeerRole::Learner => 1,
            });
        }
    }

    /// Decodes a region written by [`Region::encode_to`].
    pub fn decode_from(d: &mut Decoder<'_>) -> Result<Region> {
        d.version(REGION_FORMAT)?;
        let id = d.u64()?;
        let start_hash = d.u64()?;
        let end_hash = d.u64()?;
        let epoch = Epoch {
            conf_ver: d.u64()?,
            version: d.u64()?,
        };
        let count = d.u32()? as usize;
        let mut peers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let id = d.u64()?;
            let node_id = d.u64()?;
            let role = match d.u8()? {
                0 => PeerRole::Voter,
                1 => PeerRole::Learner,
                r => {
                    return Err(crate::Error::Corruption(format!("region: peer role {r}")));
                }
            };
            peers.push(PeerMeta { id, node_id, role });
        }
        Ok(Region {
            id,
            start_hash,
            end_hash,
            epoch,
            peers,
        })
    }

    /// Encodes to a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64 + self.peers.len() * 17);
        self.encode_to(&mut e);
        e.finish()
    }

    /// Decodes a whole buffer.
    pub fn decode(buf: &[u8]) -> Result<Region> {
        let mut d = Decoder::new(buf, "region");
        let r = Region::decode_from(&mut d)?;
        d.finish()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_cover_the_space_without_gaps() {
        for count in [1u64, 2, 3, 7, 8, 1000] {
            let ranges = Region::even_ranges(count);
            assert_eq!(ranges.len() as u64, count);
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges.last().unwrap().1, 0);
            for w in ranges.windows(2) {
                assert_eq!(w[0].1, w[1].0, "contiguous");
                assert!(w[0].0 < w[0].1);
            }
        }
        assert_eq!(Region::even_ranges(2)[1].0, 1 << 63);
        assert_eq!(Region::even_ranges(8)[1].0, 1 << 61);
    }

    #[test]
    fn contains_respects_half_open_range_and_open_end() {
        let mut r = Region {
            id: 1,
            start_hash: 10,
            end_hash: 20,
            epoch: Epoch::default(),
            peers: vec![],
        };
        assert!(!r.contains(9));
        assert!(r.contains(10));
        assert!(r.contains(19));
        assert!(!r.contains(20));
        r.end_hash = 0;
        assert!(r.contains(u64::MAX));
    }

    #[test]
    fn encode_decode_round_trip() {
        let r = Region {
            id: 9,
            start_hash: 1 << 62,
            end_hash: 0,
            epoch: Epoch {
                conf_ver: 3,
                version: 4,
            },
            peers: vec![
                PeerMeta {
                    id: 91,
                    node_id: 1,
                    role: PeerRole::Voter,
                },
                PeerMeta {
                    id: 92,
                    node_id: 2,
                    role: PeerRole::Learner,
                },
            ],
        };
        assert_eq!(Region::decode(&r.encode()).unwrap(), r);
        assert!(Region::decode(&r.encode()[..10]).is_err());
    }
}
