//! corekv command-line tools (not built yet; see the README status table).
//!
//! # Layout
//! - `bin/corekv`: get/put/del/incr/watch, `ctl` (regions, split, balance,
//!   status) and `dev` (a local cluster on loopback).
