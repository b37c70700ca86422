//! Decoding frames: the buffer is verified first, so garbage is an error,
//! never a panic.

use super::*;

pub(super) fn content(m: impl Into<String>) -> DecodeError {
    DecodeError::Content(m.into())
}

// ---------------------------------------------------------------- encoding

pub(super) fn decode_events(
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

/// The bytes of a flatbuffers vector: a slice of `src` (no copy) when the
/// frame is held in one, a copy otherwise.
pub(super) fn bytes_of(src: Option<&Bytes>, v: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    match (src, v) {
        (_, None) => Bytes::new(),
        (Some(src), Some(v)) => src.slice_ref(v.bytes()),
        (None, Some(v)) => Bytes::copy_from_slice(v.bytes()),
    }
}

pub(super) fn ttl(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

pub(super) fn decode_epoch(e: Option<&wire::Epoch>) -> Epoch {
    e.map_or(Epoch::default(), |e| Epoch {
        conf_ver: e.conf_ver(),
        version: e.version(),
    })
}

pub(super) fn decode_region(r: wire::RegionInfo<'_>) -> Region {
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

pub(super) fn decode_error(e: wire::Error<'_>) -> WireError {
    let message = e.message().unwrap_or("").to_string();
    match e.code() {
        ErrorCode::NotLeader => WireError::NotLeader {
            leader_node: e.leader_node(),
            message,
        },
        ErrorCode::EpochNotMatch => WireError::EpochNotMatch {
            regions: e
                .regions()
                .map(|rs| rs.iter().map(decode_region).collect())
                .unwrap_or_default(),
            from_version: e.current_version(),
            message,
        },
        ErrorCode::ConditionFailed => WireError::ConditionFailed {
            current_version: e.current_version(),
            message,
        },
        ErrorCode::Compacted => WireError::Compacted {
            current: decode_events(e.current(), None),
            message,
        },
        code => WireError::Other { code, message },
    }
}

pub(super) fn decode_op(r: &wire::Request<'_>, src: Option<&Bytes>) -> Result<Op, DecodeError> {
    let op = match r.op_type() {
        wire::Op::Get => {
            let g = r.op_as_get().ok_or_else(|| content("get without body"))?;
            let consistency = consistency_from_wire(g.consistency())?;
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
        wire::Op::Txn => {
            let t = r.op_as_txn().ok_or_else(|| content("txn without body"))?;
            let checks = t
                .checks()
                .map(|cs| {
                    cs.iter()
                        .map(|c| TxnCheck {
                            key: bytes_of(src, c.key()),
                            version: (!c.absent()).then_some(c.version()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut ops = Vec::new();
            for o in t.ops().iter().flatten() {
                let key = bytes_of(src, o.key());
                ops.push(if o.delete() {
                    TxnOp::Delete { key }
                } else {
                    let expiry = match (o.ttl_ms(), o.expire_at_ms()) {
                        (0, 0) => Expiry::Never,
                        (t, 0) => Expiry::After(t),
                        (0, at) => Expiry::At(at),
                        _ => return Err(content("txn op with both ttl_ms and expire_at_ms")),
                    };
                    TxnOp::Put {
                        key,
                        value: bytes_of(src, o.value()),
                        expiry,
                    }
                });
            }
            Op::Write(WriteRequest::Txn { checks, ops })
        }
        wire::Op::Scan => {
            let sc = r.op_as_scan().ok_or_else(|| content("scan without body"))?;
            Op::Scan {
                from_hash: sc.from_hash(),
                limit: sc.limit(),
                keys_only: sc.keys_only(),
                consistency: consistency_from_wire(sc.consistency())?,
                prefix: sc
                    .prefix()
                    .map(|p| Bytes::copy_from_slice(p.bytes()))
                    .unwrap_or_default(),
            }
        }
        wire::Op::Routes => Op::Routes,
        wire::Op::Check => Op::Check,
        wire::Op::Backup => {
            let b = r
                .op_as_backup()
                .ok_or_else(|| content("backup without body"))?;
            Op::Backup {
                backup_id: b.backup_id(),
                offset: b.offset(),
            }
        }
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
                prefix: w.prefix_watch().then(|| WatchRange {
                    prefix: w
                        .prefix()
                        .map(|p| Bytes::copy_from_slice(p.bytes()))
                        .unwrap_or_default(),
                    start_hash: w.hash_start(),
                    end_hash: w.hash_end(),
                }),
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
            use corekv_types::membership::PeerChange;
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

pub(super) fn decode_response(r: wire::Response<'_>, src: Option<&Bytes>) -> Response {
    // Which outcome a success carries depends on the request; the client
    // reads the fields it expects through `ResponseFields`.
    let result = match r.error() {
        Some(e) => Err(decode_error(e)),
        None => {
            if let Some(json) = r.status_json() {
                Ok(Outcome::Status(json.to_string()))
            } else if r.backup_data().is_some() {
                Ok(Outcome::BackupChunk(BackupChunk {
                    backup_id: r.backup_id(),
                    applied_index: r.version(),
                    total: r.backup_total(),
                    offset: r.backup_offset(),
                    data: bytes_of(src, r.backup_data()),
                }))
            } else if r.scanned().is_some() {
                Ok(Outcome::Scanned {
                    items: decode_events(r.scanned(), src),
                    next_hash: r.scan_more().then(|| r.scan_next_hash()),
                    read_index: r.scan_read_index(),
                })
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

pub(super) fn decode_with(
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
                user: h.user().unwrap_or_default().to_string(),
                token: h.token().unwrap_or_default().to_string(),
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

fn consistency_from_wire(c: wire::Consistency) -> Result<Consistency, DecodeError> {
    Ok(match c {
        wire::Consistency::Linearizable => Consistency::Linearizable,
        wire::Consistency::Lease => Consistency::Lease,
        wire::Consistency::Stale => Consistency::Stale,
        wire::Consistency::Follower => Consistency::Follower,
        other => return Err(content(format!("unknown consistency {}", other.0))),
    })
}
