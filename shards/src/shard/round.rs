//! The round: take the inbox (bounded), tick, step, requests, collect every
//! region's ready, write the apply batch, stage the log batch, serve reads,
//! answer, flush.

use super::*;

impl Shard {
    /// One round. Returns true if it did anything (another round may be due).
    pub(super) fn round(&self) -> bool {
        let node = &self.node;
        let now = node.now_ms();
        let wall = wall_ms();
        let mut inbox = std::mem::take(&mut *self.inbox.borrow_mut());
        // Bound the work of one round; the rest goes back.
        let rest_requests = if inbox.requests.len() > ROUND_REQUESTS_MAX {
            inbox.requests.split_off(ROUND_REQUESTS_MAX)
        } else {
            VecDeque::new()
        };
        let rest_raft = if inbox.raft.len() > ROUND_MESSAGES_MAX {
            inbox.raft.split_off(ROUND_MESSAGES_MAX)
        } else {
            Vec::new()
        };
        if !rest_requests.is_empty() || !rest_raft.is_empty() {
            let mut ib = self.inbox.borrow_mut();
            ib.requests = rest_requests
                .into_iter()
                .chain(ib.requests.drain(..))
                .collect();
            let later = std::mem::take(&mut ib.raft);
            ib.raft = rest_raft;
            ib.raft.extend(later);
            self.wake.notify();
        }

        let mut busy = false;
        let mut replies: Vec<Reply> = Vec::new();
        let mut out = Outbox::default();
        let mut replicas = self.replicas.borrow_mut();
        let stopping = node.is_stopping();

        if inbox.tick {
            busy = true;
            replicas.tick(now, &mut replies);
            let ticks = {
                let mut st = self.state.borrow_mut();
                st.ticks += 1;
                st.ticks
            };
            if ticks % BALANCE_EVERY_TICKS == 0 && !stopping {
                self.balance_leaders(&mut replicas);
            }
            if !stopping {
                if let Err(e) = replicas.sweep_expired(wall) {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
            if ticks % REPORT_EVERY_TICKS == 0 {
                self.report(&replicas);
            }
            // Ten times as often in the first period, so the status a
            // node shows right after it started (`ctl regions` once `corekv
            // dev` says ready) already lists its regions and leaders.
            let early = ticks < STATUS_EVERY_TICKS && ticks % REPORT_EVERY_TICKS == 0;
            if ticks % STATUS_EVERY_TICKS == 0 || early {
                self.publish_status(&replicas);
            }
            if !stopping {
                self.split_by_load_or_size(&mut replicas, now, &mut replies);
            }
        }
        if self.hand_over(&mut replicas, &mut replies) {
            busy = true;
        }
        for (region, led) in inbox.open.drain(..) {
            busy = true;
            match replicas.open_region(region, led, &mut replies) {
                Ok(opened) => {
                    for r in opened {
                        tracing::info!(
                            shard = self.id,
                            region = r.id,
                            "replica handed over from another shard opened"
                        );
                    }
                }
                Err(e) => self.fatal("opening a replica handed over", e),
            }
        }
        for env in inbox.raft.drain(..) {
            busy = true;
            if let Err(e) = replicas.step(env, &mut replies) {
                self.fatal("raft step", e);
            }
        }
        for (env, delivered) in inbox.reports.drain(..) {
            replicas.report_delivery(&env, delivered);
        }
        // Rounds the log writer made durable.
        let released = self.state.borrow_mut().log.persisted(inbox.persisted_seq);
        if !released.is_empty() {
            busy = true;
            let mut msgs = Vec::new();
            replicas.on_persisted(released, &mut msgs);
            for m in msgs {
                self.route_raft(m, &mut out);
            }
        }
        for (origin, req) in inbox.requests.drain(..) {
            busy = true;
            self.handle_request(
                origin,
                req,
                &mut replicas,
                &mut replies,
                &mut out,
                stopping,
                (now, wall),
            );
        }

        let mut round = Round::default();
        if let Err(e) = replicas.collect(&mut round) {
            self.fatal("collecting ready", e);
        }
        let Round {
            log,
            mut apply,
            messages,
            replies: applied,
            persist,
        } = round;
        replies.extend(applied);
        if !apply.is_empty() {
            busy = true;
            if let Err(e) = db::write(&node.db, apply.take(), false) {
                self.fatal("apply write", e);
            }
        }
        // Written: regions split off may open, replicas removed go,
        // watchers see the changes.
        self.open_splits(&mut replicas, &mut replies);
        self.follow_membership(&mut replicas, &mut replies);
        {
            let mut watches = self.watches.borrow_mut();
            watches.on_changes(&apply.take_changes(), now, &mut out.watch);
            watches.maintain(&replicas, &node.db, now, wall, &mut out.watch);
        }
        for m in messages {
            busy = true;
            self.route_raft(m, &mut out);
        }
        if !log.is_empty() || !persist.is_empty() {
            busy = true;
        }
        let staged = self.state.borrow_mut().log.stage(log, persist);
        match staged {
            Staged::Write { seq, batch } => {
                let task = WriteTask {
                    shard: self.id,
                    seq,
                    batch,
                    done: self.done_tx.clone(),
                };
                if node.log_tx.send(task).is_err() {
                    self.fatal("log writer", "stopped");
                }
            }
            Staged::Durable(persist) => {
                let mut msgs = Vec::new();
                replicas.on_persisted(persist, &mut msgs);
                for m in msgs {
                    self.route_raft(m, &mut out);
                }
            }
            Staged::Queued => {}
        }
        if let Err(e) = replicas.serve_reads(&mut replies) {
            self.fatal("serving reads", e);
        }
        if !replies.is_empty() {
            busy = true;
        }
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
                Err(e) if e.is_fatal() => {
                    drop(st);
                    self.fatal("request", e)
                }
                Err(e) => Err(WireError::from_engine(&e)),
            };
            self.count(p.op, p.region, p.started, &result);
            push_response(&mut out, p.origin, result);
        }
        self.metrics.borrow_mut().flush();
        // Leaders as this shard sees them, for routing answers.
        let router = self.router();
        for p in replicas.iter() {
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
        if stopping {
            // Everything still pending is answered: the outcome of writes in
            // flight is unknown.
            for (_, p) in st.pending.drain() {
                let e = WireError::new(ErrorCode::Timeout, "node shutting down: outcome unknown");
                push_response(&mut out, p.origin, Err(e));
            }
            let since = *st.stop_since_ms.get_or_insert(now);
            // Wait (bounded) for log writes in flight, then stop.
            if st.log.is_drained() || now.saturating_sub(since) > 2000 {
                st.stopped = true;
            }
        }
        drop(st);
        drop(replicas);
        self.flush(out);
        busy
    }
}
