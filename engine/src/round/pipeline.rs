//! The log side of a round: which log batch to write under which sequence
//! number, and which readies (with the messages raft holds back until their
//! entries are durable) each durable sequence releases.
//!
//! A round ([`crate::Replicas::collect`]) yields a [`crate::Round`]: a log batch
//! and the readies waiting for it. [`LogPipeline::stage`] numbers the batch
//! and queues the readies behind it; the batch goes to whatever writes it
//! (the server's group-committing log writer thread, the simulator's
//! delayed disk) and, when that reports sequence `n` durable,
//! [`LogPipeline::persisted`] returns the readies to pass to
//! [`crate::Replicas::on_persisted`]. Readies with no log write of their own
//! are durable as soon as everything staged before them is.
//!
//! Invariants (checked): sequence numbers increase by one per batch;
//! `persisted_seq <= log_seq`; every staged ready is released exactly once,
//! in staging order.

use std::collections::VecDeque;

use crate::db::LogBatch;
use crate::peer::PendingPersist;

/// Readies of one region waiting for their log write, by region id.
pub type Persist = Vec<(u64, PendingPersist)>;

/// What to do with a round's log side.
pub enum Staged {
    /// Write `batch` as sequence `seq`; report it with
    /// [`LogPipeline::persisted`] once it is durable.
    Write {
        /// Its sequence number.
        seq: u64,
        /// The batch.
        batch: LogBatch,
    },
    /// Nothing to write and nothing in flight: these readies are durable
    /// now (pass them to [`crate::Replicas::on_persisted`]).
    Durable(Persist),
    /// Nothing to do now (nothing at all, or readies queued behind the
    /// last batch in flight).
    Queued,
}

/// The sequence of log batches in flight for one owner (shard).
#[derive(Default)]
pub struct LogPipeline {
    log_seq: u64,
    persisted_seq: u64,
    in_flight: VecDeque<(u64, Persist)>,
}

impl LogPipeline {
    /// Stages a round's log batch and the readies waiting for it.
    pub fn stage(&mut self, log: LogBatch, persist: Persist) -> Staged {
        if !log.is_empty() {
            self.log_seq += 1;
            self.in_flight.push_back((self.log_seq, persist));
            return Staged::Write {
                seq: self.log_seq,
                batch: log,
            };
        }
        if persist.is_empty() {
            return Staged::Queued;
        }
        match self.in_flight.back_mut() {
            Some((_, queued)) => {
                queued.extend(persist);
                Staged::Queued
            }
            None => Staged::Durable(persist),
        }
    }

    /// Sequence `seq` (and so every one before it: batches become durable
    /// in order) is durable: the readies it releases, in staging order. A
    /// report older than one already seen releases nothing.
    ///
    /// # Panics
    /// If `seq` was never staged: the writer reported a batch it was not
    /// given.
    pub fn persisted(&mut self, seq: u64) -> Persist {
        assert!(
            seq <= self.log_seq,
            "log batch {seq} reported durable, only {} staged",
            self.log_seq
        );
        let mut released = Vec::new();
        if seq <= self.persisted_seq {
            return released;
        }
        self.persisted_seq = seq;
        while self.in_flight.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, persist) = self.in_flight.pop_front().expect("checked");
            released.extend(persist);
        }
        released
    }

    /// The last sequence staged.
    pub fn log_seq(&self) -> u64 {
        self.log_seq
    }

    /// The last sequence reported durable.
    pub fn persisted_seq(&self) -> u64 {
        self.persisted_seq
    }

    /// True when no staged batch waits to be durable.
    pub fn is_drained(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(region: u64, number: u64) -> (u64, PendingPersist) {
        (
            region,
            PendingPersist {
                number,
                instance: 1,
                messages: Vec::new(),
            },
        )
    }

    fn batch() -> LogBatch {
        let mut b = LogBatch::default();
        b.inner.put(b"k", b"v");
        b
    }

    fn numbers(p: &Persist) -> Vec<u64> {
        p.iter().map(|(_, r)| r.number).collect()
    }

    #[test]
    fn readies_are_released_once_in_order_when_their_batch_is_durable() {
        let mut p = LogPipeline::default();
        // Nothing in flight: a ready without a write is durable at once.
        match p.stage(LogBatch::default(), vec![ready(1, 1)]) {
            Staged::Durable(r) => assert_eq!(numbers(&r), vec![1]),
            _ => panic!("expected durable"),
        }
        let Staged::Write { seq: s1, .. } = p.stage(batch(), vec![ready(1, 2)]) else {
            panic!("expected a write")
        };
        // Queued behind batch 1.
        assert!(matches!(
            p.stage(LogBatch::default(), vec![ready(2, 3)]),
            Staged::Queued
        ));
        let Staged::Write { seq: s2, .. } = p.stage(batch(), vec![ready(1, 4)]) else {
            panic!("expected a write")
        };
        assert_eq!((s1, s2), (1, 2));
        assert!(!p.is_drained());
        assert_eq!(numbers(&p.persisted(1)), vec![2, 3]);
        // A stale or repeated report releases nothing.
        assert!(p.persisted(1).is_empty());
        assert_eq!(numbers(&p.persisted(2)), vec![4]);
        assert!(p.is_drained());
        assert_eq!((p.log_seq(), p.persisted_seq()), (2, 2));
    }

    #[test]
    fn a_later_report_releases_every_batch_before_it() {
        let mut p = LogPipeline::default();
        for n in 1..=3 {
            assert!(matches!(
                p.stage(batch(), vec![ready(1, n)]),
                Staged::Write { .. }
            ));
        }
        assert_eq!(numbers(&p.persisted(3)), vec![1, 2, 3]);
        assert!(p.is_drained());
    }

    #[test]
    #[should_panic(expected = "reported durable")]
    fn a_report_of_a_batch_never_staged_is_a_bug() {
        let mut p = LogPipeline::default();
        let _ = p.persisted(1);
    }
}
