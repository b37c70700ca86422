//! The node's side of the meta region ([`corekv_net::meta`]): a thread that,
//! twice a second,
//! - records this node in the node list if it is missing (a node of
//!   `--initial-cluster`, or one started after `corekv ctl add-node`),
//! - takes the node list into the node: peer addresses to send raft
//!   messages to, client addresses to tell clients, which nodes are
//!   leaving (kept in the node's RocksDB too, so a restarted node reaches
//!   the others before the meta region answers),
//! - reports the regions this node leads when that changed,
//! - reads the routing table (every node's report) that `Routes` requests
//!   are answered from, merged with the regions this node holds,
//! - keeps a few region ids reserved from the allocator for splits,
//! - reads the users ([`corekv_net::auth`]) into the node's gate, and again
//!   at once when a login the gate does not know asks for it.
//!
//! While the meta region has no quorum the node keeps what it last saw:
//! requests are served as before; only adding nodes and splitting wait.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use corekv_net::client::merge_routes;
use corekv_net::message::RouteInfo;
use corekv_net::meta::{self, NodeRecord};
use corekv_net::{Client, ClientConfig};

use crate::node::NodeShared;

const PASS_EVERY: Duration = Duration::from_millis(500);

/// How often the thread looks for a login's request to reread the users.
const STEP: Duration = Duration::from_millis(10);

/// Rereads of the users asked for by logins, at most one per this.
const AUTH_REREAD_MIN: Duration = Duration::from_millis(50);

/// Region ids reserved at a time.
const ID_BLOCK: u64 = 16;

/// Starts the thread.
pub fn spawn(node: Weak<NodeShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("corekv-meta".into())
        .spawn(move || {
            let mut sync = MetaSync::default();
            let mut last_warning: Option<Instant> = None;
            let mut last_pass = Instant::now();
            let mut last_auth = Instant::now();
            loop {
                std::thread::sleep(STEP);
                let Some(node) = node.upgrade() else { return };
                if node.is_stopping() {
                    return;
                }
                let due = last_pass.elapsed() >= PASS_EVERY;
                let asked =
                    last_auth.elapsed() >= AUTH_REREAD_MIN && node.auth.take_refresh_wanted();
                if !due && !asked {
                    continue;
                }
                last_auth = Instant::now();
                let done = if due {
                    last_pass = Instant::now();
                    sync.pass(&node)
                } else {
                    connected(&mut sync.client, &node)
                        .and_then(|c| read_users(&node, c, &mut sync.kept))
                };
                if let Err(mut e) = done {
                    if e.contains("unauthenticated") && node.auth.node_credentials().is_none() {
                        e = format!(
                            "{e} (authentication is on in this cluster: this node needs the \
                             cluster's --auth-key-file to reach the meta region)"
                        );
                    }
                    sync.client = None;
                    // Expected while the cluster starts or loses its
                    // quorum: said once in 30 s.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %e, "meta region not reachable");
                        last_warning = Some(Instant::now());
                    }
                }
            }
        })?;
    Ok(())
}

#[derive(Default)]
struct MetaSync {
    client: Option<Client>,
    /// What this node last reported leading.
    reported: Option<Vec<RouteInfo>>,
    /// The users as this node last kept them in its RocksDB (None: not
    /// since it started).
    kept: Option<corekv_net::auth::AuthTable>,
}

impl MetaSync {
    fn pass(&mut self, node: &Arc<NodeShared>) -> Result<(), String> {
        let client = connected(&mut self.client, node)?;
        read_users(node, client, &mut self.kept)?;
        let own = node.cfg.node_id;
        let mut nodes = meta::read_nodes(client).map_err(|e| e.to_string())?;
        if !nodes.iter().any(|n| n.id == own) {
            let me = NodeRecord {
                id: own,
                peer_addr: node.cfg.peer_listen.to_string(),
                client_addr: node.cfg.client_listen.to_string(),
                leaving: false,
            };
            nodes = meta::update_nodes(client, |list| {
                if list.iter().any(|n| n.id == own) {
                    return Ok(false);
                }
                list.push(me.clone());
                Ok(true)
            })
            .map_err(|e| e.to_string())?;
            tracing::info!(node = own, "recorded in the meta region's node list");
        }
        take_node_list(node, &nodes);

        let leading = leading(node);
        if self.reported.as_ref() != Some(&leading) {
            meta::write_routes(client, own, &leading).map_err(|e| e.to_string())?;
            self.reported = Some(leading);
        }
        let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        let table = meta::read_routes(client, &ids).map_err(|e| e.to_string())?;
        *node.meta_routes.lock().unwrap_or_else(|e| e.into_inner()) = table;

        let empty = node
            .region_ids
            .lock()
            .map(|r| r.is_empty())
            .unwrap_or(false);
        if empty {
            let block = meta::reserve_region_ids(client, ID_BLOCK).map_err(|e| e.to_string())?;
            tracing::debug!(from = block.start, to = block.end, "region ids reserved");
            *node.region_ids.lock().unwrap_or_else(|e| e.into_inner()) = block;
        }
        Ok(())
    }
}

/// The client in `slot`, connected first if need be.
fn connected<'a>(
    slot: &'a mut Option<Client>,
    node: &NodeShared,
) -> Result<&'a mut Client, String> {
    if slot.is_none() {
        *slot = Some(connect(node)?);
    }
    Ok(slot.as_mut().expect("connected above"))
}

/// Reads the users into the node's gate, and keeps a copy when they changed.
fn read_users(
    node: &NodeShared,
    client: &mut Client,
    kept: &mut Option<corekv_net::auth::AuthTable>,
) -> Result<(), String> {
    let (table, version) = corekv_net::auth::read_auth(client)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let was_on = node.auth.table().map(|k| k.enabled);
    if was_on != Some(table.enabled) && (was_on.is_some() || table.enabled) {
        tracing::info!(
            enabled = table.enabled,
            users = table.users.len(),
            "authentication"
        );
    }
    // The gate first: a failed write of the copy must not keep the node on
    // the old record.
    node.auth.set_read(table.clone(), version);
    if kept.as_ref() != Some(&table) {
        crate::auth::keep_copy(&node.db, &table)?;
        *kept = Some(table);
    }
    Ok(())
}

/// A client to the cluster through every node this one knows.
fn connect(node: &NodeShared) -> Result<Client, String> {
    let addrs: Vec<String> = node
        .nodes
        .lock()
        .map_err(|_| "node list lock poisoned".to_string())?
        .values()
        .map(|i| i.client_addr.clone())
        .filter(|a| !a.is_empty())
        .collect();
    let mut cfg = ClientConfig::new(addrs);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.system = true;
    cfg.credentials = node.auth.node_credentials();
    cfg.tls = node.dial_tls();
    Client::connect(cfg).map_err(|e| e.to_string())
}

/// Makes the node's peer and client addresses and leaving marks those of
/// the meta region's node list, and the addresses protected mode serves.
fn take_node_list(node: &NodeShared, list: &[NodeRecord]) {
    let own = node.cfg.node_id;
    let mut ips: Vec<std::net::IpAddr> =
        node.cfg.initial_cluster.values().map(|a| a.ip()).collect();
    ips.extend([node.cfg.client_listen.ip(), node.cfg.peer_listen.ip()]);
    for n in list {
        for a in [&n.peer_addr, &n.client_addr] {
            ips.extend(a.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
        }
    }
    node.auth.trust_nodes(ips);
    for n in list.iter().filter(|n| n.id != own) {
        let known = node
            .peer_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n.id)
            .map(|a| a.to_string());
        let listed = node
            .nodes
            .lock()
            .map(|m| m.get(&n.id).is_some_and(|i| i.client_addr == n.client_addr))
            .unwrap_or(true);
        if known.as_deref() != Some(n.peer_addr.as_str()) || !listed {
            if let Err(e) = crate::nodes::add(node, n.id, &n.peer_addr, &n.client_addr) {
                tracing::warn!(node = n.id, error = %e, "node of the meta region's list not taken");
            }
        }
    }
    let retired = node.retired.lock().map(|r| r.clone()).unwrap_or_default();
    for n in list {
        if n.leaving != retired.contains(&n.id) {
            if let Err(e) = crate::nodes::retire(node, n.id, n.leaving) {
                tracing::warn!(node = n.id, error = %e, "leaving mark not kept");
            }
        }
    }
}

/// The regions this node leads, as the routing table shows them.
fn leading(node: &NodeShared) -> Vec<RouteInfo> {
    let router = node.router();
    let own = node.cfg.node_id;
    let mut out: Vec<RouteInfo> = router
        .iter()
        .enumerate()
        .filter(|(i, _)| router.leader(*i) == own)
        .map(|(_, (r, shard))| RouteInfo {
            region: r.clone(),
            leader_node: own,
            leader_shard: Some(shard as u32),
        })
        .collect();
    out.sort_by_key(|r| r.region.id);
    out
}

/// The routing table a `Routes` request gets: this node's own view, where
/// the meta region's table has a region at a newer epoch (or names a leader
/// this node does not know) that entry instead ([`merge_routes`]).
pub fn merged_routes(node: &NodeShared, mut local: Vec<RouteInfo>) -> Vec<RouteInfo> {
    let table = node
        .meta_routes
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    merge_routes(&mut local, table);
    local
}

/// Takes a region id reserved from the meta region's allocator.
pub fn take_region_id(node: &NodeShared) -> Option<u64> {
    node.region_ids.lock().ok()?.next()
}
