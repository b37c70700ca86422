//! The simulated cluster: nodes, clock, client helpers.
//!
//! Each node runs one [`Replicas`] per shard over one RocksDB and one
//! [`Directory`], as a server node does: messages for a region go to the
//! inbox of the shard holding it (or, for a region the node does not hold,
//! of the shard a new replica of it is created on). Each shard runs the
//! engine's round ([`ShardRound`]), the very code a server shard runs, with
//! the simulator as its host; its log batches are numbered by the round's
//! pipeline, as on a server; a batch becomes durable
//! `log_delay_ms` (plus up to `log_jitter_ms`) after its round, in order
//! within its shard (at once by default), and only then are the readies it
//! carries released, with the messages raft held back. With jitter, one
//! shard's batches may become durable before an earlier batch of another
//! shard: stricter than the server, whose single log writer makes batches
//! durable in the order they were handed to it, so code that is right here
//! does not rely on that order.
//!
//! # Layout
//! - this file: options, nodes, start, crash, pause, restart, accessors;
//! - `rounds`: ticks, rounds, delayed log writes, running until quiet;
//! - `requests`: proposals, reads and their replies;
//! - `checks`: replica and raft-state checks, test hooks.

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
use crate::region::Region;
use crate::replicas::{bootstrap_regions, Owner, RaftEnvelope, Replicas, SplitElsewhere};
use crate::round::{Flow, RoundHost, RoundInbox, ShardRound};

mod checks;
mod requests;
mod rounds;

use crate::value::ValueRecord;
use rounds::skewed;

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
    /// Each shard's round (its log batches in flight).
    rounds: Vec<ShardRound>,
    /// What arrived for each shard since its last round.
    inboxes: Vec<RoundInbox>,
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
    /// Every request id answered so far (each is answered once).
    answered: std::collections::HashSet<u64>,
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
                Region::initial(i as u64 + 1, start_hash, end_hash, voters.iter().copied())
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
            answered: Default::default(),
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
        let liveness = crate::hibernate::Liveness::default();
        let mut shards = Vec::new();
        for index in 0..self.shards {
            let owner = Owner {
                node_id: node,
                index,
                directory: directory.clone(),
                liveness: liveness.clone(),
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
                rounds: (0..self.shards).map(|_| ShardRound::default()).collect(),
                inboxes: (0..self.shards).map(|_| RoundInbox::default()).collect(),
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
