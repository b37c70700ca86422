//! The routing hash: which region owns a key.
//!
//! `route_hash(key) = xxh3_64(key, seed 0)`, XXH3 as specified at
//! <https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>. It is the same
//! on every platform and every corekv release: changing it would move every key to
//! another region, so it is pinned by the tests below. `ahash` is only for
//! in-memory maps.
//!
//! One hash is set aside: keys beginning with [`META_PREFIX`] (the cluster's
//! own metadata: node list, routing table, id allocator) all hash to
//! [`META_HASH`], owned by the meta region alone; any other key whose XXH3
//! value is `META_HASH` is routed one below it, so no user key ever lands in
//! the meta region.

/// Prefix of the keys holding the cluster's metadata (in the meta region).
pub const META_PREFIX: &[u8] = b"\xffcorekv/";

/// The hash every metadata key routes to: the meta region owns exactly it.
pub const META_HASH: u64 = u64::MAX;

/// True for a key of the cluster's metadata.
#[inline]
pub fn is_meta_key(key: &[u8]) -> bool {
    key.starts_with(META_PREFIX)
}

/// 64-bit routing hash of a key.
#[inline]
pub fn route_hash(key: &[u8]) -> u64 {
    if is_meta_key(key) {
        return META_HASH;
    }
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0).min(META_HASH - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_hash_is_pinned() {
        // Reference values of XXH3-64 with seed 0.
        assert_eq!(route_hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(route_hash(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(route_hash(b"abc"), 0x78AF_5F94_892F_3950);
    }

    #[test]
    fn only_metadata_keys_route_to_the_meta_hash() {
        assert_eq!(route_hash(b"\xffcorekv/nodes"), META_HASH);
        assert_ne!(route_hash(b"\xffcorekv"), META_HASH);
        assert_ne!(route_hash(b"corekv/nodes"), META_HASH);
        assert!(is_meta_key(b"\xffcorekv/routes/1"));
        assert!(!is_meta_key(b"\xfecorekv/routes/1"));
    }
}
