//! All the region replicas one owner drives together (a node in the simulator,
//! a shard in the server), and the per-round batching of their output
//! (STYLE rule 2: begin → handle each region → end, one batch per round).
//!
//! # Layout
//! - this file: the replicas of one owner, opening them, accessors, ticks,
//!   expiry sweeps and totals;
//! - `drive`: a round's work over them (messages, proposals, reads, readies
//!   collected, persisted, served);
//! - `lifecycle`: bootstrap, splits opened, replicas handed between owners,
//!   removed replicas destroyed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::Message;

use crate::apply::ApplyBatch;
use crate::cache::ReadCache;
use crate::command::{SessionTag, WriteRequest};
use crate::config::Config;
use crate::db::{Db, LogBatch};
use crate::directory::{Directory, Span};
use crate::error::{Error, Result};
use crate::hibernate::{Control, Liveness, Sleep};
use crate::peer::{list_regions, load_region_state, Peer, PendingPersist, ReadyOutput, Reply};
use crate::read::Consistency;
use crate::region::{Epoch, Region};
use crate::storage::RegionStorage;

mod drive;
mod lifecycle;

pub use lifecycle::{bootstrap_regions, destroy_replica, destroy_stale_replicas};

/// Sums over the replicas of one owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaTotals {
    /// Replicas.
    pub regions: u64,
    /// Replicas that lead.
    pub leaders: u64,
    /// Replicas asleep (see [`crate::hibernate`]).
    pub asleep: u64,
    /// Sum of commit index - applied index.
    pub apply_lag: u64,
    /// Entries held in the raft logs.
    pub log_entries: u64,
    /// Reads waiting for a read index.
    pub reads_pending: u64,
    /// Proposals waiting for apply.
    pub proposals_pending: u64,
    /// Summed counters of every replica (monotonic while replicas stay).
    pub counters: crate::peer::PeerCounters,
}

/// A raft message addressed to a region replica on another node.
#[derive(Clone, Debug)]
pub struct RaftEnvelope {
    /// Region the message belongs to.
    pub region_id: u64,
    /// Node that sent it.
    pub from_node: u64,
    /// Node it goes to.
    pub to_node: u64,
    /// The raft message.
    pub message: Message,
    /// Not 0: not a raft message but a notice that the region, as of this
    /// `conf_ver`, no longer has replica `message.to` (see
    /// [`Replicas::step`]).
    pub removed_at: u64,
    /// The region's epoch at the sender: a replica that has not applied a
    /// membership change yet still listens to a sender that has.
    pub epoch: Epoch,
    /// A hibernation notice or a beat instead of a raft message (see
    /// [`crate::hibernate`]).
    pub control: Control,
}

/// Output of one round over every replica.
#[derive(Default)]
pub struct Round {
    /// Raft log writes; must be durable before `persist` is confirmed.
    pub log: LogBatch,
    /// Applied data; write it (no sync needed) before sending `replies`.
    pub apply: ApplyBatch,
    /// Messages to send now.
    pub messages: Vec<RaftEnvelope>,
    /// Answers, to send once `apply` is written.
    pub replies: Vec<Reply>,
    /// Readies to confirm with [`Replicas::on_persisted`] once `log` is durable.
    pub persist: Vec<(u64, PendingPersist)>,
}

impl Round {
    /// True when the round produced nothing at all.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.apply.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.persist.is_empty()
    }
}

/// The region replicas of one owner.
pub struct Replicas {
    node_id: u64,
    /// This owner's number among the node's owners (its shard).
    owner: usize,
    /// The node's directory of replicas, shared by every owner.
    directory: Directory,
    peers: BTreeMap<u64, Peer>,
    cache: ReadCache,
    cfg: Arc<Config>,
    db: Db,
    seed: u64,
    logger: slog::Logger,
    /// Removal notices, sleep notices and beats to send with the next round.
    notices: Vec<RaftEnvelope>,
    /// Stored replicas to open here (and whether the replica led where it
    /// came from), each once the replica it replaces has no log write in
    /// flight. Messages to them wait (are dropped) meanwhile.
    opening: Vec<(u64, bool)>,
    /// A replica was opened since the last [`Replicas::take_layout_changed`].
    opened: bool,
    /// When the node's other owners were last heard (beats), shared.
    liveness: Liveness,
    /// Drawn when these replicas were opened: beats and sleep notices say
    /// which life of this owner sent them.
    incarnation: u64,
    /// The owner's monotonic clock as of the last round, ms.
    now_ms: u64,
    /// Next beat to the nodes of sleeping leaders' followers, ms.
    next_beat_ms: u64,
}

/// Where an owner is and what it shares with the other owners of its node.
#[derive(Clone)]
pub struct Owner {
    /// Node id.
    pub node_id: u64,
    /// This owner's number among the node's owners (its shard).
    pub index: usize,
    /// The node's directory of replicas.
    pub directory: Directory,
    /// The node's table of beats heard, shared by its owners.
    pub liveness: Liveness,
}

/// When a sleeping follower last heard of its leader: the leader's notice,
/// or a later beat of the leader's owner in the same incarnation.
fn last_contact(liveness: &Liveness, p: &Peer) -> u64 {
    match p.sleep_state() {
        Sleep::Follower {
            leader_node,
            leader_shard,
            incarnation,
            since_ms,
            ..
        } => liveness
            .last_heard(leader_node, leader_shard, incarnation)
            .unwrap_or(0)
            .max(since_ms),
        _ => 0,
    }
}

/// A region split off here that another owner of the node opens: it holds
/// the region's replica already (created by the new region's messages
/// before the split was applied here).
#[derive(Clone, Debug)]
pub struct SplitElsewhere {
    /// The new region.
    pub region: Region,
    /// The owner to open it.
    pub owner: usize,
    /// Whether the parent's replica here leads (the new one should campaign).
    pub led: bool,
}

impl Replicas {
    /// Opens every replica stored in `db` for which `owns(region)` holds, as
    /// owner `owner.index` of node `owner.node_id`.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        owner: Owner,
        seed: u64,
        logger: &slog::Logger,
        owns: impl Fn(&Region) -> bool,
    ) -> Result<Replicas> {
        let node_id = owner.node_id;
        let mut peers = BTreeMap::new();
        for region in list_regions(&db)? {
            if !owns(&region) || region.peer_on_node(node_id).is_none() {
                continue;
            }
            if let Err(c) = owner.directory.open(&region, owner.index) {
                return Err(Error::Corruption(format!(
                    "region {} opened by owners {} and {} of node {node_id}",
                    region.id, c.owner, owner.index
                )));
            }
            let peer = Peer::open(cfg.clone(), db.clone(), node_id, region.id, seed, logger)?;
            peers.insert(region.id, peer);
        }
        Ok(Replicas {
            node_id,
            owner: owner.index,
            directory: owner.directory,
            peers,
            cache: ReadCache::new(cfg.read_cache_bytes),
            cfg,
            db,
            seed,
            logger: logger.clone(),
            notices: Vec::new(),
            opening: Vec::new(),
            opened: false,
            liveness: owner.liveness,
            incarnation: crate::hibernate::new_incarnation(),
            now_ms: 0,
            next_beat_ms: 0,
        })
    }

    /// Node these replicas live on.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The replica of `region_id`.
    pub fn peer(&self, region_id: u64) -> Option<&Peer> {
        self.peers.get(&region_id)
    }

    /// The replica of `region_id`, mutable.
    pub fn peer_mut(&mut self, region_id: u64) -> Option<&mut Peer> {
        self.peers.get_mut(&region_id)
    }

    /// Every replica.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Moves the owner's clock (monotonic ms) to `now_ms`, at the start of
    /// a round.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Ticks every awake replica. A leader that found nothing to do long
    /// enough falls asleep and tells its region's other replicas; sleeping
    /// leaders' followers get one beat per node; a sleeping follower whose
    /// leader's owner fell silent wakes (see [`crate::hibernate`]).
    pub fn tick(&mut self, now_ms: u64, replies: &mut Vec<Reply>) {
        self.set_now(now_ms);
        let now_ms = self.now_ms;
        let silence = self.cfg.beat_silence_ms();
        let control = Control::Asleep {
            shard: self.owner as u32,
            incarnation: self.incarnation,
        };
        let mut beat_to = Vec::new();
        for p in self.peers.values_mut() {
            match p.sleep_state() {
                Sleep::Awake { .. } => {
                    p.tick(now_ms, replies);
                    if p.consider_sleep() {
                        for (to_node, message) in p.sleep_notices() {
                            self.notices.push(RaftEnvelope {
                                region_id: p.region_id(),
                                from_node: self.node_id,
                                to_node,
                                message,
                                removed_at: 0,
                                epoch: p.region().epoch,
                                control,
                            });
                        }
                    }
                }
                Sleep::Leader if p.timer_due(now_ms) => {
                    p.wake(now_ms, now_ms, replies);
                    p.tick(now_ms, replies);
                }
                Sleep::Leader => p.follower_nodes(&mut beat_to),
                Sleep::Follower { until_ms, .. } => {
                    let last = last_contact(&self.liveness, p);
                    if now_ms.saturating_sub(last) >= silence || now_ms >= until_ms {
                        p.wake(now_ms, last, replies);
                    }
                }
            }
        }
        if beat_to.is_empty() || now_ms < self.next_beat_ms {
            return;
        }
        self.next_beat_ms = now_ms + self.cfg.beat_interval();
        beat_to.sort_unstable();
        beat_to.dedup();
        for to_node in beat_to {
            self.notices.push(RaftEnvelope {
                region_id: 0,
                from_node: self.node_id,
                to_node,
                message: Message::default(),
                removed_at: 0,
                epoch: Epoch::default(),
                control: Control::Beat {
                    shard: self.owner as u32,
                    incarnation: self.incarnation,
                },
            });
        }
    }

    /// Replicas of regions for which `preferred(region)` is false wait
    /// `ticks` ticks before their election clock starts (until they learn
    /// of a leader): a new cluster's first leaders are then the preferred
    /// ones.
    pub fn hold_first_campaign(&mut self, ticks: u64, preferred: impl Fn(&Region) -> bool) {
        for p in self.peers.values_mut() {
            if !preferred(p.region()) {
                p.hold_first_campaign(ticks);
            }
        }
    }

    /// True when every replica sleeps (the owner may tick less often, but
    /// at least every beat interval).
    pub fn all_asleep(&self) -> bool {
        self.peers.values().all(|p| p.is_asleep()) && self.opening.is_empty()
    }

    /// Takes the beats among `envs` into the node's liveness table (before
    /// a round's tick, so a beat that came with the tick counts).
    pub fn take_beats(&mut self, envs: &[RaftEnvelope]) {
        for env in envs {
            if let Control::Beat { shard, incarnation } = env.control {
                self.liveness
                    .heard(env.from_node, shard, incarnation, self.now_ms);
            }
        }
    }

    /// Wakes `region_id`'s replica if it sleeps.
    fn wake_if_asleep(&mut self, region_id: u64, replies: &mut Vec<Reply>) {
        let now_ms = self.now_ms;
        if let Some(p) = self.peers.get_mut(&region_id) {
            if p.is_asleep() {
                let last = last_contact(&self.liveness, p);
                p.wake(now_ms, last, replies);
            }
        }
    }

    /// Runs the expiry sweep of every replica this node leads (each at its
    /// own pace, see [`Peer::sweep_expired`]); returns the keys proposed.
    pub fn sweep_expired(&mut self, wall_ms: u64) -> Result<usize> {
        let mut n = 0;
        for p in self.peers.values_mut() {
            n += p.sweep_expired(wall_ms)?;
        }
        Ok(n)
    }

    /// Totals over every replica, for metrics.
    pub fn totals(&self) -> ReplicaTotals {
        let mut t = ReplicaTotals::default();
        for p in self.peers.values() {
            let s = p.status();
            t.regions += 1;
            if p.is_leader() {
                t.leaders += 1;
            }
            t.apply_lag += s.commit_index.saturating_sub(s.applied_index);
            t.log_entries += (s.last_index + 1).saturating_sub(s.first_index);
            t.reads_pending += p.reads_pending() as u64;
            t.proposals_pending += p.proposals_pending() as u64;
            let c = p.counters();
            t.counters.proposals += c.proposals;
            t.counters.campaigns += c.campaigns;
            t.counters.became_leader += c.became_leader;
            t.counters.leader_changes += c.leader_changes;
            t.counters.read_index_rounds += c.read_index_rounds;
            t.counters.compactions += c.compactions;
            t.counters.snapshots_sent += c.snapshots_sent;
            t.counters.snapshots_applied += c.snapshots_applied;
            t.counters.entries_applied += c.entries_applied;
            t.counters.expired_keys += c.expired_keys;
            t.counters.expire_proposals += c.expire_proposals;
            t.counters.digest_checks += c.digest_checks;
            t.counters.digest_mismatches += c.digest_mismatches;
            t.counters.hibernations += c.hibernations;
            t.counters.wakes += c.wakes;
            t.asleep += p.is_asleep() as u64;
        }
        t
    }

    /// The read cache's counters and size: (hits, misses, entries, bytes).
    pub fn cache_stats(&self) -> (u64, u64, usize, usize) {
        let s = self.cache.stats;
        (s.hits, s.misses, self.cache.len(), self.cache.bytes())
    }

    /// Drops every replica (the owner stopped).
    pub fn close(&mut self) {
        self.peers.clear();
    }

    /// True if any replica has output waiting.
    pub fn has_ready(&self) -> bool {
        self.peers.values().any(|p| p.has_ready())
    }
}
