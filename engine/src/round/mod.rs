//! The round of one shard, I/O-free: the order in which a shard's work is
//! done, shared by the server's shard and the simulator's.
//!
//! A round takes what arrived since the last one ([`RoundInbox`]): a tick,
//! raft messages, delivery reports, the last log sequence made durable,
//! replicas handed over by another shard. In order, it
//!
//! 1. ticks every replica, then lets the host do its periodic work;
//! 2. lets the host hand replicas over to other shards, and opens those
//!    handed to it;
//! 3. steps the raft messages and takes the delivery reports;
//! 4. releases the readies whose log batch became durable (their held-back
//!    messages go out);
//! 5. lets the host hand its client requests to the replicas;
//! 6. collects every replica's ready into one log batch and one apply batch;
//! 7. has the host write the apply batch (not synced), then follow what it
//!    changed (regions split off, replicas removed, watchers);
//! 8. sends the messages that may leave now;
//! 9. stages the log batch ([`LogPipeline`]) and hands it to the host's
//!    writer;
//! 10. serves the reads that are ready,
//!
//! and returns the answers. The host ([`RoundHost`]) does every piece of
//! I/O: the server writes to RocksDB, sends over its transport and
//! queues log batches for its log-writer thread; the simulator writes to
//! its own RocksDB, sends over its simulated network and makes log
//! batches durable after a delay. The host reports durable sequences back
//! through the next round's inbox.
//!
//! # Layout
//! - this file: the inbox, the host's part, the round;
//! - `pipeline`: log batches in flight and the readies each releases.
//!
//! Invariants (checked): log sequence numbers increase by one per batch,
//! `persisted_seq <= log_seq`, and each staged ready is released exactly
//! once, in order (see [`LogPipeline`]).

use crate::db::LogBatch;
use crate::error::{Error, Result};
use crate::peer::Reply;
use crate::region::Region;
use crate::replicas::{RaftEnvelope, Replicas, Round};
use crate::watch::EntryChanges;

mod pipeline;

pub use pipeline::{LogPipeline, Persist, Staged};

/// What arrived for a shard since its last round.
#[derive(Default)]
pub struct RoundInbox {
    /// A tick is due.
    pub tick: bool,
    /// Raft messages for the shard's replicas.
    pub raft: Vec<RaftEnvelope>,
    /// Whether messages sent earlier were delivered (snapshots,
    /// unreachable peers).
    pub reports: Vec<(RaftEnvelope, bool)>,
    /// The last log sequence the writer made durable (0: no news).
    pub persisted_seq: u64,
    /// Replicas another shard of the node handed over (and whether they
    /// led there), to open here.
    pub open: Vec<(u64, bool)>,
}

impl RoundInbox {
    /// True when nothing arrived.
    pub fn is_empty(&self) -> bool {
        !self.tick
            && self.raft.is_empty()
            && self.reports.is_empty()
            && self.persisted_seq == 0
            && self.open.is_empty()
    }
}

/// Whether a round goes on after a step of its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop here and drop the rest of the round (the simulator's planned
    /// crashes). Readies handed out are never released and the apply batch
    /// may be on disk without its log batch: the owner must discard the
    /// `Replicas` and the [`ShardRound`] (the process died) and open them
    /// again from disk.
    Abandon,
}

/// The I/O and the owner-specific work of a round.
pub trait RoundHost {
    /// Periodic work after every replica ticked (expiry sweeps, metrics,
    /// splits by load).
    fn on_tick(&mut self, replicas: &mut Replicas, replies: &mut Vec<Reply>) -> Result<()>;

    /// Hands replicas asked to move over to other shards; true if one moved.
    fn hand_over(&mut self, _replicas: &mut Replicas, _replies: &mut Vec<Reply>) -> Result<bool> {
        Ok(false)
    }

    /// Replicas handed over by another shard were opened here.
    fn opened(&mut self, regions: Vec<Region>) -> Result<()>;

    /// Hands the client requests taken with the inbox to the replicas;
    /// true if there were any.
    fn requests(&mut self, _replicas: &mut Replicas, _replies: &mut Vec<Reply>) -> Result<bool> {
        Ok(false)
    }

    /// Writes the round's apply batch (not synced). It comes before any
    /// answer of the round and before any message collected this round is
    /// handed to [`RoundHost::send`]; only messages released by durable log
    /// batches (whose entries are on disk) may have been handed over
    /// already.
    fn write_apply(&mut self, batch: rocksdb::WriteBatch) -> Result<Flow>;

    /// After the apply batch was written (every round): opens regions split
    /// off, destroys removed replicas, shows watchers `changes`.
    fn applied(
        &mut self,
        replicas: &mut Replicas,
        changes: Vec<EntryChanges>,
        replies: &mut Vec<Reply>,
    ) -> Result<Flow>;

    /// Sends a raft message.
    fn send(&mut self, message: RaftEnvelope);

    /// Hands log batch `seq` to the writer. True if it is durable already
    /// (written in place); otherwise the writer reports it through a later
    /// [`RoundInbox::persisted_seq`].
    fn write_log(&mut self, seq: u64, batch: LogBatch) -> Result<bool>;
}

/// What a round gives back.
#[derive(Default)]
pub struct RoundOutput {
    /// Answers to requests, in the order they were produced.
    pub replies: Vec<Reply>,
    /// The round did something (another may be due).
    pub busy: bool,
    /// The host abandoned the round ([`Flow::Abandon`]).
    pub abandoned: bool,
}

/// A round that failed: which step, and the error. The shard cannot go on
/// (its replicas and its database may disagree).
#[derive(Debug)]
pub struct RoundError {
    /// The step.
    pub during: &'static str,
    /// The error.
    pub error: Error,
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.during, self.error)
    }
}

impl std::error::Error for RoundError {}

fn during<T>(what: &'static str, r: Result<T>) -> std::result::Result<T, RoundError> {
    r.map_err(|error| RoundError {
        during: what,
        error,
    })
}

/// The round state of one shard: its log batches in flight.
#[derive(Default)]
pub struct ShardRound {
    log: LogPipeline,
}

impl ShardRound {
    /// Runs one round over `replicas` at `now_ms` (monotonic).
    pub fn run(
        &mut self,
        now_ms: u64,
        replicas: &mut Replicas,
        inbox: RoundInbox,
        host: &mut impl RoundHost,
    ) -> std::result::Result<RoundOutput, RoundError> {
        let mut out = RoundOutput::default();
        let replies = &mut out.replies;
        let RoundInbox {
            tick,
            raft,
            reports,
            persisted_seq,
            open,
        } = inbox;
        let mut busy = false;
        replicas.set_now(now_ms);
        replicas.take_beats(&raft);
        if tick {
            busy = true;
            replicas.tick(now_ms, replies);
            during("periodic work", host.on_tick(replicas, replies))?;
        }
        busy |= during("handing replicas over", host.hand_over(replicas, replies))?;
        for (region, led) in open {
            busy = true;
            let opened = during(
                "opening a replica handed over",
                replicas.open_region(region, led, replies),
            )?;
            during("opening a replica handed over", host.opened(opened))?;
        }
        for env in raft {
            busy = true;
            during("raft step", replicas.step(env, replies))?;
        }
        for (env, delivered) in reports {
            replicas.report_delivery(&env, delivered);
        }
        let released = self.log.persisted(persisted_seq);
        if !released.is_empty() {
            busy = true;
            release(replicas, released, host);
        }
        busy |= during("requests", host.requests(replicas, replies))?;

        let mut round = Round::default();
        during("collecting ready", replicas.collect(&mut round))?;
        let Round {
            log,
            mut apply,
            messages,
            replies: applied,
            persist,
        } = round;
        replies.extend(applied);
        if !apply.is_empty() {
            busy = true;
            if during("apply write", host.write_apply(apply.take()))? == Flow::Abandon {
                return Ok(abandoned(out));
            }
        }
        let changes = apply.take_changes();
        let flow = during(
            "following the applied entries",
            host.applied(replicas, changes, replies),
        )?;
        if flow == Flow::Abandon {
            return Ok(abandoned(out));
        }
        for m in messages {
            busy = true;
            host.send(m);
        }
        if !log.is_empty() || !persist.is_empty() {
            busy = true;
        }
        match self.log.stage(log, persist) {
            Staged::Write { seq, batch } => {
                if during("log write", host.write_log(seq, batch))? {
                    let released = self.log.persisted(seq);
                    release(replicas, released, host);
                }
            }
            Staged::Durable(persist) => release(replicas, persist, host),
            Staged::Queued => {}
        }
        during("serving reads", replicas.serve_reads(replies))?;
        out.busy = busy || !out.replies.is_empty();
        Ok(out)
    }

    /// True when no log batch is in flight.
    pub fn is_drained(&self) -> bool {
        self.log.is_drained()
    }

    /// The log pipeline (sequence numbers staged and durable).
    pub fn log(&self) -> &LogPipeline {
        &self.log
    }
}

/// Readies made durable: raft is told, and the messages it held back go.
fn release(replicas: &mut Replicas, persist: Persist, host: &mut impl RoundHost) {
    let mut messages = Vec::new();
    replicas.on_persisted(persist, &mut messages);
    for m in messages {
        host.send(m);
    }
}

fn abandoned(mut out: RoundOutput) -> RoundOutput {
    out.abandoned = true;
    out.busy = true;
    out
}
