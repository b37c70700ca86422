//! corekv command-line tools.
//!
//! # Layout
//! - `dev`: starts a local cluster of `corekv-server` processes on loopback
//!   and stops it cleanly (the `corekv dev` command).
//! - `ctl`: cluster inspection (`corekv ctl status|regions|check`), balance
//!   (the placement planner of `corekv_shards::placement`), membership; the
//!   moves themselves are `corekv_net::admin`'s.
//! - `backup`: `corekv ctl backup` and `ctl verify-backup` (the format is
//!   `corekv_net::backup`'s; restoring is `corekv-server --restore`).
//! - `bin/corekv`: the CLI: put/get/del/incr, `ctl` and `dev`.
//!
//! Where new code goes: parsing and printing only; what a command does
//! belongs to `corekv_net` (client and admin operations) or
//! `corekv_shards` (the planner), which never depend on this crate.
#![deny(missing_docs)]

pub mod backup;
pub mod certs;
pub mod ctl;
pub mod dev;
