//! Consistency checks on one replica: the stored digest and verdict, the
//! leader's schedule, the comparison with the leader's digest.

use super::*;

/// The outcome of a consistency check on one replica: its digest at the
/// check's index against the leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckVerdict {
    /// Index of the `ComputeDigest` entry.
    pub index: u64,
    /// The leader's digest there.
    pub leader: crate::digest::Digest,
    /// This replica's digest there; `None` if it did not compute one (it
    /// reached that index by snapshot, or restarted in between).
    pub own: Option<crate::digest::Digest>,
}

/// A replica's consistency check state as stored: its last digest and its
/// last verdict (so neither is lost when the replica is opened again, on a
/// restart or a move to another shard).
pub(super) fn encode_check(digest: Option<(u64, Digest)>, check: Option<CheckVerdict>) -> Vec<u8> {
    let mut e = crate::codec::Encoder::with_capacity(96);
    let put = |e: &mut crate::codec::Encoder, d: &Digest| {
        e.u64(d.keys).u64(d.bytes).u64(d.hash);
    };
    e.u8(1);
    match digest {
        Some((index, d)) => {
            e.u8(1).u64(index);
            put(&mut e, &d);
        }
        None => {
            e.u8(0);
        }
    }
    match check {
        Some(c) => {
            e.u8(1).u64(c.index);
            put(&mut e, &c.leader);
            match c.own {
                Some(d) => {
                    e.u8(1);
                    put(&mut e, &d);
                }
                None => {
                    e.u8(0);
                }
            }
        }
        None => {
            e.u8(0);
        }
    }
    e.finish()
}

pub(super) type StoredCheck = (Option<(u64, Digest)>, Option<CheckVerdict>);

pub(super) fn decode_check(buf: &[u8]) -> Result<StoredCheck> {
    let mut d = crate::codec::Decoder::new(buf, "consistency check");
    d.version(1)?;
    let digest = |d: &mut crate::codec::Decoder<'_>| -> Result<Digest> {
        Ok(Digest {
            keys: d.u64()?,
            bytes: d.u64()?,
            hash: d.u64()?,
        })
    };
    let own_digest = match d.u8()? {
        0 => None,
        _ => Some((d.u64()?, digest(&mut d)?)),
    };
    let check = match d.u8()? {
        0 => None,
        _ => {
            let index = d.u64()?;
            let leader = digest(&mut d)?;
            let own = match d.u8()? {
                0 => None,
                _ => Some(digest(&mut d)?),
            };
            Some(CheckVerdict { index, leader, own })
        }
    };
    d.finish()?;
    Ok((own_digest, check))
}

impl CheckVerdict {
    /// `match`, `mismatch` or `skipped`.
    pub fn verdict(&self) -> &'static str {
        match self.own {
            Some(d) if d == self.leader => "match",
            Some(_) => "mismatch",
            None => "skipped",
        }
    }
}

impl Peer {
    /// As leader, starts the consistency check every
    /// `consistency_check_interval_ms` (the first one interval after it
    /// began leading). Not tracked: a lost one waits for the next.
    pub(super) fn schedule_check(&mut self, now_ms: u64) {
        let every = self.cfg.consistency_check_interval_ms;
        if every == 0 {
            return;
        }
        if self.next_check_ms == 0 {
            self.next_check_ms = now_ms + every;
        }
        if now_ms < self.next_check_ms {
            return;
        }
        self.next_check_ms = now_ms + every;
        let cmd = AdminCommand::ComputeDigest;
        let _ = self
            .raw
            .propose(admin::ENTRY_CONTEXT.to_vec(), cmd.encode());
    }

    /// Compares the leader's digest at `index` with this replica's own and
    /// records the verdict; a mismatch is logged and counted.
    pub(super) fn verify_digest(&mut self, index: u64, leader: crate::digest::Digest) {
        let own = self.digest.filter(|(at, _)| *at == index).map(|(_, d)| d);
        let check = CheckVerdict { index, leader, own };
        if own.is_some() {
            self.counters.digest_checks += 1;
        }
        if check.verdict() == "mismatch" {
            self.counters.digest_mismatches += 1;
            slog::error!(
                self.logger,
                "consistency check: this replica differs from the leader";
                "index" => index,
                "leader_digest" => format!("{leader:?}"),
                "own_digest" => format!("{own:?}"),
            );
        }
        self.check = Some(check);
    }

    /// The last consistency check this replica verified.
    pub fn last_check(&self) -> Option<CheckVerdict> {
        self.check
    }
}
