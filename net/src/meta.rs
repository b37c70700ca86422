//! The cluster's metadata, kept in the meta region under keys beginning with
//! [`META_PREFIX`]: the node list, each node's report of the regions it
//! leads (together, the routing table) and the region id allocator.
//!
//! Nodes and `corekv ctl` read and change them with an ordinary client whose
//! requests are marked as the cluster's own ([`ClientConfig::system`]):
//! reads are linearizable, changes are read-modify-write with a version
//! condition, retried when another writer got there first.
//!
//! [`ClientConfig::system`]: crate::ClientConfig::system

use corekv_engine::codec::{Decoder, Encoder};
use corekv_engine::{Region, META_PREFIX};

use crate::client::{merge_routes, Client, ClientError, PutOptions, Result};
use crate::message::RouteInfo;
use corekv_engine::Consistency;

/// Attempts of one read-modify-write before giving up on contention.
const UPDATE_ATTEMPTS: u32 = 32;

/// Key of the node list.
pub fn nodes_key() -> Vec<u8> {
    [META_PREFIX, b"nodes"].concat()
}

/// Key of the regions node `node_id` reports leading.
pub fn routes_key(node_id: u64) -> Vec<u8> {
    [META_PREFIX, format!("routes/{node_id}").as_bytes()].concat()
}

/// Key of the next region id the allocator hands out.
pub fn next_region_id_key() -> Vec<u8> {
    [META_PREFIX, b"next-region-id"].concat()
}

/// One node of the cluster as the meta region records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node id.
    pub id: u64,
    /// Raft transport address.
    pub peer_addr: String,
    /// Client address.
    pub client_addr: String,
    /// Marked as leaving (`corekv ctl remove-node`): nothing is placed on it.
    pub leaving: bool,
}

/// Checks a write marked as the cluster's own ([`ClientConfig::system`]),
/// the only kind that may touch keys under [`META_PREFIX`]. While
/// authentication is off any client can set that mark, so these are the only
/// metadata writes a node takes, each with a value it can read:
/// - a put of the node list ([`nodes_key`]), conditioned on its version
///   (nodes recording themselves, `corekv ctl add-node`, `remove-node`);
/// - a put of a node's report of the regions it leads
///   ([`routes_key`]), each route naming that node as leader;
/// - a put of the region id allocator ([`next_region_id_key`]),
///   conditioned, never below the first allocated id;
/// - a put of the users ([`crate::auth::auth_key`]), conditioned, valid
///   (with authentication on, only a node or an admin may send one).
///
/// Deletes, compare-and-swaps, increments, batches, expiries and every
/// other metadata key are refused, with the reason. A write that touches no
/// metadata key passes.
///
/// [`ClientConfig::system`]: crate::ClientConfig::system
pub fn check_system_write(w: &corekv_engine::WriteRequest) -> std::result::Result<(), String> {
    use corekv_engine::{Condition, WriteRequest};
    if !w.keys().any(|k| corekv_engine::is_meta_key(k)) {
        return Ok(());
    }
    let WriteRequest::Put {
        key,
        value,
        ttl_ms: None,
        condition,
    } = w
    else {
        return Err(
            "metadata keys take only puts without expiry: the node list, a node's route \
             report and the region id allocator"
                .into(),
        );
    };
    let conditioned = matches!(condition, Condition::IfVersion(_) | Condition::IfAbsent);
    if key[..] == nodes_key()[..] {
        if !conditioned {
            return Err("the node list is written only with a version condition".into());
        }
        let nodes = decode_nodes(value)?;
        let mut ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != nodes.len() {
            return Err("node list: a node id twice".into());
        }
        return Ok(());
    }
    if key[..] == next_region_id_key()[..] {
        let next = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("region id allocator: not a number")?;
        if !conditioned || next < corekv_engine::region::FIRST_ALLOCATED_ID {
            return Err(
                "region id allocator: a conditioned put of an id at or above the first \
                 allocated id"
                    .into(),
            );
        }
        return Ok(());
    }
    if key[..] == crate::auth::auth_key()[..] {
        if !conditioned {
            return Err("the users are written only with a version condition".into());
        }
        let table = crate::auth::AuthTable::decode(value)?;
        return table.validate().map_err(|e| format!("users: {e}"));
    }
    let routes_prefix = [META_PREFIX, b"routes/"].concat();
    if let Some(node) = key.strip_prefix(&routes_prefix[..]) {
        let node: u64 = std::str::from_utf8(node)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("route report of a node id that is not a number")?;
        let routes = decode_routes(value)?;
        if routes.iter().any(|r| r.leader_node != node) {
            return Err(format!(
                "the route report of node {node} names another node as leader"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "{:?} is not a metadata key the cluster writes",
        String::from_utf8_lossy(&key[META_PREFIX.len().min(key.len())..])
    ))
}

/// The node list as stored: one line per node, `ID PEER CLIENT up|leaving`.
pub fn encode_nodes(nodes: &[NodeRecord]) -> Vec<u8> {
    let mut out = String::new();
    for n in nodes {
        let state = if n.leaving { "leaving" } else { "up" };
        out.push_str(&format!(
            "{} {} {} {state}\n",
            n.id, n.peer_addr, n.client_addr
        ));
    }
    out.into_bytes()
}

/// Reads a node list written by [`encode_nodes`].
pub fn decode_nodes(bytes: &[u8]) -> std::result::Result<Vec<NodeRecord>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("node list: {e}"))?;
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let [id, peer, client, state] = f[..] else {
                return Err(format!("node list line {line:?}: expected 4 fields"));
            };
            let id = id
                .parse()
                .map_err(|e| format!("node list line {line:?}: {e}"))?;
            let leaving = match state {
                "up" => false,
                "leaving" => true,
                s => return Err(format!("node list line {line:?}: unknown state {s:?}")),
            };
            Ok(NodeRecord {
                id,
                peer_addr: peer.to_string(),
                client_addr: client.to_string(),
                leaving,
            })
        })
        .collect()
}

/// Marks the routes encoding that carries each leader's shard (the first
/// encoding began with the entry count, which never reaches this).
const ROUTES_WITH_SHARDS: u32 = u32::MAX;

/// Regions with their leader (node and shard), as a node reports them.
pub fn encode_routes(routes: &[RouteInfo]) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u32(ROUTES_WITH_SHARDS);
    e.u32(routes.len() as u32);
    for r in routes {
        r.region.encode_to(&mut e);
        e.u64(r.leader_node);
        e.u32(r.leader_shard.unwrap_or(u32::MAX));
    }
    e.finish()
}

/// Reads routes written by [`encode_routes`] (or by a node of the first
/// encoding, without shards).
pub fn decode_routes(bytes: &[u8]) -> std::result::Result<Vec<RouteInfo>, String> {
    let mut d = Decoder::new(bytes, "routes");
    let first = d.u32().map_err(|e| e.to_string())?;
    let with_shards = first == ROUTES_WITH_SHARDS;
    let count = if with_shards {
        d.u32().map_err(|e| e.to_string())?
    } else {
        first
    } as usize;
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let region = Region::decode_from(&mut d).map_err(|e| e.to_string())?;
        let leader_node = d.u64().map_err(|e| e.to_string())?;
        let shard = if with_shards {
            d.u32().map_err(|e| e.to_string())?
        } else {
            u32::MAX
        };
        out.push(RouteInfo {
            region,
            leader_node,
            leader_shard: (shard != u32::MAX).then_some(shard),
        });
    }
    Ok(out)
}

/// The node list (empty before the first node is recorded).
pub fn read_nodes(client: &mut Client) -> Result<Vec<NodeRecord>> {
    match client.get(&nodes_key(), Consistency::Linearizable)? {
        Some(v) => decode_nodes(&v.value).map_err(ClientError::Protocol),
        None => Ok(Vec::new()),
    }
}

/// Changes the node list with `change` (which says whether it changed
/// anything) until the write lands unopposed; returns the list written (or
/// found, if nothing changed).
pub fn update_nodes(
    client: &mut Client,
    mut change: impl FnMut(&mut Vec<NodeRecord>) -> std::result::Result<bool, String>,
) -> Result<Vec<NodeRecord>> {
    let key = nodes_key();
    update(client, &key, |old| {
        let mut nodes = match old {
            Some(b) => decode_nodes(b)?,
            None => Vec::new(),
        };
        if !change(&mut nodes)? {
            return Ok((None, nodes));
        }
        nodes.sort_by_key(|n| n.id);
        Ok((Some(encode_nodes(&nodes)), nodes))
    })
}

/// Reserves `count` region ids from the allocator.
pub fn reserve_region_ids(client: &mut Client, count: u64) -> Result<std::ops::Range<u64>> {
    let key = next_region_id_key();
    update(client, &key, |old| {
        let next = match old {
            Some(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("next region id {b:?} is damaged"))?,
            None => corekv_engine::region::FIRST_ALLOCATED_ID,
        };
        let end = next
            .checked_add(count)
            .filter(|e| *e <= corekv_engine::admin::REGION_ID_MAX)
            .ok_or_else(|| "region ids are exhausted".to_string())?;
        Ok((Some(end.to_string().into_bytes()), next..end))
    })
}

/// Records the regions node `node_id` leads.
pub fn write_routes(client: &mut Client, node_id: u64, routes: &[RouteInfo]) -> Result<()> {
    client.put(
        &routes_key(node_id),
        &encode_routes(routes),
        PutOptions::default(),
    )?;
    Ok(())
}

/// The routing table: the reports of `nodes`, merged as a client merges
/// routing answers ([`merge_routes`]: the newest epoch of each region wins).
pub fn read_routes(client: &mut Client, nodes: &[u64]) -> Result<Vec<RouteInfo>> {
    let mut table = Vec::new();
    for n in nodes {
        let Some(v) = client.get(&routes_key(*n), Consistency::Linearizable)? else {
            continue;
        };
        merge_routes(
            &mut table,
            decode_routes(&v.value).map_err(ClientError::Protocol)?,
        );
    }
    Ok(table)
}

/// Read-modify-write of `key`: `f` gets the current value and returns the
/// value to write (None: nothing to write) and the result.
fn update<T>(
    client: &mut Client,
    key: &[u8],
    f: impl FnMut(Option<&[u8]>) -> std::result::Result<(Option<Vec<u8>>, T), String>,
) -> Result<T> {
    update_versioned(client, key, f).map(|(out, _)| out)
}

/// [`update`], with the version written (None: nothing was).
pub(crate) fn update_versioned<T>(
    client: &mut Client,
    key: &[u8],
    mut f: impl FnMut(Option<&[u8]>) -> std::result::Result<(Option<Vec<u8>>, T), String>,
) -> Result<(T, Option<u64>)> {
    for _ in 0..UPDATE_ATTEMPTS {
        let old = client.get(key, Consistency::Linearizable)?;
        let (new, out) =
            f(old.as_ref().map(|v| &v.value[..])).map_err(|message| ClientError::Invalid {
                code: crate::wire::ErrorCode::InvalidRequest,
                message,
            })?;
        let Some(new) = new else {
            return Ok((out, None));
        };
        let opts = match &old {
            Some(v) => PutOptions {
                if_version: Some(v.version),
                ..Default::default()
            },
            None => PutOptions {
                if_absent: true,
                ..Default::default()
            },
        };
        match client.put(key, &new, opts) {
            Ok(version) => return Ok((out, Some(version))),
            Err(ClientError::ConditionFailed { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Protocol(format!(
        "{}: changed by others {UPDATE_ATTEMPTS} times in a row",
        String::from_utf8_lossy(&key[META_PREFIX.len()..])
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_engine::{Epoch, PeerMeta, PeerRole};

    #[test]
    fn node_lists_and_routes_round_trip() {
        let nodes = vec![
            NodeRecord {
                id: 1,
                peer_addr: "127.0.0.1:7201".into(),
                client_addr: "127.0.0.1:7101".into(),
                leaving: false,
            },
            NodeRecord {
                id: 4,
                peer_addr: "127.0.0.1:7204".into(),
                client_addr: "127.0.0.1:7104".into(),
                leaving: true,
            },
        ];
        assert_eq!(decode_nodes(&encode_nodes(&nodes)).unwrap(), nodes);
        assert!(decode_nodes(b"1 a b gone\n").is_err());
        assert!(decode_nodes(b"1 a b\n").is_err());
        let route = RouteInfo {
            region: Region {
                id: 7,
                start_hash: 5,
                end_hash: 0,
                epoch: Epoch {
                    conf_ver: 3,
                    version: 2,
                },
                peers: vec![PeerMeta {
                    id: 7001,
                    node_id: 1,
                    role: PeerRole::Voter,
                }],
            },
            leader_node: 1,
            leader_shard: Some(1),
        };
        let mut routes = vec![route.clone(), route];
        routes[1].leader_shard = None;
        assert_eq!(decode_routes(&encode_routes(&routes)).unwrap(), routes);
        assert!(decode_routes(&[1, 0, 0, 0]).is_err());
        // The first encoding (count first, no shards) still reads.
        let mut first = Encoder::default();
        first.u32(1);
        routes[0].region.encode_to(&mut first);
        first.u64(1);
        let old = decode_routes(&first.finish()).unwrap();
        assert_eq!(old, vec![routes[1].clone()]);
    }

    #[test]
    fn only_the_metadata_writes_the_cluster_makes_are_taken() {
        use corekv_engine::{Condition, WriteRequest};
        let put = |key: Vec<u8>, value: &[u8], condition| WriteRequest::Put {
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value),
            ttl_ms: None,
            condition,
        };
        let list = encode_nodes(&[NodeRecord {
            id: 1,
            peer_addr: "127.0.0.1:7201".into(),
            client_addr: "127.0.0.1:7101".into(),
            leaving: false,
        }]);
        let v = Condition::IfVersion(3);
        assert!(check_system_write(&put(nodes_key(), &list, v)).is_ok());
        assert!(check_system_write(&put(nodes_key(), &list, Condition::None)).is_err());
        assert!(check_system_write(&put(nodes_key(), b"garbage", v)).is_err());
        let report = encode_routes(&[]);
        assert!(check_system_write(&put(routes_key(2), &report, Condition::None)).is_ok());
        assert!(check_system_write(&put(routes_key(2), b"\x01\x02", Condition::None)).is_err());
        assert!(check_system_write(&put(next_region_id_key(), b"10020", v)).is_ok());
        assert!(check_system_write(&put(next_region_id_key(), b"7", v)).is_err());
        let other = [META_PREFIX, b"anything"].concat();
        assert!(check_system_write(&put(other, b"x", v)).is_err());
        let delete = WriteRequest::Delete {
            key: nodes_key().into(),
            if_version: None,
        };
        assert!(check_system_write(&delete).is_err());
        assert!(check_system_write(&put(b"user".to_vec(), b"x", Condition::None)).is_ok());
    }

    #[test]
    fn metadata_keys_route_to_the_meta_region() {
        for k in [nodes_key(), routes_key(3), next_region_id_key()] {
            assert_eq!(corekv_engine::route_hash(&k), corekv_engine::META_HASH);
        }
    }
}
