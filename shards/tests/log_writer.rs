//! Group commit: one fsync covers the rounds of several shards, each carrying
//! entries of several regions.

use std::time::Duration;

use corekv_engine::db::{self, DbConfig, LogBatch};
use corekv_engine::storage::RegionStorage;
use corekv_engine::{Epoch, PeerMeta, PeerRole, Region};
use corekv_shards::log_writer::{Done, LogWriter, WriteTask};
use raft::eraftpb::Entry;
use raft::Storage;

fn region(id: u64) -> Region {
    Region {
        id,
        start_hash: 0,
        end_hash: 0,
        epoch: Epoch::default(),
        peers: vec![PeerMeta {
            id: id * 1000 + 1,
            node_id: 1,
            role: PeerRole::Voter,
        }],
    }
}

#[test]
fn one_fsync_covers_regions_of_several_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (db, opts) = db::open_with_options(dir.path(), &DbConfig::default()).unwrap();
    let wal_syncs = || opts.get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced);
    let mut boot = LogBatch::default();
    for id in 1..=6 {
        RegionStorage::bootstrap(&region(id), &db, &mut boot).unwrap();
    }
    db::write(&db, boot.inner, true).unwrap();

    let (tx, rx) = crossbeam_channel::bounded(16);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (bell, mut bell_rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let done = Done::new(done_tx, bell).unwrap();
    // Three shards, two regions each, three entries per region: queued before
    // the writer starts, so it finds them all waiting.
    for shard in 0..3u64 {
        let mut batch = LogBatch::default();
        for id in [shard * 2 + 1, shard * 2 + 2] {
            let mut s = RegionStorage::open(db.clone(), id, 16).unwrap();
            let entries: Vec<Entry> = (6..=8)
                .map(|i| Entry {
                    index: i,
                    term: 6,
                    data: bytes::Bytes::from(format!("r{id}-{i}")),
                    ..Default::default()
                })
                .collect();
            s.append(&entries, &mut batch).unwrap();
        }
        tx.send(WriteTask {
            shard: shard as usize,
            seq: 1,
            batch,
            done: done.clone(),
        })
        .unwrap();
    }
    let syncs_before = wal_syncs();
    let writer = LogWriter::start(db.clone(), rx, Default::default());
    for _ in 0..3 {
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
    }
    // The doorbell rang once per shard of the group.
    use std::io::Read;
    bell_rx
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rings = [0u8; 16];
    let mut heard = 0;
    while heard < 3 {
        let n = bell_rx.read(&mut rings).unwrap();
        assert!(n > 0, "the doorbell closed");
        heard += n;
    }
    assert_eq!(heard, 3, "one ring per shard");
    let (fsyncs, batches, entries, bytes) = writer.stats.snapshot();
    assert_eq!(fsyncs, 1, "one fsync for the whole group");
    assert_eq!(wal_syncs() - syncs_before, 1, "RocksDB synced its WAL once");
    assert_eq!(batches, 3);
    assert_eq!(entries, 18);
    assert!(bytes > 0);
    drop(tx);
    writer.join();
    for id in 1..=6 {
        let s = RegionStorage::open(db.clone(), id, 16).unwrap();
        assert_eq!(s.last_index().unwrap(), 8, "region {id} durable");
    }
}
