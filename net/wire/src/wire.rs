//! The generated flatbuffers code of `net/schema/corekv.fbs`.
//!
//! Regenerate with `net/schema/generate.sh`; CI fails if it is stale.

#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    unused_imports,
    deprecated,
    mismatched_lifetime_syntaxes
)]
#[path = "generated/corekv_generated.rs"]
mod generated;

pub use generated::corekv::wire::*;

/// Protocol version carried in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;
