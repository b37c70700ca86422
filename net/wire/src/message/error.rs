//! A failed request as carried on the wire ([`WireError`]): one variant per
//! code that carries what a client acts on.

use super::*;

/// A failed request, as carried on the wire: its code, a message for
/// people, and what a client needs to act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not the leader here.
    NotLeader {
        /// Leader node this replica knows of, 0 = unknown.
        leader_node: u64,
        /// Detail.
        message: String,
    },
    /// The region's range or members changed (a split, a move).
    EpochNotMatch {
        /// The regions now covering the range, as far as the answering
        /// node knows them.
        regions: Vec<Region>,
        /// A watch that stopped at a split: the version from which the
        /// moved keys are to be watched in their new region (0: none).
        from_version: u64,
        /// Detail.
        message: String,
    },
    /// A conditional write's condition did not hold.
    ConditionFailed {
        /// The key's current version, 0 = absent.
        current_version: u64,
        /// Detail.
        message: String,
    },
    /// A watch's history is gone.
    Compacted {
        /// The watched keys' current state (a put of the live value, or a
        /// delete for an absent key), to restart from.
        current: Vec<Change>,
        /// Detail.
        message: String,
    },
    /// Any other code: nothing to act on but the code.
    Other {
        /// Stable code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

impl WireError {
    /// An error of `code` with a message (and, for codes that carry more,
    /// nothing known: no leader, no regions, version 0, no values).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        match code {
            ErrorCode::NotLeader => WireError::NotLeader {
                leader_node: 0,
                message,
            },
            ErrorCode::EpochNotMatch => WireError::EpochNotMatch {
                regions: Vec::new(),
                from_version: 0,
                message,
            },
            ErrorCode::ConditionFailed => WireError::ConditionFailed {
                current_version: 0,
                message,
            },
            ErrorCode::Compacted => WireError::Compacted {
                current: Vec::new(),
                message,
            },
            code => WireError::Other { code, message },
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::NotLeader { .. } => ErrorCode::NotLeader,
            WireError::EpochNotMatch { .. } => ErrorCode::EpochNotMatch,
            WireError::ConditionFailed { .. } => ErrorCode::ConditionFailed,
            WireError::Compacted { .. } => ErrorCode::Compacted,
            WireError::Other { code, .. } => *code,
        }
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        match self {
            WireError::NotLeader { message, .. }
            | WireError::EpochNotMatch { message, .. }
            | WireError::ConditionFailed { message, .. }
            | WireError::Compacted { message, .. }
            | WireError::Other { message, .. } => message,
        }
    }

    /// The wire form of an engine error.
    pub fn from_engine(e: &corekv_types::Error) -> Self {
        use corekv_types::Error as E;
        match e {
            E::NotLeader { leader_node, .. } => WireError::NotLeader {
                leader_node: leader_node.unwrap_or(0),
                message: e.to_string(),
            },
            E::EpochNotMatch { current, .. } => WireError::EpochNotMatch {
                regions: current.clone(),
                from_version: 0,
                message: e.to_string(),
            },
            _ => WireError::new(ErrorCode(e.code()), e.to_string()),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code(), self.message())
    }
}
