//! Encoding messages into flatbuffers frames.

use super::*;

pub(super) fn finish(
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

pub(super) fn epoch(e: Epoch) -> wire::Epoch {
    wire::Epoch::new(e.conf_ver, e.version)
}

pub(super) fn encode_region<'a>(
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

/// Encodes a node's `Hello` frame (with its length prefix).
pub fn encode_hello(node_id: u64, shard_count: u32, shard_ports: &[u16]) -> Vec<u8> {
    hello(node_id, shard_count, shard_ports, None)
}

/// Encodes a client's `Hello` frame, logging in as `(user, token)` if given.
pub fn encode_client_hello(credentials: Option<(&str, &str)>) -> Vec<u8> {
    hello(0, 0, &[], credentials)
}

fn hello(
    node_id: u64,
    shard_count: u32,
    shard_ports: &[u16],
    credentials: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(64);
    let ports = fbb.create_vector(shard_ports);
    let (user, token) = match credentials {
        Some((u, t)) => (Some(fbb.create_string(u)), Some(fbb.create_string(t))),
        None => (None, None),
    };
    let hello = wire::Hello::create(
        &mut fbb,
        &wire::HelloArgs {
            protocol_version: wire::PROTOCOL_VERSION,
            node_id,
            shard_count,
            shard_ports: Some(ports),
            user,
            token,
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

pub(super) fn encode_error<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    err: &WireError,
) -> WIPOffset<wire::Error<'a>> {
    let message = fbb.create_string(err.message());
    let mut args = wire::ErrorArgs {
        code: err.code(),
        message: Some(message),
        ..Default::default()
    };
    match err {
        WireError::NotLeader { leader_node, .. } => args.leader_node = *leader_node,
        WireError::EpochNotMatch {
            regions,
            from_version,
            ..
        } => {
            let regions: Vec<_> = regions
                .iter()
                .map(|r| encode_region(fbb, r, (0, None)))
                .collect();
            args.regions = Some(fbb.create_vector(&regions));
            args.current_version = *from_version;
        }
        WireError::ConditionFailed {
            current_version, ..
        } => args.current_version = *current_version,
        WireError::Compacted { current, .. } => {
            args.current = (!current.is_empty()).then(|| encode_events(fbb, current));
        }
        WireError::Other { .. } => {}
    }
    wire::Error::create(fbb, &args)
}

pub(super) fn encode_events<'a>(
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

pub(super) fn encode_op<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    op: &Op,
) -> (wire::Op, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match op {
        Op::Get { key, consistency } => {
            let key = fbb.create_vector(key);
            let c = consistency_to_wire(*consistency);
            let g = wire::Get::create(
                fbb,
                &wire::GetArgs {
                    key: Some(key),
                    consistency: c,
                },
            );
            (wire::Op::Get, g.as_union_value())
        }
        Op::Watch {
            keys,
            from_version,
            prefix,
        } => {
            let ks: Vec<_> = keys
                .iter()
                .map(|k| {
                    let key = fbb.create_vector(k);
                    wire::WatchKey::create(fbb, &wire::WatchKeyArgs { key: Some(key) })
                })
                .collect();
            let ks = fbb.create_vector(&ks);
            let p = prefix.as_ref().map(|r| fbb.create_vector(&r.prefix));
            let w = wire::Watch::create(
                fbb,
                &wire::WatchArgs {
                    keys: Some(ks),
                    from_version: *from_version,
                    prefix_watch: prefix.is_some(),
                    prefix: p,
                    hash_start: prefix.as_ref().map_or(0, |r| r.start_hash),
                    hash_end: prefix.as_ref().map_or(0, |r| r.end_hash),
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
            use corekv_types::membership::PeerChange;
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
        Op::Backup { backup_id, offset } => {
            let r = wire::Backup::create(
                fbb,
                &wire::BackupArgs {
                    backup_id: *backup_id,
                    offset: *offset,
                },
            );
            (wire::Op::Backup, r.as_union_value())
        }
        Op::Scan {
            from_hash,
            limit,
            keys_only,
            consistency,
            prefix,
        } => {
            let prefix = (!prefix.is_empty()).then(|| fbb.create_vector(prefix));
            let r = wire::Scan::create(
                fbb,
                &wire::ScanArgs {
                    from_hash: *from_hash,
                    limit: *limit,
                    keys_only: *keys_only,
                    consistency: consistency_to_wire(*consistency),
                    prefix,
                },
            );
            (wire::Op::Scan, r.as_union_value())
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
            WriteRequest::Txn { checks, ops } => {
                let checks: Vec<_> = checks
                    .iter()
                    .map(|c| {
                        let key = fbb.create_vector(&c.key);
                        wire::TxnCheck::create(
                            fbb,
                            &wire::TxnCheckArgs {
                                key: Some(key),
                                version: c.version.unwrap_or(0),
                                absent: c.version.is_none(),
                            },
                        )
                    })
                    .collect();
                let ops: Vec<_> = ops
                    .iter()
                    .map(|o| {
                        let key = fbb.create_vector(o.key());
                        let (value, delete, ttl_ms, expire_at_ms) = match o {
                            TxnOp::Put { value, expiry, .. } => {
                                let (t, at) = match expiry {
                                    Expiry::Never => (0, 0),
                                    Expiry::After(t) => (*t, 0),
                                    // A record's 0 means "never"; the
                                    // cluster applies At(0) as At(1).
                                    Expiry::At(at) => (0, (*at).max(1)),
                                };
                                (Some(fbb.create_vector(value)), false, t, at)
                            }
                            TxnOp::Delete { .. } => (None, true, 0, 0),
                        };
                        wire::TxnOp::create(
                            fbb,
                            &wire::TxnOpArgs {
                                key: Some(key),
                                value,
                                delete,
                                ttl_ms,
                                expire_at_ms,
                            },
                        )
                    })
                    .collect();
                let checks = fbb.create_vector(&checks);
                let ops = fbb.create_vector(&ops);
                let t = wire::Txn::create(
                    fbb,
                    &wire::TxnArgs {
                        checks: Some(checks),
                        ops: Some(ops),
                    },
                );
                (wire::Op::Txn, t.as_union_value())
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
                    let e = WireError::ConditionFailed {
                        current_version: current_version.unwrap_or(0),
                        message: "condition failed".into(),
                    };
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
            Ok(Outcome::Scanned {
                items,
                next_hash,
                read_index,
            }) => {
                args.scanned = Some(encode_events(&mut fbb, items));
                args.scan_more = next_hash.is_some();
                args.scan_next_hash = next_hash.unwrap_or(0);
                args.scan_read_index = *read_index;
            }
            Ok(Outcome::BackupChunk(c)) => {
                args.backup_data = Some(fbb.create_vector(&c.data));
                args.backup_id = c.backup_id;
                args.backup_total = c.total;
                args.backup_offset = c.offset;
                args.version = c.applied_index;
            }
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

fn consistency_to_wire(c: Consistency) -> wire::Consistency {
    match c {
        Consistency::Linearizable => wire::Consistency::Linearizable,
        Consistency::Lease => wire::Consistency::Lease,
        Consistency::Stale => wire::Consistency::Stale,
        Consistency::Follower => wire::Consistency::Follower,
    }
}
