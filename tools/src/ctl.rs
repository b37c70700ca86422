//! `corekv ctl`: cluster inspection, leader and replica moves, membership.
//!
//! Every node answers a `Status` request with its status document (regions
//! with role, indexes, sizes and rates; shards; log writer counters): `ctl`
//! asks every node it knows of and shows the result. `transfer-leader` makes
//! a replica its region's preferred leader and waits until it leads;
//! `move-replica` moves a replica to another node (learner, catch-up, one
//! joint change); `balance` evens out replicas per node, then how many
//! regions each node leads; `add-node` and `remove-node` grow and drain the
//! cluster with them.

use corekv_net::message::RouteInfo;
use corekv_net::meta::{self, NodeRecord};
use corekv_net::{Client, ClientConfig};
use serde_json::Value;

/// Makes `node_id`'s replica of `region_id` the region's preferred leader
/// and waits up to `wait` until it leads. Returns how long the move took.
pub fn transfer_leader(
    client: &mut Client,
    region_id: u64,
    node_id: u64,
    wait: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    if !client.routes().iter().any(|r| r.region.id == region_id) {
        anyhow::bail!("no region {region_id} (see `corekv ctl regions`)");
    }
    client.transfer_leader(region_id, node_id)?;
    loop {
        // A failed refresh (a node restarting) is retried until the wait ends.
        if client.refresh().is_ok() {
            let leader = client
                .routes()
                .iter()
                .find(|r| r.region.id == region_id)
                .map_or(0, |r| r.leader_node);
            if leader == node_id {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > wait {
            anyhow::bail!(
                "node {node_id} is region {region_id}'s preferred leader, but did not lead within \
                 {wait:?} (is it up and caught up?); it takes over once it is"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

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
    load: Option<(&std::collections::BTreeMap<u64, f64>, f64)>,
) -> Vec<Move> {
    use std::collections::BTreeMap;
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
                            .is_some_and(|p| p.role == corekv_engine::PeerRole::Voter)
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

/// Runs the placement plan ([`crate::plan`]; only shows it with
/// `dry_run`): replica moves, then leader moves, then shard moves, one at a
/// time, each waiting up to `wait`. A dry run shows the first phase with
/// something to do (the next ones depend on it). Returns the report.
pub fn balance(
    client: &mut Client,
    dry_run: bool,
    policy: &crate::plan::Policy,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    let mut out = String::new();
    // Each round empties one phase; a fourth would only chase noise.
    for _ in 0..3 {
        let view = crate::plan::View::gather(client)?;
        let steps = crate::plan::plan(&view, policy);
        if steps.is_empty() {
            break;
        }
        run_steps(client, &steps, dry_run, wait, &mut out)?;
        if dry_run {
            out.push_str("(later phases are planned once these moves are done)\n");
            return Ok(out);
        }
    }
    if out.is_empty() {
        out.push_str("balanced: nothing to move\n");
    }
    Ok(out)
}

/// Carries out one step of a placement plan, waiting up to `wait`.
/// Returns the report line.
pub fn run_step(
    client: &mut Client,
    step: &crate::plan::Step,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    use crate::plan::Step;
    Ok(match step {
        Step::Replica(m) => move_replica(client, m.region_id, m.from, m.to, wait)?,
        Step::Leader(m) => {
            let took = transfer_leader(client, m.region_id, m.to, wait)?;
            format!("moved {step} ({} ms)\n", took.as_millis())
        }
        Step::Shard(m) => move_shard(client, m.region_id, m.node, m.to, wait)?,
    })
}

fn route_of(client: &Client, region_id: u64) -> anyhow::Result<RouteInfo> {
    client
        .routes()
        .iter()
        .find(|r| r.region.id == region_id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no region {region_id} (see `corekv ctl regions`)"))
}

/// Runs `step` until it succeeds, retrying what a later try may fix
/// (catching up, leadership moving) until `wait` has passed.
fn retry<T>(
    wait: std::time::Duration,
    what: &str,
    mut step: impl FnMut() -> corekv_net::client::Result<T>,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match step() {
            Ok(v) => return Ok(v),
            Err(e @ corekv_net::ClientError::Invalid { .. }) => {
                anyhow::bail!("{what}: {e}")
            }
            Err(e) if started.elapsed() > wait => {
                anyhow::bail!("{what}: {e} (gave up after {wait:?})")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Moves `region_id`'s replica on node `from` to node `to`: leadership
/// leaves `from` first if it leads, a learner on `to` receives a snapshot
/// and the log, and once it caught up one joint change makes it a voter
/// and takes `from` out; `from`'s replica is then destroyed. Each step
/// waits up to `wait`. Returns a report; rerunning after a failure picks up
/// where it stopped.
pub fn move_replica(
    client: &mut Client,
    region_id: u64,
    from: u64,
    to: u64,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    use corekv_engine::membership::PeerChange;
    use corekv_engine::PeerRole;
    let started = std::time::Instant::now();
    client.refresh()?;
    let r = route_of(client, region_id)?;
    if r.region.peer_on_node(from).is_none() {
        match r.region.peer_on_node(to) {
            Some(p) if p.role == PeerRole::Voter => {
                return Ok(format!(
                    "region {region_id}: already on node {to} and not on node {from}\n"
                ))
            }
            _ => anyhow::bail!("region {region_id} has no replica on node {from}"),
        }
    }
    if r.region
        .peer_on_node(to)
        .is_some_and(|p| p.role == PeerRole::Voter)
    {
        anyhow::bail!("region {region_id} already has a voter on node {to}");
    }
    // Leadership (and the preference that brings it back) leaves `from`.
    let other = r
        .region
        .peers
        .iter()
        .find(|p| p.node_id != from && p.role == PeerRole::Voter)
        .map(|p| p.node_id)
        .ok_or_else(|| anyhow::anyhow!("region {region_id} has no other voter to lead it"))?;
    if r.leader_node == from || r.region.peers.first().is_some_and(|p| p.node_id == from) {
        transfer_leader(client, region_id, other, wait)?;
    }
    if r.region.peer_on_node(to).is_none() {
        retry(wait, "adding the learner", || {
            client.change_peer(region_id, PeerChange::AddLearner { node_id: to })
        })?;
    }
    let promote = PeerChange::Promote {
        node_id: to,
        remove_node: from,
    };
    match retry(wait, "promoting the learner", || {
        client.change_peer(region_id, promote)
    }) {
        Ok(_) => {}
        // Leadership came back to `from` meanwhile (an election).
        Err(e) if e.to_string().contains("transfer leadership first") => {
            transfer_leader(client, region_id, other, wait)?;
            retry(wait, "promoting the learner", || {
                client.change_peer(region_id, promote)
            })?;
        }
        Err(e) => return Err(e),
    }
    // The joint configuration ends with the next entry.
    loop {
        if client.refresh().is_ok() {
            let r = route_of(client, region_id)?;
            let done = r.region.peer_on_node(from).is_none()
                && r.region
                    .peer_on_node(to)
                    .is_some_and(|p| p.role == PeerRole::Voter);
            if done {
                break;
            }
        }
        if started.elapsed() > wait * 3 {
            anyhow::bail!("region {region_id}: the move to node {to} did not complete in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(format!(
        "moved region {region_id} replica: node {from} -> node {to} ({} ms)\n",
        started.elapsed().as_millis()
    ))
}

/// The shard the status of the node at `addr` shows its replica of
/// `region_id` on, if it has one.
pub fn shard_of(client: &mut Client, addr: &str, region_id: u64) -> Option<u64> {
    let doc: Value = serde_json::from_str(&client.status_of(addr).ok()?).ok()?;
    doc["regions"]
        .as_array()?
        .iter()
        .find(|r| r["id"].as_u64() == Some(region_id))?["shard"]
        .as_u64()
}

/// Moves node `node_id`'s replica of `region_id` to its shard `shard`
/// (another core of the same node) and waits up to `wait` until the node's
/// status shows it there.
pub fn move_shard(
    client: &mut Client,
    region_id: u64,
    node_id: u64,
    shard: u32,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    client.refresh()?;
    let addr = client
        .nodes()
        .get(&node_id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no node {node_id} (see `corekv ctl status`)"))?;
    client.move_shard_on(&addr, region_id, shard)?;
    loop {
        if shard_of(client, &addr, region_id) == Some(u64::from(shard)) {
            return Ok(format!(
                "region {region_id} on node {node_id}: now on shard {shard} ({} ms)\n",
                started.elapsed().as_millis()
            ));
        }
        if started.elapsed() > wait {
            anyhow::bail!(
                "region {region_id} on node {node_id} is not on shard {shard} after {wait:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `steps` one at a time (with `dry_run`, only lists them),
/// reporting into `out`.
fn run_steps(
    client: &mut Client,
    steps: &[crate::plan::Step],
    dry_run: bool,
    wait: std::time::Duration,
    out: &mut String,
) -> anyhow::Result<()> {
    for step in steps {
        if dry_run {
            out.push_str(&format!("would move {step}\n"));
        } else {
            out.push_str(&run_step(client, step, wait)?);
        }
    }
    Ok(())
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

fn replica_counts(routes: &[RouteInfo], nodes: &[u64]) -> std::collections::BTreeMap<u64, usize> {
    let mut count: std::collections::BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
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

/// What a consistency check found (see [`check`]).
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One paragraph per region checked.
    pub text: String,
    /// Regions where some replica's digest differs from the leader's.
    pub mismatched: Vec<u64>,
    /// Regions not verified everywhere (a replica did not report in time,
    /// skipped the check, or the check could not start).
    pub unverified: Vec<u64>,
}

impl CheckReport {
    /// True when every replica of every region checked matched its leader.
    pub fn ok(&self) -> bool {
        self.mismatched.is_empty() && self.unverified.is_empty()
    }
}

/// Checks that every replica of `region` (every region when `None`) holds
/// the same data as its leader: a raft entry at whose index each replica
/// computes a digest of its keys, values, versions, expiries and sessions,
/// compared with the leader's (see `corekv_engine::digest`). Starts every
/// region's check, then waits up to `wait` for every replica's verdict in
/// its node's status.
pub fn check(
    client: &mut Client,
    region: Option<u64>,
    wait: std::time::Duration,
) -> anyhow::Result<CheckReport> {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    client.refresh()?;
    let routes: Vec<_> = client
        .routes()
        .iter()
        .filter(|r| region.is_none_or(|id| r.region.id == id))
        .cloned()
        .collect();
    if routes.is_empty() {
        anyhow::bail!(
            "no region {} (see `corekv ctl regions`)",
            region.unwrap_or(0)
        );
    }
    let mut report = CheckReport::default();
    // Started everywhere first: (region, index, its nodes).
    let mut started = Vec::new();
    for route in &routes {
        let id = route.region.id;
        match client.check(id) {
            Ok(index) => {
                let nodes: Vec<u64> = route.region.peers.iter().map(|p| p.node_id).collect();
                started.push((id, index, nodes));
            }
            Err(e) => {
                let _ = writeln!(report.text, "region {id}: not checked: {e}");
                report.unverified.push(id);
            }
        }
    }
    // (region, node) -> the verdict that node shows for that check.
    let mut verdicts: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    let wanted: usize = started.iter().map(|(_, _, n)| n.len()).sum();
    let deadline = std::time::Instant::now() + wait;
    let nodes: Vec<(u64, String)> = client.nodes_sorted();
    while verdicts.len() < wanted && std::time::Instant::now() < deadline {
        for (node, addr) in &nodes {
            let Some(doc) = client
                .status_of(addr)
                .ok()
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
            else {
                continue;
            };
            for row in doc["regions"].as_array().into_iter().flatten() {
                let id = row["id"].as_u64().unwrap_or(0);
                let Some((_, index, _)) = started.iter().find(|(r, _, _)| *r == id) else {
                    continue;
                };
                if row["check"]["index"].as_u64().is_some_and(|i| i >= *index) {
                    verdicts.insert((id, *node), row["check"].clone());
                }
            }
        }
        if verdicts.len() < wanted {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let digest = |c: &Value, k: &str| {
        format!(
            "{} ({} keys, {} bytes)",
            c[k]["hash"].as_str().unwrap_or("?"),
            c[k]["keys"],
            c[k]["bytes"]
        )
    };
    for (id, index, peers) in &started {
        let of = |v: &str| -> Vec<u64> {
            peers
                .iter()
                .copied()
                .filter(|n| {
                    verdicts
                        .get(&(*id, *n))
                        .is_some_and(|c| c["verdict"].as_str() == Some(v))
                })
                .collect()
        };
        let (same, differ, skipped) = (of("match"), of("mismatch"), of("skipped"));
        let silent: Vec<u64> = peers
            .iter()
            .copied()
            .filter(|n| !verdicts.contains_key(&(*id, *n)))
            .collect();
        let leader = peers
            .iter()
            .find_map(|n| verdicts.get(&(*id, *n)))
            .map_or_else(|| "?".to_string(), |c| digest(c, "leader"));
        let _ = writeln!(
            report.text,
            "region {id} at index {index}: leader's digest {leader}; match on nodes {same:?}"
        );
        for n in &differ {
            let _ = writeln!(
                report.text,
                "  MISMATCH on node {n}: {}",
                digest(&verdicts[&(*id, *n)], "own")
            );
        }
        if !differ.is_empty() {
            report.mismatched.push(*id);
        }
        if !skipped.is_empty() || !silent.is_empty() {
            let _ = writeln!(
                report.text,
                "  not verified on nodes {skipped:?} (reached that index by snapshot) and \
                 {silent:?} (no verdict within {} ms)",
                wait.as_millis()
            );
            report.unverified.push(*id);
        }
    }
    let _ = writeln!(
        report.text,
        "{}",
        if report.ok() {
            format!(
                "{} regions: every replica matches its leader",
                started.len()
            )
        } else {
            format!(
                "mismatched regions {:?}, unverified regions {:?}",
                report.mismatched, report.unverified
            )
        }
    );
    Ok(report)
}

/// Records a new node `node_id` in the meta region's node list (run before
/// starting it with `--join`) and waits until every node answering has
/// taken it. Idempotent; refuses an id known with another peer address.
/// `client` is marked as the cluster's own ([`Client::set_system`]).
pub fn add_node(
    client: &mut Client,
    node_id: u64,
    peer_addr: &str,
    client_addr: &str,
) -> anyhow::Result<String> {
    if node_id == 0 || node_id > corekv_engine::membership::NODE_ID_MAX {
        anyhow::bail!(
            "node id {node_id} is outside 1..={}",
            corekv_engine::membership::NODE_ID_MAX
        );
    }
    for (what, a) in [("peer", peer_addr), ("client", client_addr)] {
        a.parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("{what} address {a:?}: {e}"))?;
    }
    client.set_system(true);
    client.refresh()?;
    meta::update_nodes(client, |list| {
        match list.iter_mut().find(|n| n.id == node_id) {
            Some(n) if n.peer_addr != peer_addr => Err(format!(
                "node {node_id} is known with peer address {}, not {peer_addr}",
                n.peer_addr
            )),
            Some(n) => {
                // Added again: its client address may have changed, and it
                // is no longer leaving.
                let changed = n.client_addr != client_addr || n.leaving;
                n.client_addr = client_addr.to_string();
                n.leaving = false;
                Ok(changed)
            }
            None => {
                list.push(NodeRecord {
                    id: node_id,
                    peer_addr: peer_addr.to_string(),
                    client_addr: client_addr.to_string(),
                    leaving: false,
                });
                Ok(true)
            }
        }
    })?;
    let took = wait_for_nodes(client, node_id, |doc| {
        doc["known_nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(node_id)))
    });
    Ok(format!(
        "node {node_id} (peer {peer_addr}, client {client_addr}) recorded in the meta region; \
         {took}; start it with --join, then the placement driver (or `corekv ctl balance`) \
         moves replicas to it\n"
    ))
}

/// Waits up to 10 s until every node other than `node_id` that answers
/// shows `taken` in its status document; says which did.
fn wait_for_nodes(client: &mut Client, node_id: u64, taken: impl Fn(&Value) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut pending = Vec::new();
        for (n, addr) in client.nodes_sorted() {
            if n == node_id {
                continue;
            }
            let done = client
                .status_of(&addr)
                .ok()
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
                .is_some_and(|doc| taken(&doc));
            if !done {
                pending.push(n);
            }
        }
        if pending.is_empty() {
            return "every node has taken it".into();
        }
        if std::time::Instant::now() > deadline {
            return format!("nodes {pending:?} have not taken it yet (they will once they reach the meta region)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Moves every replica off node `node_id`, each to the node with the
/// fewest replicas that has none of that region. Refuses before moving
/// anything if some region would have nowhere to go (it would lose a
/// replica, and with it fault tolerance or its quorum). Marks the node as
/// leaving in the meta region first (`client` is marked as the cluster's
/// own, [`Client::set_system`]).
pub fn remove_node(
    client: &mut Client,
    node_id: u64,
    dry_run: bool,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    client.refresh()?;
    let mut others: Vec<u64> = client
        .nodes()
        .keys()
        .copied()
        .filter(|n| *n != node_id)
        .collect();
    others.sort_unstable();
    let routes = client.routes().to_vec();
    let mut count = replica_counts(&routes, &others);
    count.retain(|n, _| *n != node_id);
    let mut plan = Vec::new();
    for r in routes
        .iter()
        .filter(|r| r.region.peer_on_node(node_id).is_some())
    {
        // A learner left by an interrupted move is where the replica goes.
        let learner = r
            .region
            .peers
            .iter()
            .find(|p| p.role == corekv_engine::PeerRole::Learner && p.node_id != node_id)
            .map(|p| p.node_id);
        let to = learner.or_else(|| {
            count
                .iter()
                .filter(|(n, _)| r.region.peer_on_node(**n).is_none())
                .min_by_key(|(n, c)| (**c, **n))
                .map(|(n, _)| *n)
        });
        let Some(to) = to else {
            anyhow::bail!(
                "region {} has a replica on every other node: removing node {node_id} would \
                 leave it with fewer replicas; add a node first",
                r.region.id
            );
        };
        *count.get_mut(&to).unwrap() += 1;
        plan.push(ReplicaMove {
            region_id: r.region.id,
            from: node_id,
            to,
        });
    }
    let mut out = String::new();
    if !dry_run {
        // The placement driver must not move replicas back to it.
        client.set_system(true);
        meta::update_nodes(client, |list| {
            match list.iter_mut().find(|n| n.id == node_id) {
                Some(n) => {
                    let changed = !n.leaving;
                    n.leaving = true;
                    Ok(changed)
                }
                None => Err(format!(
                    "node {node_id} is not in the meta region's node list"
                )),
            }
        })?;
        let took = wait_for_nodes(client, node_id, |doc| {
            doc["leaving"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(node_id)))
        });
        let _ = writeln!(out, "node {node_id} marked as leaving: {took}");
    }
    if plan.is_empty() {
        let _ = writeln!(out, "node {node_id} holds no replica: it can be stopped");
        return Ok(out);
    }
    let steps: Vec<_> = plan.into_iter().map(crate::plan::Step::Replica).collect();
    run_steps(client, &steps, dry_run, wait, &mut out)?;
    if !dry_run {
        let _ = writeln!(
            out,
            "node {node_id} drained: it holds no replica and can be stopped"
        );
    }
    Ok(out)
}

/// Splits `region_id` at `at` (default: the middle of its range); returns
/// the two regions as text.
pub fn split(client: &mut Client, region_id: u64, at: Option<u64>) -> anyhow::Result<String> {
    let Some(before) = client
        .routes()
        .iter()
        .find(|r| r.region.id == region_id)
        .cloned()
    else {
        anyhow::bail!("no region {region_id} (see `corekv ctl regions`)");
    };
    let index = client.split(region_id, at)?;
    let mut out = format!("region {region_id} split at log index {index}:\n");
    let end = before.region.end_hash;
    for r in client.routes() {
        let inside = r.region.start_hash >= before.region.start_hash
            && (end == 0 || r.region.start_hash < end);
        if inside {
            out.push_str(&format!(
                "  region {:<16} {:016x}-{:016x} epoch {}/{}\n",
                r.region.id,
                r.region.start_hash,
                r.region.end_hash,
                r.region.epoch.conf_ver,
                r.region.epoch.version
            ));
        }
    }
    Ok(out)
}

/// The status documents of every node reachable through `endpoints`.
pub fn gather(endpoints: Vec<String>, timeout: std::time::Duration) -> anyhow::Result<Vec<Value>> {
    let mut cfg = ClientConfig::new(endpoints.clone());
    cfg.request_timeout = timeout;
    let mut client = Client::connect(cfg)?;
    let mut addrs = client.nodes_sorted();
    if addrs.is_empty() {
        addrs = endpoints.into_iter().map(|a| (0, a)).collect();
    }
    let mut docs = Vec::new();
    for (id, addr) in addrs {
        match client.status_of(&addr) {
            Ok(text) => docs.push(serde_json::from_str(&text)?),
            Err(e) => docs.push(
                serde_json::json!({"node_id": id, "client_addr": addr, "error": e.to_string()}),
            ),
        }
    }
    Ok(docs)
}

/// One row per region: the leader's view when a leader answered, else any.
pub fn merge_regions(docs: &[Value]) -> Vec<Value> {
    let mut by_id: std::collections::BTreeMap<u64, Value> = std::collections::BTreeMap::new();
    for d in docs {
        let node = d["node_id"].as_u64().unwrap_or(0);
        for r in d["regions"].as_array().into_iter().flatten() {
            let id = r["id"].as_u64().unwrap_or(0);
            let mut row = r.clone();
            row["reported_by"] = node.into();
            let is_leader = r["role"] == "leader";
            match by_id.get(&id) {
                Some(old) if old["role"] == "leader" || !is_leader => {}
                _ => {
                    by_id.insert(id, row);
                }
            }
        }
    }
    by_id.into_values().collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `ctl status` as a table.
pub fn status_table(docs: &[Value]) -> String {
    let mut s = String::from(
        "node  client address         shards  regions  leaders  fsyncs   entries/fsync  uptime s\n",
    );
    for d in docs {
        if let Some(e) = d.get("error") {
            s += &format!(
                "{:<5} {:<22} unreachable: {}\n",
                n(&d["node_id"]),
                d["client_addr"].as_str().unwrap_or(""),
                e
            );
            continue;
        }
        let regions = d["regions"].as_array().map_or(0, |r| r.len());
        s += &format!(
            "{:<5} {:<22} {:<7} {:<8} {:<8} {:<8} {:<14} {}\n",
            n(&d["node_id"]),
            d["client_addr"].as_str().unwrap_or(""),
            n(&d["shard_count"]),
            regions,
            n(&d["leaders"]),
            n(&d["log_writer"]["fsyncs"]),
            d["log_writer"]["entries_per_fsync"],
            n(&d["uptime_secs"]),
        );
        for sh in d["shards"].as_array().into_iter().flatten() {
            s += &format!(
                "        shard {}: {} regions, {} leaders\n",
                n(&sh["shard"]),
                n(&sh["regions"]),
                n(&sh["leaders"])
            );
        }
    }
    s
}

/// `ctl regions` as a table.
pub fn regions_table(rows: &[Value]) -> String {
    let mut s = String::from(
        "region  hash range                               epoch  peers(nodes)  leader(node/shard)  applied  log  keys  bytes  read/s  write/s\n",
    );
    for r in rows {
        let peers: Vec<String> = r["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| n(&p["node"]).to_string())
            .collect();
        let leader = if r["role"] == "leader" {
            format!("{}/{}", n(&r["leader_node"]), n(&r["shard"]))
        } else if n(&r["leader_node"]) != 0 {
            format!("{}/?", n(&r["leader_node"]))
        } else {
            "none".into()
        };
        s += &format!(
            "{:<7} {:016x}-{:016x}  {}/{}    {:<13} {:<19} {:<8} {:<4} {:<5} {:<6} {:<7} {}\n",
            n(&r["id"]),
            n(&r["start_hash"]),
            n(&r["end_hash"]),
            n(&r["epoch"]["conf_ver"]),
            n(&r["epoch"]["version"]),
            peers.join(","),
            leader,
            n(&r["applied_index"]),
            n(&r["log_entries"]),
            n(&r["keys"]),
            n(&r["bytes"]),
            r["read_ops_per_sec"],
            r["write_ops_per_sec"],
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_engine::{Epoch, PeerMeta, PeerRole, Region};

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
