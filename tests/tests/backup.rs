//! Backup and restore on real processes: a backup taken under writes holds
//! every write acknowledged before it began, with its version; a new
//! cluster restored from it serves them, goes on with higher versions and
//! splits with fresh region ids; a damaged or partial backup is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corekv_engine::Consistency;
use corekv_net::{ClientError, PutOptions};
use corekv_tests::TestCluster;

/// Starts `corekv-server` as the first node of a new one-node cluster
/// restoring `backup`; returns its exit status and stderr (it must refuse).
fn restore_refused(backup: &std::path::Path) -> (std::process::ExitStatus, String) {
    let data = tempfile::tempdir().unwrap();
    let base = corekv_tests::pick_base(1);
    let peer = format!("127.0.0.1:{base}");
    let out = std::process::Command::new(corekv_tools::dev::server_binary())
        .args(["--id", "1", "--shards", "1"])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--peer-listen", &peer])
        .args(["--client-listen", &format!("127.0.0.1:{}", base + 1)])
        .args(["--initial-cluster", &format!("1={peer}")])
        .arg("--restore")
        .arg(backup)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_backup_under_writes_restores_into_a_new_cluster_with_every_acknowledged_write_and_its_version()
{
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let (before, written_during) = {
        let t = TestCluster::start(3, 2, &[]);
        let mut c = t.client();
        // A split first, so the backup holds a region with an allocated id.
        let r = c
            .routes()
            .iter()
            .find(|r| !r.region.is_meta())
            .unwrap()
            .region
            .id;
        corekv_tools::ctl::split(&mut c, r, None).unwrap();
        let mut before: HashMap<String, (String, u64)> = HashMap::new();
        for i in 0..3000 {
            let key = format!("cfg/{i}");
            let value = format!("v{i}-{}", "x".repeat(i % 200));
            let opts = if i % 10 == 0 {
                PutOptions {
                    ttl: Some(Duration::from_secs(3600)),
                    ..Default::default()
                }
            } else {
                PutOptions::default()
            };
            let v = c.put(key.as_bytes(), value.as_bytes(), opts).unwrap();
            before.insert(key, (value, v));
        }
        for i in (0..3000).step_by(7) {
            let key = format!("cfg/{i}");
            assert!(c.delete(key.as_bytes(), None).unwrap());
            before.remove(&key);
        }
        // Writes go on while the backup runs.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mut c, stop) = (t.client(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let key = format!("load/{}", n % 500);
                    match c.put(key.as_bytes(), b"during", PutOptions::default()) {
                        Ok(_) | Err(ClientError::Unknown(_)) => n += 1,
                        Err(e) => panic!("put {key}: {e}"),
                    }
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let mut progress = Vec::new();
        let mut admin = t.client();
        let manifest =
            corekv_tools::backup::backup(&mut admin, &backup_dir, &mut progress).unwrap();
        stop.store(true, Ordering::Release);
        let during = writer.join().unwrap();
        let progress = String::from_utf8(progress).unwrap();
        eprint!("{progress}");
        assert!(progress.contains("backup of 9 regions"), "{progress}");
        assert_eq!(manifest.regions.len(), 9, "8 regions and the split-off one");
        assert!(manifest
            .regions
            .iter()
            .any(|r| r.id >= corekv_engine::region::FIRST_ALLOCATED_ID));
        // Backing up into a directory holding a backup is refused.
        let again = corekv_tools::backup::backup(&mut admin, &backup_dir, &mut Vec::new());
        assert!(again
            .unwrap_err()
            .to_string()
            .contains("holds a backup already"));
        (before, during)
    };
    assert!(written_during > 0);
    let verified = corekv_tools::backup::verify(&backup_dir).unwrap();
    assert!(verified.contains("complete and intact"), "{verified}");

    // A damaged copy and a partial copy are refused, naming what is wrong.
    let damaged = dir.path().join("damaged");
    copy_dir(&backup_dir, &damaged);
    let victim = std::fs::read_dir(&damaged)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let e = corekv_tools::backup::verify(&damaged)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match its SHA-256"), "{e}");
    let (status, stderr) = restore_refused(&damaged);
    assert!(!status.success(), "a damaged backup was restored");
    assert!(stderr.contains("does not match its SHA-256"), "{stderr}");
    let partial = dir.path().join("partial");
    copy_dir(&backup_dir, &partial);
    std::fs::remove_file(partial.join(corekv_net::backup::MANIFEST)).unwrap();
    let (status, stderr) = restore_refused(&partial);
    assert!(!status.success(), "a partial backup was restored");
    assert!(stderr.contains("did not finish"), "{stderr}");

    // A new cluster from the backup.
    let restore_arg = backup_dir.to_str().unwrap().to_string();
    let mut t = TestCluster::start(3, 2, &["--restore", &restore_arg]);
    let mut c = t.client();
    let mut checked = 0;
    for (key, (value, version)) in &before {
        let got = c
            .get(key.as_bytes(), Consistency::Linearizable)
            .unwrap()
            .unwrap_or_else(|| panic!("{key} missing after the restore"));
        assert_eq!(
            (String::from_utf8_lossy(&got.value).as_ref(), got.version),
            (value.as_str(), *version),
            "{key}"
        );
        let ttl = key.trim_start_matches("cfg/").parse::<usize>().unwrap() % 10 == 0;
        assert_eq!(got.expire_at_ms != 0, ttl, "{key}: expiry");
        checked += 1;
    }
    for i in (0..3000).step_by(7) {
        let key = format!("cfg/{i}");
        assert!(
            c.get(key.as_bytes(), Consistency::Linearizable)
                .unwrap()
                .is_none(),
            "{key} was deleted"
        );
    }
    assert!(checked > 2500);
    // Versions go on past the restored ones.
    let (key, (_, version)) = before.iter().next().unwrap();
    let v = c
        .put(key.as_bytes(), b"after", PutOptions::default())
        .unwrap();
    assert!(v > *version, "new version {v} after restored {version}");
    // Splits take region ids the backup did not use.
    let ids: Vec<u64> = c.routes().iter().map(|r| r.region.id).collect();
    let r = c
        .routes()
        .iter()
        .find(|r| !r.region.is_meta())
        .unwrap()
        .region
        .id;
    corekv_tools::ctl::split(&mut c, r, None).unwrap();
    let new: Vec<u64> = c
        .routes()
        .iter()
        .map(|r| r.region.id)
        .filter(|id| !ids.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "one new region: {new:?}");
    // A restart with the same flags keeps the node's data (the backup is
    // not applied again).
    t.cluster.kill(0);
    t.cluster.start_node(0).unwrap();
    t.must_be_ready(Duration::from_secs(30));
    let got = c
        .get(key.as_bytes(), Consistency::Linearizable)
        .unwrap()
        .unwrap();
    assert_eq!((got.value.as_ref(), got.version), (&b"after"[..], v));
    corekv_tests::must_check_all(&mut c);
}
