//! Reads and writes: get, put, delete, incr, cas, transactions, pipelines,
//! batches, scans (each the async client's, run to its end).

use super::*;

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
        self.run(|c| c.get(key, consistency))
    }

    /// Writes `key`; returns the new version.
    pub fn put(&mut self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<u64> {
        self.run(|c| c.put(key, value, opts))
    }

    /// Deletes `key`; returns whether a live value was removed.
    pub fn delete(&mut self, key: &[u8], if_version: Option<u64>) -> Result<bool> {
        self.run(|c| c.delete(key, if_version))
    }

    /// Adds `delta` to the integer at `key`; returns the new value.
    pub fn incr(&mut self, key: &[u8], delta: i64) -> Result<i64> {
        self.run(|c| c.incr(key, delta))
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
        self.run(|c| c.cas(key, expected, value, ttl))
    }

    /// Applies `ops` atomically in one raft entry if every check holds (all
    /// keys in one region); returns the version written. A failed check is
    /// [`ClientError::ConditionFailed`] and nothing is written.
    pub fn txn(&mut self, checks: Vec<TxnCheck>, ops: Vec<TxnOp>) -> Result<u64> {
        self.run(|c| c.txn(checks, ops))
    }

    /// The id of the region that holds `key`, as the client's routing table
    /// says (loading it first if need be); 0 if not known.
    pub fn region_of(&mut self, key: &[u8]) -> u64 {
        self.run(|c| c.region_of(key))
    }

    /// Reads `keys` in order, as a pipeline of gets (see
    /// [`AsyncClient::get_pipelined`]).
    pub fn get_pipelined(
        &mut self,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        self.run(|c| c.get_pipelined(keys, consistency))
    }

    /// Applies `writes` in order, as a pipeline (see
    /// [`AsyncClient::write_pipelined`]).
    pub fn write_pipelined(
        &mut self,
        writes: Vec<WriteRequest>,
    ) -> Vec<Result<(Outcome, ResponseFields)>> {
        self.run(|c| c.write_pipelined(writes))
    }

    /// One page of the cluster's live keys in routing-hash order (see
    /// [`AsyncClient::scan_page`]).
    #[allow(clippy::type_complexity)]
    pub fn scan_page(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Value)>, Option<u64>)> {
        self.run(|c| c.scan_page(from_hash, limit, keys_only))
    }

    /// Like [`Client::scan_page`], with only the keys that begin with
    /// `prefix` (see [`AsyncClient::scan_prefix_page`]).
    #[allow(clippy::type_complexity)]
    pub fn scan_prefix_page(
        &mut self,
        from_hash: u64,
        limit: u32,
        keys_only: bool,
        prefix: &[u8],
    ) -> Result<(Vec<(Bytes, Value)>, Option<u64>)> {
        self.run(|c| c.scan_prefix_page(from_hash, limit, keys_only, prefix))
    }

    /// Every live key beginning with `prefix` and after `after`, in key
    /// order, at most `limit` (see [`AsyncClient::list_prefix`]).
    #[allow(clippy::type_complexity)]
    pub fn list_prefix(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
        progress: impl FnMut(usize),
    ) -> Result<(Vec<(Bytes, Value)>, bool)> {
        self.run(|c| c.list_prefix(prefix, after, limit, keys_only, progress))
    }

    /// Reads several keys; one result per key, in order.
    pub fn batch_get(
        &mut self,
        keys: &[&[u8]],
        consistency: Consistency,
    ) -> Vec<Result<Option<Value>>> {
        self.run(|c| c.batch_get(keys, consistency))
    }

    /// Writes several pairs. Pairs in the same region are written atomically
    /// in one entry; each key's result says whether its region's write
    /// succeeded (with the version) or not.
    pub fn batch_put(&mut self, items: &[(&[u8], &[u8])]) -> Vec<Result<u64>> {
        self.run(|c| c.batch_put(items))
    }
}
