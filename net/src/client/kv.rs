//! Reads and writes: get, put, delete, incr, cas, batches.

use super::*;

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
        let w = WriteRequest::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ttl_ms: opts.ttl.map(|t| t.as_millis().max(1) as u64),
            condition,
        };
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
                    expiry: corekv_engine::Expiry::After(0),
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
    /// one region, in one frame to its leader, which answers them from one
    /// state (one round of reads). From the first that did not succeed
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
        let one_region = keys.len() > 1
            && consistency != Consistency::Follower
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
                    Err(CallError::NotSent(_) | CallError::Lost(_)) => self.mark_down(node),
                }
            }
        }
        for k in &keys[out.len()..] {
            let r = self.get(k, consistency);
            out.push(r);
        }
        out
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
