//! Unrouted-writer detection: records written to a mirrored partition of the write cluster
//! without going through kshift (a service still pointed at the old cluster, a script, a
//! connector). They never reach the mirror, so a cutover would lose them: each one is found,
//! by partition and offset range, counted, logged, shown on `/status`, and `kshift cutover`
//! refuses while any were seen recently.
//!
//! How: kshift records the offsets of every write it forwards to a mirrored partition (when
//! the write cluster answers). Every `unrouted_check_ms` it compares a partition's log with
//! them: what lies between the offsets kshift wrote, and was not a transaction marker (read
//! back to tell), was written by someone else.
//!
//! Invariants:
//! - No false alarm for kshift's own writes still in flight: a pass checks only up to the
//!   high watermark it saw at least `request_timeout_ms` (plus a second) earlier, by when
//!   every write kshift had sent below it was answered.
//! - Checking starts at the first write kshift saw for the partition: what was there before
//!   is the partition's history (backfill's business), not an unrouted writer.
//! - A fleet shares what each instance wrote through Redis (`{redis_key}:routed:…`, one list
//!   per partition of `start count` ranges, coalesced per pass, the newest 10,000 kept), so no
//!   instance takes another's writes for unrouted ones.
//! - Memory: per partition, the ranges above what was checked; checked ones are dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::control::Control;
use crate::mirror::written::{insert, Key};
use crate::routing::ClusterId;
use crate::sync::lock;

/// Findings kept for `/status` (the newest).
const FINDINGS_KEPT: usize = 100;

/// Records written around kshift, as found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: i64,
    /// When it was found, seconds since the Unix epoch.
    pub found_at: u64,
}

/// What the detector knows, shared by the produce path (which records writes), the checking
/// task, the admin API and metrics.
#[derive(Debug, Default)]
pub struct Unrouted {
    findings: Mutex<VecDeque<(Instant, Finding)>>,
    /// Unrouted records found since start.
    pub records: AtomicU64,
    /// Passes done.
    pub passes: AtomicU64,
}

/// A summary for `/status` and `kshift cutover`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: u64,
    pub passes: u64,
    /// Seconds since the newest finding; `None` when there was none.
    pub last_seen_seconds_ago: Option<f64>,
    pub findings: Vec<Finding>,
}

impl Unrouted {
    /// What was found, for `/status` and the cutover's check.
    pub fn report(&self) -> Report {
        let findings = lock(&self.findings);
        Report {
            records: self.records.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            last_seen_seconds_ago: findings.back().map(|(at, _)| at.elapsed().as_secs_f64()),
            findings: findings
                .iter()
                .map(|(_, finding)| finding.clone())
                .collect(),
        }
    }

    fn found(&self, finding: Finding) {
        self.records.fetch_add(
            u64::try_from(finding.records).unwrap_or(0),
            Ordering::Relaxed,
        );
        let mut findings = lock(&self.findings);
        findings.push_back((Instant::now(), finding));
        while findings.len() > FINDINGS_KEPT {
            findings.pop_front();
        }
    }
}

/// The parts of `[from, to)` no range covers.
fn gaps(ranges: &BTreeMap<i64, i64>, from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut gaps = Vec::new();
    let mut at = from;
    if let Some((_, &end)) = ranges.range(..=from).next_back() {
        at = at.max(end);
    }
    for (&start, &end) in ranges.range(from..to) {
        if start > at {
            gaps.push((at, start));
        }
        at = at.max(end);
    }
    if at < to {
        gaps.push((at, to));
    }
    gaps
}

/// Checks every partition kshift writes mirrored records to, every `interval`, until
/// `shutdown` turns true.
pub async fn run(
    state: Arc<Control>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let grace = state
        .clusters
        .iter()
        .map(|c| c.settings.request_timeout)
        .max()
        .unwrap_or(Duration::from_secs(30))
        + Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        check(&state, grace).await;
        state.unrouted.passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pass over every partition.
async fn check(state: &Control, grace: Duration) {
    let fleet = state.mirrors.offsets.fleet();
    let keys: Vec<Key> = lock(&state.written_ranges.partitions)
        .keys()
        .cloned()
        .collect();
    for key in keys {
        let (cluster_id, topic, partition) = key.clone();
        let Some(cluster) = state.clusters.get(cluster_id) else {
            continue;
        };
        // Share this instance's writes; learn the fleet's.
        let unshared = match lock(&state.written_ranges.partitions).get_mut(&key) {
            Some(entry) => std::mem::take(&mut entry.unshared),
            None => continue,
        };
        let mut others = Vec::new();
        if let Some(fleet) = &fleet {
            let name = &cluster.name;
            for (start, end) in &unshared {
                fleet.push_routed(name, &topic, partition, *start, end - start);
            }
            match fleet.load_routed(name, &topic, partition).await {
                Ok(ranges) => others = ranges,
                Err(error) => {
                    // Without the fleet's writes, another instance's would look unrouted.
                    tracing::debug!(%error, "unrouted check skipped: the fleet's writes are not readable");
                    continue;
                }
            }
        }
        let watermark = match cluster.list_offset(&topic, partition, -1).await {
            Ok(offset) => offset,
            Err(error) => {
                tracing::debug!(cluster = %cluster.name, %topic, partition, %error, "unrouted check: no high watermark");
                continue;
            }
        };
        // The gaps to look at: up to a watermark old enough that kshift's own writes below
        // it have all been answered.
        let gaps = {
            let mut partitions = lock(&state.written_ranges.partitions);
            let Some(entry) = partitions.get_mut(&key) else {
                continue;
            };
            for (start, count) in others {
                if let Some(end) = start.checked_add(count) {
                    insert(&mut entry.ranges, start, end);
                }
            }
            let now = Instant::now();
            entry.watermarks.push_back((now, watermark));
            let mut limit = None;
            while let Some(&(at, offset)) = entry.watermarks.front() {
                if now.duration_since(at) < grace {
                    break;
                }
                limit = Some(offset);
                entry.watermarks.pop_front();
            }
            let (Some(limit), Some(from)) = (limit, entry.checked_until) else {
                continue;
            };
            if limit <= from {
                continue;
            }
            let gaps = gaps(&entry.ranges, from, limit);
            entry.checked_until = Some(limit);
            // What is checked is forgotten.
            let below: Vec<i64> = entry
                .ranges
                .range(..limit)
                .filter(|(_, &end)| end <= limit)
                .map(|(&start, _)| start)
                .collect();
            for start in below {
                entry.ranges.remove(&start);
            }
            gaps
        };
        for (from, to) in gaps {
            examine(state, cluster_id, &topic, partition, from, to).await;
        }
    }
}

/// Reads `[from, to)` of the partition: data batches there were written around kshift
/// (transaction markers are the coordinator's).
async fn examine(
    state: &Control,
    cluster_id: ClusterId,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    to: i64,
) {
    let cluster = &state.clusters[cluster_id];
    let source = crate::mirror::Source {
        cluster: cluster.clone(),
        topic: topic.clone(),
    };
    let mut offset = from;
    let mut run: Option<(i64, i64, i64)> = None; // (first, last, records)
    while offset < to {
        let batches = match crate::mirror::fetch_batches(&source, partition, offset).await {
            Ok(batches) if !batches.is_empty() => batches,
            Ok(_) => break,
            Err(error) => {
                tracing::debug!(cluster = %cluster.name, %topic, partition, %error, "unrouted check: cannot read a gap");
                break;
            }
        };
        for batch in batches {
            let Some(last) = batch.checked_last_offset() else {
                return;
            };
            if last < offset {
                continue;
            }
            if batch.base_offset() >= to {
                offset = to;
                break;
            }
            if !batch.is_control() {
                let first = batch.base_offset().max(from);
                let last = last.min(to - 1);
                let records = i64::from(batch.record_count());
                run = Some(match run {
                    Some((start, _, count)) => (start, last, count + records),
                    None => (first, last, records),
                });
            }
            offset = last.saturating_add(1);
        }
    }
    if run.is_none() {
        tracing::debug!(cluster = %cluster.name, %topic, partition, from, to, "unrouted check: the gap holds transaction markers only");
    }
    if let Some((first, last, records)) = run {
        let found_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        tracing::warn!(
            cluster = %cluster.name,
            %topic,
            partition,
            offsets = %format!("{first}..={last}"),
            records,
            "records written to a mirrored partition without going through kshift: the mirror does not have them, and a cutover would lose them"
        );
        cluster.metrics.unrouted_records(&cluster.name, records);
        state.unrouted.found(Finding {
            cluster: cluster.name.to_string(),
            topic: topic.to_string(),
            partition,
            first_offset: first,
            last_offset: last,
            records,
            found_at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_and_gaps_are_what_no_range_covers() {
        let mut ranges = BTreeMap::new();
        insert(&mut ranges, 10, 20);
        insert(&mut ranges, 20, 25); // touches: one range
        insert(&mut ranges, 30, 40);
        insert(&mut ranges, 35, 50); // overlaps
        insert(&mut ranges, 5, 8);
        assert_eq!(
            ranges.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(),
            vec![(5, 8), (10, 25), (30, 50)]
        );
        assert_eq!(gaps(&ranges, 5, 60), vec![(8, 10), (25, 30), (50, 60)]);
        assert_eq!(gaps(&ranges, 12, 28), vec![(25, 28)]);
        assert_eq!(gaps(&ranges, 31, 45), vec![]);
        assert_eq!(gaps(&BTreeMap::new(), 0, 3), vec![(0, 3)]);
    }
}
