//! Conformance of `RegionStorage` with the `raft::Storage` contract.

use std::sync::Arc;

use corekv_engine::apply::ApplyBatch;
use corekv_engine::db::{self, Db, DbConfig, LogBatch};
use corekv_engine::region::{Epoch, PeerMeta, PeerRole, Region};
use corekv_engine::storage::{RegionStorage, INIT_INDEX, INIT_TERM};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage, StorageError};

fn region(id: u64) -> Region {
    Region {
        id,
        start_hash: 0,
        end_hash: 0,
        epoch: Epoch::default(),
        peers: (1..=3)
            .map(|n| PeerMeta {
                id: n,
                node_id: n,
                role: PeerRole::Voter,
            })
            .collect(),
    }
}

fn entry(index: u64, term: u64, size: usize) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; size].into(),
        ..Default::default()
    }
}

fn open_fresh(dir: &std::path::Path, cache: usize) -> (Db, RegionStorage) {
    let db = db::open(dir, &DbConfig::default()).unwrap();
    let mut b = LogBatch::default();
    RegionStorage::bootstrap(&region(1), &db, &mut b).unwrap();
    db::write(&db, b.inner, true).unwrap();
    let s = RegionStorage::open(db.clone(), 1, cache).unwrap();
    (db, s)
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn is_compacted<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
}

fn append(db: &Db, s: &mut RegionStorage, entries: &[Entry]) {
    let mut b = LogBatch::default();
    s.append(entries, &mut b).unwrap();
    assert_eq!(b.entries, entries.len() as u64);
    assert!(b.must_sync);
    db::write(db, b.inner, true).unwrap();
}

fn commit(db: &Db, s: &mut RegionStorage, index: u64) {
    let mut hs = s.hard_state().clone();
    hs.commit = index;
    let mut b = LogBatch::default();
    s.set_hard_state(hs, &mut b);
    db::write(db, b.inner, true).unwrap();
}

#[test]
fn bootstrapped_log_is_empty_at_init_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open_fresh(dir.path(), 16);
    assert_eq!(s.first_index().unwrap(), INIT_INDEX + 1);
    assert_eq!(s.last_index().unwrap(), INIT_INDEX);
    assert_eq!(s.term(INIT_INDEX).unwrap(), INIT_TERM);
    assert!(is_compacted(s.term(INIT_INDEX - 1)));
    assert!(matches!(
        s.term(INIT_INDEX + 1),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    let rs = s.initial_state().unwrap();
    assert_eq!(rs.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(rs.hard_state.commit, INIT_INDEX);
    assert!(s.entries(6, 6, None, ctx()).unwrap().is_empty());
}

#[test]
fn entries_respect_bounds_and_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut s) = open_fresh(dir.path(), 4);
    let ents: Vec<Entry> = (6..=25).map(|i| entry(i, 6, 100)).collect();
    append(&db, &mut s, &ents);
    assert_eq!(s.last_index().unwrap(), 25);
    assert_eq!(s.entries(6, 26, None, ctx()).unwrap(), ents);
    assert_eq!(s.entries(10, 12, None, ctx()).unwrap(), ents[4..6].to_vec());
    // max_size: always at least one entry, never more than fits.
    let one = s.entries(6, 26, 1, ctx()).unwrap();
    assert_eq!(one.len(), 1);
    let size = ents[0].compute_size() as u64;
    let three = s.entries(6, 26, size * 3, ctx()).unwrap();
    assert_eq!(three.len(), 3);
    assert!(is_compacted(s.entries(5, 7, None, ctx())));
    assert_eq!(s.term(20).unwrap(), 6);
}

#[test]
fn conflicting_tail_is_replaced_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut s) = open_fresh(dir.path(), 64);
    append(
        &db,
        &mut s,
        &(6..=20).map(|i| entry(i, 6, 8)).collect::<Vec<_>>(),
    );
    // A new leader overwrites from 15 with a shorter log.
    append(
        &db,
        &mut s,
        &(15..=16).map(|i| entry(i, 7, 8)).collect::<Vec<_>>(),
    );
    assert_eq!(s.last_index().unwrap(), 16);
    assert_eq!(s.term(14).unwrap(), 6);
    assert_eq!(s.term(16).unwrap(), 7);
    assert!(s.term(17).is_err());
    drop(s);
    let s = RegionStorage::open(db.clone(), 1, 64).unwrap();
    assert_eq!(s.last_index().unwrap(), 16, "old tail gone from disk too");
    assert_eq!(s.term(15).unwrap(), 7);
    assert_eq!(s.entries(6, 17, None, ctx()).unwrap().len(), 11);
}

#[test]
fn compaction_moves_first_index_and_keeps_boundary_term() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut s) = open_fresh(dir.path(), 2);
    append(
        &db,
        &mut s,
        &(6..=30)
            .map(|i| entry(i, 6 + i / 10, 8))
            .collect::<Vec<_>>(),
    );
    commit(&db, &mut s, 30);
    s.set_applied(25, s.term(25).unwrap());
    let mut b = ApplyBatch::default();
    assert!(s.compact_to(20, &mut b.inner).unwrap());
    s.persist_apply_state(&mut b.inner);
    db::write(&db, b.take(), false).unwrap();
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(
        s.term(20).unwrap(),
        8,
        "term of the truncated index is kept"
    );
    assert!(is_compacted(s.term(19)));
    assert!(is_compacted(s.entries(20, 22, None, ctx())));
    // Served from RocksDB: the cache holds only 2 applied entries.
    assert!(s.cache_len() < 10);
    assert_eq!(s.entries(21, 31, None, ctx()).unwrap().len(), 10);
    // Compacting to the same index again is a no-op.
    let mut b = ApplyBatch::default();
    assert!(!s.compact_to(20, &mut b.inner).unwrap());
    drop(s);
    let s = RegionStorage::open(db.clone(), 1, 2).unwrap();
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(s.last_index().unwrap(), 30);
    assert_eq!(s.term(20).unwrap(), 8);
    assert!(is_compacted(s.entries(15, 22, None, ctx())));
}

#[test]
#[should_panic(expected = "past applied")]
fn compaction_past_applied_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut s) = open_fresh(dir.path(), 2);
    append(
        &db,
        &mut s,
        &(6..=10).map(|i| entry(i, 6, 8)).collect::<Vec<_>>(),
    );
    let mut b = ApplyBatch::default();
    let _ = s.compact_to(9, &mut b.inner);
}

#[test]
fn snapshot_boundaries_and_install() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut s) = open_fresh(dir.path(), 8);
    append(
        &db,
        &mut s,
        &(6..=12).map(|i| entry(i, 6, 8)).collect::<Vec<_>>(),
    );
    commit(&db, &mut s, 12);
    s.set_applied(12, 6);
    let mut b = ApplyBatch::default();
    s.persist_apply_state(&mut b.inner);
    db::write(&db, b.take(), false).unwrap();
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 12);
    assert_eq!(snap.get_metadata().term, 6);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    assert!(matches!(
        s.snapshot(13, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));

    // Install it on another node's storage that has a divergent log.
    let dir2 = tempfile::tempdir().unwrap();
    let (db2, mut s2) = open_fresh(dir2.path(), 8);
    append(
        &db2,
        &mut s2,
        &(6..=8).map(|i| entry(i, 5, 8)).collect::<Vec<_>>(),
    );
    let mut b = LogBatch::default();
    let (r, _sessions, _floor) = s2.apply_snapshot(&snap, &mut b).unwrap();
    assert_eq!(r.id, 1);
    assert!(b.must_sync);
    db::write(&db2, b.inner, true).unwrap();
    assert_eq!(s2.first_index().unwrap(), 13);
    assert_eq!(s2.last_index().unwrap(), 12);
    assert_eq!(s2.term(12).unwrap(), 6);
    assert_eq!(s2.applied_index(), 12);
    drop(s2);
    let s2 = RegionStorage::open(db2, 1, 8).unwrap();
    assert_eq!(
        (s2.first_index().unwrap(), s2.last_index().unwrap()),
        (13, 12)
    );
}

#[test]
fn restart_recovers_hard_state_and_log_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut s) = open_fresh(dir.path(), 4);
        append(
            &db,
            &mut s,
            &(6..=40).map(|i| entry(i, 9, 32)).collect::<Vec<_>>(),
        );
        let hs = HardState {
            term: 9,
            vote: 2,
            commit: 33,
            ..Default::default()
        };
        let mut b = LogBatch::default();
        s.set_hard_state(hs, &mut b);
        assert!(b.must_sync, "a vote change must be synced");
        db::write(&db, b.inner, true).unwrap();
    }
    let db = db::open(dir.path(), &DbConfig::default()).unwrap();
    let s = RegionStorage::open(Arc::clone(&db), 1, 4).unwrap();
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote, hs.commit), (9, 2, 33));
    assert_eq!(s.last_index().unwrap(), 40);
    assert_eq!(s.cache_len(), 0, "nothing cached after restart");
    let ents = s.entries(6, 41, None, ctx()).unwrap();
    assert_eq!(ents.len(), 35);
    assert!(ents.iter().all(|e| e.term == 9 && e.data.len() == 32));
}

#[test]
fn many_regions_share_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = db::open(dir.path(), &DbConfig::default()).unwrap();
    let mut b = LogBatch::default();
    for id in 1..=3 {
        RegionStorage::bootstrap(&region(id), &db, &mut b).unwrap();
    }
    db::write(&db, b.inner, true).unwrap();
    let mut stores: Vec<_> = (1..=3)
        .map(|id| RegionStorage::open(db.clone(), id, 8).unwrap())
        .collect();
    let mut batch = LogBatch::default();
    for (i, s) in stores.iter_mut().enumerate() {
        let n = 2 + i as u64;
        s.append(
            &(6..6 + n).map(|x| entry(x, 6, 4)).collect::<Vec<_>>(),
            &mut batch,
        )
        .unwrap();
    }
    assert_eq!(batch.entries, 2 + 3 + 4);
    db::write(&db, batch.inner, true).unwrap();
    drop(stores);
    for id in 1..=3u64 {
        let s = RegionStorage::open(db.clone(), id, 8).unwrap();
        assert_eq!(s.last_index().unwrap(), 5 + 1 + id, "region {id}");
    }
}
