//! The node-wide log writer: group commit of every shard's round.
//!
//! Shards send their round's [`LogBatch`] over a bounded crossbeam channel.
//! The writer takes everything waiting (up to a bound), writes the batches in
//! order, syncs the WAL once after them (a WAL sync, not a synced write, so
//! the shards' own writes are not held while the disk syncs), and then tells each shard
//! which of its rounds are durable ([`Done`]: a channel of sequence numbers
//! and a doorbell socket the shard's executor waits on, one ring per shard
//! per group). One fsync therefore covers the entries of
//! many regions from many shards. A write or sync failure stops the process
//! at once (fail-stop): nothing written after the failure is ever
//! acknowledged.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use corekv_engine::db::{self, Db, LogBatch};
use crossbeam_channel::{Receiver, Sender};

/// Batches merged into one synced write at most.
pub const GROUP_BATCHES_MAX: usize = 256;
/// Bytes merged into one synced write at most (a group may exceed it by one batch).
pub const GROUP_BYTES_MAX: usize = 64 << 20;

/// One shard round to persist.
pub struct WriteTask {
    /// Shard that sent it.
    pub shard: usize,
    /// Per-shard sequence number, increasing.
    pub seq: u64,
    /// The writes.
    pub batch: LogBatch,
    /// Where to report `seq` once durable.
    pub done: Done,
}

/// Where a shard hears which of its rounds are durable: the sequence
/// numbers go over a channel, and a byte on a socket (the doorbell) wakes
/// the shard's executor through io_uring, with no helper thread between.
/// Every report is followed by a ring, so a listener that drains the
/// channel after each ring it reads misses none.
#[derive(Clone)]
pub struct Done {
    tx: Sender<u64>,
    bell: Arc<UnixStream>,
}

impl Done {
    /// Reports over `tx`, ringing `bell` (made non-blocking here).
    pub fn new(tx: Sender<u64>, bell: UnixStream) -> std::io::Result<Done> {
        bell.set_nonblocking(true)?;
        Ok(Done {
            tx,
            bell: Arc::new(bell),
        })
    }

    /// Queues `seq`; false if the shard no longer listens.
    fn send(&self, seq: u64) -> bool {
        self.tx.send(seq).is_ok()
    }

    /// Wakes the shard. A full socket already holds unread rings, so one
    /// more is not needed; a closed one has no listener left.
    pub fn ring(&self) {
        let _ = (&*self.bell).write(&[1]);
    }

    /// Queues `seq` and rings.
    pub fn report(&self, seq: u64) {
        if self.send(seq) {
            self.ring();
        }
    }
}

/// Counters of the log writer (monotonic).
#[derive(Default, Debug)]
pub struct LogStats {
    /// Synced writes (fsyncs of the WAL).
    pub fsyncs: AtomicU64,
    /// Groups written (synced or not).
    pub groups: AtomicU64,
    /// Shard batches written.
    pub batches: AtomicU64,
    /// Raft entries written.
    pub entries: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
}

impl LogStats {
    /// (fsyncs, batches, entries, bytes).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.fsyncs.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Handle of the writer thread.
pub struct LogWriter {
    /// Counters.
    pub stats: Arc<LogStats>,
    handle: JoinHandle<()>,
}

impl LogWriter {
    /// Starts the writer on its own thread, reading tasks from `rx`. It ends
    /// when every sender is dropped. `fail` makes the next write fail (fault
    /// injection).
    pub fn start(db: Db, rx: Receiver<WriteTask>, fail: Arc<AtomicBool>) -> LogWriter {
        let stats = Arc::new(LogStats::default());
        let s = stats.clone();
        let handle = std::thread::Builder::new()
            .name("corekv-log-writer".into())
            .spawn(move || run(db, rx, s, fail))
            .expect("spawn log writer");
        LogWriter { stats, handle }
    }

    /// Waits for the writer to drain and end.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn run(db: Db, rx: Receiver<WriteTask>, stats: Arc<LogStats>, fail: Arc<AtomicBool>) {
    // Ends when every sender is gone (the node stopped).
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut bytes = group[0].batch.size_in_bytes();
        while group.len() < GROUP_BATCHES_MAX && bytes < GROUP_BYTES_MAX {
            match rx.try_recv() {
                Ok(t) => {
                    bytes += t.batch.size_in_bytes();
                    group.push(t);
                }
                Err(_) => break,
            }
        }
        if fail.load(Ordering::SeqCst) {
            stop("injected failure (fault file rule fail-log-write)");
        }
        write_group(&db, &mut group, &stats);
        // Every shard's reports first, then one ring per shard.
        let mut ring: Vec<(usize, &Done)> = Vec::new();
        for t in &group {
            // A shard that stopped no longer listens; nothing to do.
            if t.done.send(t.seq) && !ring.iter().any(|(s, _)| *s == t.shard) {
                ring.push((t.shard, &t.done));
            }
        }
        for (_, done) in ring {
            done.ring();
        }
    }
}

/// Fail-stop: the shards are only told about durable rounds, and this process
/// ends before anything else is acknowledged.
fn stop(why: &str) -> ! {
    tracing::error!("raft log write failed, stopping the node: {why}");
    eprintln!("corekv: FATAL: raft log write failed, stopping the node: {why}");
    std::process::exit(crate::server::exit::LOG_WRITE_FAILED);
}

/// Writes one group, syncing once if any batch needs it. Exits the process on
/// failure.
pub fn write_group(db: &Db, group: &mut [WriteTask], stats: &LogStats) {
    let sync = group.iter().any(|t| t.batch.must_sync);
    let mut entries = 0;
    let mut bytes = 0;
    for t in group.iter_mut() {
        entries += t.batch.entries;
        bytes += t.batch.size_in_bytes() as u64;
        let batch = std::mem::take(&mut t.batch.inner);
        if let Err(e) = db::write(db, batch, false) {
            stop(&e.to_string());
        }
    }
    // One sync for the group, after its writes: the shards' apply writes are
    // not held in RocksDB's write queue while the disk syncs.
    if sync {
        if let Err(e) = db::sync_wal(db) {
            stop(&e.to_string());
        }
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    stats.groups.fetch_add(1, Ordering::Relaxed);
    stats
        .batches
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    stats.entries.fetch_add(entries, Ordering::Relaxed);
    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
}
