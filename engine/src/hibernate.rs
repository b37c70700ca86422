//! Idle regions hibernate: no ticks, no heartbeats, until something happens.
//!
//! A region whose leader has had nothing to do for `hibernate_after_ticks`
//! (every replica has every entry, everything is applied, no request is
//! pending) goes to sleep: the leader stops ticking and tells each replica
//! so ([`Control::Asleep`]). A replica told so by its current leader, and
//! caught up with it, stops ticking too. Any raft message or request wakes a
//! replica; a leader that wakes heartbeats again, and its first message
//! wakes the others.
//!
//! A sleeping follower still has to notice that its leader died. Instead
//! of one heartbeat per region, the owner (shard) of sleeping leaders sends
//! one beat ([`Control::Beat`]) per node of their followers every beat
//! interval (a third of the minimum election timeout), whatever the number
//! of regions; the receiving node records it in its [`Liveness`] table. A
//! sleeping follower wakes once its leader's owner has been silent for a
//! minimum election timeout, and its election clock is moved forward by the
//! silence, so it campaigns when it would have if heartbeats had stopped
//! (failover takes about as long as awake). A woken leader forgets which
//! followers it heard from before it slept, so its check-quorum counts only
//! what it hears after waking.
//!
//! A sleeping leader's followers' answers to its last heartbeats may come
//! after it fell asleep: they are stepped without waking it unless raft has
//! something to say back. A sleeping follower wakes by itself after a
//! minute or two at most, in case its region went on without it (it was
//! removed while cut off).
//!
//! Why this keeps every guarantee:
//! - safety of raft does not depend on ticks (only liveness does);
//! - a lease ([`crate::read`]) rests on followers not voting for another
//!   leader within an election timeout of hearing from the leader. A
//!   sleeping follower's clock counts from its last contact with the leader
//!   (the notice, then each beat of the leader's owner), which is never
//!   before the contact the lease was counted from: it refuses votes at
//!   least as long as an awake one would. A sleeping leader's lease runs
//!   out on the monotonic clock like any other, so after a sleep a read
//!   takes a quorum round first;
//! - beats carry the sender's incarnation (drawn when its replicas were
//!   opened): a restarted node's beats never stand in for the replicas it
//!   had before;
//! - a follower that missed the notice, or saw a heartbeat after it, stays
//!   awake, hears nothing, and campaigns: its pre-vote wakes the others,
//!   which refuse it (inside their lease), and the woken leader heartbeats
//!   again. The region is awake once more, and sleeps again later.
//!
//! Costs: a region holding keys with an expiry never sleeps (its leader
//! moves the region clock forward every `clock_step_ms`), nor does a region
//! with a lagging or unreachable replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What an envelope carries besides (or instead of) a raft message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Control {
    /// A raft message (or a removal notice, see `RaftEnvelope::removed_at`).
    #[default]
    Raft,
    /// The sender, leader of the region at `message.term` with commit index
    /// `message.commit`, went to sleep on owner `shard` of its node.
    Asleep {
        /// Owner (shard) of the sleeping leader.
        shard: u32,
        /// That owner's incarnation.
        incarnation: u64,
    },
    /// Owner `shard` of the sending node is alive and its sleeping leaders
    /// still lead (not for any region: `region_id` is 0).
    Beat {
        /// Sending owner.
        shard: u32,
        /// That owner's incarnation.
        incarnation: u64,
    },
}

/// When each owner of each other node was last heard to be alive (beats),
/// shared by every owner of a node: a beat reaches whichever owner took
/// the connection.
#[derive(Clone, Default)]
pub struct Liveness {
    heard: Arc<Mutex<HashMap<Beater, u64>>>,
}

/// (node, owner, incarnation): whose beats.
type Beater = (u64, u32, u64);

/// Entries kept before the oldest are forgotten (restarted owners).
const LIVENESS_ENTRIES_MAX: usize = 1024;

impl Liveness {
    /// Owner `shard` (incarnation `incarnation`) of `node` beat at `now_ms`.
    pub fn heard(&self, node: u64, shard: u32, incarnation: u64, now_ms: u64) {
        if let Ok(mut m) = self.heard.lock() {
            let at = m.entry((node, shard, incarnation)).or_insert(now_ms);
            *at = (*at).max(now_ms);
            if m.len() > LIVENESS_ENTRIES_MAX {
                let mut times: Vec<u64> = m.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                m.retain(|_, at| *at >= cut);
            }
        }
    }

    /// When that owner, in that incarnation, last beat (None: never).
    pub fn last_heard(&self, node: u64, shard: u32, incarnation: u64) -> Option<u64> {
        let m = self.heard.lock().ok()?;
        m.get(&(node, shard, incarnation)).copied()
    }
}

/// Whether a replica sleeps, and as what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    /// Ticking; `quiet_ticks` ticks in a row found nothing new since
    /// `mark` (last index, commit index).
    Awake {
        /// Ticks in a row with nothing new.
        quiet_ticks: u64,
        /// Last index and commit index at the previous tick.
        mark: (u64, u64),
    },
    /// A sleeping leader.
    Leader,
    /// A sleeping follower of the leader on `leader_node`, owner
    /// `leader_shard`; asleep since `since_ms` (the leader's notice).
    Follower {
        /// Node of the leader.
        leader_node: u64,
        /// Owner of the leader on that node.
        leader_shard: u32,
        /// The leader owner's incarnation.
        incarnation: u64,
        /// When the notice arrived.
        since_ms: u64,
        /// Wakes by itself at this time at the latest.
        until_ms: u64,
    },
}

impl Default for Sleep {
    fn default() -> Self {
        Sleep::Awake {
            quiet_ticks: 0,
            mark: (0, 0),
        }
    }
}

/// A number for one opening of an owner's replicas, different from every
/// earlier one on the machine (time, process, and a counter).
pub fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    h.write_u64(OPENED.fetch_add(1, Ordering::Relaxed));
    h.finish().max(1)
}
