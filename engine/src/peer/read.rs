//! Reads: ReadIndex (leader and follower), the lease, and answering the
//! reads whose index is applied.

use super::*;
use crate::read::Scan;

impl Peer {
    /// Ends the lease, and blocks it for the rest of the term, when a
    /// leader transfer is pending (see `lease_blocked_term`).
    pub(super) fn block_lease_while_transferring(&mut self) {
        if self.raw.raft.lead_transferee.is_some() {
            self.lease_until_ms = 0;
            self.lease_blocked_term = self.raw.raft.term;
        }
    }

    /// True unless a leader transfer was pending in this term.
    pub(super) fn lease_allowed(&self) -> bool {
        self.raw.raft.term != self.lease_blocked_term && self.raw.raft.lead_transferee.is_none()
    }

    /// True when lease reads may be served from the lease at `now`.
    pub(super) fn lease_holds(&self) -> bool {
        self.now_ms < self.lease_until_ms
            && self.lease_allowed()
            && self.raw.raft.commit_to_current_term()
    }

    /// Queues a read of `key` arriving at `now_ms` (the caller's monotonic
    /// clock: a lease is judged against the time of the read, not of the
    /// last tick).
    pub fn read(
        &mut self,
        id: u64,
        key: Bytes,
        consistency: Consistency,
        now_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        self.set_now(now_ms);
        if let Err(e) = crate::command::check_key(&key) {
            return replies.push(Reply { id, result: Err(e) });
        }
        if !self.region.contains(route_hash(&key)) {
            return replies.push(Reply {
                id,
                result: Err(self.epoch_not_match()),
            });
        }
        self.queue_read(id, key, None, consistency, replies);
    }

    /// Queues a scan of the region's keys (see [`Scan`]) arriving at
    /// `now_ms`, served like a read of `consistency`.
    pub fn scan(
        &mut self,
        id: u64,
        scan: Scan,
        consistency: Consistency,
        now_ms: u64,
        replies: &mut Vec<Reply>,
    ) {
        self.set_now(now_ms);
        if scan.limit == 0 || scan.limit > SCAN_KEYS_MAX {
            return replies.push(Reply {
                id,
                result: Err(Error::InvalidRequest(format!(
                    "a scan returns 1..={SCAN_KEYS_MAX} keys"
                ))),
            });
        }
        self.queue_read(id, Bytes::new(), Some(scan), consistency, replies);
    }

    fn queue_read(
        &mut self,
        id: u64,
        key: Bytes,
        scan: Option<Scan>,
        consistency: Consistency,
        replies: &mut Vec<Reply>,
    ) {
        // Out of the region: no read of any level, not even through the
        // leader (its state stopped at its removal).
        if self.removed {
            return replies.push(Reply {
                id,
                result: Err(Error::RegionNotFound(self.region_id())),
            });
        }
        if self.reads_pending() >= self.cfg.reads_pending_max {
            return replies.push(Reply {
                id,
                result: Err(Error::Busy("too many reads pending")),
            });
        }
        let read = PendingRead {
            id,
            key,
            scan,
            deadline_ms: self.now_ms + self.cfg.request_timeout_ms,
        };
        if consistency == Consistency::Stale {
            self.stale_reads.push(read);
            return;
        }
        if consistency == Consistency::Follower && !self.is_leader() {
            if self.raw.raft.leader_id == raft::INVALID_ID {
                return replies.push(Reply {
                    id,
                    result: Err(self.not_leader()),
                });
            }
            // Give up well before the client does, so it can try another
            // replica: a follower cut off from the leader never answers
            // from its own state.
            let wait = (2 * self.cfg.election_timeout_ms()).min(self.cfg.request_timeout_ms);
            self.follower_reads.push(PendingRead {
                deadline_ms: self.now_ms + wait,
                ..read
            });
            return;
        }
        if !self.is_leader() {
            return replies.push(Reply {
                id,
                result: Err(self.not_leader()),
            });
        }
        if consistency == Consistency::Lease {
            self.lease_wanted = true;
            if self.lease_holds() {
                let index = self.raw.raft.raft_log.committed;
                self.reads.push_with_index(read, index);
                return;
            }
        }
        self.reads.push(read);
    }

    /// Answers every read that can be served now, from `db` as of the last
    /// written apply batch. Expiry is judged by the region's clock as of
    /// what is applied ([`Peer::clock_ms`]): a read served at a later index
    /// than another never sees a value the other saw expired.
    pub fn serve_reads(&mut self, cache: &mut ReadCache, replies: &mut Vec<Reply>) -> Result<()> {
        // While the region's clock is unknown (data of an earlier release),
        // no read knows what has expired: reads wait for the leader's first
        // clock entry, proposed as soon as it leads.
        if self.snapshot_persisting.is_some() || self.region_clock().is_none() {
            return Ok(());
        }
        let mut ready = std::mem::take(&mut self.stale_reads);
        let applied = self.raw.store().applied_index();
        self.reads.take_ready(applied, &mut ready);
        self.follower_reads.take_ready(applied, &mut ready);
        if ready.is_empty() {
            return Ok(());
        }
        let db = self.raw.store().db().clone();
        for r in ready {
            if let Some(scan) = r.scan {
                let result = self
                    .scan_now(&db, scan)
                    .map(|(items, next_hash)| Response::Scanned {
                        items,
                        next_hash,
                        read_index: applied,
                    });
                replies.push(Reply { id: r.id, result });
                continue;
            }
            if !self.region.contains(route_hash(&r.key)) {
                replies.push(Reply {
                    id: r.id,
                    result: Err(self.epoch_not_match()),
                });
                continue;
            }
            let record = match cache.get(&r.key) {
                Some(v) => v,
                None => {
                    let v = apply::load(&db, &r.key)?;
                    // The key may be a slice of a whole request frame: keep a
                    // copy of its own, not the frame.
                    cache.put(Bytes::copy_from_slice(&r.key), v.clone());
                    v
                }
            };
            let live = record.filter(|v| !v.is_expired(self.clock_ms()));
            replies.push(Reply {
                id: r.id,
                result: Ok(Response::Value(live)),
            });
        }
        Ok(())
    }

    /// One page of a scan from what is applied (RocksDB as of the last
    /// written apply batch, as for reads); expiry judged by the region's
    /// clock. The next hash is the next key's (the page is full) or the
    /// region's end.
    #[allow(clippy::type_complexity)]
    fn scan_now(
        &self,
        db: &rocksdb::DB,
        scan: Scan,
    ) -> Result<(Vec<(Bytes, ValueRecord)>, Option<u64>)> {
        // A page never starts before the region (the caller's routing is
        // stale: it must not skip the hashes between).
        let from = scan.from_hash;
        if !self.region.contains(from) {
            return Err(self.epoch_not_match());
        }
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(crate::keys::data_range_end(self.region.end_hash));
        opts.fill_cache(false);
        let mut it = db.raw_iterator_cf_opt(crate::db::cf(db, crate::keys::CF_DATA), opts);
        it.seek(crate::keys::data_range_start(from));
        let clock = self.clock_ms();
        let mut items: Vec<(Bytes, ValueRecord)> = Vec::new();
        // The page ends, at the first new hash, once it holds `limit` keys
        // or SCAN_PAGE_BYTES of them, or once it has looked at
        // SCAN_EXAMINED_MAX records (expired ones too): a page is bounded
        // in memory and in the time it holds the shard.
        let (mut bytes, mut examined) = (0usize, 0usize);
        let mut last_hash = None;
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let Some((hash, key)) = crate::keys::split_data_key(k) else {
                it.next();
                continue;
            };
            let full = items.len() >= scan.limit
                || bytes >= SCAN_PAGE_BYTES
                || examined >= SCAN_EXAMINED_MAX;
            if full && last_hash.is_some_and(|h| h != hash) {
                it.status()?;
                return Ok((items, Some(hash)));
            }
            examined += 1;
            last_hash = Some(hash);
            if !key.starts_with(&scan.prefix) {
                it.next();
                continue;
            }
            let record = if scan.keys_only {
                crate::value::ValueRecord::decode_header(v)?
            } else {
                crate::value::ValueRecord::decode(v)?
            };
            if !record.is_expired(clock) {
                bytes += key.len() + record.value.len() + 32;
                items.push((Bytes::copy_from_slice(key), record));
            }
            it.next();
        }
        it.status()?;
        // The region is done: the next page starts where it ends (none past
        // the end of the hash space).
        let next = (self.region.end_hash != 0).then_some(self.region.end_hash);
        Ok((items, next))
    }
}

/// Keys one page of a scan returns at most.
pub const SCAN_KEYS_MAX: usize = 10_000;

/// Bytes of keys and values past which a page ends (at its next hash).
pub const SCAN_PAGE_BYTES: usize = 4 << 20;

/// Records (expired ones too) past which a page ends (at its next hash).
pub const SCAN_EXAMINED_MAX: usize = 4 * SCAN_KEYS_MAX;
