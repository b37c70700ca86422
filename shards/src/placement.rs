//! The placement driver: evens out how many replicas each node holds, by
//! itself, a few moves a minute (`--placement-moves-per-min`).
//!
//! It runs on one node at a time: the one leading the region that owns
//! hash 0 (while leadership changes two may run for a moment; every step of
//! a move is a raft conf change checked against the region's current
//! membership, so a duplicate step is refused, never applied twice). Each
//! pass it asks the nodes for the routing table and acts only when the
//! cluster is settled: every region has a leader and no learner (no move in
//! progress). Only nodes that answer and are not marked as leaving
//! (`corekv ctl remove-node`) take part: replicas move from the fullest of
//! them to the emptiest. It makes at most
//! one move per pass, with the plan and the steps of `corekv ctl balance`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use corekv_engine::PeerRole;
use corekv_net::{Client, ClientConfig};

use crate::node::NodeShared;

const PASS_EVERY: Duration = Duration::from_secs(2);

/// Starts the driver thread (nothing if `--placement-moves-per-min 0`).
pub fn spawn(node: Weak<NodeShared>, moves_per_min: u32) -> std::io::Result<()> {
    if moves_per_min == 0 {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("corekv-placement".into())
        .spawn(move || {
            let mut recent: Vec<Instant> = Vec::new();
            loop {
                std::thread::sleep(PASS_EVERY);
                let Some(node) = node.upgrade() else { return };
                if node.is_stopping() {
                    return;
                }
                recent.retain(|t| t.elapsed() < Duration::from_secs(60));
                if recent.len() >= moves_per_min as usize || !leads_first_region(&node) {
                    continue;
                }
                if pass(&node) {
                    recent.push(Instant::now());
                }
            }
        })?;
    Ok(())
}

fn leads_first_region(node: &NodeShared) -> bool {
    let router = node.router();
    router
        .index_of_hash(0)
        .is_some_and(|i| router.leader(i) == node.cfg.node_id)
}

/// One pass; true if it moved a replica.
fn pass(node: &Arc<NodeShared>) -> bool {
    let addrs: Vec<(u64, String)> = match node.nodes.lock() {
        Ok(n) => n
            .values()
            .map(|i| (i.node_id, i.client_addr.clone()))
            .collect(),
        Err(_) => return false,
    };
    let mut cfg = ClientConfig::new(addrs.iter().map(|(_, a)| a.clone()).collect());
    cfg.request_timeout = Duration::from_secs(2);
    let Ok(mut client) = Client::connect(cfg) else {
        return false;
    };
    let routes = client.routes().to_vec();
    let settled = corekv_net::client::covers_hash_space(&routes)
        && routes.iter().all(|r| {
            r.leader_node != 0 && r.region.peers.iter().all(|p| p.role == PeerRole::Voter)
        });
    if !settled {
        return false;
    }
    let retired = node.retired.lock().map(|r| r.clone()).unwrap_or_default();
    let mut members: Vec<u64> = addrs
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !retired.contains(id))
        .collect();
    members.sort_unstable();
    // Balanced (the usual case): nothing more to ask.
    if corekv_tools::ctl::replica_plan(&routes, &members).is_empty() {
        return false;
    }
    let mut live: Vec<u64> = addrs
        .iter()
        .filter(|(id, addr)| members.contains(id) && client.status_of(addr).is_ok())
        .map(|(id, _)| *id)
        .collect();
    live.sort_unstable();
    let Some(m) = corekv_tools::ctl::replica_plan(&routes, &live)
        .into_iter()
        .next()
    else {
        return false;
    };
    match corekv_tools::ctl::move_replica(
        &mut client,
        m.region_id,
        m.from,
        m.to,
        Duration::from_secs(10),
    ) {
        Ok(report) => {
            tracing::info!(report = report.trim(), "placement driver moved a replica");
            true
        }
        Err(e) => {
            tracing::warn!(region = m.region_id, from = m.from, to = m.to, error = %format!("{e:#}"), "placement driver move failed");
            true
        }
    }
}
