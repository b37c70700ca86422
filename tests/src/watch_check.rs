//! Checks what a watch saw of one key against the operations recorded on it.
//!
//! A watch must show each committed change of the key once, in version order,
//! and nothing else. Against a history of operations with unique written
//! values that means:
//!
//! - versions strictly increase;
//! - every put seen carries a value some write of this key tried (never a
//!   value whose write was reported as not applied), and each value shows
//!   once;
//! - every acknowledged write shows, and two acknowledged writes where one
//!   returned before the other was called show in that order;
//! - counters go up by the increments, one at a time, and every
//!   acknowledged increment's result shows;
//! - the last change seen is the key's state in the final linearizable read.

use std::collections::{HashMap, HashSet};

use corekv_net::{Change, ChangeKind};

use crate::checker::{Input, Operation, Output};

/// Problems in the watch of `key` (empty: none). `ops` are the key's
/// recorded operations, `failed_values` the values of writes reported as not
/// applied, `final_read` the key's value in the last read after the run.
pub fn check_watch(
    key: &str,
    events: &[Change],
    ops: &[Operation],
    failed_values: &HashSet<String>,
    final_read: Option<Option<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let show = |c: &Change| {
        format!(
            "{} {:?} {}",
            c.version,
            c.kind,
            String::from_utf8_lossy(&c.value)
        )
    };
    for pair in events.windows(2) {
        if pair[0].version >= pair[1].version {
            problems.push(format!(
                "{key}: out of order or repeated: {} then {}",
                show(&pair[0]),
                show(&pair[1])
            ));
        }
    }
    let counter = ops.iter().any(|o| matches!(o.input, Input::Incr(_)));
    // Position of each value among the puts seen.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, c) in events.iter().enumerate() {
        if c.kind == ChangeKind::Put {
            let v = String::from_utf8_lossy(&c.value).into_owned();
            if seen.insert(v.clone(), i).is_some() && !counter {
                problems.push(format!("{key}: value {v} seen twice"));
            }
        }
    }
    if counter {
        let mut last = 0i64;
        for c in events {
            let now = match c.kind {
                ChangeKind::Put => String::from_utf8_lossy(&c.value).parse::<i64>().ok(),
                _ => Some(0),
            };
            match now {
                Some(n) if c.kind != ChangeKind::Put || n == last + 1 => last = n,
                Some(n) => {
                    problems.push(format!("{key}: counter went from {last} to {}", show(c)));
                    last = n;
                }
                None => problems.push(format!("{key}: counter value {}", show(c))),
            }
        }
        for o in ops {
            if let (Input::Incr(_), Some(Output::Counter(n))) = (&o.input, &o.output) {
                if !seen.contains_key(&n.to_string()) {
                    problems.push(format!("{key}: acknowledged increment to {n} not seen"));
                }
            }
        }
    } else {
        let tried: HashSet<&str> = ops
            .iter()
            .filter_map(|o| match &o.input {
                Input::Put(v) | Input::Cas { new: v, .. } => Some(v.as_str()),
                _ => None,
            })
            .collect();
        for v in seen.keys() {
            if failed_values.contains(v) {
                problems.push(format!(
                    "{key}: {v} shows, but its write was reported as not applied"
                ));
            } else if !tried.contains(v.as_str()) {
                problems.push(format!(
                    "{key}: {v} shows, but no write of this key tried it"
                ));
            }
        }
        // Acknowledged writes: present, and in real-time order.
        let mut acked: Vec<(&Operation, usize)> = Vec::new();
        for o in ops {
            let v = match (&o.input, &o.output) {
                (Input::Put(v), Some(Output::Written)) => v,
                (Input::Cas { new, .. }, Some(Output::Cas(true))) => new,
                _ => continue,
            };
            match seen.get(v) {
                Some(&i) => acked.push((o, i)),
                None => problems.push(format!("{key}: acknowledged write {v} not seen")),
            }
        }
        for (a, ia) in &acked {
            for (b, ib) in &acked {
                if a.ret.is_some_and(|r| r < b.call) && ia > ib {
                    problems.push(format!(
                        "{key}: write {:?} returned before {:?} was called but shows after it",
                        a.input, b.input
                    ));
                }
            }
        }
    }
    if let Some(fin) = final_read {
        let last = events.last().and_then(|c| match c.kind {
            ChangeKind::Put => Some(String::from_utf8_lossy(&c.value).into_owned()),
            _ => None,
        });
        if last != fin {
            problems.push(format!(
                "{key}: the last change seen leaves {last:?}, the final read gives {fin:?}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(version: u64, kind: ChangeKind, v: &str) -> Change {
        Change {
            key: Bytes::from_static(b"k"),
            kind,
            value: Bytes::copy_from_slice(v.as_bytes()),
            version,
            expire_at_ms: 0,
        }
    }

    fn op(call: u64, ret: Option<u64>, input: Input, output: Option<Output>) -> Operation {
        Operation {
            client: 1,
            key: "k".into(),
            call,
            ret,
            input,
            output,
        }
    }

    fn put(call: u64, ret: u64, v: &str) -> Operation {
        op(call, Some(ret), Input::Put(v.into()), Some(Output::Written))
    }

    #[test]
    fn a_faithful_watch_passes() {
        let ops = vec![
            put(0, 10, "a"),
            put(20, 30, "b"),
            op(40, None, Input::Put("c".into()), None),
            op(50, Some(60), Input::Delete, Some(Output::Deleted(true))),
        ];
        let events = vec![
            ev(5, ChangeKind::Put, "a"),
            ev(6, ChangeKind::Put, "b"),
            ev(7, ChangeKind::Put, "c"),
            ev(9, ChangeKind::Delete, ""),
        ];
        let p = check_watch("k", &events, &ops, &HashSet::new(), Some(None));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn missing_reordered_invented_and_failed_writes_are_caught() {
        let ops = vec![put(0, 10, "a"), put(20, 30, "b")];
        let failed: HashSet<String> = ["z".to_string()].into();
        let cases: Vec<(Vec<Change>, &str)> = vec![
            (vec![ev(5, ChangeKind::Put, "a")], "not seen"),
            (
                vec![ev(5, ChangeKind::Put, "b"), ev(6, ChangeKind::Put, "a")],
                "shows after",
            ),
            (
                vec![ev(6, ChangeKind::Put, "a"), ev(5, ChangeKind::Put, "b")],
                "out of order",
            ),
            (
                vec![
                    ev(5, ChangeKind::Put, "a"),
                    ev(6, ChangeKind::Put, "b"),
                    ev(7, ChangeKind::Put, "x"),
                ],
                "no write of this key",
            ),
            (
                vec![
                    ev(5, ChangeKind::Put, "a"),
                    ev(6, ChangeKind::Put, "b"),
                    ev(7, ChangeKind::Put, "z"),
                ],
                "reported as not applied",
            ),
            (
                vec![
                    ev(5, ChangeKind::Put, "a"),
                    ev(6, ChangeKind::Put, "b"),
                    ev(6, ChangeKind::Put, "b"),
                ],
                "seen twice",
            ),
        ];
        for (events, want) in cases {
            let p = check_watch("k", &events, &ops, &failed, None);
            assert!(p.iter().any(|s| s.contains(want)), "{want}: {p:?}");
        }
        let events = vec![ev(5, ChangeKind::Put, "a"), ev(6, ChangeKind::Put, "b")];
        let p = check_watch("k", &events, &ops, &failed, Some(Some("a".into())));
        assert!(p.iter().any(|s| s.contains("final read")), "{p:?}");
    }

    #[test]
    fn counters_go_up_one_at_a_time() {
        let ops = vec![
            op(0, Some(5), Input::Incr(1), Some(Output::Counter(1))),
            op(6, Some(9), Input::Incr(1), Some(Output::Counter(2))),
        ];
        let good = vec![ev(3, ChangeKind::Put, "1"), ev(4, ChangeKind::Put, "2")];
        assert!(check_watch("k", &good, &ops, &HashSet::new(), Some(Some("2".into()))).is_empty());
        let skipped = vec![ev(4, ChangeKind::Put, "2")];
        let p = check_watch("k", &skipped, &ops, &HashSet::new(), None);
        assert!(p.iter().any(|s| s.contains("went from 0")), "{p:?}");
        assert!(
            p.iter().any(|s| s.contains("increment to 1 not seen")),
            "{p:?}"
        );
    }
}
