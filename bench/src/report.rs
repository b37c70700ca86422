//! Latency histograms per operation type, error counts, and the final report
//! (a table, or one JSON object).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Operation types measured separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A get.
    Read,
    /// A put.
    Write,
}

/// Counters and histograms of one worker (merged at the end).
#[derive(Clone)]
pub struct Stats {
    /// Read latencies, µs.
    pub read: Histogram<u64>,
    /// Write latencies, µs.
    pub write: Histogram<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            read: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            write: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Records a completed operation.
    #[inline]
    pub fn record(&mut self, kind: OpKind, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
        let h = match kind {
            OpKind::Read => &mut self.read,
            OpKind::Write => &mut self.write,
        };
        let _ = h.record(us);
    }

    /// Counts a failed operation.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Adds `other` into this.
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.read.add(&other.read);
        let _ = self.write.add(&other.write);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Clears everything (end of warm-up).
    pub fn reset(&mut self) {
        self.read.reset();
        self.write.reset();
        self.errors.clear();
    }
}

/// What a run measured.
pub struct Report {
    /// `corekv` or `redis://...`.
    pub target: String,
    /// Workload name.
    pub workload: String,
    /// Key distribution name.
    pub distribution: String,
    /// Consistency of reads.
    pub consistency: String,
    /// Measured time.
    pub elapsed: Duration,
    /// Merged stats.
    pub stats: Stats,
    /// CPU of the server processes over the measured time, when they run
    /// on this machine.
    pub server_cpu: Option<crate::cpu::ServerCpu>,
}

fn op_json(h: &Histogram<u64>, secs: f64) -> serde_json::Value {
    json!({
        "ops": h.len(),
        "ops_per_sec": (h.len() as f64 / secs).round(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

impl Report {
    /// Operations per second over the measured time.
    pub fn ops_per_sec(&self) -> f64 {
        (self.stats.read.len() + self.stats.write.len()) as f64 / self.elapsed.as_secs_f64()
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64();
        json!({
            "target": self.target,
            "workload": self.workload,
            "distribution": self.distribution,
            "consistency": self.consistency,
            "seconds": secs,
            "ops_per_sec": self.ops_per_sec().round(),
            "read": op_json(&self.stats.read, secs),
            "write": op_json(&self.stats.write, secs),
            "errors": self.stats.errors,
            "server_cpu_us_per_op": self.server_cpu.map(|c| (c.us_per_op() * 100.0).round() / 100.0),
            "server_cpu": self.server_cpu.map(|c| json!({
                "processes": c.processes,
                "user_us_per_op": (c.user_us_per_op * 100.0).round() / 100.0,
                "system_us_per_op": (c.system_us_per_op * 100.0).round() / 100.0,
                "cores": (c.cores * 100.0).round() / 100.0,
            })),
        })
    }

    /// The report as a table.
    pub fn to_table(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = format!(
            "target {}  workload {}  keys {}  reads {}  {:.1} s\n",
            self.target, self.workload, self.distribution, self.consistency, secs
        );
        s += &format!("total {:>12.0} ops/s\n", self.ops_per_sec());
        s += "op          ops/s      p50 µs      p99 µs    p99.9 µs      max µs\n";
        for (name, h) in [("read", &self.stats.read), ("write", &self.stats.write)] {
            if h.is_empty() {
                continue;
            }
            s += &format!(
                "{name:<5} {:>12.0} {:>11} {:>11} {:>11} {:>11}\n",
                h.len() as f64 / secs,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        match self.server_cpu {
            Some(c) => {
                s += &format!(
                    "server cpu {:.2} µs/op (user {:.2}, system {:.2}) over {} process(es), {:.2} cores busy\n",
                    c.us_per_op(),
                    c.user_us_per_op,
                    c.system_us_per_op,
                    c.processes,
                    c.cores
                );
            }
            None => {
                s += "server cpu: not measured (no local process listens on the target ports)\n"
            }
        }
        if self.stats.errors.is_empty() {
            s += "errors: none\n";
        } else {
            s += "errors:";
            for (k, v) in &self.stats.errors {
                s += &format!(" {k}={v}");
            }
            s += "\n";
        }
        s
    }
}
