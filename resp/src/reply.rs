//! Replies and how they are written in RESP2 and RESP3.

use bytes::Bytes;

/// One reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line (`+QUEUED`, `+PONG`).
    Status(String),
    /// An error, with its code first (`ERR ...`, `CROSSSLOT ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// No value (`$-1` in RESP2).
    Nil,
    /// No array (`*-1` in RESP2: an aborted EXEC).
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (a flat array of pairs in RESP2).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// An `ERR` error.
    pub fn err(msg: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", msg.as_ref()))
    }

    /// A bulk string from text.
    pub fn text(s: impl AsRef<str>) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_ref().as_bytes()))
    }

    /// A bulk string, or nil.
    pub fn opt(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply to `out` in protocol `proto` (2 or 3).
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.extend_from_slice(b"+OK\r\n"),
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    // A status or error line never holds a line break.
    out.extend(
        body.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, proto: u8) -> String {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_in_both_protocols() {
        assert_eq!(enc(&Reply::Ok, 2), "+OK\r\n");
        assert_eq!(enc(&Reply::err("syntax error"), 2), "-ERR syntax error\r\n");
        assert_eq!(enc(&Reply::Int(-3), 3), ":-3\r\n");
        assert_eq!(enc(&Reply::text("a\r\nb"), 2), "$4\r\na\r\nb\r\n");
        assert_eq!(enc(&Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(&Reply::NilArray, 2), "*-1\r\n");
        let m = Reply::Map(vec![(Reply::text("proto"), Reply::Int(3))]);
        assert_eq!(enc(&m, 2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&m, 3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(
            enc(&Reply::Array(vec![Reply::Nil, Reply::Int(1)]), 2),
            "*2\r\n$-1\r\n:1\r\n"
        );
        assert_eq!(enc(&Reply::Error("ERR a\nb".into()), 2), "-ERR a b\r\n");
    }
}
