//! One node's replicas driven by hand, message by message and write by
//! write: what a replica that waits for its first snapshot does when a
//! split, a newer raft id or a refused snapshot meets it.

use corekv_engine::db::{self, Db, DbConfig};
use corekv_engine::replicas::bootstrap_regions;
use corekv_engine::snapshot::SnapshotData;
use corekv_engine::storage::RegionStorage;
use corekv_engine::{
    Config, Directory, Epoch, Owner, PeerMeta, PeerRole, RaftEnvelope, Region, Replicas, Round,
};
use raft::eraftpb::{Message, MessageType};

fn voters(region: u64) -> Vec<PeerMeta> {
    (1..=3)
        .map(|n| PeerMeta {
            id: region * 1000 + n,
            node_id: n,
            role: PeerRole::Voter,
        })
        .collect()
}

/// Region 1 over the whole hash space, replicas on nodes 1-3; `id` of the
/// region split off its upper half.
fn parent() -> Region {
    Region {
        id: 1,
        start_hash: 0,
        end_hash: 0,
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        peers: voters(1),
    }
}

fn child(id: u64) -> Region {
    Region {
        id,
        start_hash: 1 << 63,
        peers: voters(id),
        ..parent()
    }
}

/// Node 3 with region 1 stored, one owner.
struct Node {
    _dir: tempfile::TempDir,
    db: Db,
    directory: Directory,
    r: Replicas,
}

fn node3() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = db::open(dir.path(), &DbConfig::default()).unwrap();
    bootstrap_regions(&db, 3, &[parent()]).unwrap();
    let directory = Directory::default();
    let owner = Owner {
        node_id: 3,
        index: 0,
        directory: directory.clone(),
        liveness: Default::default(),
    };
    let cfg = std::sync::Arc::new(Config::default());
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let r = Replicas::open(cfg, db.clone(), owner, 1, &logger, |_| true).unwrap();
    Node {
        _dir: dir,
        db,
        directory,
        r,
    }
}

fn message(kind: MessageType, (from, to): (u64, u64), term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

impl Node {
    fn step(&mut self, region_id: u64, from_node: u64, message: Message) {
        self.step_at(region_id, (from_node, Epoch::default()), message);
    }

    /// Delivers `message` sent by a node whose region is at `epoch`.
    fn step_at(&mut self, region_id: u64, (from_node, epoch): (u64, Epoch), message: Message) {
        let env = RaftEnvelope {
            region_id,
            from_node,
            to_node: 3,
            message,
            removed_at: 0,
            epoch,
            control: Default::default(),
        };
        self.r.step(env, &mut Vec::new()).unwrap();
    }

    /// A candidate of region 2 (split off region 1, not applied here) asks
    /// for node 3's vote in term 10: a replica waiting for its first
    /// snapshot is created and votes. Returns the round holding the vote.
    fn vote_for_region_2(&mut self) -> Round {
        let mut m = message(MessageType::MsgRequestVote, (2002, 2003), 10);
        m.index = 5;
        m.log_term = 5;
        self.step(2, 2, m);
        let mut round = Round::default();
        self.r.collect(&mut round).unwrap();
        assert_eq!(self.r.peer(2).unwrap().term_and_vote(), (10, 2002));
        round
    }

    /// Writes the state the split of region 1 gives region 2 here, as the
    /// parent's apply batch does.
    fn write_split_state(&self) {
        let mut b = rocksdb::WriteBatch::default();
        RegionStorage::write_initial(&child(2), (5, 5, Some(0)), &self.db, &mut b);
        db::write(&self.db, b, false).unwrap();
    }

    fn persist(&mut self, round: Round) -> Vec<RaftEnvelope> {
        db::write(&self.db, round.log.inner, true).unwrap();
        let mut out = Vec::new();
        self.r.on_persisted(round.persist, &mut out);
        out
    }
}

#[test]
fn a_replica_replaced_while_its_vote_is_being_written_keeps_the_vote() {
    let mut n = node3();
    let round = n.vote_for_region_2();
    assert!(
        n.r.peer(2).unwrap().has_unpersisted(),
        "the vote is on its way"
    );
    // Meanwhile region 1 applies the split here: region 2's state is
    // written, and its replica is to be opened from it.
    n.write_split_state();
    let opened = n.r.open_region(2, false, &mut Vec::new()).unwrap();
    assert!(
        opened.is_empty() && !n.r.peer(2).unwrap().is_initialized(),
        "opened from a state without the vote that is on its way"
    );
    // The vote lands; the stored replica opens, the vote in its state.
    let out = n.persist(round);
    assert!(
        out.iter().any(|e| e.region_id == 2 && e.to_node == 2),
        "the vote is sent once durable"
    );
    let opened = n.r.open_waiting(&mut Vec::new()).unwrap();
    assert_eq!(opened.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
    let p = n.r.peer(2).unwrap();
    assert!(p.is_initialized());
    assert_eq!(p.term_and_vote(), (10, 2002), "the vote survives");
}

#[test]
fn a_split_written_after_a_vote_landed_keeps_the_vote() {
    let mut n = node3();
    let round = n.vote_for_region_2();
    n.persist(round);
    // The parent's apply batch, with region 2's state, is written after
    // the vote: it must not write over it.
    n.write_split_state();
    let opened = n.r.open_region(2, false, &mut Vec::new()).unwrap();
    assert_eq!(opened.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(n.r.peer(2).unwrap().term_and_vote(), (10, 2002));
    // And a restart reads the same.
    drop(n.r);
    let owner = Owner {
        node_id: 3,
        index: 0,
        directory: Directory::default(),
        liveness: Default::default(),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let cfg = std::sync::Arc::new(Config::default());
    let r = Replicas::open(cfg, n.db.clone(), owner, 1, &logger, |_| true).unwrap();
    let p = r.peer(2).unwrap();
    assert_eq!(p.term_and_vote(), (10, 2002));
    assert_eq!(p.status().commit_index, 5, "committed up to the split");
}

#[test]
fn a_replica_waiting_under_an_old_raft_id_gives_way_to_the_new_one() {
    let mut n = node3();
    // Added under raft id 7003 (a learner), then, before its first
    // snapshot, taken out and added again as 9003.
    n.step(7, 1, message(MessageType::MsgHeartbeat, (7001, 7003), 3));
    assert_eq!(n.r.peer(7).unwrap().peer_id(), 7003);
    let mut round = Round::default();
    n.r.collect(&mut round).unwrap();
    n.persist(round);
    n.step(7, 1, message(MessageType::MsgHeartbeat, (7001, 9003), 4));
    assert_eq!(n.r.peer(7).unwrap().peer_id(), 9003);
    assert_eq!(n.directory.get(7).unwrap().owner, 0);
    // A message for the old id is dropped, not taken by the new replica.
    n.step(7, 1, message(MessageType::MsgHeartbeat, (7001, 7003), 5));
    assert_eq!(n.r.peer(7).unwrap().peer_id(), 9003);
    assert_eq!(n.r.peer(7).unwrap().term_and_vote().0, 4);
}

#[test]
fn a_replica_given_way_and_refused_a_snapshot_leaves_room_for_the_next_message() {
    let mut n = node3();
    n.step(7, 1, message(MessageType::MsgHeartbeat, (7001, 7003), 3));
    // The new id's first message is a snapshot over a range region 1
    // covers here: refused, and nothing is left to block what comes next.
    let stale = Region {
        id: 7,
        peers: voters(7),
        ..child(7)
    };
    n.step(7, 1, snapshot(&stale, 9, (7001, 9003)));
    assert!(n.r.peer(7).is_none());
    assert!(n.directory.get(7).is_none());
    n.step(7, 1, message(MessageType::MsgHeartbeat, (7001, 9003), 4));
    assert_eq!(n.r.peer(7).unwrap().peer_id(), 9003);
}

#[test]
fn a_replica_with_data_addressed_under_a_newer_id_is_destroyed_for_it() {
    use corekv_engine::membership::new_peer_id;
    let mut n = node3();
    // Region 1's replica here (raft id 1003) was taken out without hearing
    // of it; the node was added again as a learner.
    let newer = new_peer_id(5, 3);
    let epoch = Epoch {
        conf_ver: 5,
        version: 1,
    };
    n.step_at(
        1,
        (1, epoch),
        message(MessageType::MsgHeartbeat, (1001, newer), 9),
    );
    assert!(n.r.peer(1).unwrap().is_removed());
    let gone = n.r.destroy_removed(&mut Vec::new()).unwrap();
    assert_eq!(gone.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
    n.step_at(
        1,
        (1, epoch),
        message(MessageType::MsgHeartbeat, (1001, newer), 9),
    );
    let p = n.r.peer(1).unwrap();
    assert_eq!(p.peer_id(), newer);
    assert!(!p.is_initialized(), "it waits for its first snapshot");
}

/// A snapshot message of `region` at `index` (raft refuses one at or below
/// what the replica committed).
fn snapshot(region: &Region, index: u64, (from, to): (u64, u64)) -> Message {
    let data = SnapshotData {
        region: region.clone(),
        applied_index: index,
        clock_ms: Some(0),
        pairs: Vec::new(),
        sessions: Vec::new(),
        history_floor: index,
        history: Vec::new(),
    };
    let mut m = message(MessageType::MsgSnapshot, (from, to), 6);
    let s = m.mut_snapshot();
    s.data = data.encode().into();
    s.mut_metadata().index = index;
    s.mut_metadata().term = 5;
    m
}

#[test]
fn a_snapshot_raft_refuses_leaves_the_directory_as_it_was() {
    use corekv_engine::directory::Span;
    let mut n = node3();
    let upper = Span::of(&child(2));
    let lower = Span::of(&Region {
        end_hash: 1 << 63,
        ..parent()
    });
    // Region 1 applied a split here: it covers the lower half. A stale
    // snapshot of it from before the split (the whole space) is refused by
    // raft: its range here stays the lower half.
    n.directory.set_range(1, Some(lower));
    n.step(1, 1, snapshot(&parent(), 3, (1001, 1003)));
    assert_eq!(n.directory.get(1).unwrap().span, Some(lower));
    // Region 2 is waiting for its first snapshot here while the split's
    // state, written, is to be opened: its range is recorded. A snapshot
    // raft refuses leaves it recorded.
    n.step(2, 2, message(MessageType::MsgHeartbeat, (2002, 2003), 6));
    n.directory.split_off(&child(2), 0);
    n.step(2, 2, snapshot(&child(2), 0, (2002, 2003)));
    assert_eq!(n.directory.get(2).unwrap().span, Some(upper));
}
