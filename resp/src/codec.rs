//! Requests off the wire: RESP multibulk arrays (decoded by the
//! `redis-protocol` crate) and inline commands, with the limits checked
//! before anything large is buffered.
//!
//! A client sends a command as an array of bulk strings (`*2\r\n$3\r\nGET\r\n
//! $1\r\nk\r\n`) or, typed by hand, as one line (`GET k`). Before a frame is
//! complete, its headers are checked against [`Limits`] as they arrive: an
//! `*999999999` header or a 600 MB bulk length is refused at once, with
//! Redis's own error text, and the connection is closed.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Limits on what one connection may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Arguments of one command (Redis: 1024 * 1024).
    pub args_max: usize,
    /// Bytes of one argument.
    pub bulk_bytes_max: usize,
    /// Bytes of one inline command line (Redis: 64 KiB).
    pub inline_bytes_max: usize,
    /// Bytes buffered for one incomplete command.
    pub query_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            args_max: 1024 * 1024,
            bulk_bytes_max: (1 << 20) + 4096,
            inline_bytes_max: 64 << 10,
            query_bytes_max: 4 << 20,
        }
    }
}

/// A malformed or oversized request: the text follows `ERR Protocol error: `
/// in the reply, and the connection is closed after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(s: impl Into<String>) -> Self {
        ProtocolError(s.into())
    }
}

/// Reads commands off one connection's buffer. It remembers how far it
/// checked an incomplete command, so a command that arrives in many small
/// pieces is scanned once, not once per piece.
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    /// Bytes of the incomplete command at the buffer's start already
    /// checked, and (multibulk) the arguments still to come after them.
    scanned: usize,
    args_left: Option<i64>,
}

impl RequestReader {
    /// A reader with these limits.
    pub fn new(limits: Limits) -> RequestReader {
        RequestReader {
            limits,
            scanned: 0,
            args_left: None,
        }
    }

    /// The next complete command in `buf` (removed from it), `Ok(None)`
    /// when more bytes are needed. Empty commands (`*0`, a blank line) are
    /// skipped.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let parsed = if buf[0] == b'*' {
                self.multibulk(buf)?
            } else {
                self.inline(buf)?
            };
            match parsed {
                Some(args) if args.is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    fn done(&mut self) {
        self.scanned = 0;
        self.args_left = None;
    }

    fn multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let limits = self.limits;
        // Walk the headers that have arrived since the last call, checking
        // each against the limits; stop at the first incomplete part.
        let mut left = match self.args_left {
            Some(n) => n,
            None => {
                let Some((head, at)) = line_at(buf, 0) else {
                    if buf.len() > HEADER_BYTES_MAX {
                        return Err(ProtocolError::new("too big mbulk count string"));
                    }
                    return Ok(None);
                };
                let count = match parse_len(&head[1..]) {
                    Some(n) if n <= limits.args_max as i64 => n,
                    _ => return Err(ProtocolError::new("invalid multibulk length")),
                };
                if count <= 0 {
                    let _ = buf.split_to(at);
                    self.done();
                    return Ok(Some(Vec::new()));
                }
                self.scanned = at;
                count
            }
        };
        let mut at = self.scanned;
        while left > 0 {
            if at >= buf.len() {
                break;
            }
            if buf[at] != b'$' {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(buf[at])
                )));
            }
            let Some((line, next)) = line_at(buf, at) else {
                if buf.len() - at > HEADER_BYTES_MAX {
                    return Err(ProtocolError::new("too big bulk count string"));
                }
                break;
            };
            let len = match parse_len(&line[1..]) {
                Some(n) if (0..=limits.bulk_bytes_max as i64).contains(&n) => n as usize,
                _ => return Err(ProtocolError::new("invalid bulk length")),
            };
            if next + len + 2 > buf.len() {
                break;
            }
            at = next + len + 2;
            left -= 1;
        }
        self.scanned = at;
        self.args_left = Some(left);
        if left > 0 {
            return check_buffered(buf, &limits);
        }
        // Complete and within limits: the codec decodes it.
        self.done();
        let (frame, used) = match decode_range(buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(ProtocolError::new("incomplete multibulk")),
            Err(e) => return Err(ProtocolError(e.details().to_string())),
        };
        let data = buf.split_to(used).freeze();
        let RangeFrame::Array(items) = frame else {
            return Err(ProtocolError::new("expected an array of bulk strings"));
        };
        items
            .into_iter()
            .map(|f| match f {
                RangeFrame::BulkString((s, e)) => Ok(data.slice(s..e)),
                _ => Err(ProtocolError::new("expected an array of bulk strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let limits = self.limits;
        let from = self.scanned.min(buf.len());
        let Some(nl) = buf[from..].iter().position(|&b| b == b'\n') else {
            if buf.len() > limits.inline_bytes_max {
                return Err(ProtocolError::new("too big inline request"));
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        self.done();
        let (line, next) = line_at(buf, 0).expect("a newline was found at or after `from`");
        debug_assert_eq!(next, from + nl + 1);
        if line.len() > limits.inline_bytes_max {
            return Err(ProtocolError::new("too big inline request"));
        }
        let args =
            split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        let _ = buf.split_to(next);
        Ok(Some(args))
    }
}

/// The next complete command in `buf`, for one-off parsing (a connection
/// keeps a [`RequestReader`]).
pub fn next_command(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    RequestReader::new(*limits).next(buf)
}

/// The line at `from` (without `\r\n`) and where the next one starts, or
/// None when it is not complete.
fn line_at(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let nl = buf[from..].iter().position(|&b| b == b'\n')? + from;
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((&buf[from..end], nl + 1))
}

fn parse_len(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse::<i64>().ok()
}

/// Longest header line accepted (`*N` or `$N`).
const HEADER_BYTES_MAX: usize = 64;

fn check_buffered(buf: &BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.len() > limits.query_bytes_max {
        return Err(ProtocolError::new(
            "command larger than the query buffer limit",
        ));
    }
    Ok(None)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command as Redis does: words separated by spaces,
/// "double quotes" with backslash escapes (\n \r \t \b \a \\ \" \xHH) and
/// 'single quotes' (only \' escaped). None on unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            if dq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < n {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                    i += 2;
                    continue;
                }
                if line[i] == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(line[i]);
                i += 1;
            } else if sq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                }
                if line[i] == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(line[i]);
                i += 1;
            } else {
                if i >= n || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => dq = true,
                    b'\'' => sq = true,
                    c => cur.push(c),
                }
                i += 1;
            }
        }
        out.push(Bytes::from(cur));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> (Result<Option<Vec<Bytes>>, ProtocolError>, usize) {
        let mut buf = BytesMut::from(input);
        let r = next_command(&mut buf, &Limits::default());
        (r, buf.len())
    }

    fn args(v: &[&str]) -> Option<Vec<Bytes>> {
        Some(
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn multibulk_commands_come_out_whole_and_only_when_complete() {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::from(&full[..]);
        let l = Limits::default();
        assert_eq!(next_command(&mut buf, &l).unwrap(), args(&["GET", "k"]));
        assert_eq!(next_command(&mut buf, &l).unwrap(), args(&["PING"]));
        assert_eq!(next_command(&mut buf, &l).unwrap(), None);
        for cut in 1..20 {
            let (r, left) = parse(&full[..cut]);
            assert_eq!(r.unwrap(), None, "cut at {cut}");
            assert_eq!(left, cut, "nothing consumed at {cut}");
        }
        // Binary-safe: a value holding CRLF and NUL.
        let (r, _) = parse(b"*2\r\n$3\r\nSET\r\n$4\r\na\r\n\0\r\n");
        assert_eq!(r.unwrap().unwrap()[1].as_ref(), b"a\r\n\0");
    }

    #[test]
    fn oversized_headers_are_refused_before_their_data_arrives() {
        assert_eq!(
            parse(b"*999999999\r\n").0,
            Err(ProtocolError::new("invalid multibulk length"))
        );
        assert_eq!(
            parse(b"*1\r\n$600000000\r\n").0,
            Err(ProtocolError::new("invalid bulk length"))
        );
        assert_eq!(
            parse(b"*1\r\n$-5\r\n").0,
            Err(ProtocolError::new("invalid bulk length"))
        );
        assert_eq!(
            parse(b"*x\r\n").0,
            Err(ProtocolError::new("invalid multibulk length"))
        );
        assert_eq!(
            parse(b"*2\r\n+GET\r\n").0,
            Err(ProtocolError::new("expected '$', got '+'"))
        );
        let long = vec![b'a'; 70 << 10];
        assert_eq!(
            parse(&long).0,
            Err(ProtocolError::new("too big inline request"))
        );
        // Many arguments, each within limits, past the query buffer limit.
        let mut many = b"*100000\r\n".to_vec();
        for _ in 0..100 {
            many.extend_from_slice(b"$65536\r\n");
            many.extend_from_slice(&vec![b'v'; 65536]);
            many.extend_from_slice(b"\r\n");
        }
        assert!(parse(&many).0.is_err());
    }

    #[test]
    fn a_command_in_many_pieces_comes_out_once_complete() {
        let mut cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n".to_vec();
        cmd.extend_from_slice(&vec![b'v'; 5000]);
        cmd.extend_from_slice(b"\r\nPING\r\n");
        let mut r = RequestReader::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in cmd.chunks(7) {
            buf.extend_from_slice(piece);
            while let Some(args) = r.next(&mut buf).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][2].len(), 5000);
        assert_eq!(got[1], args(&["PING"]).unwrap());
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(parse(b"PING\r\n").0.unwrap(), args(&["PING"]));
        assert_eq!(parse(b"set a  b\n").0.unwrap(), args(&["set", "a", "b"]));
        assert_eq!(
            parse(b"SET k \"a b\\n\\x41\" 'it\\'s'\r\n").0.unwrap(),
            args(&["SET", "k", "a b\nA", "it's"])
        );
        assert_eq!(
            parse(b"SET k \"open\r\n").0,
            Err(ProtocolError::new("unbalanced quotes in request"))
        );
        assert_eq!(parse(b"\r\n\r\nPING\r\n").0.unwrap(), args(&["PING"]));
        assert_eq!(parse(b"PING").0.unwrap(), None);
    }
}
