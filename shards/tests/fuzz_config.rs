//! Property-based fuzzing of the node's settings: flags, the TOML file and
//! `--initial-cluster`. Any input gives a config or a message, never a
//! panic; valid settings come out as given. (Addresses are kept to digits
//! and punctuation so that no name lookup leaves the machine.)

use clap::Parser;
use corekv_shards::config::{parse_cluster, ServerArgs};
use proptest::prelude::*;

fn flag() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("--id"),
        Just("--data-dir"),
        Just("--peer-listen"),
        Just("--client-listen"),
        Just("--initial-cluster"),
        Just("--shards"),
        Just("--regions"),
        Just("--tick-ms"),
        Just("--election-ticks"),
        Just("--heartbeat-ticks"),
        Just("--request-timeout-ms"),
        Just("--value-bytes-max"),
        Just("--frame-bytes-max"),
        Just("--connections-max"),
        Just("--block-cache-mb"),
        Just("--slow-request-ms"),
        Just("--log-level"),
        Just("--bogus"),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,22}",
        "-[0-9]{1,5}",
        "127\\.0\\.0\\.1:[0-9]{1,6}",
        "[0-9]=127\\.0\\.0\\.1:[0-9]{1,5}(,[0-9]{1,3}=127\\.0\\.0\\.[0-9]:[0-9]{1,5}){0,3}",
        "[0-9.:=, ]{0,30}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_flags_never_panic(args in proptest::collection::vec((flag(), value()), 0..12)) {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["corekv-server".to_string()];
        for (f, v) in args {
            argv.push(f.to_string());
            if f == "--data-dir" {
                argv.push(dir.path().join("d").display().to_string());
            } else {
                argv.push(v);
            }
        }
        if let Ok(a) = ServerArgs::try_parse_from(&argv) {
            let _ = a.validate();
        }
        // Validation writes nothing.
        prop_assert!(!dir.path().join("d").exists());
    }

    #[test]
    fn arbitrary_toml_never_panics(text in "\\PC{0,300}") {
        if let Ok(a) = toml::from_str::<ServerArgs>(&text) {
            let _ = a.validate();
        }
    }

    #[test]
    fn arbitrary_toml_tables_never_panic(
        entries in proptest::collection::vec(("[a-z-]{1,20}", value()), 0..10),
        quoted in any::<bool>(),
    ) {
        let text: String = entries
            .iter()
            .map(|(k, v)| if quoted { format!("{k} = \"{v}\"\n") } else { format!("{k} = {v}\n") })
            .collect();
        if let Ok(a) = toml::from_str::<ServerArgs>(&text) {
            let _ = a.validate();
        }
    }

    #[test]
    fn arbitrary_cluster_strings_never_panic(s in "[0-9.:=, a-f\\[\\]]{0,60}") {
        // Letters only appear where they cannot form a resolvable host name
        // with a port: a lookup would fail locally.
        if !s.chars().any(|c| c.is_ascii_alphabetic()) || !s.contains(':') {
            let _ = parse_cluster(&s);
        }
    }

    #[test]
    fn valid_clusters_parse_as_written(
        nodes in proptest::collection::btree_map(1u64..=999, (1u8..=254, 1u16..=65535), 1..7),
    ) {
        let text: Vec<String> = nodes
            .iter()
            .map(|(id, (host, port))| format!("{id}=127.0.0.{host}:{port}"))
            .collect();
        let parsed = parse_cluster(&text.join(",")).unwrap();
        prop_assert_eq!(parsed.len(), nodes.len());
        for (id, (host, port)) in nodes {
            let a = parsed[&id];
            prop_assert_eq!(a.port(), port);
            prop_assert_eq!(a.ip().to_string(), format!("127.0.0.{host}"));
        }
    }
}
