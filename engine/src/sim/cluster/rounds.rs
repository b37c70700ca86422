//! Running the simulated cluster: ticks, rounds on every shard of every node,
//! delayed log writes, message delivery until quiet.

use super::*;

/// The simulated wall clock at `now_ms`, off by `offset` ms.
pub(super) fn skewed(now_ms: u64, offset: Option<&i64>) -> u64 {
    (WALL_BASE_MS + now_ms).saturating_add_signed(offset.copied().unwrap_or(0))
}

impl SimCluster {
    /// Advances time by one tick: deliver due messages, tick every replica,
    /// then run rounds until the cluster is quiet.
    pub fn tick(&mut self) -> Result<()> {
        self.now_ms += self.cfg.tick_interval_ms;
        let now = self.now_ms;
        let mut replies = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            if self.paused.contains(id) {
                continue;
            }
            let wall = skewed(self.now_ms, self.clock_offsets.get(id));
            for shard in node.shards.iter_mut() {
                shard.tick(now, &mut replies);
                shard.sweep_expired(wall)?;
            }
        }
        self.collect_replies(replies);
        self.settle()
    }

    /// Runs for `ms` of simulated time.
    pub fn run_ms(&mut self, ms: u64) -> Result<()> {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.tick()?;
        }
        Ok(())
    }

    /// Runs until `pred` holds or `max_ms` pass; returns whether it held.
    pub fn run_until(
        &mut self,
        max_ms: u64,
        mut pred: impl FnMut(&SimCluster) -> bool,
    ) -> Result<bool> {
        let end = self.now_ms + max_ms;
        loop {
            if pred(self) {
                return Ok(true);
            }
            if self.now_ms >= end {
                return Ok(false);
            }
            self.tick()?;
        }
    }

    pub(super) fn collect_replies(&mut self, replies: Vec<Reply>) {
        for r in replies {
            self.replies.insert(r.id, r);
        }
    }

    /// Delivers messages due now and runs rounds on every node until nothing
    /// moves (bounded).
    pub(super) fn settle(&mut self) -> Result<()> {
        for _ in 0..256 {
            let mut moved = false;
            let due = self.net.due(self.now_ms);
            let mut replies = Vec::new();
            for env in due {
                moved = true;
                if self.paused.contains(&env.to_node) {
                    self.parked.push(env);
                    continue;
                }
                let shards = self.shards;
                if let Some(node) = self.nodes.get_mut(&env.to_node) {
                    let s = node
                        .directory
                        .get(env.region_id)
                        .map_or(default_shard(env.region_id, shards), |c| c.owner);
                    node.shards[s].step(env, &mut replies)?;
                }
            }
            self.collect_replies(replies);
            for (env, delivered) in self.net.take_snapshot_reports() {
                if let Some(node) = self.nodes.get_mut(&env.from_node) {
                    if let Some(r) = node.replicas_of(env.region_id) {
                        r.report_delivery(&env, delivered);
                    }
                }
            }
            let ids: Vec<u64> = self
                .nodes
                .keys()
                .copied()
                .filter(|n| !self.paused.contains(n))
                .collect();
            for id in ids {
                moved |= self.write_due_logs(id)?;
                for shard in 0..self.shards {
                    moved |= self.round(id, shard)?;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes `node`'s log batches that are due (in order) and confirms
    /// them to their shards; true if one was.
    pub(super) fn write_due_logs(&mut self, node: u64) -> Result<bool> {
        let now = self.now_ms;
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let mut outbox = Vec::new();
        let mut wrote = false;
        while n.log.front().is_some_and(|w| w.due_ms <= now) {
            let w = n.log.pop_front().expect("checked");
            db::write(&n.db, w.batch.inner, w.batch.must_sync)?;
            let released = n.pipelines[w.shard].persisted(w.seq);
            n.shards[w.shard].on_persisted(released, &mut outbox);
            wrote = true;
        }
        for env in outbox {
            self.net.send(env, now, &mut self.rng);
        }
        Ok(wrote)
    }

    /// One shard-style round on `shard` of `node`; true if it produced
    /// anything.
    pub(super) fn round(&mut self, node: u64, shard: usize) -> Result<bool> {
        let now = self.now_ms;
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let mut round = Round::default();
        n.shards[shard].collect(&mut round)?;
        let Round {
            log,
            mut apply,
            messages,
            mut replies,
            persist,
        } = round;
        let produced = !(log.is_empty()
            && apply.is_empty()
            && messages.is_empty()
            && persist.is_empty()
            && replies.is_empty());
        let crash = match self.crash_plan {
            Some((victim, point)) if victim == node && !apply.is_empty() => Some(point),
            _ => None,
        };
        if crash == Some(CrashPoint::BeforeWrites) {
            self.crash_plan = None;
            self.crash(node);
            return Ok(true);
        }
        if !apply.is_empty() {
            db::write(&n.db, apply.take(), false)?;
        }
        let (here, elsewhere) = n.shards[shard].open_splits(&mut replies)?;
        let mut opened: Vec<(Region, usize)> = here.into_iter().map(|r| (r, shard)).collect();
        for s in elsewhere {
            for r in n.shards[s.owner].open_region(s.region.id, s.led, &mut replies)? {
                opened.push((r, s.owner));
            }
        }
        for r in n.shards[shard].open_waiting(&mut replies)? {
            opened.push((r, shard));
        }
        for (r, s) in &opened {
            store_placement(&n.db, r.id, *s)?;
        }
        for (new, _) in opened {
            // The cluster-wide layout follows the first node that splits.
            if !self.regions.iter().any(|r| r.id == new.id) {
                for r in self.regions.iter_mut() {
                    if r.contains(new.start_hash) {
                        r.end_hash = new.start_hash;
                        r.epoch = new.epoch;
                    }
                }
                self.regions.push(new);
                self.regions.sort_by_key(|r| r.start_hash);
            }
        }
        n.shards[shard].destroy_removed(&mut replies)?;
        if crash == Some(CrashPoint::AfterApplyWrite) {
            self.crash_plan = None;
            self.crash(node);
            return Ok(true);
        }
        let mut outbox: Vec<RaftEnvelope> = messages;
        match n.pipelines[shard].stage(log, persist) {
            Staged::Write { seq, batch } => {
                let jitter = match self.log_jitter_ms {
                    0 => 0,
                    j => self.rng.gen_range(0..=j),
                };
                let delay = self.log_delay_ms + jitter;
                if delay == 0 && n.log.is_empty() {
                    db::write(&n.db, batch.inner, batch.must_sync)?;
                    let released = n.pipelines[shard].persisted(seq);
                    n.shards[shard].on_persisted(released, &mut outbox);
                } else {
                    // In order within the shard: never due before its
                    // previous batch.
                    let after = n
                        .log
                        .iter()
                        .filter(|w| w.shard == shard)
                        .map(|w| w.due_ms)
                        .max()
                        .unwrap_or(0);
                    let due_ms = (now + delay).max(after);
                    let at = n.log.partition_point(|w| w.due_ms <= due_ms);
                    n.log.insert(
                        at,
                        LogWrite {
                            due_ms,
                            shard,
                            seq,
                            batch,
                        },
                    );
                }
            }
            Staged::Durable(persist) => n.shards[shard].on_persisted(persist, &mut outbox),
            Staged::Queued => {}
        }
        n.shards[shard].serve_reads(&mut replies)?;
        for env in outbox {
            self.net.send(env, now, &mut self.rng);
        }
        self.collect_replies(replies);
        Ok(produced)
    }
}
