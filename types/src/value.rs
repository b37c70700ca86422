//! How a user value is stored in the `data` column family.

use crate::codec::{Decoder, Encoder};
use crate::error::Result;

const VALUE_FORMAT: u8 = 1;
/// Bytes of the record header: format, version, expiry.
pub const VALUE_HEADER_BYTES: usize = 17;

/// A stored value with its version and expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueRecord {
    /// Raft log index of the entry that last wrote the key (strictly increasing
    /// per key).
    pub version: u64,
    /// Absolute expiry in unix milliseconds, chosen by the leader when the write
    /// was proposed; 0 = never.
    pub expire_at_ms: u64,
    /// The user's bytes.
    pub value: bytes::Bytes,
}

impl ValueRecord {
    /// True when the value has expired at `now_ms` (unix ms).
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }

    /// Encodes for the `data` CF.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(VALUE_HEADER_BYTES + self.value.len());
        e.u8(VALUE_FORMAT)
            .u64(self.version)
            .u64(self.expire_at_ms)
            .raw(&self.value);
        e.finish()
    }

    /// Decodes a record's header only: the value is left empty (no copy).
    pub fn decode_header(buf: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(buf, "value record");
        d.version(VALUE_FORMAT)?;
        Ok(ValueRecord {
            version: d.u64()?,
            expire_at_ms: d.u64()?,
            value: bytes::Bytes::new(),
        })
    }

    /// Decodes a record written by [`ValueRecord::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(buf, "value record");
        d.version(VALUE_FORMAT)?;
        let version = d.u64()?;
        let expire_at_ms = d.u64()?;
        let value = bytes::Bytes::copy_from_slice(d.rest());
        Ok(ValueRecord {
            version,
            expire_at_ms,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_expiry() {
        let v = ValueRecord {
            version: 42,
            expire_at_ms: 1000,
            value: bytes::Bytes::from_static(b"hello"),
        };
        let d = ValueRecord::decode(&v.encode()).unwrap();
        assert_eq!(d, v);
        assert!(!v.is_expired(999));
        assert!(v.is_expired(1000));
        let forever = ValueRecord {
            expire_at_ms: 0,
            ..v
        };
        assert!(!forever.is_expired(u64::MAX));
        assert!(ValueRecord::decode(&[1, 2, 3]).is_err());
        let h = ValueRecord::decode_header(&forever.encode()).unwrap();
        assert_eq!((h.version, h.expire_at_ms, h.value.len()), (42, 0, 0));
    }
}
