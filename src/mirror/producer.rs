//! kshift's idempotent producer on one mirror cluster, built like a real one: a connection
//! per leader broker with up to `mirror_max_in_flight` produce requests on each, every
//! request carrying a ready batch of each partition that broker leads, up to
//! `mirror_request_bytes`. Its rate over a link of round trip R is bounded by bytes in
//! flight / R, as a producer's is, not by one request per R.
//!
//! One task owns all of the state, without locks. Submissions arrive on a channel in the
//! order the writer planned them; everything slow it waits for (a connection, a metadata
//! lookup, InitProducerId, a broker's answer) is a future in one `FuturesUnordered` that
//! ends in an [`Event`]. Nothing is awaited in line, so a slow or dead broker holds up only
//! the partitions it leads.
//!
//! Invariants:
//! - Order: a partition's submissions are sealed into batches (merged, and numbered with
//!   the partition's next sequence) in submission order, sent in sequence order, and
//!   completed (offset map recorded, writer told) in sequence order, whatever order the
//!   answers come back in.
//! - Retries resend the same sealed batch under the same sequence, so the mirror drops
//!   kshift's own duplicates. After a failure nothing more of that partition is sent until
//!   all its requests in flight are answered; then the failed batches go again, in
//!   sequence order, to the partition's leader as it is then. An OUT_OF_ORDER_SEQUENCE
//!   answer behind a failed or unanswered batch is that batch's echo, not a new failure.
//! - Identity: the mirror only ever sees kshift's producer id. When the mirror loses it
//!   (UNKNOWN_PRODUCER_ID, an epoch error, an out-of-order sequence with nothing failed
//!   before it) or a batch is given up (its sequence may or may not have landed), the
//!   producer stops sending, waits for its requests in flight, takes a new producer id and
//!   renumbers every batch that has not landed from 0.
//! - Give-up: a batch not landed within `mirror_delivery_timeout_ms` of being queued fails,
//!   and so does everything behind it in its partition: the mirror keeps a prefix of the
//!   write log, and the failure journal says what `kshift repair` must copy.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

use super::{ItemProgress, Shared};
use crate::cluster::{is_leadership_error, BrokerConnection, Cluster};
use crate::codec::batch::{self, Batch};
use crate::codec::{self, decode_body};
use crate::error::BackendError;
use crate::metrics::BackendFailure;
use crate::mirror::offset_map::OffsetMapping;

/// Versions kshift's own mirror producer sends (capped by the mirror's brokers).
const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// The first pause after a failure; doubled per attempt up to [`RETRY_BACKOFF_MAX`] (Java's
/// `retry.backoff.ms` and `retry.backoff.max.ms`).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Batches an idempotent broker keeps in order per partition, whatever the configuration.
const MAX_BATCHES_IN_FLIGHT: usize = 5;
/// Sequence numbers wrap at 2³¹, as Kafka's do.
const SEQUENCE_MODULUS: i64 = 1 << 31;

/// How the producer sends (`[clusters.NAME] mirror_*`).
#[derive(Debug, Clone, Copy)]
pub struct ProducerSettings {
    /// `mirror_max_in_flight`: requests per broker connection, and batches per partition.
    pub max_in_flight: usize,
    /// `mirror_request_bytes`: a request stops taking partitions' batches at this size.
    pub request_bytes: usize,
    /// `mirror_batch_bytes`: a partition's queued batches are merged up to this size.
    pub batch_bytes: usize,
    /// `mirror_linger_ms`: how long a batch that may wait waits for more of its partition.
    pub linger: Duration,
    /// `mirror_delivery_timeout_ms`: how long a batch is retried before it fails.
    pub delivery_timeout: Duration,
}

/// A (mirror topic, partition).
type PartitionKey = (Arc<str>, i32);

/// One batch for one mirror partition, as the writer planned it.
pub(super) struct Submission {
    /// The topic's name on the mirror.
    pub topic: Arc<str>,
    pub partition: i32,
    /// The records, without kshift's producer identity yet.
    pub batch: Batch,
    /// When its item was queued: lingering and the delivery timeout count from here.
    pub queued_at: Instant,
    /// Must not wait out the linger (a `sync` client waits for it, or a backfill does).
    pub urgent: bool,
    /// Where its records are on the write cluster, when they map offset for offset.
    pub mapping: Option<MapFrom>,
    /// The write partition (client-visible topic, partition) behind whose gap this batch
    /// must not reach the mirror: an `async` client batch. (Checked here as well as by the
    /// writer, because the producer may open a gap after the writer looked.)
    pub gap: Option<(Arc<str>, i32)>,
    pub report: Report,
}

/// Where a submission's records sit on the write cluster, for the offset map.
pub(super) struct MapFrom {
    /// The client-visible topic.
    pub topic: Arc<str>,
    pub write_partition: i32,
    pub write_base_offset: i64,
}

/// Who is told a submission's outcome.
pub(super) enum Report {
    /// One of an item's batches: the item finishes when all have reported.
    Item(Arc<ItemProgress>),
    /// A backfill copy, awaited by the writer.
    Copy(oneshot::Sender<Result<(), crate::error::Error>>),
}

/// A submission inside a sealed batch: what to tell and map when the batch lands.
struct Part {
    records: i64,
    mapping: Option<MapFrom>,
    report: Report,
}

/// A batch with its sequence number: sent, resent and completed as one.
struct Sealed {
    batch: Batch,
    base_sequence: i32,
    parts: Vec<Part>,
    state: SealedState,
    /// Failed attempts so far, for the backoff.
    attempts: u32,
    /// The oldest part's `queued_at`.
    queued_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SealedState {
    /// Waiting to be sent (again).
    Ready,
    InFlight {
        request: u64,
        broker: i32,
    },
    /// On the mirror at this base offset (-1: a duplicate whose offset is not known).
    Landed(i64),
    /// On the mirror (the broker answered a resend as a duplicate without saying where, as
    /// Tansu does; Kafka gives the original offset): being looked for in the partition.
    Locating,
    /// Waiting to be resent once nothing of the partition is in flight.
    Failed,
}

/// One mirror partition's queue.
struct PartitionState {
    /// Its leader, as last looked up; `None` until looked up (again).
    leader: Option<i32>,
    next_sequence: i32,
    /// Submissions not sealed yet, in order, and their bytes.
    pending: VecDeque<Submission>,
    pending_bytes: usize,
    /// Pending submissions that must not linger.
    urgent: usize,
    /// Sealed batches in sequence order, until they complete from the front.
    sealed: VecDeque<Sealed>,
    in_flight: usize,
    /// No retry, lookup or resend before this.
    retry_at: Option<Instant>,
    /// What went wrong last, for the give-up message.
    last_error: Option<String>,
    /// The mirror refused a batch for good: give the partition up once nothing is in flight.
    doomed: Option<String>,
    /// The mirror offset after the last batch completed, where a duplicate is looked for.
    landed_end: Option<i64>,
}

impl PartitionState {
    fn new() -> PartitionState {
        PartitionState {
            leader: None,
            next_sequence: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            urgent: 0,
            sealed: VecDeque::new(),
            in_flight: 0,
            retry_at: None,
            last_error: None,
            doomed: None,
            landed_end: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.sealed.is_empty()
    }

    /// The broker this partition's batches in flight went to.
    fn in_flight_broker(&self) -> Option<i32> {
        self.sealed.iter().find_map(|sealed| match sealed.state {
            SealedState::InFlight { broker, .. } => Some(broker),
            _ => None,
        })
    }

    /// When the oldest batch not on the mirror yet was queued.
    fn oldest_unlanded(&self) -> Option<Instant> {
        self.sealed
            .iter()
            .find(|sealed| !matches!(sealed.state, SealedState::Landed(_) | SealedState::Locating))
            .map(|sealed| sealed.queued_at)
            .or_else(|| self.pending.front().map(|s| s.queued_at))
    }

    fn advance_sequence(&mut self, records: i64) -> i32 {
        let base = self.next_sequence;
        self.next_sequence = ((i64::from(base) + records) % SEQUENCE_MODULUS) as i32;
        base
    }
}

/// kshift's connection to one broker of the mirror cluster.
#[derive(Default)]
struct BrokerState {
    connection: Option<BrokerConnection>,
    connecting: bool,
    /// Failed connects in a row, for the backoff.
    failures: u32,
    retry_at: Option<Instant>,
    requests_in_flight: usize,
    bytes_in_flight: usize,
}

/// Something the producer waited for.
enum Event {
    Connected {
        broker: i32,
        result: Result<BrokerConnection, BackendError>,
    },
    Leaders {
        topic: Arc<str>,
        result: Result<(), BackendError>,
    },
    Initialised(Result<Identity, BackendError>),
    Answered(Answer),
    /// Where a duplicate landed, if it was found.
    Located {
        key: PartitionKey,
        sequence: i32,
        offset: Option<i64>,
    },
}

/// A producer id and epoch, and the Produce version the cluster takes.
#[derive(Debug, Clone, Copy)]
struct Identity {
    producer_id: i64,
    producer_epoch: i16,
    produce_version: i16,
}

/// A broker's answer to one produce request.
struct Answer {
    broker: i32,
    request: u64,
    version: i16,
    bytes: usize,
    /// (partition, base sequence) of each batch it carried.
    batches: Vec<(PartitionKey, i32)>,
    result: Result<Bytes, BackendError>,
}

type EventFuture = Pin<Box<dyn Future<Output = Event> + Send>>;

/// A produce request being put together for one broker.
struct Building {
    id: u64,
    bytes: usize,
    batches: Vec<(PartitionKey, i32, Bytes)>,
}

/// The producer task of one mirror cluster.
pub(super) struct MirrorProducer {
    shared: Arc<Shared>,
    settings: ProducerSettings,
    submissions: mpsc::UnboundedReceiver<Submission>,
    identity: Option<Identity>,
    initialising: bool,
    /// Set when the producer id must be replaced once nothing is in flight.
    resetting: bool,
    init_failures: u32,
    init_retry_at: Option<Instant>,
    partitions: HashMap<PartitionKey, PartitionState>,
    /// Partitions with something pending or sealed.
    active: HashSet<PartitionKey>,
    brokers: HashMap<i32, BrokerState>,
    /// Topics whose leaders are being looked up.
    lookups: HashSet<Arc<str>>,
    events: FuturesUnordered<EventFuture>,
    next_request: u64,
}

fn backoff(attempts: u32) -> Duration {
    RETRY_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX)
}

impl MirrorProducer {
    pub(super) fn new(
        shared: Arc<Shared>,
        settings: ProducerSettings,
        submissions: mpsc::UnboundedReceiver<Submission>,
    ) -> MirrorProducer {
        MirrorProducer {
            shared,
            settings,
            submissions,
            identity: None,
            initialising: false,
            resetting: false,
            init_failures: 0,
            init_retry_at: None,
            partitions: HashMap::new(),
            active: HashSet::new(),
            brokers: HashMap::new(),
            lookups: HashSet::new(),
            events: FuturesUnordered::new(),
            next_request: 0,
        }
    }

    fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    /// Runs until the writer is gone and everything it submitted has completed.
    pub(super) async fn run(mut self) {
        let mut open = true;
        loop {
            let now = Instant::now();
            self.expire(now);
            self.pump(now);
            self.publish_in_flight();
            if !open && self.active.is_empty() && self.events.is_empty() {
                return;
            }
            // Every wait also ends in an event or a timer above; the second is a safety net.
            let wake = self.next_wake(now).unwrap_or(now + Duration::from_secs(1));
            tokio::select! {
                submission = self.submissions.recv(), if open => match submission {
                    Some(submission) => {
                        self.add(submission);
                        while let Ok(more) = self.submissions.try_recv() {
                            self.add(more);
                        }
                    }
                    None => open = false,
                },
                Some(event) = self.events.next(), if !self.events.is_empty() => {
                    self.handle(event, Instant::now());
                    // Take every answer that is already in before sending again, so one
                    // pump fills requests with what they freed.
                    while let Some(Some(event)) = futures_util::FutureExt::now_or_never(self.events.next()) {
                        self.handle(event, Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn add(&mut self, submission: Submission) {
        if let Some((topic, partition)) = &submission.gap {
            if self
                .shared
                .failures
                .has_gap(&self.shared.cluster.name, topic, *partition)
            {
                self.shared.report_held_back(submission.report);
                return;
            }
        }
        let key = (submission.topic.clone(), submission.partition);
        let partition = self
            .partitions
            .entry(key.clone())
            .or_insert_with(PartitionState::new);
        partition.pending_bytes += submission.batch.bytes().len();
        partition.urgent += usize::from(submission.urgent);
        partition.pending.push_back(submission);
        // Known before it is needed, so that a request to its broker can take it along.
        let look_up = partition.leader.is_none() && partition.retry_at.is_none();
        if look_up {
            self.look_up(key.0.clone());
        }
        self.active.insert(key);
    }

    /// The earliest moment something becomes ready: a linger ends, a backoff or a delivery
    /// timeout passes.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        // Moments already past are left out: what waits on them waits on an answer, a
        // connection or a lookup too, whose event wakes the loop.
        let mut wake: Option<Instant> = None;
        let mut earliest = |at: Instant| {
            if at > now {
                wake = Some(wake.map_or(at, |wake| wake.min(at)));
            }
        };
        if self.identity.is_none() {
            if let Some(at) = self.init_retry_at {
                earliest(at);
            }
        }
        for broker in self.brokers.values() {
            if let Some(at) = broker.retry_at {
                earliest(at);
            }
        }
        for key in &self.active {
            let Some(partition) = self.partitions.get(key) else {
                continue;
            };
            if let Some(at) = partition.retry_at {
                earliest(at);
            }
            if let Some(first) = partition.pending.front() {
                earliest(first.queued_at + self.settings.linger);
            }
            if let Some(oldest) = partition.oldest_unlanded() {
                earliest(oldest + self.settings.delivery_timeout);
            }
        }
        wake
    }

    /// Gives up the partitions whose oldest unlanded batch has waited past the delivery
    /// timeout, once nothing of theirs is in flight.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<PartitionKey> = self
            .active
            .iter()
            .filter(|key| {
                self.partitions.get(*key).is_some_and(|partition| {
                    partition.in_flight == 0
                        && partition
                            .oldest_unlanded()
                            .is_some_and(|at| now >= at + self.settings.delivery_timeout)
                })
            })
            .cloned()
            .collect();
        for key in expired {
            let reason = {
                let partition = &self.partitions[&key];
                format!(
                    "not delivered within {} ms: {}",
                    self.settings.delivery_timeout.as_millis(),
                    partition
                        .last_error
                        .as_deref()
                        .unwrap_or("the mirror producer could not send it")
                )
            };
            self.give_up(&key, &reason);
        }
    }

    /// Fails every batch of `key` that has not landed and everything pending behind it, and
    /// starts a new producer id: the mirror keeps what landed, a prefix of the write log.
    fn give_up(&mut self, key: &PartitionKey, reason: &str) {
        let Some(partition) = self.partitions.get_mut(key) else {
            return;
        };
        let sealed: Vec<Sealed> = partition.sealed.drain(..).collect();
        let pending: Vec<Submission> = partition.pending.drain(..).collect();
        partition.pending_bytes = 0;
        partition.urgent = 0;
        partition.retry_at = None;
        partition.last_error = None;
        partition.doomed = None;
        let had_sealed = !sealed.is_empty();
        for batch in sealed {
            let landed = match batch.state {
                SealedState::Landed(offset) => Some(offset),
                SealedState::Locating => Some(-1),
                _ => None,
            };
            match landed {
                Some(offset) => self.complete(key, batch, offset),
                None => {
                    for part in batch.parts {
                        self.shared
                            .report(part.report, Err(self.shared.failure(reason)));
                    }
                }
            }
        }
        for submission in pending {
            self.shared
                .report(submission.report, Err(self.shared.failure(reason)));
        }
        self.active.remove(key);
        if had_sealed {
            // Its sequences may or may not have landed: numbering on from them is unsafe.
            self.reset("a batch was given up");
        }
    }

    fn reset(&mut self, why: &str) {
        if !self.resetting {
            tracing::info!(mirror_cluster = %self.cluster().name, why, "mirror producer starts a new producer id once its requests in flight are answered");
            self.resetting = true;
        }
    }

    fn requests_in_flight(&self) -> usize {
        self.brokers.values().map(|b| b.requests_in_flight).sum()
    }

    /// The identity to send under, starting InitProducerId when there is none.
    fn ready_identity(&mut self, now: Instant) -> Option<Identity> {
        if self.resetting {
            if self.requests_in_flight() > 0 {
                return None;
            }
            self.resetting = false;
            self.identity = None;
        }
        if let Some(identity) = self.identity {
            return Some(identity);
        }
        let waiting = self.active.iter().any(|key| {
            self.partitions
                .get(key)
                .is_some_and(|partition| !partition.is_idle())
        });
        if waiting && !self.initialising && self.init_retry_at.is_none_or(|at| now >= at) {
            self.initialising = true;
            let cluster = self.cluster().clone();
            self.events.push(Box::pin(async move {
                Event::Initialised(initialise(&cluster).await)
            }));
        }
        None
    }

    /// Seals and sends what is ready, as many requests as the connections take.
    fn pump(&mut self, now: Instant) {
        let Some(identity) = self.ready_identity(now) else {
            return;
        };
        let keys: Vec<PartitionKey> = self.active.iter().cloned().collect();
        loop {
            let mut requests: BTreeMap<i32, Building> = BTreeMap::new();
            for key in &keys {
                self.take_batch(key, now, identity, &mut requests, false);
            }
            // A request that goes anyway takes the lingering batches of its broker's other
            // partitions too, as a Kafka producer's drain does: fewer, fuller requests.
            if !requests.is_empty() {
                for key in &keys {
                    self.take_batch(key, now, identity, &mut requests, true);
                }
            }
            if requests.is_empty() {
                return;
            }
            for (broker, building) in requests {
                self.send(broker, building, identity);
            }
        }
    }

    /// Puts the next batch of `key` in its leader's request, when one is ready to go and
    /// both the partition and the connection have room. With `piggyback`, a batch still
    /// lingering goes too, in a request that is being built anyway.
    fn take_batch(
        &mut self,
        key: &PartitionKey,
        now: Instant,
        identity: Identity,
        requests: &mut BTreeMap<i32, Building>,
        piggyback: bool,
    ) {
        let settings = self.settings;
        let max_in_flight = settings.max_in_flight.min(MAX_BATCHES_IN_FLIGHT);
        let Some(partition) = self.partitions.get_mut(key) else {
            return;
        };
        if partition.doomed.is_some() || partition.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let failed = partition
            .sealed
            .iter()
            .any(|sealed| sealed.state == SealedState::Failed);
        if failed {
            if partition.in_flight > 0 {
                return; // every answer first: the failed ones go again in sequence order
            }
            for sealed in &mut partition.sealed {
                if sealed.state == SealedState::Failed {
                    sealed.state = SealedState::Ready;
                }
            }
        }
        if partition.in_flight >= max_in_flight {
            return;
        }
        let has_ready = partition
            .sealed
            .iter()
            .any(|sealed| sealed.state == SealedState::Ready);
        let may_seal = !partition.pending.is_empty()
            && (piggyback
                || partition.urgent > 0
                || partition.pending_bytes >= settings.batch_bytes
                || partition
                    .pending
                    .front()
                    .is_some_and(|first| now >= first.queued_at + settings.linger));
        if !has_ready && !may_seal {
            return;
        }
        let Some(leader) = partition.leader else {
            self.look_up(key.0.clone());
            return;
        };
        // After a leader move, the new leader gets nothing before the old one answered.
        if partition
            .in_flight_broker()
            .is_some_and(|broker| broker != leader)
        {
            return;
        }
        let broker = self.brokers.entry(leader).or_default();
        if broker
            .connection
            .as_ref()
            .is_some_and(BrokerConnection::is_poisoned)
        {
            broker.connection = None;
        }
        if broker.connection.is_none() {
            self.connect(leader, now);
            return;
        }
        let building = match requests.entry(leader) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                if piggyback || broker.requests_in_flight >= max_in_flight {
                    return;
                }
                let id = self.next_request;
                self.next_request += 1;
                entry.insert(Building {
                    id,
                    bytes: 0,
                    batches: Vec::new(),
                })
            }
        };
        if building.bytes >= settings.request_bytes
            || building.batches.iter().any(|(k, _, _)| k == key)
        {
            return;
        }
        let Some(partition) = self.partitions.get_mut(key) else {
            return;
        };
        if !has_ready {
            seal(partition, &settings, &self.shared);
        }
        let Some(sealed) = partition
            .sealed
            .iter_mut()
            .find(|sealed| sealed.state == SealedState::Ready)
        else {
            return;
        };
        let size = sealed.batch.bytes().len();
        if !building.batches.is_empty() && building.bytes + size > settings.request_bytes {
            return; // the next request takes it
        }
        sealed.state = SealedState::InFlight {
            request: building.id,
            broker: leader,
        };
        partition.in_flight += 1;
        let bytes = sealed.batch.for_mirror(
            identity.producer_id,
            identity.producer_epoch,
            sealed.base_sequence,
        );
        building.bytes += bytes.len();
        building
            .batches
            .push((key.clone(), sealed.base_sequence, bytes));
    }

    /// Sends one built request to `broker`.
    fn send(&mut self, broker: i32, building: Building, identity: Identity) {
        let mut topics: BTreeMap<Arc<str>, Vec<PartitionProduceData>> = BTreeMap::new();
        let mut batches = Vec::with_capacity(building.batches.len());
        for ((topic, partition), sequence, bytes) in building.batches {
            topics.entry(topic.clone()).or_default().push(
                PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(bytes)),
            );
            batches.push(((topic, partition), sequence));
        }
        let settings = self.shared.cluster.settings;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(settings.request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                            .with_partition_data(partitions)
                    })
                    .collect(),
            );
        let version = identity.produce_version;
        self.shared.stats.note_request(building.bytes);
        self.shared
            .cluster
            .metrics
            .mirror_request(&self.shared.cluster.name, building.bytes);
        let state = self.brokers.entry(broker).or_default();
        state.requests_in_flight += 1;
        state.bytes_in_flight += building.bytes;
        let sent = match (codec::encode_body(&request, version), &state.connection) {
            (Ok(body), Some(connection)) => connection
                .request(
                    ApiKey::Produce,
                    version,
                    &StrBytes::from_static_str("kshift-mirror"),
                    body,
                )
                .map_err(|error| error.to_string()),
            (Err(error), _) => Err(error.to_string()),
            (_, None) => Err("no connection".to_string()),
        };
        let answer = Answer {
            broker,
            request: building.id,
            version,
            bytes: building.bytes,
            batches,
            result: Ok(Bytes::new()),
        };
        match sent {
            Ok(response) => {
                let timeout = settings.request_timeout * 2;
                self.events.push(Box::pin(async move {
                    let result = response.wait(timeout).await;
                    Event::Answered(Answer { result, ..answer })
                }));
            }
            Err(reason) => {
                let address = self.shared.cluster.name.clone();
                self.answered(
                    Answer {
                        result: Err(BackendError::Closed {
                            address,
                            reason: reason.into(),
                        }),
                        ..answer
                    },
                    Instant::now(),
                );
            }
        }
    }

    fn look_up(&mut self, topic: Arc<str>) {
        if !self.lookups.insert(topic.clone()) {
            return;
        }
        let cluster = self.cluster().clone();
        self.events.push(Box::pin(async move {
            let result = cluster
                .metadata(Some(&[topic.to_string()]), false)
                .await
                .map(|_| ());
            Event::Leaders { topic, result }
        }));
    }

    fn connect(&mut self, broker: i32, now: Instant) {
        let state = self.brokers.entry(broker).or_default();
        if state.connecting || state.retry_at.is_some_and(|at| now < at) {
            return;
        }
        state.connecting = true;
        state.retry_at = None;
        let cluster = self.cluster().clone();
        self.events.push(Box::pin(async move {
            let result = match cluster.broker_address(broker) {
                Ok(address) => cluster.connect(&address).await,
                Err(error) => Err(error),
            };
            Event::Connected { broker, result }
        }));
    }

    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected { broker, result } => {
                let state = self.brokers.entry(broker).or_default();
                state.connecting = false;
                match result {
                    Ok(connection) => {
                        state.connection = Some(connection);
                        state.failures = 0;
                    }
                    Err(error) => {
                        state.failures += 1;
                        state.retry_at = Some(now + backoff(state.failures));
                        tracing::debug!(mirror_cluster = %self.shared.cluster.name, broker, %error, "mirror producer cannot connect");
                        // The broker may be gone for good: ask for its partitions' leaders again.
                        let error = error.to_string();
                        let mut topics = HashSet::new();
                        for (key, partition) in &mut self.partitions {
                            if partition.leader == Some(broker) && partition.in_flight == 0 {
                                partition.leader = None;
                                partition.retry_at = Some(now + backoff(state.failures));
                                partition.last_error = Some(error.clone());
                                topics.insert(key.0.clone());
                            }
                        }
                        for topic in topics {
                            self.shared.cluster.forget_leaders(&topic);
                        }
                    }
                }
            }
            Event::Leaders { topic, result } => {
                self.lookups.remove(&topic);
                let error = result.err().map(|error| error.to_string());
                for ((name, index), partition) in &mut self.partitions {
                    if *name != topic || partition.leader.is_some() {
                        continue;
                    }
                    partition.leader = self.shared.cluster.known_leader(name, *index);
                    if partition.leader.is_none() {
                        partition.last_error = Some(error.clone().unwrap_or_else(|| {
                            format!("no leader for {name}[{index}] on the mirror (does the topic exist there with enough partitions?)")
                        }));
                        let attempts = partition.sealed.front().map_or(1, |s| s.attempts + 1);
                        partition.retry_at = Some(now + backoff(attempts));
                    }
                }
            }
            Event::Initialised(result) => {
                self.initialising = false;
                match result {
                    Ok(identity) => {
                        tracing::info!(mirror_cluster = %self.shared.cluster.name, producer_id = identity.producer_id, epoch = identity.producer_epoch, "mirror producer initialised");
                        self.identity = Some(identity);
                        self.init_failures = 0;
                        self.init_retry_at = None;
                        self.renumber();
                    }
                    Err(error) => {
                        self.init_failures += 1;
                        self.init_retry_at = Some(now + backoff(self.init_failures));
                        if self.init_failures == 1 {
                            tracing::warn!(mirror_cluster = %self.shared.cluster.name, %error, "mirror producer cannot start on the mirror cluster; retrying");
                        }
                        let error = format!("no producer id from the mirror: {error}");
                        for partition in self.partitions.values_mut() {
                            partition.last_error = Some(error.clone());
                        }
                    }
                }
            }
            Event::Answered(answer) => self.answered(answer, now),
            Event::Located {
                key,
                sequence,
                offset,
            } => {
                if let Some(partition) = self.partitions.get_mut(&key) {
                    if let Some(sealed) = partition.sealed.iter_mut().find(|sealed| {
                        sealed.base_sequence == sequence && sealed.state == SealedState::Locating
                    }) {
                        tracing::debug!(mirror_cluster = %self.shared.cluster.name, topic = %key.0, partition = key.1, sequence, ?offset, "located a batch the mirror answered as a duplicate");
                        if offset.is_some() {
                            self.shared
                                .stats
                                .duplicates_located
                                .fetch_add(1, Ordering::Relaxed);
                        } else {
                            tracing::debug!(mirror_cluster = %self.shared.cluster.name, topic = %key.0, partition = key.1, sequence, "a duplicate's offset was not found: its records are left out of the offset map");
                        }
                        sealed.state = SealedState::Landed(offset.unwrap_or(-1));
                    }
                }
                self.complete_front(&key);
            }
        }
    }

    /// A new producer id: every batch not landed yet is numbered again from 0, in order.
    fn renumber(&mut self) {
        for partition in self.partitions.values_mut() {
            partition.next_sequence = 0;
            let mut sequence: i64 = 0;
            for sealed in &mut partition.sealed {
                if matches!(sealed.state, SealedState::Landed(_) | SealedState::Locating) {
                    continue;
                }
                sealed.state = SealedState::Ready;
                sealed.base_sequence = (sequence % SEQUENCE_MODULUS) as i32;
                sequence += i64::from(sealed.batch.record_count());
            }
            partition.next_sequence = (sequence % SEQUENCE_MODULUS) as i32;
        }
    }

    fn answered(&mut self, answer: Answer, now: Instant) {
        let state = self.brokers.entry(answer.broker).or_default();
        state.requests_in_flight = state.requests_in_flight.saturating_sub(1);
        state.bytes_in_flight = state.bytes_in_flight.saturating_sub(answer.bytes);
        let response = match answer.result {
            Ok(body) => {
                decode_body::<ProduceResponse>(body, answer.version, "mirror produce response")
                    .map_err(|error| error.to_string())
            }
            Err(error) => {
                // The connection is unusable or the broker stuck: a new one for the retries.
                state.connection = None;
                Err(error.to_string())
            }
        };
        let mut forget = HashSet::new();
        for (key, sequence) in answer.batches {
            let outcome = match &response {
                Ok(response) => response
                    .responses
                    .iter()
                    .find(|topic| topic.name.0.as_str() == &*key.0)
                    .and_then(|topic| topic.partition_responses.iter().find(|p| p.index == key.1))
                    .map_or_else(
                        || Outcome::Retry("the answer left the partition out".into()),
                        |p| {
                            self.shared.cluster.metrics.backend_error(
                                &self.shared.cluster.name,
                                ApiKey::Produce,
                                BackendFailure::Code(p.error_code),
                            );
                            Outcome::from_code(p.error_code, p.base_offset)
                        },
                    ),
                Err(error) => Outcome::Retry(error.clone()),
            };
            if matches!(outcome, Outcome::Leadership(_)) || response.is_err() {
                forget.insert(key.0.clone());
            }
            self.partition_answered(&key, sequence, answer.request, outcome, now);
        }
        for topic in forget {
            self.shared.cluster.forget_leaders(&topic);
        }
    }

    fn partition_answered(
        &mut self,
        key: &PartitionKey,
        sequence: i32,
        request: u64,
        mut outcome: Outcome,
        now: Instant,
    ) {
        let Some(partition) = self.partitions.get_mut(key) else {
            return;
        };
        let Some(index) = partition.sealed.iter().position(|sealed| {
            sealed.base_sequence == sequence
                && matches!(sealed.state, SealedState::InFlight { request: r, .. } if r == request)
        }) else {
            return; // renumbered or given up meanwhile
        };
        partition.in_flight = partition.in_flight.saturating_sub(1);
        // An earlier batch failed or is unanswered: an out-of-order answer is its echo.
        let behind_trouble = partition.sealed.iter().take(index).any(|earlier| {
            matches!(
                earlier.state,
                SealedState::Failed | SealedState::InFlight { .. } | SealedState::Ready
            )
        });
        if !matches!(outcome, Outcome::Landed(_) | Outcome::Duplicate(_)) {
            tracing::debug!(mirror_cluster = %self.shared.cluster.name, topic = %key.0, partition = key.1, sequence, behind_trouble, ?outcome, "mirror batch not landed");
        }
        let mut reset = None;
        let mut fatal = None;
        if let Outcome::Duplicate(offset) = outcome {
            self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            outcome = Outcome::Landed(offset);
        }
        // The first batch of a partition has no completed batch before it: it is looked
        // for from the log start.
        let to_locate = match (&outcome, self.identity) {
            (Outcome::Landed(offset), Some(identity)) if *offset < 0 => {
                Some((partition.landed_end, identity.producer_id))
            }
            _ => None,
        };
        let sealed = &mut partition.sealed[index];
        match outcome {
            Outcome::Landed(_) if to_locate.is_some() => sealed.state = SealedState::Locating,
            Outcome::Landed(offset) | Outcome::Duplicate(offset) => {
                sealed.state = SealedState::Landed(offset)
            }
            Outcome::OutOfOrder if behind_trouble => sealed.state = SealedState::Failed,
            Outcome::OutOfOrder => {
                sealed.state = SealedState::Failed;
                reset = Some("the mirror answered OUT_OF_ORDER_SEQUENCE_NUMBER");
            }
            Outcome::ResetProducer(error) => {
                sealed.state = SealedState::Failed;
                partition.last_error = Some(error);
                reset = Some("the mirror lost kshift's producer state");
            }
            Outcome::Leadership(error) => {
                sealed.state = SealedState::Failed;
                sealed.attempts += 1;
                partition.retry_at = Some(now + backoff(sealed.attempts));
                partition.last_error = Some(error);
                partition.leader = None;
            }
            Outcome::Retry(error) => {
                sealed.state = SealedState::Failed;
                sealed.attempts += 1;
                partition.retry_at = Some(now + backoff(sealed.attempts));
                partition.last_error = Some(error);
                partition.leader = None;
            }
            Outcome::Fatal(error) => {
                sealed.state = SealedState::Failed;
                fatal = Some(error);
            }
        }
        if let Some((from, producer_id)) = to_locate {
            let cluster = self.shared.cluster.clone();
            let key = key.clone();
            self.events.push(Box::pin(async move {
                let offset = locate(&cluster, &key, from, producer_id, sequence).await;
                Event::Located {
                    key,
                    sequence,
                    offset,
                }
            }));
        }
        if let Some(why) = reset {
            self.reset(why);
        }
        if let Some(error) = fatal {
            tracing::warn!(mirror_cluster = %self.shared.cluster.name, topic = %key.0, partition = key.1, %error, "the mirror refused a batch for good");
            if let Some(partition) = self.partitions.get_mut(key) {
                partition.doomed = Some(error);
            }
        }
        let doomed = self
            .partitions
            .get(key)
            .filter(|partition| partition.in_flight == 0)
            .and_then(|partition| partition.doomed.clone());
        if let Some(error) = doomed {
            self.give_up(key, &error);
            return;
        }
        self.complete_front(key);
    }

    /// Completes the partition's landed batches at the front, in sequence order.
    fn complete_front(&mut self, key: &PartitionKey) {
        loop {
            let Some(partition) = self.partitions.get_mut(key) else {
                return;
            };
            let offset = match partition.sealed.front().map(|sealed| &sealed.state) {
                Some(SealedState::Landed(offset)) => *offset,
                _ => break,
            };
            let Some(sealed) = partition.sealed.pop_front() else {
                break;
            };
            partition.landed_end = (offset >= 0)
                .then(|| offset.checked_add(i64::from(sealed.batch.record_count())))
                .flatten();
            partition.last_error = None;
            if partition.sealed.is_empty() {
                partition.retry_at = None;
            }
            self.complete(key, sealed, offset);
        }
        if self
            .partitions
            .get(key)
            .is_some_and(PartitionState::is_idle)
        {
            self.active.remove(key);
        }
    }

    /// A landed batch: counted, its parts mapped and told, in order.
    fn complete(&mut self, key: &PartitionKey, sealed: Sealed, base_offset: i64) {
        let stats = &self.shared.stats;
        stats.mirrored_batches.fetch_add(1, Ordering::Relaxed);
        stats.mirrored_records.fetch_add(
            u64::try_from(sealed.batch.record_count()).unwrap_or(0),
            Ordering::Relaxed,
        );
        let mut mirror_offset = (base_offset >= 0).then_some(base_offset);
        for part in sealed.parts {
            if let (Some(from), Some(offset)) = (&part.mapping, mirror_offset) {
                if part.records > 0 {
                    self.shared.offsets.record(OffsetMapping {
                        topic: from.topic.clone(),
                        write_partition: from.write_partition,
                        write_base_offset: from.write_base_offset,
                        mirror_cluster: self.shared.cluster.id,
                        mirror_partition: key.1,
                        mirror_base_offset: offset,
                        record_count: part.records,
                    });
                }
            }
            mirror_offset = mirror_offset.and_then(|offset| offset.checked_add(part.records));
            self.shared.report(part.report, Ok(()));
        }
    }

    /// Bytes and requests in flight per broker, for metrics and the status page.
    fn publish_in_flight(&self) {
        let in_flight: BTreeMap<i32, (usize, usize)> = self
            .brokers
            .iter()
            .map(|(id, broker)| (*id, (broker.requests_in_flight, broker.bytes_in_flight)))
            .collect();
        self.shared.stats.set_in_flight(in_flight);
    }
}

/// What one partition's answer means for its batch.
#[derive(Debug)]
enum Outcome {
    Landed(i64),
    /// Landed by an earlier attempt; the offset (-1 when the broker did not say).
    Duplicate(i64),
    OutOfOrder,
    ResetProducer(String),
    Leadership(String),
    Retry(String),
    Fatal(String),
}

impl Outcome {
    fn from_code(code: i16, base_offset: i64) -> Outcome {
        match ResponseError::try_from_code(code) {
            None => Outcome::Landed(base_offset),
            // Written by an earlier attempt whose answer was lost.
            Some(ResponseError::DuplicateSequenceNumber) => Outcome::Duplicate(base_offset),
            Some(ResponseError::OutOfOrderSequenceNumber) => Outcome::OutOfOrder,
            Some(
                error @ (ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch
                | ResponseError::ProducerFenced),
            ) => Outcome::ResetProducer(error.to_string()),
            Some(error) if is_leadership_error(code) => Outcome::Leadership(error.to_string()),
            Some(error) if error.is_retriable() => Outcome::Retry(error.to_string()),
            Some(error) => Outcome::Fatal(error.to_string()),
        }
    }
}

/// Seals the partition's pending submissions that go together into its next batch: the
/// first, and those after it up to `batch_bytes`, merged into one batch (Produce v3+ takes
/// one batch per partition per request).
fn seal(partition: &mut PartitionState, settings: &ProducerSettings, shared: &Shared) {
    let Some(first) = partition.pending.pop_front() else {
        return;
    };
    let mut taken = vec![first];
    let mut bytes = taken[0].batch.bytes().len();
    while let Some(next) = partition.pending.front() {
        let size = next.batch.bytes().len();
        if bytes + size > settings.batch_bytes {
            break;
        }
        bytes += size;
        if let Some(next) = partition.pending.pop_front() {
            taken.push(next);
        }
    }
    let batch = if taken.len() == 1 {
        Ok(taken[0].batch.clone())
    } else {
        merge(&taken.iter().map(|s| &s.batch).collect::<Vec<_>>())
    };
    let batch = match batch {
        Ok(batch) => batch,
        Err(error) => {
            // Send them one by one instead.
            tracing::debug!(mirror_cluster = %shared.cluster.name, %error, "cannot merge queued batches");
            while taken.len() > 1 {
                if let Some(last) = taken.pop() {
                    partition.pending.push_front(last);
                }
            }
            taken[0].batch.clone()
        }
    };
    for submission in &taken {
        partition.pending_bytes = partition
            .pending_bytes
            .saturating_sub(submission.batch.bytes().len());
        partition.urgent = partition
            .urgent
            .saturating_sub(usize::from(submission.urgent));
    }
    let records = i64::from(batch.record_count());
    let base_sequence = partition.advance_sequence(records);
    let queued_at = taken
        .iter()
        .map(|s| s.queued_at)
        .min()
        .unwrap_or_else(Instant::now);
    let parts = taken
        .into_iter()
        .map(|submission| Part {
            records: i64::from(submission.batch.record_count()),
            mapping: submission.mapping,
            report: submission.report,
        })
        .collect();
    partition.sealed.push_back(Sealed {
        batch,
        base_sequence,
        parts,
        state: SealedState::Ready,
        attempts: 0,
        queued_at,
    });
}

/// `batches` (of one partition, in order) as one: copied record by record when all are
/// plain, else decoded and encoded again, compressed like the first. Control batches never
/// get here: the writer leaves them out.
pub(super) fn merge(batches: &[&Batch]) -> Result<Batch, String> {
    if batches.iter().all(|batch| batch.is_plain()) {
        return batch::concatenate(batches).map_err(|e| e.to_string());
    }
    let mut records = Vec::new();
    let mut compression = None;
    for batch in batches {
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
        }
    }
    let mut encoded = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut encoded,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: compression.unwrap_or(kafka_protocol::records::Compression::None),
        },
    )
    .map_err(|e| e.to_string())?;
    let mut merged = batch::split_batches(encoded.freeze()).map_err(|e| e.to_string())?;
    if merged.len() != 1 {
        return Err(format!("merging made {} batches", merged.len()));
    }
    Ok(merged.remove(0))
}

/// Most bytes read looking for a duplicate's batch before leaving it out of the offset map.
const LOCATE_BYTES: usize = 16 * 1024 * 1024;

/// The base offset of kshift's batch (`producer_id`, `sequence`) in the mirror partition
/// `key`, reading from `from` (where the last completed batch ended: the batch is after it) or,
/// without one, from the log start.
async fn locate(
    cluster: &Arc<Cluster>,
    key: &PartitionKey,
    from: Option<i64>,
    producer_id: i64,
    sequence: i32,
) -> Option<i64> {
    let source = super::Source {
        cluster: cluster.clone(),
        topic: key.0.clone(),
    };
    let mut offset = match from {
        Some(from) => from,
        None => cluster.list_offset(&key.0, key.1, -2).await.ok()?,
    };
    let mut read = 0;
    while read < LOCATE_BYTES {
        let (batches, _) = super::backfill::fetch(&source, key.1, offset).await.ok()?;
        if batches.is_empty() {
            return None;
        }
        for batch in batches {
            read += batch.bytes().len();
            if batch.producer_id() == producer_id {
                if batch.base_sequence() == sequence {
                    return Some(batch.base_offset());
                }
                if batch.base_sequence() > sequence {
                    return None; // passed it: it is not there
                }
            }
            offset = batch.checked_last_offset()?.checked_add(1)?;
        }
    }
    None
}

/// A new producer id from the mirror cluster, and the Produce version it takes.
async fn initialise(cluster: &Cluster) -> Result<Identity, BackendError> {
    let produce_version = cluster
        .version_for(ApiKey::Produce, PRODUCE_VERSION)
        .await?;
    let version = cluster
        .version_for(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION)
        .await?;
    let node = cluster.any_broker().await?;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    let response: InitProducerIdResponse = cluster
        .request_node(node, ApiKey::InitProducerId, version, &request)
        .await?;
    if response.error_code != 0 {
        return Err(BackendError::Kafka {
            cluster: cluster.name.clone(),
            what: "InitProducerId",
            code: response.error_code,
        });
    }
    Ok(Identity {
        producer_id: response.producer_id.0,
        producer_epoch: response.producer_epoch,
        produce_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(5), RETRY_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }

    #[test]
    fn sequences_wrap_like_kafkas() {
        let mut partition = PartitionState::new();
        partition.next_sequence = i32::MAX - 1;
        assert_eq!(partition.advance_sequence(5), i32::MAX - 1);
        assert_eq!(partition.next_sequence, 3);
    }

    #[test]
    fn merged_batches_keep_every_record_in_order() {
        let compressed: Vec<Batch> = [
            batch::tests::encoded(2, false),
            batch::tests::encoded(3, true),
        ]
        .into_iter()
        .map(|bytes| batch::split_batches(bytes).unwrap().remove(0))
        .collect();
        let merged = merge(&compressed.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(merged.record_count(), 5);
        assert!(merged.crc_is_valid());
        assert!(!merged.is_transactional());
        let mut bytes = merged.bytes().clone();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let values: Vec<Bytes> = set.records.iter().filter_map(|r| r.value.clone()).collect();
        let expected: Vec<Bytes> = ["v0", "v1", "v0", "v1", "v2"]
            .into_iter()
            .map(|value| Bytes::from_static(value.as_bytes()))
            .collect();
        assert_eq!(values, expected);
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
        // Plain batches take the copying path and come out the same way.
        let plain = [
            batch::tests::plain(2, 0, 1_000),
            batch::tests::plain(3, 2, 2_000),
        ];
        let merged = merge(&plain.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(merged.record_count(), 5);
        assert!(merged.crc_is_valid());
    }
}
