//! Plans by count: even out how many replicas each node holds and how many
//! regions each node leads (the first and, below the load threshold, the
//! second phase of [`super::plan`]; `corekv ctl remove-node` drains a node
//! with [`replica_counts`]).

use std::collections::BTreeMap;

use corekv_engine::PeerRole;
use corekv_net::message::RouteInfo;

/// One leader move of a balance plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// Region.
    pub region_id: u64,
    /// Node preferred to lead it now.
    pub from: u64,
    /// Node to prefer instead.
    pub to: u64,
}

/// The leader moves that even out how many regions each node leads: while
/// the most- and least-loaded nodes differ by more than one, one region led
/// by the former with a voting replica on the latter moves (each move makes
/// the replica the region's preferred leader, so it stays). `nodes` are the
/// cluster's node ids (a node leading nothing counts as zero); regions
/// without a known leader are left alone.
pub fn balance_plan(routes: &[RouteInfo], nodes: &[u64]) -> Vec<Move> {
    count_plan(routes, nodes, None)
}

/// [`balance_plan`]; with `load` (requests/s per region and the most a
/// region may serve to count as cold), only cold regions move, the coldest
/// first, and only where the receiving node ends no busier than the giving
/// node was, so a move by count never undoes a move by load.
pub fn count_plan(
    routes: &[RouteInfo],
    nodes: &[u64],
    load: Option<(&BTreeMap<u64, f64>, f64)>,
) -> Vec<Move> {
    let mut preferred: BTreeMap<u64, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut busy: BTreeMap<u64, f64> = nodes.iter().map(|n| (*n, 0.0)).collect();
    let mut owner: BTreeMap<u64, u64> = BTreeMap::new();
    let load_of = |region: u64| load.and_then(|l| l.0.get(&region)).copied().unwrap_or(0.0);
    let cold = load.map_or(f64::INFINITY, |l| l.1);
    for r in routes.iter().filter(|r| r.leader_node != 0) {
        *preferred.entry(r.leader_node).or_default() += 1;
        *busy.entry(r.leader_node).or_default() += load_of(r.region.id);
        owner.insert(r.region.id, r.leader_node);
    }
    let mut plan = Vec::new();
    for _ in 0..routes.len() {
        let Some((&most, &hi)) = preferred
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
        else {
            break;
        };
        // The least-loaded node that can take one of `most`'s regions.
        let mut targets: Vec<(u64, u64)> = preferred
            .iter()
            .filter(|(n, c)| **n != most && **c + 1 < hi)
            .map(|(n, c)| (*c, *n))
            .collect();
        targets.sort_unstable();
        let found = targets.iter().find_map(|&(_, least)| {
            routes
                .iter()
                .filter(|r| {
                    let l = load_of(r.region.id);
                    owner.get(&r.region.id) == Some(&most)
                        && r.region
                            .peer_on_node(least)
                            .is_some_and(|p| p.role == PeerRole::Voter)
                        && (load.is_none() || (l <= cold && busy[&least] + l <= busy[&most]))
                })
                .min_by(|a, b| load_of(a.region.id).total_cmp(&load_of(b.region.id)))
                .map(|r| (r, least))
        });
        let Some((r, least)) = found else {
            // No region of the busiest node can move anywhere useful.
            break;
        };
        owner.insert(r.region.id, least);
        *preferred.get_mut(&most).unwrap() -= 1;
        *preferred.get_mut(&least).unwrap() += 1;
        *busy.get_mut(&most).unwrap() -= load_of(r.region.id);
        *busy.get_mut(&least).unwrap() += load_of(r.region.id);
        plan.push(Move {
            region_id: r.region.id,
            from: most,
            to: least,
        });
    }
    plan
}

/// One replica move of a balance plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMove {
    /// Region.
    pub region_id: u64,
    /// Node whose replica leaves.
    pub from: u64,
    /// Node that gets it.
    pub to: u64,
}

/// How many replicas each of `nodes` (and any other node holding one)
/// holds.
pub fn replica_counts(routes: &[RouteInfo], nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut count: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for r in routes {
        for p in &r.region.peers {
            *count.entry(p.node_id).or_default() += 1;
        }
    }
    count
}

/// The replica moves that even out how many replicas each of `nodes`
/// holds: while the fullest and emptiest differ by more than one, a region
/// with a replica on the former and none on the latter moves one there
/// (regions whose leader is on the fullest node last, to spare leader
/// transfers). Nodes not in `nodes` are left alone.
pub fn replica_plan(routes: &[RouteInfo], nodes: &[u64]) -> Vec<ReplicaMove> {
    let mut count = replica_counts(routes, nodes);
    count.retain(|n, _| nodes.contains(n));
    let mut layout: Vec<(u64, u64, Vec<u64>)> = routes
        .iter()
        .map(|r| {
            let on = r.region.peers.iter().map(|p| p.node_id).collect();
            (r.region.id, r.leader_node, on)
        })
        .collect();
    let mut plan = Vec::new();
    for _ in 0..routes.len() * 3 {
        let Some((&full, &hi)) = count
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
        else {
            break;
        };
        let Some((&empty, &lo)) = count.iter().min_by_key(|(n, c)| (**c, **n)) else {
            break;
        };
        if hi <= lo + 1 {
            break;
        }
        let pick = layout
            .iter_mut()
            .filter(|(_, _, on)| on.contains(&full) && !on.contains(&empty))
            .min_by_key(|(id, leader, _)| (*leader == full, *id));
        let Some((id, _, on)) = pick else {
            break;
        };
        on.retain(|n| *n != full);
        on.push(empty);
        plan.push(ReplicaMove {
            region_id: *id,
            from: full,
            to: empty,
        });
        *count.get_mut(&full).unwrap() -= 1;
        *count.get_mut(&empty).unwrap() += 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_engine::{Epoch, PeerMeta, Region};

    fn route(id: u64, nodes: &[u64], learner: Option<u64>) -> RouteInfo {
        RouteInfo {
            region: Region {
                id,
                start_hash: id << 40,
                end_hash: (id + 1) << 40,
                epoch: Epoch::default(),
                peers: nodes
                    .iter()
                    .map(|n| PeerMeta {
                        id: id * 1000 + n,
                        node_id: *n,
                        role: if Some(*n) == learner {
                            PeerRole::Learner
                        } else {
                            PeerRole::Voter
                        },
                    })
                    .collect(),
            },
            leader_node: nodes[0],
            leader_shard: None,
        }
    }

    #[test]
    fn a_plan_evens_out_preferred_leaders_and_only_moves_to_voters() {
        // Node 1 preferred for five regions, node 2 for one, node 3 for none.
        let mut routes: Vec<RouteInfo> = (1..=5).map(|i| route(i, &[1, 2, 3], None)).collect();
        routes.push(route(6, &[2, 3, 1], None));
        let plan = balance_plan(&routes, &[1, 2, 3]);
        let mut count = std::collections::BTreeMap::from([(1u64, 5i64), (2, 1), (3, 0)]);
        for m in &plan {
            assert_eq!(m.from, 1);
            *count.get_mut(&m.from).unwrap() -= 1;
            *count.get_mut(&m.to).unwrap() += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(plan.len(), 3);
        // Balanced already: nothing to do.
        let even: Vec<RouteInfo> = (1..=3)
            .map(|i| route(i, &[i, i % 3 + 1, (i + 1) % 3 + 1], None))
            .collect();
        assert!(balance_plan(&even, &[1, 2, 3]).is_empty());
        // A learner cannot be preferred: node 3 holds only learners.
        let learners: Vec<RouteInfo> = (1..=4).map(|i| route(i, &[1, 2, 3], Some(3))).collect();
        let plan = balance_plan(&learners, &[1, 2, 3]);
        assert!(plan.iter().all(|m| m.to == 2), "{plan:?}");
        assert_eq!(plan.len(), 2, "4 regions end 2 on node 1, 2 on node 2");
    }

    #[test]
    fn a_replica_plan_fills_a_new_node_and_never_doubles_a_region_on_one_node() {
        // Eight regions on nodes 1-3, node 4 empty.
        let routes: Vec<RouteInfo> = (1..=8).map(|i| route(i, &[1, 2, 3], None)).collect();
        let plan = replica_plan(&routes, &[1, 2, 3, 4]);
        assert_eq!(plan.len(), 6, "{plan:?}");
        assert!(plan.iter().all(|m| m.to == 4));
        let mut regions: Vec<u64> = plan.iter().map(|m| m.region_id).collect();
        regions.sort_unstable();
        regions.dedup();
        assert_eq!(regions.len(), 6, "one replica per region on node 4");
        let mut count = replica_counts(&routes, &[1, 2, 3, 4]);
        for m in &plan {
            *count.get_mut(&m.from).unwrap() -= 1;
            *count.get_mut(&m.to).unwrap() += 1;
        }
        assert!(count.values().all(|c| *c == 6), "{count:?}");
        // Balanced: nothing to move; three nodes of three-replica regions
        // cannot be unbalanced.
        assert!(replica_plan(&routes, &[1, 2, 3]).is_empty());
    }
}
