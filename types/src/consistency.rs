//! The consistency levels of reads (what each guarantees: `docs/consistency.md`;
//! how the engine serves them: `corekv_engine::read`).

/// Consistency a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex through a quorum (default).
    Linearizable,
    /// Served by the leader without a quorum round while its lease holds
    /// (falls back to ReadIndex otherwise). Assumes bounded clock drift.
    Lease,
    /// Served from this replica's applied state; may be behind.
    Stale,
    /// Linearizable, served by any replica: a follower asks the leader for
    /// the read index, waits until it has applied that far, then reads its
    /// own state. Spreads reads over every replica.
    Follower,
}
