//! The node's side of authentication ([`corekv_net::auth`]): its gate, made
//! at start-up from the copy of the users it kept, and that copy.
//!
//! The meta thread (`meta`) reads the record from the meta region on each
//! pass and when a login asks for it, hands it to the gate and keeps a copy
//! in the node's RocksDB, so a restarted node checks logins before the meta
//! region answers. A fresh node of a new cluster knows there are no users
//! yet. A node with no copy otherwise (one that joins a running cluster,
//! or whose data directory predates users) knows nothing until its first
//! read: with the node key it refuses anonymous requests with `Busy` until
//! then (its own reads log in as a node); without one it could never read
//! the record of a cluster with authentication on, so it starts with
//! authentication off, as a cluster without users is.

use corekv_engine::db::{self, cf, Db};
use corekv_engine::keys::{self, CF_META};
use corekv_net::auth::{AuthTable, Gate};

use crate::config::NodeConfig;
use crate::error::StartError;

/// The gate of a node starting with `cfg` on `db` (`fresh`: its data
/// directory was just made).
pub fn gate(cfg: &NodeConfig, db: &Db, fresh: bool) -> Result<Gate, StartError> {
    let known = match load_copy(db)? {
        Some(t) => Some(t),
        None if fresh && !cfg.join => Some(AuthTable::default()),
        None if cfg.node_key.is_none() => Some(AuthTable::default()),
        None => None,
    };
    Ok(Gate::new(cfg.node_key.clone(), cfg.insecure, known))
}

fn load_copy(db: &Db) -> Result<Option<AuthTable>, StartError> {
    let stored = db
        .get_cf(cf(db, CF_META), keys::auth_copy_key())
        .map_err(|e| StartError::DataDir(format!("reading the copy of the users: {e}")))?;
    stored
        .map(|b| AuthTable::decode(&b))
        .transpose()
        .map_err(|e| StartError::DataDir(format!("the stored copy of the users is damaged: {e}")))
}

/// Keeps `table` as the node's copy (synced).
pub fn keep_copy(db: &Db, table: &AuthTable) -> Result<(), String> {
    let mut wb = rocksdb::WriteBatch::default();
    wb.put_cf(cf(db, CF_META), keys::auth_copy_key(), table.encode());
    db::write(db, wb, true).map_err(|e| format!("keeping the copy of the users: {e}"))
}
