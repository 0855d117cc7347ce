//! Mirroring: every record a client writes to a route's write cluster is copied to the
//! route's mirror clusters by one [`MirrorWriter`] task per mirror cluster, under kshift's
//! own producer identity there.
//!
//! Invariants:
//! - Order: items enter a mirror cluster's queue in the order their produce requests were
//!   sent to the write cluster (the submit phase of one client connection is sequential),
//!   and the writer mirrors them in that order, one request at a time. When it has fallen
//!   behind, the queued `async` batches of one partition go as one merged batch in one
//!   request (each still counted, mapped and journalled on its own). For one producer
//!   connection per partition — the normal case — the mirror therefore receives batches in
//!   the write cluster's offset order. Producers on different connections writing the same
//!   partition may interleave differently on the mirror.
//! - Identity: a mirror never sees the client's producer id, epoch or sequences. The writer
//!   calls InitProducerId on the mirror, numbers each mirror partition's batches itself and
//!   retries with the same sequence, so the mirror broker drops kshift's own duplicates.
//! - Memory: each queue is bounded in bytes. When full, an `async` route's item is dropped
//!   and counted (never blocking the write path); a `sync` route's client gets a retriable
//!   error. Every record that fails to mirror or is dropped is logged with its
//!   (topic, partition, write-offset range), for a later repair.
//! - Transactions: records produced in a transaction are held until the client's EndTxn
//!   commits (then queued in order) or aborts (then discarded).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

mod backfill;
pub use backfill::{queue_backfill, BackfillState};

use super::batch::{self, Batch};
use super::failures::{FailedRange, FailureJournal, MirrorTarget};
use super::offset_map::{OffsetMap, OffsetMapping};
use crate::cluster::{is_leadership_error, BackendError, BrokerConnection, Cluster};
use crate::codec::{self, decode_body};
use crate::routing::Partitioning;
use crate::ClusterId;

/// Attempts per mirror batch before it is counted as failed.
const MAX_ATTEMPTS: u32 = 5;
/// Pause between attempts, doubled each time.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Versions kshift's own mirror producer sends (capped by the mirror's brokers).
const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// Uncommitted transactional records older than this are dropped (the transaction timed
/// out at its coordinator without an EndTxn through kshift).
const TRANSACTION_HOLD_LIMIT: Duration = Duration::from_secs(15 * 60);

/// One write-cluster append to copy to one mirror cluster.
pub struct MirrorItem {
    pub route: usize,
    /// The client-visible topic, for logs and the offset map.
    pub topic: Arc<str>,
    /// The topic's name on the mirror cluster.
    pub mirror_topic: Arc<str>,
    pub write_partition: i32,
    /// The batches as the client sent them.
    pub records: Bytes,
    pub record_count: i64,
    pub partitioning: Partitioning,
    pub mirror_percent: u8,
    /// Resolves to the write cluster's base offset once the write succeeded; `None` (or a
    /// dropped sender) when it failed, and there is nothing to mirror.
    pub written: oneshot::Receiver<Option<i64>>,
    /// For `sync` routes: told when the mirror has the records (or failed).
    pub done: Option<oneshot::Sender<Result<(), String>>>,
    pub enqueued_at: Instant,
    /// For `backfill` routes: where to copy from what the mirror lacks before this item.
    pub source: Option<Source>,
    /// A backfill request with no records of its own: copy up to the source's end.
    pub fill_only: bool,
}

/// The write cluster's copy of a topic, which a backfill reads.
#[derive(Clone)]
pub struct Source {
    pub cluster: Arc<Cluster>,
    /// The topic's name there.
    pub topic: Arc<str>,
}

impl MirrorItem {
    /// This item's records at `write_base_offset`, missing from `mirror_cluster`.
    pub fn failed_range(
        &self,
        write_base_offset: i64,
        mirror_cluster: &str,
        reason: String,
    ) -> FailedRange {
        FailedRange {
            topic: self.topic.to_string(),
            write_partition: self.write_partition,
            first_offset: write_base_offset,
            last_offset: write_base_offset + self.record_count - 1,
            mirror_cluster: mirror_cluster.to_string(),
            reason,
            mirror: Some(self.target()),
        }
    }

    /// Where and how this item is mirrored, for the failure journal.
    pub fn target(&self) -> MirrorTarget {
        MirrorTarget {
            mirror_topic: self.mirror_topic.to_string(),
            partitioning: self.partitioning,
            mirror_percent: self.mirror_percent,
        }
    }
}

/// Counters of one mirror cluster, for metrics and tests.
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub mirrored_batches: AtomicU64,
    pub mirrored_records: AtomicU64,
    pub failed_batches: AtomicU64,
    pub failed_records: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub dropped_records: AtomicU64,
    /// Records queued and not yet mirrored.
    pub lag_records: AtomicU64,
    /// The same, per route position (for the status page).
    pub lag_records_by_route: Mutex<std::collections::BTreeMap<usize, u64>>,
    pub queued_bytes: AtomicUsize,
    /// When the item being mirrored now was queued; `None` while idle.
    pub current_since: Mutex<Option<Instant>>,
}

/// A snapshot of [`MirrorStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounts {
    pub mirrored_batches: u64,
    pub mirrored_records: u64,
    pub failed_batches: u64,
    pub failed_records: u64,
    pub dropped_batches: u64,
    pub dropped_records: u64,
    pub lag_records: u64,
    pub queued_bytes: usize,
}

impl MirrorStats {
    fn add_lag(&self, route: usize, records: u64) {
        self.lag_records.fetch_add(records, Ordering::Relaxed);
        *lock(&self.lag_records_by_route).entry(route).or_default() += records;
    }

    fn remove_lag(&self, route: usize, records: u64) {
        self.lag_records.fetch_sub(records, Ordering::Relaxed);
        let mut by_route = lock(&self.lag_records_by_route);
        if let Some(lag) = by_route.get_mut(&route) {
            *lag = lag.saturating_sub(records);
        }
    }

    /// Records waiting for this mirror, per route position.
    pub fn lag_by_route(&self) -> std::collections::BTreeMap<usize, u64> {
        lock(&self.lag_records_by_route).clone()
    }

    /// How long the item being mirrored now has waited since it was queued.
    pub fn lag_seconds(&self) -> f64 {
        lock(&self.current_since).map_or(0.0, |since| since.elapsed().as_secs_f64())
    }

    pub fn snapshot(&self) -> MirrorCounts {
        MirrorCounts {
            mirrored_batches: self.mirrored_batches.load(Ordering::Relaxed),
            mirrored_records: self.mirrored_records.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            failed_records: self.failed_records.load(Ordering::Relaxed),
            dropped_batches: self.dropped_batches.load(Ordering::Relaxed),
            dropped_records: self.dropped_records.load(Ordering::Relaxed),
            lag_records: self.lag_records.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The queue in front of one mirror cluster's writer.
struct MirrorQueue {
    cluster: Arc<Cluster>,
    items: mpsc::UnboundedSender<MirrorItem>,
    /// Bytes of records queued; the queue is full at `limit_bytes`.
    limit_bytes: usize,
    stats: Arc<MirrorStats>,
}

/// How one mirror cluster's queue and writer behave (`[clusters.NAME]`).
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// `mirror_queue_bytes`: records queued beyond this are refused.
    pub queue_bytes: usize,
    /// `mirror_linger_ms`: how long an `async` batch waits for more of its partition.
    pub linger: Duration,
}

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    NoMirror,
}

/// Everything about mirroring that all connections share.
pub struct Mirrors {
    /// One queue per cluster, indexed by [`ClusterId`].
    queues: Vec<MirrorQueue>,
    pub offsets: Arc<OffsetMap>,
    /// Where batches missing from a mirror are journalled for `kshift repair`.
    pub failures: Arc<FailureJournal>,
    /// Items of open transactions, by transactional id, in produce order.
    transactions: Mutex<HashMap<String, Vec<(MirrorItem, ClusterId)>>>,
    /// Backfill progress and pace, shared with the writers.
    pub backfill: Arc<backfill::Progress>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl Mirrors {
    /// Starts one writer per cluster (idle until a route mirrors to it).
    pub fn start(
        clusters: &[Arc<Cluster>],
        settings: &[WriterSettings],
        offsets: Arc<OffsetMap>,
        failures: Arc<FailureJournal>,
    ) -> Arc<Mirrors> {
        let backfill = Arc::new(backfill::Progress::default());
        let queues = clusters
            .iter()
            .zip(settings)
            .map(|(cluster, settings)| {
                let (items, receiver) = mpsc::unbounded_channel();
                let stats = Arc::new(MirrorStats::default());
                let writer = MirrorWriter {
                    backfill: backfill.clone(),
                    cluster: cluster.clone(),
                    stats: stats.clone(),
                    offsets: offsets.clone(),
                    failures: failures.clone(),
                    producer: None,
                    sequences: HashMap::new(),
                    connections: HashMap::new(),
                    linger: settings.linger,
                };
                tokio::spawn(writer.run(receiver));
                MirrorQueue {
                    cluster: cluster.clone(),
                    items,
                    limit_bytes: settings.queue_bytes,
                    stats,
                }
            })
            .collect();
        Arc::new(Mirrors {
            queues,
            offsets,
            failures,
            transactions: Mutex::default(),
            backfill,
        })
    }

    pub fn stats_of(&self, cluster: ClusterId) -> Option<&MirrorStats> {
        self.queues.get(cluster).map(|q| &*q.stats)
    }

    pub fn stats(&self, cluster: ClusterId) -> MirrorCounts {
        self.queues
            .get(cluster)
            .map(|q| q.stats.snapshot())
            .unwrap_or_default()
    }

    /// Waits until every mirror queue is empty or `deadline` passes; returns the records
    /// still waiting.
    pub async fn flush(&self, deadline: Instant) -> u64 {
        loop {
            let waiting: u64 = self
                .queues
                .iter()
                .map(|q| q.stats.lag_records.load(Ordering::Relaxed))
                .sum();
            if waiting == 0 || Instant::now() >= deadline {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Queues `item` for `cluster`, or refuses it (and counts the drop) when the queue is
    /// full. A refused item is handed back so a `sync` caller can fail its client.
    pub fn offer(
        &self,
        cluster: ClusterId,
        item: MirrorItem,
    ) -> Result<(), Box<(Refused, MirrorItem)>> {
        let Some(queue) = self.queues.get(cluster) else {
            return Err(Box::new((Refused::NoMirror, item)));
        };
        let size = item.records.len();
        let queued = queue.stats.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > queue.limit_bytes {
            queue.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            queue.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
            queue
                .stats
                .dropped_records
                .fetch_add(item.record_count as u64, Ordering::Relaxed);
            queue.cluster.metrics.mirror_outcome(
                &queue.cluster.name,
                item.route,
                "dropped",
                item.record_count as u64,
            );
            return Err(Box::new((Refused::QueueFull, item)));
        }
        queue.stats.add_lag(item.route, item.record_count as u64);
        if let Err(mpsc::error::SendError(item)) = queue.items.send(item) {
            queue.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            queue.stats.remove_lag(item.route, item.record_count as u64);
            return Err(Box::new((Refused::NoMirror, item)));
        }
        Ok(())
    }

    /// Journals a refused item once its write offset is known.
    pub fn journal_dropped(&self, item: &MirrorItem, cluster: ClusterId, write_base_offset: i64) {
        let Some(queue) = self.queues.get(cluster) else {
            return;
        };
        if item.source.is_some() {
            return; // a backfill route copies it before its next batch
        }
        self.failures.record(&item.failed_range(
            write_base_offset,
            &queue.cluster.name,
            "mirror queue full".into(),
        ));
    }

    /// Holds `item` until transaction `transactional_id` ends.
    pub fn hold(&self, transactional_id: &str, cluster: ClusterId, item: MirrorItem) {
        let mut transactions = lock(&self.transactions);
        transactions.retain(|id, items| {
            let stale = items
                .first()
                .is_some_and(|(item, _)| item.enqueued_at.elapsed() > TRANSACTION_HOLD_LIMIT);
            if stale {
                tracing::warn!(transactional_id = %id, "dropping mirror records of a transaction that never ended through kshift");
            }
            !stale
        });
        transactions
            .entry(transactional_id.to_string())
            .or_default()
            .push((item, cluster));
    }

    /// The client's EndTxn succeeded: queue the transaction's records, or drop them.
    pub fn end_transaction(&self, transactional_id: &str, committed: bool) {
        let items = lock(&self.transactions)
            .remove(transactional_id)
            .unwrap_or_default();
        if !committed {
            tracing::debug!(
                transactional_id,
                batches = items.len(),
                "transaction aborted; not mirrored"
            );
            return;
        }
        for (item, cluster) in items {
            if let Err(refused) = self.offer(cluster, item) {
                let (reason, mut item) = *refused;
                log_dropped(&item, cluster, &reason);
                if let Ok(Some(offset)) = item.written.try_recv() {
                    self.journal_dropped(&item, cluster, offset);
                }
            }
        }
    }
}

/// Logs a refused item with the write-offset range a repair would replay. The offsets
/// are known only once the write has been acknowledged, so this waits for it.
pub fn log_dropped(item: &MirrorItem, cluster: ClusterId, reason: &Refused) {
    tracing::warn!(
        topic = %item.topic,
        partition = item.write_partition,
        records = item.record_count,
        mirror_cluster = cluster,
        route = item.route,
        ?reason,
        "mirror queue refused records; they exist only on the write cluster"
    );
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// kshift's idempotent producer on one mirror cluster.
struct MirrorWriter {
    backfill: Arc<backfill::Progress>,
    cluster: Arc<Cluster>,
    stats: Arc<MirrorStats>,
    offsets: Arc<OffsetMap>,
    failures: Arc<FailureJournal>,
    /// Producer id and epoch from the mirror's InitProducerId.
    producer: Option<(i64, i16)>,
    /// Next sequence per (mirror topic, partition).
    sequences: HashMap<(Arc<str>, i32), i32>,
    /// kshift's own connections to the mirror's brokers.
    connections: HashMap<i32, BrokerConnection>,
    /// `mirror_linger_ms`.
    linger: Duration,
}

/// Why a mirror attempt failed, and whether trying again can help.
enum AttemptError {
    Retry(String),
    /// The mirror lost kshift's producer state: start a new producer, then retry.
    ResetProducer(String),
    Fatal(String),
}

impl MirrorWriter {
    async fn run(mut self, mut items: mpsc::UnboundedReceiver<MirrorItem>) {
        // Items taken off the channel but not mirrored yet, in queue order.
        let mut waiting: VecDeque<MirrorItem> = VecDeque::new();
        loop {
            let item = match waiting.pop_front() {
                Some(item) => item,
                None => match items.recv().await {
                    Some(item) => item,
                    None => return,
                },
            };
            while let Ok(more) = items.try_recv() {
                waiting.push_back(more);
            }
            if mergeable(&item) {
                let until = item.enqueued_at + self.linger;
                linger(&mut items, &mut waiting, until, item.records.len()).await;
            }
            let group = take_group(item, &mut waiting);
            let queued: Vec<(usize, u64, usize)> = group
                .iter()
                .map(|item| (item.records.len(), item.record_count as u64, item.route))
                .collect();
            *lock(&self.stats.current_since) = group.first().map(|item| item.enqueued_at);
            if group.len() == 1 {
                for item in group {
                    self.mirror(item).await;
                }
            } else {
                self.mirror_merged(group).await;
            }
            *lock(&self.stats.current_since) = None;
            for (size, count, route) in queued {
                self.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.stats.remove_lag(route, count);
            }
        }
    }

    /// Mirrors queued `async` batches of one partition as one batch in one request (the
    /// writer fell behind: a request per batch would keep it behind). Each item is
    /// counted, mapped and journalled on its own, as if sent alone.
    async fn mirror_merged(&mut self, group: Vec<MirrorItem>) {
        let mut written = Vec::with_capacity(group.len());
        for mut item in group {
            if let Ok(Some(offset)) = (&mut item.written).await {
                written.push((item, offset));
            }
            // (A failed write: the client was told, nothing to mirror.)
        }
        tokio::task::yield_now().await;
        let Some((first, _)) = written.first() else {
            return;
        };
        if self
            .failures
            .has_gap(&self.cluster.name, &first.topic, first.write_partition)
        {
            for (item, offset) in written {
                let error = "held back behind an unrepaired gap, to keep the mirror in write order";
                self.finish(item, offset, Err(error.into()), true);
            }
            return;
        }
        let (mirror_topic, partition) = (first.mirror_topic.clone(), first.write_partition);
        let merged = match merge(written.iter().map(|(item, _)| &item.records)) {
            Ok(merged) => merged,
            Err(error) => {
                for (item, offset) in written {
                    self.finish(item, offset, Err(error.clone()), false);
                }
                return;
            }
        };
        let result = self.deliver(&mirror_topic, partition, &merged.batch).await;
        let mut mirror_offset = result.as_ref().ok().copied();
        for ((item, write_base_offset), count) in written.into_iter().zip(merged.counts) {
            if let Some(base) = mirror_offset.as_mut() {
                if count > 0 {
                    self.record_mapping(&item, write_base_offset, partition, *base, count);
                }
                *base += count;
            }
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            self.finish(item, write_base_offset, outcome, false);
        }
    }

    async fn mirror(&mut self, mut item: MirrorItem) {
        let written = (&mut item.written).await;
        // Let the client's answer, woken by the same broker response, go out first.
        tokio::task::yield_now().await;
        let write_base_offset = match written {
            Ok(Some(offset)) => offset,
            _ => {
                // The write failed: the client was told, nothing to mirror.
                if let Some(done) = item.done.take() {
                    let _ = done.send(Ok(()));
                }
                return;
            }
        };
        if let Some(source) = item.source.clone() {
            // A backfill route: first copy what the mirror lacks before this batch.
            let until = (!item.fill_only).then_some(write_base_offset);
            let filled = self.fill(&item, &source, until).await;
            if let Err(error) = &filled {
                tracing::warn!(
                    mirror_cluster = %self.cluster.name,
                    topic = %item.topic,
                    partition = item.write_partition,
                    %error,
                    "backfill failed; the mirror lacks these records until the next try"
                );
            }
            if item.fill_only || matches!(filled, Ok(backfill::Filled::AlreadyCopied)) {
                if let Some(done) = item.done.take() {
                    let _ = done.send(Ok(()));
                }
                return;
            }
        }
        // An async batch behind an unrepaired gap is journalled, not sent: the mirror keeps a
        // prefix of the write log and repair appends the rest in order. (A sync route's
        // client would be refused until the repair instead; it gets the mirror's own answer.)
        let held_back = item.done.is_none()
            && item.source.is_none()
            && self
                .failures
                .has_gap(&self.cluster.name, &item.topic, item.write_partition);
        let result = if held_back {
            Err("held back behind an unrepaired gap, to keep the mirror in write order".into())
        } else {
            self.send_planned(&item, write_base_offset).await
        };
        self.finish(item, write_base_offset, result, held_back);
    }

    async fn send_planned(
        &mut self,
        item: &MirrorItem,
        write_base_offset: i64,
    ) -> Result<(), String> {
        match self.plan(item, write_base_offset).await {
            Ok(batches) => {
                let mut result = Ok(());
                for (partition, batch) in batches {
                    if let Err(error) = self
                        .send_batch(item, write_base_offset, partition, batch)
                        .await
                    {
                        result = Err(error);
                    }
                }
                result
            }
            Err(error) => Err(error),
        }
    }

    /// Counts, logs and journals the outcome of `item`, and tells a waiting sync client.
    fn finish(
        &mut self,
        mut item: MirrorItem,
        write_base_offset: i64,
        result: Result<(), String>,
        held_back: bool,
    ) {
        if result.is_ok() && item.source.is_some() {
            self.backfill.covered(
                &item.topic,
                item.write_partition,
                self.cluster.id,
                write_base_offset + item.record_count,
            );
        }
        let outcome = if result.is_ok() { "mirrored" } else { "failed" };
        self.cluster.metrics.mirror_outcome(
            &self.cluster.name,
            item.route,
            outcome,
            item.record_count as u64,
        );
        if let Err(error) = &result {
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .failed_records
                .fetch_add(item.record_count as u64, Ordering::Relaxed);
            let write_offsets = format!(
                "{}..={}",
                write_base_offset,
                write_base_offset + item.record_count - 1
            );
            if held_back {
                // The gap's opening was logged at warn; one line per held batch would flood.
                tracing::debug!(mirror_cluster = %self.cluster.name, topic = %item.topic, partition = item.write_partition, %write_offsets, "held back behind a mirror gap");
            } else {
                tracing::warn!(
                    mirror_cluster = %self.cluster.name,
                    route = item.route,
                    topic = %item.topic,
                    partition = item.write_partition,
                    %write_offsets,
                    %error,
                    "mirroring failed; these records exist only on the write cluster"
                );
            }
            // A backfill route copies what is missing before its next batch: journalling it
            // for repair as well would copy it twice.
            if item.source.is_none() {
                self.failures.record(&item.failed_range(
                    write_base_offset,
                    &self.cluster.name,
                    error.clone(),
                ));
            }
        }
        if let Some(done) = item.done.take() {
            let _ = done.send(result);
        }
    }

    /// The batches to send: (mirror partition, batch). The client's batches as they are
    /// for identity partitioning of everything; re-encoded subsets otherwise.
    async fn plan(
        &self,
        item: &MirrorItem,
        write_base_offset: i64,
    ) -> Result<Vec<(i32, Batch)>, String> {
        let batches = batch::split_batches(item.records.clone()).map_err(|e| e.to_string())?;
        if item.partitioning == Partitioning::Identity && item.mirror_percent >= 100 {
            return Ok(batches
                .into_iter()
                .filter(|b| !b.is_control())
                .map(|b| (item.write_partition, b))
                .collect());
        }
        let partitions = match item.partitioning {
            Partitioning::Identity => None,
            Partitioning::Murmur2 => Some(
                self.cluster
                    .partition_count(&item.mirror_topic)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!("topic {} does not exist on the mirror", item.mirror_topic)
                    })?,
            ),
        };
        let mut planned = Vec::new();
        for source in batches {
            let mut bytes = source.bytes().clone();
            let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| e.to_string())?;
            let mut by_partition: Vec<(i32, Vec<kafka_protocol::records::Record>)> = Vec::new();
            for mut record in set.records {
                let selected = match &record.key {
                    Some(key) => percent_selects(key, item.mirror_percent),
                    // Unkeyed records are chosen per produced batch: by the partition and
                    // the write offset it landed at.
                    None => {
                        let mut batch_id = item.write_partition.to_be_bytes().to_vec();
                        batch_id.extend_from_slice(&write_base_offset.to_be_bytes());
                        percent_selects(&batch_id, item.mirror_percent)
                    }
                };
                if !selected {
                    continue;
                }
                let partition = match (partitions, &record.key) {
                    (Some(count), Some(key)) => batch::partition_for_key(key, count),
                    (Some(count), None) => item.write_partition % count.max(1),
                    (None, _) => item.write_partition,
                };
                record.transactional = false;
                record.producer_id = -1;
                record.producer_epoch = -1;
                record.sequence = -1;
                match by_partition.iter_mut().find(|(p, _)| *p == partition) {
                    Some((_, records)) => records.push(record),
                    None => by_partition.push((partition, vec![record])),
                }
            }
            for (partition, mut records) in by_partition {
                // Sequence following offset and one leader epoch, or the encoder starts a
                // new batch at every record.
                for (i, record) in records.iter_mut().enumerate() {
                    record.offset = i as i64;
                    record.sequence = i as i32;
                    record.partition_leader_epoch = -1;
                }
                let mut encoded = BytesMut::new();
                RecordBatchEncoder::encode(
                    &mut encoded,
                    &records,
                    &RecordEncodeOptions {
                        version: 2,
                        compression: set.compression,
                    },
                )
                .map_err(|e| e.to_string())?;
                for batch in batch::split_batches(encoded.freeze()).map_err(|e| e.to_string())? {
                    planned.push((partition, batch));
                }
            }
        }
        Ok(planned)
    }

    async fn send_batch(
        &mut self,
        item: &MirrorItem,
        write_base_offset: i64,
        partition: i32,
        batch: Batch,
    ) -> Result<(), String> {
        let mirror_base_offset = self.deliver(&item.mirror_topic, partition, &batch).await?;
        // Only a whole batch at its own partition maps offset for offset; a filtered or
        // re-partitioned one cannot be translated.
        let translatable =
            item.partitioning == Partitioning::Identity && item.mirror_percent >= 100;
        if translatable {
            let count = i64::from(batch.record_count());
            self.record_mapping(
                item,
                write_base_offset,
                partition,
                mirror_base_offset,
                count,
            );
        }
        Ok(())
    }

    /// Puts `count` records of `item` at `write_base_offset` → `mirror_base_offset` of
    /// `partition` in the offset map.
    fn record_mapping(
        &self,
        item: &MirrorItem,
        write_base_offset: i64,
        partition: i32,
        mirror_base_offset: i64,
        count: i64,
    ) {
        self.offsets.record(OffsetMapping {
            topic: item.topic.clone(),
            write_partition: item.write_partition,
            write_base_offset,
            mirror_cluster: self.cluster.id,
            mirror_partition: partition,
            mirror_base_offset,
            record_count: count,
        });
    }

    /// Sends `batch` to `partition` of `mirror_topic` under kshift's producer, retrying;
    /// returns the mirror offset it landed at.
    async fn deliver(
        &mut self,
        mirror_topic: &Arc<str>,
        partition: i32,
        batch: &Batch,
    ) -> Result<i64, String> {
        let mut backoff = RETRY_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(mirror_topic, partition, batch).await {
                Ok(mirror_base_offset) => {
                    let count = i64::from(batch.record_count());
                    let key = (mirror_topic.clone(), partition);
                    let sequence = self.sequences.entry(key).or_insert(0);
                    *sequence = sequence.wrapping_add(batch.record_count()) & i32::MAX;
                    self.stats.mirrored_batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .mirrored_records
                        .fetch_add(count as u64, Ordering::Relaxed);
                    return Ok(mirror_base_offset);
                }
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::ResetProducer(error)) => {
                    tracing::info!(mirror_cluster = %self.cluster.name, %error, "mirror producer state lost; starting a new producer id");
                    self.producer = None;
                    self.sequences.clear();
                    last_error = error;
                }
                Err(AttemptError::Retry(error)) => last_error = error,
            }
            if attempt < MAX_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(format!(
            "gave up after {MAX_ATTEMPTS} attempts: {last_error}"
        ))
    }

    async fn attempt(
        &mut self,
        mirror_topic: &Arc<str>,
        partition: i32,
        batch: &Batch,
    ) -> Result<i64, AttemptError> {
        let (producer_id, producer_epoch) = self.producer().await.map_err(retry)?;
        let sequence = *self
            .sequences
            .get(&(mirror_topic.clone(), partition))
            .unwrap_or(&0);
        let node = self
            .cluster
            .leader(mirror_topic, partition)
            .await
            .map_err(retry)?
            .ok_or_else(|| {
                AttemptError::Retry(format!(
                    "no leader for {}/{partition} on the mirror (does the topic exist there with enough partitions?)",
                    mirror_topic
                ))
            })?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(self.cluster.settings.request_timeout.as_millis() as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(mirror_topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch.for_mirror(
                        producer_id,
                        producer_epoch,
                        sequence,
                    )))])]);
        let version = self
            .cluster
            .version_for(ApiKey::Produce, PRODUCE_VERSION)
            .await
            .map_err(retry)?;
        let body = codec::encode_body(&request, version)
            .map_err(|e| AttemptError::Fatal(e.to_string()))?;
        let connection = self.connection(node).await.map_err(retry)?;
        let response = connection
            .request(
                ApiKey::Produce,
                version,
                &StrBytes::from_static_str("kshift-mirror"),
                body,
            )
            .map_err(retry)?
            .wait(self.cluster.settings.request_timeout * 2)
            .await
            .map_err(|e| {
                self.connections.remove(&node);
                retry(e)
            })?;
        let response: ProduceResponse = decode_body(response, version, "mirror produce response")
            .map_err(|e| AttemptError::Fatal(e.to_string()))?;
        let result = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| AttemptError::Fatal("empty produce response".into()))?;
        match ResponseError::try_from_code(result.error_code) {
            None => Ok(result.base_offset),
            // Already written by an earlier attempt whose answer was lost.
            Some(ResponseError::DuplicateSequenceNumber) => Ok(result.base_offset),
            Some(
                error @ (ResponseError::OutOfOrderSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch
                | ResponseError::ProducerFenced),
            ) => Err(AttemptError::ResetProducer(error.to_string())),
            Some(error) => {
                if is_leadership_error(result.error_code) {
                    self.cluster.forget_leaders(mirror_topic);
                }
                if error.is_retriable() {
                    Err(AttemptError::Retry(error.to_string()))
                } else {
                    Err(AttemptError::Fatal(error.to_string()))
                }
            }
        }
    }

    async fn producer(&mut self) -> Result<(i64, i16), BackendError> {
        if let Some(producer) = self.producer {
            return Ok(producer);
        }
        let version = self
            .cluster
            .version_for(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION)
            .await?;
        let node = self.cluster.any_broker().await?;
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        let body = codec::encode_body(&request, version).map_err(|e| BackendError::Protocol {
            address: self.cluster.name.clone(),
            reason: e.to_string().into(),
        })?;
        let connection = self.connection(node).await?;
        let response = connection
            .request(
                ApiKey::InitProducerId,
                version,
                &StrBytes::from_static_str("kshift-mirror"),
                body,
            )?
            .wait(self.cluster.settings.request_timeout)
            .await?;
        let response: InitProducerIdResponse =
            decode_body(response, version, "InitProducerId response").map_err(|e| {
                BackendError::Protocol {
                    address: self.cluster.name.clone(),
                    reason: e.to_string().into(),
                }
            })?;
        if response.error_code != 0 {
            return Err(BackendError::Kafka {
                cluster: self.cluster.name.clone(),
                what: "InitProducerId",
                code: response.error_code,
            });
        }
        let producer = (response.producer_id.0, response.producer_epoch);
        tracing::info!(mirror_cluster = %self.cluster.name, producer_id = producer.0, epoch = producer.1, "mirror producer initialised");
        self.producer = Some(producer);
        Ok(producer)
    }

    async fn connection(&mut self, node: i32) -> Result<BrokerConnection, BackendError> {
        if let Some(connection) = self.connections.get(&node) {
            if !connection.is_poisoned() {
                return Ok(connection.clone());
            }
        }
        let address = self.cluster.broker_address(node)?;
        let connection = self.cluster.connect(&address).await?;
        self.connections.insert(node, connection.clone());
        Ok(connection)
    }
}

/// Largest merged batch, in bytes of client batches (brokers take 1 MB by default).
const MAX_MERGED_BYTES: usize = 512 * 1024;
/// Queued items looked through for batches of the same partition to merge.
const MERGE_SCAN_ITEMS: usize = 1024;

/// Whether `item` may be sent merged with the items after it: an `async`, whole,
/// identity-partitioned batch that is not a backfill's.
fn mergeable(item: &MirrorItem) -> bool {
    item.done.is_none()
        && item.source.is_none()
        && item.partitioning == Partitioning::Identity
        && item.mirror_percent >= 100
}

/// Gathers what is queued behind a mergeable item of `bytes` until `until` (its enqueue
/// time plus `mirror_linger_ms`), so that one request carries the batches a producer sends
/// in that time. Stops early when an item that must not wait arrives (a `sync` client is
/// waiting for it) or when a merged request would be full. A writer that is behind never
/// lingers: its items are older than `until` already. (Lingering pays for big batches too:
/// stopping at a producer's 16 KiB `batch.size` put 16 KB records back at +40-54% over
/// passthrough at p50 against +3-12% lingering the whole time, 1 in flight.)
async fn linger(
    items: &mut mpsc::UnboundedReceiver<MirrorItem>,
    waiting: &mut VecDeque<MirrorItem>,
    until: Instant,
    mut bytes: usize,
) {
    if until <= Instant::now() || !waiting.iter().all(mergeable) {
        return;
    }
    bytes += waiting.iter().map(|item| item.records.len()).sum::<usize>();
    let sleep = tokio::time::sleep_until(until.into());
    tokio::pin!(sleep);
    while bytes < MAX_MERGED_BYTES {
        tokio::select! {
            more = items.recv() => match more {
                Some(more) => {
                    bytes += more.records.len();
                    let must_not_wait = !mergeable(&more);
                    waiting.push_back(more);
                    if must_not_wait {
                        return;
                    }
                }
                None => return,
            },
            _ = &mut sleep => return,
        }
    }
}

/// `item` and the items of the same partition queued after it that can go in the same
/// request: mergeable ones, up to the first that is not (order per partition is kept;
/// other partitions' items stay waiting, in order).
fn take_group(item: MirrorItem, waiting: &mut VecDeque<MirrorItem>) -> Vec<MirrorItem> {
    if !mergeable(&item) {
        return vec![item];
    }
    let mut bytes = item.records.len();
    let mut group = vec![item];
    let mut index = 0;
    // Only the front of a long backlog is searched: a full scan per request would cost
    // O(backlog²) while the writer is behind, the moment it needs to catch up.
    while index < waiting.len().min(MERGE_SCAN_ITEMS) {
        let next = &waiting[index];
        let first = &group[0];
        let same_partition = next.topic == first.topic
            && next.mirror_topic == first.mirror_topic
            && next.write_partition == first.write_partition;
        if !same_partition {
            index += 1;
            continue;
        }
        if !mergeable(next) || bytes + next.records.len() > MAX_MERGED_BYTES {
            break;
        }
        bytes += next.records.len();
        if let Some(next) = waiting.remove(index) {
            group.push(next);
        }
    }
    group
}

/// Client batches merged into one.
struct Merged {
    batch: Batch,
    /// Records each input contributed, in order.
    counts: Vec<i64>,
}

/// The records of `inputs` (each a client's batches of one partition), control batches
/// left out, as one batch: compressed like the first, offsets renumbered.
fn merge<'a>(inputs: impl Iterator<Item = &'a Bytes>) -> Result<Merged, String> {
    let mut records = Vec::new();
    let mut counts = Vec::new();
    let mut compression = None;
    for input in inputs {
        let mut count = 0;
        for batch in batch::split_batches(input.clone()).map_err(|e| e.to_string())? {
            if batch.is_control() {
                continue;
            }
            let mut bytes = batch.bytes().clone();
            let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| e.to_string())?;
            compression.get_or_insert(set.compression);
            for mut record in set.records {
                // Batch-level fields alike, sequence following offset: one batch out.
                record.offset = records.len() as i64;
                record.sequence = record.offset as i32;
                record.partition_leader_epoch = -1;
                record.transactional = false;
                record.producer_id = -1;
                record.producer_epoch = -1;
                records.push(record);
                count += 1;
            }
        }
        counts.push(count);
    }
    let mut encoded = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut encoded,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: compression.unwrap_or(kafka_protocol::records::Compression::None),
        },
    )
    .map_err(|e| e.to_string())?;
    let batch = batch::split_batches(encoded.freeze())
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("nothing to mirror in the merged batches")?;
    Ok(Merged { batch, counts })
}

fn retry(error: impl std::fmt::Display) -> AttemptError {
    AttemptError::Retry(error.to_string())
}

/// Whether a record with `key` falls in the mirrored `percent`: stable per key, so all
/// of a key's records are mirrored or none are.
pub fn percent_selects(key: &[u8], percent: u8) -> bool {
    if percent >= 100 {
        return true;
    }
    ((batch::murmur2(key) & 0x7fff_ffff) % 100) < i32::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(topic: &str, partition: i32, count: usize) -> MirrorItem {
        let (_, written) = oneshot::channel();
        MirrorItem {
            route: 0,
            topic: topic.into(),
            mirror_topic: topic.into(),
            write_partition: partition,
            records: batch::tests::encoded(count, false),
            record_count: count as i64,
            partitioning: Partitioning::Identity,
            mirror_percent: 100,
            written,
            done: None,
            enqueued_at: Instant::now(),
            source: None,
            fill_only: false,
        }
    }

    #[test]
    fn queued_batches_of_a_partition_go_together_up_to_one_that_cannot() {
        let mut waiting: VecDeque<MirrorItem> = VecDeque::new();
        waiting.push_back(item("a", 0, 2));
        waiting.push_back(item("b", 0, 3)); // another topic: stays, in order
        waiting.push_back(item("a", 0, 4));
        let mut sync = item("a", 0, 5);
        sync.done = Some(oneshot::channel().0); // a sync batch: not merged, ends the group
        waiting.push_back(sync);
        waiting.push_back(item("a", 0, 6)); // behind it: must wait for it
        waiting.push_back(item("a", 1, 7));
        let group = take_group(item("a", 0, 1), &mut waiting);
        let counts: Vec<i64> = group.iter().map(|i| i.record_count).collect();
        assert_eq!(counts, [1, 2, 4]);
        let left: Vec<(String, i64)> = waiting
            .iter()
            .map(|i| (i.topic.to_string(), i.record_count))
            .collect();
        assert_eq!(
            left,
            [
                ("b".into(), 3),
                ("a".into(), 5),
                ("a".into(), 6),
                ("a".into(), 7)
            ]
        );
        // A sync item is sent alone.
        let mut sync = item("a", 0, 5);
        sync.done = Some(oneshot::channel().0);
        assert_eq!(take_group(sync, &mut waiting).len(), 1);
    }

    #[test]
    fn merged_batches_keep_every_record_in_order() {
        let inputs = [
            batch::tests::encoded(2, false),
            batch::tests::encoded(3, true),
        ];
        let merged = merge(inputs.iter()).unwrap();
        assert_eq!(merged.counts, [2, 3]);
        assert_eq!(merged.batch.record_count(), 5);
        assert!(merged.batch.crc_is_valid());
        assert!(!merged.batch.is_transactional());
        let mut bytes = merged.batch.bytes().clone();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let values: Vec<Bytes> = set.records.iter().filter_map(|r| r.value.clone()).collect();
        let expected: Vec<Bytes> = ["v0", "v1", "v0", "v1", "v2"]
            .into_iter()
            .map(|value| Bytes::from_static(value.as_bytes()))
            .collect();
        assert_eq!(values, expected);
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn percent_selection_is_stable_and_proportional() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let selected = keys
            .iter()
            .filter(|k| percent_selects(k.as_bytes(), 50))
            .count();
        assert!(
            (4_500..5_500).contains(&selected),
            "{selected} of 10000 at 50%"
        );
        for key in &keys[..100] {
            assert_eq!(
                percent_selects(key.as_bytes(), 30),
                percent_selects(key.as_bytes(), 30)
            );
            // A key mirrored at 30% stays mirrored when the ramp goes to 50%.
            if percent_selects(key.as_bytes(), 30) {
                assert!(percent_selects(key.as_bytes(), 50));
            }
        }
        assert!(keys.iter().all(|k| percent_selects(k.as_bytes(), 100)));
        assert!(!keys.iter().any(|k| percent_selects(k.as_bytes(), 0)));
    }

    #[test]
    fn lag_is_kept_per_route_and_in_total() {
        let stats = MirrorStats::default();
        stats.add_lag(0, 5);
        stats.add_lag(1, 3);
        stats.remove_lag(0, 2);
        assert_eq!(stats.lag_by_route(), [(0, 3), (1, 3)].into_iter().collect());
        assert_eq!(stats.snapshot().lag_records, 6);
        stats.remove_lag(1, 3);
        stats.remove_lag(0, 3);
        assert_eq!(stats.snapshot().lag_records, 0);
        assert_eq!(stats.lag_by_route(), [(0, 0), (1, 0)].into_iter().collect());
    }
}
