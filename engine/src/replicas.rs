//! All the region replicas one owner drives together (a node in the simulator,
//! a shard in the server), and the per-round batching of their output
//! (STYLE rule 2: begin → handle each region → end, one batch per round).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::Message;

use crate::apply::ApplyBatch;
use crate::cache::ReadCache;
use crate::command::{SessionTag, WriteRequest};
use crate::config::Config;
use crate::db::{Db, LogBatch};
use crate::error::{Error, Result};
use crate::peer::{list_regions, Peer, PendingPersist, ReadyOutput, Reply};
use crate::read::Consistency;
use crate::region::Region;
use crate::storage::RegionStorage;

/// Sums over the replicas of one owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaTotals {
    /// Replicas.
    pub regions: u64,
    /// Replicas that lead.
    pub leaders: u64,
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
    peers: BTreeMap<u64, Peer>,
    cache: ReadCache,
    cfg: Arc<Config>,
    db: Db,
    seed: u64,
    logger: slog::Logger,
}

/// Writes the initial state of every region in `regions` that has a replica
/// on `node_id` (a new cluster's bootstrap), synced.
pub fn bootstrap_regions(db: &Db, node_id: u64, regions: &[Region]) -> Result<()> {
    let mut batch = LogBatch::default();
    for r in regions.iter().filter(|r| r.peer_on_node(node_id).is_some()) {
        RegionStorage::bootstrap(r, db, &mut batch)?;
    }
    crate::db::write(db, batch.inner, true)
}

fn envelope(node_id: u64, peer: &Peer, message: Message) -> Option<RaftEnvelope> {
    let to_node = peer.region().peer(message.to)?.node_id;
    Some(RaftEnvelope {
        region_id: peer.region_id(),
        from_node: node_id,
        to_node,
        message,
    })
}

impl Replicas {
    /// Opens every replica stored in `db` for which `owns(region)` holds.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        seed: u64,
        logger: &slog::Logger,
        owns: impl Fn(&Region) -> bool,
    ) -> Result<Replicas> {
        let mut peers = BTreeMap::new();
        for region in list_regions(&db)? {
            if !owns(&region) || region.peer_on_node(node_id).is_none() {
                continue;
            }
            let peer = Peer::open(cfg.clone(), db.clone(), node_id, region.id, seed, logger)?;
            peers.insert(region.id, peer);
        }
        Ok(Replicas {
            node_id,
            peers,
            cache: ReadCache::new(cfg.read_cache_bytes),
            cfg,
            db,
            seed,
            logger: logger.clone(),
        })
    }

    /// Opens the replicas of regions split off this round; call once the
    /// round's apply batch is written. A new region whose parent's replica
    /// here leads campaigns at once, so it has a leader without waiting for
    /// an election timeout. Returns the new regions.
    pub fn open_splits(&mut self, replies: &mut Vec<Reply>) -> Result<Vec<Region>> {
        let mut opened = Vec::new();
        let parents: Vec<u64> = self.peers.keys().copied().collect();
        for parent in parents {
            let (splits, leads) = {
                let p = self.peers.get_mut(&parent).expect("listed");
                (p.take_splits(), p.is_leader())
            };
            for region in splits {
                let mut peer = Peer::open(
                    self.cfg.clone(),
                    self.db.clone(),
                    self.node_id,
                    region.id,
                    self.seed,
                    &self.logger,
                )?;
                if leads {
                    peer.campaign(replies)?;
                }
                self.peers.insert(region.id, peer);
                opened.push(region);
            }
        }
        Ok(opened)
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

    /// Ticks every replica.
    pub fn tick(&mut self, now_ms: u64, replies: &mut Vec<Reply>) {
        for p in self.peers.values_mut() {
            p.tick(now_ms, replies);
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

    /// Delivers a raft message to its replica. Messages for regions not here
    /// are dropped (the sender will retry or be told by membership changes).
    pub fn step(&mut self, env: RaftEnvelope, replies: &mut Vec<Reply>) -> Result<()> {
        match self.peers.get_mut(&env.region_id) {
            Some(p) => p.step(env.message, replies),
            None => Ok(()),
        }
    }

    /// Reports the fate of a message this node sent: a snapshot's arrival or
    /// loss, and unreachable peers.
    pub fn report_delivery(&mut self, env: &RaftEnvelope, delivered: bool) {
        let Some(p) = self.peers.get_mut(&env.region_id) else {
            return;
        };
        if env.message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            p.report_snapshot(env.message.to, delivered);
        }
        if !delivered {
            p.report_unreachable(env.message.to);
        }
    }

    /// Proposes a write to `region_id`.
    pub fn propose(
        &mut self,
        region_id: u64,
        id: u64,
        request: WriteRequest,
        session: Option<SessionTag>,
        wall_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.propose(id, request, session, wall_ms, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Proposes an admin command on `region_id`.
    pub fn propose_admin(
        &mut self,
        region_id: u64,
        id: u64,
        cmd: crate::admin::AdminCommand,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.propose_admin(id, cmd, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Queues a read on `region_id`.
    pub fn read(
        &mut self,
        region_id: u64,
        id: u64,
        key: Bytes,
        consistency: Consistency,
        replies: &mut Vec<Reply>,
    ) {
        match self.peers.get_mut(&region_id) {
            Some(p) => p.read(id, key, consistency, replies),
            None => replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(region_id)),
            }),
        }
    }

    /// Collects the output of every replica into one round.
    pub fn collect(&mut self, round: &mut Round) -> Result<()> {
        let mut out = ReadyOutput::default();
        for (region_id, p) in self.peers.iter_mut() {
            let pending =
                p.handle_ready(&mut round.log, &mut round.apply, &mut self.cache, &mut out)?;
            if let Some(pending) = pending {
                round.persist.push((*region_id, pending));
            }
            round.replies.append(&mut out.replies);
            for m in out.messages.drain(..) {
                round.messages.extend(envelope(self.node_id, p, m));
            }
        }
        Ok(())
    }

    /// Confirms that a round's log batch is durable; returns the messages that
    /// were waiting for it.
    pub fn on_persisted(
        &mut self,
        persist: Vec<(u64, PendingPersist)>,
        messages: &mut Vec<RaftEnvelope>,
    ) {
        for (region_id, pending) in persist {
            let Some(p) = self.peers.get_mut(&region_id) else {
                continue;
            };
            p.on_persisted(pending.number);
            for m in pending.messages {
                messages.extend(envelope(self.node_id, p, m));
            }
        }
    }

    /// Serves every read whose index is applied.
    pub fn serve_reads(&mut self, wall_ms: u64, replies: &mut Vec<Reply>) -> Result<()> {
        for p in self.peers.values_mut() {
            p.serve_reads(wall_ms, &mut self.cache, replies)?;
        }
        Ok(())
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
