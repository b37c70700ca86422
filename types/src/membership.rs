//! Changes of a region's replicas as a client asks for them (how they are
//! carried out is the engine's `corekv_engine::membership`).

pub use crate::ids::NODE_ID_MAX;

/// A change of one region's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// A learner on `node_id`.
    AddLearner {
        /// Node to host it.
        node_id: u64,
    },
    /// The learner on `node_id` becomes a voter; with `remove_node` != 0
    /// the voter there leaves in the same (joint) change.
    Promote {
        /// Node of the learner.
        node_id: u64,
        /// Node whose voter leaves (0 = none).
        remove_node: u64,
    },
    /// The replica on `node_id` leaves.
    Remove {
        /// Node of the replica.
        node_id: u64,
    },
}
