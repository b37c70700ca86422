//! `corekv ctl check` on a real cluster: every replica agrees after
//! ordinary writes; a replica whose data was changed behind raft's back is
//! named, and the command exits 1.

use std::process::Command;
use std::time::Duration;

use corekv_engine::db::{self, DbConfig};
use corekv_engine::keys::{self, CF_DATA};
use corekv_engine::{route_hash, ValueRecord};
use corekv_net::PutOptions;
use corekv_tests::TestCluster;

fn ctl_check(t: &TestCluster) -> (i32, String) {
    let cli = corekv_tools::dev::server_binary().with_file_name("corekv");
    let out = Command::new(&cli)
        .args([
            "--endpoints",
            &t.cluster.endpoints(),
            "ctl",
            "check",
            "--all",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cli.display()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_replica_changed_behind_raft_is_named_by_ctl_check() {
    let mut t = TestCluster::start(3, 2, &[]);
    let mut c = t.client();
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"v", PutOptions::default())
            .unwrap();
    }
    let (code, text) = ctl_check(&t);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("every replica matches its leader"), "{text}");

    // Node 3 stops; one record of its data is changed on disk.
    assert!(t.cluster.stop_node(2, Duration::from_secs(10)).is_some());
    {
        let d = db::open(&t.cluster.nodes[2].dir.join("db"), &DbConfig::default()).unwrap();
        let record = ValueRecord {
            version: 1,
            expire_at_ms: 0,
            value: bytes::Bytes::from_static(b"not what was written"),
        };
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            db::cf(&d, CF_DATA),
            keys::data_key(route_hash(b"k7"), b"k7"),
            record.encode(),
        );
        db::write(&d, b, true).unwrap();
    }
    t.cluster.start_node(2).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let region = c
        .routes()
        .iter()
        .find(|r| r.region.contains(route_hash(b"k7")))
        .unwrap()
        .region
        .id;
    let (code, text) = ctl_check(&t);
    eprintln!("{text}");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("MISMATCH on node 3"), "{text}");
    assert!(
        text.contains(&format!("mismatched regions [{region}]")),
        "{text}"
    );
}
