//! The shard's round: take the inbox (bounded), run the engine's round
//! (`corekv_engine::round`) with this shard as its host, answer, flush.

use super::*;

impl Shard {
    /// One round. Returns true if it did anything (another round may be due).
    pub(super) fn round(&self) -> bool {
        let now = self.node.now_ms();
        let Inbox {
            round: inbox,
            requests,
        } = self.take_inbox();
        let mut out = Outbox::default();
        let stopping = self.node.is_stopping();
        let output = {
            let mut replicas = self.replicas.borrow_mut();
            let mut host = ShardHost {
                shard: self,
                out: &mut out,
                requests,
                stopping,
                now,
                wall: wall_ms(),
            };
            let run = self
                .round
                .borrow_mut()
                .run(now, &mut replicas, inbox, &mut host);
            let run = match run {
                Ok(o) => o,
                Err(e) => self.fatal(e.during, e.error),
            };
            self.all_asleep.set(replicas.all_asleep());
            run
        };
        self.answer(output.replies, &mut out);
        self.metrics.borrow_mut().flush();
        self.follow_leaders();
        if stopping {
            self.drain(now, &mut out);
        }
        self.flush(out);
        output.busy
    }

    /// Takes the inbox, leaving what is over one round's bound for the next.
    fn take_inbox(&self) -> Inbox {
        let mut inbox = std::mem::take(&mut *self.inbox.borrow_mut());
        let rest_requests = if inbox.requests.len() > ROUND_REQUESTS_MAX {
            inbox.requests.split_off(ROUND_REQUESTS_MAX)
        } else {
            VecDeque::new()
        };
        let rest_raft = if inbox.round.raft.len() > ROUND_MESSAGES_MAX {
            inbox.round.raft.split_off(ROUND_MESSAGES_MAX)
        } else {
            Vec::new()
        };
        if !rest_requests.is_empty() || !rest_raft.is_empty() {
            let mut ib = self.inbox.borrow_mut();
            ib.requests = rest_requests
                .into_iter()
                .chain(ib.requests.drain(..))
                .collect();
            let later = std::mem::take(&mut ib.round.raft);
            ib.round.raft = rest_raft;
            ib.round.raft.extend(later);
            self.wake.notify();
        }
        inbox
    }

    /// Answers the requests the round finished. A reply whose request is no
    /// longer pending (answered when the node began to stop, or when its
    /// replica moved) is dropped: each request is answered once.
    fn answer(&self, replies: Vec<Reply>, out: &mut Outbox) {
        let mut st = self.state.borrow_mut();
        for r in replies {
            if r.id == AUTO_SPLIT_ID {
                if let Err(e) = &r.result {
                    tracing::warn!(error = %e, "automatic split not applied");
                }
                continue;
            }
            let Some(p) = st.pending.remove(&r.id) else {
                continue;
            };
            let result = match r.result {
                Ok(EngineResponse::Value(v)) => Ok(Outcome::Value(v)),
                Ok(EngineResponse::Write(w)) => Ok(Outcome::Write(w)),
                Ok(EngineResponse::Scanned {
                    items,
                    next_hash,
                    read_index,
                }) => Ok(Outcome::Scanned {
                    items: items
                        .into_iter()
                        .map(|(key, r)| corekv_engine::watch::Change {
                            key,
                            kind: corekv_engine::watch::ChangeKind::Put,
                            value: r.value,
                            version: r.version,
                            expire_at_ms: r.expire_at_ms,
                        })
                        .collect(),
                    next_hash,
                    read_index,
                }),
                Err(e) if e.is_fatal() => {
                    drop(st);
                    self.fatal("request", e)
                }
                Err(e) => Err(WireError::from_engine(&e)),
            };
            self.count(p.op, p.region, p.started, &result);
            push_response(out, p.origin, result);
        }
    }

    /// Shows the router the leaders as this shard sees them, for routing
    /// answers.
    fn follow_leaders(&self) {
        let router = self.router();
        for p in self.replicas.borrow().iter() {
            if let Some(i) = router.index_of(p.region_id()) {
                let leader = p.leader_node().unwrap_or(0);
                let before = router.set_leader(i, leader);
                if before != leader && leader != 0 {
                    tracing::info!(
                        shard = self.id,
                        region = p.region_id(),
                        leader_node = leader,
                        previous = before,
                        term = p.status().term,
                        "region leader changed"
                    );
                }
            }
        }
    }

    /// While the node stops: everything still pending is answered (the
    /// outcome of writes in flight is unknown); once the log writes in
    /// flight are durable (or after 2 s), the shard stops.
    fn drain(&self, now: u64, out: &mut Outbox) {
        let mut st = self.state.borrow_mut();
        for (_, p) in st.pending.drain() {
            let e = WireError::new(ErrorCode::Timeout, "node shutting down: outcome unknown");
            push_response(out, p.origin, Err(e));
        }
        let since = *st.stop_since_ms.get_or_insert(now);
        if self.round.borrow().is_drained() || now.saturating_sub(since) > 2000 {
            st.stopped = true;
        }
    }

    /// A tick's periodic work: preferred leaders, expiry sweeps, metrics,
    /// the status board, splits by load or size.
    fn periodic(
        &self,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
        (now, wall): (u64, u64),
        stopping: bool,
    ) {
        // Ticks counted from the clock, not from calls: while every replica
        // sleeps a call comes only every beat interval.
        let (before, ticks) = {
            let mut st = self.state.borrow_mut();
            let before = st.ticks;
            st.ticks = st
                .ticks
                .max(now / self.node.cfg.engine.tick_interval_ms.max(1));
            (before, st.ticks)
        };
        let crossed = |every: u64| ticks / every > before / every;
        if crossed(BALANCE_EVERY_TICKS) && !stopping {
            self.balance_leaders(replicas);
        }
        if !stopping {
            if let Err(e) = replicas.sweep_expired(wall) {
                tracing::warn!(error = %e, "expiry sweep failed");
            }
        }
        if crossed(REPORT_EVERY_TICKS) {
            self.report(replicas);
        }
        // Ten times as often in the first period, so the status a node
        // shows right after it started (`ctl regions` once `corekv dev` says
        // ready) already lists its regions and leaders.
        let early = ticks < STATUS_EVERY_TICKS && crossed(REPORT_EVERY_TICKS);
        if crossed(STATUS_EVERY_TICKS) || early {
            self.publish_status(replicas);
        }
        if !stopping {
            self.split_by_load_or_size(replicas, now, replies);
        }
    }
}

/// The shard as the host of the engine's round: RocksDB, the transport, the
/// log writer, the connections.
struct ShardHost<'a> {
    shard: &'a Shard,
    out: &'a mut Outbox,
    requests: VecDeque<(Origin, Request)>,
    stopping: bool,
    now: u64,
    wall: u64,
}

impl RoundHost for ShardHost<'_> {
    fn on_tick(
        &mut self,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
    ) -> corekv_engine::Result<()> {
        self.shard
            .periodic(replicas, replies, (self.now, self.wall), self.stopping);
        Ok(())
    }

    fn hand_over(
        &mut self,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
    ) -> corekv_engine::Result<bool> {
        Ok(self.shard.hand_over(replicas, replies))
    }

    fn opened(&mut self, regions: Vec<corekv_engine::Region>) -> corekv_engine::Result<()> {
        for r in regions {
            tracing::info!(
                shard = self.shard.id,
                region = r.id,
                "replica handed over from another shard opened"
            );
        }
        Ok(())
    }

    fn requests(
        &mut self,
        replicas: &mut Replicas,
        replies: &mut Vec<Reply>,
    ) -> corekv_engine::Result<bool> {
        let any = !self.requests.is_empty();
        // Once per round, not per request: the router is shared by the
        // node's shards, and its count is an atomic they would all bounce.
        let router = self.shard.router();
        for (origin, req) in self.requests.drain(..) {
            self.shard.handle_request(
                origin,
                req,
                replicas,
                replies,
                self.out,
                self.stopping,
                (self.now, self.wall),
                &router,
            );
        }
        Ok(any)
    }

    fn write_apply(&mut self, batch: rocksdb::WriteBatch) -> corekv_engine::Result<Flow> {
        db::write(&self.shard.node.db, batch, false)?;
        Ok(Flow::Continue)
    }

    fn applied(
        &mut self,
        replicas: &mut Replicas,
        changes: Vec<corekv_engine::watch::EntryChanges>,
        replies: &mut Vec<Reply>,
    ) -> corekv_engine::Result<Flow> {
        let shard = self.shard;
        shard.open_splits(replicas, replies);
        shard.follow_membership(replicas, replies);
        let mut watches = shard.watches.borrow_mut();
        watches.on_changes(&changes, replicas, self.now, &mut self.out.watch);
        watches.maintain(
            replicas,
            &shard.node.db,
            self.now,
            self.wall,
            &mut self.out.watch,
        );
        Ok(Flow::Continue)
    }

    fn send(&mut self, message: RaftEnvelope) {
        self.shard.route_raft(message, self.out);
    }

    fn write_log(
        &mut self,
        seq: u64,
        batch: corekv_engine::LogBatch,
    ) -> corekv_engine::Result<bool> {
        let task = WriteTask {
            shard: self.shard.id,
            seq,
            batch,
            done: self.shard.done_tx.clone(),
        };
        if self.shard.node.log_tx.send(task).is_err() {
            self.shard.fatal("log writer", "stopped");
        }
        Ok(false)
    }
}
