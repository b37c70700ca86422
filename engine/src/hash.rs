//! The routing hash: which region owns a key.
//!
//! `route_hash(key) = xxh3_64(key, seed 0)`, XXH3 as specified at
//! <https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>. It is the same
//! on every platform and every corekv release: changing it would move every key to
//! another region, so it is pinned by the tests below. `ahash` is only for
//! in-memory maps.

/// 64-bit routing hash of a key.
#[inline]
pub fn route_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0)
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
}
