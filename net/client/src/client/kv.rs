//! Reads and writes: get, put, delete, incr, cas, batches.

use super::*;

/// What became of one write of a pipelined frame, as far as a redo cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FateKind {
    /// Answered.
    Done,
    /// Refused before it was proposed: not applied.
    Refused,
    /// Maybe applied (no answer, or a timeout).
    Uncertain,
}

/// What to do with one write of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redo {
    /// Keep its answer.
    Keep,
    /// Send it again (refused: with a new tag; uncertain: as a retry).
    Send,
    /// Do not send it again: report it as it stands.
    Leave,
}

/// The redo of a frame: the last write that is, or may be, applied splits
/// it. Nothing open before it is sent again (it would land after it);
/// after it every write was refused and goes again, in order; it itself,
/// if uncertain, is retried with its tag.
fn redo_plan(fates: &[FateKind]) -> Vec<Redo> {
    let last = fates
        .iter()
        .rposition(|f| matches!(f, FateKind::Done | FateKind::Uncertain));
    fates
        .iter()
        .enumerate()
        .map(|(j, f)| match f {
            FateKind::Done => Redo::Keep,
            _ if last.is_some_and(|l| j < l) => Redo::Leave,
            _ => Redo::Send,
        })
        .collect()
}

/// Writes of one client in one frame at most. A region remembers the last
/// `RESULTS_PER_CLIENT` outcomes of each client, so while a frame's writes
/// are retried after a lost answer, each of them is still remembered if
/// it was applied: a retry is never applied twice.
pub const PIPELINED_WRITES_MAX: usize = 16;
const _: () = assert!(PIPELINED_WRITES_MAX <= corekv_types::session::RESULTS_PER_CLIENT);

/// The write a put with `opts` sends (both clients).
pub(crate) fn put_request(key: &[u8], value: &[u8], opts: PutOptions) -> Result<WriteRequest> {
    let condition = match (opts.if_absent, opts.if_version) {
        (false, None) => Condition::None,
        (true, None) => Condition::IfAbsent,
        (false, Some(v)) => Condition::IfVersion(v),
        (true, Some(_)) => {
            return Err(ClientError::Invalid {
                code: ErrorCode::InvalidRequest,
                message: "if_absent and if_version together".into(),
            })
        }
    };
    Ok(WriteRequest::Put {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl_ms: opts.ttl.map(|t| t.as_millis().max(1) as u64),
        condition,
    })
}

impl Client {
    /// Reads `key`.
    pub fn get(&mut self, key: &[u8], consistency: Consistency) -> Result<Option<Value>> {
        let op = Op::Get {
            key: Bytes::copy_from_slice(key),
            consistency,
        };
        match self.execute(key, op, true)? {
            (Outcome::Value(v), _) => Ok(v.map(|r| Value {
                value: r.value,
                version: r.version,
                expire_at_ms: r.expire_at_ms,
            })),
            (other, _) => Err(ClientError::Protocol(format!("get answered {other:?}"))),
        }
    }

    /// Writes `key`; returns the new version.
    pub fn put(&mut self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<u64> {
        let w = put_request(key, value, opts)?;
        let (_, f) = self.execute(key, Op::Write(w), false)?;
        Ok(f.version)
    }

    /// Deletes `key`; returns whether a live value was removed.
    pub fn delete(&mut self, key: &[u8], if_version: Option<u64>) -> Result<bool> {
        let w = WriteRequest::Delete {
            key: Bytes::copy_from_slice(key),
            if_version,
        };
        let (_, f) = self.execute(key, Op::Write(w), false)?;
        Ok(f.existed)
    }

    /// Adds `delta` to the integer at `key`; returns the new value.
    pub fn incr(&mut self, key: &[u8], delta: i64) -> Result<i64> {
        let w = WriteRequest::Incr {
            key: Bytes::copy_from_slice(key),
            delta,
        };
        let (_, f) = self.execute(key, Op::Write(w), false)?;
        Ok(f.counter)
    }

    /// Replaces the value of `key` if it is `expected` (`None` = absent);
    /// returns the new version.
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<u64> {
        let w = WriteRequest::Cas {
            key: Bytes::copy_from_slice(key),
            expected: expected.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            ttl_ms: ttl.map(|t| t.as_millis().max(1) as u64),
        };
        let (_, f) = self.execute(key, Op::Write(w), false)?;
        Ok(f.version)
    }

    /// Applies `ops` atomically in one raft entry if every check holds (all
    /// keys in one region); returns the version written. A failed check is
    /// [`ClientError::ConditionFailed`] and nothing is written.
    pub fn txn(&mut self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> Result<u64> {
        let Some(first) = checks
            .first()
            .map(|c| c.key.clone())
            .or_else(|| ops.first().map(|o| o.key().clone()))
        else {
            return Err(ClientError::Invalid {
                code: ErrorCode::InvalidRequest,
                message: "transaction without a key".into(),
            });
        };
        // The wire writes "no expiry" as 0: a relative one of 0 ms cannot
        // travel (and is refused by the cluster anyway).
        if ops.iter().any(|o| {
            matches!(
                o,
                TxnOp::Put {
                    expiry: corekv_types::Expiry::After(0),
                    ..
                }
            )
        }) {
            return Err(ClientError::Invalid {
                code: ErrorCode::InvalidRequest,
                message: "invalid request: ttl must be > 0".into(),
            });
        }
        let (_, f) = self.execute(&first, Op::Write(WriteRequest::Txn { checks, ops }), false)?;
        Ok(f.version)
    }

    /// The id of the region that holds `key`, as the client's routing table
    /// says (loading it first if need be); 0 if not known.
    pub fn region_of(&mut self, key: &[u8]) -> u64 {
        let hash = route_hash(key);
        if self.route_index(hash).is_none() {
            let _ = self.refresh();
        }
        self.route_index(hash)
            .map_or(0, |i| self.routes[i].region.id)
    }

    /// Reads `keys` in order, as a pipeline of gets: when they are all in
    /// one region and linearizable, in one frame to its leader, which
    /// serves them in order (one round of reads, unless the frame spans
    /// rounds). From the first that did not succeed
    /// that way (leader moved, connection lost, ...), the rest are read
    /// again one by one, in order, with the usual retries; keys of several
    /// regions are read one by one. Either way each read sees every write
    /// acknowledged before the call, and a read never sees an older state
    /// than the one before it.
    pub fn get_pipelined(
        &mut self,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        let mut out: Vec<Result<Option<Value>>> = Vec::with_capacity(keys.len());
        // Linearizable reads only: their batches are served in the order
        // they arrive; a lease read arriving later may be served from the
        // state before an earlier one that waits for its quorum check.
        let one_region = keys.len() > 1
            && consistency == Consistency::Linearizable
            && self.route_index(route_hash(&keys[0])).is_some_and(|i| {
                keys.iter()
                    .all(|k| self.route_index(route_hash(k)) == Some(i))
            });
        if one_region {
            let i = self
                .route_index(route_hash(&keys[0]))
                .expect("checked above");
            let deadline = Instant::now() + self.cfg.request_timeout;
            self.learn_shard_ports(i, deadline);
            if let Some((node, addr)) = self.target(i, 1) {
                let (region_id, epoch) = (self.routes[i].region.id, self.routes[i].region.epoch);
                let reqs: Vec<Request> = keys
                    .iter()
                    .map(|k| Request {
                        id: self.new_id(),
                        region_id,
                        epoch,
                        op: Op::Get {
                            key: k.clone(),
                            consistency,
                        },
                        session: None,
                        system: self.cfg.system,
                    })
                    .collect();
                match self.call(&addr, &reqs, deadline) {
                    Ok(rs) => {
                        for (resp, _) in rs {
                            match resp.result {
                                Ok(Outcome::Value(v)) => out.push(Ok(v.map(|r| Value {
                                    value: r.value,
                                    version: r.version,
                                    expire_at_ms: r.expire_at_ms,
                                }))),
                                // Refused (not the leader any more, ...):
                                // this one and the rest go one by one.
                                _ => break,
                            }
                        }
                    }
                    Err(CallError::NotSent(_) | CallError::Lost(_)) => {
                        self.mark_down(node);
                        self.routes[i].leader_node = 0;
                    }
                }
            }
        }
        for k in &keys[out.len()..] {
            let r = self.get(k, consistency);
            out.push(r);
        }
        out
    }

    /// Applies `writes` in order, as a pipeline: when every key is in one
    /// region, in one frame to its leader, which proposes them one after
    /// another in one round, so the log applies them in this order. Each
    /// carries its own session tag, so an uncertain one is retried exactly
    /// once. From the first that was refused (leader moved, ...) or got no
    /// answer, the rest go one by one, in order, with the usual retries (an
    /// unanswered one with its tag, as a retry), but only those after the
    /// last one that is or may be applied: one before it is not sent again
    /// (it would land after it; order comes first) and is reported
    /// [`ClientError::NotApplied`] if it was refused, `Unknown` if its answer
    /// was lost. Writes of several regions go one by one.
    pub fn write_pipelined(
        &mut self,
        mut writes: Vec<WriteRequest>,
    ) -> Vec<Result<(Outcome, ResponseFields)>> {
        if writes.len() > PIPELINED_WRITES_MAX {
            // In frames of at most that many, one after another.
            let rest = writes.split_off(PIPELINED_WRITES_MAX);
            let mut out = self.write_pipelined(writes);
            out.extend(self.write_pipelined(rest));
            return out;
        }
        let route_of = |c: &Self, w: &WriteRequest| -> Option<usize> {
            let mut keys = w.keys();
            let i = c.route_index(route_hash(keys.next()?))?;
            keys.all(|k| c.route_index(route_hash(k)) == Some(i))
                .then_some(i)
        };
        let first = writes.first().and_then(|w| route_of(self, w));
        let one_region = writes.len() > 1
            && first.is_some()
            && writes.iter().all(|w| route_of(self, w) == first);
        let sequential = |c: &mut Self, ws: Vec<WriteRequest>| -> Vec<_> {
            ws.into_iter()
                .map(|w| {
                    let key = w.keys().next().cloned().unwrap_or_default();
                    c.execute(&key, Op::Write(w), false)
                })
                .collect()
        };
        let (true, Some(i)) = (one_region, first) else {
            return sequential(self, writes);
        };
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.learn_shard_ports(i, deadline);
        let Some((node, addr)) = self.target(i, 1) else {
            return sequential(self, writes);
        };
        let (region_id, epoch) = (self.routes[i].region.id, self.routes[i].region.epoch);
        let tags: Vec<SessionTag> = writes.iter().map(|_| self.new_tag()).collect();
        let reqs: Vec<Request> = writes
            .iter()
            .zip(&tags)
            .map(|(w, tag)| Request {
                id: self.new_id(),
                region_id,
                epoch,
                op: Op::Write(w.clone()),
                session: Some(*tag),
                system: self.cfg.system,
            })
            .collect();
        /// What became of one write of the frame.
        enum Fate {
            Done(Result<(Outcome, ResponseFields)>),
            /// Refused before it was proposed: not applied.
            Refused(String),
            /// Maybe applied.
            Uncertain(String),
        }
        let (got, failure) = self.call_partial(&addr, &reqs, deadline);
        if failure.is_some() {
            self.mark_down(node);
            self.routes[i].leader_node = 0;
        }
        let mut rerouted = false;
        let fates: Vec<Fate> = got
            .into_iter()
            .map(|r| match r {
                Some((resp, f)) => match resp.result {
                    Ok(o) => Fate::Done(Ok((o, f))),
                    Err(e) => {
                        let code = e.code();
                        match code {
                            ErrorCode::NotLeader
                            | ErrorCode::EpochNotMatch
                            | ErrorCode::RegionNotFound
                            | ErrorCode::Busy
                            | ErrorCode::ProposalDropped
                            | ErrorCode::ShuttingDown => {
                                if !rerouted {
                                    rerouted = true;
                                    let _ = self.routes.on_error(i, &e);
                                }
                                Fate::Refused(format!("{addr}: {e}"))
                            }
                            ErrorCode::Timeout => Fate::Uncertain(format!("{addr}: {e}")),
                            _ => Fate::Done(Err(wire_to_client(e))),
                        }
                    }
                },
                None => match &failure {
                    Some(CallError::NotSent(e)) => Fate::Refused(e.clone()),
                    Some(CallError::Lost(e)) => Fate::Uncertain(e.clone()),
                    None => Fate::Uncertain("no answer".into()),
                },
            })
            .collect();
        let kinds: Vec<FateKind> = fates
            .iter()
            .map(|f| match f {
                Fate::Done(_) => FateKind::Done,
                Fate::Refused(_) => FateKind::Refused,
                Fate::Uncertain(_) => FateKind::Uncertain,
            })
            .collect();
        let plan = redo_plan(&kinds);
        let mut out = Vec::with_capacity(writes.len());
        for (((fate, w), tag), step) in fates.into_iter().zip(writes).zip(tags).zip(plan) {
            let before_last = step == Redo::Leave;
            out.push(match fate {
                Fate::Done(r) => r,
                Fate::Refused(last) if before_last => Err(ClientError::NotApplied(format!(
                    "{last}; not sent again: a later write of the same frame may be applied, \
                     and order comes first"
                ))),
                Fate::Uncertain(last) if before_last => Err(ClientError::Unknown(last)),
                Fate::Refused(_) => {
                    // Never applied: a new write with a new tag.
                    let by = RouteBy::Hash(route_hash(w.keys().next().expect("a write has a key")));
                    self.execute_tagged(by, Op::Write(w), false, None)
                }
                Fate::Uncertain(_) => {
                    let by = RouteBy::Hash(route_hash(w.keys().next().expect("a write has a key")));
                    let retry = SessionTag { retry: true, ..tag };
                    self.execute_tagged(by, Op::Write(w), false, Some(retry))
                }
            });
        }
        out
    }

    /// One page of the cluster's live keys in routing-hash order, from
    /// `from_hash` (0: the start), read linearizably from the region that
    /// holds that hash: at most `limit` keys (1..=10000; more when several
    /// share the last hash), with their values unless `keys_only`. Returns
    /// the keys and where the next page starts (`None`: every region was
    /// read). Following the pages from 0 visits every key that lives from
    /// the first page to the last exactly once, whatever splits or leader
    /// moves happen in between: a page never spans regions, and its
    /// continuation is a hash, not a region.
    #[allow(clippy::type_complexity)]
    pub fn scan_page(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Value)>, Option<u64>)> {
        self.scan_prefix_page(from_hash, limit, keys_only, &[])
    }

    /// Like [`Client::scan_page`], with only the keys that begin with
    /// `prefix` (the node filters; a page still looks at the same records,
    /// so a page may hold few keys or none and still be followed by more).
    /// A user with read on `prefix` may scan it.
    #[allow(clippy::type_complexity)]
    pub fn scan_prefix_page(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
        prefix: &[u8],
    ) -> Result<(Vec<(Bytes, Value)>, Option<u64>)> {
        let op = Op::Scan {
            from_hash,
            limit,
            keys_only,
            consistency: Consistency::Linearizable,
            prefix: Bytes::copy_from_slice(prefix),
        };
        match self.execute_on(RouteBy::Hash(from_hash), op, true)? {
            (
                Outcome::Scanned {
                    items, next_hash, ..
                },
                _,
            ) => Ok((
                items
                    .into_iter()
                    .map(|c| {
                        (
                            c.key,
                            Value {
                                value: c.value,
                                version: c.version,
                                expire_at_ms: c.expire_at_ms,
                            },
                        )
                    })
                    .collect(),
                next_hash,
            )),
            (other, _) => Err(ClientError::Protocol(format!("scan answered {other:?}"))),
        }
    }

    /// Every live key beginning with `prefix` and after `after` (None: from
    /// the first), in key order, at most `limit`: with their values unless
    /// `keys_only`. Keys are spread over every region by hash, so this reads
    /// every region's part of the prefix (each part a linearizable read of
    /// its region; together not one snapshot) and sorts them: its cost is
    /// the number of keys in the cluster, not in the answer. The second
    /// value is true when more keys follow the last one returned (continue
    /// with `after` = that key). `progress` hears after each page how many
    /// keys under the prefix it has seen so far.
    #[allow(clippy::type_complexity)]
    pub fn list_prefix(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
        mut progress: impl FnMut(usize),
    ) -> Result<(Vec<(Bytes, Value)>, bool)> {
        let mut found: Vec<(Bytes, Value)> = Vec::new();
        let mut matched = 0usize;
        let mut from = Some(0u64);
        while let Some(h) = from {
            let (items, next) = self.scan_prefix_page(h, 10_000, keys_only, prefix)?;
            matched += items.len();
            // (The node filters by prefix; a node that does not know the
            // field would send every key, so the prefix is checked here too.)
            found.extend(
                items
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| &k[..] > a)),
            );
            // Keep only the first `limit` (and one more, to know if there
            // are more): memory stays bounded by the answer.
            if found.len() > limit.saturating_mul(2).max(1024) {
                found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                found.truncate(limit.saturating_add(1));
            }
            progress(matched);
            from = next;
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = found.len() > limit;
        found.truncate(limit);
        Ok((found, more))
    }

    /// Reads several keys; one result per key, in order.
    pub fn batch_get(
        &mut self,
        keys: &[&[u8]],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        keys.iter().map(|k| self.get(k, consistency)).collect()
    }

    /// Writes several pairs. Pairs in the same region are written atomically
    /// in one entry; each key's result says whether its region's write
    /// succeeded (with the version) or not.
    pub fn batch_put(&mut self, items: &[(&[u8], &[u8])]) -> Vec<Result<u64>> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut out: Vec<Option<Result<u64>>> = vec![None; items.len()];
        for (n, (k, _)) in items.iter().enumerate() {
            let region = self.route_index(route_hash(k)).unwrap_or(usize::MAX);
            match groups.iter_mut().find(|(r, _)| *r == region) {
                Some((_, v)) => v.push(n),
                None => groups.push((region, vec![n])),
            }
        }
        for (_, members) in groups {
            let batch: Vec<PutItem> = members
                .iter()
                .map(|&n| PutItem {
                    key: Bytes::copy_from_slice(items[n].0),
                    value: Bytes::copy_from_slice(items[n].1),
                    ttl_ms: None,
                })
                .collect();
            let first = items[members[0]].0;
            let r = self
                .execute(
                    first,
                    Op::Write(WriteRequest::BatchPut { items: batch }),
                    false,
                )
                .map(|(_, f)| f.version);
            for n in members {
                out[n] = Some(r.clone());
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }
}

#[cfg(test)]
mod redo_tests {
    use super::FateKind::{Done as D, Refused as R, Uncertain as U};
    use super::Redo::{Keep as K, Leave as L, Send as S};
    use super::*;

    #[test]
    fn nothing_is_sent_again_before_a_write_that_may_be_applied() {
        let cases: &[(&[FateKind], &[Redo])] = &[
            (&[D, D], &[K, K]),
            (&[D, R, R], &[K, S, S]),
            (&[R, R], &[S, S]),
            (&[R, D], &[L, K]),
            // A refused write before an uncertain one: the later may be
            // applied (a large entry refused, a small one after it taken).
            (&[R, U], &[L, S]),
            (&[U, U], &[L, S]),
            (&[U, R], &[S, S]),
            (&[D, U, R, D, R], &[K, L, L, K, S]),
        ];
        for (fates, want) in cases {
            assert_eq!(&redo_plan(fates), want, "{fates:?}");
        }
    }
}
