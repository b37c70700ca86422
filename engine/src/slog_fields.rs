//! The key-value pairs of a raft-rs (slog) log record as text, for the
//! loggers that pass raft's records on (the simulator's stderr logger, the
//! node's `tracing` bridge).

use std::fmt::Write as _;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// ` key=value` for every pair of the record and of its logger, in order.
pub fn fields(record: &slog::Record<'_>, values: &slog::OwnedKVList) -> String {
    let mut f = Fields(String::new());
    let _ = slog::KV::serialize(&record.kv(), record, &mut f);
    let _ = slog::KV::serialize(values, record, &mut f);
    f.0
}
