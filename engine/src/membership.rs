//! Membership changes of a region: which replicas it has and where.
//!
//! A replica moves in three steps, each a raft conf change (ConfChangeV2)
//! that every replica applies at the same log index:
//! 1. [`PeerChange::AddLearner`]: a learner on the target node; the leader
//!    sends it a snapshot and then the log.
//! 2. [`PeerChange::Promote`] with a `remove_node`: once the learner is
//!    caught up, one joint-consensus change makes it a voter and the old
//!    replica leaves; raft leaves the joint configuration by itself (the
//!    leader proposes the empty change that ends it).
//! 3. The replica taken out is destroyed on its node once it learns it is
//!    gone (it applies its removal, or a member that applied it says so).
//!
//! Every applied change bumps the region's `conf_ver`. New replica ids are
//! [`crate::ids::added_peer_id`]: above every id a bootstrap or a split
//! hands out and growing with `conf_ver`, so a replica removed from a node
//! is never confused with a later one of the same region there.

use raft::eraftpb::ConfState;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::region::{PeerMeta, PeerRole, Region};

const CONTEXT_FORMAT: u8 = 1;

pub use corekv_types::ids::NODE_ID_MAX;

pub use corekv_types::membership::PeerChange;

/// Id of a replica added to a region by the change that makes `conf_ver`
/// ([`crate::ids::added_peer_id`]).
pub fn new_peer_id(conf_ver: u64, node_id: u64) -> u64 {
    crate::ids::added_peer_id(conf_ver, node_id)
}

fn single(change_type: ConfChangeType, peer_id: u64) -> ConfChangeSingle {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(change_type);
    s.node_id = peer_id;
    s
}

fn replica(region: &Region, node_id: u64) -> Result<&PeerMeta> {
    region.peer_on_node(node_id).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "region {} has no replica on node {node_id}",
            region.id
        ))
    })
}

/// The conf change that makes `change` to `region` (as applied by the
/// leader `leader_peer`), and the replicas it adds, which go in the entry's
/// context. Refuses changes that cannot apply.
pub fn plan(
    change: &PeerChange,
    region: &Region,
    leader_peer: u64,
) -> Result<(ConfChangeV2, Vec<PeerMeta>)> {
    let mut cc = ConfChangeV2::default();
    let mut added = Vec::new();
    let voters = region
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Voter)
        .count();
    match *change {
        PeerChange::AddLearner { node_id } => {
            if node_id == 0 || node_id > NODE_ID_MAX {
                return Err(Error::InvalidRequest(format!(
                    "node id {node_id} is outside 1..={NODE_ID_MAX}"
                )));
            }
            if region.peer_on_node(node_id).is_some() {
                return Err(Error::InvalidRequest(format!(
                    "region {} already has a replica on node {node_id}",
                    region.id
                )));
            }
            let peer = PeerMeta {
                id: new_peer_id(region.epoch.conf_ver + 1, node_id),
                node_id,
                role: PeerRole::Learner,
            };
            cc.mut_changes()
                .push(single(ConfChangeType::AddLearnerNode, peer.id));
            added.push(peer);
        }
        PeerChange::Promote {
            node_id,
            remove_node,
        } => {
            let learner = replica(region, node_id)?;
            if learner.role != PeerRole::Learner {
                return Err(Error::InvalidRequest(format!(
                    "the replica of region {} on node {node_id} is already a voter",
                    region.id
                )));
            }
            cc.mut_changes()
                .push(single(ConfChangeType::AddNode, learner.id));
            if remove_node != 0 {
                let old = replica(region, remove_node)?;
                if old.role != PeerRole::Voter {
                    return Err(Error::InvalidRequest(format!(
                        "the replica of region {} on node {remove_node} is not a voter",
                        region.id
                    )));
                }
                if old.id == leader_peer {
                    return Err(Error::InvalidRequest(format!(
                        "the replica of region {} on node {remove_node} leads it: \
                             transfer leadership first",
                        region.id
                    )));
                }
                cc.mut_changes()
                    .push(single(ConfChangeType::RemoveNode, old.id));
                // Two changes at once need joint consensus; raft leaves
                // it by itself once it is applied.
                cc.set_transition(ConfChangeTransition::Implicit);
            }
        }
        PeerChange::Remove { node_id } => {
            let old = replica(region, node_id)?;
            if old.id == leader_peer {
                return Err(Error::InvalidRequest(format!(
                    "the replica of region {} on node {node_id} leads it: \
                         transfer leadership first",
                    region.id
                )));
            }
            if old.role == PeerRole::Voter && voters <= 1 {
                return Err(Error::InvalidRequest(format!(
                    "region {} would have no voter left",
                    region.id
                )));
            }
            cc.mut_changes()
                .push(single(ConfChangeType::RemoveNode, old.id));
        }
    }
    Ok((cc, added))
}

/// Encodes the replicas a conf change adds (its entry context).
pub fn encode_context(added: &[PeerMeta]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(8 + 16 * added.len());
    e.u8(CONTEXT_FORMAT).u32(added.len() as u32);
    for p in added {
        e.u64(p.id).u64(p.node_id);
    }
    e.finish()
}

/// Decodes [`encode_context`]; an empty context (the change raft proposes
/// to leave a joint configuration) adds nothing.
pub fn decode_context(buf: &[u8]) -> Result<Vec<PeerMeta>> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let mut d = Decoder::new(buf, "conf change context");
    d.version(CONTEXT_FORMAT)?;
    let n = d.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        out.push(PeerMeta {
            id: d.u64()?,
            node_id: d.u64()?,
            role: PeerRole::Learner,
        });
    }
    d.finish()?;
    Ok(out)
}

/// The region after a conf change whose result is `cs`: replicas in their
/// old order (the first is the preferred leader), then the added ones;
/// voters of either half of a joint configuration count as voters; the
/// next `conf_ver`.
pub fn region_after(region: &Region, cs: &ConfState, added: &[PeerMeta]) -> Region {
    let voter = |id: u64| cs.voters.contains(&id) || cs.voters_outgoing.contains(&id);
    let learner = |id: u64| cs.learners.contains(&id) || cs.learners_next.contains(&id);
    let mut peers: Vec<PeerMeta> = Vec::new();
    for p in region.peers.iter().chain(added) {
        if peers.iter().any(|q| q.id == p.id) {
            continue;
        }
        let role = if voter(p.id) {
            PeerRole::Voter
        } else if learner(p.id) {
            PeerRole::Learner
        } else {
            continue;
        };
        peers.push(PeerMeta { role, ..*p });
    }
    let mut next = region.clone();
    next.peers = peers;
    next.epoch.conf_ver += 1;
    next
}

/// True when `cs` is a joint configuration.
pub fn is_joint(cs: &ConfState) -> bool {
    !cs.voters_outgoing.is_empty()
}

/// True when `peer_id` is in `cs` in any role.
pub fn is_member(cs: &ConfState, peer_id: u64) -> bool {
    cs.voters.contains(&peer_id)
        || cs.voters_outgoing.contains(&peer_id)
        || cs.learners.contains(&peer_id)
        || cs.learners_next.contains(&peer_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Epoch;

    fn region() -> Region {
        Region {
            id: 7,
            start_hash: 0,
            end_hash: 0,
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            peers: [1, 2, 3]
                .iter()
                .map(|n| PeerMeta {
                    id: 7000 + n,
                    node_id: *n,
                    role: PeerRole::Voter,
                })
                .collect(),
        }
    }

    #[test]
    fn a_move_adds_a_learner_then_swaps_it_for_the_old_voter_in_one_joint_change() {
        let r = region();
        let (cc, added) = plan(&PeerChange::AddLearner { node_id: 4 }, &r, 7001).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].id, new_peer_id(2, 4));
        assert!(added[0].id > 7004, "above bootstrap ids");
        assert_eq!(cc.changes.len(), 1);
        let cs = ConfState {
            voters: vec![7001, 7002, 7003],
            learners: vec![added[0].id],
            ..Default::default()
        };
        let r2 = region_after(&r, &cs, &decode_context(&encode_context(&added)).unwrap());
        assert_eq!(r2.epoch.conf_ver, 2);
        assert_eq!(r2.peer_on_node(4).unwrap().role, PeerRole::Learner);

        let promote = PeerChange::Promote {
            node_id: 4,
            remove_node: 3,
        };
        let (cc, added) = plan(&promote, &r2, 7001).unwrap();
        assert!(added.is_empty());
        assert_eq!(cc.changes.len(), 2);
        // Joint: node 3 still votes in the outgoing half.
        let joint = ConfState {
            voters: vec![7001, 7002, new_peer_id(2, 4)],
            voters_outgoing: vec![7001, 7002, 7003],
            ..Default::default()
        };
        assert!(is_joint(&joint));
        let r3 = region_after(&r2, &joint, &[]);
        assert_eq!(r3.peers.len(), 4);
        let left = ConfState {
            voters: vec![7001, 7002, new_peer_id(2, 4)],
            ..Default::default()
        };
        let r4 = region_after(&r3, &left, &[]);
        assert_eq!(r4.epoch.conf_ver, 4);
        assert!(r4.peer_on_node(3).is_none());
        assert_eq!(r4.peer_on_node(4).unwrap().role, PeerRole::Voter);
        assert_eq!(r4.peers[0].node_id, 1, "preferred leader kept");
    }

    #[test]
    fn changes_that_cannot_apply_are_refused() {
        let r = region();
        let refused = |c: PeerChange| plan(&c, &r, 7001).is_err();
        assert!(refused(PeerChange::AddLearner { node_id: 2 }));
        assert!(refused(PeerChange::AddLearner { node_id: 0 }));
        assert!(refused(PeerChange::AddLearner {
            node_id: NODE_ID_MAX + 1
        }));
        assert!(refused(PeerChange::Promote {
            node_id: 2,
            remove_node: 0
        }));
        assert!(refused(PeerChange::Remove { node_id: 1 }), "the leader");
        assert!(refused(PeerChange::Remove { node_id: 9 }));
        assert!(!refused(PeerChange::Remove { node_id: 2 }));
    }
}
