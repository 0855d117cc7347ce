//! The read path: Fetch and ListOffsets, served from each partition's route's read cluster.
//!
//! Invariants:
//! - Fetches are sessionless toward backends (session id 0, epoch -1) and toward clients
//!   (session id 0): correct for every client and free of per-session state in kshift.
//! - Leader epochs are never sent to a backend (-1: no check) nor shown to a client (-1),
//!   and `preferred_read_replica`, `current_leader` and `diverging_epoch` are cleared: they
//!   belong to one backend cluster and would break a client after a read switch.
//! - A fetch spread over several brokers answers as soon as any of them returns data or
//!   all have answered (each waits at most the client's `max_wait_ms`) — never the sum.
//!   Partitions whose broker has not answered yet come back empty; the client fetches
//!   them again from the same offset.
//! - Record batches are passed through as `Bytes`.
//! - A fetch all of whose partitions go to one broker under their own names is forwarded
//!   without being decoded, and so is its answer: only the fixed-width fields above are
//!   written in place (`codec::scan`). Anything else in an answer to clear, or an error,
//!   sends it down the decoding path.

pub mod positions;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData, SnapshotId,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::{is_leadership_error, BrokerConnection, Lane, ResponseFuture};
use crate::codec::batch::next_offset;
use crate::codec::{self, decode_body};
use crate::error::BackendError;
use crate::error::Error;
use crate::handler::{self, Context, Forward, PendingReply, Reply};
use crate::handlers::split::{self, Split, SplitPart, Target};
use crate::metrics::BackendFailure;
use crate::routing::ClusterId;
use positions::ReadDecision;

/// Longest kshift waits before answering a fetch whose positions are all held (see
/// [`positions::ReadPositions`]), so that a held consumer does not spin.
const HELD_FETCH_WAIT_MS: u64 = 500;

/// Finds where `topic`/`partition` is read from: the route's read cluster's leader.
async fn read_target(
    context: &Context,
    client_topic: &StrBytes,
    partition: i32,
) -> Result<Target, i16> {
    let Some(route) = context.routing.route(client_topic, context.client_id()) else {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    };
    let cluster = context.cluster(route.read);
    let backend_topic = route.topic_on(route.read, client_topic);
    match cluster.leader(backend_topic, partition).await {
        Ok(Some(node)) => Ok(Target {
            cluster: route.read,
            node,
            backend_topic: split::backend_name(client_topic, backend_topic),
        }),
        Ok(None) => Err(ResponseError::UnknownTopicOrPartition.code()),
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "no leader for read");
            Err(context.failure_code(&error))
        }
    }
}

async fn send_part(
    context: &Context,
    cluster: ClusterId,
    node: i32,
    lane: Lane,
    body: Bytes,
) -> Result<ResponseFuture, BackendError> {
    let connection = context
        .upstream
        .get(context.cluster(cluster), node, lane)
        .await?;
    connection.request(
        context.request.api_key,
        context.request.api_version,
        &context.request.client_id,
        body,
    )
}

/// Submits a Fetch: forwarded as it came when all of it goes to one broker under its own
/// names, decoded and split otherwise (at once when `may_forward` is false: it was found not
/// to be forwardable). Takes the request's context, so that the forwarded request's reply
/// keeps it without a copy.
pub async fn submit_fetch(context: Context, may_forward: bool) -> PendingReply {
    let context = if may_forward {
        match handler::forward::<Unchanged>(context).await {
            Ok(forwarded) => return forwarded,
            Err(context) => context,
        }
    } else {
        context
    };
    let submitted = split_and_fetch(&context).await;
    context.pending_or_error(submitted)
}

/// The common case, forwarded without being decoded: a fetch all of whose partitions are
/// read under their own names from one broker kshift knows to lead them, at positions of
/// that cluster. The request is walked in place (`codec::scan`) and passed on with kshift's
/// session and epoch fields; an answer without errors goes back as it came, with its session
/// id and preferred read replica set to kshift's. Any other answer, or a failure, gets the
/// full path's handling on the request decoded then ([`complete_forwarded`]).
pub struct Unchanged {
    cluster: ClusterId,
    node: i32,
    max_wait_ms: i32,
    /// The request as the broker gets it.
    body: Bytes,
}

impl Forward for Unchanged {
    const LANE: Lane = Lane::Fetch;

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
    let version = context.request.api_version;
    let client_id = context.client_id();
    let mut target: Option<(ClusterId, i32)> = None;
    let walk =
        codec::scan::walk_fetch_request(&context.request.body, version, |topic, index, offset| {
            let Ok(topic) = std::str::from_utf8(topic) else {
                return false;
            };
            let Some(route) = context.routing.route(topic, client_id) else {
                return false;
            };
            if route.topic_on(route.read, topic) != topic {
                return false;
            }
            let Some(node) = context.cluster(route.read).known_leader(topic, index) else {
                return false;
            };
            *target.get_or_insert((route.read, node)) == (route.read, node)
                && context.positions.check(topic, index, offset, route.read) == ReadDecision::Serve
        });
    let (Ok(Some(walk)), Some((cluster, node))) = (walk, target) else {
        return None;
    };
    Some(Unchanged {
        cluster,
        node,
        max_wait_ms: walk.max_wait_ms,
        body: codec::scan::patched(context.request.body.clone(), &walk.patches),
    })
}

/// Sends `forward` on `connection` and returns its reply.
fn send_forward(
    context: Context,
    forward: Unchanged,
    connection: Result<BrokerConnection, BackendError>,
) -> PendingReply {
    let Unchanged {
        cluster,
        node,
        max_wait_ms,
        body,
    } = forward;
    let sent = connection.and_then(|connection| {
        connection.request(
            context.request.api_key,
            context.request.api_version,
            &context.request.client_id,
            body,
        )
    });
    let deadline = context.deadline(max_wait_ms);
    Box::pin(async move {
        let answer = match sent {
            Ok(response) => response.wait_until(deadline).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(body) => pass_answer(&context, cluster, body)
                .unwrap_or_else(|body| complete_forwarded(&context, cluster, node, Ok(body))),
            Err(error) => complete_forwarded(&context, cluster, node, Err(error)),
        }
    })
}

/// The answer to a forwarded fetch as the client gets it, when it has no error and nothing
/// to clear but what [`codec::scan::walk_fetch_answer`] patches; each partition's read
/// position is recorded as the full path records it. The body back otherwise.
///
/// The body is taken, not borrowed: held twice, it was copied to be patched (16 KB per
/// answer of a 16 KB fetch).
fn pass_answer(context: &Context, cluster: ClusterId, body: Bytes) -> Result<Reply, Bytes> {
    let version = context.request.api_version;
    let patches = {
        let mut served = Vec::new();
        let walked = codec::scan::walk_fetch_answer(&body, version, |topic, index, records| {
            if let Some(next) = next_offset(records) {
                served.push((topic, index, next));
            }
        });
        let Ok(Some(patches)) = walked else {
            drop(served);
            return Err(body);
        };
        for (topic, index, next) in served {
            // Names are the client's: only a fetch under the client's names is forwarded.
            if let Ok(topic) = std::str::from_utf8(topic) {
                context.positions.served(topic, index, cluster, next);
            }
        }
        patches
    };
    Ok(context.respond_raw(codec::scan::patched(body, &patches)))
}

/// The full path's answer to a fetch [`Unchanged`] sent to `node` of `cluster`, on
/// the request decoded after all: an answer with errors or with a cluster's fields to clear,
/// or a failure.
fn complete_forwarded(
    context: &Context,
    cluster: ClusterId,
    node: i32,
    answer: Result<Bytes, BackendError>,
) -> Reply {
    let request: FetchRequest = match context.request.decode() {
        Ok(request) => request,
        Err(error) => return context.error_reply(&Error::from(error)),
    };
    let mut split = Split::default();
    for topic in &request.topics {
        for partition in &topic.partitions {
            let target = Target {
                cluster,
                node,
                backend_topic: topic.topic.0.clone(),
            };
            split.add(target, &topic.topic.0, backend_partition(partition));
        }
    }
    let mut merged = FetchResponse::default();
    if let Some(part) = split.parts.first() {
        absorb_fetch(context, part, answer, &mut merged, &mut split.errors);
    }
    push_failed(&mut merged, split.errors);
    context.respond(&merged)
}

/// A partition of a client's fetch as kshift asks a backend for it: no leader epochs.
fn backend_partition(partition: &FetchPartition) -> FetchPartition {
    FetchPartition::default()
        .with_partition(partition.partition)
        .with_fetch_offset(partition.fetch_offset)
        .with_log_start_offset(partition.log_start_offset)
        .with_partition_max_bytes(partition.partition_max_bytes)
}

/// Adds each failed partition (topic, partition, error code) to `merged`.
fn push_failed(merged: &mut FetchResponse, failed: Vec<(StrBytes, i32, i16)>) {
    for (topic, partition, code) in failed {
        push_fetch_partition(
            merged,
            &topic,
            PartitionData::default()
                .with_partition_index(partition)
                .with_error_code(code)
                .with_high_watermark(-1)
                .with_aborted_transactions(None),
        );
    }
}

/// The full path: decoded, each partition routed to its read cluster's leader, one
/// sub-request per broker, the answers merged.
async fn split_and_fetch(context: &Context) -> Result<PendingReply, Error> {
    let request: FetchRequest = context.request.decode()?;
    let mut split = Split::default();
    let mut held = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            match read_target(context, &topic.topic.0, partition.partition).await {
                Ok(target)
                    if context.positions.check(
                        &topic.topic.0,
                        partition.partition,
                        partition.fetch_offset,
                        target.cluster,
                    ) == ReadDecision::Hold =>
                {
                    context.state.metrics.fetch_positions_held.inc();
                    held.push((
                        topic.topic.0.clone(),
                        partition.partition,
                        partition.fetch_offset,
                    ));
                }
                Ok(target) => split.add(target, &topic.topic.0, backend_partition(partition)),
                Err(code) => split
                    .errors
                    .push((topic.topic.0.clone(), partition.partition, code)),
            }
        }
    }
    let version = context.request.api_version;
    let mut waiting = tokio::task::JoinSet::new();
    let mut pending_parts = Vec::new();
    let deadline = context.deadline(request.max_wait_ms);
    for (index, part) in split.parts.iter().enumerate() {
        let sub_request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(request.max_wait_ms)
            .with_min_bytes(request.min_bytes)
            .with_max_bytes(request.max_bytes)
            .with_isolation_level(request.isolation_level)
            .with_rack_id(request.rack_id.clone())
            .with_topics(
                part.topics
                    .iter()
                    .map(|(name, _, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(name.clone()))
                            .with_partitions(partitions.clone())
                    })
                    .collect(),
            );
        let body = codec::encode_body(&sub_request, version)?;
        match send_part(context, part.cluster, part.node, Lane::Fetch, body).await {
            Ok(response) => {
                waiting.spawn(async move { (index, response.wait_until(deadline).await) });
                pending_parts.push(index);
            }
            Err(error) => fail_part(context, part, &error, &mut split.errors),
        }
    }

    let context = context.clone();
    Ok(Box::pin(async move {
        let mut merged = FetchResponse::default();
        if split.parts.is_empty() && !held.is_empty() {
            // Only positions of the previous read cluster: wait as an idle broker would.
            let wait = u64::try_from(request.max_wait_ms)
                .unwrap_or(0)
                .min(HELD_FETCH_WAIT_MS);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        for (topic, partition, offset) in held {
            push_fetch_partition(
                &mut merged,
                &topic,
                PartitionData::default()
                    .with_partition_index(partition)
                    .with_high_watermark(offset)
                    .with_last_stable_offset(offset)
                    .with_aborted_transactions(None),
            );
        }
        let mut answered = vec![false; split.parts.len()];
        let mut have_data = false;
        while !have_data {
            let Some(joined) = waiting.join_next().await else {
                break;
            };
            let Ok((index, result)) = joined else {
                continue;
            };
            answered[index] = true;
            have_data |= absorb_fetch(
                &context,
                &split.parts[index],
                result,
                &mut merged,
                &mut split.errors,
            );
        }
        // Take whatever else is already in, without waiting for it.
        while let Some(joined) = waiting.try_join_next() {
            if let Ok((index, result)) = joined {
                answered[index] = true;
                absorb_fetch(
                    &context,
                    &split.parts[index],
                    result,
                    &mut merged,
                    &mut split.errors,
                );
            }
        }
        waiting.abort_all();
        for (part, _) in split
            .parts
            .iter()
            .zip(&answered)
            .filter(|(_, done)| !**done)
        {
            for (_, client_topic, partitions) in &part.topics {
                for partition in partitions {
                    push_fetch_partition(
                        &mut merged,
                        client_topic,
                        PartitionData::default()
                            .with_partition_index(partition.partition)
                            .with_high_watermark(-1)
                            .with_aborted_transactions(None),
                    );
                }
            }
        }
        push_failed(&mut merged, split.errors);
        context.respond(&merged)
    }))
}

/// Marks every partition of `part` failed with the error a broker would give.
fn fail_part<P: PartitionIndex>(
    context: &Context,
    part: &SplitPart<P>,
    error: &BackendError,
    errors: &mut Vec<(StrBytes, i32, i16)>,
) {
    let cluster = context.cluster(part.cluster);
    tracing::debug!(cluster = %cluster.name, %error, "read from backend failed");
    for (backend_topic, client_topic, partitions) in &part.topics {
        cluster.forget_leaders(backend_topic);
        for partition in partitions {
            errors.push((
                client_topic.clone(),
                partition.index(),
                context.failure_code(error),
            ));
        }
    }
}

trait PartitionIndex {
    fn index(&self) -> i32;
}
impl PartitionIndex for FetchPartition {
    fn index(&self) -> i32 {
        self.partition
    }
}
impl PartitionIndex for ListOffsetsPartition {
    fn index(&self) -> i32 {
        self.partition_index
    }
}

/// Adds one broker's fetch answer to `merged`; true if it carried records or errors.
fn absorb_fetch(
    context: &Context,
    part: &SplitPart<FetchPartition>,
    result: Result<Bytes, BackendError>,
    merged: &mut FetchResponse,
    errors: &mut Vec<(StrBytes, i32, i16)>,
) -> bool {
    let response = result.and_then(|body| {
        decode_body::<FetchResponse>(body, context.request.api_version, "fetch response").map_err(
            |e| BackendError::undecodable(&context.cluster(part.cluster).name, "fetch response", e),
        )
    });
    let response = match response {
        Ok(response) if response.error_code == 0 => response,
        Ok(response) => {
            let error = BackendError::Kafka {
                cluster: context.cluster(part.cluster).name.clone(),
                what: "Fetch",
                code: response.error_code,
            };
            fail_part(context, part, &error, errors);
            return true;
        }
        Err(error) => {
            fail_part(context, part, &error, errors);
            return true;
        }
    };
    merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
    let cluster = context.cluster(part.cluster);
    let mut useful = false;
    for topic in response.responses {
        let backend_topic = topic.topic.0.as_str();
        let client_topic = part
            .client_topic(backend_topic)
            .cloned()
            .unwrap_or_else(|| topic.topic.0.clone());
        for mut partition in topic.partitions {
            let code = BackendFailure::Code(partition.error_code);
            cluster
                .metrics
                .backend_error(&cluster.name, ApiKey::Fetch, code);
            if is_leadership_error(partition.error_code) {
                cluster.forget_leaders(backend_topic);
            }
            useful |= partition.error_code != 0
                || partition.records.as_ref().is_some_and(|r| !r.is_empty());
            if let Some(next) = partition.records.as_deref().and_then(next_offset) {
                context.positions.served(
                    &client_topic,
                    partition.partition_index,
                    part.cluster,
                    next,
                );
            }
            present_partition(&mut partition);
            push_fetch_partition(merged, &client_topic, partition);
        }
    }
    useful
}

/// Clears what belongs to one backend cluster from a fetched partition (see the module
/// invariants); records pass through untouched.
pub fn present_partition(partition: &mut PartitionData) {
    partition.preferred_read_replica = BrokerId(-1);
    partition.current_leader = LeaderIdAndEpoch::default();
    partition.diverging_epoch = EpochEndOffset::default();
    partition.snapshot_id = SnapshotId::default();
}

/// Adds `partition` under `topic` to the merged answer.
pub fn push_fetch_partition(
    merged: &mut FetchResponse,
    topic: &StrBytes,
    partition: PartitionData,
) {
    match merged.responses.iter_mut().find(|t| t.topic.0 == *topic) {
        Some(existing) => existing.partitions.push(partition),
        None => merged.responses.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(topic.clone()))
                .with_partitions(vec![partition]),
        ),
    }
}

pub async fn submit_list_offsets(context: &Context) -> Result<PendingReply, Error> {
    let request: ListOffsetsRequest = context.request.decode()?;
    let mut split = Split::default();
    for topic in &request.topics {
        for partition in &topic.partitions {
            match read_target(context, &topic.name.0, partition.partition_index).await {
                Ok(target) => split.add(
                    target,
                    &topic.name.0,
                    partition.clone().with_current_leader_epoch(-1),
                ),
                Err(code) => {
                    split
                        .errors
                        .push((topic.name.0.clone(), partition.partition_index, code))
                }
            }
        }
    }
    let version = context.request.api_version;
    // One deadline for every broker's answer, awaited in turn below.
    let deadline = context.deadline(request.timeout_ms);
    let mut sent = Vec::new();
    for (index, part) in split.parts.iter().enumerate() {
        let sub_request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(request.isolation_level)
            .with_timeout_ms(request.timeout_ms)
            .with_topics(
                part.topics
                    .iter()
                    .map(|(name, _, partitions)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(name.clone()))
                            .with_partitions(partitions.clone())
                    })
                    .collect(),
            );
        let body = codec::encode_body(&sub_request, version)?;
        sent.push((
            index,
            send_part(context, part.cluster, part.node, Lane::Other, body).await,
        ));
    }
    let context = context.clone();
    Ok(Box::pin(async move {
        let mut merged = ListOffsetsResponse::default();
        for (index, result) in sent {
            let part = &split.parts[index];
            let response = match result {
                Ok(response) => response.wait_until(deadline).await,
                Err(error) => Err(error),
            }
            .and_then(|body| {
                decode_body::<ListOffsetsResponse>(body, version, "list offsets response").map_err(
                    |e| {
                        BackendError::undecodable(
                            &context.cluster(part.cluster).name,
                            "list offsets response",
                            e,
                        )
                    },
                )
            });
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    fail_part(&context, part, &error, &mut split.errors);
                    continue;
                }
            };
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            let cluster = context.cluster(part.cluster);
            for topic in response.topics {
                let backend_topic = topic.name.0.as_str();
                let client_topic = part
                    .client_topic(backend_topic)
                    .cloned()
                    .unwrap_or_else(|| topic.name.0.clone());
                for partition in topic.partitions {
                    if is_leadership_error(partition.error_code) {
                        cluster.forget_leaders(backend_topic);
                    }
                    push_offsets_partition(
                        &mut merged,
                        &client_topic,
                        partition.with_leader_epoch(-1),
                    );
                }
            }
        }
        for (topic, partition, code) in split.errors {
            push_offsets_partition(
                &mut merged,
                &topic,
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(code)
                    .with_timestamp(-1)
                    .with_offset(-1),
            );
        }
        context.respond(&merged)
    }))
}

fn push_offsets_partition(
    merged: &mut ListOffsetsResponse,
    topic: &StrBytes,
    partition: ListOffsetsPartitionResponse,
) {
    match merged.topics.iter_mut().find(|t| t.name.0 == *topic) {
        Some(existing) => existing.partitions.push(partition),
        None => merged.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(topic.clone()))
                .with_partitions(vec![partition]),
        ),
    }
}
