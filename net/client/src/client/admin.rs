//! Administration through the client: consistency checks, leader
//! transfers, splits, membership changes, shard moves, status documents,
//! region backups.

use super::*;

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

impl Client {
    /// Backs up region `region_id`: the region's data (values, versions,
    /// expiries), client sessions and metadata at one applied index, which
    /// holds every write acknowledged before this call (a linearizable
    /// read of the region on the leader's node comes first; the leader
    /// builds the backup after it). Fetched in chunks; `progress(bytes so
    /// far, total)` after each. Leader changes and splits make it start
    /// again (a split: with the region's new range).
    pub fn backup_region(
        &mut self,
        region_id: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<RegionBackup> {
        let mut last = String::from("not tried");
        let mut attempt = 0;
        while attempt < self.cfg.attempts_max {
            attempt += 1;
            let deadline = Instant::now() + self.cfg.request_timeout;
            let Some(i) = self.routes.position(region_id) else {
                self.refresh_routes(deadline)
                    .map_err(|last| ClientError::Unavailable {
                        attempts: attempt,
                        last,
                    })?;
                if self.routes.position(region_id).is_none() {
                    return Err(ClientError::Invalid {
                        code: ErrorCode::RegionNotFound,
                        message: format!("no region {region_id} in the routing table"),
                    });
                }
                continue;
            };
            self.learn_shard_ports(i, deadline);
            let Some((node, addr)) = self.target(i, attempt) else {
                last = "no replica address known".into();
                let _ = self.refresh_routes(deadline);
                self.backoff(attempt, deadline);
                continue;
            };
            match self.backup_from(i, &addr, &mut progress) {
                Ok(b) => return Ok(b),
                Err(Failed::Answer(e)) => {
                    last = format!("{addr}: {e}");
                    match self.routes.on_error(i, &e) {
                        Routing::Retry { hinted: true } => {}
                        Routing::Retry { hinted: false } | Routing::Backoff => {
                            self.backoff(attempt, deadline);
                        }
                        Routing::Reload => {
                            let _ = self.refresh_routes(deadline);
                        }
                        Routing::Other if e.code() == ErrorCode::Timeout => {
                            self.backoff(attempt, deadline);
                        }
                        // A backup dropped while it was fetched: again.
                        Routing::Other if e.code() == ErrorCode::InvalidRequest => {}
                        Routing::Other => return Err(wire_to_client(e)),
                    }
                }
                Err(Failed::Conn(e)) => {
                    last = e;
                    self.mark_down(node);
                    self.routes[i].leader_node = 0;
                    self.backoff(attempt, deadline);
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts: attempt,
            last,
        })
    }

    /// One try of [`Client::backup_region`] on the node at `addr`.
    fn backup_from(
        &mut self,
        i: usize,
        addr: &str,
        progress: &mut impl FnMut(u64, u64),
    ) -> std::result::Result<RegionBackup, Failed> {
        let region = self.routes[i].region.clone();
        let ask = |c: &mut Client, op: Op| {
            let deadline = Instant::now() + c.cfg.request_timeout;
            let req = Request {
                id: c.new_id(),
                region_id: region.id,
                epoch: region.epoch,
                op,
                session: None,
                system: c.cfg.system,
            };
            match c.call(addr, &[req], deadline) {
                Ok(mut rs) => rs.remove(0).0.result.map_err(Failed::Answer),
                Err(CallError::NotSent(e)) | Err(CallError::Lost(e)) => Err(Failed::Conn(e)),
            }
        };
        // Served by the leader once it applied everything committed when
        // the read began; the backup, built after it on the same node,
        // holds at least that.
        let barrier = Op::Scan {
            from_hash: region.start_hash,
            limit: 1,
            keys_only: true,
            consistency: Consistency::Linearizable,
            prefix: Bytes::new(),
        };
        ask(self, barrier)?;
        let mut bytes: Vec<u8> = Vec::new();
        let (mut backup_id, mut applied_index) = (0, 0);
        loop {
            let op = Op::Backup {
                backup_id,
                offset: bytes.len() as u64,
            };
            let chunk = match ask(self, op)? {
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
                    region_id: region.id,
                    applied_index,
                    bytes,
                });
            }
        }
    }

    /// Starts a consistency check of `region_id`: every replica computes
    /// the digest of its data at one raft entry and compares it with the
    /// leader's. Returns that entry's index once the leader applied it;
    /// each replica's verdict then shows in its node's status document
    /// (`regions[].check`, see `corekv ctl check`).
    pub fn check(&mut self, region_id: u64) -> Result<u64> {
        let (_, f) = self.execute_on(RouteBy::Region(region_id), Op::Check, true)?;
        Ok(f.version)
    }

    /// Makes the replica of `region_id` on `node_id` the region's preferred
    /// leader: the current leader hands leadership over once that replica is
    /// caught up, and later leaders hand it back there. Returns once the
    /// preference is committed (the move follows within about a second;
    /// watch `routes`). Replicated, so it outlives restarts and failovers.
    pub fn transfer_leader(&mut self, region_id: u64, node_id: u64) -> Result<u64> {
        let (_, f) = self.execute_on(
            RouteBy::Region(region_id),
            Op::TransferLeader { to_node: node_id },
            true,
        )?;
        Ok(f.version)
    }

    /// Splits region `region_id` at `split_hash` (`None`: the middle of its
    /// range). Returns the split's log index once every replica will apply
    /// it; the routing table is reloaded.
    pub fn split(&mut self, region_id: u64, split_hash: Option<u64>) -> Result<u64> {
        let epoch = |c: &Client| {
            c.routes
                .iter()
                .find(|r| r.region.id == region_id)
                .map_or(0, |r| r.region.epoch.version)
        };
        let before = epoch(self);
        let (_, f) = self.execute_on(
            RouteBy::Region(region_id),
            Op::Split {
                split_hash: split_hash.unwrap_or(0),
            },
            false,
        )?;
        // The node answering routes may apply the split a moment later.
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            self.refresh()?;
            if epoch(self) > before || Instant::now() > deadline {
                return Ok(f.version);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes region `region_id`'s replicas (served by its leader; a
    /// promotion waits, within the request timeout, for the learner to
    /// catch up). Returns the change's log index once it is applied there.
    pub fn change_peer(
        &mut self,
        region_id: u64,
        change: corekv_types::membership::PeerChange,
    ) -> Result<u64> {
        let (_, f) = self.execute_on(RouteBy::Region(region_id), Op::ChangePeer(change), false)?;
        Ok(f.version)
    }

    /// Asks the node at `addr` to move its replica of `region_id` to its
    /// shard `to_shard` (the move completes a moment later: see its status).
    pub fn move_shard_on(&mut self, addr: &str, region_id: u64, to_shard: u32) -> Result<()> {
        self.ask_node(addr, region_id, Op::MoveShard { to_shard })
    }

    /// Sends `op` about `region_id` to the node at `addr` itself (no
    /// routing, no retry).
    pub(super) fn ask_node(&mut self, addr: &str, region_id: u64, op: Op) -> Result<()> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let req = Request {
            id: self.new_id(),
            region_id,
            epoch: Default::default(),
            op,
            session: None,
            system: false,
        };
        match self.call(addr, &[req], deadline) {
            Ok(mut rs) => match rs.remove(0).0.result {
                Ok(_) => Ok(()),
                Err(e) => Err(wire_to_client(e)),
            },
            Err(CallError::NotSent(e)) | Err(CallError::Lost(e)) => Err(ClientError::Unavailable {
                attempts: 1,
                last: e,
            }),
        }
    }

    /// Marks this client's requests as the cluster's own (or not): only
    /// such requests may write the metadata keys.
    pub fn set_system(&mut self, system: bool) {
        self.cfg.system = system;
    }

    /// The status document of the node at `addr`.
    pub fn status_doc(&mut self, addr: &str) -> Result<crate::status::NodeStatus> {
        let text = self.status_of(addr)?;
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("status document of {addr}: {e}")))
    }

    /// The status document of the node at `addr`, as its JSON text.
    pub fn status_of(&mut self, addr: &str) -> Result<String> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let req = Request {
            id: self.new_id(),
            region_id: 0,
            epoch: Default::default(),
            op: Op::Status,
            session: None,
            system: false,
        };
        match self.call(addr, &[req], deadline) {
            Ok(mut rs) => match rs.remove(0).0.result {
                Ok(Outcome::Status(json)) => Ok(json),
                Ok(other) => Err(ClientError::Protocol(format!("status answered {other:?}"))),
                Err(e) => Err(wire_to_client(e)),
            },
            Err(CallError::NotSent(e)) | Err(CallError::Lost(e)) => Err(ClientError::Unavailable {
                attempts: 1,
                last: e,
            }),
        }
    }
}
