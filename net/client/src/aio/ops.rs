//! Reads and writes beyond get/put/delete: counters, compare-and-set,
//! transactions, pipelines, batches, scans by page and prefix listings;
//! and what the client knows of the nodes.

use std::collections::HashMap;

use bytes::Bytes;
use corekv_types::{route_hash, Consistency, PutItem, SessionTag, TxnCheck, TxnOp, WriteRequest};
use tokio::time::Instant;

use super::{AsyncClient, CallError, Picked};
use crate::client::{wire_to_client, ClientError, Result, RouteBy, Value};
use crate::message::{Op, Outcome, Request, ResponseFields};
use crate::wire::ErrorCode;

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

/// What became of one write of the frame.
enum Fate {
    Done(Result<(Outcome, ResponseFields)>),
    /// Refused before it was proposed: not applied.
    Refused(String),
    /// Maybe applied.
    Uncertain(String),
}

impl Fate {
    fn kind(&self) -> FateKind {
        match self {
            Fate::Done(_) => FateKind::Done,
            Fate::Refused(_) => FateKind::Refused,
            Fate::Uncertain(_) => FateKind::Uncertain,
        }
    }
}

/// Writes of one client in one frame at most. A region remembers the last
/// `RESULTS_PER_CLIENT` outcomes of each client, so while a frame's writes
/// are retried after a lost answer, each of them is still remembered if
/// it was applied: a retry is never applied twice.
pub const PIPELINED_WRITES_MAX: usize = 16;
const _: () = assert!(PIPELINED_WRITES_MAX <= corekv_types::session::RESULTS_PER_CLIENT);

fn value_of(v: Option<corekv_types::ValueRecord>) -> Option<Value> {
    v.map(|r| Value {
        value: r.value,
        version: r.version,
        expire_at_ms: r.expire_at_ms,
    })
}

/// Refuses a transaction the wire cannot carry; its first key otherwise.
fn txn_key(checks: &[TxnCheck], ops: &[TxnOp]) -> Result<Bytes> {
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
    Ok(first)
}

impl AsyncClient {
    async fn write(&self, key: &[u8], w: WriteRequest) -> Result<ResponseFields> {
        let (_, f, _) = self.execute(route_hash(key), Op::Write(w), false).await?;
        Ok(f)
    }

    /// Adds `delta` to the integer at `key`; returns the new value.
    pub async fn incr(&self, key: &[u8], delta: i64) -> Result<i64> {
        let w = WriteRequest::Incr {
            key: Bytes::copy_from_slice(key),
            delta,
        };
        Ok(self.write(key, w).await?.counter)
    }

    /// Replaces the value of `key` if it is `expected` (`None` = absent);
    /// returns the new version.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> Result<u64> {
        let w = WriteRequest::Cas {
            key: Bytes::copy_from_slice(key),
            expected: expected.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            ttl_ms: ttl.map(|t| t.as_millis().max(1) as u64),
        };
        Ok(self.write(key, w).await?.version)
    }

    /// Applies `ops` atomically in one raft entry if every check holds (all
    /// keys in one region); returns the version written. A failed check is
    /// [`ClientError::ConditionFailed`] and nothing is written.
    pub async fn txn(&self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> Result<u64> {
        let first = txn_key(&checks, &ops)?;
        let w = WriteRequest::Txn { checks, ops };
        Ok(self.write(&first, w).await?.version)
    }

    /// The node ids and client addresses as last loaded.
    pub fn nodes(&self) -> HashMap<u64, String> {
        self.inner.state.lock().unwrap().nodes.clone()
    }

    /// Node ids and client addresses as last loaded, by node id.
    pub fn nodes_sorted(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = self.nodes().into_iter().collect();
        v.sort_unstable();
        v
    }

    /// The per-shard client ports `node` gave in its `Hello` (connecting
    /// to it if need be; index = shard, 0 = none); empty when it has none.
    pub async fn shard_ports_of(&self, node: u64) -> Result<Vec<u16>> {
        let addr = self
            .nodes()
            .remove(&node)
            .ok_or_else(|| ClientError::Protocol(format!("node {node} is not known")))?;
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        let link = self
            .link(&addr, deadline)
            .await
            .map_err(|last| ClientError::Unavailable { attempts: 1, last })?;
        Ok(link.shard_ports.clone())
    }

    /// Where attempt number `attempt` at region `by` goes (the leader when
    /// known, else a replica by attempt number).
    pub(crate) fn pick(&self, by: RouteBy, attempt: u32) -> Picked {
        let shard_aware = self.inner.cfg.shard_aware;
        let mut st = self.inner.state.lock().unwrap();
        st.pick(by, attempt, false, shard_aware)
    }

    /// The id of the region holding `hash`, by the table as it is.
    pub(crate) fn region_at(&self, hash: u64) -> Option<u64> {
        self.regions_of(std::iter::once(hash)).remove(0)
    }

    /// Closes the connection to `addr` (a watch found it silent): the next
    /// request there opens a new one.
    pub(crate) fn close_link(&self, addr: &str) {
        self.inner.links.lock().unwrap().remove(addr);
    }

    /// The id of the region of each hash in `hashes` by the table, under
    /// one look at it.
    fn regions_of(&self, hashes: impl Iterator<Item = u64>) -> Vec<Option<u64>> {
        let st = self.inner.state.lock().unwrap();
        hashes
            .map(|h| st.routes.index(h).map(|i| st.routes[i].region.id))
            .collect()
    }

    /// The id of the region that holds `key`, as the routing table says
    /// (loading it first if need be); 0 if not known.
    pub async fn region_of(&self, key: &[u8]) -> u64 {
        let hash = route_hash(key);
        let found = |c: &Self| c.region_at(hash);
        if found(self).is_none() {
            let _ = self.refresh().await;
        }
        found(self).unwrap_or(0)
    }

    /// The leader's address of the one region holding every key of
    /// `hashes`, if they are all in one.
    fn one_region(&self, hashes: &[u64]) -> Option<(super::Routed, u64, String)> {
        let regions = self.regions_of(hashes.iter().copied());
        let first = (*regions.first()?)?;
        if !regions.iter().all(|r| *r == Some(first)) {
            return None;
        }
        match self.pick(RouteBy::Region(first), 1) {
            Picked::At(region, node, addr) => Some((region, node, addr)),
            _ => None,
        }
    }

    /// Reads `keys` in order, as a pipeline of gets: when they are all in
    /// one region and linearizable, in one frame to its leader, which
    /// serves them in order (one round of reads, unless the frame spans
    /// rounds). From the first that did not succeed that way (leader moved,
    /// connection lost, ...), the rest are read again one by one, in order,
    /// with the usual retries; keys of several regions are read one by one.
    /// Either way each read sees every write acknowledged before the call,
    /// and a read never sees an older state than the one before it.
    pub async fn get_pipelined(
        &self,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        let mut out: Vec<Result<Option<Value>>> = Vec::with_capacity(keys.len());
        // Linearizable reads only: their batches are served in the order
        // they arrive; a lease read arriving later may be served from the
        // state before an earlier one that waits for its quorum check.
        let hashes: Vec<u64> = keys.iter().map(|k| route_hash(k)).collect();
        let target = (keys.len() > 1 && consistency == Consistency::Linearizable)
            .then(|| self.one_region(&hashes))
            .flatten();
        if let Some(((region_id, epoch), node, addr)) = target {
            let deadline = Instant::now() + self.inner.cfg.request_timeout;
            match self.link(&addr, deadline).await {
                Ok(link) => {
                    // Queued together: they leave in one frame.
                    let sent: Vec<_> = keys
                        .iter()
                        .map(|k| {
                            let id = self.new_id();
                            let req = Request {
                                id,
                                region_id,
                                epoch,
                                op: Op::Get {
                                    key: k.clone(),
                                    consistency,
                                },
                                session: None,
                                system: self.system(),
                            };
                            (id, link.send(req))
                        })
                        .collect();
                    for (id, rx) in sent {
                        let Some(rx) = rx else { break };
                        match tokio::time::timeout_at(deadline, rx).await {
                            Ok(Ok(Ok((resp, _)))) => match resp.result {
                                Ok(Outcome::Value(v)) => out.push(Ok(value_of(v))),
                                // Refused (not the leader any more, ...):
                                // this one and the rest go one by one.
                                _ => break,
                            },
                            Ok(_) => {
                                self.mark_down(node);
                                self.forget_leader(region_id, epoch);
                                break;
                            }
                            Err(_) => {
                                link.forget(id);
                                break;
                            }
                        }
                    }
                }
                Err(_) => {
                    self.mark_down(node);
                    self.forget_leader(region_id, epoch);
                }
            }
        }
        for k in &keys[out.len()..] {
            out.push(self.get(k, consistency).await);
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
    pub async fn write_pipelined(
        &self,
        writes: Vec<WriteRequest>,
    ) -> Vec<Result<(Outcome, ResponseFields)>> {
        let mut out = Vec::with_capacity(writes.len());
        let mut writes = writes.into_iter().peekable();
        // In frames of at most that many, one after another.
        while writes.peek().is_some() {
            let frame: Vec<WriteRequest> = writes.by_ref().take(PIPELINED_WRITES_MAX).collect();
            out.extend(self.write_frame(frame).await);
        }
        out
    }

    async fn write_frame(
        &self,
        writes: Vec<WriteRequest>,
    ) -> Vec<Result<(Outcome, ResponseFields)>> {
        let mut hashes = Vec::new();
        for w in &writes {
            hashes.extend(w.keys().map(|k| route_hash(k)));
        }
        let target = (writes.len() > 1 && !hashes.is_empty())
            .then(|| self.one_region(&hashes))
            .flatten();
        let Some(((region_id, epoch), node, addr)) = target else {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let hash = route_hash(w.keys().next().map_or(&[][..], |k| &k[..]));
                let r = self.execute(hash, Op::Write(w), false).await;
                out.push(r.map(|(o, f, _)| (o, f)));
            }
            return out;
        };
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        // One session for the frame, a sequence number per write.
        let mut lent = self.inner.lend_session();
        let base = lent.tag.seq;
        let tags: Vec<SessionTag> = (0..writes.len() as u64)
            .map(|k| SessionTag {
                seq: base + k,
                ..lent.tag
            })
            .collect();
        lent.tag.seq = base + writes.len() as u64 - 1;
        let link = self.link(&addr, deadline).await;
        let sent: Vec<Option<_>> = match &link {
            Ok(link) => writes
                .iter()
                .zip(&tags)
                .map(|(w, tag)| {
                    let id = self.new_id();
                    let req = Request {
                        id,
                        region_id,
                        epoch,
                        op: Op::Write(w.clone()),
                        session: Some(*tag),
                        system: self.system(),
                    };
                    link.send(req).map(|rx| (id, rx))
                })
                .collect(),
            Err(_) => writes.iter().map(|_| None).collect(),
        };
        let mut failed: Option<CallError> =
            link.as_ref().err().map(|e| CallError::NotSent(e.clone()));
        let mut rerouted = false;
        let mut fates = Vec::with_capacity(writes.len());
        for rx in sent {
            let answer = match (rx, &failed) {
                (None, _) => None,
                // After a failure, an answer that came before it still
                // counts (a refusal is not a maybe).
                (Some((_, mut rx)), Some(_)) => match rx.try_recv() {
                    Ok(Ok(a)) => Some(a),
                    _ => None,
                },
                (Some((id, rx)), None) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(a))) => Some(a),
                    Ok(Ok(Err(why))) => {
                        failed = Some(CallError::Lost(format!("{addr}: {why}")));
                        None
                    }
                    Ok(Err(_)) => {
                        failed = Some(CallError::Lost(format!("{addr}: connection closed")));
                        None
                    }
                    Err(_) => {
                        if let Ok(l) = &link {
                            l.forget(id);
                        }
                        failed = Some(CallError::TimedOut(format!(
                            "{addr}: timed out waiting for the server"
                        )));
                        None
                    }
                },
            };
            fates.push(match answer {
                Some((resp, f)) => match resp.result {
                    Ok(o) => Fate::Done(Ok((o, f))),
                    Err(e) => match e.code() {
                        ErrorCode::NotLeader
                        | ErrorCode::EpochNotMatch
                        | ErrorCode::RegionNotFound
                        | ErrorCode::Busy
                        | ErrorCode::ProposalDropped
                        | ErrorCode::ShuttingDown => {
                            if !rerouted {
                                rerouted = true;
                                let _ = self.learn((region_id, epoch), &e);
                            }
                            Fate::Refused(format!("{addr}: {e}"))
                        }
                        ErrorCode::Timeout => Fate::Uncertain(format!("{addr}: {e}")),
                        _ => Fate::Done(Err(wire_to_client(e))),
                    },
                },
                None => match &failed {
                    // The link was closed before this one was queued.
                    None => Fate::Refused(format!("{addr}: connection closed")),
                    Some(CallError::NotSent(e)) => Fate::Refused(e.clone()),
                    Some(CallError::Lost(e)) | Some(CallError::TimedOut(e)) => {
                        Fate::Uncertain(e.clone())
                    }
                },
            });
        }
        if matches!(failed, Some(CallError::NotSent(_) | CallError::Lost(_))) {
            self.mark_down(node);
            self.forget_leader(region_id, epoch);
        }
        let kinds: Vec<FateKind> = fates.iter().map(Fate::kind).collect();
        let plan = redo_plan(&kinds);
        let mut out = Vec::with_capacity(writes.len());
        for (((fate, w), tag), step) in fates.into_iter().zip(writes).zip(tags).zip(plan) {
            let before_last = step == Redo::Leave;
            let by = RouteBy::Hash(route_hash(w.keys().next().expect("a write has a key")));
            out.push(match fate {
                Fate::Done(r) => r,
                Fate::Refused(last) if before_last => Err(ClientError::NotApplied(format!(
                    "{last}; not sent again: a later write of the same frame may be applied, \
                     and order comes first"
                ))),
                Fate::Uncertain(last) if before_last => Err(ClientError::Unknown(last)),
                // Never applied: a new write with a new tag.
                Fate::Refused(_) => self
                    .execute_by(by, Op::Write(w), false, None)
                    .await
                    .map(|(o, f, _)| (o, f)),
                Fate::Uncertain(_) => {
                    let retry = SessionTag { retry: true, ..tag };
                    self.execute_by(by, Op::Write(w), false, Some(retry))
                        .await
                        .map(|(o, f, _)| (o, f))
                }
            });
        }
        // The session goes back to the pool with the frame's last number
        // (`lent`, dropped here, after every retry with its tags).
        drop(lent);
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
    pub async fn scan_page(
        &self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Value)>, Option<u64>)> {
        self.scan_prefix_page(from_hash, limit, keys_only, &[])
            .await
    }

    /// Like [`AsyncClient::scan_page`], with only the keys that begin with
    /// `prefix` (the node filters; a page still looks at the same records,
    /// so a page may hold few keys or none and still be followed by more).
    /// A user with read on `prefix` may scan it.
    #[allow(clippy::type_complexity)]
    pub async fn scan_prefix_page(
        &self,
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
        match self.execute(from_hash, op, true).await? {
            (
                Outcome::Scanned {
                    items, next_hash, ..
                },
                _,
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
            (other, _, _) => Err(ClientError::Protocol(format!("scan answered {other:?}"))),
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
    pub async fn list_prefix(
        &self,
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
            let (items, next) = self.scan_prefix_page(h, 10_000, keys_only, prefix).await?;
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
    pub async fn batch_get(
        &self,
        keys: &[&[u8]],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k, consistency).await);
        }
        out
    }

    /// Writes several pairs. Pairs in the same region are written atomically
    /// in one entry; each key's result says whether its region's write
    /// succeeded (with the version) or not.
    pub async fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<u64>> {
        let regions = self.regions_of(items.iter().map(|(k, _)| route_hash(k)));
        let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
        for (n, r) in regions.iter().enumerate() {
            let region = r.unwrap_or(u64::MAX);
            match groups.iter_mut().find(|(r, _)| *r == region) {
                Some((_, v)) => v.push(n),
                None => groups.push((region, vec![n])),
            }
        }
        let mut out: Vec<Option<Result<u64>>> = vec![None; items.len()];
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
                .write(first, WriteRequest::BatchPut { items: batch })
                .await
                .map(|f| f.version);
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
