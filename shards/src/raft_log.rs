//! Routes raft-rs' slog records into `tracing`, so one log filter governs both.

use std::fmt::Write as _;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut f = Fields(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut f);
        let _ = slog::KV::serialize(values, record, &mut f);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{}", f.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", f.0),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{}", f.0),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{}", f.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", f.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through `tracing`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Fuse(TracingDrain), slog::o!())
}
