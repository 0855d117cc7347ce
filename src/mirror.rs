//! Mirroring: every record a client writes to a route's write cluster is copied to the
//! route's mirror clusters under kshift's own producer identity there. Per mirror cluster:
//!
//! ```text
//! produce ─offer─▶ MirrorQueue (bytes-bounded) ─▶ MirrorWriter ─Submission─▶ MirrorProducer
//!                  drop | block when full          waits for each write's     per-broker
//!                                                  offset, backfills, plans   pipelined sends
//! ```
//!
//! Invariants:
//! - Order: items enter a mirror cluster's queue in the order their produce requests were
//!   sent to the write cluster (the submit phase of one client connection is sequential).
//!   The writer takes them in that order, waits for each one's write offset, and submits its
//!   batches to the producer in that order; the producer sends and completes each
//!   partition's batches in sequence order (see [`producer`]). For one producer connection
//!   per partition — the normal case — the mirror therefore receives batches in the write
//!   cluster's offset order, and the offset map is recorded in that order. Producers on
//!   different connections writing the same partition may interleave differently.
//! - Identity: a mirror never sees the client's producer id, epoch or sequences: the
//!   producer calls InitProducerId on the mirror and numbers each partition's batches
//!   itself, so the mirror broker drops kshift's own duplicates.
//! - Memory: each queue is bounded in bytes, counted from `offer` until the item's last
//!   batch is on the mirror (or failed). When full, `mirror_overflow = "drop"` drops the
//!   item and counts it (never delaying the write path; a `sync` client gets a retriable
//!   error), and `"block"` holds the client's produce until there is room. Every record
//!   that fails to mirror or is dropped is logged and journalled with its (topic,
//!   partition, write-offset range), for `kshift repair`.
//! - Transactions: records produced in a transaction are held until the client's EndTxn
//!   commits (then queued in order) or aborts (then discarded).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
use tokio::sync::{mpsc, oneshot, Notify};

mod backfill;
pub mod failures;
pub mod journal;
pub mod offset_map;
pub mod producer;
pub mod written;
pub use backfill::BackfillState;
pub use producer::ProducerSettings;

use crate::cluster::Cluster;
use crate::codec::batch::{self, Batch};
use crate::config::MirrorOverflow;
use crate::error::{BackendError, Error};
use crate::routing::ClusterId;
use crate::routing::Partitioning;
use crate::sync::lock;
use failures::{FailedRange, FailureJournal, MirrorTarget};
use offset_map::OffsetMap;
use producer::{MapFrom, MirrorProducer, Report, Submission};

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
    pub done: Option<oneshot::Sender<Result<(), Error>>>,
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
            last_offset: write_base_offset.saturating_add(self.record_count - 1),
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
    pub lag_records_by_route: Mutex<BTreeMap<usize, u64>>,
    pub queued_bytes: AtomicUsize,
    /// Items queued and not finished, by queue number: the first is the oldest.
    unfinished: Mutex<BTreeMap<u64, Instant>>,
    /// Told whenever queued bytes are released (producers blocked on a full queue wait
    /// for it).
    room: Notify,
    /// Times an item found the queue full, and what the policy did: dropped it, or made
    /// the client's produce wait (and of those, waits that ended in a refusal).
    pub queue_full_dropped: AtomicU64,
    pub queue_full_blocked: AtomicU64,
    pub queue_full_refused: AtomicU64,
    /// Produce requests the mirror producer sent, and their bytes.
    pub requests_sent: AtomicU64,
    pub request_bytes_sent: AtomicU64,
    /// The most produce requests that were in flight at once, over all brokers.
    pub max_requests_in_flight: AtomicUsize,
    /// Resent batches the mirror answered as duplicates (they had landed, their answer was
    /// lost), and those of them whose offset kshift had to look up (the broker did not say).
    pub duplicates: AtomicU64,
    pub duplicates_located: AtomicU64,
    /// Requests and bytes in flight now, per broker of the mirror cluster.
    in_flight: Mutex<BTreeMap<i32, (usize, usize)>>,
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
    pub queue_full_dropped: u64,
    pub queue_full_blocked: u64,
    pub queue_full_refused: u64,
    pub requests_sent: u64,
    pub max_requests_in_flight: usize,
    pub duplicates: u64,
    pub duplicates_located: u64,
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
    pub fn lag_by_route(&self) -> BTreeMap<usize, u64> {
        lock(&self.lag_records_by_route).clone()
    }

    /// How long the oldest item not mirrored yet has waited since it was queued.
    pub fn lag_seconds(&self) -> f64 {
        lock(&self.unfinished)
            .values()
            .next()
            .map_or(0.0, |since| since.elapsed().as_secs_f64())
    }

    /// Requests and bytes in flight per broker id of the mirror cluster.
    pub fn in_flight(&self) -> BTreeMap<i32, (usize, usize)> {
        lock(&self.in_flight).clone()
    }

    fn set_in_flight(&self, in_flight: BTreeMap<i32, (usize, usize)>) {
        let requests: usize = in_flight.values().map(|(requests, _)| requests).sum();
        self.max_requests_in_flight
            .fetch_max(requests, Ordering::Relaxed);
        *lock(&self.in_flight) = in_flight;
    }

    fn note_request(&self, bytes: usize) {
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        self.request_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
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
            queue_full_dropped: self.queue_full_dropped.load(Ordering::Relaxed),
            queue_full_blocked: self.queue_full_blocked.load(Ordering::Relaxed),
            queue_full_refused: self.queue_full_refused.load(Ordering::Relaxed),
            requests_sent: self.requests_sent.load(Ordering::Relaxed),
            max_requests_in_flight: self.max_requests_in_flight.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            duplicates_located: self.duplicates_located.load(Ordering::Relaxed),
        }
    }
}

/// An item in a mirror queue, numbered in queue order.
struct Queued {
    number: u64,
    item: MirrorItem,
}

/// The queue in front of one mirror cluster's writer.
struct MirrorQueue {
    cluster: Arc<Cluster>,
    items: mpsc::UnboundedSender<Queued>,
    /// Bytes of records queued; the queue is full at `limit_bytes`.
    limit_bytes: usize,
    overflow: MirrorOverflow,
    next_number: AtomicU64,
    stats: Arc<MirrorStats>,
}

impl MirrorQueue {
    /// Takes `size` bytes of the queue when they fit. With `alone`, an item larger than
    /// the whole queue fits an empty one (a blocked producer would otherwise wait for room
    /// that never comes).
    fn reserve(&self, size: usize, alone: bool) -> bool {
        let queued = self.stats.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > self.limit_bytes && !(alone && queued == 0) {
            self.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// How one mirror cluster's queue, writer and producer behave (`[clusters.NAME]`).
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// `mirror_queue_bytes`: records queued beyond this are refused (or wait).
    pub queue_bytes: usize,
    /// `mirror_overflow`.
    pub overflow: MirrorOverflow,
    pub producer: ProducerSettings,
}

impl WriterSettings {
    pub fn from_config(cluster: &crate::config::ClusterConfig) -> WriterSettings {
        WriterSettings {
            queue_bytes: cluster.mirror_queue_bytes,
            overflow: cluster.mirror_overflow,
            producer: ProducerSettings {
                max_in_flight: cluster.mirror_max_in_flight,
                request_bytes: cluster.mirror_request_bytes,
                batch_bytes: cluster.mirror_batch_bytes,
                linger: Duration::from_millis(cluster.mirror_linger_ms),
                delivery_timeout: Duration::from_millis(cluster.mirror_delivery_timeout_ms),
            },
        }
    }
}

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    /// `mirror_overflow = "block"`: no room came within the wait allowed.
    NoRoomInTime,
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
    /// Starts one writer and one producer per cluster (idle until a route mirrors to it).
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
                let shared = Arc::new(Shared {
                    cluster: cluster.clone(),
                    stats: stats.clone(),
                    offsets: offsets.clone(),
                    failures: failures.clone(),
                    backfill: backfill.clone(),
                });
                let (submissions, submitted) = mpsc::unbounded_channel();
                tokio::spawn(
                    MirrorProducer::new(shared.clone(), settings.producer, submitted).run(),
                );
                let writer = MirrorWriter {
                    shared,
                    producer: submissions,
                };
                tokio::spawn(writer.run(receiver));
                MirrorQueue {
                    cluster: cluster.clone(),
                    items,
                    limit_bytes: settings.queue_bytes,
                    overflow: settings.overflow,
                    next_number: AtomicU64::new(0),
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

    /// `cluster`'s queue limit in bytes, and what it does when full.
    pub fn queue_settings(&self, cluster: ClusterId) -> Option<(usize, MirrorOverflow)> {
        self.queues
            .get(cluster)
            .map(|q| (q.limit_bytes, q.overflow))
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
    /// full, whatever the cluster's `mirror_overflow`. A refused item is handed back so a
    /// `sync` caller can fail its client.
    pub fn offer(
        &self,
        cluster: ClusterId,
        item: MirrorItem,
    ) -> Result<(), Box<(Refused, MirrorItem)>> {
        let Some(queue) = self.queues.get(cluster) else {
            return Err(Box::new((Refused::NoMirror, item)));
        };
        if !queue.reserve(item.records.len(), false) {
            queue
                .stats
                .queue_full_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.count_dropped(queue, &item);
            return Err(Box::new((Refused::QueueFull, item)));
        }
        Mirrors::enqueue(queue, item)
    }

    /// Queues `item` as [`Mirrors::offer`] does, except that with `mirror_overflow =
    /// "block"` a full queue makes it wait for room until `deadline` (then it is refused
    /// with [`Refused::NoRoomInTime`], not counted as dropped: the caller refuses the write).
    pub async fn offer_waiting(
        &self,
        cluster: ClusterId,
        item: MirrorItem,
        deadline: Instant,
    ) -> Result<(), Box<(Refused, MirrorItem)>> {
        let Some(queue) = self.queues.get(cluster) else {
            return Err(Box::new((Refused::NoMirror, item)));
        };
        if queue.overflow == MirrorOverflow::Drop {
            return self.offer(cluster, item);
        }
        let size = item.records.len();
        let mut counted = false;
        loop {
            let room = queue.stats.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if queue.reserve(size, true) {
                return Mirrors::enqueue(queue, item);
            }
            if !counted {
                counted = true;
                queue
                    .stats
                    .queue_full_blocked
                    .fetch_add(1, Ordering::Relaxed);
                queue
                    .cluster
                    .metrics
                    .mirror_queue_full(&queue.cluster.name, "block");
            }
            if tokio::time::timeout_at(deadline.into(), room)
                .await
                .is_err()
            {
                queue
                    .stats
                    .queue_full_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Box::new((Refused::NoRoomInTime, item)));
            }
        }
    }

    fn count_dropped(&self, queue: &MirrorQueue, item: &MirrorItem) {
        queue.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
        queue
            .stats
            .dropped_records
            .fetch_add(item.record_count as u64, Ordering::Relaxed);
        queue
            .cluster
            .metrics
            .mirror_queue_full(&queue.cluster.name, "drop");
        queue.cluster.metrics.mirror_outcome(
            &queue.cluster.name,
            item.route,
            "dropped",
            item.record_count as u64,
        );
    }

    /// Hands an item whose bytes are reserved to the queue's writer.
    fn enqueue(queue: &MirrorQueue, item: MirrorItem) -> Result<(), Box<(Refused, MirrorItem)>> {
        let size = item.records.len();
        let number = queue.next_number.fetch_add(1, Ordering::Relaxed);
        queue.stats.add_lag(item.route, item.record_count as u64);
        lock(&queue.stats.unfinished).insert(number, item.enqueued_at);
        if let Err(mpsc::error::SendError(Queued { item, .. })) =
            queue.items.send(Queued { number, item })
        {
            queue.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            queue.stats.remove_lag(item.route, item.record_count as u64);
            lock(&queue.stats.unfinished).remove(&number);
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

    /// The client's EndTxn succeeded: queue the transaction's records, or drop them. (A
    /// full queue drops them whatever `mirror_overflow` says: the transaction is already
    /// committed on the write cluster, and its records are journalled for repair.)
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

/// What a mirror cluster's writer and producer share: where outcomes are counted, mapped
/// and journalled.
struct Shared {
    cluster: Arc<Cluster>,
    stats: Arc<MirrorStats>,
    offsets: Arc<OffsetMap>,
    failures: Arc<FailureJournal>,
    backfill: Arc<backfill::Progress>,
}

/// An item whose batches are with the producer: it finishes when the last one reports.
struct ItemProgress {
    state: Mutex<Option<ItemState>>,
}

struct ItemState {
    number: u64,
    item: MirrorItem,
    write_base_offset: i64,
    remaining: usize,
    error: Option<Error>,
    /// Failed only because it was held back behind a gap (logged at debug, not warn).
    held_back: bool,
}

/// Why a batch is held back instead of sent.
const HELD_BACK: &str = "held back behind an unrepaired gap, to keep the mirror in write order";

impl Shared {
    /// A failure to copy to this mirror cluster, for `reason`.
    pub(crate) fn failure(&self, reason: &str) -> Error {
        Error::Backend(BackendError::Mirror {
            cluster: self.cluster.name.clone(),
            reason: reason.into(),
        })
    }

    /// A submission that was not sent because its write partition has a gap.
    fn report_held_back(&self, report: Report) {
        if let Report::Item(progress) = &report {
            if let Some(item) = lock(&progress.state).as_mut() {
                item.held_back = item.error.is_none();
            }
        }
        self.report(report, Err(self.failure(HELD_BACK)));
    }

    /// One submission's outcome.
    fn report(&self, report: Report, result: Result<(), Error>) {
        match report {
            Report::Copy(done) => {
                let _ = done.send(result);
            }
            Report::Item(progress) => {
                let finished = {
                    let mut state = lock(&progress.state);
                    let Some(item) = state.as_mut() else {
                        return;
                    };
                    item.remaining = item.remaining.saturating_sub(1);
                    if let Err(error) = result {
                        item.error.get_or_insert(error);
                    }
                    if item.remaining == 0 {
                        state.take()
                    } else {
                        None
                    }
                };
                if let Some(done) = finished {
                    let held_back = done.held_back;
                    let result = done.error.map_or(Ok(()), Err);
                    self.finish(
                        done.number,
                        done.item,
                        done.write_base_offset,
                        result,
                        held_back,
                    );
                }
            }
        }
    }

    /// Counts, logs and journals the outcome of `item`, tells a waiting sync client, and
    /// releases its place in the queue.
    fn finish(
        &self,
        number: u64,
        mut item: MirrorItem,
        write_base_offset: i64,
        result: Result<(), Error>,
        held_back: bool,
    ) {
        if result.is_ok() && item.source.is_some() {
            self.backfill.covered(
                &item.topic,
                item.write_partition,
                self.cluster.id,
                write_base_offset.saturating_add(item.record_count),
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
                write_base_offset.saturating_add(item.record_count - 1)
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
                    error.to_string(),
                ));
            }
        }
        if let Some(done) = item.done.take() {
            let _ = done.send(result);
        }
        self.release(number, &item);
    }

    /// Gives `item`'s bytes and records back to the queue.
    fn release(&self, number: u64, item: &MirrorItem) {
        self.stats
            .queued_bytes
            .fetch_sub(item.records.len(), Ordering::Relaxed);
        self.stats.remove_lag(item.route, item.record_count as u64);
        lock(&self.stats.unfinished).remove(&number);
        self.stats.room.notify_waiters();
    }
}

/// Takes one mirror cluster's queue in order: waits for each item's write offset, runs the
/// backfill a route asks for, plans the item's batches and hands them to the producer.
struct MirrorWriter {
    shared: Arc<Shared>,
    producer: mpsc::UnboundedSender<Submission>,
}

impl MirrorWriter {
    async fn run(mut self, mut items: mpsc::UnboundedReceiver<Queued>) {
        while let Some(Queued { number, item }) = items.recv().await {
            self.process(number, item).await;
        }
    }

    async fn process(&mut self, number: u64, mut item: MirrorItem) {
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
                self.shared.release(number, &item);
                return;
            }
        };
        if let Some(source) = item.source.clone() {
            // A backfill route: first copy what the mirror lacks before this batch.
            let until = (!item.fill_only).then_some(write_base_offset);
            let filled = self.fill(&item, &source, until).await;
            if let Err(error) = &filled {
                tracing::warn!(
                    mirror_cluster = %self.shared.cluster.name,
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
                self.shared.release(number, &item);
                return;
            }
        }
        // An async batch behind an unrepaired gap is journalled, not sent: the mirror keeps a
        // prefix of the write log and repair appends the rest in order. (A sync route's
        // client would be refused until the repair instead; it gets the mirror's own answer.)
        let held_back = item.done.is_none()
            && item.source.is_none()
            && self.shared.failures.has_gap(
                &self.shared.cluster.name,
                &item.topic,
                item.write_partition,
            );
        if held_back {
            self.shared.finish(
                number,
                item,
                write_base_offset,
                Err(self.shared.failure(HELD_BACK)),
                true,
            );
            return;
        }
        let planned = match self.plan(&item, write_base_offset).await {
            Ok(planned) => planned,
            Err(error) => {
                self.shared.finish(
                    number,
                    item,
                    write_base_offset,
                    Err(self.shared.failure(&error)),
                    false,
                );
                return;
            }
        };
        if planned.is_empty() {
            self.shared
                .finish(number, item, write_base_offset, Ok(()), false);
            return;
        }
        // Only whole batches at their own partition map offset for offset; a filtered or
        // re-partitioned one cannot be translated.
        let translatable =
            item.partitioning == Partitioning::Identity && item.mirror_percent >= 100;
        let urgent = item.done.is_some() || item.source.is_some() || !translatable;
        let gap = (item.done.is_none() && item.source.is_none())
            .then(|| (item.topic.clone(), item.write_partition));
        let (topic, mirror_topic, write_partition, queued_at) = (
            item.topic.clone(),
            item.mirror_topic.clone(),
            item.write_partition,
            item.enqueued_at,
        );
        let progress = Arc::new(ItemProgress {
            state: Mutex::new(Some(ItemState {
                number,
                item,
                write_base_offset,
                remaining: planned.len(),
                error: None,
                held_back: false,
            })),
        });
        let mut write_offset = write_base_offset;
        for (partition, batch) in planned {
            let records = i64::from(batch.record_count());
            let submission = Submission {
                topic: mirror_topic.clone(),
                partition,
                batch,
                queued_at,
                urgent,
                mapping: translatable.then(|| MapFrom {
                    topic: topic.clone(),
                    write_partition,
                    write_base_offset: write_offset,
                }),
                gap: gap.clone(),
                report: Report::Item(progress.clone()),
            };
            write_offset = write_offset.saturating_add(records);
            if let Err(mpsc::error::SendError(submission)) = self.producer.send(submission) {
                self.shared.report(
                    submission.report,
                    Err(Error::internal("mirror producer stopped")),
                );
            }
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
                self.shared
                    .cluster
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

    /// Copies one batch the write cluster holds at `write_base_offset` (a backfill): hands
    /// it to the producer, to be awaited with the others of the same fetch.
    fn submit_copy(
        &self,
        item: &MirrorItem,
        write_base_offset: i64,
        partition: i32,
        batch: Batch,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let (done, copied) = oneshot::channel();
        let submission = Submission {
            topic: item.mirror_topic.clone(),
            partition,
            batch,
            queued_at: Instant::now(),
            urgent: true,
            mapping: Some(MapFrom {
                topic: item.topic.clone(),
                write_partition: item.write_partition,
                write_base_offset,
            }),
            gap: None,
            report: Report::Copy(done),
        };
        if let Err(mpsc::error::SendError(submission)) = self.producer.send(submission) {
            self.shared.report(
                submission.report,
                Err(Error::internal("mirror producer stopped")),
            );
        }
        copied
    }
}

/// The complete batches of `source`'s `partition` from `offset` on (one read_committed
/// fetch of up to 1 MiB; empty at the end of the log).
pub async fn fetch_batches(
    source: &Source,
    partition: i32,
    offset: i64,
) -> Result<Vec<Batch>, String> {
    Ok(backfill::fetch(source, partition, offset).await?.0)
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
