//! Changes to keys as watchers see them, and their encoding as history
//! records (the history itself is kept by the engine, see
//! `corekv_engine::watch`).

use bytes::Bytes;

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A value was written (put, cas, incr, batch put).
    Put,
    /// The key was deleted.
    Delete,
    /// The key's value expired and was removed.
    Expire,
}

impl ChangeKind {
    fn tag(self) -> u8 {
        match self {
            ChangeKind::Put => 1,
            ChangeKind::Delete => 2,
            ChangeKind::Expire => 3,
        }
    }

    fn from_tag(t: u8) -> Result<ChangeKind> {
        Ok(match t {
            1 => ChangeKind::Put,
            2 => ChangeKind::Delete,
            3 => ChangeKind::Expire,
            t => return Err(Error::Corruption(format!("history change tag {t}"))),
        })
    }
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Bytes,
    /// Kind of change.
    pub kind: ChangeKind,
    /// The new value (puts only).
    pub value: Bytes,
    /// Log index of the entry that made the change.
    pub version: u64,
    /// Absolute expiry of the new value in unix ms; 0 = none (puts only).
    pub expire_at_ms: u64,
}

/// The changes one applied entry made in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryChanges {
    /// Region.
    pub region_id: u64,
    /// Log index (the version of every change in it).
    pub index: u64,
    /// The changes, in the order the entry made them.
    pub changes: Vec<Change>,
}

const RECORD_FORMAT: u8 = 1;

/// Encodes an entry's changes as a history record.
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(
        8 + changes
            .iter()
            .map(|c| 24 + c.key.len() + c.value.len())
            .sum::<usize>(),
    );
    e.u8(RECORD_FORMAT).u32(changes.len() as u32);
    for c in changes {
        e.u8(c.kind.tag()).bytes(&c.key);
        if c.kind == ChangeKind::Put {
            e.u64(c.expire_at_ms).bytes(&c.value);
        }
    }
    e.finish()
}

/// Decodes a history record of the entry at `index`.
pub fn decode_changes(index: u64, buf: &[u8]) -> Result<Vec<Change>> {
    let mut d = Decoder::new(buf, "history record");
    d.version(RECORD_FORMAT)?;
    let n = d.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = ChangeKind::from_tag(d.u8()?)?;
        let key = Bytes::copy_from_slice(d.bytes()?);
        let (expire_at_ms, value) = if kind == ChangeKind::Put {
            (d.u64()?, Bytes::copy_from_slice(d.bytes()?))
        } else {
            (0, Bytes::new())
        };
        out.push(Change {
            key,
            kind,
            value,
            version: index,
            expire_at_ms,
        });
    }
    d.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, kind: ChangeKind, value: &str, version: u64) -> Change {
        Change {
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind,
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            expire_at_ms: if kind == ChangeKind::Put { 77 } else { 0 },
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let cs = vec![
            change("a", ChangeKind::Put, "1", 9),
            change("b", ChangeKind::Delete, "", 9),
            change("c", ChangeKind::Expire, "", 9),
        ];
        assert_eq!(decode_changes(9, &encode_changes(&cs)).unwrap(), cs);
        let mut bad = encode_changes(&cs);
        bad.truncate(bad.len() - 1);
        assert!(decode_changes(9, &bad).is_err());
        assert!(decode_changes(9, &[1, 0, 0, 0, 1, 9]).is_err());
    }
}
