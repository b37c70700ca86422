//! The routing table a client keeps, I/O-free: the regions sorted by
//! start, each with the leader last heard of, and what an error answer
//! means for it. The native client and `corekv-bench` both route with it.
//!
//! What it decides, per answer (see [`RouteTable::on_error`]):
//! - `NotLeader` with a hint: the hinted node is the leader now; retry
//!   there at once. Without one: the leader is unknown, retry after a pause.
//! - `EpochNotMatch`, `RegionNotFound`: the region split or moved; reload
//!   the table, then retry.
//! - `Busy`, `ProposalDropped`, `ShuttingDown`: try another replica after a
//!   pause.
//! - anything else is not a routing matter.

use std::ops::{Deref, Index, IndexMut};

use crate::message::{NodeInfo, Op, Outcome, Request, RouteInfo, WireError};
use crate::wire::ErrorCode;

/// One attempt at `op` on region `(region_id, epoch)`. Once an attempt of
/// a write may have been applied (`uncertain`), every later one says so: a
/// region that forgot it answers Timeout rather than apply it twice.
pub fn attempt_request(
    id: u64,
    (region_id, epoch): (u64, corekv_types::Epoch),
    op: &Op,
    (session, uncertain): (Option<corekv_types::SessionTag>, bool),
    system: bool,
) -> Request {
    Request {
        id,
        region_id,
        epoch,
        op: op.clone(),
        session: session.map(|s| corekv_types::SessionTag {
            retry: uncertain,
            ..s
        }),
        system,
    }
}

/// Loading the table from the nodes, one answer at a time (both clients
/// drive it over their own I/O): the answers are merged until they cover
/// the hash space.
#[derive(Default)]
pub struct RoutesLoad {
    merged: Vec<RouteInfo>,
    nodes: Vec<NodeInfo>,
    answered: bool,
    last: String,
}

/// What to do after an answer to a `Routes` request.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadStep {
    /// Ask the next node.
    Next,
    /// The table covers the hash space: stop asking.
    Done,
    /// The node refused the login; another would say the same.
    Refused(String),
}

impl RoutesLoad {
    /// The request to send.
    pub fn request(id: u64) -> Request {
        Request {
            id,
            region_id: 0,
            epoch: Default::default(),
            op: Op::Routes,
            session: None,
            system: false,
        }
    }

    /// Takes `addr`'s answer.
    pub fn answer(&mut self, addr: &str, result: Result<Outcome, WireError>) -> LoadStep {
        match result {
            Ok(Outcome::Routes { regions, nodes }) => {
                self.answered = true;
                merge_routes(&mut self.merged, regions);
                self.nodes.extend(nodes);
                if covers_hash_space(&self.merged) {
                    return LoadStep::Done;
                }
            }
            Ok(other) => self.last = format!("{addr}: unexpected {other:?}"),
            Err(e) => {
                self.last = format!("{addr}: {}", e.message());
                if e.code() == ErrorCode::Unauthenticated {
                    return LoadStep::Refused(self.last.clone());
                }
            }
        }
        LoadStep::Next
    }

    /// `addr` could not be asked, or did not answer.
    pub fn failed(&mut self, why: String) {
        self.last = why;
    }

    /// The merged regions and the nodes, or why no node answered.
    pub fn finish(self) -> Result<(Vec<RouteInfo>, Vec<NodeInfo>), String> {
        if !self.answered {
            return Err(if self.last.is_empty() {
                "no endpoint answered".into()
            } else {
                self.last
            });
        }
        Ok((self.merged, self.nodes))
    }
}

/// Adds `more` to `routes`: of two answers for one region the newer epoch
/// wins (a known leader breaks ties); a region overlapped by one of a newer
/// epoch version is stale (it split since) and goes.
pub fn merge_routes(routes: &mut Vec<RouteInfo>, more: Vec<RouteInfo>) {
    let key = |r: &RouteInfo| {
        (
            r.region.epoch.version,
            r.region.epoch.conf_ver,
            r.leader_node != 0,
        )
    };
    for r in more {
        match routes.iter_mut().find(|x| x.region.id == r.region.id) {
            Some(x) => {
                if key(&r) > key(x) {
                    *x = r;
                } else if x.leader_shard.is_none()
                    && key(&r) == key(x)
                    && r.leader_node == x.leader_node
                {
                    // Only the leader's node knows the shard serving it.
                    x.leader_shard = r.leader_shard;
                }
            }
            None => routes.push(r),
        }
    }
    let snapshot = routes.clone();
    routes.retain(|r| {
        !snapshot.iter().any(|o| {
            o.region.id != r.region.id
                && o.region.epoch.version > r.region.epoch.version
                && o.region.overlaps(&r.region)
        })
    });
    routes.sort_by_key(|r| r.region.start_hash);
}

/// True when `routes` (sorted by start) cover `[0, 2^64)` without a gap.
pub fn covers_hash_space(routes: &[RouteInfo]) -> bool {
    let mut next: u128 = 0;
    for r in routes {
        if u128::from(r.region.start_hash) > next {
            return false;
        }
        next = next.max(r.region.end_u128());
    }
    next == 1u128 << 64
}

/// What an error answer means for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The leader moved; `hinted`: the new one is known (retry at once),
    /// otherwise retry after a pause.
    Retry {
        /// The answer named the new leader.
        hinted: bool,
    },
    /// The region's range or replicas changed: reload the table, retry.
    Reload,
    /// Transient: the leader is forgotten; retry after a pause.
    Backoff,
    /// Not a routing matter: the caller decides.
    Other,
}

/// What `e` means for routing when the entry it answered for is no longer
/// in the table (replaced meanwhile): a leader or range change reloads,
/// a transient error backs off, anything else is the caller's.
pub fn classify(e: &WireError) -> Routing {
    match e {
        WireError::NotLeader { .. } | WireError::EpochNotMatch { .. } => Routing::Reload,
        e => match e.code() {
            ErrorCode::RegionNotFound => Routing::Reload,
            ErrorCode::Busy | ErrorCode::ProposalDropped | ErrorCode::ShuttingDown => {
                Routing::Backoff
            }
            _ => Routing::Other,
        },
    }
}

/// The regions a client routes by, sorted by start hash.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<RouteInfo>,
    stale: bool,
}

impl RouteTable {
    /// A table of `routes` (sorted here).
    pub fn new(routes: Vec<RouteInfo>) -> RouteTable {
        let mut t = RouteTable::default();
        t.replace(routes);
        t
    }

    /// Installs a freshly loaded table.
    pub fn replace(&mut self, mut routes: Vec<RouteInfo>) {
        routes.sort_by_key(|r| r.region.start_hash);
        self.routes = routes;
        self.stale = false;
    }

    /// The region owning `hash`, if the table covers it.
    pub fn index(&self, hash: u64) -> Option<usize> {
        let i = self
            .routes
            .partition_point(|r| r.region.start_hash <= hash)
            .checked_sub(1)?;
        self.routes[i].region.contains(hash).then_some(i)
    }

    /// The entry of region `region_id`.
    pub fn position(&self, region_id: u64) -> Option<usize> {
        self.routes.iter().position(|r| r.region.id == region_id)
    }

    /// True once an answer said the table is out of date (until
    /// [`RouteTable::replace`]).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Forgets the leader of entry `i` (it did not answer).
    pub fn forget_leader(&mut self, i: usize) {
        self.routes[i].leader_node = 0;
    }

    /// Entry `i` answered `e`: the table learns what it says, and the
    /// answer tells what to do.
    pub fn on_error(&mut self, i: usize, e: &WireError) -> Routing {
        let route = &mut self.routes[i];
        match e {
            WireError::NotLeader { leader_node, .. } => {
                let hinted = *leader_node != 0 && *leader_node != route.leader_node;
                route.leader_node = *leader_node;
                route.leader_shard = None;
                Routing::Retry { hinted }
            }
            WireError::EpochNotMatch { .. } => {
                self.stale = true;
                Routing::Reload
            }
            e => match e.code() {
                ErrorCode::RegionNotFound => {
                    self.stale = true;
                    Routing::Reload
                }
                ErrorCode::Busy | ErrorCode::ProposalDropped | ErrorCode::ShuttingDown => {
                    route.leader_node = 0;
                    Routing::Backoff
                }
                _ => Routing::Other,
            },
        }
    }
}

impl Deref for RouteTable {
    type Target = [RouteInfo];

    fn deref(&self) -> &[RouteInfo] {
        &self.routes
    }
}

impl Index<usize> for RouteTable {
    type Output = RouteInfo;

    fn index(&self, i: usize) -> &RouteInfo {
        &self.routes[i]
    }
}

impl IndexMut<usize> for RouteTable {
    fn index_mut(&mut self, i: usize) -> &mut RouteInfo {
        &mut self.routes[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_types::region::Region;

    fn table() -> RouteTable {
        let mid = 1u64 << 63;
        let a = Region::initial(1, 0, mid, [1, 2, 3]);
        let b = Region::initial(2, mid, 0, [1, 2, 3]);
        RouteTable::new(vec![
            RouteInfo {
                region: b,
                leader_node: 2,
                leader_shard: Some(1),
            },
            RouteInfo {
                region: a,
                leader_node: 1,
                leader_shard: None,
            },
        ])
    }

    #[test]
    fn a_hash_finds_its_region() {
        let t = table();
        assert_eq!(t[t.index(0).unwrap()].region.id, 1);
        assert_eq!(t[t.index(u64::MAX).unwrap()].region.id, 2);
        assert_eq!(t[t.index(1 << 63).unwrap()].region.id, 2);
        assert_eq!(t.position(2), Some(1));
    }

    #[test]
    fn answers_update_the_table() {
        let mut t = table();
        let hint = WireError::NotLeader {
            leader_node: 3,
            message: String::new(),
        };
        assert_eq!(t.on_error(1, &hint), Routing::Retry { hinted: true });
        assert_eq!((t[1].leader_node, t[1].leader_shard), (3, None));
        // The same hint again is no news.
        assert_eq!(t.on_error(1, &hint), Routing::Retry { hinted: false });
        let busy = WireError::new(ErrorCode::Busy, "");
        assert_eq!(t.on_error(0, &busy), Routing::Backoff);
        assert_eq!(t[0].leader_node, 0);
        assert!(!t.is_stale());
        let split = WireError::new(ErrorCode::EpochNotMatch, "");
        assert_eq!(t.on_error(0, &split), Routing::Reload);
        assert!(t.is_stale());
        let gone = WireError::new(ErrorCode::RegionNotFound, "");
        assert_eq!(t.on_error(0, &gone), Routing::Reload);
        let other = WireError::new(ErrorCode::KeyTooLarge, "");
        assert_eq!(t.on_error(0, &other), Routing::Other);
        t.replace(t.to_vec());
        assert!(!t.is_stale());
    }
}
