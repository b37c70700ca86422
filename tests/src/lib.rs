//! Black-box tests of real corekv clusters (not built yet; see the README
//! status table). Engine-level cluster tests live in `engine/tests/`.
//!
//! # Layout
//! - `cluster`: starting and stopping `corekv-server` processes on loopback.
//! - `tests/*.rs`: multi-node, fault-injection and linearizability tests.
