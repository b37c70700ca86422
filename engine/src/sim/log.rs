//! A plain stderr logger for raft-rs inside the simulator, switched on with
//! `COREKV_SIM_LOG=1` when a seeded run needs a closer look.

struct StderrDrain;

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        eprintln!(
            "{} {}{}",
            record.level().as_short_str(),
            record.msg(),
            crate::slog_fields::fields(record, values)
        );
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
