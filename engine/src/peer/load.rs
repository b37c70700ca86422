//! Opening a replica: its stored state (region, sessions, splits), the raft
//! configuration, and creating one for a region it has no data of.

use super::*;

pub(super) fn raft_config(cfg: &Config, peer_id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id: peer_id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        min_election_tick: cfg.election_tick,
        max_election_tick: cfg.election_tick_max,
        applied,
        max_size_per_msg: cfg.msg_bytes_max,
        max_inflight_msgs: cfg.inflight_msgs_max,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        // raft-rs 0.7 may merge fresh entries into a pending empty append
        // after a probe reset, producing an append whose entries do not follow
        // its index; keep every append message as raft built it.
        batch_append: false,
        max_uncommitted_size: cfg.uncommitted_bytes_max,
        max_committed_size_per_ready: cfg.committed_bytes_per_ready_max,
        ..Default::default()
    }
}

/// Loads the local state (metadata) of `region_id`, if this node has it.
pub fn load_region_state(db: &Db, region_id: u64) -> Result<Option<RegionLocalState>> {
    match db.get_cf(cf(db, CF_META), keys::region_state_key(region_id))? {
        Some(b) => Ok(Some(RegionLocalState::decode(&b)?)),
        None => Ok(None),
    }
}

/// The session table of `region_id` as stored.
pub fn load_sessions(db: &Db, region_id: u64) -> Result<SessionTable> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::session_key(region_id, u64::MAX).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_META), opts);
    it.seek(keys::session_key(region_id, 0));
    let mut clients = std::collections::BTreeMap::new();
    while it.valid() {
        if let Some(client) = keys::session_client(region_id, it.key().unwrap()) {
            clients.insert(client, ClientSession::decode(it.value().unwrap())?);
        }
        it.next();
    }
    it.status()?;
    // The upper bound is exclusive: the largest client id is read directly.
    if let Some(v) = db.get_cf(cf(db, CF_META), keys::session_key(region_id, u64::MAX))? {
        clients.insert(u64::MAX, ClientSession::decode(&v)?);
    }
    Ok(SessionTable::from_clients(clients))
}

/// Loads the split records of `region_id`, in epoch order.
pub(super) fn load_splits(db: &Db, region_id: u64) -> Result<Vec<SplitRecord>> {
    let meta = cf(db, CF_META);
    let mut it = db.raw_iterator_cf(meta);
    it.seek(keys::split_key(region_id, 0));
    let mut out = Vec::new();
    while it.valid() {
        let Some(version) = keys::split_version(region_id, it.key().unwrap()) else {
            break;
        };
        let v = it.value().unwrap();
        let num = |b: &[u8]| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes);
        let record = match v.len() {
            8 => num(v).map(|index| (version, index, None)),
            16 => num(&v[..8])
                .zip(num(&v[8..]))
                .map(|(i, h)| (version, i, Some(h))),
            _ => None,
        };
        let record = record
            .ok_or_else(|| Error::Corruption(format!("split record of region {region_id}")))?;
        out.push(record);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Every region replica stored on this node (tombstones excluded).
pub fn list_regions(db: &Db) -> Result<Vec<Region>> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(keys::region_state_end().to_vec());
    let mut it = db.raw_iterator_cf_opt(cf(db, CF_META), opts);
    it.seek(keys::region_state_key(0));
    let mut out = Vec::new();
    while it.valid() {
        let s = RegionLocalState::decode(it.value().unwrap())?;
        if s.state == PeerState::Normal {
            out.push(s.region);
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

impl Peer {
    /// Opens the replica of `region_id` stored on node `node_id`.
    /// `seed` makes its election timeouts reproducible.
    pub fn open(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        region_id: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let local = load_region_state(&db, region_id)?.ok_or(Error::RegionNotFound(region_id))?;
        let region = local.region;
        let peer_id = region
            .peer_on_node(node_id)
            .ok_or_else(|| {
                Error::Corruption(format!(
                    "region {region_id} has no replica on node {node_id}"
                ))
            })?
            .id;
        Peer::start(cfg, db, node_id, region, peer_id, seed, logger)
    }

    /// A replica `peer_id` of `region_id` that a membership change or a
    /// split added to this node: empty and owning no range until the leader
    /// sends it a snapshot (or this node applies the split). `known` is the
    /// one other replica it knows of (the sender of the message that
    /// created it). Nothing is stored for it before that snapshot but its
    /// raft hard state (a vote it gives must survive a restart).
    pub fn create(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        (region_id, peer_id): (u64, u64),
        known: crate::region::PeerMeta,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let region = Region {
            id: region_id,
            start_hash: 0,
            end_hash: 0,
            epoch: crate::region::Epoch::default(),
            peers: vec![
                crate::region::PeerMeta {
                    id: peer_id,
                    node_id,
                    role: crate::region::PeerRole::Learner,
                },
                known,
            ],
        };
        let mut p = Peer::start(cfg, db, node_id, region, peer_id, seed, logger)?;
        p.initialized = false;
        Ok(p)
    }

    pub(super) fn start(
        cfg: Arc<Config>,
        db: Db,
        node_id: u64,
        region: Region,
        peer_id: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Peer> {
        let region_id = region.id;
        let sessions = load_sessions(&db, region_id)?;
        let storage = RegionStorage::open(db.clone(), region_id, cfg.entry_cache_entries)?;
        let applied = storage.applied_index();
        let history_floor = match watch::floor(&db, region_id)? {
            Some(f) => f,
            None => {
                // No history yet: it starts at what is applied now.
                let mut b = rocksdb::WriteBatch::default();
                watch::set_floor(&db, &mut b, region_id, applied);
                crate::db::write(&db, b, false)?;
                applied
            }
        };
        let stored_check = match db.get_cf(cf(&db, CF_META), keys::check_key(region_id))? {
            Some(b) => decode_check(&b)?,
            None => (None, None),
        };
        let rc = raft_config(&cfg, peer_id, applied);
        rc.validate()?;
        let logger = logger.new(slog::o!("region" => region_id, "peer" => peer_id));
        let mut raw = RawNode::new(&rc, storage, &logger)?;
        let mut rng = SmallRng::seed_from_u64(seed ^ region_id.rotate_left(32) ^ node_id);
        let timeout = rng.gen_range(cfg.election_tick..cfg.election_tick_max);
        raw.raft.set_randomized_election_timeout(timeout);
        let role_term = (raw.raft.state, raw.raft.term);
        Ok(Peer {
            cfg,
            node_id,
            peer_id,
            region,
            raw,
            proposals: VecDeque::new(),
            reads: ReadQueue::default(),
            // Contexts unique per replica: the leader keeps requests in
            // flight by context, and every follower asks the same leader.
            follower_reads: ReadQueue::with_ctx_base(
                FOLLOWER_CTX_BASE | ((peer_id & 0xf_ffff) << 40),
            ),
            stale_reads: Vec::new(),
            sweep: SweepCursor::default(),
            next_sweep_tick: 0,
            sweep_needed: true,
            ttl_since_pass_start: false,
            ttl_seen_in_pass: false,
            lease_until_ms: 0,
            lease_wanted: false,
            lease_blocked_term: 0,
            sleep: Default::default(),
            campaign_hold: 0,
            clock_proposed_ms: 0,
            rng,
            role_term,
            now_ms: 0,
            ticks: 0,
            applied_bytes_since_compact: 0,
            snapshot_persisting: None,
            sessions,
            counters: PeerCounters::default(),
            leader_seen: 0,
            history_floor,
            splits: Vec::new(),
            last_split_index: 0,
            split_log: load_splits(&db, region_id)?,
            initialized: true,
            layout_changed: false,
            removed: false,
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ready_taken: 0,
            ready_persisted: 0,
            learned: Vec::new(),
            range_applied: false,
            range_persisted: false,
            digest: stored_check.0,
            digest_to_verify: None,
            check: stored_check.1,
            next_check_ms: 0,
            logger,
        })
    }
}
