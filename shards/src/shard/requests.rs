//! Client requests on a shard: each operation handed to its region's replica
//! (or answered here), and the answers counted.

use super::*;

/// Metric label of an operation; the cluster's own reads and writes of the
/// meta region are `meta_get` and `meta_write`.
pub(super) fn op_name(op: &Op, system: bool) -> &'static str {
    match op {
        Op::Get { .. } if system => "meta_get",
        Op::Write(_) if system => "meta_write",
        Op::Get { .. } => "get",
        Op::Routes => "routes",
        Op::Status => "status",
        Op::Watch { .. } => "watch",
        Op::CancelWatch { .. } => "cancel_watch",
        Op::TransferLeader { .. } => "transfer_leader",
        Op::Split { .. } => "split",
        Op::ChangePeer(_) => "change_peer",
        Op::MoveShard { .. } => "move_shard",
        Op::Check => "check",
        Op::Scan { .. } => "scan",
        Op::Backup { .. } => "backup",
        Op::Write(w) => match w {
            corekv_engine::WriteRequest::Put { .. } => "put",
            corekv_engine::WriteRequest::Delete { .. } => "delete",
            corekv_engine::WriteRequest::Cas { .. } => "cas",
            corekv_engine::WriteRequest::Incr { .. } => "incr",
            corekv_engine::WriteRequest::BatchPut { .. } => "batch_put",
            corekv_engine::WriteRequest::Txn { .. } => "txn",
        },
    }
}

/// Metric label of a result.
pub(super) fn result_name(result: &Result<Outcome, WireError>) -> &'static str {
    use corekv_engine::WriteOutcome as W;
    match result {
        Ok(Outcome::Write(W::ConditionFailed { .. })) => "condition_failed",
        Ok(Outcome::Write(W::NotANumber)) => "not_a_number",
        Ok(Outcome::Write(W::WrongRegion)) => "epoch_not_match",
        Ok(Outcome::Write(W::ResultForgotten)) => "timeout",
        Ok(_) => "ok",
        Err(e) => match e.code() {
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::EpochNotMatch => "epoch_not_match",
            ErrorCode::RegionNotFound => "region_not_found",
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Busy => "busy",
            ErrorCode::ProposalDropped => "proposal_dropped",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NoSpace => "no_space",
            _ => "internal",
        },
    }
}

pub(super) fn push_response(out: &mut Outbox, origin: Origin, result: Result<Outcome, WireError>) {
    let r = Response {
        id: origin.client_id(),
        result,
    };
    match origin {
        Origin::Local { conn, .. } => out.local.entry(conn).or_default().push(r),
        Origin::Remote { shard, conn, .. } => out.remote.entry((shard, conn)).or_default().push(r),
    }
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_request(
        &self,
        origin: Origin,
        req: Request,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
        out: &mut Outbox,
        stopping: bool,
        (now, wall): (u64, u64),
        router: &crate::bootstrap::Router,
    ) {
        let node = &self.node;
        let op = op_name(&req.op, req.system);
        let answer = |out: &mut Outbox, result: Result<Outcome, WireError>| {
            self.count(op, req.region_id, Instant::now(), &result);
            push_response(out, origin, result)
        };
        if stopping {
            let e = WireError::new(ErrorCode::ShuttingDown, "node shutting down");
            return answer(out, Err(e));
        }
        let key = match &req.op {
            Op::Routes => {
                return answer(out, Ok(self.routes()));
            }
            Op::Status => {
                return answer(out, Ok(Outcome::Status(crate::status::document(node))));
            }
            Op::Get { key, .. } => key.clone(),
            // A prefix watch names its region.
            Op::Watch {
                prefix: Some(_), ..
            } if req.region_id != 0 => Bytes::new(),
            Op::Watch {
                prefix: Some(_), ..
            } => {
                let e = WireError::new(
                    ErrorCode::InvalidRequest,
                    "prefix watch without a region id",
                );
                return answer(out, Err(e));
            }
            Op::Watch { keys, .. } => match keys.first() {
                Some(k) => k.clone(),
                None => {
                    let e = WireError::new(ErrorCode::InvalidRequest, "watch without a key");
                    return answer(out, Err(e));
                }
            },
            // Routed by the region id alone.
            Op::CancelWatch { .. }
            | Op::TransferLeader { .. }
            | Op::Split { .. }
            | Op::ChangePeer(_)
            | Op::MoveShard { .. }
            | Op::Check
            | Op::Scan { .. }
            | Op::Backup { .. }
                if req.region_id != 0 =>
            {
                Bytes::new()
            }
            Op::CancelWatch { .. }
            | Op::TransferLeader { .. }
            | Op::Split { .. }
            | Op::ChangePeer(_)
            | Op::MoveShard { .. }
            | Op::Check
            | Op::Scan { .. }
            | Op::Backup { .. } => {
                let e = WireError::new(ErrorCode::InvalidRequest, "request without a region id");
                return answer(out, Err(e));
            }
            Op::Write(w) if !req.system && w.keys().any(|k| corekv_engine::is_meta_key(k)) => {
                let e = WireError::new(
                    ErrorCode::InvalidRequest,
                    "keys beginning with 0xFF \"corekv/\" hold the cluster's metadata and are \
                     written by the cluster only",
                );
                return answer(out, Err(e));
            }
            Op::Write(w) if req.system => {
                if let Err(why) = corekv_net::meta::check_system_write(w) {
                    let e = WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("metadata write refused: {why}"),
                    );
                    return answer(out, Err(e));
                }
                match w.keys().next() {
                    Some(k) => k.clone(),
                    None => {
                        let e = WireError::new(ErrorCode::InvalidRequest, "write without a key");
                        return answer(out, Err(e));
                    }
                }
            }
            Op::Write(w) => match w.keys().next() {
                Some(k) => k.clone(),
                None => {
                    let e = WireError::new(ErrorCode::InvalidRequest, "write without a key");
                    return answer(out, Err(e));
                }
            },
        };
        let index = if req.region_id != 0 {
            router.index_of(req.region_id)
        } else {
            router.index_of_hash(route_hash(&key))
        };
        let Some(index) = index else {
            let e = WireError::new(
                ErrorCode::RegionNotFound,
                format!(
                    "region {} has no replica on node {}",
                    req.region_id, node.cfg.node_id
                ),
            );
            return answer(out, Err(e));
        };
        let (region, owner) = router.get(index);
        if owner != self.id {
            if let Origin::Local { conn, .. } = origin {
                out.forward.entry((owner, conn)).or_default().push(req);
                return;
            }
            // The region moved to another shard while the request was
            // forwarded here: the client refreshes and retries.
            let e = WireError::new(
                ErrorCode::RegionNotFound,
                format!(
                    "region {} moved to another shard of node {}; retry",
                    region.id, node.cfg.node_id
                ),
            );
            return answer(out, Err(e));
        }
        let region_id = region.id;
        // Borrowed, not cloned: this runs for every request.
        let current = replicas.peer(region_id).map_or(region, |p| p.region());
        // A watch checks its keys itself (and says where a split moved them);
        // a shard move does not depend on the region's shape.
        // A watch checks the epoch itself (it follows splits); a cancel
        // names its watch by id, whatever the region became since.
        let is_watch = matches!(req.op, Op::Watch { .. } | Op::CancelWatch { .. });
        if let Op::MoveShard { to_shard } = req.op {
            let to = to_shard as usize;
            let result = if to >= node.cfg.shards || to == self.id {
                Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "region {region_id} is on shard {} of {}: cannot move it to shard {to}",
                        self.id, node.cfg.shards
                    ),
                ))
            } else {
                let mut st = self.state.borrow_mut();
                if !st.moving.iter().any(|(r, _)| *r == region_id) {
                    st.moving.push((region_id, to));
                }
                tracing::info!(
                    region = region_id,
                    from = self.id,
                    to,
                    "shard move requested"
                );
                Ok(Outcome::Write(corekv_engine::WriteOutcome::Written {
                    version: 0,
                }))
            };
            return answer(out, result);
        }
        if req.region_id != 0 && req.epoch != current.epoch && !is_watch {
            let e = WireError::EpochNotMatch {
                regions: vec![current.clone()],
                from_version: 0,
                message: "region epoch changed".into(),
            };
            return answer(out, Err(e));
        }
        if matches!(req.op, Op::Get { .. } | Op::Write(_)) {
            if key.len() <= corekv_engine::config::KEY_BYTES_MAX {
                self.hot_keys.borrow_mut().sample(&key, region_id);
            }
            // Off by default: no hashing or borrowing on the request path.
            let mut load = self.load.borrow_mut();
            if load.by_load() {
                load.record(region_id, route_hash(&key));
            }
        }
        match &req.op {
            Op::Watch {
                keys,
                from_version,
                prefix,
            } => {
                let Some(peer) = replicas.peer(region_id) else {
                    let e = WireError::new(ErrorCode::RegionNotFound, "region not on this shard");
                    return answer(out, Err(e));
                };
                if prefix.is_some() && !req.system && peer.region().is_meta() {
                    let e = WireError::new(
                        ErrorCode::InvalidRequest,
                        "the meta region holds the cluster's metadata only: prefix watches \
                         cover the other regions",
                    );
                    return answer(out, Err(e));
                }
                let target = origin.watch_target(self.id, req.id);
                let result = self.watches.borrow_mut().register(
                    target,
                    peer,
                    (keys.clone(), prefix.clone(), req.epoch),
                    *from_version,
                    &node.db,
                    now,
                    wall,
                    &mut out.watch,
                );
                // Accepted: the stream's first frame is the answer.
                if let Err(e) = result {
                    answer(out, Err(e));
                }
                return;
            }
            Op::CancelWatch { watch_id } => {
                let target = origin.watch_target(self.id, *watch_id);
                let existed = self.watches.borrow_mut().cancel(target);
                return answer(out, Ok(Outcome::Cancelled { existed }));
            }
            Op::Backup { backup_id, offset } => {
                let result = self.backups.borrow_mut().serve(
                    replicas.peer(region_id),
                    region_id,
                    (*backup_id, *offset),
                    &node.db,
                    Instant::now(),
                );
                return answer(out, result);
            }
            _ => {}
        }
        if let Op::Write(w) = &req.op {
            let adds_data = match w {
                corekv_engine::WriteRequest::Delete { .. } => false,
                corekv_engine::WriteRequest::Txn { ops, .. } => ops
                    .iter()
                    .any(|o| matches!(o, corekv_engine::TxnOp::Put { .. })),
                _ => true,
            };
            if adds_data && node.no_space.load(Ordering::Relaxed) {
                let e = WireError::new(
                    ErrorCode::NoSpace,
                    "node over its disk quota (--disk-quota-mb): writes that add data are \
                     refused until deletes free space; reads and deletes work",
                );
                return answer(out, Err(e));
            }
        }
        if matches!(req.op, Op::Scan { .. }) && !req.system && current.is_meta() {
            // Only the cluster's metadata lives there (users' token hashes
            // among it), read by the cluster alone: to everyone else the
            // region is empty.
            let done = Outcome::Scanned {
                items: Vec::new(),
                next_hash: None,
                read_index: 0,
            };
            return answer(out, Ok(done));
        }
        let mut st = self.state.borrow_mut();
        if st.pending.len() >= PENDING_REQUESTS_MAX {
            drop(st);
            let e = WireError::new(ErrorCode::Busy, "shard has too many requests pending");
            return answer(out, Err(e));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.pending.insert(
            id,
            Pending {
                origin,
                op,
                region: region_id,
                started: Instant::now(),
            },
        );
        drop(st);
        match req.op {
            Op::Get { key, consistency } => {
                // Fault injection only: skip ReadIndex on purpose.
                let consistency = if self.faults.borrow().stale_reads {
                    corekv_engine::Consistency::Stale
                } else {
                    consistency
                };
                replicas.read(region_id, id, key, consistency, now, replies)
            }
            Op::Write(w) => replicas.propose(region_id, id, w, req.session, wall, replies),
            Op::Scan {
                from_hash,
                limit,
                keys_only,
                consistency,
                prefix,
            } => {
                let scan = corekv_engine::read::Scan {
                    from_hash,
                    limit: limit as usize,
                    keys_only,
                    prefix,
                };
                replicas.scan(region_id, id, scan, consistency, now, replies)
            }
            Op::Split { split_hash } => match self.split_command(replicas, region_id, split_hash) {
                Ok(cmd) => {
                    tracing::info!(region = region_id, ?cmd, "split requested");
                    replicas.propose_admin(region_id, id, cmd, replies)
                }
                Err(e) => replies.push(Reply { id, result: Err(e) }),
            },
            Op::TransferLeader { to_node } => {
                tracing::info!(region = region_id, to_node, "preferred leader requested");
                let cmd = corekv_engine::admin::AdminCommand::PreferLeader { node_id: to_node };
                replicas.propose_admin(region_id, id, cmd, replies)
            }
            Op::ChangePeer(change) => {
                tracing::info!(region = region_id, ?change, "membership change requested");
                replicas.propose_change(region_id, id, change, replies)
            }
            Op::Check => {
                tracing::info!(region = region_id, "consistency check requested");
                replicas.propose_admin(region_id, id, AdminCommand::ComputeDigest, replies)
            }
            Op::Routes
            | Op::Status
            | Op::Watch { .. }
            | Op::CancelWatch { .. }
            | Op::Backup { .. }
            | Op::MoveShard { .. } => {
                unreachable!("answered above")
            }
        }
    }

    /// The split of `region_id` at `split_hash` (0 = the middle of its
    /// range), with a new region id no region on this node has.
    pub(super) fn split_command(
        &self,
        replicas: &Replicas,
        region_id: u64,
        split_hash: u64,
    ) -> Result<AdminCommand, corekv_engine::Error> {
        let region = replicas
            .peer(region_id)
            .ok_or(corekv_engine::Error::RegionNotFound(region_id))?
            .region()
            .clone();
        let split_hash = if split_hash != 0 {
            split_hash
        } else {
            region.middle()
        };
        // Ids come from the meta region's allocator (reserved ahead by
        // `meta`), so two splits anywhere never pick the same one.
        let new_region_id = crate::meta::take_region_id(&self.node).ok_or(
            corekv_engine::Error::Busy("no region id reserved from the meta region yet"),
        )?;
        let cmd = AdminCommand::Split {
            split_hash,
            new_region_id,
            new_peers: admin::split_peers(&region, new_region_id),
        };
        cmd.validate(&region)?;
        Ok(cmd)
    }

    pub(super) fn routes(&self) -> Outcome {
        let node = &self.node;
        let router = self.router();
        let own = node.cfg.node_id;
        let regions = router
            .iter()
            .enumerate()
            .map(|(i, (r, shard))| {
                let leader_node = router.leader(i);
                RouteInfo {
                    region: r.clone(),
                    leader_node,
                    leader_shard: (leader_node == own).then_some(shard as u32),
                }
            })
            .collect();
        let regions = crate::meta::merged_routes(node, regions);
        let nodes = node
            .nodes
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        Outcome::Routes { regions, nodes }
    }

    /// Counts an answered request; logs it if slow.
    pub(super) fn count(
        &self,
        op: &'static str,
        region: u64,
        started: Instant,
        result: &Result<Outcome, WireError>,
    ) {
        let latency = started.elapsed();
        if region != 0 {
            let mut ops = self.region_ops.borrow_mut();
            let e = ops.entry(region).or_default();
            if op == "get" || op == "meta_get" || op == "scan" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let mut m = self.metrics.borrow_mut();
        m.request(op, result_name(result), latency);
        if latency.as_millis() as u64 >= self.node.cfg.slow_request_ms {
            m.slow(op);
            tracing::warn!(
                shard = self.id,
                op,
                region,
                result = result_name(result),
                latency_ms = latency.as_millis() as u64,
                "slow request"
            );
        }
    }
}
