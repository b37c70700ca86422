//! Running the simulated cluster: ticks, rounds on every shard of every node
//! (the engine's [`ShardRound`], with the simulator as its host), delayed
//! log writes, message delivery until quiet.

use super::*;

/// The simulated wall clock at `now_ms`, off by `offset` ms.
pub(super) fn skewed(now_ms: u64, offset: Option<&i64>) -> u64 {
    (WALL_BASE_MS + now_ms).saturating_add_signed(offset.copied().unwrap_or(0))
}

impl SimCluster {
    /// Advances time by one tick: every running shard has a tick due; then
    /// deliver due messages and run rounds until the cluster is quiet.
    pub fn tick(&mut self) -> Result<()> {
        self.now_ms += self.cfg.tick_interval_ms;
        for (id, node) in self.nodes.iter_mut() {
            if self.paused.contains(id) {
                continue;
            }
            for inbox in node.inboxes.iter_mut() {
                inbox.tick = true;
            }
        }
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

    /// Keeps the replies to wait on.
    ///
    /// # Panics
    /// If a request is answered twice: every request gets one answer.
    pub(super) fn collect_replies(&mut self, replies: Vec<Reply>) {
        for r in replies {
            let id = r.id;
            assert!(
                self.answered.insert(id),
                "request {id} answered twice (seed {})",
                self.seed
            );
            self.replies.insert(id, r);
        }
    }

    /// Delivers messages due now into the inboxes of the shards they are
    /// for and runs rounds on every node until nothing moves (bounded).
    pub(super) fn settle(&mut self) -> Result<()> {
        for _ in 0..256 {
            let mut moved = false;
            for env in self.net.due(self.now_ms) {
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
                    node.inboxes[s].raft.push(env);
                }
            }
            for (env, delivered) in self.net.take_snapshot_reports() {
                if let Some(node) = self.nodes.get_mut(&env.from_node) {
                    if let Some(s) = node.shard_of(env.region_id) {
                        node.inboxes[s].reports.push((env, delivered));
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

    /// Writes `node`'s log batches that are due (in order) and reports them
    /// to their shards' next rounds; true if one was.
    pub(super) fn write_due_logs(&mut self, node: u64) -> Result<bool> {
        let now = self.now_ms;
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let mut wrote = false;
        while n.log.front().is_some_and(|w| w.due_ms <= now) {
            let w = n.log.pop_front().expect("checked");
            db::write(&n.db, w.batch.inner, w.batch.must_sync)?;
            let inbox = &mut n.inboxes[w.shard];
            inbox.persisted_seq = inbox.persisted_seq.max(w.seq);
            wrote = true;
        }
        Ok(wrote)
    }

    /// One round of `shard` of `node` (the engine's, as on a server);
    /// true if it did anything.
    pub(super) fn round(&mut self, node: u64, shard: usize) -> Result<bool> {
        let now = self.now_ms;
        let wall = skewed(now, self.clock_offsets.get(&node));
        let crash = match self.crash_plan {
            Some((victim, point)) if victim == node => Some(point),
            _ => None,
        };
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let inbox = std::mem::take(&mut n.inboxes[shard]);
        let mut host = SimHost {
            db: &n.db,
            log: &mut n.log,
            rng: &mut self.rng,
            shard,
            now,
            wall,
            delay_ms: self.log_delay_ms,
            jitter_ms: self.log_jitter_ms,
            crash,
            wrote_apply: false,
            crashed: false,
            sends: Vec::new(),
            opened: Vec::new(),
            elsewhere: Vec::new(),
        };
        let output = n.rounds[shard]
            .run(now, &mut n.shards[shard], inbox, &mut host)
            .map_err(|e| {
                slog::error!(self.logger, "SIM node {node} shard {shard}: {e}");
                e.error
            })?;
        let SimHost {
            crashed,
            sends,
            opened,
            elsewhere,
            ..
        } = host;
        if crashed {
            // The process died in the middle of the round: nothing of it
            // was sent or answered.
            self.crash_plan = None;
            self.crash(node);
            return Ok(true);
        }
        for s in elsewhere {
            n.inboxes[s.owner].open.push((s.region.id, s.led));
        }
        for env in sends {
            self.net.send(env, now, &mut self.rng);
        }
        for new in opened {
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
        self.collect_replies(output.replies);
        Ok(output.busy)
    }
}

/// A simulated node's shard as the host of the engine's round: its
/// RocksDB, its delayed log disk, the simulated network, planned crashes.
struct SimHost<'a> {
    db: &'a Db,
    log: &'a mut VecDeque<LogWrite>,
    rng: &'a mut SmallRng,
    shard: usize,
    now: u64,
    wall: u64,
    delay_ms: u64,
    jitter_ms: u64,
    /// A crash planned for this node, in its next round that applies.
    crash: Option<CrashPoint>,
    wrote_apply: bool,
    crashed: bool,
    sends: Vec<RaftEnvelope>,
    /// Regions opened on this shard, for the cluster-wide layout.
    opened: Vec<Region>,
    /// Regions split off here that another shard of the node opens.
    elsewhere: Vec<SplitElsewhere>,
}

impl SimHost<'_> {
    /// Regions opened on this shard: their placement is stored, as a
    /// server stores it.
    fn place(&mut self, regions: Vec<Region>) -> Result<()> {
        for r in regions {
            store_placement(self.db, r.id, self.shard)?;
            self.opened.push(r);
        }
        Ok(())
    }
}

impl RoundHost for SimHost<'_> {
    fn on_tick(&mut self, replicas: &mut Replicas, _replies: &mut Vec<Reply>) -> Result<()> {
        replicas.sweep_expired(self.wall)?;
        Ok(())
    }

    fn opened(&mut self, regions: Vec<Region>) -> Result<()> {
        self.place(regions)
    }

    fn write_apply(&mut self, batch: rocksdb::WriteBatch) -> Result<Flow> {
        if self.crash == Some(CrashPoint::BeforeWrites) {
            self.crashed = true;
            return Ok(Flow::Abandon);
        }
        db::write(self.db, batch, false)?;
        self.wrote_apply = true;
        Ok(Flow::Continue)
    }

    fn applied(
        &mut self,
        replicas: &mut Replicas,
        _changes: Vec<crate::watch::EntryChanges>,
        replies: &mut Vec<Reply>,
    ) -> Result<Flow> {
        let (here, elsewhere) = replicas.open_splits(replies)?;
        self.place(here)?;
        self.elsewhere.extend(elsewhere);
        let waiting = replicas.open_waiting(replies)?;
        self.place(waiting)?;
        replicas.destroy_removed(replies)?;
        if self.wrote_apply && self.crash == Some(CrashPoint::AfterApplyWrite) {
            self.crashed = true;
            return Ok(Flow::Abandon);
        }
        Ok(Flow::Continue)
    }

    fn send(&mut self, message: RaftEnvelope) {
        self.sends.push(message);
    }

    fn write_log(&mut self, seq: u64, batch: LogBatch) -> Result<bool> {
        let jitter = match self.jitter_ms {
            0 => 0,
            j => self.rng.gen_range(0..=j),
        };
        let delay = self.delay_ms + jitter;
        if delay == 0 && self.log.is_empty() {
            db::write(self.db, batch.inner, batch.must_sync)?;
            return Ok(true);
        }
        // In order within the shard: never due before its previous batch.
        let after = self
            .log
            .iter()
            .filter(|w| w.shard == self.shard)
            .map(|w| w.due_ms)
            .max()
            .unwrap_or(0);
        let due_ms = (self.now + delay).max(after);
        let at = self.log.partition_point(|w| w.due_ms <= due_ms);
        self.log.insert(
            at,
            LogWrite {
                due_ms,
                shard: self.shard,
                seq,
                batch,
            },
        );
        Ok(false)
    }
}
