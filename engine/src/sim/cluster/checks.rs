//! Checks of the simulated cluster's state that clients cannot see
//! (replica digests, convergence, durable raft state), and test hooks
//! (leader transfers, elections, writes behind raft's back).

use super::*;

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
