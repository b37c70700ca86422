//! corekv load generator and benchmarks (not built yet; see the README status
//! table).
//!
//! # Layout
//! - `workload`: key choice (uniform, zipfian, hotspot) and operation mix.
//! - `report`: hdrhistogram latencies, tables and JSON.
//! - `bin/corekv-bench`: the load generator, with Redis and etcd baselines.
