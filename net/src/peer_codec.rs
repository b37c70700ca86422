//! Frames of the raft transport between nodes.
//!
//! Same length prefix as the client protocol; the body starts with a kind byte:
//! - `1` hello: `node_id u64, shard_count u32, client_addr (u32 len + utf-8)`;
//! - `2` raft batch: `count u32`, then per message `region_id u64,
//!   from_node u64, to_node u64, removed_at u64, conf_ver u64, version u64,
//!   control u8, shard u32, incarnation u64, len u32, raft Message
//!   (protobuf)`; `removed_at` != 0 makes it a removal notice, `conf_ver`
//!   and `version` are the region's epoch at the sender (see
//!   `corekv_engine::Replicas::step`); `control` is 0 for a raft message,
//!   1 for a sleep notice and 2 for a beat, with the sending shard and its
//!   incarnation (see `corekv_engine::hibernate`; 0 and 0 otherwise).
//!
//! One batch carries every raft message one shard has for one node in one
//! round. All integers are big-endian.

use corekv_engine::hibernate::Control;
use corekv_engine::RaftEnvelope;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::frame::put_header;

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;

/// A decoded transport frame.
#[derive(Debug)]
pub enum PeerFrame {
    /// First frame of a connection.
    Hello {
        /// Sending node.
        node_id: u64,
        /// Its shard count.
        shard_count: u32,
        /// Its client address.
        client_addr: String,
    },
    /// Raft messages.
    Raft(Vec<RaftEnvelope>),
}

/// Why a transport frame is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid transport frame: {0}")]
pub struct PeerDecodeError(String);

/// Encodes a hello frame.
pub fn encode_peer_hello(node_id: u64, shard_count: u32, client_addr: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + client_addr.len());
    body.push(KIND_HELLO);
    body.extend_from_slice(&node_id.to_be_bytes());
    body.extend_from_slice(&shard_count.to_be_bytes());
    body.extend_from_slice(&(client_addr.len() as u32).to_be_bytes());
    body.extend_from_slice(client_addr.as_bytes());
    let mut out = Vec::with_capacity(4 + body.len());
    put_header(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Encodes raft messages into one frame.
pub fn encode_raft_batch(envs: &[RaftEnvelope]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    out.push(KIND_RAFT);
    out.extend_from_slice(&(envs.len() as u32).to_be_bytes());
    for e in envs {
        out.extend_from_slice(&e.region_id.to_be_bytes());
        out.extend_from_slice(&e.from_node.to_be_bytes());
        out.extend_from_slice(&e.to_node.to_be_bytes());
        out.extend_from_slice(&e.removed_at.to_be_bytes());
        out.extend_from_slice(&e.epoch.conf_ver.to_be_bytes());
        out.extend_from_slice(&e.epoch.version.to_be_bytes());
        let (kind, shard, incarnation) = match e.control {
            Control::Raft => (0u8, 0u32, 0u64),
            Control::Asleep { shard, incarnation } => (1, shard, incarnation),
            Control::Beat { shard, incarnation } => (2, shard, incarnation),
        };
        out.push(kind);
        out.extend_from_slice(&shard.to_be_bytes());
        out.extend_from_slice(&incarnation.to_be_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        e.message
            .write_to_vec(&mut out)
            .expect("raft message encodes");
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }
    let body = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&body.to_le_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeerDecodeError> {
        if self.0.len() < n {
            return Err(PeerDecodeError(format!(
                "truncated: wanted {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, PeerDecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PeerDecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// Decodes a frame body (without its length prefix).
pub fn decode_peer_frame(body: &[u8]) -> Result<PeerFrame, PeerDecodeError> {
    let mut r = Reader(body);
    let kind = r.take(1)?[0];
    let frame = match kind {
        KIND_HELLO => {
            let node_id = r.u64()?;
            let shard_count = r.u32()?;
            let len = r.u32()? as usize;
            let addr = std::str::from_utf8(r.take(len)?)
                .map_err(|e| PeerDecodeError(format!("client address: {e}")))?
                .to_string();
            PeerFrame::Hello {
                node_id,
                shard_count,
                client_addr: addr,
            }
        }
        KIND_RAFT => {
            let count = r.u32()? as usize;
            // Each message takes at least 65 bytes: refuse counts the body
            // cannot hold before allocating for them.
            if count > body.len() / 65 {
                return Err(PeerDecodeError(format!(
                    "{count} messages in {} bytes",
                    body.len()
                )));
            }
            let mut envs = Vec::with_capacity(count);
            for _ in 0..count {
                let region_id = r.u64()?;
                let from_node = r.u64()?;
                let to_node = r.u64()?;
                let removed_at = r.u64()?;
                let epoch = corekv_engine::Epoch {
                    conf_ver: r.u64()?,
                    version: r.u64()?,
                };
                let kind = r.take(1)?[0];
                let shard = r.u32()?;
                let incarnation = r.u64()?;
                let control = match kind {
                    0 => Control::Raft,
                    1 => Control::Asleep { shard, incarnation },
                    2 => Control::Beat { shard, incarnation },
                    k => return Err(PeerDecodeError(format!("unknown control {k}"))),
                };
                let len = r.u32()? as usize;
                let message = Message::parse_from_bytes(r.take(len)?)
                    .map_err(|e| PeerDecodeError(format!("raft message: {e}")))?;
                envs.push(RaftEnvelope {
                    region_id,
                    from_node,
                    to_node,
                    message,
                    removed_at,
                    epoch,
                    control,
                });
            }
            PeerFrame::Raft(envs)
        }
        k => return Err(PeerDecodeError(format!("unknown kind {k}"))),
    };
    if !r.0.is_empty() {
        return Err(PeerDecodeError(format!("{} trailing bytes", r.0.len())));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    #[test]
    fn batches_and_hello_round_trip() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2002;
        m.from = 2001;
        m.term = 7;
        m.entries = vec![Entry {
            index: 9,
            term: 7,
            data: bytes::Bytes::from_static(b"payload"),
            ..Default::default()
        }]
        .into();
        let envs = vec![
            RaftEnvelope {
                region_id: 2,
                from_node: 1,
                to_node: 2,
                message: m.clone(),
                removed_at: 0,
                epoch: corekv_engine::Epoch {
                    conf_ver: 3,
                    version: 4,
                },
                control: Control::Raft,
            },
            RaftEnvelope {
                region_id: 3,
                from_node: 1,
                to_node: 2,
                message: Message::default(),
                removed_at: 9,
                epoch: Default::default(),
                control: Control::Asleep {
                    shard: 1,
                    incarnation: 77,
                },
            },
            RaftEnvelope {
                region_id: 0,
                from_node: 1,
                to_node: 2,
                message: Message::default(),
                removed_at: 0,
                epoch: Default::default(),
                control: Control::Beat {
                    shard: 3,
                    incarnation: u64::MAX,
                },
            },
        ];
        let framed = encode_raft_batch(&envs);
        assert_eq!(
            u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize,
            framed.len() - 4
        );
        match decode_peer_frame(&framed[4..]).unwrap() {
            PeerFrame::Raft(got) => {
                assert_eq!(got.len(), 3);
                assert_eq!(
                    got.iter().map(|e| e.control).collect::<Vec<_>>(),
                    envs.iter().map(|e| e.control).collect::<Vec<_>>()
                );
                assert_eq!(got[0].message, m);
                assert_eq!(got[1].region_id, 3);
                assert_eq!((got[0].removed_at, got[1].removed_at), (0, 9));
                assert_eq!((got[0].epoch.conf_ver, got[0].epoch.version), (3, 4));
            }
            other => panic!("{other:?}"),
        }
        let h = encode_peer_hello(3, 2, "127.0.0.1:7103");
        match decode_peer_frame(&h[4..]).unwrap() {
            PeerFrame::Hello {
                node_id,
                shard_count,
                client_addr,
            } => assert_eq!(
                (node_id, shard_count, client_addr.as_str()),
                (3, 2, "127.0.0.1:7103")
            ),
            other => panic!("{other:?}"),
        }
        for cut in 0..framed.len() - 4 {
            assert!(decode_peer_frame(&framed[4..4 + cut]).is_err(), "cut {cut}");
        }
        assert!(decode_peer_frame(&[2, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
