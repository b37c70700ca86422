//! Administration through the client: consistency checks, leader
//! transfers, splits, membership changes, shard moves, status documents.

use super::*;

impl Client {
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
        change: corekv_engine::membership::PeerChange,
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
