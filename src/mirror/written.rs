//! What kshift wrote to the write cluster for mirrored routes, as the produce path records it
//! when the write cluster answers: records per route (the console's write rate) and, per
//! partition, the offset ranges written (the unrouted-writer check compares a partition's
//! log with them: whatever lies between was written around kshift).
//!
//! Memory: per partition, the ranges above what was checked; the check drops checked ones.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::routing::ClusterId;
use crate::sync::lock;

/// Routes with their own write counter; records of routes past the last are counted there.
const COUNTED_ROUTES: usize = 64;
/// Records the write cluster acknowledged, per route position, for mirrored routes.
#[derive(Debug)]
pub struct RouteWrites {
    written: [AtomicU64; COUNTED_ROUTES],
}

impl Default for RouteWrites {
    fn default() -> RouteWrites {
        RouteWrites {
            written: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RouteWrites {
    /// `records` written for route position `route` (a mirrored route).
    pub fn wrote(&self, route: usize, records: i64) {
        let slot = route.min(COUNTED_ROUTES - 1);
        self.written[slot].fetch_add(u64::try_from(records).unwrap_or(0), Ordering::Relaxed);
    }

    /// Records written so far for route position `route`.
    pub fn of(&self, route: usize) -> u64 {
        self.written[route.min(COUNTED_ROUTES - 1)].load(Ordering::Relaxed)
    }
}

/// One partition of a write cluster, by its name there.
pub type Key = (ClusterId, Arc<str>, i32);

/// Offsets kshift wrote to one partition, and how far it was checked.
#[derive(Debug, Default)]
pub struct Partition {
    /// Written ranges not checked yet, `start → end` (exclusive), coalesced.
    pub ranges: BTreeMap<i64, i64>,
    /// Ranges written since the last push to the fleet (coalesced there too).
    pub unshared: Vec<(i64, i64)>,
    /// Everything below is checked; `None` until the first write was seen.
    pub checked_until: Option<i64>,
    /// High watermarks seen by earlier passes, oldest first.
    pub watermarks: VecDeque<(Instant, i64)>,
}

/// The offset ranges kshift wrote, per mirrored partition of a write cluster.
#[derive(Debug, Default)]
pub struct WrittenRanges {
    pub partitions: Mutex<HashMap<Key, Partition>>,
}

impl WrittenRanges {
    /// kshift wrote `records` records to `partition` of `topic` on `cluster`, from `base`.
    pub fn wrote(&self, cluster: ClusterId, topic: &str, partition: i32, base: i64, records: i64) {
        let Some(end) = base
            .checked_add(records)
            .filter(|_| base >= 0 && records > 0)
        else {
            return;
        };
        let mut partitions = lock(&self.partitions);
        let state = partitions
            .entry((cluster, Arc::from(topic), partition))
            .or_default();
        if state.checked_until.is_none() {
            state.checked_until = Some(base);
        }
        insert(&mut state.ranges, base, end);
        match state.unshared.last_mut() {
            Some(last) if last.1 == base => last.1 = end,
            _ => state.unshared.push((base, end)),
        }
    }
}

/// Adds `[start, end)` to `ranges`, merging it with the ranges it touches.
pub fn insert(ranges: &mut BTreeMap<i64, i64>, mut start: i64, mut end: i64) {
    if let Some((&before, &before_end)) = ranges.range(..=start).next_back() {
        if before_end >= start {
            start = before;
            end = end.max(before_end);
        }
    }
    let touched: Vec<i64> = ranges.range(start..=end).map(|(&s, _)| s).collect();
    for key in touched {
        if let Some(other_end) = ranges.remove(&key) {
            end = end.max(other_end);
        }
    }
    ranges.insert(start, end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_start_checking_at_the_first_one_seen() {
        let written = WrittenRanges::default();
        written.wrote(0, "t", 1, 100, 5);
        written.wrote(0, "t", 1, 105, 5);
        written.wrote(0, "t", 1, i64::MAX, 5); // overflows: ignored
        written.wrote(0, "t", 1, -1, 5); // no offset: ignored
        let partitions = lock(&written.partitions);
        let entry = &partitions[&(0, Arc::from("t"), 1)];
        assert_eq!(entry.checked_until, Some(100));
        assert_eq!(
            entry
                .ranges
                .iter()
                .map(|(&s, &e)| (s, e))
                .collect::<Vec<_>>(),
            vec![(100, 110)]
        );
        assert_eq!(entry.unshared, vec![(100, 110)]);
    }
}
