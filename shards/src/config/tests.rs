//! Tests of the settings: defaults, the file, every refusal.

use super::*;
use clap::Parser;

fn args(extra: &[&str]) -> ServerArgs {
    let mut flags = vec![
        ("--id", "1"),
        ("--data-dir", "/tmp/x"),
        ("--peer-listen", "127.0.0.1:7201"),
        ("--client-listen", "127.0.0.1:7101"),
        ("--initial-cluster", "1=127.0.0.1:7201,2=127.0.0.1:7202"),
    ];
    for pair in extra.chunks(2) {
        match flags.iter_mut().find(|(f, _)| *f == pair[0]) {
            Some(slot) => slot.1 = pair[1],
            None => flags.push((pair[0], pair[1])),
        }
    }
    let mut v = vec!["corekv-server"];
    for (f, val) in flags {
        v.push(f);
        v.push(val);
    }
    ServerArgs::try_parse_from(v).unwrap()
}

#[test]
fn valid_flags_give_a_config() {
    let c = args(&["--shards", "2", "--regions", "16"])
        .validate()
        .unwrap();
    assert_eq!(c.node_id, 1);
    assert_eq!(c.shards, 2);
    assert_eq!(c.regions, 16);
    assert_eq!(c.initial_cluster.len(), 2);
}

#[test]
fn a_memory_budget_is_divided_over_caches_and_memtables() {
    let c = args(&["--shards", "2", "--memory-budget-mb", "256"])
        .validate()
        .unwrap();
    assert_eq!(c.db.block_cache_bytes, 128 << 20);
    assert_eq!(c.engine.read_cache_bytes, 32 << 20);
    assert_eq!(c.db.write_buffer_bytes, (256 << 20) / 28);
    let s = split_memory_budget(1 << 30, 3);
    // Block cache, every shard's cache and every memtable (two each of
    // raft, data, meta, and of history at half size) fit.
    assert!(
        s.block_cache_bytes + 3 * s.read_cache_bytes_per_shard + 7 * s.write_buffer_bytes
            <= 1 << 30
    );
    let e = args(&["--memory-budget-mb", "32"]).validate().unwrap_err();
    assert!(e.to_string().contains("minimum"), "{e}");
    let e = args(&["--memory-budget-mb", "128", "--block-cache-mb", "64"])
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn invalid_settings_say_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["--shards", "0"], "--shards"),
        (&["--regions", "0"], "--regions"),
        (&["--id", "5"], "does not list this node"),
        (&["--peer-listen", "127.0.0.1:9999"], "--peer-listen is"),
        (&["--initial-cluster", "x=1"], "is not a node id"),
        (
            &["--initial-cluster", "1=nohost"],
            "--initial-cluster address",
        ),
        (&["--value-bytes-max", "99999999"], "value_bytes_max"),
        (&["--heartbeat-ticks", "50"], "election_tick"),
        (&["--split-load-windows", "0"], "--split-load-windows"),
        (&["--shard-ports", "many"], "auto, off, or a first port"),
        (
            &["--shard-ports", "65535", "--shards", "2"],
            "outside 1..=65535",
        ),
        (
            &["--shard-ports", "7100", "--shards", "2"],
            "include --client-listen",
        ),
    ];
    for (extra, needle) in cases {
        let err = args(extra).validate().unwrap_err();
        assert!(err.to_string().contains(needle), "{extra:?}: {err}");
    }
    let missing = ServerArgs::try_parse_from(["corekv-server"]).unwrap();
    assert_eq!(
        missing.validate().unwrap_err(),
        ConfigError::Missing("--id")
    );
    assert_eq!(
        args(&["--shards", "0"]).validate().unwrap_err(),
        ConfigError::OutOfRange {
            flag: "--shards",
            value: 0,
            min: 1,
            max: SHARDS_MAX as u64
        }
    );
}

#[test]
fn shard_ports_are_automatic_off_or_counted_from_a_first_port() {
    let client: SocketAddr = "127.0.0.1:7101".parse().unwrap();
    let c = args(&["--shards", "2"]).validate().unwrap();
    assert_eq!(c.shard_ports, ShardPortMode::Auto);
    assert_eq!(
        c.shard_ports.addr(client, 1),
        Some("127.0.0.1:0".parse().unwrap())
    );
    let c = args(&["--shards", "2", "--shard-ports", "off"])
        .validate()
        .unwrap();
    assert_eq!(c.shard_ports.addr(client, 0), None);
    let c = args(&["--shards", "3", "--shard-ports", "7300"])
        .validate()
        .unwrap();
    assert_eq!(c.shard_ports, ShardPortMode::From(7300));
    assert_eq!(
        c.shard_ports.addr(client, 2),
        Some("127.0.0.1:7302".parse().unwrap())
    );
}

#[test]
fn the_documented_example_file_is_valid() {
    let file: ServerArgs = toml::from_str(include_str!("../../../docs/node.example.toml")).unwrap();
    let c = file.validate().unwrap();
    assert_eq!(c.node_id, 1);
    assert_eq!(c.initial_cluster.len(), 3);
}

#[test]
fn file_settings_are_overridden_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "id = 2\ndata-dir = \"/tmp/n2\"\npeer-listen = \"127.0.0.1:7202\"\nclient-listen = \"127.0.0.1:7102\"\ninitial-cluster = \"1=127.0.0.1:7201,2=127.0.0.1:7202\"\nshards = 3\n",
    )
    .unwrap();
    let a = ServerArgs::try_parse_from([
        "corekv-server",
        "--config",
        path.to_str().unwrap(),
        "--shards",
        "1",
    ])
    .unwrap();
    let c = a.merge_file().unwrap().validate().unwrap();
    assert_eq!(c.node_id, 2);
    assert_eq!(c.shards, 1, "flag wins");
    std::fs::write(&path, "bogus-key = 1\n").unwrap();
    let a =
        ServerArgs::try_parse_from(["corekv-server", "--config", path.to_str().unwrap()]).unwrap();
    match a.merge_file().unwrap_err() {
        ConfigError::File { reason, .. } => assert!(reason.contains("bogus-key"), "{reason}"),
        e => panic!("expected a file error, got {e}"),
    }
}

#[test]
fn a_node_key_file_must_hold_a_long_secret_without_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let with = |content: &str| {
        std::fs::write(&path, content).unwrap();
        args(&["--auth-key-file", path.to_str().unwrap()]).validate()
    };
    let good = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        with(&format!("{good}\n")).unwrap().node_key.as_deref(),
        Some(good)
    );
    let short = with("0123456789").unwrap_err().to_string();
    assert!(
        short.contains("10 characters") && short.contains("openssl rand"),
        "{short}"
    );
    assert!(with(&format!("{good} {good}"))
        .unwrap_err()
        .to_string()
        .contains("whitespace"));
    let missing = args(&["--auth-key-file", "/nonexistent/node.key"]).validate();
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/node.key"));
    assert!(args(&[]).validate().unwrap().node_key.is_none());
}
