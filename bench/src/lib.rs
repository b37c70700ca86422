//! corekv load generator.
//!
//! # Layout
//! - `workload`: operation mix and key distributions (uniform, zipfian, hotspot).
//! - `driver`: simulated clients on glommio executors: routing, pipelining,
//!   open and closed loop, the corekv and Redis protocols.
//! - `cpu`: the server processes' CPU time per operation (from `/proc`).
//! - `report`: hdrhistogram latencies per operation type, error counts, the
//!   table and the JSON report.
//! - `bin/corekv-bench`: the command line, the embedded local cluster, preload.
//!
//! Where new code goes: a new target protocol as a file of `driver/`; a new
//! key or operation pattern in `workload`; a new figure in `report`.
#![deny(missing_docs)]

pub mod cpu;
pub mod driver;
pub mod report;
pub mod workload;
