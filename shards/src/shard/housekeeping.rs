//! Periodic work of a shard: metrics and the status board, fault rules,
//! greeting new nodes, splits by load or size, preferred leaders.

use super::*;

/// Orders a new region's peers so the first (its preferred leader) is on
/// the node other than `me` that leads the fewest regions now, so the two
/// halves of a split are led from different nodes.
pub(super) fn prefer_least_leading(
    peers: &mut [corekv_engine::PeerMeta],
    me: u64,
    router: &crate::bootstrap::Router,
) {
    let leads = |node: u64| {
        (0..router.len())
            .filter(|&i| router.leader(i) == node)
            .count()
    };
    let best = (0..peers.len())
        .filter(|&i| peers[i].node_id != me && peers[i].role == corekv_engine::PeerRole::Voter)
        .min_by_key(|&i| (leads(peers[i].node_id), i));
    if let Some(best) = best {
        peers.swap(0, best);
    }
}

impl Shard {
    /// Shard 0 opens a link to every other node at start, so that each
    /// learns this node's client address (and greets back: see
    /// `on_peer`) even before a raft message is due, as a node that joined
    /// and holds no replica yet needs to reach the meta region.
    pub(super) fn greet_nodes(&self) {
        if self.id != 0 {
            return;
        }
        let ids: Vec<u64> = self
            .node
            .peer_addrs
            .read()
            .map(|a| a.keys().copied().collect())
            .unwrap_or_default();
        if let Some(t) = self.transport.get() {
            for id in ids {
                t.greet(id);
            }
        }
    }

    pub(super) fn poll_faults(&self) {
        let mut file = self.fault_file.borrow_mut();
        let Some(f) = file.as_mut() else { return };
        match f.poll() {
            Some(Ok(rules)) => {
                if *self.faults.borrow() != rules {
                    tracing::warn!(shard = self.id, ?rules, "fault injection rules changed");
                }
                if rules.fail_log_write {
                    self.node.fail_log_write.store(true, Ordering::SeqCst);
                }
                *self.faults.borrow_mut() = rules;
            }
            Some(Err(e)) => tracing::error!(shard = self.id, "fault file ignored: {e}"),
            None => {}
        }
    }

    /// Copies the shard's figures into its metrics; logs snapshots and
    /// compactions since the last report.
    pub(super) fn report(&self, replicas: &Replicas) {
        let transport = self
            .transport
            .get()
            .map(|t| t.figures())
            .unwrap_or_default();
        let totals = replicas.totals();
        let before = self.last_counters.replace(totals.counters);
        for (what, now, was) in [
            (
                "snapshots sent",
                totals.counters.snapshots_sent,
                before.snapshots_sent,
            ),
            (
                "snapshots installed",
                totals.counters.snapshots_applied,
                before.snapshots_applied,
            ),
        ] {
            if now > was {
                tracing::info!(shard = self.id, count = now - was, "{what}");
            }
        }
        if totals.counters.compactions > before.compactions {
            tracing::debug!(
                shard = self.id,
                count = totals.counters.compactions - before.compactions,
                "raft logs compacted"
            );
        }
        let figures = ShardFigures {
            totals,
            cache: replicas.cache_stats(),
            transport,
            connections: self.conns.len(),
            pending: self.state.borrow().pending.len(),
            watches: self.watches.borrow().figures(),
            forwarded: self.node.forwarded[self.id].load(Ordering::Relaxed),
        };
        self.metrics.borrow_mut().report(&figures);
    }

    /// Publishes this shard's region rows for `Status` requests.
    pub(super) fn publish_status(&self, replicas: &Replicas) {
        let secs = self
            .rates_at
            .replace(Instant::now())
            .elapsed()
            .as_secs_f64()
            .max(1e-3);
        let ops = std::mem::take(&mut *self.region_ops.borrow_mut());
        let hot = self.hot_keys.borrow_mut().take(secs);
        let (hits, misses, _, _) = replicas.cache_stats();
        let (h0, m0) = self.cache_at_status.replace((hits, misses));
        let (dh, dm) = (hits.saturating_sub(h0), misses.saturating_sub(m0));
        let Ok(mut board) = self.node.board.lock() else {
            return;
        };
        board.shards.insert(
            self.id,
            crate::node::ShardRow {
                cache_hit_ratio: (dh + dm > 0)
                    .then(|| (dh as f64 / (dh + dm) as f64 * 1000.0).round() / 1000.0),
                hot_keys: hot
                    .into_iter()
                    .map(|(k, region, rate)| corekv_net::status::HotKey {
                        key: corekv_net::status::HotKey::show(&k),
                        region,
                        ops_per_sec: rate.round(),
                    })
                    .collect(),
            },
        );
        // Replicas removed from this shard (destroyed) leave the board.
        board.regions.retain(|id, row| {
            row.shard != self.id || replicas.peer(*id).is_some_and(|p| p.is_initialized())
        });
        for p in replicas.iter().filter(|p| p.is_initialized()) {
            let s = p.status();
            let (reads, writes) = ops.get(&p.region_id()).copied().unwrap_or_default();
            board.regions.insert(
                p.region_id(),
                RegionRow {
                    region: p.region().clone(),
                    shard: self.id,
                    role: match s.role {
                        raft::StateRole::Leader => Role::Leader,
                        raft::StateRole::Follower => Role::Follower,
                        raft::StateRole::Candidate => Role::Candidate,
                        raft::StateRole::PreCandidate => Role::PreCandidate,
                    },
                    leader_node: p.leader_node().unwrap_or(0),
                    applied_index: s.applied_index,
                    commit_index: s.commit_index,
                    log_entries: (s.last_index + 1).saturating_sub(s.first_index),
                    read_ops_per_sec: reads as f64 / secs,
                    write_ops_per_sec: writes as f64 / secs,
                    check: p.last_check(),
                },
            );
        }
    }

    /// Starts the split the load or size of a region led here calls for,
    /// if any (see [`crate::autosplit`]). The new region prefers the node
    /// leading the fewest regions, so the halves' leaders spread.
    pub(super) fn split_by_load_or_size(
        &self,
        replicas: &mut Replicas,
        now: u64,
        replies: &mut Vec<Reply>,
    ) {
        let mut load = self.load.borrow_mut();
        if !load.enabled() {
            return;
        }
        let router = self.router();
        if router.len() as u64 >= crate::config::REGIONS_MAX {
            return;
        }
        let leading: Vec<corekv_engine::Region> = replicas
            .iter()
            .filter(|p| p.is_leader())
            .map(|p| p.region().clone())
            .collect();
        let sizes = self
            .node
            .board
            .lock()
            .map(|b| b.sizes.clone())
            .unwrap_or_default();
        let Some(plan) = load.decide(now, &leading, |id| sizes.get(&id).copied()) else {
            return;
        };
        drop(load);
        match self.split_command(replicas, plan.region_id, plan.split_hash) {
            Ok(mut cmd) => {
                if let corekv_engine::admin::AdminCommand::Split { new_peers, .. } = &mut cmd {
                    prefer_least_leading(new_peers, self.node.cfg.node_id, &router);
                }
                tracing::info!(
                    region = plan.region_id,
                    split_hash = format_args!("{:016x}", plan.split_hash),
                    reason = %plan.reason,
                    "splitting a region by itself"
                );
                replicas.propose_admin(plan.region_id, AUTO_SPLIT_ID, cmd, replies);
            }
            Err(e) => tracing::warn!(region = plan.region_id, error = %e, "automatic split"),
        }
    }

    /// Hands leadership of a region back to its preferred node once that node
    /// is caught up, so leaders stay spread over nodes.
    pub(super) fn balance_leaders(&self, replicas: &mut Replicas) {
        let me = self.node.cfg.node_id;
        let ids: Vec<u64> = replicas
            .iter()
            .filter(|p| p.is_leader())
            .map(|p| p.region_id())
            .collect();
        for region_id in ids {
            let Some(p) = replicas.peer_mut(region_id) else {
                continue;
            };
            let preferred = preferred_leader(p.region());
            if preferred == me || preferred == 0 {
                continue;
            }
            let Some(target) = p.region().peer_on_node(preferred).map(|t| t.id) else {
                continue;
            };
            if p.is_caught_up(target) {
                tracing::info!(
                    region = region_id,
                    to_node = preferred,
                    "transferring leadership to the preferred node"
                );
                p.transfer_leader(target);
            }
        }
    }
}
