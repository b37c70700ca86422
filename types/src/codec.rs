//! A small, explicit binary codec for the records the engine stores and
//! replicates (commands, region metadata, apply state, values).
//!
//! Integers are big-endian and fixed-width; byte strings are prefixed with a
//! `u32` length. Every record starts with a one-byte format version so that the
//! layout can evolve. Decoding never panics on bad input: it returns
//! [`Error::Corruption`].

use crate::error::{Error, Result};

/// Appends fields to a byte buffer.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An encoder with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a `u32` length and the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("byte string over 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends bytes with no length prefix (the last field of a record).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields written by [`Encoder`].
pub struct Decoder<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`; `what` names the record in error messages.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Decoder { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Corruption(format!(
                "{}: truncated (wanted {} bytes, {} left)",
                self.what,
                n,
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// Reads a big-endian `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Corruption(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }

    /// Reads the format version byte and checks it.
    pub fn version(&mut self, expected: u8) -> Result<()> {
        let v = self.u8()?;
        if v != expected {
            return Err(Error::Corruption(format!(
                "{}: format version {} (expected {})",
                self.what, v, expected
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Encoder::default();
        e.u8(7)
            .u32(9)
            .u64(u64::MAX)
            .i64(-5)
            .bytes(b"abc")
            .raw(b"tail");
        let buf = e.finish();
        let mut d = Decoder::new(&buf, "test");
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u32().unwrap(), 9);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.bytes().unwrap(), b"abc");
        assert_eq!(d.rest(), b"tail");
        d.finish().unwrap();

        for cut in 0..buf.len() - 4 {
            let mut d = Decoder::new(&buf[..cut], "test");
            let r = (|| -> Result<()> {
                d.u8()?;
                d.u32()?;
                d.u64()?;
                d.i64()?;
                d.bytes()?;
                Ok(())
            })();
            assert!(matches!(r, Err(Error::Corruption(_))), "cut {cut}");
        }
    }
}
