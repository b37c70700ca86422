//! The client protocol's messages as Rust values, and their flatbuffers
//! encoding (`net/schema/corekv.fbs`). Decoding verifies the buffer first:
//! garbage is an error, never a panic.
//!
//! # Layout
//! - this file: the message types (requests, responses, errors, routes,
//!   frames);
//! - `error`: [`WireError`], a failed request's code and what comes with it;
//! - `encode`: values into frames;
//! - `decode`: frames into values (verified first).

use bytes::Bytes;
use corekv_types::watch::{Change, ChangeKind};
use corekv_types::{
    Condition, Consistency, Epoch, Expiry, PeerMeta, PeerRole, PutItem, Region, SessionTag,
    TxnCheck, TxnOp, ValueRecord, WriteOutcome, WriteRequest,
};
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::frame::put_header;
use crate::wire::{self, ErrorCode};

mod decode;
mod encode;
mod error;

pub use decode::{decode_frame, decode_frame_shared, decode_frame_with_fields, ResponseFields};
pub use encode::{
    encode_client_hello, encode_error_frame, encode_hello, encode_requests, encode_responses,
};
pub use error::WireError;

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    Get {
        /// Key.
        key: Bytes,
        /// Consistency asked for.
        consistency: Consistency,
    },
    /// A write.
    Write(WriteRequest),
    /// The routing table and node addresses.
    Routes,
    /// The node's status document (JSON).
    Status,
    /// Stream the changes of keys of one region, or of the keys under a
    /// prefix in a range of its hashes, after a version (0 = from now).
    Watch {
        /// Keys (all in one region); empty for a prefix watch.
        keys: Vec<Bytes>,
        /// Resume after this version.
        from_version: u64,
        /// A prefix watch: what it follows (sent with the region id).
        prefix: Option<WatchRange>,
    },
    /// End the watch started by request `watch_id` on this connection.
    CancelWatch {
        /// Id of the watch request.
        watch_id: u64,
    },
    /// Make the region's replica on `to_node` its preferred leader.
    TransferLeader {
        /// Node of the replica.
        to_node: u64,
    },
    /// Split the region at `split_hash` (0 = the middle of its range).
    Split {
        /// First hash of the new region.
        split_hash: u64,
    },
    /// Change the region's replicas.
    ChangePeer(corekv_types::membership::PeerChange),
    /// Move the asked node's replica of the region to shard `to_shard`.
    MoveShard {
        /// Target shard.
        to_shard: u32,
    },
    /// Start a consistency check of the region (see the schema).
    Check,
    /// One page of the region's keys in hash order (see the schema).
    Scan {
        /// First hash to include.
        from_hash: u64,
        /// Keys at most.
        limit: u32,
        /// Leave the values out.
        keys_only: bool,
        /// Consistency asked for.
        consistency: Consistency,
        /// Only keys beginning with this (empty: every key).
        prefix: Bytes,
    },
    /// A chunk of a backup of the region (see the schema): a new one when
    /// `backup_id` is 0.
    Backup {
        /// The backup (0 = build one now).
        backup_id: u64,
        /// Where the chunk starts.
        offset: u64,
    },
}

/// What a prefix watch follows: the keys beginning with `prefix` whose
/// hash is in `[start_hash, end_hash)` (`end_hash` 0 = to the end of the
/// hash space), one region's part of the prefix as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRange {
    /// Key prefix (empty: every key).
    pub prefix: Bytes,
    /// First hash.
    pub start_hash: u64,
    /// Hash past the last one (0 = the end of the hash space).
    pub end_hash: u64,
}

/// One request of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Client-chosen id, echoed in the response.
    pub id: u64,
    /// Region the client routed to (0 = let the server route by key).
    pub region_id: u64,
    /// Epoch the client routed with.
    pub epoch: Epoch,
    /// The operation.
    pub op: Op,
    /// Write de-duplication tag.
    pub session: Option<SessionTag>,
    /// Sent by the cluster's own components: may write the metadata keys
    /// ([`corekv_types::META_PREFIX`]).
    pub system: bool,
}

/// A region as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Region metadata.
    pub region: Region,
    /// Node of the leader, 0 = unknown.
    pub leader_node: u64,
    /// Shard of the leader's node serving the region, if known: requests
    /// sent to that shard's own port (see `Frame::Hello`) skip the hop
    /// between shards.
    pub leader_shard: Option<u32>,
}

/// A node's client address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub node_id: u64,
    /// Client address, `host:port`.
    pub client_addr: String,
    /// Shards of the node.
    pub shard_count: u32,
}

/// What a request produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the live value, if any.
    Value(Option<ValueRecord>),
    /// A write was applied.
    Write(WriteOutcome),
    /// The routing table.
    Routes {
        /// Regions.
        regions: Vec<RouteInfo>,
        /// Nodes.
        nodes: Vec<NodeInfo>,
    },
    /// A node's status document (JSON).
    Status(String),
    /// A response of a watch stream: changes, and the version up to which
    /// every change was sent.
    Events {
        /// Every change up to this version was sent.
        progress: u64,
        /// The changes, in version order.
        events: Vec<Change>,
    },
    /// A watch was cancelled (`existed`: it was running).
    Cancelled {
        /// The watch was running.
        existed: bool,
    },
    /// A page of a scan: live keys (as puts, with their records), and
    /// where the next page starts (`None`: the hash space is done).
    Scanned {
        /// The keys in hash order.
        items: Vec<Change>,
        /// The next page's first hash.
        next_hash: Option<u64>,
        /// The region's applied index the page was read at: every write
        /// up to it is in the page, none after (0: not known, from a node
        /// of an earlier release).
        read_index: u64,
    },
    /// A chunk of a region backup.
    BackupChunk(BackupChunk),
}

/// A chunk of a region backup held by its leader (see the schema's
/// `Backup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupChunk {
    /// The backup, for the next chunk.
    pub backup_id: u64,
    /// The region's applied index the backup holds.
    pub applied_index: u64,
    /// Bytes of the whole backup.
    pub total: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
}

/// The answer to request `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// Outcome or error.
    pub result: Result<Outcome, WireError>,
}

/// A decoded client-protocol frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Handshake.
    Hello {
        /// Protocol version.
        protocol_version: u32,
        /// Sender's node id (0 for clients).
        node_id: u64,
        /// Sender's shard count.
        shard_count: u32,
        /// Per-shard client ports.
        shard_ports: Vec<u16>,
        /// User a client logs in as (empty: anonymous).
        user: String,
        /// Its token.
        token: String,
    },
    /// Requests.
    Requests(Vec<Request>),
    /// Responses.
    Responses(Vec<Response>),
    /// The connection is being closed because of this error.
    Error(WireError),
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid flatbuffer.
    #[error("invalid flatbuffer: {0}")]
    Invalid(#[from] flatbuffers::InvalidFlatbuffer),
    /// Valid flatbuffer, invalid content.
    #[error("invalid frame: {0}")]
    Content(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(framed: &[u8]) -> &[u8] {
        &framed[4..]
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request {
                id: 1,
                region_id: 3,
                epoch: Epoch {
                    conf_ver: 2,
                    version: 5,
                },
                op: Op::Get {
                    key: b("k"),
                    consistency: Consistency::Lease,
                },
                session: None,
                system: false,
            },
            Request {
                id: 2,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::Put {
                    key: b("k"),
                    value: b("v"),
                    ttl_ms: Some(1000),
                    condition: Condition::IfVersion(9),
                }),
                session: Some(SessionTag {
                    client_id: 7,
                    seq: 8,
                    retry: true,
                }),
                system: false,
            },
            Request {
                id: 3,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::Cas {
                    key: b("k"),
                    expected: None,
                    value: b("v"),
                    ttl_ms: None,
                }),
                session: None,
                system: false,
            },
            Request {
                id: 4,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::BatchPut {
                    items: vec![PutItem {
                        key: b("a"),
                        value: b(""),
                        ttl_ms: None,
                    }],
                }),
                session: None,
                system: false,
            },
            Request {
                id: 5,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Routes,
                session: None,
                system: false,
            },
            Request {
                id: 6,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::Delete {
                    key: b("d"),
                    if_version: Some(4),
                }),
                session: None,
                system: false,
            },
            Request {
                id: 7,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::Incr {
                    key: b("n"),
                    delta: -3,
                }),
                session: None,
                system: false,
            },
            Request {
                id: 20,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Write(WriteRequest::Txn {
                    checks: vec![
                        TxnCheck {
                            key: b("a"),
                            version: Some(3),
                        },
                        TxnCheck {
                            key: b("b"),
                            version: None,
                        },
                    ],
                    ops: vec![
                        TxnOp::Put {
                            key: b("a"),
                            value: b("1"),
                            expiry: Expiry::Never,
                        },
                        TxnOp::Put {
                            key: b("b"),
                            value: b(""),
                            expiry: Expiry::After(9),
                        },
                        TxnOp::Put {
                            key: b("c"),
                            value: b("3"),
                            expiry: Expiry::At(1_700_000_000_000),
                        },
                        TxnOp::Delete { key: b("d") },
                    ],
                }),
                session: Some(SessionTag {
                    client_id: 1,
                    seq: 2,
                    retry: false,
                }),
                system: false,
            },
            Request {
                id: 8,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::Watch {
                    keys: vec![b("a"), b("b")],
                    from_version: 41,
                    prefix: None,
                },
                session: None,
                system: false,
            },
            Request {
                id: 12,
                region_id: 3,
                epoch: Epoch::default(),
                op: Op::Watch {
                    keys: Vec::new(),
                    from_version: 7,
                    prefix: Some(WatchRange {
                        prefix: b("/app/"),
                        start_hash: 1 << 62,
                        end_hash: 0,
                    }),
                },
                session: None,
                system: false,
            },
            Request {
                id: 9,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::CancelWatch { watch_id: 8 },
                session: None,
                system: false,
            },
            Request {
                id: 11,
                region_id: 5,
                epoch: Epoch::default(),
                op: Op::Backup {
                    backup_id: 77,
                    offset: 4 << 20,
                },
                session: None,
                system: true,
            },
            Request {
                id: 10,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::TransferLeader { to_node: 3 },
                session: None,
                system: false,
            },
            Request {
                id: 11,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::Split {
                    split_hash: 1 << 62,
                },
                session: None,
                system: false,
            },
            Request {
                id: 12,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::ChangePeer(corekv_types::membership::PeerChange::Promote {
                    node_id: 4,
                    remove_node: 1,
                }),
                session: None,
                system: false,
            },
            Request {
                id: 15,
                region_id: 0,
                epoch: Epoch::default(),
                op: Op::Routes,
                session: None,
                system: true,
            },
            Request {
                id: 14,
                region_id: 3,
                epoch: Epoch::default(),
                op: Op::MoveShard { to_shard: 1 },
                session: None,
                system: false,
            },
            Request {
                id: 15,
                region_id: 3,
                epoch: Epoch::default(),
                op: Op::Check,
                session: None,
                system: false,
            },
        ];
        let framed = encode_requests(&reqs);
        assert_eq!(
            u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize,
            framed.len() - 4
        );
        assert_eq!(
            decode_frame(body(&framed)).unwrap(),
            Frame::Requests(reqs.clone())
        );
        let shared = Bytes::copy_from_slice(body(&framed));
        assert_eq!(decode_frame_shared(&shared).unwrap(), Frame::Requests(reqs));
    }

    #[test]
    fn responses_round_trip() {
        let region = Region {
            id: 4,
            start_hash: 10,
            end_hash: 0,
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            peers: vec![PeerMeta {
                id: 4001,
                node_id: 1,
                role: PeerRole::Voter,
            }],
        };
        let resps = vec![
            Response {
                id: 1,
                result: Ok(Outcome::Value(Some(ValueRecord {
                    version: 9,
                    expire_at_ms: 5,
                    value: b("x"),
                }))),
            },
            Response {
                id: 2,
                result: Ok(Outcome::Value(None)),
            },
            Response {
                id: 21,
                result: Ok(Outcome::Scanned {
                    items: Vec::new(),
                    next_hash: Some(99),
                    read_index: 4321,
                }),
            },
            Response {
                id: 20,
                result: Ok(Outcome::BackupChunk(BackupChunk {
                    backup_id: 77,
                    applied_index: 1234,
                    total: 10,
                    offset: 4,
                    data: b("chunk!"),
                })),
            },
            Response {
                id: 3,
                result: Err(WireError::NotLeader {
                    message: "m".into(),
                    leader_node: 2,
                }),
            },
            Response {
                id: 8,
                result: Err(WireError::EpochNotMatch {
                    message: "split".into(),
                    regions: vec![region.clone()],
                    from_version: 41,
                }),
            },
            Response {
                id: 5,
                result: Ok(Outcome::Events {
                    progress: 12,
                    events: vec![
                        Change {
                            key: b("a"),
                            kind: ChangeKind::Put,
                            value: b("1"),
                            version: 10,
                            expire_at_ms: 99,
                        },
                        Change {
                            key: b("b"),
                            kind: ChangeKind::Expire,
                            value: Bytes::new(),
                            version: 12,
                            expire_at_ms: 0,
                        },
                    ],
                }),
            },
            Response {
                id: 6,
                result: Ok(Outcome::Events {
                    progress: 13,
                    events: Vec::new(),
                }),
            },
            Response {
                id: 7,
                result: Err(WireError::Compacted {
                    message: "gone".into(),
                    current: vec![Change {
                        key: b("a"),
                        kind: ChangeKind::Delete,
                        value: Bytes::new(),
                        version: 0,
                        expire_at_ms: 0,
                    }],
                }),
            },
            Response {
                id: 4,
                result: Ok(Outcome::Routes {
                    regions: vec![
                        RouteInfo {
                            region: region.clone(),
                            leader_node: 1,
                            leader_shard: Some(3),
                        },
                        RouteInfo {
                            region,
                            leader_node: 2,
                            leader_shard: None,
                        },
                    ],
                    nodes: vec![NodeInfo {
                        node_id: 1,
                        client_addr: "127.0.0.1:1".into(),
                        shard_count: 2,
                    }],
                }),
            },
        ];
        let framed = encode_responses(&resps);
        assert_eq!(
            decode_frame(body(&framed)).unwrap(),
            Frame::Responses(resps)
        );

        let writes = vec![Response {
            id: 9,
            result: Ok(Outcome::Write(WriteOutcome::Counter {
                value: -4,
                version: 77,
            })),
        }];
        let (_, fields) = decode_frame_with_fields(body(&encode_responses(&writes))).unwrap();
        assert_eq!(fields[0].counter, -4);
        assert_eq!(fields[0].version, 77);
        let failed = vec![Response {
            id: 9,
            result: Ok(Outcome::Write(WriteOutcome::ConditionFailed {
                current_version: Some(12),
            })),
        }];
        match decode_frame(body(&encode_responses(&failed))).unwrap() {
            Frame::Responses(r) => {
                let e = r[0].result.clone().unwrap_err();
                assert!(
                    matches!(
                        e,
                        WireError::ConditionFailed {
                            current_version: 12,
                            ..
                        }
                    ),
                    "{e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hello_and_error_frames_round_trip() {
        let h = encode_hello(3, 2, &[7001, 7002]);
        assert_eq!(
            decode_frame(body(&h)).unwrap(),
            Frame::Hello {
                protocol_version: wire::PROTOCOL_VERSION,
                node_id: 3,
                shard_count: 2,
                shard_ports: vec![7001, 7002],
                user: String::new(),
                token: String::new(),
            }
        );
        match decode_frame(body(&encode_client_hello(Some(("app", "t0k3n"))))).unwrap() {
            Frame::Hello { user, token, .. } => {
                assert_eq!((&user[..], &token[..]), ("app", "t0k3n"))
            }
            other => panic!("{other:?}"),
        }
        let e = WireError::new(ErrorCode::BadFrame, "nope");
        assert_eq!(
            decode_frame(body(&encode_error_frame(&e))).unwrap(),
            Frame::Error(e)
        );
    }

    #[test]
    fn every_engine_error_has_the_schemas_code_of_its_name() {
        use corekv_types::Error as E;
        let errors = [
            (
                E::NotLeader {
                    region_id: 1,
                    leader_node: Some(2),
                },
                "NotLeader",
            ),
            (
                E::EpochNotMatch {
                    region_id: 1,
                    current: vec![],
                },
                "EpochNotMatch",
            ),
            (E::RegionNotFound(1), "RegionNotFound"),
            (E::KeyTooLarge { len: 9, max: 8 }, "KeyTooLarge"),
            (E::ValueTooLarge { len: 9, max: 8 }, "ValueTooLarge"),
            (E::InvalidRequest("x".into()), "InvalidRequest"),
            (E::Busy("x"), "Busy"),
            (E::ProposalDropped, "ProposalDropped"),
            (E::Timeout, "Timeout"),
            (E::Compacted, "Internal"),
            (E::Corruption("x".into()), "Internal"),
            (E::Config("x".into()), "Internal"),
        ];
        for (e, name) in errors {
            let w = WireError::from_engine(&e);
            assert_eq!(w.code().variant_name(), Some(name), "{e}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x1234_5678u64;
        for len in 0..300usize {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_frame(&buf);
        }
        // Every truncation of a valid frame is rejected or decodes.
        let reqs = vec![Request {
            id: 1,
            region_id: 0,
            epoch: Epoch::default(),
            op: Op::Get {
                key: b("key"),
                consistency: Consistency::Linearizable,
            },
            session: None,
            system: false,
        }];
        let framed = encode_requests(&reqs);
        let full = body(&framed);
        let mut rejected = 0;
        for cut in 0..full.len() {
            match decode_frame(&full[..cut]) {
                Err(_) => rejected += 1,
                // Only trailing padding may be cut without harm.
                Ok(f) => assert_eq!(f, Frame::Requests(reqs.clone()), "cut {cut}"),
            }
        }
        assert!(rejected > full.len() / 2);
    }
}
