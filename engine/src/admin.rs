//! Region administration through the raft log: commands every replica of a
//! region applies at the same log index, so the region metadata they change
//! stays identical everywhere and is carried by snapshots.
//!
//! Admin entries are normal entries whose context is [`ENTRY_CONTEXT`].

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::region::{Epoch, PeerMeta, PeerRole, Region};

/// Raft entry context marking an admin entry.
pub const ENTRY_CONTEXT: &[u8] = b"admin";

const ADMIN_FORMAT: u8 = 1;

/// A change to a region's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// The replica on `node_id` becomes the region's preferred leader (its
    /// first peer); the leader hands leadership to it once it is caught up,
    /// and every later leader hands it back there.
    PreferLeader {
        /// Node of the replica.
        node_id: u64,
    },
    /// The region becomes two: it keeps `[start, split_hash)` and a new
    /// region `new_region_id` takes `[split_hash, end)`, with replicas
    /// `new_peers` on the same nodes. Both get the next epoch version. The
    /// new region's raft log starts at the split entry's index, so versions
    /// of every key keep growing.
    Split {
        /// First hash of the new region.
        split_hash: u64,
        /// Id of the new region.
        new_region_id: u64,
        /// Its replicas, one per node of the region, same roles.
        new_peers: Vec<PeerMeta>,
    },
    /// Every replica computes the digest of its replicated state as of
    /// this entry's index ([`crate::digest`]); the leader then proposes
    /// [`AdminCommand::VerifyDigest`] with its own.
    ComputeDigest,
    /// The leader's digest at `index` (a [`AdminCommand::ComputeDigest`]
    /// entry): every replica compares it with its own and records the
    /// verdict; a mismatch is logged and counted.
    VerifyDigest {
        /// Index of the `ComputeDigest` entry.
        index: u64,
        /// The leader's digest there.
        digest: crate::digest::Digest,
    },
}

pub use crate::ids::REGION_ID_MAX;

/// The replicas a region split off `region` gets: the same nodes and roles,
/// peer ids [`crate::ids::region_peer_id`].
pub fn split_peers(region: &Region, new_region_id: u64) -> Vec<PeerMeta> {
    region
        .peers
        .iter()
        .map(|p| PeerMeta {
            id: crate::ids::region_peer_id(new_region_id, p.node_id),
            node_id: p.node_id,
            role: p.role,
        })
        .collect()
}

/// The two regions a split of `region` makes: (kept, new).
pub fn split_regions(
    region: &Region,
    split_hash: u64,
    new_region_id: u64,
    new_peers: &[PeerMeta],
) -> (Region, Region) {
    let epoch = Epoch {
        conf_ver: region.epoch.conf_ver,
        version: region.epoch.version + 1,
    };
    let kept = Region {
        end_hash: split_hash,
        epoch,
        ..region.clone()
    };
    let new = Region {
        id: new_region_id,
        start_hash: split_hash,
        end_hash: region.end_hash,
        epoch,
        peers: new_peers.to_vec(),
    };
    (kept, new)
}

impl AdminCommand {
    /// Encodes the entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(16);
        e.u8(ADMIN_FORMAT);
        match self {
            AdminCommand::PreferLeader { node_id } => {
                e.u8(1).u64(*node_id);
            }
            AdminCommand::Split {
                split_hash,
                new_region_id,
                new_peers,
            } => {
                e.u8(2)
                    .u64(*split_hash)
                    .u64(*new_region_id)
                    .u32(new_peers.len() as u32);
                for p in new_peers {
                    e.u64(p.id).u64(p.node_id).u8(match p.role {
                        PeerRole::Voter => 0,
                        PeerRole::Learner => 1,
                    });
                }
            }
            AdminCommand::ComputeDigest => {
                e.u8(3);
            }
            AdminCommand::VerifyDigest { index, digest } => {
                e.u8(4)
                    .u64(*index)
                    .u64(digest.keys)
                    .u64(digest.bytes)
                    .u64(digest.hash);
            }
        }
        e.finish()
    }

    /// Decodes entry data written by [`AdminCommand::encode`].
    pub fn decode(buf: &[u8]) -> Result<AdminCommand> {
        let mut d = Decoder::new(buf, "admin command");
        d.version(ADMIN_FORMAT)?;
        let cmd = match d.u8()? {
            1 => AdminCommand::PreferLeader { node_id: d.u64()? },
            2 => {
                let split_hash = d.u64()?;
                let new_region_id = d.u64()?;
                let n = d.u32()? as usize;
                let mut new_peers = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    new_peers.push(PeerMeta {
                        id: d.u64()?,
                        node_id: d.u64()?,
                        role: match d.u8()? {
                            0 => PeerRole::Voter,
                            1 => PeerRole::Learner,
                            t => return Err(Error::Corruption(format!("peer role {t}"))),
                        },
                    });
                }
                AdminCommand::Split {
                    split_hash,
                    new_region_id,
                    new_peers,
                }
            }
            3 => AdminCommand::ComputeDigest,
            4 => AdminCommand::VerifyDigest {
                index: d.u64()?,
                digest: crate::digest::Digest {
                    keys: d.u64()?,
                    bytes: d.u64()?,
                    hash: d.u64()?,
                },
            },
            t => return Err(Error::Corruption(format!("admin command tag {t}"))),
        };
        d.finish()?;
        Ok(cmd)
    }

    /// Refuses a command that cannot apply to `region`.
    pub fn validate(&self, region: &Region) -> Result<()> {
        match self {
            AdminCommand::PreferLeader { node_id } => match region.peer_on_node(*node_id) {
                Some(p) if p.role == PeerRole::Voter => Ok(()),
                Some(_) => Err(Error::InvalidRequest(format!(
                    "the replica of region {} on node {node_id} is a learner and cannot lead",
                    region.id
                ))),
                None => Err(Error::InvalidRequest(format!(
                    "region {} has no replica on node {node_id}",
                    region.id
                ))),
            },
            AdminCommand::Split {
                split_hash,
                new_region_id,
                new_peers,
            } => {
                if region.is_meta() {
                    return Err(Error::InvalidRequest(
                        "the meta region owns a single hash and does not split".into(),
                    ));
                }
                let inside = *split_hash > region.start_hash
                    && (region.end_hash == 0 || *split_hash < region.end_hash);
                if !inside {
                    return Err(Error::InvalidRequest(format!(
                        "split point {split_hash:016x} is not inside region {} [{:016x}, {:016x})",
                        region.id, region.start_hash, region.end_hash
                    )));
                }
                if *new_region_id == 0
                    || *new_region_id > REGION_ID_MAX
                    || *new_region_id == region.id
                {
                    return Err(Error::InvalidRequest(format!(
                        "bad new region id {new_region_id}"
                    )));
                }
                // The same replicas in any order (the first is the new
                // region's preferred leader).
                let mut given = new_peers.clone();
                let mut expected = split_peers(region, *new_region_id);
                given.sort_by_key(|p| p.id);
                expected.sort_by_key(|p| p.id);
                if given != expected {
                    return Err(Error::InvalidRequest(
                        "the new region's replicas must be on the region's nodes".into(),
                    ));
                }
                Ok(())
            }
            AdminCommand::ComputeDigest | AdminCommand::VerifyDigest { .. } => Ok(()),
        }
    }

    /// Applies a `PreferLeader` command to `region`; returns true if it
    /// changed. (Splits are applied by the peer, which also creates the new
    /// region.)
    pub fn apply(&self, region: &mut Region) -> bool {
        match self {
            AdminCommand::Split { .. }
            | AdminCommand::ComputeDigest
            | AdminCommand::VerifyDigest { .. } => false,
            AdminCommand::PreferLeader { node_id } => {
                if self.validate(region).is_err() {
                    return false;
                }
                let at = region
                    .peers
                    .iter()
                    .position(|p| p.node_id == *node_id)
                    .expect("validated");
                if at == 0 {
                    return false;
                }
                let p = region.peers.remove(at);
                region.peers.insert(0, p);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Epoch, PeerMeta};

    fn region() -> Region {
        Region {
            id: 3,
            start_hash: 0,
            end_hash: 0,
            epoch: Epoch::default(),
            peers: [1, 2, 3]
                .iter()
                .map(|n| PeerMeta {
                    id: 3000 + n,
                    node_id: *n,
                    role: if *n == 3 {
                        PeerRole::Learner
                    } else {
                        PeerRole::Voter
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn prefer_leader_moves_the_replica_first_and_round_trips() {
        let cmd = AdminCommand::PreferLeader { node_id: 2 };
        assert_eq!(AdminCommand::decode(&cmd.encode()).unwrap(), cmd);
        assert!(AdminCommand::decode(&[1, 9]).is_err());
        let mut r = region();
        assert!(cmd.apply(&mut r));
        let nodes: Vec<u64> = r.peers.iter().map(|p| p.node_id).collect();
        assert_eq!(nodes, vec![2, 1, 3]);
        assert!(!cmd.apply(&mut r), "already first");
        let learner = AdminCommand::PreferLeader { node_id: 3 };
        assert!(learner.validate(&r).is_err());
        assert!(!learner.apply(&mut r));
        assert!(AdminCommand::PreferLeader { node_id: 9 }
            .validate(&r)
            .is_err());
    }

    #[test]
    fn splits_round_trip_and_are_checked() {
        let r = Region {
            start_hash: 100,
            end_hash: 0,
            ..region()
        };
        let cmd = AdminCommand::Split {
            split_hash: 500,
            new_region_id: 9,
            new_peers: split_peers(&r, 9),
        };
        assert_eq!(AdminCommand::decode(&cmd.encode()).unwrap(), cmd);
        assert!(cmd.validate(&r).is_ok());
        let (kept, new) = split_regions(&r, 500, 9, &split_peers(&r, 9));
        assert_eq!((kept.start_hash, kept.end_hash), (100, 500));
        assert_eq!((new.start_hash, new.end_hash), (500, 0));
        assert_eq!(kept.epoch.version, r.epoch.version + 1);
        assert_eq!(new.epoch, kept.epoch);
        assert_eq!(new.peers[0].id, 9001);
        // The new region may prefer another of the same replicas.
        let mut rotated = split_peers(&r, 9);
        rotated.rotate_left(1);
        let moved = AdminCommand::Split {
            split_hash: 500,
            new_region_id: 9,
            new_peers: rotated.clone(),
        };
        assert!(moved.validate(&r).is_ok());
        let (_, new) = split_regions(&r, 500, 9, &rotated);
        assert_eq!(new.peers[0].node_id, rotated[0].node_id);
        let mut elsewhere = split_peers(&r, 9);
        elsewhere[0].node_id = 77;
        elsewhere[0].id = 9077;
        for bad in [
            AdminCommand::Split {
                split_hash: 500,
                new_region_id: 9,
                new_peers: elsewhere,
            },
            AdminCommand::Split {
                split_hash: 100,
                new_region_id: 9,
                new_peers: split_peers(&r, 9),
            },
            AdminCommand::Split {
                split_hash: 500,
                new_region_id: 3,
                new_peers: split_peers(&r, 3),
            },
            AdminCommand::Split {
                split_hash: 500,
                new_region_id: 9,
                new_peers: split_peers(&r, 8),
            },
        ] {
            assert!(bad.validate(&r).is_err(), "{bad:?}");
        }
    }
}
