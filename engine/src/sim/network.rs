//! Simulated network between in-process nodes, with fault filters.

use std::collections::{BTreeMap, HashSet};

use rand::rngs::SmallRng;
use rand::Rng;

use crate::replicas::RaftEnvelope;

/// Faults applied to every message, decided when it is sent.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Probability (0..=1) that a message is lost.
    pub drop_rate: f64,
    /// Extra delivery delay, drawn uniformly from this range, in ms.
    pub delay_ms: (u64, u64),
    /// If non-empty: nodes talk only to nodes of the same set.
    pub partition: Vec<HashSet<u64>>,
    /// Nodes that neither send nor receive.
    pub isolated: HashSet<u64>,
    /// Directed links (from, to) that lose every message.
    pub blocked: HashSet<(u64, u64)>,
    /// (region, node): messages of that region to that node are lost.
    pub blocked_regions: HashSet<(u64, u64)>,
    /// Directed links (from, to) whose messages are held, not lost: they
    /// arrive, in order, once the link is no longer held.
    pub held: HashSet<(u64, u64)>,
}

impl Filters {
    fn connected(&self, from: u64, to: u64) -> bool {
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return false;
        }
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        if self.partition.is_empty() {
            return true;
        }
        self.partition
            .iter()
            .any(|set| set.contains(&from) && set.contains(&to))
    }
}

/// Messages in flight, ordered by delivery time then send order.
#[derive(Default)]
pub struct SimNetwork {
    /// Current faults.
    pub filters: Filters,
    in_flight: BTreeMap<(u64, u64), RaftEnvelope>,
    sent: u64,
    /// Messages dropped by filters so far.
    pub dropped: u64,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Snapshot messages whose fate the sender has not been told yet:
    /// (message, delivered).
    snapshot_reports: Vec<(RaftEnvelope, bool)>,
    /// Messages on held links, in send order.
    held_msgs: Vec<RaftEnvelope>,
}

fn is_snapshot(env: &RaftEnvelope) -> bool {
    env.message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
}

impl SimNetwork {
    /// Sends `env` at time `now_ms`, subject to the filters.
    pub fn send(&mut self, env: RaftEnvelope, now_ms: u64, rng: &mut SmallRng) {
        if !self.filters.connected(env.from_node, env.to_node)
            || self
                .filters
                .blocked_regions
                .contains(&(env.region_id, env.to_node))
            || (self.filters.drop_rate > 0.0 && rng.gen_bool(self.filters.drop_rate.min(1.0)))
        {
            self.dropped += 1;
            if is_snapshot(&env) {
                self.snapshot_reports.push((env, false));
            }
            return;
        }
        if self.filters.held.contains(&(env.from_node, env.to_node)) {
            self.held_msgs.push(env);
            return;
        }
        let (lo, hi) = self.filters.delay_ms;
        let delay = if hi > lo { rng.gen_range(lo..=hi) } else { lo };
        self.sent += 1;
        self.in_flight.insert((now_ms + delay, self.sent), env);
    }

    /// Removes and returns every message due at or before `now_ms`. A message
    /// whose link was cut while it was in flight is lost.
    pub fn due(&mut self, now_ms: u64) -> Vec<RaftEnvelope> {
        let later = self.in_flight.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        let mut out = Vec::with_capacity(due.len());
        let held = &self.filters.held;
        let (released, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_msgs)
            .into_iter()
            .partition(|e| !held.contains(&(e.from_node, e.to_node)));
        self.held_msgs = still;
        out.extend(released);
        for (_, env) in due {
            let connected = self.filters.connected(env.from_node, env.to_node);
            if is_snapshot(&env) {
                self.snapshot_reports.push((env.clone(), connected));
            }
            if connected {
                self.delivered += 1;
                out.push(env);
            } else {
                self.dropped += 1;
            }
        }
        out
    }

    /// Takes the snapshot deliveries and losses to report to their senders.
    pub fn take_snapshot_reports(&mut self) -> Vec<(RaftEnvelope, bool)> {
        std::mem::take(&mut self.snapshot_reports)
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Loses every message in flight to or from `node` (it crashed).
    pub fn forget_node(&mut self, node: u64) {
        let lost: Vec<RaftEnvelope> = self
            .in_flight
            .values()
            .filter(|e| (e.from_node == node || e.to_node == node) && is_snapshot(e))
            .cloned()
            .collect();
        self.snapshot_reports
            .extend(lost.into_iter().map(|e| (e, false)));
        self.in_flight
            .retain(|_, e| e.from_node != node && e.to_node != node);
        self.held_msgs
            .retain(|e| e.from_node != node && e.to_node != node);
    }
}
