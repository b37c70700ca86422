//! The simulated cluster: nodes, clock, client helpers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::network::SimNetwork;
use crate::command::{WriteOutcome, WriteRequest};
use crate::config::Config;
use crate::db::{self, Db, DbConfig};
use crate::error::{Error, Result};
use crate::hash::route_hash;
use crate::keys::{self, CF_DATA};
use crate::peer::{PeerStatus, Reply, Response};
use crate::read::Consistency;
use crate::region::{Epoch, PeerMeta, PeerRole, Region};
use crate::replicas::{bootstrap_regions, RaftEnvelope, Replicas, Round};
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
            config: Config::default(),
        }
    }
}

struct SimNode {
    db: Db,
    replicas: Replicas,
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
                            id: id * 1000 + n,
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
        let replicas = Replicas::open(
            self.cfg.clone(),
            db.clone(),
            node,
            self.seed,
            &self.logger,
            |_| true,
        )?;
        self.nodes.insert(node, SimNode { db, replicas });
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

    /// Raft state of `node`'s replica of `region`.
    pub fn status(&self, node: u64, region: u64) -> Option<PeerStatus> {
        Some(self.nodes.get(&node)?.replicas.peer(region)?.status())
    }

    /// Counters of `node`'s replica of `region`.
    pub fn peer_counters(&self, node: u64, region: u64) -> Option<crate::peer::PeerCounters> {
        Some(self.nodes.get(&node)?.replicas.peer(region)?.counters())
    }

    /// The session table of `node`'s replica of `region`.
    pub fn sessions(&self, node: u64, region: u64) -> Option<crate::session::SessionTable> {
        Some(
            self.nodes
                .get(&node)?
                .replicas
                .peer(region)?
                .sessions()
                .clone(),
        )
    }

    /// The node whose replica of `region` leads with the highest term.
    pub fn leader(&self, region: u64) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&n, node)| {
                let p = node.replicas.peer(region)?;
                p.is_leader().then(|| (p.status().term, n))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// Every node whose replica of `region` believes it leads (a deposed
    /// leader that has not heard of its successor included).
    pub fn leaders(&self, region: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.replicas.peer(region).is_some_and(|p| p.is_leader()))
            .map(|(&n, _)| n)
            .collect()
    }

    /// Advances time by one tick: deliver due messages, tick every replica,
    /// then run rounds until the cluster is quiet.
    pub fn tick(&mut self) -> Result<()> {
        self.now_ms += self.cfg.tick_interval_ms;
        let now = self.now_ms;
        let mut replies = Vec::new();
        let wall = self.wall_ms();
        for node in self.nodes.values_mut() {
            node.replicas.tick(now, &mut replies);
            node.replicas.sweep_expired(wall)?;
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
                if let Some(node) = self.nodes.get_mut(&env.to_node) {
                    node.replicas.step(env, &mut replies)?;
                }
            }
            self.collect_replies(replies);
            for (env, delivered) in self.net.take_snapshot_reports() {
                if let Some(node) = self.nodes.get_mut(&env.from_node) {
                    node.replicas.report_delivery(&env, delivered);
                }
            }
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                moved |= self.round(id)?;
            }
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One shard-style round on `node`; true if it produced anything.
    fn round(&mut self, node: u64) -> Result<bool> {
        let wall = self.wall_ms();
        let now = self.now_ms;
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let mut round = Round::default();
        n.replicas.collect(&mut round)?;
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
        for new in n.replicas.open_splits(&mut replies)? {
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
        // This round's log batch is written below: a replica in it waits.
        n.replicas
            .destroy_removed(&mut replies, |r| persist.iter().any(|(x, _)| *x == r))?;
        if crash == Some(CrashPoint::AfterApplyWrite) {
            self.crash_plan = None;
            self.crash(node);
            return Ok(true);
        }
        let mut outbox: Vec<RaftEnvelope> = messages;
        if !log.is_empty() {
            db::write(&n.db, log.inner, log.must_sync)?;
        }
        n.replicas.on_persisted(persist, &mut outbox);
        n.replicas.serve_reads(wall, &mut replies)?;
        for env in outbox {
            self.net.send(env, now, &mut self.rng);
        }
        self.collect_replies(replies);
        Ok(produced)
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
        let wall = self.wall_ms();
        let mut replies = Vec::new();
        match self.nodes.get_mut(&node) {
            Some(n) => n
                .replicas
                .propose(region, id, request, session, wall, &mut replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::Timeout),
            }),
        }
        self.collect_replies(replies);
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
        let mut replies = Vec::new();
        match self.nodes.get_mut(&node) {
            Some(n) => n.replicas.propose_admin(region, id, cmd, &mut replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::Timeout),
            }),
        }
        self.collect_replies(replies);
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
        let mut replies = Vec::new();
        if let Some(n) = self.nodes.get_mut(&node) {
            n.replicas.propose_change(region, id, change, &mut replies);
        }
        self.collect_replies(replies);
        id
    }

    /// Takes `node`'s replica of `region` out and opens it again from the
    /// database, as a move to another shard of the node does (a leader takes
    /// the lead back at once). False if the node has no such replica.
    pub fn reopen(&mut self, node: u64, region: u64) -> Result<bool> {
        let mut replies = Vec::new();
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(false);
        };
        let led = n.replicas.peer(region).is_some_and(|p| p.is_leader());
        if n.replicas.take(region, &mut replies).is_none() {
            return Ok(false);
        }
        n.replicas.open_region(region, led, &mut replies)?;
        self.collect_replies(replies);
        Ok(true)
    }

    /// True when `node` holds a replica of `region` (initialized or not).
    pub fn has_replica(&self, node: u64, region: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.replicas.peer(region).is_some())
    }

    /// Submits a write to `node`'s replica of `region`, whatever region the
    /// key belongs to (to test routing checks); returns the request id.
    pub fn propose_in(&mut self, node: u64, region: u64, request: WriteRequest) -> u64 {
        let id = self.new_id();
        let wall = self.wall_ms();
        let mut replies = Vec::new();
        if let Some(n) = self.nodes.get_mut(&node) {
            n.replicas
                .propose(region, id, request, None, wall, &mut replies);
        }
        self.collect_replies(replies);
        id
    }

    /// Submits a read of `key` to `node`'s replica of `region`, whatever
    /// region the key belongs to; returns the request id.
    pub fn read_in(&mut self, node: u64, region: u64, key: &[u8], consistency: Consistency) -> u64 {
        let id = self.new_id();
        let mut replies = Vec::new();
        if let Some(n) = self.nodes.get_mut(&node) {
            n.replicas.read(
                region,
                id,
                Bytes::copy_from_slice(key),
                consistency,
                &mut replies,
            );
        }
        self.collect_replies(replies);
        id
    }

    /// The region metadata `node`'s replica of `region` has applied.
    pub fn region_meta(&self, node: u64, region: u64) -> Option<Region> {
        Some(
            self.nodes
                .get(&node)?
                .replicas
                .peer(region)?
                .region()
                .clone(),
        )
    }

    /// Submits a read of `key` to `node`; returns the request id.
    pub fn read(&mut self, node: u64, key: &[u8], consistency: Consistency) -> u64 {
        let id = self.new_id();
        let region = self.region_of(key);
        let mut replies = Vec::new();
        match self.nodes.get_mut(&node) {
            Some(n) => n.replicas.read(
                region,
                id,
                Bytes::copy_from_slice(key),
                consistency,
                &mut replies,
            ),
            None => replies.push(Reply {
                id,
                result: Err(Error::Timeout),
            }),
        }
        self.collect_replies(replies);
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
        let peer = n.replicas.peer(region).expect("replica exists");
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
