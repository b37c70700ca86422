//! Which owner (shard) of a node holds each region replica, and which part
//! of the hash space each one covers on disk.
//!
//! Every region of a node keeps its data in the one shared `data` column
//! family, keyed by hash. Two replicas of one node whose ranges overlap
//! would write over each other's keys (an old parent applying entries over
//! a newer split-off region, a snapshot's range deletion wiping another
//! region's data), so the node admits a replica's range only where no other
//! replica of the node holds one, whichever shard that replica is on. And
//! one region has at most one replica per node: a shard creates a replica
//! only if no shard holds one.
//!
//! The directory is shared by every [`crate::Replicas`] of a node and taken
//! only when a replica is created, opened, installs a snapshot, changes its
//! range, moves to another shard or is destroyed: never per request.
//!
//! A replica's range here only grows as a write that covers more lands and
//! only shrinks once the write that shrinks it is in RocksDB (see
//! [`Directory::set_range`]), so it always covers what the replica has or
//! is about to have on disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::region::Region;

/// The owner (shard) a replica of `region_id` goes on unless placed
/// otherwise, among `owners` of a node: regions spread round the shards.
pub fn default_owner(region_id: u64, owners: usize) -> usize {
    (region_id.wrapping_sub(1) % owners as u64) as usize
}

/// A hash range `[start, end)` with `end` as a number (2^64 for the end of
/// the space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First hash.
    pub start: u64,
    /// First hash after the range, 2^64 at most.
    pub end: u128,
}

impl Span {
    /// The span of a region's range.
    pub fn of(region: &Region) -> Span {
        Span {
            start: region.start_hash,
            end: region.end_u128(),
        }
    }

    /// True when the two share a hash.
    pub fn overlaps(&self, other: &Span) -> bool {
        u128::from(self.start) < other.end && u128::from(other.start) < self.end
    }

    /// The smallest span covering both.
    pub fn hull(&self, other: &Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One region's replica on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Owner (shard) holding it.
    pub owner: usize,
    /// What it covers on disk or is installing; `None` while it waits for
    /// its first snapshot.
    pub span: Option<Span>,
}

/// The node-wide directory of replicas (cheap to clone: one shared table).
#[derive(Clone, Default)]
pub struct Directory(Arc<Mutex<BTreeMap<u64, Claim>>>);

/// Why a replica's range was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The region already covering part of it.
    pub region_id: u64,
    /// The owner holding that region.
    pub owner: usize,
}

impl Directory {
    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Claim>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a replica opened from disk by `owner`, covering `region`'s
    /// range. Returns the claim another owner already holds, if one does
    /// (the replica must not be opened twice).
    pub fn open(&self, region: &Region, owner: usize) -> Result<(), Claim> {
        let mut t = self.table();
        match t.get(&region.id) {
            Some(c) if c.owner != owner => Err(*c),
            _ => {
                t.insert(
                    region.id,
                    Claim {
                        owner,
                        span: Some(Span::of(region)),
                    },
                );
                Ok(())
            }
        }
    }

    /// Records a new replica of `region_id` on `owner` that holds no range
    /// yet. Returns the claim if some owner holds the region already.
    pub fn create(&self, region_id: u64, owner: usize) -> Result<(), Claim> {
        let mut t = self.table();
        if let Some(c) = t.get(&region_id) {
            return Err(*c);
        }
        t.insert(region_id, Claim { owner, span: None });
        Ok(())
    }

    /// Admits `span` for `region_id` (a snapshot about to be installed)
    /// unless another region of the node covers part of it. On success the
    /// region's range here becomes the hull of what it had and `span`.
    pub fn admit(&self, region_id: u64, span: Span) -> Result<(), Overlap> {
        let mut t = self.table();
        if let Some((&id, c)) = t
            .iter()
            .find(|(id, c)| **id != region_id && c.span.is_some_and(|s| s.overlaps(&span)))
        {
            return Err(Overlap {
                region_id: id,
                owner: c.owner,
            });
        }
        if let Some(c) = t.get_mut(&region_id) {
            c.span = Some(c.span.map_or(span, |s| s.hull(&span)));
        }
        Ok(())
    }

    /// Sets the range of `region_id` to what is now on disk (after a split
    /// was written, or a snapshot was persisted); `None` when an admitted
    /// snapshot was not taken after all.
    pub fn set_range(&self, region_id: u64, span: Option<Span>) {
        if let Some(c) = self.table().get_mut(&region_id) {
            c.span = span;
        }
    }

    /// A split wrote the state of `region` (split off a parent of this
    /// node; its data is on disk): the range is the new region's from now
    /// on. Claimed for `owner` unless an owner holds a replica of it
    /// already (one its messages created before the split was applied
    /// here). Returns the owner holding it.
    pub fn split_off(&self, region: &Region, owner: usize) -> usize {
        let mut t = self.table();
        let c = t.entry(region.id).or_insert(Claim { owner, span: None });
        c.span = Some(Span::of(region));
        c.owner
    }

    /// Hands `region_id` to another owner, its range kept.
    pub fn hand_over(&self, region_id: u64, to: usize) {
        if let Some(c) = self.table().get_mut(&region_id) {
            c.owner = to;
        }
    }

    /// Forgets `region_id` (its replica was destroyed).
    pub fn remove(&self, region_id: u64) {
        self.table().remove(&region_id);
    }

    /// The claim on `region_id`, if any.
    pub fn get(&self, region_id: u64) -> Option<Claim> {
        self.table().get(&region_id).copied()
    }

    /// Every claim, by region id (tests and status).
    pub fn claims(&self) -> BTreeMap<u64, Claim> {
        self.table().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u128) -> Span {
        Span { start, end }
    }

    #[test]
    fn a_range_is_admitted_only_where_no_other_region_is() {
        let d = Directory::default();
        let parent = Region {
            id: 1,
            start_hash: 0,
            end_hash: 100,
            epoch: Default::default(),
            peers: vec![],
        };
        d.open(&parent, 0).unwrap();
        d.create(2, 1).unwrap();
        // The split-off half while the parent still covers it: refused,
        // whichever owner holds the parent.
        assert_eq!(
            d.admit(2, span(50, 100)),
            Err(Overlap {
                region_id: 1,
                owner: 0
            })
        );
        // The parent applied the split: its range shrinks, the half fits.
        d.set_range(1, Some(span(0, 50)));
        d.admit(2, span(50, 100)).unwrap();
        assert_eq!(d.get(2).unwrap().span, Some(span(50, 100)));
        // The split-off half's claim keeps the owner that created it.
        assert_eq!(
            d.split_off(
                &Region {
                    id: 2,
                    start_hash: 50,
                    end_hash: 100,
                    ..parent.clone()
                },
                0
            ),
            1
        );
        // A region's own range never blocks it; the range only grows
        // until it is set.
        d.admit(1, span(0, 40)).unwrap();
        assert_eq!(d.get(1).unwrap().span, Some(span(0, 50)));
        // One replica of a region per node.
        assert_eq!(d.create(2, 0).unwrap_err().owner, 1);
        assert!(d.open(&parent, 1).is_err());
        d.hand_over(1, 1);
        assert_eq!(d.get(1).unwrap().owner, 1);
        d.remove(2);
        assert!(d.get(2).is_none());
        assert!(span(0, 1 << 64).overlaps(&span(u64::MAX, 1 << 64)));
        assert!(!span(0, 50).overlaps(&span(50, 60)));
    }
}
