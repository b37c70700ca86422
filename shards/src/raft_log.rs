//! Routes raft-rs' slog records into `tracing`, so one log filter governs both.

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let f = corekv_engine::slog_fields::fields(record, values);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{f}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{f}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{f}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{f}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{f}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through `tracing`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Fuse(TracingDrain), slog::o!())
}
