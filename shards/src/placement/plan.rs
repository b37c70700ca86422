//! The placement plan of the placement driver and `corekv ctl balance`: which replicas, leaders and shards to move so that nodes and
//! cores carry even shares.
//!
//! Three phases, the first one with something to do wins (each changes
//! what the next one sees, so the next is planned once it is done):
//! 1. **replicas**: even out how many replicas each node holds
//!    ([`super::count::replica_plan`]);
//! 2. **leaders**: under load (at least [`Policy::min_load`] requests/s in
//!    all), even out the requests/s that the leaders on each node serve,
//!    then how many regions each node leads, moving only cold regions
//!    (each serving less than that gap) and only where the receiver ends
//!    no busier than the giver was; below it, by count only
//!    ([`super::count::balance_plan`]);
//! 3. **shards**: on each node, the same for its shards (requests/s the
//!    replicas on each shard serve under load, else replica counts).
//!
//! A load move is made only when it lowers the busier side by at least half
//! of the gap worth acting on (`max(min_load, 20% of the mean)`): the
//! reverse move can then never pass the same test, so steady load does not
//! make leaders flip back and forth (nor can a move by count undo one by
//! load, or the other way round). A single region hotter than the rest
//! together moves nowhere (that is a split's job, not a move's).

use std::collections::BTreeMap;
use std::time::Duration;

use corekv_engine::PeerRole;
use corekv_net::admin;
use corekv_net::message::RouteInfo;
use corekv_net::status::{NodeStatus, Role};
use corekv_net::Client;

use super::count::{balance_plan, count_plan, replica_plan, Move, ReplicaMove};

/// When load counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Requests per second (reads plus writes) below which leaders and
    /// shards are balanced by count, not by load; also the smallest gap
    /// worth a load move.
    pub min_load: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { min_load: 1000.0 }
    }
}

/// One replica as its node reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaLoad {
    /// Region.
    pub region_id: u64,
    /// Shard (core) of the node that holds it.
    pub shard: u32,
    /// It leads its region.
    pub leader: bool,
    /// Requests per second it served (reads plus writes).
    pub ops: f64,
}

/// What one node reports of its replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeLoad {
    /// Shards of the node.
    pub shards: u32,
    /// Its replicas.
    pub replicas: Vec<ReplicaLoad>,
}

/// What the plan is made from.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The routing table.
    pub routes: Vec<RouteInfo>,
    /// Nodes that may take replicas and leaders (answering, not leaving).
    pub nodes: Vec<u64>,
    /// What each node reported (nodes that did not answer are absent).
    pub loads: BTreeMap<u64, NodeLoad>,
    /// Known nodes, not leaving, that did not answer.
    pub unreachable: Vec<u64>,
}

impl View {
    /// The routing table as `client` sees it after a refresh and the status
    /// of every node it knows of; nodes that do not answer, or that a node
    /// reports as leaving (`corekv ctl remove-node`), take nothing.
    pub fn gather(client: &mut Client) -> corekv_net::client::Result<View> {
        client.refresh()?;
        let mut view = View {
            routes: client.routes().to_vec(),
            ..View::default()
        };
        let mut leaving = Vec::new();
        for (node, addr) in client.nodes_sorted() {
            let Ok(doc) = client.status_doc(&addr) else {
                view.unreachable.push(node);
                continue;
            };
            leaving.extend_from_slice(&doc.leaving);
            view.add_status(&doc);
        }
        view.nodes = view.loads.keys().copied().collect();
        view.nodes.retain(|n| !leaving.contains(n));
        view.unreachable.retain(|n| !leaving.contains(n));
        Ok(view)
    }

    /// Adds a node's status document (the `Status` answer).
    pub fn add_status(&mut self, doc: &NodeStatus) {
        let replicas = doc
            .regions
            .iter()
            .map(|r| ReplicaLoad {
                region_id: r.id,
                shard: r.shard as u32,
                leader: r.role == Role::Leader,
                ops: r.ops_per_sec(),
            })
            .collect();
        let shards = doc.shard_count as u32;
        self.loads
            .insert(doc.node_id, NodeLoad { shards, replicas });
    }

    /// Requests/s each region's leader reported serving.
    fn leader_loads(&self) -> BTreeMap<u64, f64> {
        self.loads
            .values()
            .flat_map(|n| n.replicas.iter().filter(|r| r.leader))
            .map(|r| (r.region_id, r.ops))
            .collect()
    }
}

/// A replica moving to another shard of its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMove {
    /// Region.
    pub region_id: u64,
    /// Node.
    pub node: u64,
    /// Shard it leaves.
    pub from: u32,
    /// Shard it goes to.
    pub to: u32,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Move a replica to another node.
    Replica(ReplicaMove),
    /// Make another replica the (preferred) leader.
    Leader(Move),
    /// Move a replica to another shard of its node.
    Shard(ShardMove),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Replica(m) => write!(
                f,
                "region {} replica: node {} -> node {}",
                m.region_id, m.from, m.to
            ),
            Step::Leader(m) => write!(
                f,
                "region {}: node {} -> node {}",
                m.region_id, m.from, m.to
            ),
            Step::Shard(m) => write!(
                f,
                "region {} on node {}: shard {} -> shard {}",
                m.region_id, m.node, m.from, m.to
            ),
        }
    }
}

/// Carries out `step`, waiting up to `wait`. Returns the report line.
pub fn run_step(client: &mut Client, step: &Step, wait: Duration) -> admin::Result<String> {
    Ok(match step {
        Step::Replica(m) => admin::move_replica(client, m.region_id, m.from, m.to, wait)?,
        Step::Leader(m) => {
            let took = admin::transfer_leader(client, m.region_id, m.to, wait)?;
            format!("moved {step} ({} ms)\n", took.as_millis())
        }
        Step::Shard(m) => admin::move_shard(client, m.region_id, m.node, m.to, wait)?,
    })
}

/// The steps of the first phase that has any (see the module doc).
pub fn plan(view: &View, policy: &Policy) -> Vec<Step> {
    let replicas = replica_plan(&view.routes, &view.nodes);
    if !replicas.is_empty() {
        return replicas.into_iter().map(Step::Replica).collect();
    }
    let leaders = leader_plan(view, policy);
    if !leaders.is_empty() {
        return leaders.into_iter().map(Step::Leader).collect();
    }
    shard_plan(view, policy)
        .into_iter()
        .map(Step::Shard)
        .collect()
}

/// Leader moves: by load when the cluster serves at least `min_load`,
/// else by count.
pub fn leader_plan(view: &View, policy: &Policy) -> Vec<Move> {
    let region_load = view.leader_loads();
    let total: f64 = region_load.values().sum();
    if total < policy.min_load {
        return balance_plan(&view.routes, &view.nodes);
    }
    let mut node_load: BTreeMap<u64, f64> = view.nodes.iter().map(|n| (*n, 0.0)).collect();
    let mut leader: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &view.routes {
        if let Some(l) = node_load.get_mut(&r.leader_node) {
            *l += region_load.get(&r.region.id).copied().unwrap_or(0.0);
            leader.insert(r.region.id, r.leader_node);
        }
    }
    let gap = worth_a_move(policy, total, node_load.len());
    let mut plan = Vec::new();
    for _ in 0..view.routes.len() {
        let Some((busiest, _)) = busiest(&node_load) else {
            break;
        };
        // Each region the busiest node leads, to each node with a voter.
        let options = view
            .routes
            .iter()
            .filter(|r| leader.get(&r.region.id) == Some(&busiest))
            .flat_map(|r| {
                r.region
                    .peers
                    .iter()
                    .filter(|p| p.role == PeerRole::Voter && p.node_id != busiest)
                    .filter(|p| node_load.contains_key(&p.node_id))
                    .map(move |p| (r.region.id, p.node_id))
            })
            .map(|(region, to)| {
                let load = region_load.get(&region).copied().unwrap_or(0.0);
                (region, to, load)
            });
        let Some((region_id, to, load)) = best_move(&node_load, busiest, options, gap) else {
            break;
        };
        *node_load.get_mut(&busiest).unwrap() -= load;
        *node_load.get_mut(&to).unwrap() += load;
        leader.insert(region_id, to);
        plan.push(Move {
            region_id,
            from: busiest,
            to,
        });
    }
    if plan.is_empty() {
        // Load is as even as moves can make it; even out counts with the
        // moves that make no node busier than the giver was.
        return count_plan(&view.routes, &view.nodes, Some((&region_load, gap)));
    }
    plan
}

/// Shard moves on every node of the view with more than one shard.
pub fn shard_plan(view: &View, policy: &Policy) -> Vec<ShardMove> {
    let mut plan = Vec::new();
    for (&node, report) in &view.loads {
        if report.shards > 1 && view.nodes.contains(&node) {
            plan.extend(node_shard_plan(node, report, policy));
        }
    }
    plan
}

fn node_shard_plan(node: u64, report: &NodeLoad, policy: &Policy) -> Vec<ShardMove> {
    let mut on: BTreeMap<u64, (u32, f64, bool)> = report
        .replicas
        .iter()
        .filter(|r| r.shard < report.shards)
        .map(|r| (r.region_id, (r.shard, r.ops, r.leader)))
        .collect();
    let total: f64 = on.values().map(|v| v.1).sum();
    let by_load = total >= policy.min_load;
    let gap = worth_a_move(policy, total, report.shards as usize);
    let mut plan = Vec::new();
    for _ in 0..on.len() {
        let mut shard_load: BTreeMap<u64, f64> =
            (0..report.shards).map(|s| (u64::from(s), 0.0)).collect();
        for (shard, ops, _) in on.values() {
            *shard_load.get_mut(&u64::from(*shard)).unwrap() += if by_load { *ops } else { 1.0 };
        }
        let Some((busiest, _)) = busiest(&shard_load) else {
            break;
        };
        let found = if by_load {
            let options = on
                .iter()
                .filter(|(_, v)| u64::from(v.0) == busiest)
                .flat_map(|(id, v)| {
                    (0..report.shards)
                        .map(u64::from)
                        .filter(move |s| *s != busiest)
                        .map(move |s| (*id, s, v.1))
                });
            best_move(&shard_load, busiest, options, gap).map(|(id, to, _)| (id, to))
        } else {
            // By count: more than one apart; a follower first (no requests
            // wait on it), then the lowest id.
            let (&emptiest, &lo) = shard_load
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
                .expect("more than one shard");
            (shard_load[&busiest] > lo + 1.0)
                .then(|| {
                    on.iter()
                        .filter(|(_, v)| u64::from(v.0) == busiest)
                        .min_by_key(|(id, v)| (v.2, **id))
                        .map(|(id, _)| (*id, emptiest))
                })
                .flatten()
        };
        let Some((region_id, to)) = found else {
            break;
        };
        on.get_mut(&region_id).unwrap().0 = to as u32;
        plan.push(ShardMove {
            region_id,
            node,
            from: busiest as u32,
            to: to as u32,
        });
    }
    plan
}

/// The smallest gain worth a load move among `parts` sharing `total`.
fn worth_a_move(policy: &Policy, total: f64, parts: usize) -> f64 {
    policy.min_load.max(0.2 * total / parts.max(1) as f64) / 2.0
}

/// The key with the highest load (the lowest key on a tie).
fn busiest(load: &BTreeMap<u64, f64>) -> Option<(u64, f64)> {
    load.iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(k, v)| (*k, *v))
}

/// Of the `(item, to, load)` options moving load off `from`, the one that
/// lowers the higher of the two sides the most, if by at least `min_gain`.
fn best_move(
    load: &BTreeMap<u64, f64>,
    from: u64,
    options: impl Iterator<Item = (u64, u64, f64)>,
    min_gain: f64,
) -> Option<(u64, u64, f64)> {
    let high = load[&from];
    options
        .filter_map(|(item, to, moved)| {
            let peak = (high - moved).max(load[&to] + moved);
            let gain = high - peak;
            (gain >= min_gain && moved > 0.0).then_some((gain, item, to, moved))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, item, to, moved)| (item, to, moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_engine::{Epoch, PeerMeta, Region};

    /// Region `id` with replicas on `nodes`, led by `leader`.
    fn route(id: u64, nodes: &[u64], leader: u64) -> RouteInfo {
        RouteInfo {
            region: Region {
                id,
                start_hash: id << 32,
                end_hash: (id + 1) << 32,
                epoch: Epoch {
                    conf_ver: 1,
                    version: 1,
                },
                peers: nodes
                    .iter()
                    .map(|n| PeerMeta {
                        id: id * 1000 + n,
                        node_id: *n,
                        role: PeerRole::Voter,
                    })
                    .collect(),
            },
            leader_node: leader,
            leader_shard: None,
        }
    }

    /// Nodes 1..=3, six regions on all three, each node leading two.
    fn cluster() -> View {
        let routes = (1..=6)
            .map(|id| route(id, &[1, 2, 3], 1 + (id - 1) % 3))
            .collect();
        let mut view = View {
            routes,
            nodes: vec![1, 2, 3],
            ..View::default()
        };
        for n in 1..=3 {
            view.loads.insert(
                n,
                NodeLoad {
                    shards: 1,
                    replicas: Vec::new(),
                },
            );
        }
        view.set_loads(&[0.0; 6]);
        view
    }

    impl View {
        /// Leader `ops` of regions 1..; followers serve nothing.
        fn set_loads(&mut self, ops: &[f64]) {
            for (node, report) in self.loads.iter_mut() {
                report.replicas = self
                    .routes
                    .iter()
                    .filter(|r| r.region.peer_on_node(*node).is_some())
                    .map(|r| {
                        let leader = r.leader_node == *node;
                        ReplicaLoad {
                            region_id: r.region.id,
                            shard: ((r.region.id - 1) % u64::from(report.shards)) as u32,
                            leader,
                            ops: if leader {
                                ops.get(r.region.id as usize - 1).copied().unwrap_or(0.0)
                            } else {
                                0.0
                            },
                        }
                    })
                    .collect();
            }
        }

        fn lead(&mut self, region: u64, node: u64) {
            self.routes
                .iter_mut()
                .find(|r| r.region.id == region)
                .unwrap()
                .leader_node = node;
        }
    }

    fn leader_moves(view: &View) -> Vec<(u64, u64, u64)> {
        leader_plan(view, &Policy::default())
            .into_iter()
            .map(|m| (m.region_id, m.from, m.to))
            .collect()
    }

    #[test]
    fn an_even_idle_cluster_needs_no_step() {
        assert_eq!(plan(&cluster(), &Policy::default()), vec![]);
    }

    #[test]
    fn idle_leaders_are_balanced_by_count() {
        let mut v = cluster();
        for r in 1..=6 {
            v.lead(r, 1);
        }
        v.set_loads(&[10.0; 6]);
        let moves = leader_moves(&v);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert!(moves.iter().all(|m| m.1 == 1));
    }

    #[test]
    fn the_hot_leaders_on_one_node_are_spread_whatever_the_counts() {
        let mut v = cluster();
        // Node 1 leads regions 1 and 4 (two each: counts are even), both hot.
        v.set_loads(&[5000.0, 10.0, 10.0, 5000.0, 10.0, 10.0]);
        let moves = leader_moves(&v);
        assert_eq!(moves.len(), 1, "{moves:?}");
        let (region, from, to) = moves[0];
        assert!(
            [1, 4].contains(&region) && from == 1 && to != 1,
            "{moves:?}"
        );
        // Then counts are evened out with cold regions only, and the plan
        // runs dry: nothing moves back.
        let loads = [5000.0, 10.0, 10.0, 5000.0, 10.0, 10.0];
        v.lead(region, to);
        for round in 0.. {
            v.set_loads(&loads);
            let moves = leader_moves(&v);
            if moves.is_empty() {
                break;
            }
            assert!(round < 3, "no end: {moves:?}");
            for (r, _, to) in moves {
                assert!(![1, 4].contains(&r), "hot region {r} moved again");
                v.lead(r, to);
            }
        }
        let led = |r: u64| v.routes[r as usize - 1].leader_node;
        assert_ne!(led(1), led(4));
    }

    #[test]
    fn under_an_even_load_a_node_leading_nothing_gets_its_share() {
        let mut v = cluster();
        // Node 3's regions moved to nodes 1 and 2 (it was down, say).
        v.lead(3, 1);
        v.lead(6, 2);
        v.set_loads(&[400.0; 6]);
        let moves = leader_moves(&v);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.iter().all(|m| m.2 == 3), "{moves:?}");
    }

    #[test]
    fn a_single_hot_region_moves_nowhere() {
        let mut v = cluster();
        v.set_loads(&[20_000.0, 10.0, 10.0, 10.0, 10.0, 10.0]);
        assert_eq!(leader_moves(&v), vec![]);
    }

    #[test]
    fn a_small_difference_moves_nothing() {
        let mut v = cluster();
        // 6,000 vs 4,000 vs 4,000: a move would only swap who is busiest.
        v.set_loads(&[3000.0, 2000.0, 2000.0, 3000.0, 2000.0, 2000.0]);
        assert_eq!(leader_moves(&v), vec![]);
    }

    #[test]
    fn load_goes_only_to_nodes_with_a_voter() {
        let mut v = cluster();
        v.routes = vec![
            route(1, &[1, 2], 1),
            route(2, &[1, 2], 1),
            route(3, &[3], 3),
        ];
        v.set_loads(&[4000.0, 4000.0, 0.0]);
        assert_eq!(leader_moves(&v), vec![(1, 1, 2)]);
    }

    #[test]
    fn replica_moves_come_before_leader_moves() {
        let mut v = cluster();
        v.nodes.push(4);
        v.loads.insert(4, NodeLoad::default());
        v.set_loads(&[5000.0, 10.0, 10.0, 5000.0, 10.0, 10.0]);
        let steps = plan(&v, &Policy::default());
        assert!(!steps.is_empty());
        assert!(
            steps.iter().all(|s| matches!(s, Step::Replica(_))),
            "{steps:?}"
        );
    }

    fn one_node_two_shards(shard_of: &[u32], ops: &[f64]) -> View {
        let routes: Vec<RouteInfo> = (1..=shard_of.len() as u64)
            .map(|id| route(id, &[1], 1))
            .collect();
        let replicas = routes
            .iter()
            .map(|r| ReplicaLoad {
                region_id: r.region.id,
                shard: shard_of[r.region.id as usize - 1],
                leader: true,
                ops: ops[r.region.id as usize - 1],
            })
            .collect();
        View {
            routes,
            nodes: vec![1],
            loads: [(
                1,
                NodeLoad {
                    shards: 2,
                    replicas,
                },
            )]
            .into(),
            ..View::default()
        }
    }

    #[test]
    fn two_hot_regions_on_one_shard_are_split_over_two() {
        let v = one_node_two_shards(&[0, 0, 1, 1], &[6000.0, 6000.0, 10.0, 10.0]);
        let steps = plan(&v, &Policy::default());
        assert_eq!(steps.len(), 1, "{steps:?}");
        let Step::Shard(m) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert!([1, 2].contains(&m.region_id) && m.from == 0 && m.to == 1);
        let v = one_node_two_shards(&[0, 1, 1, 1], &[6000.0, 6000.0, 10.0, 10.0]);
        assert_eq!(plan(&v, &Policy::default()), vec![]);
    }

    #[test]
    fn idle_shards_are_balanced_by_count() {
        let v = one_node_two_shards(&[0, 0, 0, 0, 1], &[1.0; 5]);
        let moves = shard_plan(&v, &Policy::default());
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!((moves[0].from, moves[0].to), (0, 1));
        let v = one_node_two_shards(&[0, 0, 0, 1, 1], &[1.0; 5]);
        assert_eq!(shard_plan(&v, &Policy::default()), vec![]);
    }
}
