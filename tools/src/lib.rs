//! corekv command-line tools.
//!
//! # Layout
//! - `dev`: starts a local cluster of `corekv-server` processes on loopback
//!   and stops it cleanly (the `corekv dev` command).
//! - `bin/corekv`: the CLI: put/get/del/incr and `dev`.
#![deny(missing_docs)]

pub mod dev;
