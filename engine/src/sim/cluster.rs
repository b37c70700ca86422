//! The simulated cluster: nodes, clock, client helpers.
//!
//! Each node runs one [`Replicas`] per shard over one RocksDB and one
//! [`Directory`], as a server node does: messages for a region go to the
//! shard holding it (or, for a region the node does not hold, to the shard
//! a new replica of it is created on). Each shard numbers its log batches
//! with a [`LogPipeline`], as a server shard does; a batch becomes durable
//! `log_delay_ms` (plus up to `log_jitter_ms`) after its round, in order
//! within its shard (at once by default), and only then are the readies it
//! carries released, with the messages raft held back. With jitter, one
//! shard's batches may become durable before an earlier batch of another
//! shard: stricter than the server, whose single log writer makes batches
//! durable in the order they were handed to it, so code that is right here
//! does not rely on that order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::network::SimNetwork;
use crate::command::{WriteOutcome, WriteRequest};
use crate::config::Config;
use crate::db::{self, Db, DbConfig, LogBatch};
use crate::directory::{default_owner as default_shard, Directory};
use crate::error::{Error, Result};
use crate::hash::route_hash;
use crate::keys::{self, CF_DATA};
use crate::peer::{Peer, PeerStatus, Reply, Response};
use crate::read::Consistency;
use crate::region::{Epoch, PeerMeta, PeerRole, Region};
use crate::replicas::{bootstrap_regions, Owner, RaftEnvelope, Replicas, Round};
use crate::round::{LogPipeline, Staged};
use crate::value::ValueRecord;

/// Where in a round a planned crash strikes (see
/// [`SimCluster::crash_in_next_apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the round was collected, before anything of it is written.
    BeforeWrites,
    /// After the apply batch was written, before the log batch.
    AfterApplyWrite,
}

/// Unix time (ms) that simulated time 0 maps to.
pub const WALL_BASE_MS: u64 = 1_700_000_000_000;

/// Shape of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Node ids are `1..=nodes`; every region has a replica on each.
    pub nodes: u64,
    /// Regions splitting the hash space evenly.
    pub regions: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes `nodes+1..=nodes+spare_nodes` start with no replica (targets
    /// of membership changes).
    pub spare_nodes: u64,
    /// Shards (owners of replicas) per node; region `r` starts on shard
    /// `(r - 1) mod shards`, as on a server node.
    pub shards: usize,
    /// A round's log batch is written and durable this long after the round
    /// (0: at once, in the round).
    pub log_delay_ms: u64,
    /// Plus a random extra delay of up to this much, drawn per batch
    /// (batches of one shard stay in order; shards may overtake each other,
    /// which the server's single log writer never does).
    pub log_jitter_ms: u64,
    /// Engine settings of every node.
    pub config: Config,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            regions: 1,
            seed: 1,
            spare_nodes: 0,
            shards: 1,
            log_delay_ms: 0,
            log_jitter_ms: 0,
            config: Config::default(),
        }
    }
}

/// A round's log batch on its way to disk.
struct LogWrite {
    due_ms: u64,
    shard: usize,
    seq: u64,
    batch: LogBatch,
}

struct SimNode {
    db: Db,
    directory: Directory,
    shards: Vec<Replicas>,
    /// Each shard's log batches in flight.
    pipelines: Vec<LogPipeline>,
    /// Log batches not written yet, in the order they are due.
    log: VecDeque<LogWrite>,
}

impl SimNode {
    /// The shard holding `region`'s replica, if the node has one.
    fn shard_of(&self, region: u64) -> Option<usize> {
        self.directory
            .get(region)
            .map(|c| c.owner)
            .filter(|&s| self.shards[s].peer(region).is_some())
    }

    fn peer(&self, region: u64) -> Option<&Peer> {
        self.shard_of(region)
            .and_then(|s| self.shards[s].peer(region))
    }

    fn replicas_of(&mut self, region: u64) -> Option<&mut Replicas> {
        let s = self.shard_of(region)?;
        Some(&mut self.shards[s])
    }
}

/// A simulated cluster of in-process nodes.
pub struct SimCluster {
    cfg: Arc<Config>,
    root: PathBuf,
    seed: u64,
    regions: Vec<Region>,
    nodes: BTreeMap<u64, SimNode>,
    all_nodes: Vec<u64>,
    /// The simulated network; tests set its filters.
    pub net: SimNetwork,
    rng: SmallRng,
    now_ms: u64,
    next_id: u64,
    replies: HashMap<u64, Reply>,
    crash_plan: Option<(u64, CrashPoint)>,
    /// Nodes paused (as by SIGSTOP): no ticks, no rounds; messages to them
    /// wait in `parked` until they resume.
    paused: std::collections::HashSet<u64>,
    parked: Vec<RaftEnvelope>,
    clock_offsets: HashMap<u64, i64>,
    shards: usize,
    log_delay_ms: u64,
    log_jitter_ms: u64,
    logger: slog::Logger,
}

fn db_config() -> DbConfig {
    DbConfig {
        block_cache_bytes: 8 << 20,
        write_buffer_bytes: 4 << 20,
        ..DbConfig::default()
    }
}

impl SimCluster {
    /// Creates and bootstraps a cluster under `root` (one directory per node).
    pub fn new(root: &Path, opts: SimOptions) -> Result<SimCluster> {
        let cfg = Arc::new(opts.config.validate()?);
        let all_nodes: Vec<u64> = (1..=opts.nodes + opts.spare_nodes).collect();
        let voters: Vec<u64> = (1..=opts.nodes).collect();
        let regions: Vec<Region> = Region::even_ranges(opts.regions)
            .into_iter()
            .enumerate()
            .map(|(i, (start_hash, end_hash))| {
                let id = i as u64 + 1;
                Region {
                    id,
                    start_hash,
                    end_hash,
                    epoch: Epoch {
                        conf_ver: 1,
                        version: 1,
                    },
                    peers: voters
                        .iter()
                        .map(|&n| PeerMeta {
                            id: crate::ids::region_peer_id(id, n),
                            node_id: n,
                            role: PeerRole::Voter,
                        })
                        .collect(),
                }
            })
            .collect();
        let mut c = SimCluster {
            cfg,
            root: root.to_path_buf(),
            seed: opts.seed,
            regions,
            nodes: BTreeMap::new(),
            all_nodes: all_nodes.clone(),
            net: SimNetwork::default(),
            rng: SmallRng::seed_from_u64(opts.seed),
            now_ms: 0,
            next_id: 1,
            replies: HashMap::new(),
            crash_plan: None,
            paused: Default::default(),
            parked: Vec::new(),
            clock_offsets: HashMap::new(),
            shards: opts.shards.max(1),
            log_delay_ms: opts.log_delay_ms,
            log_jitter_ms: opts.log_jitter_ms,
            logger: super::log::logger(),
        };
        for &n in &all_nodes {
            let db = db::open(&c.node_dir(n), &db_config())?;
            bootstrap_regions(&db, n, &c.regions)?;
            drop(db);
            c.start(n)?;
        }
        Ok(c)
    }

    fn node_dir(&self, node: u64) -> PathBuf {
        self.root.join(format!("node-{node}"))
    }

    fn start(&mut self, node: u64) -> Result<()> {
        let db = db::open(&self.node_dir(node), &db_config())?;
        crate::replicas::destroy_stale_replicas(&db, node)?;
        let directory = Directory::default();
        let mut shards = Vec::new();
        for index in 0..self.shards {
            let owner = Owner {
                node_id: node,
                index,
                directory: directory.clone(),
            };
            let placed = placements(&db)?;
            let count = self.shards;
            shards.push(Replicas::open(
                self.cfg.clone(),
                db.clone(),
                owner,
                self.seed,
                &self.logger,
                |r| {
                    placed
                        .get(&r.id)
                        .copied()
                        .unwrap_or(default_shard(r.id, count))
                        == index
                },
            )?);
        }
        self.nodes.insert(
            node,
            SimNode {
                db,
                directory,
                pipelines: (0..self.shards).map(|_| LogPipeline::default()).collect(),
                shards,
                log: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// The seed this cluster runs with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated monotonic time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Simulated wall clock, unix ms.
    pub fn wall_ms(&self) -> u64 {
        WALL_BASE_MS + self.now_ms
    }

    /// `node`'s wall clock, unix ms: the simulated one, off by the node's
    /// offset ([`SimCluster::set_clock_offset`]).
    pub fn wall_ms_of(&self, node: u64) -> u64 {
        skewed(self.now_ms, self.clock_offsets.get(&node))
    }

    /// Sets how far `node`'s wall clock is ahead (positive) or behind
    /// (negative) of the simulated one, in ms. Its leader time (write
    /// proposals, expiry sweeps, clock entries) comes from it.
    pub fn set_clock_offset(&mut self, node: u64, offset_ms: i64) {
        self.clock_offsets.insert(node, offset_ms);
    }

    /// Engine settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The regions, as bootstrapped.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Every node id, live or not.
    pub fn node_ids(&self) -> &[u64] {
        &self.all_nodes
    }

    /// True if `node` is running.
    pub fn is_up(&self, node: u64) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Region owning `key`.
    pub fn region_of(&self, key: &[u8]) -> u64 {
        let h = route_hash(key);
        self.regions
            .iter()
            .find(|r| r.contains(h))
            .expect("regions cover the hash space")
            .id
    }

    /// Stops `node` at once (its RocksDB is closed; messages to it are lost).
    pub fn crash(&mut self, node: u64) {
        slog::info!(self.logger, "SIM crash node {node} at {} ms", self.now_ms);
        self.nodes.remove(&node);
        self.net.forget_node(node);
    }

    /// Pauses `node` as SIGSTOP does: its clock stands still (no ticks), it
    /// runs no rounds, messages to it wait; requests handed to it directly
    /// are queued and handled once it resumes.
    pub fn pause(&mut self, node: u64) {
        self.paused.insert(node);
    }

    /// Resumes a paused node: the messages that waited arrive now (it
    /// handles them in its next round, after anything handed to it before).
    pub fn resume(&mut self, node: u64) {
        self.paused.remove(&node);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|e| e.to_node == node);
        self.parked = rest;
        for env in mine {
            self.net.send(env, self.now_ms, &mut self.rng);
        }
    }

    /// Crashes `node` in the middle of its next round that applies entries,
    /// at `point`.
    pub fn crash_in_next_apply(&mut self, node: u64, point: CrashPoint) {
        self.crash_plan = Some((node, point));
    }

    /// True while a planned crash has not struck yet.
    pub fn crash_pending(&self) -> bool {
        self.crash_plan.is_some()
    }

    /// Starts a crashed `node` again from its data directory.
    pub fn restart(&mut self, node: u64) -> Result<()> {
        assert!(!self.is_up(node), "node {node} is running");
        slog::info!(self.logger, "SIM restart node {node} at {} ms", self.now_ms);
        self.start(node)
    }

    /// `node`'s replica of `region`, on whichever shard holds it.
    pub fn peer(&self, node: u64, region: u64) -> Option<&Peer> {
        self.nodes.get(&node)?.peer(region)
    }

    /// The shard of `node` holding `region`'s replica.
    pub fn shard_of(&self, node: u64, region: u64) -> Option<usize> {
        self.nodes.get(&node)?.shard_of(region)
    }

    /// Raft state of `node`'s replica of `region`.
    pub fn status(&self, node: u64, region: u64) -> Option<PeerStatus> {
        Some(self.peer(node, region)?.status())
    }

    /// Counters of `node`'s replica of `region`.
    pub fn peer_counters(&self, node: u64, region: u64) -> Option<crate::peer::PeerCounters> {
        Some(self.peer(node, region)?.counters())
    }

    /// The session table of `node`'s replica of `region`.
    pub fn sessions(&self, node: u64, region: u64) -> Option<crate::session::SessionTable> {
        Some(self.peer(node, region)?.sessions().clone())
    }

    /// The node whose replica of `region` leads with the highest term.
    pub fn leader(&self, region: u64) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&n, node)| {
                let p = node.peer(region)?;
                p.is_leader().then(|| (p.status().term, n))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// The leader of `region`, once there is one; panics after 5 s of
    /// simulated time.
    pub fn must_leader(&mut self, region: u64) -> u64 {
        let elected = self.run_until(5000, |c| c.leader(region).is_some());
        assert!(
            elected.is_ok_and(|e| e),
            "no leader for region {region} within 5 s (seed {})",
            self.seed
        );
        self.leader(region).expect("elected")
    }

    /// Proposes `change` of `region` at its leader until it is applied,
    /// retrying while the learner catches up, another change is under way
    /// or leadership moves; panics on another error or after 100 tries.
    pub fn must_change(&mut self, region: u64, change: crate::membership::PeerChange) {
        for _ in 0..100 {
            let l = self.must_leader(region);
            let id = self.propose_change(l, region, change);
            match self.wait(id, 3000).expect("simulated").map(|r| r.result) {
                Some(Ok(_)) => return,
                Some(Err(Error::Busy(_) | Error::NotLeader { .. } | Error::ProposalDropped))
                | None => {
                    self.run_ms(100).expect("simulated");
                }
                Some(Err(e)) => panic!("{change:?}: {e}"),
            }
        }
        panic!("{change:?} never applied (seed {})", self.seed);
    }

    /// Every node whose replica of `region` believes it leads (a deposed
    /// leader that has not heard of its successor included).
    pub fn leaders(&self, region: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.peer(region).is_some_and(|p| p.is_leader()))
            .map(|(&n, _)| n)
            .collect()
    }

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

    fn collect_replies(&mut self, replies: Vec<Reply>) {
        for r in replies {
            self.replies.insert(r.id, r);
        }
    }

    /// Delivers messages due now and runs rounds on every node until nothing
    /// moves (bounded).
    fn settle(&mut self) -> Result<()> {
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
    fn write_due_logs(&mut self, node: u64) -> Result<bool> {
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
    fn round(&mut self, node: u64, shard: usize) -> Result<bool> {
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

    /// Hands a request to the shard of `node` holding `region`: `Timeout`
    /// if the node is down and `down_answers`, `RegionNotFound` if it holds
    /// no replica.
    fn submit(
        &mut self,
        (node, region, id): (u64, u64, u64),
        down_answers: bool,
        f: impl FnOnce(&mut Replicas, &mut Vec<Reply>),
    ) {
        let mut replies = Vec::new();
        match self.nodes.get_mut(&node) {
            Some(n) => match n.replicas_of(region) {
                Some(r) => f(r, &mut replies),
                None => replies.push(Reply {
                    id,
                    result: Err(Error::RegionNotFound(region)),
                }),
            },
            None if down_answers => replies.push(Reply {
                id,
                result: Err(Error::Timeout),
            }),
            None => {}
        }
        self.collect_replies(replies);
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Submits a write to `node`'s replica of the key's region; returns the
    /// request id to wait on.
    pub fn propose(&mut self, node: u64, request: WriteRequest) -> u64 {
        self.propose_tagged(node, request, None)
    }

    /// Like [`SimCluster::propose`], with a client session tag.
    pub fn propose_tagged(
        &mut self,
        node: u64,
        request: WriteRequest,
        session: Option<crate::command::SessionTag>,
    ) -> u64 {
        let id = self.new_id();
        let key = request.keys().next().expect("a write has a key").clone();
        let region = self.region_of(&key);
        let wall = self.wall_ms_of(node);
        self.submit((node, region, id), true, |r, replies| {
            r.propose(region, id, request, session, wall, replies)
        });
        id
    }

    /// Submits an admin command to `node`'s replica of `region`; returns the
    /// request id to wait on.
    pub fn propose_admin(
        &mut self,
        node: u64,
        region: u64,
        cmd: crate::admin::AdminCommand,
    ) -> u64 {
        let id = self.new_id();
        self.submit((node, region, id), true, |r, replies| {
            r.propose_admin(region, id, cmd, replies)
        });
        id
    }

    /// Submits a membership change to `node`'s replica of `region`; returns
    /// the request id to wait on.
    pub fn propose_change(
        &mut self,
        node: u64,
        region: u64,
        change: crate::membership::PeerChange,
    ) -> u64 {
        let id = self.new_id();
        self.submit((node, region, id), false, |r, replies| {
            r.propose_change(region, id, change, replies)
        });
        id
    }

    /// Takes `node`'s replica of `region` out and opens it again from the
    /// database, as a move to another shard of the node does (a leader takes
    /// the lead back at once). False if the node has no such replica or a
    /// log write of it is in flight.
    pub fn reopen(&mut self, node: u64, region: u64) -> Result<bool> {
        match self.shard_of(node, region) {
            Some(s) => self.move_shard(node, region, s),
            None => Ok(false),
        }
    }

    /// Moves `node`'s replica of `region` to shard `to` of the node, as
    /// `ctl move-shard` does: taken out of its shard, opened on `to` from
    /// the database (a leader takes the lead back at once). False if the
    /// node has no such replica or a log write of it is in flight.
    pub fn move_shard(&mut self, node: u64, region: u64, to: usize) -> Result<bool> {
        let mut replies = Vec::new();
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let Some(from) = n.shard_of(region) else {
            return Ok(false);
        };
        let led = n.shards[from].peer(region).is_some_and(|p| p.is_leader());
        if n.shards[from].take(region, to, &mut replies).is_none() {
            return Ok(false);
        }
        store_placement(&n.db, region, to)?;
        n.shards[to].open_region(region, led, &mut replies)?;
        self.collect_replies(replies);
        Ok(true)
    }

    /// True when `node` holds a replica of `region` (initialized or not).
    pub fn has_replica(&self, node: u64, region: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.peer(region).is_some())
    }

    /// Submits a write to `node`'s replica of `region`, whatever region the
    /// key belongs to (to test routing checks); returns the request id.
    pub fn propose_in(&mut self, node: u64, region: u64, request: WriteRequest) -> u64 {
        let id = self.new_id();
        let wall = self.wall_ms_of(node);
        self.submit((node, region, id), false, |r, replies| {
            r.propose(region, id, request, None, wall, replies)
        });
        id
    }

    /// Submits a read of `key` to `node`'s replica of `region`, whatever
    /// region the key belongs to; returns the request id.
    pub fn read_in(&mut self, node: u64, region: u64, key: &[u8], consistency: Consistency) -> u64 {
        let id = self.new_id();
        let key = Bytes::copy_from_slice(key);
        let now = self.now_ms;
        self.submit((node, region, id), false, |r, replies| {
            r.read(region, id, key, consistency, now, replies)
        });
        id
    }

    /// The region metadata `node`'s replica of `region` has applied.
    pub fn region_meta(&self, node: u64, region: u64) -> Option<Region> {
        Some(self.peer(node, region)?.region().clone())
    }

    /// Submits a read of `key` to `node`; returns the request id.
    pub fn read(&mut self, node: u64, key: &[u8], consistency: Consistency) -> u64 {
        let id = self.new_id();
        let region = self.region_of(key);
        let key = Bytes::copy_from_slice(key);
        let now = self.now_ms;
        self.submit((node, region, id), true, |r, replies| {
            r.read(region, id, key, consistency, now, replies)
        });
        id
    }

    /// Takes the reply to `id` if it has come.
    pub fn take_reply(&mut self, id: u64) -> Option<Reply> {
        self.replies.remove(&id)
    }

    /// Runs until `id` is answered or `max_ms` pass.
    pub fn wait(&mut self, id: u64, max_ms: u64) -> Result<Option<Reply>> {
        self.settle()?;
        self.run_until(max_ms, |c| c.replies.contains_key(&id))?;
        Ok(self.take_reply(id))
    }

    /// Writes through whichever node leads the key's region, following
    /// leader changes, for up to `max_ms`. A `Timeout` error means the outcome
    /// is unknown.
    pub fn write(&mut self, request: WriteRequest, max_ms: u64) -> Result<WriteOutcome> {
        let key = request.keys().next().expect("a write has a key").clone();
        let region = self.region_of(&key);
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            let Some(leader) = self.leader(region) else {
                self.tick()?;
                continue;
            };
            let id = self.propose(leader, request.clone());
            match self.wait(id, end.saturating_sub(self.now_ms))? {
                Some(Reply {
                    result: Ok(Response::Write(o)),
                    ..
                }) => return Ok(o),
                Some(Reply { result: Err(e), .. }) if e.is_retryable() => self.tick()?,
                Some(Reply { result: Err(e), .. }) => return Err(e),
                Some(other) => panic!("unexpected reply {other:?}"),
                None => return Err(Error::Timeout),
            }
        }
        Err(Error::Timeout)
    }

    /// Reads `key` through the leader of its region, following leader changes.
    pub fn get(
        &mut self,
        key: &[u8],
        consistency: Consistency,
        max_ms: u64,
    ) -> Result<Option<ValueRecord>> {
        let region = self.region_of(key);
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            let Some(leader) = self.leader(region) else {
                self.tick()?;
                continue;
            };
            let id = self.read(leader, key, consistency);
            match self.wait(id, end.saturating_sub(self.now_ms))? {
                Some(Reply {
                    result: Ok(Response::Value(v)),
                    ..
                }) => return Ok(v),
                Some(Reply { result: Err(e), .. }) if e.is_retryable() => self.tick()?,
                Some(Reply { result: Err(e), .. }) => return Err(e),
                Some(other) => panic!("unexpected reply {other:?}"),
                None => return Err(Error::Timeout),
            }
        }
        Err(Error::Timeout)
    }

    /// Every record in `node`'s data CF (expired ones included), by key.
    pub fn dump_data(&self, node: u64) -> Result<BTreeMap<Vec<u8>, ValueRecord>> {
        let n = self.nodes.get(&node).expect("live node");
        let mut it = n.db.raw_iterator_cf(db::cf(&n.db, CF_DATA));
        it.seek_to_first();
        let mut out = BTreeMap::new();
        while it.valid() {
            let (_, key) = keys::split_data_key(it.key().unwrap())
                .ok_or_else(|| Error::Corruption("bad data key".into()))?;
            out.insert(key.to_vec(), ValueRecord::decode(it.value().unwrap())?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Reads `key` straight from `node`'s RocksDB as of simulated wall time
    /// (no raft round): what that replica has applied.
    pub fn local_get(&self, node: u64, key: &[u8]) -> Result<Option<ValueRecord>> {
        let n = self.nodes.get(&node).expect("live node");
        crate::apply::get(&n.db, key, self.wall_ms())
    }

    /// `node`'s change history of `region` after version `after`, and its
    /// floor (watchers can resume from the floor on).
    pub fn history(
        &self,
        node: u64,
        region: u64,
        after: u64,
    ) -> Result<(u64, Vec<crate::watch::Change>)> {
        let n = self.nodes.get(&node).expect("live node");
        let peer = n.peer(region).expect("replica exists");
        let page = crate::watch::read(
            &n.db,
            region,
            after,
            peer.applied_index(),
            usize::MAX,
            |_| true,
        )?;
        Ok((peer.history_floor(), page.changes))
    }
}

/// The simulated wall clock at `now_ms`, off by `offset` ms.
fn skewed(now_ms: u64, offset: Option<&i64>) -> u64 {
    (WALL_BASE_MS + now_ms).saturating_add_signed(offset.copied().unwrap_or(0))
}

/// Where each region's replica was placed on this node (region -> shard),
/// as stored by [`store_placement`].
fn placements(db: &Db) -> Result<HashMap<u64, usize>> {
    let mut out = HashMap::new();
    for r in crate::peer::list_regions(db)? {
        let v = db.get_cf(
            db::cf(db, crate::keys::CF_META),
            crate::keys::placement_key(r.id),
        )?;
        if let Some(s) = v
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes)
        {
            out.insert(r.id, s as usize);
        }
    }
    Ok(out)
}

/// Records that `region`'s replica lives on `shard` of this node (the
/// server's placement record), so that a restart opens it there.
fn store_placement(db: &Db, region: u64, shard: usize) -> Result<()> {
    let mut b = rocksdb::WriteBatch::default();
    b.put_cf(
        db::cf(db, crate::keys::CF_META),
        crate::keys::placement_key(region),
        (shard as u32).to_be_bytes(),
    );
    db::write(db, b, false)
}

impl SimCluster {
    /// The digest of `node`'s replica of `region` and the index it applied,
    /// if the node runs and holds an initialized replica.
    pub fn digest(&self, node: u64, region: u64) -> Result<Option<(u64, crate::digest::Digest)>> {
        let Some(n) = self.nodes.get(&node) else {
            return Ok(None);
        };
        let Some(p) = n.peer(region).filter(|p| p.is_initialized()) else {
            return Ok(None);
        };
        let d = crate::digest::compute(&n.db, (p.region(), p.region_clock()), p.sessions())?;
        Ok(Some((p.applied_index(), d)))
    }

    /// Compares the replicas of every region that have applied the same
    /// index: one line per replica whose digest differs from the first
    /// one's (empty when every replica agrees). Run it once the cluster is
    /// quiet and caught up.
    pub fn check_convergence(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let ids: std::collections::BTreeSet<u64> = self
            .nodes
            .values()
            .flat_map(|n| n.directory.claims().into_keys())
            .collect();
        for region in ids {
            let mut seen: Vec<(u64, u64, crate::digest::Digest)> = Vec::new();
            for &node in &self.all_nodes {
                if let Some((applied, d)) = self.digest(node, region)? {
                    seen.push((node, applied, d));
                }
            }
            for (node, applied, d) in &seen {
                if let Some((first, _, want)) = seen.iter().find(|(_, a, _)| a == applied) {
                    if want != d {
                        problems.push(format!(
                            "region {region} at index {applied}: node {node} has {d:?}, \
                             node {first} has {want:?}"
                        ));
                    }
                }
            }
        }
        Ok(problems)
    }
}

impl SimCluster {
    /// Asks `node`'s replica of `region` (a leader) to hand leadership to
    /// the replica on `to_node`. False if either is missing.
    pub fn transfer_leader(&mut self, node: u64, region: u64, to_node: u64) -> bool {
        let Some(n) = self.nodes.get_mut(&node) else {
            return false;
        };
        let Some(p) = n.replicas_of(region).and_then(|r| r.peer_mut(region)) else {
            return false;
        };
        let Some(target) = p.region().peer_on_node(to_node).map(|t| t.id) else {
            return false;
        };
        p.transfer_leader(target);
        true
    }

    /// Checks that no replica's raft term or vote in memory is behind what
    /// its node has durably stored for it: a replica that forgot a durable
    /// vote may vote twice in one term. One line per violation.
    pub fn check_raft_state(&self) -> Result<Vec<String>> {
        use protobuf::Message as _;
        let mut problems = Vec::new();
        for (&node, n) in &self.nodes {
            for shard in &n.shards {
                for p in shard.iter() {
                    let Some(b) = n.db.get_cf(
                        db::cf(&n.db, crate::keys::CF_RAFT),
                        crate::keys::hard_state_key(p.region_id()),
                    )?
                    else {
                        continue;
                    };
                    let hs = raft::eraftpb::HardState::parse_from_bytes(&b)
                        .map_err(|e| Error::Corruption(format!("hard state: {e}")))?;
                    let (term, vote) = p.term_and_vote();
                    if hs.term > term || (hs.term == term && hs.vote != 0 && hs.vote != vote) {
                        problems.push(format!(
                            "node {node} region {}: in memory term {term} vote {vote}, \
                             stored term {} vote {}",
                            p.region_id(),
                            hs.term,
                            hs.vote
                        ));
                    }
                }
            }
        }
        Ok(problems)
    }
}

impl SimCluster {
    /// Makes `node`'s replica of `region` start an election now (pre-vote
    /// first). False if the node or replica is missing.
    pub fn campaign(&mut self, node: u64, region: u64) -> Result<bool> {
        let mut replies = Vec::new();
        let Some(p) = self
            .nodes
            .get_mut(&node)
            .and_then(|n| n.replicas_of(region))
            .and_then(|r| r.peer_mut(region))
        else {
            return Ok(false);
        };
        p.campaign(&mut replies)?;
        self.collect_replies(replies);
        self.settle()?;
        Ok(true)
    }
}

impl SimCluster {
    /// Writes `value` for `key` straight into `node`'s data, behind raft's
    /// back: a replica that silently diverged (for tests of the checks).
    pub fn corrupt(&mut self, node: u64, key: &[u8], value: &[u8]) -> Result<()> {
        let n = self.nodes.get(&node).expect("live node");
        let record = ValueRecord {
            version: 1,
            expire_at_ms: 0,
            value: Bytes::copy_from_slice(value),
        };
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            db::cf(&n.db, CF_DATA),
            keys::data_key(route_hash(key), key),
            record.encode(),
        );
        db::write(&n.db, b, false)
    }

    /// Runs a consistency check of `region` through its leader and waits
    /// (up to `max_ms`) until every running replica verified it; returns
    /// each node's verdict.
    pub fn check(
        &mut self,
        region: u64,
        max_ms: u64,
    ) -> Result<BTreeMap<u64, crate::peer::CheckVerdict>> {
        let leader = self.leader(region).ok_or(Error::Timeout)?;
        let id = self.propose_admin(leader, region, crate::admin::AdminCommand::ComputeDigest);
        let index = match self.wait(id, max_ms)?.map(|r| r.result) {
            Some(Ok(Response::Write(WriteOutcome::Written { version }))) => version,
            Some(Err(e)) => return Err(e),
            _ => return Err(Error::Timeout),
        };
        let verified = |c: &SimCluster| {
            c.nodes.values().all(|n| {
                n.peer(region)
                    .is_none_or(|p| p.last_check().is_some_and(|v| v.index >= index))
            })
        };
        self.run_until(max_ms, verified)?;
        Ok(self
            .nodes
            .iter()
            .filter_map(|(&id, n)| Some((id, n.peer(region)?.last_check()?)))
            .collect())
    }
}
