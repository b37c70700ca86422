//! Helpers shared by the simulator test files.
#![allow(dead_code)]

use bytes::Bytes;
use corekv_engine::sim::{SimCluster, SimOptions};
use corekv_engine::{Condition, Config, Consistency, WriteOutcome, WriteRequest};

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> WriteRequest {
    WriteRequest::Put {
        key: b(key),
        value: b(value),
        ttl_ms: None,
        condition: Condition::None,
    }
}

pub fn cluster(regions: u64, seed: u64, config: Config) -> (tempfile::TempDir, SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 3,
            spare_nodes: 0,
            regions,
            seed,
            config,
            ..SimOptions::default()
        },
    )
    .unwrap();
    (dir, c)
}

pub fn must_elect(c: &mut SimCluster, region: u64) -> u64 {
    assert!(
        c.run_until(3000, |c| c.leader(region).is_some()).unwrap(),
        "no leader for region {region} within 3 s (seed {})",
        c.seed()
    );
    c.leader(region).unwrap()
}

pub fn must_put(c: &mut SimCluster, key: &str, value: &str) -> u64 {
    match c.write(put(key, value), 5000).unwrap() {
        WriteOutcome::Written { version } => version,
        other => panic!("unexpected {other:?}"),
    }
}

pub fn must_get(c: &mut SimCluster, key: &str) -> Option<Bytes> {
    c.get(key.as_bytes(), Consistency::Linearizable, 5000)
        .unwrap()
        .map(|v| v.value)
}

pub fn small_log_config() -> Config {
    Config {
        log_compact_entries: 200,
        log_retain_entries: 50,
        entry_cache_entries: 64,
        ..Config::default()
    }
}
