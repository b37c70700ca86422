//! A plain stderr logger for raft-rs inside the simulator, switched on with
//! `COREKV_SIM_LOG=1` when a seeded run needs a closer look.

use std::fmt::Write as _;

struct KvLine(String);

impl slog::Serializer for KvLine {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

struct StderrDrain;

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut line = KvLine(format!(
            "{} {}",
            record.level().as_short_str(),
            record.msg()
        ));
        let _ = slog::KV::serialize(&record.kv(), record, &mut line);
        let _ = slog::KV::serialize(values, record, &mut line);
        eprintln!("{}", line.0);
        Ok(())
    }
}

/// The logger the simulator hands to raft: stderr if `COREKV_SIM_LOG` is set,
/// otherwise nothing.
pub fn logger() -> slog::Logger {
    if std::env::var_os("COREKV_SIM_LOG").is_some() {
        slog::Logger::root(slog::Fuse(StderrDrain), slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}
