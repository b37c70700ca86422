//! The placement driver: evens out replicas per node, then leaders per node
//! (by requests/s under load, else by count), then replicas per shard, by
//! itself, a few moves a minute (`--placement-moves-per-min`), with the plan
//! of `corekv ctl balance` ([`plan`]).
//!
//! It runs on one node at a time: the one leading the meta region (while
//! leadership changes two may run for a moment; every step of
//! a move is a raft conf change checked against the region's current
//! membership, so a duplicate step is refused, never applied twice). Each
//! pass it asks the nodes for the routing table and acts only when the
//! cluster is settled: every node not marked as leaving (`corekv ctl
//! remove-node`) answers, every region has a leader and no learner (no move
//! in progress). It makes at most one move per pass:
//! the first step of the plan.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use corekv_engine::PeerRole;
use corekv_net::{Client, ClientConfig};

use crate::node::NodeShared;

pub mod count;
pub mod plan;

pub use plan::{Policy, Step, View};

const PASS_EVERY: Duration = Duration::from_secs(2);

/// Starts the driver thread (nothing if `--placement-moves-per-min 0`).
pub fn spawn(node: Weak<NodeShared>, moves_per_min: u32, policy: Policy) -> std::io::Result<()> {
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
                if recent.len() >= moves_per_min as usize || !leads_meta_region(&node) {
                    continue;
                }
                if pass(&node, &policy) {
                    recent.push(Instant::now());
                }
            }
        })?;
    Ok(())
}

fn leads_meta_region(node: &NodeShared) -> bool {
    let router = node.router();
    router
        .index_of_hash(corekv_engine::META_HASH)
        .is_some_and(|i| router.leader(i) == node.cfg.node_id)
}

/// One pass; true if it moved something.
fn pass(node: &Arc<NodeShared>, policy: &Policy) -> bool {
    let addrs: Vec<String> = match node.nodes.lock() {
        Ok(n) => n.values().map(|i| i.client_addr.clone()).collect(),
        Err(_) => return false,
    };
    let mut cfg = ClientConfig::new(addrs);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.credentials = node.auth.node_credentials();
    cfg.tls = node.dial_tls();
    let Ok(mut client) = Client::connect(cfg) else {
        return false;
    };
    let Ok(view) = View::gather(&mut client) else {
        return false;
    };
    // A node down (or cut off) would skew every count; its leaders come
    // back by themselves when it returns.
    let settled = view.unreachable.is_empty()
        && corekv_net::client::covers_hash_space(&view.routes)
        && view.routes.iter().all(|r| {
            r.leader_node != 0 && r.region.peers.iter().all(|p| p.role == PeerRole::Voter)
        });
    if !settled {
        return false;
    }
    let Some(step) = plan::plan(&view, policy).into_iter().next() else {
        return false;
    };
    match plan::run_step(&mut client, &step, Duration::from_secs(10)) {
        Ok(report) => {
            tracing::info!(report = report.trim(), "placement driver: {step}");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "placement driver: {step} failed");
            true
        }
    }
}
