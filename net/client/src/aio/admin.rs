//! Administration through the client: consistency checks, leader
//! transfers, splits, membership changes, shard moves, status documents,
//! region backups.

use std::time::Duration;

use bytes::Bytes;
use corekv_types::Consistency;
use tokio::time::Instant;

use super::{AsyncClient, CallError, Picked};
use crate::client::{wire_to_client, ClientError, Result, RouteBy};
use crate::message::{Op, Outcome, Request, WireError};
use crate::wire::ErrorCode;

/// A backup of one region, as its leader built it (the payload format of
/// [`corekv_types::snapshot::SnapshotData`]).
#[derive(Clone, Debug)]
pub struct RegionBackup {
    /// The region.
    pub region_id: u64,
    /// The region's applied index the backup holds.
    pub applied_index: u64,
    /// The backup.
    pub bytes: Vec<u8>,
}

/// How one request of a backup failed.
enum Failed {
    /// An error answer.
    Answer(WireError),
    /// No answer.
    Conn(String),
}

impl AsyncClient {
    /// Backs up region `region_id`: the region's data (values, versions,
    /// expiries), client sessions and metadata at one applied index, which
    /// holds every write acknowledged before this call (a linearizable
    /// read of the region on the leader's node comes first; the leader
    /// builds the backup after it). Fetched in chunks; `progress(bytes so
    /// far, total)` after each. Leader changes and splits make it start
    /// again (a split: with the region's new range).
    pub async fn backup_region(
        &self,
        region_id: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<RegionBackup> {
        let cfg = &self.inner.cfg;
        let mut last = String::from("not tried");
        let mut attempt = 0;
        while attempt < cfg.attempts_max {
            attempt += 1;
            let deadline = Instant::now() + cfg.request_timeout;
            let generation = self
                .inner
                .generation
                .load(std::sync::atomic::Ordering::Acquire);
            let (region, node, addr) = match self.pick(RouteBy::Region(region_id), attempt) {
                Picked::At(region, node, addr) => (region, node, addr),
                Picked::NoRoute => {
                    self.reload_after(generation, deadline)
                        .await
                        .map_err(|last| ClientError::Unavailable {
                            attempts: attempt,
                            last,
                        })?;
                    if matches!(
                        self.pick(RouteBy::Region(region_id), attempt),
                        Picked::NoRoute
                    ) {
                        return Err(ClientError::Invalid {
                            code: ErrorCode::RegionNotFound,
                            message: format!("no region {region_id} in the routing table"),
                        });
                    }
                    continue;
                }
                Picked::NoReplica => {
                    last = "no replica address known".into();
                    let _ = self.reload_after(generation, deadline).await;
                    self.backoff(attempt, deadline).await;
                    continue;
                }
            };
            match self.backup_from(region, &addr, &mut progress).await {
                Ok(b) => return Ok(b),
                Err(Failed::Answer(e)) => {
                    last = format!("{addr}: {e}");
                    let routing = self.learn(region, &e);
                    if self.follow(routing, attempt, (deadline, generation)).await {
                        continue;
                    }
                    match e.code() {
                        ErrorCode::Timeout => self.backoff(attempt, deadline).await,
                        // A backup dropped while it was fetched: again.
                        ErrorCode::InvalidRequest => true,
                        _ => return Err(wire_to_client(e)),
                    };
                }
                Err(Failed::Conn(e)) => {
                    last = e;
                    self.mark_down(node);
                    self.forget_leader(region.0, region.1);
                    self.backoff(attempt, deadline).await;
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts: attempt,
            last,
        })
    }

    /// Sends `op` to region `(id, epoch)` at `addr`, once (marked as the
    /// cluster's own if `system`).
    async fn ask(
        &self,
        addr: &str,
        (region_id, epoch): super::Routed,
        op: Op,
        system: bool,
    ) -> std::result::Result<Outcome, Failed> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        let req = Request {
            id: self.new_id(),
            region_id,
            epoch,
            op,
            session: None,
            system,
        };
        match self.call(addr, req, deadline).await {
            Ok((resp, _)) => resp.result.map_err(Failed::Answer),
            Err(CallError::NotSent(e) | CallError::Lost(e) | CallError::TimedOut(e)) => {
                Err(Failed::Conn(e))
            }
        }
    }

    /// One try of [`AsyncClient::backup_region`] on the node at `addr`.
    async fn backup_from(
        &self,
        region: super::Routed,
        addr: &str,
        progress: &mut impl FnMut(u64, u64),
    ) -> std::result::Result<RegionBackup, Failed> {
        let start_hash = {
            let st = self.inner.state.lock().unwrap();
            st.routes
                .position(region.0)
                .map_or(0, |i| st.routes[i].region.start_hash)
        };
        // Served by the leader once it applied everything committed when
        // the read began; the backup, built after it on the same node,
        // holds at least that.
        let barrier = Op::Scan {
            from_hash: start_hash,
            limit: 1,
            keys_only: true,
            consistency: Consistency::Linearizable,
            prefix: Bytes::new(),
        };
        self.ask(addr, region, barrier, self.system()).await?;
        let mut bytes: Vec<u8> = Vec::new();
        let (mut backup_id, mut applied_index) = (0, 0);
        loop {
            let op = Op::Backup {
                backup_id,
                offset: bytes.len() as u64,
            };
            let chunk = match self.ask(addr, region, op, self.system()).await? {
                Outcome::BackupChunk(c) => c,
                other => {
                    return Err(Failed::Conn(format!("{addr}: backup answered {other:?}")));
                }
            };
            if backup_id == 0 {
                (backup_id, applied_index) = (chunk.backup_id, chunk.applied_index);
                bytes.reserve(usize::try_from(chunk.total).unwrap_or(0));
            }
            if chunk.offset != bytes.len() as u64
                || (chunk.data.is_empty() && chunk.total > chunk.offset)
            {
                return Err(Failed::Conn(format!(
                    "{addr}: backup chunk at {} (of {}), {} bytes, asked for {}",
                    chunk.offset,
                    chunk.total,
                    chunk.data.len(),
                    bytes.len()
                )));
            }
            bytes.extend_from_slice(&chunk.data);
            progress(bytes.len() as u64, chunk.total);
            if bytes.len() as u64 >= chunk.total {
                return Ok(RegionBackup {
                    region_id: region.0,
                    applied_index,
                    bytes,
                });
            }
        }
    }

    async fn on_region(&self, region_id: u64, op: Op, idempotent: bool) -> Result<u64> {
        let (_, f, _) = self
            .execute_by(RouteBy::Region(region_id), op, idempotent, None)
            .await?;
        Ok(f.version)
    }

    /// Starts a consistency check of `region_id`: every replica computes
    /// the digest of its data at one raft entry and compares it with the
    /// leader's. Returns that entry's index once the leader applied it;
    /// each replica's verdict then shows in its node's status document
    /// (`regions[].check`, see `corekv ctl check`).
    pub async fn check(&self, region_id: u64) -> Result<u64> {
        self.on_region(region_id, Op::Check, true).await
    }

    /// Makes the replica of `region_id` on `node_id` the region's preferred
    /// leader: the current leader hands leadership over once that replica is
    /// caught up, and later leaders hand it back there. Returns once the
    /// preference is committed (the move follows within about a second;
    /// watch `routes`). Replicated, so it outlives restarts and failovers.
    pub async fn transfer_leader(&self, region_id: u64, node_id: u64) -> Result<u64> {
        let op = Op::TransferLeader { to_node: node_id };
        self.on_region(region_id, op, true).await
    }

    /// Splits region `region_id` at `split_hash` (`None`: the middle of its
    /// range). Returns the split's log index once every replica will apply
    /// it; the routing table is reloaded. Never sent twice: a lost answer
    /// is [`ClientError::Unknown`].
    pub async fn split(&self, region_id: u64, split_hash: Option<u64>) -> Result<u64> {
        let epoch = |c: &Self| {
            c.routes()
                .iter()
                .find(|r| r.region.id == region_id)
                .map_or(0, |r| r.region.epoch.version)
        };
        let before = epoch(self);
        let op = Op::Split {
            split_hash: split_hash.unwrap_or(0),
        };
        let index = self.on_region(region_id, op, false).await?;
        // The node answering routes may apply the split a moment later.
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        loop {
            self.refresh().await?;
            if epoch(self) > before || Instant::now() > deadline {
                return Ok(index);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Changes region `region_id`'s replicas (served by its leader; a
    /// promotion waits, within the request timeout, for the learner to
    /// catch up). Returns the change's log index once it is applied there.
    pub async fn change_peer(
        &self,
        region_id: u64,
        change: corekv_types::membership::PeerChange,
    ) -> Result<u64> {
        self.on_region(region_id, Op::ChangePeer(change), false)
            .await
    }

    /// Asks the node at `addr` to move its replica of `region_id` to its
    /// shard `to_shard` (the move completes a moment later: see its status).
    pub async fn move_shard_on(&self, addr: &str, region_id: u64, to_shard: u32) -> Result<()> {
        self.ask_node(addr, region_id, Op::MoveShard { to_shard })
            .await
            .map(|_| ())
    }

    /// Sends `op` about `region_id` to the node at `addr` itself (no
    /// routing, no retry; not as the cluster's own: a node's own requests
    /// are for the metadata keys).
    async fn ask_node(&self, addr: &str, region_id: u64, op: Op) -> Result<Outcome> {
        let region = (region_id, Default::default());
        match self.ask(addr, region, op, false).await {
            Ok(o) => Ok(o),
            Err(Failed::Answer(e)) => Err(wire_to_client(e)),
            Err(Failed::Conn(last)) => Err(ClientError::Unavailable { attempts: 1, last }),
        }
    }

    /// Marks this client's requests (every clone's) as the cluster's own,
    /// or not: only such requests may write the metadata keys.
    pub fn set_system(&self, system: bool) {
        self.inner
            .system
            .store(system, std::sync::atomic::Ordering::Relaxed);
    }

    /// The status document of the node at `addr`.
    pub async fn status_doc(&self, addr: &str) -> Result<crate::status::NodeStatus> {
        let text = self.status_of(addr).await?;
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("status document of {addr}: {e}")))
    }

    /// The status document of the node at `addr`, as its JSON text.
    pub async fn status_of(&self, addr: &str) -> Result<String> {
        match self.ask_node(addr, 0, Op::Status).await? {
            Outcome::Status(json) => Ok(json),
            other => Err(ClientError::Protocol(format!("status answered {other:?}"))),
        }
    }
}
