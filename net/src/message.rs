//! The client protocol's messages as Rust values, and their flatbuffers
//! encoding (`net/schema/corekv.fbs`). Decoding verifies the buffer first:
//! garbage is an error, never a panic.

use bytes::Bytes;
use corekv_engine::watch::{Change, ChangeKind};
use corekv_engine::{
    Condition, Consistency, Epoch, PeerMeta, PeerRole, PutItem, Region, SessionTag, ValueRecord,
    WriteOutcome, WriteRequest,
};
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::frame::put_header;
use crate::wire::{self, ErrorCode};

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
    /// Stream the changes of keys of one region after a version (0 = from
    /// now).
    Watch {
        /// Keys (all in one region).
        keys: Vec<Bytes>,
        /// Resume after this version.
        from_version: u64,
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
    ChangePeer(corekv_engine::membership::PeerChange),
    /// Move the asked node's replica of the region to shard `to_shard`.
    MoveShard {
        /// Target shard.
        to_shard: u32,
    },
    /// Start a consistency check of the region (see the schema).
    Check,
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
    /// ([`corekv_engine::META_PREFIX`]).
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

/// A failed request, as carried on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// `NotLeader`: leader node, 0 = unknown.
    pub leader_node: u64,
    /// `EpochNotMatch`: the regions now covering the range.
    pub regions: Vec<Region>,
    /// `ConditionFailed`: current version, 0 = absent.
    pub current_version: u64,
    /// `Compacted`: the watched keys' current state (a put of the live
    /// value, or a delete for an absent key).
    pub current: Vec<Change>,
}

impl WireError {
    /// An error with only a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            leader_node: 0,
            regions: Vec::new(),
            current_version: 0,
            current: Vec::new(),
        }
    }

    /// The wire form of an engine error.
    pub fn from_engine(e: &corekv_engine::Error) -> Self {
        use corekv_engine::Error as E;
        let mut w = WireError::new(ErrorCode(e.code()), e.to_string());
        match e {
            E::NotLeader { leader_node, .. } => w.leader_node = leader_node.unwrap_or(0),
            E::EpochNotMatch { current, .. } => w.regions = current.clone(),
            _ => {}
        }
        w
    }
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

fn content(m: impl Into<String>) -> DecodeError {
    DecodeError::Content(m.into())
}

// ---------------------------------------------------------------- encoding

fn finish(
    mut fbb: FlatBufferBuilder<'_>,
    body_type: wire::Body,
    body: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Vec<u8> {
    let frame = wire::Frame::create(
        &mut fbb,
        &wire::FrameArgs {
            body_type,
            body: Some(body),
        },
    );
    fbb.finish(frame, None);
    let data = fbb.finished_data();
    let mut out = Vec::with_capacity(4 + data.len());
    put_header(&mut out, data.len());
    out.extend_from_slice(data);
    out
}

fn epoch(e: Epoch) -> wire::Epoch {
    wire::Epoch::new(e.conf_ver, e.version)
}

fn encode_region<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &Region,
    (leader_node, leader_shard): (u64, Option<u32>),
) -> WIPOffset<wire::RegionInfo<'a>> {
    let peers: Vec<_> = r
        .peers
        .iter()
        .map(|p| {
            wire::PeerInfo::create(
                fbb,
                &wire::PeerInfoArgs {
                    peer_id: p.id,
                    node_id: p.node_id,
                    learner: p.role == PeerRole::Learner,
                },
            )
        })
        .collect();
    let peers = fbb.create_vector(&peers);
    let e = epoch(r.epoch);
    wire::RegionInfo::create(
        fbb,
        &wire::RegionInfoArgs {
            id: r.id,
            start_hash: r.start_hash,
            end_hash: r.end_hash,
            epoch: Some(&e),
            peers: Some(peers),
            leader_node,
            leader_shard: leader_shard.map_or(-1, |s| s as i32),
        },
    )
}

/// Encodes a `Hello` frame (with its length prefix).
pub fn encode_hello(node_id: u64, shard_count: u32, shard_ports: &[u16]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(64);
    let ports = fbb.create_vector(shard_ports);
    let hello = wire::Hello::create(
        &mut fbb,
        &wire::HelloArgs {
            protocol_version: wire::PROTOCOL_VERSION,
            node_id,
            shard_count,
            shard_ports: Some(ports),
        },
    );
    finish(fbb, wire::Body::Hello, hello.as_union_value())
}

/// Encodes a connection-level error frame.
pub fn encode_error_frame(err: &WireError) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(128);
    let e = encode_error(&mut fbb, err);
    finish(fbb, wire::Body::Error, e.as_union_value())
}

fn encode_error<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    err: &WireError,
) -> WIPOffset<wire::Error<'a>> {
    let message = fbb.create_string(&err.message);
    let regions: Vec<_> = err
        .regions
        .iter()
        .map(|r| encode_region(fbb, r, (0, None)))
        .collect();
    let regions = fbb.create_vector(&regions);
    let current = (!err.current.is_empty()).then(|| encode_events(fbb, &err.current));
    wire::Error::create(
        fbb,
        &wire::ErrorArgs {
            code: err.code,
            message: Some(message),
            leader_node: err.leader_node,
            regions: Some(regions),
            current_version: err.current_version,
            current,
        },
    )
}

fn encode_events<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    events: &[Change],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<wire::Event<'a>>>> {
    let evs: Vec<_> = events
        .iter()
        .map(|c| {
            let key = fbb.create_vector(&c.key);
            let value = (c.kind == ChangeKind::Put).then(|| fbb.create_vector(&c.value));
            wire::Event::create(
                fbb,
                &wire::EventArgs {
                    key: Some(key),
                    kind: match c.kind {
                        ChangeKind::Put => wire::EventKind::Put,
                        ChangeKind::Delete => wire::EventKind::Delete,
                        ChangeKind::Expire => wire::EventKind::Expire,
                    },
                    value,
                    version: c.version,
                    expire_at_ms: c.expire_at_ms,
                },
            )
        })
        .collect();
    fbb.create_vector(&evs)
}

fn decode_events(
    evs: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<wire::Event<'_>>>>,
    src: Option<&Bytes>,
) -> Vec<Change> {
    evs.map(|evs| {
        evs.iter()
            .map(|e| Change {
                key: bytes_of(src, e.key()),
                kind: match e.kind() {
                    wire::EventKind::Delete => ChangeKind::Delete,
                    wire::EventKind::Expire => ChangeKind::Expire,
                    _ => ChangeKind::Put,
                },
                value: bytes_of(src, e.value()),
                version: e.version(),
                expire_at_ms: e.expire_at_ms(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Encodes a batch of requests.
pub fn encode_requests(reqs: &[Request]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let mut offsets = Vec::with_capacity(reqs.len());
    for r in reqs {
        let (op_type, op) = encode_op(&mut fbb, &r.op);
        let e = epoch(r.epoch);
        let (client_id, seq, retry) = r
            .session
            .map_or((0, 0, false), |s| (s.client_id, s.seq, s.retry));
        offsets.push(wire::Request::create(
            &mut fbb,
            &wire::RequestArgs {
                id: r.id,
                region_id: r.region_id,
                epoch: Some(&e),
                op_type,
                op: Some(op),
                client_id,
                seq,
                system: r.system,
                retry,
            },
        ));
    }
    let requests = fbb.create_vector(&offsets);
    let batch = wire::RequestBatch::create(
        &mut fbb,
        &wire::RequestBatchArgs {
            requests: Some(requests),
        },
    );
    finish(fbb, wire::Body::RequestBatch, batch.as_union_value())
}

fn encode_op<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    op: &Op,
) -> (wire::Op, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match op {
        Op::Get { key, consistency } => {
            let key = fbb.create_vector(key);
            let c = match consistency {
                Consistency::Linearizable => wire::Consistency::Linearizable,
                Consistency::Lease => wire::Consistency::Lease,
                Consistency::Stale => wire::Consistency::Stale,
                Consistency::Follower => wire::Consistency::Follower,
            };
            let g = wire::Get::create(
                fbb,
                &wire::GetArgs {
                    key: Some(key),
                    consistency: c,
                },
            );
            (wire::Op::Get, g.as_union_value())
        }
        Op::Watch { keys, from_version } => {
            let ks: Vec<_> = keys
                .iter()
                .map(|k| {
                    let key = fbb.create_vector(k);
                    wire::WatchKey::create(fbb, &wire::WatchKeyArgs { key: Some(key) })
                })
                .collect();
            let ks = fbb.create_vector(&ks);
            let w = wire::Watch::create(
                fbb,
                &wire::WatchArgs {
                    keys: Some(ks),
                    from_version: *from_version,
                },
            );
            (wire::Op::Watch, w.as_union_value())
        }
        Op::CancelWatch { watch_id } => {
            let c = wire::CancelWatch::create(
                fbb,
                &wire::CancelWatchArgs {
                    watch_id: *watch_id,
                },
            );
            (wire::Op::CancelWatch, c.as_union_value())
        }
        Op::Split { split_hash } => {
            let t = wire::Split::create(
                fbb,
                &wire::SplitArgs {
                    split_hash: *split_hash,
                },
            );
            (wire::Op::Split, t.as_union_value())
        }
        Op::ChangePeer(change) => {
            use corekv_engine::membership::PeerChange;
            let (kind, node_id, remove_node) = match *change {
                PeerChange::AddLearner { node_id } => (0, node_id, 0),
                PeerChange::Promote {
                    node_id,
                    remove_node,
                } => (1, node_id, remove_node),
                PeerChange::Remove { node_id } => (2, node_id, 0),
            };
            let t = wire::ChangePeer::create(
                fbb,
                &wire::ChangePeerArgs {
                    kind,
                    node_id,
                    remove_node,
                },
            );
            (wire::Op::ChangePeer, t.as_union_value())
        }
        Op::MoveShard { to_shard } => {
            let t = wire::MoveShard::create(
                fbb,
                &wire::MoveShardArgs {
                    to_shard: *to_shard,
                },
            );
            (wire::Op::MoveShard, t.as_union_value())
        }
        Op::TransferLeader { to_node } => {
            let t =
                wire::TransferLeader::create(fbb, &wire::TransferLeaderArgs { to_node: *to_node });
            (wire::Op::TransferLeader, t.as_union_value())
        }
        Op::Routes => {
            let r = wire::Routes::create(fbb, &wire::RoutesArgs {});
            (wire::Op::Routes, r.as_union_value())
        }
        Op::Check => {
            let r = wire::Check::create(fbb, &wire::CheckArgs {});
            (wire::Op::Check, r.as_union_value())
        }
        Op::Status => {
            let r = wire::Status::create(fbb, &wire::StatusArgs {});
            (wire::Op::Status, r.as_union_value())
        }
        Op::Write(w) => match w {
            WriteRequest::Put {
                key,
                value,
                ttl_ms,
                condition,
            } => {
                let key = fbb.create_vector(key);
                let value = fbb.create_vector(value);
                let (if_absent, if_version) = match condition {
                    Condition::None => (false, 0),
                    Condition::IfAbsent => (true, 0),
                    Condition::IfVersion(v) => (false, *v),
                };
                let p = wire::Put::create(
                    fbb,
                    &wire::PutArgs {
                        key: Some(key),
                        value: Some(value),
                        ttl_ms: ttl_ms.unwrap_or(0),
                        if_absent,
                        if_version,
                    },
                );
                (wire::Op::Put, p.as_union_value())
            }
            WriteRequest::Delete { key, if_version } => {
                let key = fbb.create_vector(key);
                let d = wire::Delete::create(
                    fbb,
                    &wire::DeleteArgs {
                        key: Some(key),
                        if_version: if_version.unwrap_or(0),
                    },
                );
                (wire::Op::Delete, d.as_union_value())
            }
            WriteRequest::Incr { key, delta } => {
                let key = fbb.create_vector(key);
                let i = wire::Incr::create(
                    fbb,
                    &wire::IncrArgs {
                        key: Some(key),
                        delta: *delta,
                    },
                );
                (wire::Op::Incr, i.as_union_value())
            }
            WriteRequest::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                let key = fbb.create_vector(key);
                let exp = expected.as_ref().map(|x| fbb.create_vector(x));
                let value = fbb.create_vector(value);
                let c = wire::Cas::create(
                    fbb,
                    &wire::CasArgs {
                        key: Some(key),
                        expected: exp,
                        expect_absent: expected.is_none(),
                        value: Some(value),
                        ttl_ms: ttl_ms.unwrap_or(0),
                    },
                );
                (wire::Op::Cas, c.as_union_value())
            }
            WriteRequest::BatchPut { items } => {
                let kvs: Vec<_> = items
                    .iter()
                    .map(|i| {
                        let key = fbb.create_vector(&i.key);
                        let value = fbb.create_vector(&i.value);
                        wire::KeyValue::create(
                            fbb,
                            &wire::KeyValueArgs {
                                key: Some(key),
                                value: Some(value),
                                ttl_ms: i.ttl_ms.unwrap_or(0),
                            },
                        )
                    })
                    .collect();
                let items = fbb.create_vector(&kvs);
                let b = wire::BatchPut::create(fbb, &wire::BatchPutArgs { items: Some(items) });
                (wire::Op::BatchPut, b.as_union_value())
            }
        },
    }
}

/// Encodes a batch of responses.
pub fn encode_responses(resps: &[Response]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let mut offsets = Vec::with_capacity(resps.len());
    for r in resps {
        let mut args = wire::ResponseArgs {
            id: r.id,
            ..Default::default()
        };
        match &r.result {
            Err(e) => args.error = Some(encode_error(&mut fbb, e)),
            Ok(Outcome::Value(v)) => {
                if let Some(v) = v {
                    args.found = true;
                    args.value = Some(fbb.create_vector(&v.value));
                    args.version = v.version;
                    args.expire_at_ms = v.expire_at_ms;
                }
            }
            Ok(Outcome::Write(w)) => match w {
                WriteOutcome::Written { version } => args.version = *version,
                WriteOutcome::Deleted { existed } => args.existed = *existed,
                WriteOutcome::Counter { value, version } => {
                    args.counter = *value;
                    args.version = *version;
                }
                WriteOutcome::ConditionFailed { current_version } => {
                    let mut e = WireError::new(ErrorCode::ConditionFailed, "condition failed");
                    e.current_version = current_version.unwrap_or(0);
                    args.error = Some(encode_error(&mut fbb, &e));
                }
                WriteOutcome::NotANumber => {
                    let e = WireError::new(
                        ErrorCode::NotANumber,
                        "value is not a decimal 64-bit integer, or the result overflows",
                    );
                    args.error = Some(encode_error(&mut fbb, &e));
                }
                WriteOutcome::WrongRegion => {
                    let e = WireError::new(ErrorCode::EpochNotMatch, "key moved to another region");
                    args.error = Some(encode_error(&mut fbb, &e));
                }
                WriteOutcome::ResultForgotten => {
                    let e = WireError::new(
                        ErrorCode::Timeout,
                        "retry of a write whose first result is no longer kept: outcome unknown",
                    );
                    args.error = Some(encode_error(&mut fbb, &e));
                }
            },
            Ok(Outcome::Status(json)) => {
                args.status_json = Some(fbb.create_string(json));
            }
            Ok(Outcome::Events { progress, events }) => {
                args.version = *progress;
                args.events = Some(encode_events(&mut fbb, events));
            }
            Ok(Outcome::Cancelled { existed }) => args.existed = *existed,
            Ok(Outcome::Routes { regions, nodes }) => {
                let rs: Vec<_> = regions
                    .iter()
                    .map(|r| encode_region(&mut fbb, &r.region, (r.leader_node, r.leader_shard)))
                    .collect();
                args.routes = Some(fbb.create_vector(&rs));
                let ns: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        let addr = fbb.create_string(&n.client_addr);
                        wire::NodeInfo::create(
                            &mut fbb,
                            &wire::NodeInfoArgs {
                                node_id: n.node_id,
                                client_addr: Some(addr),
                                shard_count: n.shard_count,
                            },
                        )
                    })
                    .collect();
                args.nodes = Some(fbb.create_vector(&ns));
            }
        }
        offsets.push(wire::Response::create(&mut fbb, &args));
    }
    let responses = fbb.create_vector(&offsets);
    let batch = wire::ResponseBatch::create(
        &mut fbb,
        &wire::ResponseBatchArgs {
            responses: Some(responses),
        },
    );
    finish(fbb, wire::Body::ResponseBatch, batch.as_union_value())
}

// ---------------------------------------------------------------- decoding

/// The bytes of a flatbuffers vector: a slice of `src` (no copy) when the
/// frame is held in one, a copy otherwise.
fn bytes_of(src: Option<&Bytes>, v: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    match (src, v) {
        (_, None) => Bytes::new(),
        (Some(src), Some(v)) => src.slice_ref(v.bytes()),
        (None, Some(v)) => Bytes::copy_from_slice(v.bytes()),
    }
}

fn ttl(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

fn decode_epoch(e: Option<&wire::Epoch>) -> Epoch {
    e.map_or(Epoch::default(), |e| Epoch {
        conf_ver: e.conf_ver(),
        version: e.version(),
    })
}

fn decode_region(r: wire::RegionInfo<'_>) -> Region {
    Region {
        id: r.id(),
        start_hash: r.start_hash(),
        end_hash: r.end_hash(),
        epoch: decode_epoch(r.epoch()),
        peers: r
            .peers()
            .map(|ps| {
                ps.iter()
                    .map(|p| PeerMeta {
                        id: p.peer_id(),
                        node_id: p.node_id(),
                        role: if p.learner() {
                            PeerRole::Learner
                        } else {
                            PeerRole::Voter
                        },
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn decode_error(e: wire::Error<'_>) -> WireError {
    WireError {
        code: e.code(),
        message: e.message().unwrap_or("").to_string(),
        leader_node: e.leader_node(),
        regions: e
            .regions()
            .map(|rs| rs.iter().map(decode_region).collect())
            .unwrap_or_default(),
        current_version: e.current_version(),
        current: decode_events(e.current(), None),
    }
}

fn decode_op(r: &wire::Request<'_>, src: Option<&Bytes>) -> Result<Op, DecodeError> {
    let op = match r.op_type() {
        wire::Op::Get => {
            let g = r.op_as_get().ok_or_else(|| content("get without body"))?;
            let consistency = match g.consistency() {
                wire::Consistency::Linearizable => Consistency::Linearizable,
                wire::Consistency::Lease => Consistency::Lease,
                wire::Consistency::Stale => Consistency::Stale,
                wire::Consistency::Follower => Consistency::Follower,
                other => return Err(content(format!("unknown consistency {}", other.0))),
            };
            Op::Get {
                key: bytes_of(src, g.key()),
                consistency,
            }
        }
        wire::Op::Put => {
            let p = r.op_as_put().ok_or_else(|| content("put without body"))?;
            let condition = match (p.if_absent(), p.if_version()) {
                (false, 0) => Condition::None,
                (true, 0) => Condition::IfAbsent,
                (false, v) => Condition::IfVersion(v),
                (true, _) => return Err(content("put with both if_absent and if_version")),
            };
            Op::Write(WriteRequest::Put {
                key: bytes_of(src, p.key()),
                value: bytes_of(src, p.value()),
                ttl_ms: ttl(p.ttl_ms()),
                condition,
            })
        }
        wire::Op::Delete => {
            let d = r
                .op_as_delete()
                .ok_or_else(|| content("delete without body"))?;
            Op::Write(WriteRequest::Delete {
                key: bytes_of(src, d.key()),
                if_version: (d.if_version() != 0).then_some(d.if_version()),
            })
        }
        wire::Op::Incr => {
            let i = r.op_as_incr().ok_or_else(|| content("incr without body"))?;
            Op::Write(WriteRequest::Incr {
                key: bytes_of(src, i.key()),
                delta: i.delta(),
            })
        }
        wire::Op::Cas => {
            let c = r.op_as_cas().ok_or_else(|| content("cas without body"))?;
            Op::Write(WriteRequest::Cas {
                key: bytes_of(src, c.key()),
                expected: (!c.expect_absent()).then(|| bytes_of(src, c.expected())),
                value: bytes_of(src, c.value()),
                ttl_ms: ttl(c.ttl_ms()),
            })
        }
        wire::Op::BatchPut => {
            let b = r
                .op_as_batch_put()
                .ok_or_else(|| content("batch put without body"))?;
            let items = b
                .items()
                .map(|items| {
                    items
                        .iter()
                        .map(|kv| PutItem {
                            key: bytes_of(src, kv.key()),
                            value: bytes_of(src, kv.value()),
                            ttl_ms: ttl(kv.ttl_ms()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Op::Write(WriteRequest::BatchPut { items })
        }
        wire::Op::Routes => Op::Routes,
        wire::Op::Check => Op::Check,
        wire::Op::Status => Op::Status,
        wire::Op::Watch => {
            let w = r
                .op_as_watch()
                .ok_or_else(|| content("watch without body"))?;
            Op::Watch {
                keys: w
                    .keys()
                    .map(|ks| ks.iter().map(|k| bytes_of(src, k.key())).collect())
                    .unwrap_or_default(),
                from_version: w.from_version(),
            }
        }
        wire::Op::Split => {
            let t = r
                .op_as_split()
                .ok_or_else(|| content("split without body"))?;
            Op::Split {
                split_hash: t.split_hash(),
            }
        }
        wire::Op::ChangePeer => {
            use corekv_engine::membership::PeerChange;
            let t = r
                .op_as_change_peer()
                .ok_or_else(|| content("change peer without body"))?;
            let node_id = t.node_id();
            Op::ChangePeer(match t.kind() {
                0 => PeerChange::AddLearner { node_id },
                1 => PeerChange::Promote {
                    node_id,
                    remove_node: t.remove_node(),
                },
                2 => PeerChange::Remove { node_id },
                k => return Err(content(format!("unknown peer change kind {k}"))),
            })
        }
        wire::Op::MoveShard => {
            let t = r
                .op_as_move_shard()
                .ok_or_else(|| content("move shard without body"))?;
            Op::MoveShard {
                to_shard: t.to_shard(),
            }
        }
        wire::Op::TransferLeader => {
            let t = r
                .op_as_transfer_leader()
                .ok_or_else(|| content("transfer leader without body"))?;
            Op::TransferLeader {
                to_node: t.to_node(),
            }
        }
        wire::Op::CancelWatch => {
            let c = r
                .op_as_cancel_watch()
                .ok_or_else(|| content("cancel watch without body"))?;
            Op::CancelWatch {
                watch_id: c.watch_id(),
            }
        }
        other => return Err(content(format!("unknown op {}", other.0))),
    };
    Ok(op)
}

fn decode_response(r: wire::Response<'_>, src: Option<&Bytes>) -> Response {
    // Which outcome a success carries depends on the request; the client
    // reads the fields it expects through `ResponseFields`.
    let result = match r.error() {
        Some(e) => Err(decode_error(e)),
        None => {
            if let Some(json) = r.status_json() {
                Ok(Outcome::Status(json.to_string()))
            } else if r.events().is_some() {
                Ok(Outcome::Events {
                    progress: r.version(),
                    events: decode_events(r.events(), src),
                })
            } else if let Some(routes) = r.routes() {
                Ok(Outcome::Routes {
                    regions: routes
                        .iter()
                        .map(|ri| RouteInfo {
                            leader_node: ri.leader_node(),
                            leader_shard: u32::try_from(ri.leader_shard()).ok(),
                            region: decode_region(ri),
                        })
                        .collect(),
                    nodes: r
                        .nodes()
                        .map(|ns| {
                            ns.iter()
                                .map(|n| NodeInfo {
                                    node_id: n.node_id(),
                                    client_addr: n.client_addr().unwrap_or("").to_string(),
                                    shard_count: n.shard_count(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            } else {
                Ok(Outcome::Value(r.found().then(|| ValueRecord {
                    version: r.version(),
                    expire_at_ms: r.expire_at_ms(),
                    value: bytes_of(src, r.value()),
                })))
            }
        }
    };
    Response { id: r.id(), result }
}

/// Raw fields of a successful response, for a client that knows which
/// operation it asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseFields {
    /// A value was found (get).
    pub found: bool,
    /// Version (get, put, cas, incr, batch put).
    pub version: u64,
    /// A live value was removed (delete).
    pub existed: bool,
    /// New counter value (incr).
    pub counter: i64,
}

/// Decodes one frame body (without its length prefix).
pub fn decode_frame(buf: &[u8]) -> Result<Frame, DecodeError> {
    Ok(decode_with(buf, None)?.0)
}

/// Decodes one frame body held in `body`: keys and values of the result are
/// slices of it (no copy per key), so they keep the frame's memory alive.
pub fn decode_frame_shared(body: &Bytes) -> Result<Frame, DecodeError> {
    Ok(decode_with(body, Some(body))?.0)
}

/// Decodes one frame body and, for a response batch, the raw fields of
/// every response (in the same order).
pub fn decode_frame_with_fields(buf: &[u8]) -> Result<(Frame, Vec<ResponseFields>), DecodeError> {
    decode_with(buf, None)
}

fn decode_with(
    buf: &[u8],
    src: Option<&Bytes>,
) -> Result<(Frame, Vec<ResponseFields>), DecodeError> {
    let f = wire::root_as_frame(buf)?;
    let mut fields = Vec::new();
    let frame = match f.body_type() {
        wire::Body::Hello => {
            let h = f
                .body_as_hello()
                .ok_or_else(|| content("hello without body"))?;
            Frame::Hello {
                protocol_version: h.protocol_version(),
                node_id: h.node_id(),
                shard_count: h.shard_count(),
                shard_ports: h
                    .shard_ports()
                    .map(|p| p.iter().collect())
                    .unwrap_or_default(),
            }
        }
        wire::Body::RequestBatch => {
            let b = f
                .body_as_request_batch()
                .ok_or_else(|| content("request batch without body"))?;
            let mut out = Vec::new();
            for r in b.requests().into_iter().flatten() {
                out.push(Request {
                    id: r.id(),
                    region_id: r.region_id(),
                    epoch: decode_epoch(r.epoch()),
                    op: decode_op(&r, src)?,
                    session: (r.client_id() != 0).then(|| SessionTag {
                        client_id: r.client_id(),
                        seq: r.seq(),
                        retry: r.retry(),
                    }),
                    system: r.system(),
                });
            }
            Frame::Requests(out)
        }
        wire::Body::ResponseBatch => {
            let b = f
                .body_as_response_batch()
                .ok_or_else(|| content("response batch without body"))?;
            let mut out = Vec::new();
            for r in b.responses().into_iter().flatten() {
                fields.push(ResponseFields {
                    found: r.found(),
                    version: r.version(),
                    existed: r.existed(),
                    counter: r.counter(),
                });
                out.push(decode_response(r, src));
            }
            Frame::Responses(out)
        }
        wire::Body::Error => {
            let e = f
                .body_as_error()
                .ok_or_else(|| content("error without body"))?;
            Frame::Error(decode_error(e))
        }
        other => return Err(content(format!("unknown frame body {}", other.0))),
    };
    Ok((frame, fields))
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
                id: 8,
                region_id: 2,
                epoch: Epoch::default(),
                op: Op::Watch {
                    keys: vec![b("a"), b("b")],
                    from_version: 41,
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
                op: Op::ChangePeer(corekv_engine::membership::PeerChange::Promote {
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
                id: 3,
                result: Err(WireError {
                    code: ErrorCode::NotLeader,
                    message: "m".into(),
                    leader_node: 2,
                    regions: vec![region.clone()],
                    current_version: 0,
                    current: Vec::new(),
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
                result: Err(WireError {
                    code: ErrorCode::Compacted,
                    message: "gone".into(),
                    leader_node: 0,
                    regions: Vec::new(),
                    current_version: 0,
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
                assert_eq!(e.code, ErrorCode::ConditionFailed);
                assert_eq!(e.current_version, 12);
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
                shard_ports: vec![7001, 7002]
            }
        );
        let e = WireError::new(ErrorCode::BadFrame, "nope");
        assert_eq!(
            decode_frame(body(&encode_error_frame(&e))).unwrap(),
            Frame::Error(e)
        );
    }

    #[test]
    fn every_engine_error_has_the_schemas_code_of_its_name() {
        use corekv_engine::Error as E;
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
            assert_eq!(w.code.variant_name(), Some(name), "{e}");
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
