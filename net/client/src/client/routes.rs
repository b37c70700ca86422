//! Loading the routing table from the nodes, and which node or shard port
//! to send a region's request to (the table itself, I/O-free, is
//! [`crate::routing`]).

use super::*;
use crate::routing::{LoadStep, RoutesLoad};

impl Client {
    /// Reloads the routing table. A node answers with the regions it has a
    /// replica of; once replicas move, one node may not have them all, so
    /// answers are merged (newest epoch of each region wins) until they
    /// cover the whole hash space or every node was asked.
    pub(crate) fn refresh_routes(&mut self, deadline: Instant) -> std::result::Result<(), String> {
        let mut candidates: Vec<String> = self.nodes.values().cloned().collect();
        candidates.extend(self.cfg.endpoints.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|a| seen.insert(a.clone()));
        let mut load = RoutesLoad::default();
        for addr in candidates {
            let req = RoutesLoad::request(self.new_id());
            match self.call(&addr, &[req], deadline) {
                Ok(mut rs) => match load.answer(&addr, rs.remove(0).0.result) {
                    LoadStep::Next => {}
                    LoadStep::Done => break,
                    LoadStep::Refused(why) => {
                        self.login_refused = Some(why);
                        break;
                    }
                },
                Err(CallError::NotSent(e)) | Err(CallError::Lost(e)) => load.failed(e),
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let (merged, nodes_seen) = load.finish()?;
        self.install_routes(merged, nodes_seen);
        Ok(())
    }

    pub(super) fn install_routes(&mut self, regions: Vec<RouteInfo>, nodes: Vec<NodeInfo>) {
        self.routes.replace(regions);
        for n in nodes {
            if !n.client_addr.is_empty() {
                self.nodes.insert(n.node_id, n.client_addr);
            }
        }
    }

    pub(crate) fn route_index(&self, hash: u64) -> Option<usize> {
        self.routes.index(hash)
    }

    pub(super) fn is_down(&self, node: u64) -> bool {
        self.down_until
            .get(&node)
            .is_some_and(|t| *t > Instant::now())
    }

    /// Avoids `node` for a while after it failed to answer, and drops what
    /// the client holds of it: its connections (a restarted node closed
    /// them all) and its shard ports (it may listen on others, `--shard-ports
    /// auto`, which its next `Hello` gives).
    pub(crate) fn mark_down(&mut self, node: u64) {
        self.down_until.insert(node, Instant::now() + DOWN_FOR);
        let Some(addr) = self.nodes.get(&node) else {
            return;
        };
        self.conns.remove(addr);
        let ports = self.shard_ports.remove(addr).unwrap_or_default();
        if let Some((host, _)) = addr.rsplit_once(':') {
            for p in ports {
                self.conns.remove(&format!("{host}:{p}"));
            }
        }
    }

    /// The address of `shard`'s own port on the node whose client address
    /// is `node_addr`, if the client is shard-aware and that node's `Hello`
    /// gave one.
    pub(super) fn shard_addr(&self, node_addr: &str, shard: Option<u32>) -> Option<String> {
        if !self.cfg.shard_aware {
            return None;
        }
        let port = *self.shard_ports.get(node_addr)?.get(shard? as usize)?;
        let host = node_addr.rsplit_once(':')?.0;
        (port != 0).then(|| format!("{host}:{port}"))
    }

    /// Connects to the leader of region `i` once, if the client is
    /// shard-aware and knows the leader's shard but not yet the node's shard
    /// ports, so the request goes straight to the shard.
    pub(super) fn learn_shard_ports(&mut self, i: usize, deadline: Instant) {
        let (leader, shard) = (self.routes[i].leader_node, self.routes[i].leader_shard);
        if !self.cfg.shard_aware || shard.is_none() || self.is_down(leader) {
            return;
        }
        // Checked before the address is copied: this runs per request.
        let addr = match self.nodes.get(&leader) {
            Some(a) if !self.shard_ports.contains_key(a) => a.clone(),
            _ => return,
        };
        if self.conn(&addr, deadline).is_err() {
            self.mark_down(leader);
        }
    }

    /// Picks the node to send to for region `i`: the leader if known and not
    /// recently silent, otherwise a replica chosen by attempt number, skipping
    /// silent ones while others remain.
    pub(crate) fn target(&self, i: usize, attempt: u32) -> Option<(u64, String)> {
        let r = &self.routes[i];
        if r.leader_node != 0 && !self.is_down(r.leader_node) {
            if let Some(a) = self.nodes.get(&r.leader_node) {
                let addr = self
                    .shard_addr(a, r.leader_shard)
                    .unwrap_or_else(|| a.clone());
                return Some((r.leader_node, addr));
            }
        }
        let peers = &r.region.peers;
        if peers.is_empty() {
            return None;
        }
        let n = peers.len();
        let start = attempt as usize % n;
        let pick = (0..n)
            .map(|k| &peers[(start + k) % n])
            .find(|p| !self.is_down(p.node_id))
            .unwrap_or(&peers[start]);
        self.nodes
            .get(&pick.node_id)
            .map(|a| (pick.node_id, a.clone()))
    }

    /// Picks a replica of region `i` for a follower read: round-robin over
    /// the replicas, skipping recently silent ones while others remain, so
    /// reads spread over every replica.
    pub(super) fn any_replica(&self, i: usize, turn: usize) -> Option<(u64, String)> {
        let peers = &self.routes[i].region.peers;
        let n = peers.len();
        if n == 0 {
            return None;
        }
        let pick = (0..n)
            .map(|k| &peers[(turn + k) % n])
            .find(|p| !self.is_down(p.node_id))
            .unwrap_or(&peers[turn % n]);
        self.nodes
            .get(&pick.node_id)
            .map(|a| (pick.node_id, a.clone()))
    }
}
