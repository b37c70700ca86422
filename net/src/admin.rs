//! Placement operations carried out through a [`Client`], each waiting
//! until the cluster shows it done: make a replica its region's leader,
//! move a replica to another node, move a replica to another shard of its
//! node. The placement driver (in the server) and `corekv ctl` both run
//! them; each fails with an [`AdminError`] that says what did not happen.

use std::time::{Duration, Instant};

use corekv_engine::membership::PeerChange;
use corekv_engine::PeerRole;

use crate::client::{Client, ClientError};
use crate::message::RouteInfo;

/// Why a placement operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The routing table has no such region.
    #[error("no region {0} (see `corekv ctl regions`)")]
    NoRegion(u64),
    /// No such node is known.
    #[error("no node {0} (see `corekv ctl status`)")]
    NoNode(u64),
    /// The region has no replica on that node.
    #[error("region {region} has no replica on node {node}")]
    NoReplica {
        /// Region.
        region: u64,
        /// Node.
        node: u64,
    },
    /// The move's target already holds a voter of the region.
    #[error("region {region} already has a voter on node {node}")]
    AlreadyVoter {
        /// Region.
        region: u64,
        /// Node.
        node: u64,
    },
    /// No voter but the leaving one could lead the region.
    #[error("region {0} has no other voter to lead it")]
    NoOtherVoter(u64),
    /// The replica was made the preferred leader but did not take over.
    #[error(
        "node {node} is region {region}'s preferred leader, but did not lead within {wait:?} \
         (is it up and caught up?); it takes over once it is"
    )]
    NotLeading {
        /// Region.
        region: u64,
        /// Node.
        node: u64,
        /// How long it was waited for.
        wait: Duration,
    },
    /// A step was refused, or kept failing until the wait ended.
    #[error("{step}: {source}{}", if *.gave_up { " (gave up waiting)" } else { "" })]
    Step {
        /// What was being done.
        step: &'static str,
        /// The last error.
        source: ClientError,
        /// It failed until the wait ended (else it was refused).
        gave_up: bool,
    },
    /// The change was made but the cluster did not show it in time.
    #[error("region {region}: {what} did not show within {wait:?}")]
    NotShown {
        /// Region.
        region: u64,
        /// What was expected.
        what: String,
        /// How long it was waited for.
        wait: Duration,
    },
    /// The routing table could not be reloaded.
    #[error("reloading the routing table: {0}")]
    Routes(#[from] ClientError),
}

/// Result of placement operations.
pub type Result<T> = std::result::Result<T, AdminError>;

fn route_of(client: &Client, region_id: u64) -> Result<RouteInfo> {
    client
        .routes()
        .iter()
        .find(|r| r.region.id == region_id)
        .cloned()
        .ok_or(AdminError::NoRegion(region_id))
}

/// Runs `step` until it succeeds, retrying what a later try may fix
/// (catching up, leadership moving) until `wait` has passed; a request the
/// server calls invalid is not retried.
fn retry<T>(
    wait: Duration,
    what: &'static str,
    mut step: impl FnMut() -> crate::client::Result<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        match step() {
            Ok(v) => return Ok(v),
            Err(e @ ClientError::Invalid { .. }) => {
                return Err(AdminError::Step {
                    step: what,
                    source: e,
                    gave_up: false,
                })
            }
            Err(e) if started.elapsed() > wait => {
                return Err(AdminError::Step {
                    step: what,
                    source: e,
                    gave_up: true,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Makes `node_id`'s replica of `region_id` the region's preferred leader
/// and waits up to `wait` until it leads. Returns how long the move took.
pub fn transfer_leader(
    client: &mut Client,
    region_id: u64,
    node_id: u64,
    wait: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    route_of(client, region_id)?;
    client
        .transfer_leader(region_id, node_id)
        .map_err(|source| AdminError::Step {
            step: "asking for the transfer",
            source,
            gave_up: false,
        })?;
    loop {
        // A failed refresh (a node restarting) is retried until the wait ends.
        if client.refresh().is_ok() && leader_of(client, region_id) == Some(node_id) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > wait {
            return Err(AdminError::NotLeading {
                region: region_id,
                node: node_id,
                wait,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader_of(client: &Client, region_id: u64) -> Option<u64> {
    client
        .routes()
        .iter()
        .find(|r| r.region.id == region_id)
        .map(|r| r.leader_node)
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
    wait: Duration,
) -> Result<String> {
    let started = Instant::now();
    client.refresh()?;
    let r = route_of(client, region_id)?;
    if r.region.peer_on_node(from).is_none() {
        return match r.region.peer_on_node(to) {
            Some(p) if p.role == PeerRole::Voter => Ok(format!(
                "region {region_id}: already on node {to} and not on node {from}\n"
            )),
            _ => Err(AdminError::NoReplica {
                region: region_id,
                node: from,
            }),
        };
    }
    if r.region
        .peer_on_node(to)
        .is_some_and(|p| p.role == PeerRole::Voter)
    {
        return Err(AdminError::AlreadyVoter {
            region: region_id,
            node: to,
        });
    }
    // Leadership (and the preference that brings it back) leaves `from`.
    let other = r
        .region
        .peers
        .iter()
        .find(|p| p.node_id != from && p.role == PeerRole::Voter)
        .map(|p| p.node_id)
        .ok_or(AdminError::NoOtherVoter(region_id))?;
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
        // Refused: most likely leadership came back to `from` meanwhile (an
        // election; the leader refuses to remove itself). Move it away
        // again and promote once more; any other refusal comes back from
        // the second try.
        Err(AdminError::Step { gave_up: false, .. }) => {
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
            return Err(AdminError::NotShown {
                region: region_id,
                what: format!("the move from node {from} to node {to}"),
                wait: wait * 3,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "moved region {region_id} replica: node {from} -> node {to} ({} ms)\n",
        started.elapsed().as_millis()
    ))
}

/// The shard the status of the node at `addr` shows its replica of
/// `region_id` on, if it has one.
pub fn shard_of(client: &mut Client, addr: &str, region_id: u64) -> Option<usize> {
    let doc = client.status_doc(addr).ok()?;
    doc.regions
        .iter()
        .find(|r| r.id == region_id)
        .map(|r| r.shard)
}

/// Moves node `node_id`'s replica of `region_id` to its shard `shard`
/// (another core of the same node) and waits up to `wait` until the node's
/// status shows it there.
pub fn move_shard(
    client: &mut Client,
    region_id: u64,
    node_id: u64,
    shard: u32,
    wait: Duration,
) -> Result<String> {
    let started = Instant::now();
    client.refresh()?;
    let addr = client
        .nodes()
        .get(&node_id)
        .cloned()
        .ok_or(AdminError::NoNode(node_id))?;
    client
        .move_shard_on(&addr, region_id, shard)
        .map_err(|source| AdminError::Step {
            step: "asking for the shard move",
            source,
            gave_up: false,
        })?;
    loop {
        if shard_of(client, &addr, region_id) == Some(shard as usize) {
            return Ok(format!(
                "region {region_id} on node {node_id}: now on shard {shard} ({} ms)\n",
                started.elapsed().as_millis()
            ));
        }
        if started.elapsed() > wait {
            return Err(AdminError::NotShown {
                region: region_id,
                what: format!("its replica on node {node_id} on shard {shard}"),
                wait,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
