//! Column families and key layouts of the node's one RocksDB.
//!
//! All integers are big-endian so that RocksDB's byte order is numeric order.
//!
//! | CF | key | value |
//! |---|---|---|
//! | `raft` | `0x01 region_id index` | raft `Entry` (protobuf) |
//! | `raft` | `0x02 region_id` | raft `HardState` (protobuf) |
//! | `meta` | `0x01 region_id` | `corekv_engine::state::RegionLocalState` |
//! | `meta` | `0x02 region_id` | `corekv_engine::state::ApplyState` |
//! | `meta` | `0x03` | `corekv_engine::state::StoreIdent` |
//! | `meta` | `0x04 region_id` | shard owning the region (u32, node runtime) |
//! | `meta` | `0x05 region_id client_id` | [`crate::session::ClientSession`] |
//! | `meta` | `0x06 region_id epoch_version` | log index of the split that made that epoch (u64) |
//! | `meta` | `0x0B region_id` | the replica's last consistency check (`corekv_engine::peer::CheckVerdict`) |
//! | `data` | `route_hash key` | [`crate::value::ValueRecord`] |
//! | `history` | `0x01 region_id index` | changes of one entry ([`crate::watch`]) |
//! | `history` | `0x02 region_id` | history floor (u64) |
//!
//! Data keys are ordered by routing hash, so a region's data is one contiguous
//! key range whatever its id: a split moves no data, and a snapshot is one scan.

/// Column family of raft logs and hard states.
pub const CF_RAFT: &str = "raft";
/// Column family of region metadata, apply states and the node identity.
pub const CF_META: &str = "meta";
/// Column family of user data.
pub const CF_DATA: &str = "data";
/// Column family of the change history watchers resume from.
pub const CF_HISTORY: &str = "history";
/// Every column family the engine opens (besides RocksDB's `default`).
pub const COLUMN_FAMILIES: [&str; 4] = [CF_RAFT, CF_META, CF_DATA, CF_HISTORY];

const RAFT_LOG: u8 = 0x01;
const RAFT_HARD_STATE: u8 = 0x02;
const META_REGION: u8 = 0x01;
const META_APPLY: u8 = 0x02;
const META_IDENT: u8 = 0x03;
const META_PLACEMENT: u8 = 0x04;
const META_SESSION: u8 = 0x05;
const META_SPLIT: u8 = 0x06;
const META_TOMBSTONE: u8 = 0x07;
const META_NODE: u8 = 0x08;
const META_ORIGIN: u8 = 0x09;
const META_RETIRED: u8 = 0x0A;
const META_CHECK: u8 = 0x0B;
const META_AUTH: u8 = 0x0C;
const HISTORY_RECORD: u8 = 0x01;
const HISTORY_FLOOR: u8 = 0x02;

/// `tag · region_id · sub`, for records kept per region and number.
fn region_sub_key(tag: u8, region_id: u64, sub: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = tag;
    k[1..9].copy_from_slice(&region_id.to_be_bytes());
    k[9..17].copy_from_slice(&sub.to_be_bytes());
    k
}

/// The `sub` of a [`region_sub_key`] with this tag and region, or `None`.
fn region_sub(tag: u8, region_id: u64, key: &[u8]) -> Option<u64> {
    if key.len() != 17 || key[0] != tag || key[1..9] != region_id.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(key[9..17].try_into().unwrap()))
}

fn region_key(tag: u8, region_id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..9].copy_from_slice(&region_id.to_be_bytes());
    k
}

/// Key of raft log entry `index` of `region_id`.
pub fn raft_log_key(region_id: u64, index: u64) -> [u8; 17] {
    region_sub_key(RAFT_LOG, region_id, index)
}

/// Decodes the index from a raft log key of `region_id`, or `None` if the key
/// belongs to something else.
pub fn raft_log_index(region_id: u64, key: &[u8]) -> Option<u64> {
    region_sub(RAFT_LOG, region_id, key)
}

/// Key of the hard state of `region_id`.
pub fn hard_state_key(region_id: u64) -> [u8; 9] {
    region_key(RAFT_HARD_STATE, region_id)
}

/// Key of the local state (metadata) of `region_id`.
pub fn region_state_key(region_id: u64) -> [u8; 9] {
    region_key(META_REGION, region_id)
}

/// First key after every region state key.
pub fn region_state_end() -> [u8; 1] {
    [META_REGION + 1]
}

/// Key of the apply state of `region_id`.
pub fn apply_state_key(region_id: u64) -> [u8; 9] {
    region_key(META_APPLY, region_id)
}

/// Key of the node identity.
pub fn store_ident_key() -> [u8; 1] {
    [META_IDENT]
}

/// Key of the node's copy of the cluster's users (the meta region's auth
/// record as last read), so a restarted node checks logins at once.
pub fn auth_copy_key() -> [u8; 1] {
    [META_AUTH]
}

/// Key of a replica's last digest and consistency check verdict.
pub fn check_key(region_id: u64) -> [u8; 9] {
    region_key(META_CHECK, region_id)
}

/// Key of the shard placement of `region_id` (written by the node runtime).
pub fn placement_key(region_id: u64) -> [u8; 9] {
    region_key(META_PLACEMENT, region_id)
}

/// Key of the id of the last replica of `region_id` destroyed on this node:
/// messages to it or an older one never recreate it.
pub fn tombstone_key(region_id: u64) -> [u8; 9] {
    region_key(META_TOMBSTONE, region_id)
}

/// Key of where a region split off from: its parent region and the index
/// of the split entry (both u64).
pub fn origin_key(region_id: u64) -> [u8; 9] {
    region_key(META_ORIGIN, region_id)
}

/// Key present while node `node_id` is leaving the cluster.
pub fn retired_key(node_id: u64) -> [u8; 9] {
    region_key(META_RETIRED, node_id)
}

/// The node id of a [`retired_key`], or `None`.
pub fn node_of_retired_key(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == META_RETIRED)
        .then(|| u64::from_be_bytes(key[1..9].try_into().unwrap()))
}

/// Key of the addresses of node `node_id` as told to this node.
pub fn node_key(node_id: u64) -> [u8; 9] {
    region_key(META_NODE, node_id)
}

/// The node id of a [`node_key`], or `None`.
pub fn node_of_key(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == META_NODE)
        .then(|| u64::from_be_bytes(key[1..9].try_into().unwrap()))
}

/// Key of client `client_id`'s session in `region_id`.
pub fn session_key(region_id: u64, client_id: u64) -> [u8; 17] {
    region_sub_key(META_SESSION, region_id, client_id)
}

/// The client id of a session key of `region_id`, or `None`.
pub fn session_client(region_id: u64, key: &[u8]) -> Option<u64> {
    region_sub(META_SESSION, region_id, key)
}

/// Key of the history record of entry `index` of `region_id`.
pub fn history_key(region_id: u64, index: u64) -> [u8; 17] {
    region_sub_key(HISTORY_RECORD, region_id, index)
}

/// The index of a history record key of `region_id`, or `None`.
pub fn history_index(region_id: u64, key: &[u8]) -> Option<u64> {
    region_sub(HISTORY_RECORD, region_id, key)
}

/// Key of the history floor of `region_id`.
pub fn history_floor_key(region_id: u64) -> [u8; 9] {
    region_key(HISTORY_FLOOR, region_id)
}

/// Key of the record of the split of `region_id` that made epoch version
/// `version`.
pub fn split_key(region_id: u64, version: u64) -> [u8; 17] {
    region_sub_key(META_SPLIT, region_id, version)
}

/// The epoch version of a split record key of `region_id`, or `None`.
pub fn split_version(region_id: u64, key: &[u8]) -> Option<u64> {
    region_sub(META_SPLIT, region_id, key)
}

/// Key of a user key in the data CF.
#[inline]
pub fn data_key(hash: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&hash.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Splits a data key into its hash and user key.
pub fn split_data_key(k: &[u8]) -> Option<(u64, &[u8])> {
    if k.len() < 9 {
        return None;
    }
    Some((u64::from_be_bytes(k[..8].try_into().unwrap()), &k[8..]))
}

/// First data key of the hash range starting at `start_hash`.
pub fn data_range_start(start_hash: u64) -> Vec<u8> {
    start_hash.to_be_bytes().to_vec()
}

/// First data key past a hash range ending at `end_hash` (0 = end of space).
/// For the end of the space this is a key greater than every data key: keys
/// are at most [`crate::config::KEY_BYTES_MAX`] bytes, so 8 + 4097 bytes of
/// 0xFF sort after all of them.
pub fn data_range_end(end_hash: u64) -> Vec<u8> {
    if end_hash == 0 {
        vec![0xFF; 8 + crate::config::KEY_BYTES_MAX + 1]
    } else {
        end_hash.to_be_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_region_then_index() {
        let mut keys = vec![
            raft_log_key(2, 1),
            raft_log_key(1, 300),
            raft_log_key(1, 2),
            raft_log_key(1, 1 << 40),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                raft_log_key(1, 2),
                raft_log_key(1, 300),
                raft_log_key(1, 1 << 40),
                raft_log_key(2, 1)
            ]
        );
        assert_eq!(raft_log_index(1, &raft_log_key(1, 77)), Some(77));
        assert_eq!(raft_log_index(2, &raft_log_key(1, 77)), None);
    }

    #[test]
    fn data_range_end_of_space_is_above_every_key() {
        let end = data_range_end(0);
        let top = data_key(u64::MAX, &[0xFF; crate::config::KEY_BYTES_MAX]);
        assert!(top.as_slice() < end.as_slice());
        let k = data_key(5, b"x");
        assert!(data_range_start(5).as_slice() <= k.as_slice());
        assert!(k.as_slice() < data_range_end(6).as_slice());
        assert_eq!(split_data_key(&k), Some((5, &b"x"[..])));
    }
}
