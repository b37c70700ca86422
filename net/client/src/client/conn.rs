//! One connection to a node or shard port: framing, deadlines, reading
//! answers.

use super::*;

pub(super) fn read_frame(conn: &mut Conn, deadline: Instant) -> std::result::Result<Frame, String> {
    read_frame_with_fields(conn, deadline).map(|(f, _)| f)
}

pub(super) fn read_frame_with_fields(
    conn: &mut Conn,
    deadline: Instant,
) -> std::result::Result<(Frame, Vec<ResponseFields>), String> {
    loop {
        match conn.frames.next_frame() {
            Ok(Some(body)) => {
                return decode_frame_with_fields(body).map_err(|e| e.to_string());
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for the server".into());
        }
        conn.read_more(left)?;
    }
}

pub(crate) struct Conn {
    pub(crate) stream: crate::tls::SyncStream,
    pub(crate) frames: FrameBuffer,
}

impl Conn {
    /// Reads what the server sent, waiting at most `wait`; false if nothing
    /// came in that time.
    pub(crate) fn read_more(&mut self, wait: Duration) -> std::result::Result<bool, String> {
        self.stream
            .tcp()
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let spare = self.frames.spare(64 * 1024);
        match self.stream.read(spare) {
            Ok(0) => {
                self.frames.filled(64 * 1024, 0);
                Err("connection closed by the server".into())
            }
            Ok(n) => {
                self.frames.filled(64 * 1024, n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.frames.filled(64 * 1024, 0);
                Ok(false)
            }
            Err(e) => {
                self.frames.filled(64 * 1024, 0);
                Err(format!("read: {e}"))
            }
        }
    }
}
