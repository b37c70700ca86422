//! Length-prefixed framing shared by the client protocol and the raft
//! transport: a 4-byte little-endian length, then that many bytes.
//!
//! [`FrameBuffer`] accumulates bytes read from a stream and yields whole
//! frames; a length of zero or over the limit is an error, and the caller
//! closes the connection after answering it.

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A frame must carry at least one byte.
    #[error("empty frame")]
    Empty,
}

/// Appends the length prefix of a `len`-byte frame.
pub fn put_header(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("frame under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
}

/// Reassembles frames from a byte stream.
///
/// The buffer is zero-filled once when it grows, never per read: bytes
/// `[start, end)` are buffered, `[end, len)` is room for the next read.
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame_bytes: usize,
}

impl FrameBuffer {
    /// A buffer accepting frames of at most `max_frame_bytes`. It starts
    /// small (idle connections cost little) and grows to the frames it sees.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameBuffer {
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            max_frame_bytes,
        }
    }

    /// Room to read into: at least `n` bytes. The caller reads into the
    /// returned slice and then calls [`FrameBuffer::filled`].
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < n {
            // Move what is buffered to the front, then grow if still short.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < n {
                let want = (self.end + n).next_power_of_two();
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into the last [`FrameBuffer::spare`]
    /// slice (`asked` is kept for symmetry with the request).
    pub fn filled(&mut self, asked: usize, n: usize) {
        debug_assert!(n <= asked.max(self.buf.len() - self.end));
        self.end += n;
        assert!(self.end <= self.buf.len(), "filled past the buffer");
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next whole frame, if one is buffered. The slice is valid until the
    /// next call on this buffer.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..4].try_into().unwrap()) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        if avail.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let from = self.start + FRAME_HEADER_BYTES;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(fb: &mut FrameBuffer, bytes: &[u8]) {
        let spare = fb.spare(bytes.len());
        spare[..bytes.len()].copy_from_slice(bytes);
        fb.filled(bytes.len(), bytes.len());
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let mut stream = Vec::new();
        let frames: Vec<Vec<u8>> = (1..40u8).map(|n| vec![n; n as usize * 7]).collect();
        for f in &frames {
            put_header(&mut stream, f.len());
            stream.extend_from_slice(f);
        }
        for chunk in [1usize, 3, 7, 64, 1000] {
            let mut fb = FrameBuffer::new(1 << 20);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                feed(&mut fb, piece);
                while let Some(f) = fb.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames, "chunk {chunk}");
            assert_eq!(fb.buffered(), 0);
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_errors() {
        let mut fb = FrameBuffer::new(100);
        feed(&mut fb, &u32::MAX.to_le_bytes());
        assert_eq!(
            fb.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 100
            })
        );
        let mut fb = FrameBuffer::new(100);
        feed(&mut fb, &0u32.to_le_bytes());
        assert_eq!(fb.next_frame(), Err(FrameError::Empty));
        let mut fb = FrameBuffer::new(100);
        feed(&mut fb, &10u32.to_le_bytes());
        feed(&mut fb, b"short");
        assert_eq!(fb.next_frame(), Ok(None), "truncated frame waits for more");
    }

    #[test]
    fn partial_read_keeps_only_filled_bytes() {
        let mut fb = FrameBuffer::new(100);
        let spare = fb.spare(16);
        spare[..4].copy_from_slice(&2u32.to_le_bytes());
        spare[4..6].copy_from_slice(b"ok");
        fb.filled(16, 6);
        assert_eq!(fb.next_frame().unwrap(), Some(&b"ok"[..]));
        assert_eq!(fb.next_frame().unwrap(), None);
    }
}
