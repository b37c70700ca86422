//! Requests to the simulated cluster: proposals, admin commands, membership
//! changes, reads, and waiting for their replies.

use super::*;

impl SimCluster {
    /// Hands a request to the shard of `node` holding `region`: `Timeout`
    /// if the node is down and `down_answers`, `RegionNotFound` if it holds
    /// no replica.
    pub(super) fn submit(
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

    pub(super) fn new_id(&mut self) -> u64 {
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

    /// One page of a scan from `from_hash` (see [`crate::read::Scan`]),
    /// through whichever node leads the region holding that hash, following
    /// leader changes, for up to `max_ms`: the keys with their records, the
    /// next page's first hash, and the applied index the page was read at.
    #[allow(clippy::type_complexity)]
    pub fn scan_page(
        &mut self,
        from_hash: u64,
        limit: usize,
        keys_only: bool,
        max_ms: u64,
    ) -> Result<(Vec<(Bytes, ValueRecord)>, Option<u64>, u64)> {
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            let region = self
                .regions
                .iter()
                .find(|r| r.contains(from_hash))
                .map(|r| r.id)
                .expect("regions cover the hash space");
            let Some(leader) = self.leader(region) else {
                self.tick()?;
                continue;
            };
            let id = self.new_id();
            let now = self.now_ms;
            let scan = crate::read::Scan {
                from_hash,
                limit,
                keys_only,
                prefix: bytes::Bytes::new(),
            };
            self.submit((leader, region, id), true, |r, replies| {
                r.scan(region, id, scan, Consistency::Linearizable, now, replies)
            });
            match self.wait(id, end.saturating_sub(self.now_ms))? {
                Some(Reply {
                    result:
                        Ok(Response::Scanned {
                            items,
                            next_hash,
                            read_index,
                        }),
                    ..
                }) => return Ok((items, next_hash, read_index)),
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
