//! A linearizability checker for per-key histories (Wing & Gong search with
//! Lowe's memoization, as in Porcupine and Knossos).
//!
//! Linearizability is local: a history is linearizable if and only if each
//! key's sub-history is, so [`check_key`] takes one key's operations (the
//! runner checks keys in parallel).
//!
//! The model of one key is a register holding an optional byte string:
//! `get`, `put`, `delete`, `cas` on the value, and `incr` on its decimal
//! value. An operation whose outcome is unknown (a timeout, a lost
//! connection) has no return event: it may take effect at any point after
//! its invocation, or never, and its output constrains nothing.

use std::collections::HashSet;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read.
    Get,
    /// Unconditional write.
    Put(String),
    /// Delete.
    Delete,
    /// Write `new` if the value is `expected` (`None` = absent).
    Cas {
        /// Expected value.
        expected: Option<String>,
        /// New value.
        new: String,
    },
    /// Add to the decimal value (absent = 0).
    Incr(i64),
}

/// What a client was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A read's value.
    Value(Option<String>),
    /// A put was applied.
    Written,
    /// A delete was applied; whether a value existed.
    Deleted(bool),
    /// A cas was applied (true) or its condition failed (false).
    Cas(bool),
    /// An incr's new value.
    Counter(i64),
    /// An incr on a value that is not a number.
    NotANumber,
}

/// One completed or pending operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Client (process) that ran it.
    pub client: u64,
    /// Key.
    pub key: String,
    /// Invocation time (µs since the run started).
    pub call: u64,
    /// Completion time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// Request.
    pub input: Input,
    /// Answer; `None` when the outcome is unknown.
    pub output: Option<Output>,
}

/// The register model: applies `input` to `state`.
pub fn step(state: &Option<String>, input: &Input) -> (Option<String>, Output) {
    match input {
        Input::Get => (state.clone(), Output::Value(state.clone())),
        Input::Put(v) => (Some(v.clone()), Output::Written),
        Input::Delete => (None, Output::Deleted(state.is_some())),
        Input::Cas { expected, new } => {
            if state == expected {
                (Some(new.clone()), Output::Cas(true))
            } else {
                (state.clone(), Output::Cas(false))
            }
        }
        Input::Incr(d) => {
            let current = match state {
                None => Some(0i64),
                Some(s) => s.parse::<i64>().ok(),
            };
            match current.and_then(|c| c.checked_add(*d)) {
                Some(n) => (Some(n.to_string()), Output::Counter(n)),
                None => (state.clone(), Output::NotANumber),
            }
        }
    }
}

/// Verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search gave up after this many steps.
    Undecided(u64),
}

/// Search steps per key before giving up.
pub const STEPS_MAX: u64 = 50_000_000;

/// Checks one key's operations (any order) starting from an absent value.
pub fn check_key(ops: &[Operation]) -> Verdict {
    check_key_with(ops, STEPS_MAX)
}

/// [`check_key`] with a step budget.
pub fn check_key_with(ops: &[Operation], steps_max: u64) -> Verdict {
    let mut ops: Vec<&Operation> = ops.iter().collect();
    ops.sort_by_key(|o| o.call);
    let n = ops.len();
    let ret = |i: usize| ops[i].ret.unwrap_or(u64::MAX);
    // Candidate order: ops with a known outcome first (they must be placed),
    // then the unknown ones (they may also never take effect).
    let order: Vec<usize> = (0..n)
        .filter(|&i| ops[i].output.is_some())
        .chain((0..n).filter(|&i| ops[i].output.is_none()))
        .collect();
    let known = order.iter().filter(|&&i| ops[i].output.is_some()).count();

    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
    let mut state: Option<String> = None;
    let mut placed_known = 0usize;
    // (position in `order` of the op placed, state before it)
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut cursor = 0usize;
    let mut steps = 0u64;
    loop {
        if placed_known == known {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > steps_max {
            return Verdict::Undecided(steps);
        }
        // Earliest completion among ops not yet placed: only ops invoked
        // before it may come next.
        let horizon = (0..n)
            .filter(|&i| !is_done(&done, i))
            .map(ret)
            .min()
            .unwrap_or(u64::MAX);
        let next = (cursor..order.len()).find(|&p| {
            let i = order[p];
            !is_done(&done, i) && ops[i].call < horizon
        });
        match next {
            Some(p) => {
                let i = order[p];
                let (after, out) = step(&state, &ops[i].input);
                let fits = ops[i].output.as_ref().is_none_or(|o| *o == out);
                if fits {
                    done[i / 64] |= 1 << (i % 64);
                    if seen.insert((done.clone(), after.clone())) {
                        stack.push((p, std::mem::replace(&mut state, after)));
                        if ops[i].output.is_some() {
                            placed_known += 1;
                        }
                        cursor = 0;
                        continue;
                    }
                    done[i / 64] &= !(1 << (i % 64));
                }
                cursor = p + 1;
            }
            None => {
                let Some((p, before)) = stack.pop() else {
                    return Verdict::NotLinearizable;
                };
                let i = order[p];
                done[i / 64] &= !(1 << (i % 64));
                if ops[i].output.is_some() {
                    placed_known -= 1;
                }
                state = before;
                cursor = p + 1;
            }
        }
    }
}

/// A small failing sub-history of one key's non-linearizable history.
///
/// Only reductions that keep it a real failure are made: the history is cut
/// at the earliest time by which it already fails (operations still running
/// then become pending), then reads and other operations that changed
/// nothing are dropped one by one while it still fails.
pub fn minimize(ops: &[Operation]) -> Vec<Operation> {
    let fails = |h: &[Operation]| check_key_with(h, STEPS_MAX / 10) == Verdict::NotLinearizable;
    let mut ends: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    ends.sort_unstable();
    ends.dedup();
    let cut = |t: u64| -> Vec<Operation> {
        ops.iter()
            .filter(|o| o.call <= t)
            .map(|o| {
                if o.ret.is_some_and(|r| r <= t) {
                    o.clone()
                } else {
                    Operation {
                        ret: None,
                        output: None,
                        ..o.clone()
                    }
                }
            })
            .collect()
    };
    // The earliest failing prefix (failing prefixes are closed upwards).
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&cut(ends[mid])) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut h = if lo < ends.len() {
        cut(ends[lo])
    } else {
        ops.to_vec()
    };
    h.sort_by_key(|o| o.call);
    let no_effect = |o: &Operation| {
        matches!(
            (&o.input, &o.output),
            (Input::Get, _)
                | (_, None)
                | (Input::Cas { .. }, Some(Output::Cas(false)))
                | (Input::Incr(_), Some(Output::NotANumber))
        )
    };
    // Drop no-effect operations in chunks, halving the chunk size when no
    // chunk can go (as in delta debugging), down to single operations.
    let mut chunk = h.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < h.len() {
            let end = (start + chunk).min(h.len());
            let without: Vec<Operation> = h
                .iter()
                .enumerate()
                .filter(|(i, o)| !(*i >= start && *i < end && no_effect(o)))
                .map(|(_, o)| o.clone())
                .collect();
            if without.len() < h.len() && fails(&without) {
                h = without;
                removed_any = true;
            } else {
                start = end;
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        if !removed_any {
            chunk = chunk.div_ceil(2);
        }
    }
    h
}

/// One operation as a line of text (also the history file format).
pub fn describe(o: &Operation) -> String {
    let input = match &o.input {
        Input::Get => "get".to_string(),
        Input::Put(v) => format!("put {v}"),
        Input::Delete => "delete".to_string(),
        Input::Cas { expected, new } => {
            format!("cas {} -> {new}", expected.as_deref().unwrap_or("<absent>"))
        }
        Input::Incr(d) => format!("incr {d}"),
    };
    let output = match &o.output {
        None => "unknown".to_string(),
        Some(Output::Value(None)) => "<absent>".to_string(),
        Some(Output::Value(Some(v))) => v.clone(),
        Some(Output::Written) => "ok".to_string(),
        Some(Output::Deleted(e)) => format!("existed={e}"),
        Some(Output::Cas(ok)) => if *ok { "ok" } else { "condition-failed" }.to_string(),
        Some(Output::Counter(n)) => n.to_string(),
        Some(Output::NotANumber) => "not-a-number".to_string(),
    };
    let ret = o.ret.map_or("-".to_string(), |r| r.to_string());
    format!(
        "{:>12} {:>12} client={:<3} key={} {input} => {output}",
        o.call, ret, o.client, o.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        call: u64,
        ret: Option<u64>,
        input: Input,
        output: Option<Output>,
    ) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            ret,
            input,
            output,
        }
    }
    fn put(c: u64, call: u64, ret: u64, v: &str) -> Operation {
        op(
            c,
            call,
            Some(ret),
            Input::Put(v.into()),
            Some(Output::Written),
        )
    }
    fn get(c: u64, call: u64, ret: u64, v: Option<&str>) -> Operation {
        op(
            c,
            call,
            Some(ret),
            Input::Get,
            Some(Output::Value(v.map(str::to_string))),
        )
    }

    #[test]
    fn sequential_histories() {
        let h = vec![
            put(1, 0, 1, "a"),
            get(1, 2, 3, Some("a")),
            put(1, 4, 5, "b"),
            get(2, 6, 7, Some("b")),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        let stale = vec![
            put(1, 0, 1, "a"),
            put(1, 2, 3, "b"),
            get(2, 4, 5, Some("a")),
        ];
        assert_eq!(check_key(&stale), Verdict::NotLinearizable);
        let from_nowhere = vec![get(1, 0, 1, Some("z"))];
        assert_eq!(check_key(&from_nowhere), Verdict::NotLinearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: either value is fine.
        for seen in [None, Some("a")] {
            let h = vec![put(1, 0, 10, "a"), get(2, 1, 5, seen)];
            assert_eq!(check_key(&h), Verdict::Linearizable, "{seen:?}");
        }
        // But two reads cannot see the write come and go.
        let h = vec![
            put(1, 0, 10, "a"),
            get(2, 1, 3, Some("a")),
            get(3, 4, 5, None),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn unknown_writes_may_apply_later_or_never() {
        let unknown = op(1, 0, None, Input::Put("a".into()), None);
        // Never applied.
        assert_eq!(
            check_key(&[unknown.clone(), get(2, 5, 6, None)]),
            Verdict::Linearizable
        );
        // Applied long after its client gave up.
        let h = vec![
            unknown.clone(),
            get(2, 5, 6, None),
            get(2, 100, 101, Some("a")),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // But once seen it cannot be unseen.
        let h = vec![unknown, get(2, 5, 6, Some("a")), get(2, 7, 8, None)];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        // And it cannot apply before it was invoked.
        let h = vec![
            get(2, 0, 1, Some("a")),
            op(1, 5, None, Input::Put("a".into()), None),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn cas_delete_and_incr() {
        let cas = |c, call, ret, e: Option<&str>, n: &str, ok| {
            op(
                c,
                call,
                Some(ret),
                Input::Cas {
                    expected: e.map(str::to_string),
                    new: n.into(),
                },
                Some(Output::Cas(ok)),
            )
        };
        // Two concurrent cas from the same value: only one may win.
        let h = vec![
            put(1, 0, 1, "a"),
            cas(1, 2, 10, Some("a"), "b", true),
            cas(2, 3, 9, Some("a"), "c", true),
        ];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
        let h = vec![
            put(1, 0, 1, "a"),
            cas(1, 2, 10, Some("a"), "b", true),
            cas(2, 3, 9, Some("a"), "c", false),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        let del = |c, call, ret, existed| {
            op(
                c,
                call,
                Some(ret),
                Input::Delete,
                Some(Output::Deleted(existed)),
            )
        };
        assert_eq!(
            check_key(&[del(1, 0, 1, false), put(1, 2, 3, "a"), del(2, 4, 5, true)]),
            Verdict::Linearizable
        );
        assert_eq!(
            check_key(&[put(1, 0, 1, "a"), del(2, 2, 3, false)]),
            Verdict::NotLinearizable
        );
        let incr = |c, call, ret: Option<u64>, n: Option<i64>| {
            op(c, call, ret, Input::Incr(1), n.map(Output::Counter))
        };
        // Two increments answered 1 and 2, one lost reply in between.
        let h = vec![
            incr(1, 0, Some(1), Some(1)),
            incr(2, 2, None, None),
            incr(1, 3, Some(4), Some(3)),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
        // The same increment counted twice is caught.
        let h = vec![incr(1, 0, Some(1), Some(1)), incr(1, 2, Some(3), Some(3))];
        assert_eq!(check_key(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 8 clients writing and reading one key in overlapping rounds; every
        // read sees the latest write of the previous round.
        let mut h = Vec::new();
        let mut last: Option<String> = None;
        for round in 0..300u64 {
            let t = round * 100;
            for c in 0..4 {
                h.push(put(c, t + c, t + 50 + c, &format!("v{round}-{c}")));
            }
            for c in 4..8 {
                h.push(get(c, t + c, t + 40, last.as_deref()));
            }
            last = Some(format!("v{round}-3"));
            // The write of client 3 lands last: a read after the round sees it.
            h.push(get(9, t + 60, t + 61, last.as_deref()));
        }
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }

    #[test]
    fn minimize_keeps_a_real_failure() {
        let mut h = Vec::new();
        for i in 0..50u64 {
            h.push(put(1, i * 10, i * 10 + 2, &format!("v{i}")));
            h.push(get(2, i * 10 + 3, i * 10 + 4, Some(&format!("v{i}"))));
        }
        // A stale read at the end.
        h.push(get(3, 1000, 1001, Some("v10")));
        let small = minimize(&h);
        assert_eq!(check_key(&small), Verdict::NotLinearizable);
        // Every read but the stale one is gone; the writes stay (dropping a
        // write could make a failure that the full history does not have).
        let reads: Vec<_> = small.iter().filter(|o| o.input == Input::Get).collect();
        assert_eq!(reads.len(), 1, "{small:#?}");
        assert_eq!(reads[0].call, 1000);
        assert_eq!(small.len(), 51);
    }
}
