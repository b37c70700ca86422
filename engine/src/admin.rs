//! Region administration through the raft log: commands every replica of a
//! region applies at the same log index, so the region metadata they change
//! stays identical everywhere and is carried by snapshots.
//!
//! Admin entries are normal entries whose context is [`ENTRY_CONTEXT`].

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::region::{PeerRole, Region};

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
}

impl AdminCommand {
    /// Encodes the entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(16);
        e.u8(ADMIN_FORMAT);
        match self {
            AdminCommand::PreferLeader { node_id } => e.u8(1).u64(*node_id),
        };
        e.finish()
    }

    /// Decodes entry data written by [`AdminCommand::encode`].
    pub fn decode(buf: &[u8]) -> Result<AdminCommand> {
        let mut d = Decoder::new(buf, "admin command");
        d.version(ADMIN_FORMAT)?;
        let cmd = match d.u8()? {
            1 => AdminCommand::PreferLeader { node_id: d.u64()? },
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
        }
    }

    /// Applies the command to `region`; returns true if it changed.
    pub fn apply(&self, region: &mut Region) -> bool {
        match self {
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
}
