//! Property-based fuzzing of the `corekv` command line: any arguments give
//! a result or a message with a documented exit code, never a panic. The
//! endpoint is a closed loopback port, so commands that pass parsing fail
//! fast with "unavailable". (`corekv dev` is left out: it starts servers.)

use std::process::{Command, Stdio};

use proptest::prelude::*;

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("put".to_string()),
        Just("get".to_string()),
        Just("del".to_string()),
        Just("incr".to_string()),
        Just("ctl".to_string()),
        Just("status".to_string()),
        Just("regions".to_string()),
        Just("--json".to_string()),
        Just("--ttl".to_string()),
        Just("--if-absent".to_string()),
        Just("--if-version".to_string()),
        Just("--consistency".to_string()),
        Just("lease".to_string()),
        Just("--".to_string()),
        "-?[0-9]{0,20}",
        "\\PC{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_arguments_never_panic_the_cli(words in proptest::collection::vec(word(), 0..6)) {
        let out = Command::new(env!("CARGO_BIN_EXE_corekv"))
            .args(["--endpoints", "127.0.0.1:9", "--timeout-ms", "300"])
            .args(&words)
            .env_remove("COREKV_ENDPOINTS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The documented exit codes 0..=4 (usage errors are 2); 101 would be a panic,
        // None a signal.
        prop_assert!(
            matches!(code, Some(0..=4)),
            "corekv {:?} exited {:?}: {}",
            words,
            code,
            stderr
        );
        prop_assert!(!stderr.contains("panicked"), "{}", stderr);
    }
}
