//! Pending linearizable reads of one region: ReadIndex batching and the
//! leader lease.
//!
//! Reads that arrive while a read index request is in flight wait together;
//! when it is confirmed, all of them form the next batch and cost one more
//! `read_index` call (one heartbeat round to a quorum). So a region has at
//! most one read index round in flight, and its batches grow with load
//! instead of its heartbeat traffic. A batch is served once the applied index
//! reaches the read index raft confirmed for it. raft answers read index
//! requests in order, so a confirmed index also covers every older batch.
//!
//! Lease: when a read index issued at time `t` is confirmed, a quorum heard
//! from this leader at or after `t`. With check-quorum and pre-vote on, those
//! followers refuse to vote for anyone else for one minimum election timeout
//! after hearing from the leader, so no other leader can exist before
//! `t + election timeout`. The lease ends `lease_margin_ms` before that, which
//! covers clock-rate drift between nodes (clocks must not drift apart by more
//! than the margin within one election timeout), and time is the caller's
//! monotonic clock, so a leader paused (GC, SIGSTOP) past its lease falls back
//! to ReadIndex when it resumes.

use std::collections::VecDeque;

use bytes::Bytes;

pub use corekv_types::Consistency;

/// A scan of a region's keys in hash order: every live key whose routing
/// hash is at or after `from_hash` (within the region), at most `limit`
/// keys, but never part of the keys of one hash value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// First hash to include.
    pub from_hash: u64,
    /// Keys to return at most (past it, only keys of the last hash).
    pub limit: usize,
    /// Leave the values out.
    pub keys_only: bool,
    /// Only keys beginning with this (empty: every key).
    pub prefix: bytes::Bytes,
}

/// A read waiting to be served.
#[derive(Debug)]
pub struct PendingRead {
    /// Caller's request id.
    pub id: u64,
    /// Key to read (empty for a scan).
    pub key: Bytes,
    /// A scan instead of a read of `key`.
    pub scan: Option<Scan>,
    /// Answer `Timeout` after this time (monotonic ms).
    pub deadline_ms: u64,
}

#[derive(Debug)]
struct ReadBatch {
    /// Context sent with `read_index`; 0 = not issued (or needs no issue).
    ctx: u64,
    reads: Vec<PendingRead>,
    read_index: Option<u64>,
    issued_ms: u64,
    issued_tick: u64,
}

/// The read queue of one region.
#[derive(Default, Debug)]
pub struct ReadQueue {
    batches: VecDeque<ReadBatch>,
    collecting: Vec<PendingRead>,
    next_ctx: u64,
    pending: usize,
}

/// A read index request the peer must hand to raft.
pub struct Issue {
    /// Context bytes to pass to `read_index`.
    pub ctx: u64,
}

impl ReadQueue {
    /// Reads waiting in total.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Adds a read to the current round's batch.
    pub fn push(&mut self, read: PendingRead) {
        self.pending += 1;
        self.collecting.push(read);
    }

    /// Adds reads that need no read index round: the index is known (lease).
    pub fn push_with_index(&mut self, read: PendingRead, read_index: u64) {
        self.pending += 1;
        self.batches.push_back(ReadBatch {
            ctx: 0,
            reads: vec![read],
            read_index: Some(read_index),
            issued_ms: 0,
            issued_tick: 0,
        });
    }

    /// A queue whose contexts start above `base` (two queues of one region
    /// must not share contexts).
    pub fn with_ctx_base(base: u64) -> ReadQueue {
        ReadQueue {
            next_ctx: base,
            ..ReadQueue::default()
        }
    }

    fn new_ctx(&mut self) -> u64 {
        self.next_ctx += 1;
        self.next_ctx
    }

    /// Closes the waiting reads into a batch. If `can_issue`, returns the read
    /// index request to send for it; while another request is in flight the
    /// reads keep waiting (they join the next batch).
    pub fn seal(&mut self, can_issue: bool, now_ms: u64, tick: u64) -> Option<Issue> {
        if self.collecting.is_empty() || (can_issue && self.has_unconfirmed()) {
            return None;
        }
        let reads = std::mem::take(&mut self.collecting);
        let ctx = if can_issue { self.new_ctx() } else { 0 };
        self.batches.push_back(ReadBatch {
            ctx,
            reads,
            read_index: None,
            issued_ms: now_ms,
            issued_tick: tick,
        });
        can_issue.then_some(Issue { ctx })
    }

    /// A batch with no reads, issued only to renew the lease.
    pub fn renew(&mut self, now_ms: u64, tick: u64) -> Issue {
        let ctx = self.new_ctx();
        self.batches.push_back(ReadBatch {
            ctx,
            reads: Vec::new(),
            read_index: None,
            issued_ms: now_ms,
            issued_tick: tick,
        });
        Issue { ctx }
    }

    /// True when a lease renewal is already waiting for its answer.
    pub fn has_unconfirmed(&self) -> bool {
        self.batches
            .iter()
            .any(|b| b.ctx != 0 && b.read_index.is_none())
    }

    /// raft confirmed `read_index` for `ctx`. Returns the time the request was
    /// issued (for the lease), or `None` if the context is unknown.
    pub fn confirm(&mut self, ctx: u64, read_index: u64) -> Option<u64> {
        let pos = self.batches.iter().position(|b| b.ctx == ctx)?;
        let issued_ms = self.batches[pos].issued_ms;
        for b in self.batches.iter_mut().take(pos + 1) {
            if b.read_index.is_none() {
                b.read_index = Some(read_index);
            }
        }
        Some(issued_ms)
    }

    /// Batches not confirmed after `retry_ticks` (or never issued) get a new
    /// context; returns the requests to send.
    pub fn reissue(&mut self, now_ms: u64, tick: u64, retry_ticks: u64) -> Vec<Issue> {
        let mut out = Vec::new();
        for i in 0..self.batches.len() {
            let b = &self.batches[i];
            let stale = b.read_index.is_none()
                && (b.ctx == 0 || tick.saturating_sub(b.issued_tick) >= retry_ticks);
            if stale {
                let ctx = self.new_ctx();
                let b = &mut self.batches[i];
                b.ctx = ctx;
                b.issued_ms = now_ms;
                b.issued_tick = tick;
                out.push(Issue { ctx });
            }
        }
        out
    }

    /// Removes and returns every read whose index is applied.
    pub fn take_ready(&mut self, applied_index: u64, out: &mut Vec<PendingRead>) {
        let before = out.len();
        self.batches.retain_mut(|b| match b.read_index {
            Some(i) if i <= applied_index => {
                out.append(&mut b.reads);
                false
            }
            _ => true,
        });
        self.pending -= out.len() - before;
    }

    /// Removes and returns every read past its deadline.
    pub fn take_expired(&mut self, now_ms: u64, out: &mut Vec<PendingRead>) {
        let before = out.len();
        for b in self.batches.iter_mut() {
            let mut i = 0;
            while i < b.reads.len() {
                if b.reads[i].deadline_ms <= now_ms {
                    out.push(b.reads.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        // Empty batches stay until confirmed: they may carry a lease renewal.
        self.pending -= out.len() - before;
    }

    /// Forgets batches left without reads (their reads expired): nothing
    /// waits for their answer.
    pub fn drop_empty(&mut self) {
        self.batches.retain(|b| !b.reads.is_empty());
    }

    /// Removes and returns every pending read (leadership lost).
    pub fn take_all(&mut self, out: &mut Vec<PendingRead>) {
        for b in self.batches.drain(..) {
            out.extend(b.reads);
        }
        out.append(&mut self.collecting);
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(id: u64) -> PendingRead {
        PendingRead {
            id,
            key: Bytes::from_static(b"k"),
            scan: None,
            deadline_ms: 1000,
        }
    }

    #[test]
    fn one_issue_per_round_and_confirm_covers_older_batches() {
        let mut q = ReadQueue::default();
        q.push(read(1));
        q.push(read(2));
        let a = q.seal(true, 0, 0).unwrap();
        assert!(q.seal(true, 0, 0).is_none(), "nothing new to seal");
        q.push(read(3));
        assert!(
            q.seal(true, 1, 1).is_none(),
            "one read index in flight at a time"
        );
        // A retry gives the batch a new context; the old one is forgotten.
        let retried = q.reissue(2, 20, 10);
        assert_eq!(retried.len(), 1);
        assert_eq!(q.confirm(a.ctx, 7), None);
        assert_eq!(q.confirm(retried[0].ctx, 8), Some(2));
        let b = q.seal(true, 5, 21).unwrap();
        assert_eq!(q.pending(), 3);
        assert_eq!(q.confirm(b.ctx, 10), Some(5));
        let mut out = vec![];
        q.take_ready(7, &mut out);
        assert!(out.is_empty(), "index 8 not applied yet");
        q.take_ready(9, &mut out);
        let mut ids: Vec<_> = out.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![1, 2],
            "the read that came later waits for its own index"
        );
        q.take_ready(10, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn unissued_and_unanswered_batches_are_reissued() {
        let mut q = ReadQueue::default();
        q.push(read(1));
        assert!(q.seal(false, 0, 0).is_none());
        let issues = q.reissue(0, 1, 10);
        assert_eq!(issues.len(), 1, "never issued: issue now");
        assert!(q.reissue(0, 5, 10).is_empty(), "too early to retry");
        let again = q.reissue(0, 11, 10);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].ctx, issues[0].ctx);
        assert_eq!(q.confirm(issues[0].ctx, 1), None, "old context forgotten");
    }

    #[test]
    fn deadlines_and_leadership_loss_drain_reads() {
        let mut q = ReadQueue::default();
        q.push(PendingRead {
            scan: None,
            id: 1,
            key: Bytes::new(),
            deadline_ms: 10,
        });
        q.push(read(2));
        q.seal(true, 0, 0);
        let mut out = vec![];
        q.take_expired(10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, 1);
        q.push(read(3));
        let mut all = vec![];
        q.take_all(&mut all);
        assert_eq!(all.len(), 2);
        assert_eq!(q.pending(), 0);
    }
}
