//! Backfill: on routes with `backfill = true`, each mirror partition is kept a complete copy
//! of the write cluster's partition, in offset order.
//!
//! Invariants:
//! - The mirror writer is the only one feeding a partition's producer, so history and live
//!   batches reach the mirror in the write cluster's offset order: before it mirrors a batch
//!   at write offset W it copies, from the write cluster, whatever lies between what the
//!   mirror has (`covered`, else the offset map's end, else the write cluster's log start
//!   when the mirror partition is empty) and W. A live batch the copy already took is skipped.
//! - Copies go through the same idempotent producer as live batches (a fetch's batches
//!   together, pipelined, awaited before the next fetch) and feed the offset map, which is
//!   also the checkpoint: a restarted kshift resumes after the last copied batch (needs
//!   `offset_map_file`).
//! - Transaction markers and aborted transactions are not copied (read_committed fetches,
//!   aborted ranges skipped).
//! - A mirror partition that already holds records kshift has no record of copying is not
//!   backfilled: its history could only land after them, out of order.
//!
//! One kshift instance must mirror a partition (a fleet's instances would each copy the
//! records the others mirror).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use serde::Serialize;

use super::offset_map::OffsetMap;
use super::{lock, MirrorItem, MirrorWriter, Source};
use crate::codec::batch::{self, Batch};
use crate::routing::ClusterId;

/// Bytes asked per fetch from the write cluster.
const FETCH_BYTES: i32 = 1 << 20;
/// Fetch versions kshift sends for backfill (≤ 12: topics by name).
const FETCH_VERSION: i16 = 12;
/// How long a copy waits for records the write cluster does not serve yet (an open
/// transaction holds the last stable offset back).
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// What a fill found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Filled {
    /// Everything before the batch is on the mirror: mirror the batch.
    Ready,
    /// The batch itself was already copied.
    AlreadyCopied,
}

type PartitionKey = (Arc<str>, i32, ClusterId);

/// Backfill state shared by the writers and the admin API.
#[derive(Debug, Default)]
pub struct Progress {
    /// Write offsets below this are on the mirror.
    covered: Mutex<HashMap<PartitionKey, i64>>,
    /// Partitions a backfill was requested for, with the write cluster's end then.
    pub requested: Mutex<BTreeMap<(String, i32, ClusterId), i64>>,
    /// Copy pace in bytes per second; 0 is unlimited.
    pub bytes_per_sec: AtomicU64,
}

/// One requested partition's progress, as `GET /backfill` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillState {
    pub topic: String,
    pub partition: i32,
    pub mirror: String,
    /// Write offsets below this are on the mirror.
    pub copied_until: i64,
    /// The write cluster's end when the backfill was requested.
    pub target: i64,
    pub done: bool,
}

impl Progress {
    pub(super) fn covered(&self, topic: &Arc<str>, partition: i32, cluster: ClusterId, until: i64) {
        let mut covered = lock(&self.covered);
        let entry = covered
            .entry((topic.clone(), partition, cluster))
            .or_insert(until);
        *entry = (*entry).max(until);
    }

    fn covered_at(&self, topic: &Arc<str>, partition: i32, cluster: ClusterId) -> Option<i64> {
        lock(&self.covered)
            .get(&(topic.clone(), partition, cluster))
            .copied()
    }

    /// Progress of every partition a backfill was requested for.
    pub fn states(&self, offsets: &OffsetMap, names: &[String]) -> Vec<BackfillState> {
        let requested = lock(&self.requested).clone();
        requested
            .into_iter()
            .map(|((topic, partition, cluster), target)| {
                let name: Arc<str> = Arc::from(topic.as_str());
                let copied_until = self
                    .covered_at(&name, partition, cluster)
                    .or_else(|| offsets.end(&topic, partition, cluster))
                    .unwrap_or(0);
                BackfillState {
                    topic,
                    partition,
                    mirror: names.get(cluster).cloned().unwrap_or_default(),
                    copied_until,
                    target,
                    done: copied_until >= target,
                }
            })
            .collect()
    }

    async fn pace(&self, bytes: usize) {
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
        }
    }
}

impl MirrorWriter {
    /// Copies what the mirror lacks of `item`'s partition before `until` (the item's write
    /// offset; the write cluster's end for a backfill request).
    pub(super) async fn fill(
        &mut self,
        item: &MirrorItem,
        source: &Source,
        until: Option<i64>,
    ) -> Result<Filled, String> {
        let partition = item.write_partition;
        let until = match until {
            Some(until) => until,
            None => source
                .cluster
                .list_offset(&source.topic, partition, -1)
                .await
                .map_err(|e| e.to_string())?,
        };
        let known = self
            .shared
            .backfill
            .covered_at(&item.topic, partition, self.shared.cluster.id)
            .or_else(|| {
                self.shared
                    .offsets
                    .end(&item.topic, partition, self.shared.cluster.id)
            });
        let start = match known {
            Some(start) => start,
            None => {
                let mirror_end = self
                    .shared
                    .cluster
                    .list_offset(&item.mirror_topic, partition, -1)
                    .await
                    .map_err(|e| e.to_string())?;
                if mirror_end > 0 {
                    // Don't ask again for every batch.
                    self.shared.backfill.covered(
                        &item.topic,
                        partition,
                        self.shared.cluster.id,
                        until,
                    );
                    return Err(format!(
                        "{}[{partition}] on {} already holds {mirror_end} records kshift has no record of copying; \
                         history could only be appended after them, out of order: not backfilled",
                        item.mirror_topic, self.shared.cluster.name
                    ));
                }
                source
                    .cluster
                    .list_offset(&source.topic, partition, -2)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if start > until && !item.fill_only {
            return Ok(Filled::AlreadyCopied);
        }
        let mut offset = start;
        let mut stalled_since: Option<Instant> = None;
        // Producers whose transaction from the current offset on was aborted.
        let mut aborting: HashSet<i64> = HashSet::new();
        while offset < until {
            let (batches, mut aborted) = fetch(source, partition, offset).await?;
            if batches.is_empty() {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STALL_LIMIT {
                    return Err(format!(
                        "{}[{partition}] on {} serves nothing at offset {offset} (before {until}) after {STALL_LIMIT:?}",
                        source.topic, source.cluster.name
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            stalled_since = None;
            // The fetch's batches go to the producer together (pipelined, merged), and are
            // awaited before the next fetch: `covered` only ever says what landed.
            let mut copies = Vec::new();
            let mut reached = offset;
            for batch in batches {
                if batch.last_offset() < offset {
                    continue;
                }
                if batch.base_offset() >= until {
                    reached = until;
                    break;
                }
                aborted.retain(|(producer, first)| {
                    let starts = *first <= batch.base_offset();
                    if starts {
                        aborting.insert(*producer);
                    }
                    !starts
                });
                let next = batch
                    .checked_last_offset()
                    .and_then(|last| last.checked_add(1))
                    .ok_or_else(|| {
                        format!(
                            "{}[{partition}] on {} answered a batch whose offsets overflow",
                            source.topic, source.cluster.name
                        )
                    })?;
                let producer = batch.producer_id();
                if batch.is_control() {
                    aborting.remove(&producer);
                } else if !(batch.is_transactional() && aborting.contains(&producer)) {
                    self.shared.backfill.pace(batch.bytes().len()).await;
                    let base = batch.base_offset();
                    copies.push(self.submit_copy(item, base, partition, batch));
                }
                reached = next;
            }
            for copied in copies {
                match copied.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => return Err("mirror producer stopped".into()),
                }
            }
            offset = reached;
            self.shared
                .backfill
                .covered(&item.topic, partition, self.shared.cluster.id, offset);
        }
        Ok(Filled::Ready)
    }
}

/// One read_committed fetch from `source` (the write cluster; the mirror, to find where a
/// batch landed): complete batches, and aborted transactions as (producer id, first offset).
pub(super) async fn fetch(
    source: &Source,
    partition: i32,
    offset: i64,
) -> Result<(Vec<Batch>, Vec<(i64, i64)>), String> {
    let cluster = &source.cluster;
    let version = cluster
        .version_for(ApiKey::Fetch, FETCH_VERSION)
        .await
        .map_err(|e| e.to_string())?;
    let leader = cluster
        .leader(&source.topic, partition)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{}[{partition}] has no leader on {}",
                source.topic, cluster.name
            )
        })?;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        // Tansu answers a fetch with max_wait_ms 0 without the partition.
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(source.topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(FETCH_BYTES)])]);
    let response: FetchResponse = cluster
        .request_node(leader, ApiKey::Fetch, version, &request)
        .await
        .map_err(|e| e.to_string())?;
    let data = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| format!("{} answered a fetch without the partition", cluster.name))?;
    if data.error_code != 0 {
        let error = ResponseError::try_from_code(data.error_code)
            .map_or_else(|| format!("error {}", data.error_code), |e| e.to_string());
        return Err(format!(
            "fetching {}[{partition}] at {offset} from {}: {error}",
            source.topic, cluster.name
        ));
    }
    let batches = batch::complete_batches(data.records.clone().unwrap_or_else(Bytes::new))
        .map_err(|e| e.to_string())?;
    let aborted = data
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    Ok((batches, aborted))
}
