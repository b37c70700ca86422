//! The run's report, and the end-of-run comparison of the replicas.

use super::*;

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Operations recorded (failed ones excluded).
    pub operations: usize,
    /// Operations that definitely did not apply.
    pub failed: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Operations by kind and outcome (`get ok`, `put unknown`, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Distinct keys.
    pub keys: usize,
    /// Faults injected, in order.
    pub faults: Vec<FaultEvent>,
    /// Keys whose history is not linearizable.
    pub anomalies: Vec<String>,
    /// Keys the checker could not decide.
    pub undecided: Vec<String>,
    /// A small failing sub-history of one anomalous key.
    pub smallest_failure: Vec<Operation>,
    /// Time spent checking.
    pub check_time: Duration,
    /// Time spent shrinking the first failure.
    pub minimize_time: Duration,
    /// Where the history was written.
    pub history_file: PathBuf,
    /// Changes the watcher saw.
    pub watch_events: usize,
    /// Changes the prefix watch saw.
    pub prefix_watch_events: usize,
    /// What the watcher saw wrong (and why it stopped, if it did).
    pub watch_anomalies: Vec<String>,
    /// The state of every watch stream when the watcher stopped, one line
    /// each (printed with the watch's problems).
    pub watch_streams: Vec<String>,
    /// Key generations the watch check left out, and why.
    pub watch_unchecked: Vec<String>,
    /// The consistency check's report (every replica against its leader).
    pub convergence: String,
    /// Replicas that differ from their leader or hold another value of a
    /// key than the cluster's final one, and nodes that failed to start
    /// again after a SIGKILL.
    pub divergence: Vec<String>,
    /// Keys read from every replica holding them at the end.
    pub replica_reads: usize,
}

impl Report {
    /// True when every key's history is linearizable, every watch saw
    /// exactly the committed changes and every replica agrees.
    pub fn ok(&self) -> bool {
        self.linearizable() && self.watch_anomalies.is_empty() && self.converged()
    }

    /// True when every replica matches its leader and every key read from
    /// every replica gave the final value (and every restart worked).
    pub fn converged(&self) -> bool {
        self.divergence.is_empty()
    }

    /// True when every key's history is linearizable (the watch aside).
    pub fn linearizable(&self) -> bool {
        self.anomalies.is_empty() && self.undecided.is_empty()
    }

    /// A human-readable summary.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.kind.name()).or_default() += 1;
        }
        let _ = writeln!(s, "seed:        {}", self.seed);
        let _ = writeln!(
            s,
            "operations:  {} recorded ({} unknown outcome), {} definitely failed",
            self.operations, self.unknown, self.failed
        );
        let _ = writeln!(s, "keys:        {}", self.keys);
        let _ = writeln!(
            s,
            "faults:      {} ({})",
            self.faults.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "by kind:     {}",
            self.by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "history:     {}", self.history_file.display());
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  fault {:>6.1}s - {:>6.1}s  {}",
                f.start_us as f64 / 1e6,
                f.end_us as f64 / 1e6,
                f.detail
            );
        }
        for u in &self.watch_unchecked {
            let _ = writeln!(s, "not watched: {u}");
        }
        if self.watch_anomalies.is_empty() {
            let _ = writeln!(
                s,
                "watch:       {} changes seen, each committed change once and in order",
                self.watch_events
            );
            let _ = writeln!(
                s,
                "prefix:      {} changes seen by one prefix watch, each committed change once \
                 and in order, nothing outside the prefix",
                self.prefix_watch_events
            );
        } else {
            let _ = writeln!(
                s,
                "watch:       {} changes seen ({} by the prefix watch), {} PROBLEM(S):",
                self.watch_events,
                self.prefix_watch_events,
                self.watch_anomalies.len()
            );
            for p in self.watch_anomalies.iter().take(20) {
                let _ = writeln!(s, "  {p}");
            }
            let _ = writeln!(s, "watch streams when the watcher stopped:");
            for l in &self.watch_streams {
                let _ = writeln!(s, "  {l}");
            }
        }
        let _ = writeln!(s, "checked in:  {:.2?}", self.check_time);
        for l in self.convergence.lines() {
            let _ = writeln!(s, "replicas:    {l}");
        }
        if self.divergence.is_empty() {
            let _ = writeln!(
                s,
                "replicas:    {} keys read from every replica: all hold the final value",
                self.replica_reads
            );
        } else {
            let _ = writeln!(
                s,
                "replicas:    DIVERGED: {} problem(s):",
                self.divergence.len()
            );
            for d in self.divergence.iter().take(20) {
                let _ = writeln!(s, "  {d}");
            }
        }
        if self.anomalies.is_empty() && self.undecided.is_empty() {
            let _ = writeln!(s, "verdict:     linearizable (every key)");
        } else {
            let _ = writeln!(
                s,
                "verdict:     NOT LINEARIZABLE: {} key(s) {:?}; undecided: {:?}",
                self.anomalies.len(),
                self.anomalies,
                self.undecided
            );
            let _ = writeln!(
                s,
                "smallest failing sub-history ({} ops, found in {:.2?}; call µs, return µs):",
                self.smallest_failure.len(),
                self.minimize_time
            );
            for o in &self.smallest_failure {
                let _ = writeln!(s, "  {}", describe(o));
            }
        }
        if !self.ok() {
            let _ = writeln!(s, "rerun with --seed {}", self.seed);
        }
        s
    }
}

/// The checks no client history makes, once every node is back and the
/// clients stopped: the consistency check of every region (retried while
/// some replica could not verify it, at most three times), then every key
/// in `keys` and `big_keys` read from every replica holding it, against
/// the cluster's linearizable value. Returns the check's report, the
/// problems found and how many keys were read everywhere.
pub(super) fn check_replicas(
    endpoints: &[String],
    keys: &std::collections::BTreeSet<String>,
    big_keys: &std::collections::BTreeSet<String>,
    progress: bool,
) -> anyhow::Result<(String, Vec<String>, usize)> {
    let mut cfg = admin_config(endpoints.to_vec());
    cfg.request_timeout = Duration::from_secs(10);
    let mut c = Client::connect(cfg)?;
    let mut problems = Vec::new();
    let mut text = String::new();
    for attempt in 1..=3 {
        let report = corekv_tools::ctl::check(&mut c, None, Duration::from_secs(20))?;
        text = report.text.clone();
        if !report.mismatched.is_empty() || report.ok() || attempt == 3 {
            if !report.ok() {
                problems.push(format!(
                    "consistency check: mismatched regions {:?}, unverified {:?}",
                    report.mismatched, report.unverified
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    if progress {
        eprintln!("consistency check done; reading every key from every replica");
    }
    let mut read = 0;
    for key in keys.iter().chain(big_keys) {
        let want = match c.get(key.as_bytes(), Consistency::Linearizable) {
            Ok(v) => v.map(|v| v.value),
            Err(e) => {
                problems.push(format!("key {key}: no final read: {e}"));
                continue;
            }
        };
        let h = corekv_engine::route_hash(key.as_bytes());
        let Some(route) = c.routes().iter().find(|r| r.region.contains(h)).cloned() else {
            problems.push(format!("key {key}: no region routes it"));
            continue;
        };
        for p in &route.region.peers {
            let Some(addr) = c.nodes().get(&p.node_id).cloned() else {
                continue;
            };
            let login = ADMIN_LOGIN
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match crate::read_on_node_with(
                &addr,
                &route.region,
                key.as_bytes(),
                login.as_ref(),
                super::tls().as_ref(),
            ) {
                Ok(got) if got == want => {}
                Ok(got) => problems.push(format!(
                    "key {key}: node {} holds {}, the cluster {}",
                    p.node_id,
                    shown(got.as_deref()),
                    shown(want.as_deref())
                )),
                Err(e) => problems.push(format!("key {key}: node {}: {e}", p.node_id)),
            }
        }
        read += 1;
    }
    Ok((text, problems, read))
}

/// A value as a problem line shows it: short values whole, long ones by
/// length and start.
pub(super) fn shown(v: Option<&[u8]>) -> String {
    match v {
        None => "nothing".into(),
        Some(b) if b.len() <= 40 => format!("{:?}", String::from_utf8_lossy(b)),
        Some(b) => format!(
            "{} bytes starting {:?}",
            b.len(),
            String::from_utf8_lossy(&b[..20])
        ),
    }
}
