//! The write path: a Produce request is split by the write cluster and leader of each
//! partition, sent to those brokers on this client connection's upstream connections, and
//! the answers merged into one response.
//!
//! Invariants:
//! - Record batches are forwarded as the client encoded them (`Bytes`, never decoded):
//!   producer id, epoch and sequences reach the write cluster untouched.
//! - A request whose partitions all go to one broker under their own names is forwarded
//!   byte for byte, and so is its answer.
//! - `acks=0` is sent with acks=0 and answered with nothing, as a broker does.
//! - Every partition the client sent appears in the answer: with the broker's result, or
//!   with the retriable error a broker would give when its backend could not be reached.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::{is_leadership_error, BrokerConnection, Lane, ResponseFuture};
use crate::codec::batch;
use crate::codec::{self, decode_body};
use crate::error::BackendError;
use crate::error::Error;
use crate::handler::{self, ready, Context, Forward, PendingReply, Reply};
use crate::handlers::split::{self, Split, SplitPart, Target};
use crate::metrics::BackendFailure;
use crate::mirror::{self, MirrorItem};
use crate::routing::ClusterId;
use crate::routing::MirrorMode;
use tokio::sync::oneshot;

/// The partitions of one produce request that go to one broker.
type Part = SplitPart<PartitionProduceData>;

/// What became of the sub-request sent for one [`Part`].
enum Sent {
    /// The broker's answer is awaited.
    Waiting(ResponseFuture),
    /// Its answer, or why there is none, is already known.
    Answered(Result<Bytes, BackendError>),
    /// acks=0 without mirroring: nothing comes back.
    Unanswered,
}

impl From<Result<Option<ResponseFuture>, BackendError>> for Sent {
    fn from(sent: Result<Option<ResponseFuture>, BackendError>) -> Sent {
        match sent {
            Ok(Some(response)) => Sent::Waiting(response),
            Ok(None) => Sent::Unanswered,
            Err(error) => Sent::Answered(Err(error)),
        }
    }
}

/// Mirror bookkeeping of one partition of the request.
struct MirroredPartition {
    topic: StrBytes,
    partition: i32,
    /// Told the write cluster's base offset (or `None` on failure), one per mirror item.
    written: Vec<oneshot::Sender<Option<i64>>>,
    /// `sync` routes: one per mirror cluster; `Err` when a mirror failed or refused.
    mirrored: Vec<oneshot::Receiver<Result<(), Error>>>,
    refused: bool,
    /// Items a mirror queue refused (journalled once the write offset is known).
    dropped: Vec<(ClusterId, MirrorItem)>,
    /// Where the records are written (cluster, topic's name there) and how many, for the
    /// unrouted-writer check.
    write_cluster: ClusterId,
    write_topic: Arc<str>,
    records: i64,
    /// The route's position, for the status page's write rate.
    route: usize,
}

/// Submits a Produce request: forwarded as it came when nothing in it changes, decoded and
/// split otherwise (at once when `may_forward` is false: it was found not to be forwardable).
/// Takes the request's context, so that the forwarded request's reply keeps it without a
/// copy.
pub async fn submit(context: Context, may_forward: bool) -> PendingReply {
    let context = if may_forward {
        match handler::forward::<Unchanged>(context).await {
            Ok(forwarded) => return forwarded,
            Err(context) => context,
        }
    } else {
        context
    };
    let submitted = split_and_send(&context).await;
    context.pending_or_error(submitted)
}

/// The full path: decoded, routed per partition, split by write cluster and leader, with
/// each partition's mirroring planned.
async fn split_and_send(context: &Context) -> Result<PendingReply, Error> {
    let request: ProduceRequest = context.request.decode()?;
    if tracing_batches() {
        trace_request(context, &request);
    }
    let client_id = context.client_id();
    // How long a full `mirror_overflow = "block"` queue may hold this request: half its
    // timeout, so that a refusal reaches the client before it gives up on the request.
    let room_deadline = Instant::now()
        + std::time::Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0) / 2);
    let mut split = Split::default();
    let mut mirrored = Vec::new();
    let mut renamed = false;
    for topic in request.topic_data.iter() {
        let client_name = &topic.name.0;
        let Some(route) = context.routing.route(client_name, client_id) else {
            for partition in &topic.partition_data {
                split.errors.push((
                    client_name.clone(),
                    partition.index,
                    ResponseError::UnknownTopicOrPartition.code(),
                ));
            }
            continue;
        };
        let cluster = context.cluster(route.write);
        let backend_name = route.topic_on(route.write, client_name);
        renamed |= backend_name != client_name.as_str();
        for partition in &topic.partition_data {
            let node = match cluster.leader(backend_name, partition.index).await {
                Ok(Some(node)) => node,
                Ok(None) => {
                    split.errors.push((
                        client_name.clone(),
                        partition.index,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ));
                    continue;
                }
                Err(error) => {
                    tracing::debug!(cluster = %cluster.name, %error, "no leader for produce");
                    split.errors.push((
                        client_name.clone(),
                        partition.index,
                        context.failure_code(&error),
                    ));
                    continue;
                }
            };
            if !route.mirror.is_empty() && route.mirror_percent > 0 {
                if let Some(records) = &partition.records {
                    let planned = plan_mirror(
                        context,
                        &request,
                        route,
                        client_name,
                        partition.index,
                        records,
                        room_deadline,
                    )
                    .await;
                    let Some(planned) = planned else {
                        // `mirror_overflow = "block"` and no room came: refused unwritten,
                        // so the client's retry loses nothing and duplicates nothing.
                        split.errors.push((
                            client_name.clone(),
                            partition.index,
                            ResponseError::RequestTimedOut.code(),
                        ));
                        continue;
                    };
                    mirrored.push(planned);
                }
            }
            let target = Target {
                cluster: route.write,
                node,
                backend_topic: split::backend_name(client_name, backend_name),
            };
            split.add(target, client_name, partition.clone());
        }
    }

    // An acks=0 request that is mirrored is written with acks=1: kshift needs the write
    // offsets to mirror in order. The client still gets no answer.
    let client_expects_answer = request.acks != 0;
    let upstream_acks = if !client_expects_answer && !mirrored.is_empty() {
        1
    } else {
        request.acks
    };
    let Split { parts, errors } = split;
    let passthrough =
        parts.len() == 1 && errors.is_empty() && !renamed && upstream_acks == request.acks;
    let mut sent: Vec<(Part, Sent)> = Vec::with_capacity(parts.len());
    for part in parts {
        let body = if passthrough {
            context.request.body.clone()
        } else {
            let sub_request = ProduceRequest::default()
                .with_transactional_id(request.transactional_id.clone())
                .with_acks(upstream_acks)
                .with_timeout_ms(request.timeout_ms)
                .with_topic_data(
                    part.topics
                        .iter()
                        .map(|(name, _, partitions)| {
                            TopicProduceData::default()
                                .with_name(TopicName(name.clone()))
                                .with_partition_data(partitions.clone())
                        })
                        .collect(),
                );
            codec::encode_body(&sub_request, context.request.api_version)?
        };
        let result = send(context, &part, body, upstream_acks != 0).await;
        sent.push((part, result.into()));
    }
    let context = context.clone();
    let deadline = context.deadline(request.timeout_ms);
    // Boxed where it is made: the completion's state is large, and each move of it (into
    // the reply future, then into that one's box) copied all of it (callgrind: memcpy).
    let completion = Box::pin(complete(
        context.clone(),
        sent,
        errors,
        mirrored,
        passthrough,
        deadline,
    ));
    if !client_expects_answer {
        tokio::spawn(completion);
        return Ok(ready(Reply::None));
    }
    Ok(Box::pin(async move { reply(&context, completion.await) }))
}

/// The common case, forwarded as it came and not decoded: a request that wants an answer,
/// all of whose partitions go under their own names, to no mirror, to one broker kshift
/// knows to lead them. The request is walked in place (`codec::scan`), and an answer in
/// which every partition succeeded goes back as it came; any other answer, or a failure,
/// gets the full path's handling ([`complete`]). A request not of that kind is decoded and
/// split by [`submit`]: that costs ~3,000 instructions per produce (callgrind), about 12%
/// of kshift's.
pub struct Unchanged {
    cluster: ClusterId,
    node: i32,
    timeout_ms: i32,
}

impl Forward for Unchanged {
    const LANE: Lane = Lane::Other;

    fn plan(context: &Context) -> Option<Unchanged> {
        forwardable(context)
    }

    fn target(&self) -> (ClusterId, i32) {
        (self.cluster, self.node)
    }

    fn send(
        self,
        context: Context,
        connection: Result<BrokerConnection, BackendError>,
    ) -> PendingReply {
        send_forward(context, self, connection)
    }
}

fn forwardable(context: &Context) -> Option<Unchanged> {
    if tracing_batches() {
        return None;
    }
    let version = context.request.api_version;
    let client_id = context.client_id();
    let mut target: Option<(ClusterId, i32)> = None;
    let head = codec::scan::walk_produce_request(&context.request.body, version, |topic, index| {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        let Some(route) = context.routing.route(topic, client_id) else {
            return false;
        };
        let mirrored = !route.mirror.is_empty() && route.mirror_percent > 0;
        if mirrored || route.topic_on(route.write, topic) != topic {
            return false;
        }
        let Some(node) = context.cluster(route.write).known_leader(topic, index) else {
            return false;
        };
        *target.get_or_insert((route.write, node)) == (route.write, node)
    });
    let (Ok(Some(head)), Some((cluster, node))) = (head, target) else {
        return None;
    };
    (head.acks != 0).then_some(Unchanged {
        cluster,
        node,
        timeout_ms: head.timeout_ms,
    })
}

/// Sends the request on `connection` as it came and returns its reply.
fn send_forward(
    context: Context,
    forward: Unchanged,
    connection: Result<BrokerConnection, BackendError>,
) -> PendingReply {
    let Unchanged {
        cluster,
        node,
        timeout_ms,
    } = forward;
    let version = context.request.api_version;
    let sent: Sent = match connection {
        Ok(connection) => connection
            .send(
                ApiKey::Produce,
                version,
                &context.request.client_id,
                context.request.body.clone(),
                true,
            )
            .into(),
        Err(error) => Sent::Answered(Err(error)),
    };
    let deadline = context.deadline(timeout_ms);
    Box::pin(async move {
        let sent = match sent {
            Sent::Waiting(response) => {
                let answer = response.wait_until(deadline).await;
                if let Ok(body) = &answer {
                    if matches!(codec::scan::produce_answer_all_ok(body, version), Ok(true)) {
                        return context.respond_raw(body.clone());
                    }
                }
                Sent::Answered(answer)
            }
            other => other,
        };
        // The rare case: the full path's handling, on the request decoded after all.
        let completed = match unchanged_part(&context, cluster, node) {
            Ok(part) => {
                let sent = vec![(part, sent)];
                complete(
                    context.clone(),
                    sent,
                    Vec::new(),
                    Vec::new(),
                    true,
                    deadline,
                )
                .await
            }
            Err(error) => Err(error),
        };
        reply(&context, completed)
    })
}

/// The one part a request forwarded [`Unchanged`] makes: all of it, to `node`.
fn unchanged_part(context: &Context, cluster: ClusterId, node: i32) -> Result<Part, Error> {
    let request: ProduceRequest = context.request.decode()?;
    let mut split = Split::default();
    for topic in request.topic_data {
        for partition in topic.partition_data {
            let target = Target {
                cluster,
                node,
                backend_topic: topic.name.0.clone(),
            };
            split.add(target, &topic.name.0, partition);
        }
    }
    split.parts.pop().ok_or_else(|| {
        Error::from(codec::FrameError::Malformed {
            what: "produce request",
            reason: "no partitions".into(),
        })
    })
}

/// Whether `RUST_LOG=kshift::produce::batches=trace` asks for each batch and answer.
fn tracing_batches() -> bool {
    tracing::enabled!(target: "kshift::produce::batches", tracing::Level::TRACE)
}

/// The client's reply once [`complete`] has run.
fn reply(context: &Context, completed: Result<Answer, Error>) -> Reply {
    match completed {
        Ok(Answer::Raw(body)) => context.respond_raw(body),
        Ok(Answer::Merged(response)) => context.respond(&response),
        Err(error) => context.error_reply(&error),
    }
}

/// Each batch of a produce request as the client sent it (and kshift forwards it): what an
/// idempotent producer's retries and a broker's answers are matched against when records go
/// missing. `RUST_LOG=kshift::produce::batches=trace`.
fn trace_request(context: &Context, request: &ProduceRequest) {
    for topic in &request.topic_data {
        for partition in &topic.partition_data {
            let Some(records) = &partition.records else {
                continue;
            };
            let Ok(batches) = batch::split_batches(records.clone()) else {
                continue;
            };
            for batch in batches {
                tracing::trace!(
                    target: "kshift::produce::batches",
                    correlation_id = context.request.correlation_id,
                    topic = %topic.name.0,
                    partition = partition.index,
                    producer_id = batch.producer_id(),
                    producer_epoch = batch.producer_epoch(),
                    base_sequence = batch.base_sequence(),
                    records = batch.record_count(),
                    "produce batch"
                );
            }
        }
    }
}

/// Each partition's outcome in the answer kshift gives the client (the broker's, or one kshift
/// filled in; logged for acks=0 too, which is not answered).
/// `RUST_LOG=kshift::produce::batches=trace`.
fn trace_answer(context: &Context, response: &ProduceResponse) {
    for topic in &response.responses {
        for partition in &topic.partition_responses {
            tracing::trace!(
                target: "kshift::produce::batches",
                correlation_id = context.request.correlation_id,
                topic = %topic.name.0,
                partition = partition.index,
                error_code = partition.error_code,
                base_offset = partition.base_offset,
                "produce answer"
            );
        }
    }
}

/// The answer to a produce request: the broker's bytes unchanged, or a merged response.
enum Answer {
    Raw(Bytes),
    Merged(ProduceResponse),
}

/// Queues (or holds, inside a transaction) one partition's records for each mirror of its
/// route. The items wait in their queues until the write's outcome is known. `None` when a
/// `mirror_overflow = "block"` queue had no room by `room_deadline`: the partition must not
/// be written (the items queued for other mirrors see the write fail).
async fn plan_mirror(
    context: &Context,
    request: &ProduceRequest,
    route: &crate::routing::Route,
    topic: &StrBytes,
    partition: i32,
    records: &Bytes,
    room_deadline: Instant,
) -> Option<MirroredPartition> {
    let record_count: i64 = batch::split_batches(records.clone())
        .map(|batches| batches.iter().map(|b| i64::from(b.record_count())).sum())
        .unwrap_or(0);
    let sync = route.mirror_mode == MirrorMode::Sync && request.transactional_id.is_none();
    let mut planned = MirroredPartition {
        topic: topic.clone(),
        partition,
        written: Vec::new(),
        mirrored: Vec::new(),
        refused: false,
        dropped: Vec::new(),
        write_cluster: route.write,
        write_topic: route.topic_on(route.write, topic).into(),
        records: record_count,
        route: route.index,
    };
    let topic_name: Arc<str> = topic.as_str().into();
    for &mirror in &route.mirror {
        let (written, written_rx) = oneshot::channel();
        let (done, done_rx) = if sync {
            let (done, done_rx) = oneshot::channel();
            (Some(done), Some(done_rx))
        } else {
            (None, None)
        };
        let item = MirrorItem {
            route: route.index,
            topic: topic_name.clone(),
            mirror_topic: route.topic_on(mirror, topic).into(),
            write_partition: partition,
            records: records.clone(),
            record_count,
            partitioning: route.partitioning,
            mirror_percent: route.mirror_percent,
            written: written_rx,
            done,
            enqueued_at: Instant::now(),
            source: route.backfill.then(|| mirror::Source {
                cluster: context.cluster(route.write).clone(),
                topic: route.topic_on(route.write, topic).into(),
            }),
            fill_only: false,
        };
        planned.written.push(written);
        match &request.transactional_id {
            Some(id) => context.state.mirrors.hold(id.0.as_str(), mirror, item),
            None => match context
                .state
                .mirrors
                .offer_waiting(mirror, item, room_deadline)
                .await
            {
                Ok(()) => planned.mirrored.extend(done_rx),
                Err(refused) if refused.0 == mirror::Refused::NoRoomInTime => {
                    tracing::debug!(topic = %topic, partition, mirror_cluster = mirror, "mirror queue stayed full; produce refused unwritten");
                    return None;
                }
                Err(refused) => {
                    let (reason, item) = *refused;
                    mirror::log_dropped(&item, mirror, &reason);
                    planned.refused |= sync;
                    planned.dropped.push((mirror, item));
                }
            },
        }
    }
    Some(planned)
}

/// Waits for the write cluster's answers, releases the mirror items, waits for `sync`
/// mirrors, and builds the client's answer. Every wait ends at the request's one
/// `deadline`: k slow brokers (or mirrors) cost one timeout, not k.
async fn complete(
    context: Context,
    sent: Vec<(Part, Sent)>,
    mut errors: Vec<(StrBytes, i32, i16)>,
    mirrored: Vec<MirroredPartition>,
    passthrough: bool,
    deadline: tokio::time::Instant,
) -> Result<Answer, Error> {
    let version = context.request.api_version;
    let mut merged = ProduceResponse::default();
    let mut raw = None;
    for (part, result) in sent {
        let cluster = context.cluster(part.cluster).clone();
        let response = match result {
            Sent::Waiting(response) => response.wait_until(deadline).await,
            Sent::Answered(response) => response,
            Sent::Unanswered => continue,
        };
        // Passed through, and nothing to learn from it: an answer in which every partition
        // succeeded goes back as it came, walked (codec::scan) but not decoded. Any other
        // answer is decoded below.
        if let Ok(body) = &response {
            if passthrough
                && mirrored.is_empty()
                && !tracing_batches()
                && matches!(codec::scan::produce_answer_all_ok(body, version), Ok(true))
            {
                return Ok(Answer::Raw(body.clone()));
            }
        }
        // An answer that does not decode is the backend's failure, like a broken connection:
        // the client is told to retry (its connection stays).
        let response = response.and_then(|body| {
            decode_body::<ProduceResponse>(body.clone(), version, "produce response")
                .map(|decoded| (body, decoded))
                .map_err(|e| BackendError::undecodable(&cluster.name, "produce response", e))
        });
        let (body, response) = match response {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(cluster = %cluster.name, %error, "produce failed");
                for (backend_name, client_name, partitions) in &part.topics {
                    cluster.forget_leaders(backend_name);
                    for partition in partitions {
                        errors.push((
                            client_name.clone(),
                            partition.index,
                            context.failure_code(&error),
                        ));
                    }
                }
                continue;
            }
        };
        for topic in &response.responses {
            for partition in &topic.partition_responses {
                let code = BackendFailure::Code(partition.error_code);
                cluster
                    .metrics
                    .backend_error(&cluster.name, ApiKey::Produce, code);
            }
            if topic
                .partition_responses
                .iter()
                .any(|p| is_leadership_error(p.error_code))
            {
                cluster.forget_leaders(topic.name.0.as_str());
            }
        }
        if passthrough {
            raw = Some(body);
        }
        merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
        for mut topic in response.responses {
            if let Some(client_name) = part.client_topic(topic.name.0.as_str()) {
                topic.name = TopicName(client_name.clone());
            }
            merged.responses.push(topic);
        }
    }
    for (topic_name, index, code) in errors {
        let partition = PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(code)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1);
        match merged.responses.iter_mut().find(|t| t.name.0 == topic_name) {
            Some(topic) => topic.partition_responses.push(partition),
            None => merged.responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(topic_name))
                    .with_partition_responses(vec![partition]),
            ),
        }
    }
    let mut mirror_failed = false;
    for planned in mirrored {
        let outcome = merged
            .responses
            .iter_mut()
            .find(|t| t.name.0 == planned.topic)
            .and_then(|t| {
                t.partition_responses
                    .iter_mut()
                    .find(|p| p.index == planned.partition)
            });
        let Some(outcome) = outcome else { continue };
        let written = (outcome.error_code == 0).then_some(outcome.base_offset);
        for sender in planned.written {
            let _ = sender.send(written);
        }
        let Some(write_base_offset) = written else {
            continue;
        };
        context.state.written_ranges.wrote(
            planned.write_cluster,
            &planned.write_topic,
            planned.partition,
            write_base_offset,
            planned.records,
        );
        context
            .state
            .route_writes
            .wrote(planned.route, planned.records);
        for (cluster, item) in &planned.dropped {
            context
                .state
                .mirrors
                .journal_dropped(item, *cluster, write_base_offset);
        }
        let mut failure = planned.refused.then(|| "mirror queue full".to_string());
        for done in planned.mirrored {
            match tokio::time::timeout_at(deadline, done).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => failure = Some(error.to_string()),
                Ok(Err(_)) => failure = Some("mirror writer stopped".into()),
                Err(_) => failure = Some("mirror did not answer in time".into()),
            }
        }
        if let Some(reason) = failure {
            tracing::debug!(topic = %planned.topic, partition = planned.partition, %reason, "sync mirror failed");
            // Written to the write cluster but not mirrored: the retriable "after append".
            outcome.error_code = ResponseError::NotEnoughReplicasAfterAppend.code();
            mirror_failed = true;
        }
    }
    if tracing_batches() {
        trace_answer(&context, &merged);
    }
    match raw {
        Some(body) if !mirror_failed => Ok(Answer::Raw(body)),
        _ => Ok(Answer::Merged(merged)),
    }
}

async fn send(
    context: &Context,
    part: &Part,
    body: Bytes,
    expect_response: bool,
) -> Result<Option<ResponseFuture>, BackendError> {
    let connection = context
        .upstream
        .get(context.cluster(part.cluster), part.node, Lane::Other)
        .await?;
    connection.send(
        ApiKey::Produce,
        context.request.api_version,
        &context.request.client_id,
        body,
        expect_response,
    )
}
