//! The other nodes a node sends raft messages to: those of
//! `--initial-cluster`, and those added later with `corekv ctl add-node`,
//! which are kept in the node's RocksDB so they outlive restarts.

use std::collections::HashMap;
use std::net::SocketAddr;

use corekv_engine::db::{self, cf, Db};
use corekv_engine::keys::{self, CF_META};
use corekv_net::message::NodeInfo;

use crate::error::NodesError;
use crate::node::NodeShared;

/// Nodes added after the cluster started: (id, peer address, client address).
pub fn load(db: &Db) -> Result<Vec<(u64, SocketAddr, String)>, NodesError> {
    let mut out = Vec::new();
    let mut it = db.raw_iterator_cf(cf(db, CF_META));
    it.seek(keys::node_key(0));
    while it.valid() {
        let Some(id) = it.key().and_then(keys::node_of_key) else {
            break;
        };
        let v = String::from_utf8_lossy(it.value().unwrap_or_default()).to_string();
        let (peer, client) = v.split_once(' ').ok_or_else(|| {
            NodesError::Damaged(format!("stored addresses of node {id} are damaged: {v:?}"))
        })?;
        let peer = peer
            .parse()
            .map_err(|e| NodesError::Damaged(format!("stored peer address of node {id}: {e}")))?;
        out.push((id, peer, client.to_string()));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Records node `id`'s addresses (synced) and starts sending to it.
/// Idempotent; refuses this node's own id and a different peer address
/// for a node already known.
pub fn add(
    node: &NodeShared,
    id: u64,
    peer_addr: &str,
    client_addr: &str,
) -> Result<(), NodesError> {
    if id == 0 || id > corekv_engine::membership::NODE_ID_MAX {
        return Err(NodesError::Refused(format!(
            "node id {id} is outside 1..={}",
            corekv_engine::membership::NODE_ID_MAX
        )));
    }
    if id == node.cfg.node_id {
        return Err(NodesError::Refused(format!("node {id} is the node asked")));
    }
    let peer: SocketAddr = peer_addr
        .parse()
        .map_err(|e| NodesError::Refused(format!("peer address {peer_addr:?}: {e}")))?;
    client_addr
        .parse::<SocketAddr>()
        .map_err(|e| NodesError::Refused(format!("client address {client_addr:?}: {e}")))?;
    {
        let addrs = node.peer_addrs.read().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = addrs.get(&id) {
            if *known != peer {
                return Err(NodesError::Refused(format!(
                    "node {id} is known with peer address {known}, not {peer}"
                )));
            }
        }
    }
    let mut wb = rocksdb::WriteBatch::default();
    wb.put_cf(
        cf(&node.db, CF_META),
        keys::node_key(id),
        format!("{peer} {client_addr}"),
    );
    // A node added (again) is not leaving.
    wb.delete_cf(cf(&node.db, CF_META), keys::retired_key(id));
    db::write(&node.db, wb, true)?;
    if let Ok(mut r) = node.retired.lock() {
        r.remove(&id);
    }
    node.peer_addrs
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, peer);
    if let Ok(mut nodes) = node.nodes.lock() {
        nodes.entry(id).or_insert(NodeInfo {
            node_id: id,
            client_addr: client_addr.to_string(),
            shard_count: 0,
        });
    }
    tracing::info!(node = id, %peer, client = client_addr, "node added");
    Ok(())
}

/// Peer addresses of every other node: `--initial-cluster` and the stored
/// ones.
pub fn peer_addrs(
    own_id: u64,
    initial: &std::collections::BTreeMap<u64, SocketAddr>,
    stored: &[(u64, SocketAddr, String)],
) -> HashMap<u64, SocketAddr> {
    initial
        .iter()
        .map(|(n, a)| (*n, *a))
        .chain(stored.iter().map(|(n, a, _)| (*n, *a)))
        .filter(|(n, _)| *n != own_id)
        .collect()
}

/// Nodes marked as leaving (`corekv ctl remove-node`).
pub fn load_retired(db: &Db) -> Result<std::collections::BTreeSet<u64>, NodesError> {
    let mut out = std::collections::BTreeSet::new();
    let mut it = db.raw_iterator_cf(cf(db, CF_META));
    it.seek(keys::retired_key(0));
    while it.valid() {
        let Some(id) = it.key().and_then(keys::node_of_retired_key) else {
            break;
        };
        out.insert(id);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Marks node `id` as leaving or not (synced): the placement driver puts
/// no replica on a leaving node.
pub fn retire(node: &NodeShared, id: u64, retired: bool) -> Result<(), NodesError> {
    let mut wb = rocksdb::WriteBatch::default();
    let meta = cf(&node.db, CF_META);
    if retired {
        wb.put_cf(meta, keys::retired_key(id), []);
    } else {
        wb.delete_cf(meta, keys::retired_key(id));
    }
    db::write(&node.db, wb, true)?;
    if let Ok(mut r) = node.retired.lock() {
        if retired {
            r.insert(id);
        } else {
            r.remove(&id);
        }
    }
    tracing::info!(node = id, retired, "node marked");
    Ok(())
}
