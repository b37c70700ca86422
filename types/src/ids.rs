//! Ids of nodes, regions and replicas: their limits and the one place each
//! kind of replica id is built.
//!
//! A replica (raft peer) id is unique in its region for ever:
//! - replicas a region starts with (the initial layout, a split) get
//!   [`region_peer_id`], `region_id * 1000 + node_id`;
//! - replicas a membership change adds get [`added_peer_id`], with the top
//!   bit set (above every id of the first kind) and growing with the
//!   region's `conf_ver`, so a replica removed from a node is never
//!   confused with a later one of the same region there.

/// Largest node id: node ids are part of replica ids
/// ([`region_peer_id`] leaves room for 999).
pub const NODE_ID_MAX: u64 = 999;

/// Largest region id (a split's new region, the meta region's allocator).
pub const REGION_ID_MAX: u64 = (1 << 48) - 1;

/// Nodes a region-start replica id has room for.
const NODE_SLOTS: u64 = 1000;

/// Bits an added replica id keeps for the node.
const ADDED_NODE_BITS: u32 = 16;

/// The top bit: set in added replica ids only.
const ADDED: u64 = 1 << 63;

const _: () = assert!(NODE_ID_MAX < NODE_SLOTS);
const _: () = assert!(NODE_ID_MAX < 1 << ADDED_NODE_BITS);
// Region-start ids stay below every added id.
const _: () = assert!(REGION_ID_MAX * NODE_SLOTS + NODE_ID_MAX < ADDED);

/// Id of `node_id`'s replica of a region it holds from the region's start
/// (the initial layout, or the split that made the region).
pub fn region_peer_id(region_id: u64, node_id: u64) -> u64 {
    debug_assert!(region_id <= REGION_ID_MAX && node_id <= NODE_ID_MAX);
    region_id * NODE_SLOTS + node_id
}

/// Id of a replica on `node_id` added to a region by the membership
/// change that makes `conf_ver`.
pub fn added_peer_id(conf_ver: u64, node_id: u64) -> u64 {
    debug_assert!(node_id <= NODE_ID_MAX);
    ADDED | (conf_ver << ADDED_NODE_BITS) | node_id
}

/// The largest replica id a region can have handed out by `conf_ver`
/// (what a tombstone records: every id up to it is gone).
pub fn last_peer_id(conf_ver: u64) -> u64 {
    ADDED | (conf_ver << ADDED_NODE_BITS) | ((1 << ADDED_NODE_BITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_id_is_ordered_and_distinct() {
        assert_eq!(region_peer_id(7, 3), 7003);
        assert!(region_peer_id(REGION_ID_MAX, NODE_ID_MAX) < added_peer_id(0, 1));
        assert!(added_peer_id(2, NODE_ID_MAX) < added_peer_id(3, 1));
        assert!(added_peer_id(2, NODE_ID_MAX) <= last_peer_id(2));
        assert!(last_peer_id(2) < added_peer_id(3, 1));
        assert_ne!(region_peer_id(1, 999), region_peer_id(2, 0));
    }
}
