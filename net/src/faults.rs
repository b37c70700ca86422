//! Fault injection for the raft transport, for tests and fault-injection
//! runs on real processes: a node started with `--fault-file PATH` reads
//! rules from that file (re-read when it changes) and applies them to raft
//! traffic. Client traffic is never touched.
//!
//! One rule per line; `#` starts a comment:
//!
//! | rule | effect |
//! |---|---|
//! | `isolate` | drop every raft message to and from other nodes |
//! | `drop-to N` | drop messages this node sends to node N |
//! | `drop-from N` | drop messages this node receives from node N |
//! | `loss P` | drop each outgoing frame with probability P (0..=1) |
//! | `delay-ms D` | hold each outgoing frame D ms before sending |
//! | `fail-log-write` | the next raft log write fails (the node must stop) |
//! | `stale-reads` | serve linearizable reads from the local replica without ReadIndex — breaks linearizability, for checking that the checker notices |
//!
//! An empty or missing file means no faults.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::SystemTime;

/// The rules in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultRules {
    /// Drop all raft traffic.
    pub isolate: bool,
    /// Nodes not sent to.
    pub drop_to: BTreeSet<u64>,
    /// Nodes not received from.
    pub drop_from: BTreeSet<u64>,
    /// Probability of losing an outgoing frame.
    pub loss: f64,
    /// Delay of outgoing frames, ms.
    pub delay_ms: u64,
    /// Make the log writer fail.
    pub fail_log_write: bool,
    /// Serve linearizable reads without ReadIndex (unsafe, testing only).
    pub stale_reads: bool,
}

impl FaultRules {
    /// Parses the file format above.
    pub fn parse(text: &str) -> Result<FaultRules, String> {
        let mut r = FaultRules::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let rule = words.next().unwrap_or("");
            let arg = words.next();
            let bad = |m: &str| format!("fault file line {}: {m}: {raw:?}", n + 1);
            let num = |a: Option<&str>| -> Result<u64, String> {
                a.ok_or_else(|| bad("missing number"))?
                    .parse()
                    .map_err(|_| bad("not a number"))
            };
            match rule {
                "isolate" if arg.is_none() => r.isolate = true,
                "fail-log-write" if arg.is_none() => r.fail_log_write = true,
                "stale-reads" if arg.is_none() => r.stale_reads = true,
                "drop-to" => {
                    r.drop_to.insert(num(arg)?);
                }
                "drop-from" => {
                    r.drop_from.insert(num(arg)?);
                }
                "delay-ms" => r.delay_ms = num(arg)?,
                "loss" => {
                    let p: f64 = arg
                        .ok_or_else(|| bad("missing probability"))?
                        .parse()
                        .map_err(|_| bad("not a probability"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(bad("probability outside 0..=1"));
                    }
                    r.loss = p;
                }
                _ => return Err(bad("unknown rule")),
            }
            if words.next().is_some() {
                return Err(bad("trailing words"));
            }
        }
        Ok(r)
    }

    /// True if messages to `node` are dropped.
    pub fn blocks_to(&self, node: u64) -> bool {
        self.isolate || self.drop_to.contains(&node)
    }

    /// True if messages from `node` are dropped.
    pub fn blocks_from(&self, node: u64) -> bool {
        self.isolate || self.drop_from.contains(&node)
    }
}

/// A rules file, re-read when its modification time changes.
pub struct FaultFile {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl FaultFile {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> FaultFile {
        FaultFile { path, seen: None }
    }

    /// The new rules if the file changed since the last call (a missing file
    /// means no faults). A file that does not parse keeps the old rules and
    /// returns the error.
    pub fn poll(&mut self) -> Option<Result<FaultRules, String>> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime == self.seen {
            return None;
        }
        self.seen = mtime;
        if mtime.is_none() {
            return Some(Ok(FaultRules::default()));
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => return Some(Err(format!("{}: {e}", self.path.display()))),
        };
        Some(FaultRules::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_apply() {
        let r = FaultRules::parse(
            "# comment\ndrop-to 2\ndrop-from 3 # one way\nloss 0.25\ndelay-ms 40\n",
        )
        .unwrap();
        assert!(r.blocks_to(2) && !r.blocks_to(3));
        assert!(r.blocks_from(3) && !r.blocks_from(2));
        assert_eq!((r.loss, r.delay_ms), (0.25, 40));
        let iso = FaultRules::parse("isolate").unwrap();
        assert!(iso.blocks_to(9) && iso.blocks_from(9));
        assert_eq!(FaultRules::parse("").unwrap(), FaultRules::default());
        for bad in ["drop-to", "drop-to x", "loss 2", "explode", "isolate now"] {
            assert!(FaultRules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_changes_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let mut f = FaultFile::new(path.clone());
        assert_eq!(f.poll(), None, "missing and unchanged");
        std::fs::write(&path, "isolate\n").unwrap();
        assert!(f.poll().unwrap().unwrap().isolate);
        assert_eq!(f.poll(), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.poll(), Some(Ok(FaultRules::default())));
    }
}
