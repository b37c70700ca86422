//! Client sessions: exactly-once writes.
//!
//! A write may carry a [`SessionTag`] (client id, sequence number). Each
//! region keeps, per client, the outcomes of its last [`RESULTS_PER_CLIENT`]
//! applied writes. A write whose sequence number was already applied is not
//! applied again: it is answered with the first outcome. The table is part of
//! the replicated state: it changes only when entries are applied, is written
//! in the same batch as the data (meta CF, `0x05 region_id client_id`), and
//! travels in snapshots, so every replica and every restart agrees.
//!
//! It is bounded: at most [`CLIENTS_PER_REGION`] clients per region (the one
//! that wrote least recently, by log index, is forgotten first), and a client
//! silent for [`SESSION_IDLE_MS`] of leader time is forgotten at its next
//! write's apply.
//!
//! A forgotten result must never turn into a second apply. A tag says
//! whether an earlier attempt of the write may have been applied
//! ([`SessionTag::retry`]). Such a retry is answered from the remembered
//! outcome when there is one. When the region does not remember the client
//! (never seen, evicted, idle too long) it cannot vouch that no earlier
//! attempt was applied, and the retry gets
//! [`WriteOutcome::ResultForgotten`]: its outcome is unknown, which the
//! client reports as such; likewise a retry older than every result kept
//! of a client whose results overflowed. A retry of a remembered client
//! that is not among its results was never applied: a client has one write
//! in flight at a time (the native client's calls are blocking), so while
//! it retries a write, no later write of it can have re-created its
//! session, and its newest write is always among the results kept. A first
//! attempt is applied in any case: no earlier attempt of it exists. The
//! decision depends only on the replicated table, so every replica makes
//! the same one.

use std::collections::{BTreeMap, VecDeque};

use crate::codec::{Decoder, Encoder};
use crate::command::{SessionTag, WriteOutcome};
use crate::error::{Error, Result};

/// Outcomes remembered per client.
pub const RESULTS_PER_CLIENT: usize = 32;
/// Clients remembered per region.
pub const CLIENTS_PER_REGION: usize = 4096;
/// A client idle this long (leader clock of the applied entries) is forgotten.
pub const SESSION_IDLE_MS: u64 = 10 * 60 * 1000;

const SESSION_FORMAT: u8 = 1;
/// A format briefly written with a per-client floor after the last
/// counter: still read, the floor skipped.
const SESSION_FORMAT_WITH_FLOOR: u8 = 2;

/// What a region remembers of one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSession {
    /// Applied sequence numbers with their outcomes, ascending.
    pub results: VecDeque<(u64, WriteOutcome)>,
    /// Log index of the client's last applied write.
    pub last_index: u64,
    /// Leader clock of that write, unix ms.
    pub last_ms: u64,
}

/// The decision for a tagged write about to be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not seen before: apply it.
    Apply,
    /// Already applied: answer with this outcome, apply nothing.
    Duplicate(WriteOutcome),
}

impl ClientSession {
    fn decide(&self, tag: SessionTag) -> Dedup {
        if let Some((_, o)) = self.results.iter().find(|(s, _)| *s == tag.seq) {
            return Dedup::Duplicate(o.clone());
        }
        match self.results.front() {
            // Older than everything remembered: it may have been applied.
            Some((oldest, _))
                if tag.retry && tag.seq < *oldest && self.results.len() == RESULTS_PER_CLIENT =>
            {
                Dedup::Duplicate(WriteOutcome::ResultForgotten)
            }
            _ => Dedup::Apply,
        }
    }

    fn record(&mut self, seq: u64, outcome: WriteOutcome, index: u64, now_ms: u64) {
        let at = self.results.partition_point(|(s, _)| *s < seq);
        self.results.insert(at, (seq, outcome));
        while self.results.len() > RESULTS_PER_CLIENT {
            self.results.pop_front();
        }
        self.last_index = index;
        self.last_ms = now_ms;
    }

    /// Encodes for the meta CF.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(32 + self.results.len() * 24);
        e.u8(SESSION_FORMAT)
            .u64(self.last_index)
            .u64(self.last_ms)
            .u32(self.results.len() as u32);
        for (seq, o) in &self.results {
            e.u64(*seq);
            o.encode_to(&mut e);
        }
        e.finish()
    }

    /// Decodes a record written by [`ClientSession::encode`].
    pub fn decode(buf: &[u8]) -> Result<ClientSession> {
        let mut d = Decoder::new(buf, "client session");
        let format = d.u8()?;
        if format != SESSION_FORMAT && format != SESSION_FORMAT_WITH_FLOOR {
            return Err(Error::Corruption(format!(
                "client session: format version {format}"
            )));
        }
        let last_index = d.u64()?;
        let last_ms = d.u64()?;
        if format == SESSION_FORMAT_WITH_FLOOR {
            d.u64()?;
        }
        let n = d.u32()? as usize;
        if n > RESULTS_PER_CLIENT {
            return Err(Error::Corruption(format!("client session: {n} results")));
        }
        let mut results = VecDeque::with_capacity(n);
        for _ in 0..n {
            let seq = d.u64()?;
            results.push_back((seq, WriteOutcome::decode_from(&mut d)?));
        }
        d.finish()?;
        Ok(ClientSession {
            results,
            last_index,
            last_ms,
        })
    }
}

/// The sessions of one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    clients: BTreeMap<u64, ClientSession>,
}

/// A change to persist: a client's new state, or its removal.
pub type SessionChange = (u64, Option<ClientSession>);

impl SessionTable {
    /// A table with these clients.
    pub fn from_clients(clients: BTreeMap<u64, ClientSession>) -> SessionTable {
        SessionTable { clients }
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every client, for snapshots.
    pub fn clients(&self) -> &BTreeMap<u64, ClientSession> {
        &self.clients
    }

    /// Whether the write tagged `tag` must be applied, at region time
    /// `now_ms`.
    pub fn decide(&self, tag: SessionTag, now_ms: u64) -> Dedup {
        match self.clients.get(&tag.client_id) {
            Some(s) if now_ms.saturating_sub(s.last_ms) < SESSION_IDLE_MS => s.decide(tag),
            // Not known (any more): only a first attempt is surely new.
            _ if tag.retry => Dedup::Duplicate(WriteOutcome::ResultForgotten),
            _ => Dedup::Apply,
        }
    }

    /// Records the outcome of an applied write; returns what to persist.
    pub fn record(
        &mut self,
        tag: SessionTag,
        outcome: WriteOutcome,
        index: u64,
        now_ms: u64,
        changes: &mut Vec<SessionChange>,
    ) {
        let s = self.clients.entry(tag.client_id).or_default();
        if now_ms.saturating_sub(s.last_ms) >= SESSION_IDLE_MS {
            // Idle past the limit: start over (decide() ignored it too).
            s.results.clear();
        }
        s.record(tag.seq, outcome, index, now_ms);
        changes.push((tag.client_id, Some(s.clone())));
        if self.clients.len() > CLIENTS_PER_REGION {
            let oldest = self
                .clients
                .iter()
                .min_by_key(|(id, s)| (s.last_index, **id))
                .map(|(id, _)| *id)
                .expect("over the limit, so not empty");
            self.clients.remove(&oldest);
            changes.push((oldest, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(seq: u64) -> SessionTag {
        SessionTag {
            client_id: 7,
            seq,
            retry: true,
        }
    }

    fn first(seq: u64) -> SessionTag {
        SessionTag {
            retry: false,
            ..tag(seq)
        }
    }

    #[test]
    fn a_retry_gets_the_first_outcome() {
        let mut t = SessionTable::default();
        let mut ch = Vec::new();
        assert_eq!(t.decide(first(1), 0), Dedup::Apply);
        t.record(tag(1), WriteOutcome::Written { version: 9 }, 9, 0, &mut ch);
        assert_eq!(
            t.decide(tag(1), 10),
            Dedup::Duplicate(WriteOutcome::Written { version: 9 })
        );
        assert_eq!(t.decide(first(2), 10), Dedup::Apply);
        // A later write applied before an earlier retry: the earlier one is
        // still applied once.
        t.record(
            tag(5),
            WriteOutcome::Deleted { existed: true },
            10,
            0,
            &mut ch,
        );
        assert_eq!(t.decide(tag(3), 10), Dedup::Apply);
        assert_eq!(ch.len(), 2);
    }

    #[test]
    fn a_retry_the_region_cannot_vouch_for_is_never_applied_again() {
        let mut t = SessionTable::default();
        let mut ch = Vec::new();
        // Unknown client: a first attempt applies, a retry may have been
        // applied before the client was forgotten.
        assert_eq!(t.decide(first(5), 0), Dedup::Apply);
        assert_eq!(
            t.decide(tag(5), 0),
            Dedup::Duplicate(WriteOutcome::ResultForgotten)
        );
        t.record(
            first(5),
            WriteOutcome::Written { version: 1 },
            1,
            0,
            &mut ch,
        );
        // Known client: a retry of 5 gets its outcome; a retry of 6, not
        // among the results, was never applied.
        assert_eq!(
            t.decide(tag(5), 0),
            Dedup::Duplicate(WriteOutcome::Written { version: 1 })
        );
        assert_eq!(t.decide(tag(6), 0), Dedup::Apply);
        // Idle too long: forgotten, so even a retry of 5 is unknown.
        assert_eq!(
            t.decide(tag(5), SESSION_IDLE_MS),
            Dedup::Duplicate(WriteOutcome::ResultForgotten)
        );
        assert_eq!(t.decide(first(6), SESSION_IDLE_MS), Dedup::Apply);
        // Evicted by other clients: a retry of anything is unknown.
        for c in 100..100 + CLIENTS_PER_REGION as u64 {
            let other = SessionTag {
                client_id: c,
                seq: 1,
                retry: false,
            };
            t.record(other, WriteOutcome::NotANumber, c, 0, &mut ch);
        }
        assert!(!t.clients.contains_key(&7));
        assert_eq!(
            t.decide(tag(5), 0),
            Dedup::Duplicate(WriteOutcome::ResultForgotten)
        );
    }

    #[test]
    fn forgotten_results_are_reported_and_memory_is_bounded() {
        let mut t = SessionTable::default();
        let mut ch = Vec::new();
        for seq in 1..=(RESULTS_PER_CLIENT as u64 + 5) {
            t.record(
                tag(seq),
                WriteOutcome::Written { version: seq },
                seq,
                0,
                &mut ch,
            );
        }
        assert_eq!(
            t.decide(tag(1), 0),
            Dedup::Duplicate(WriteOutcome::ResultForgotten)
        );
        assert_eq!(t.clients[&7].results.len(), RESULTS_PER_CLIENT);
        // Idle sessions are forgotten: a first attempt applies, a retry's
        // outcome is unknown.
        assert_eq!(t.decide(first(30), SESSION_IDLE_MS + 1), Dedup::Apply);
        assert_eq!(
            t.decide(tag(30), SESSION_IDLE_MS + 1),
            Dedup::Duplicate(WriteOutcome::ResultForgotten)
        );
        // Clients beyond the limit: the least recent goes.
        let mut t = SessionTable::default();
        for c in 0..=(CLIENTS_PER_REGION as u64) {
            let tag = SessionTag {
                client_id: c,
                seq: 1,
                retry: false,
            };
            t.record(tag, WriteOutcome::NotANumber, c + 1, 0, &mut ch);
        }
        assert_eq!(t.len(), CLIENTS_PER_REGION);
        assert!(!t.clients.contains_key(&0));
        assert_eq!(ch.last(), Some(&(0, None)));
    }

    #[test]
    fn sessions_round_trip() {
        let mut s = ClientSession::default();
        s.record(
            3,
            WriteOutcome::Counter {
                value: -2,
                version: 8,
            },
            8,
            5,
        );
        s.record(
            4,
            WriteOutcome::ConditionFailed {
                current_version: None,
            },
            9,
            6,
        );
        assert_eq!(ClientSession::decode(&s.encode()).unwrap(), s);
        assert!(ClientSession::decode(&s.encode()[..10]).is_err());
        // The format with a floor reads, the floor skipped.
        let mut with_floor = s.encode();
        with_floor[0] = SESSION_FORMAT_WITH_FLOOR;
        with_floor.splice(17..17, 9u64.to_be_bytes());
        assert_eq!(ClientSession::decode(&with_floor).unwrap(), s);
    }
}
