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

pub mod batch;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::{is_leadership_error, BackendError, Lane, ResponseFuture};
use crate::codec::{self, decode_body};
use crate::dispatch::{Context, HandlerError, PendingReply, Reply};
use crate::ClusterId;

/// The partitions of one request that go to one broker.
struct Part {
    cluster: ClusterId,
    node: i32,
    /// Topics under their names on `cluster`.
    topics: Vec<TopicProduceData>,
    /// (name on the cluster, client-visible name) for each entry of `topics`.
    names: Vec<(String, StrBytes)>,
}

impl Part {
    fn push(
        &mut self,
        backend_name: &str,
        client_name: &StrBytes,
        partition: PartitionProduceData,
    ) {
        match self.names.iter().position(|(name, _)| name == backend_name) {
            Some(i) => self.topics[i].partition_data.push(partition),
            None => {
                self.names
                    .push((backend_name.to_string(), client_name.clone()));
                self.topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(backend_name.to_string())))
                        .with_partition_data(vec![partition]),
                );
            }
        }
    }
}

/// A partition answered by kshift itself, with an error.
struct LocalError {
    topic: StrBytes,
    partition: i32,
    code: i16,
}

pub async fn submit(context: &Context) -> Result<PendingReply, HandlerError> {
    let request: ProduceRequest = context.request.decode()?;
    let client_id = context.client_id();
    let mut parts: Vec<Part> = Vec::new();
    let mut errors = Vec::new();
    let mut renamed = false;
    for topic in request.topic_data.iter() {
        let client_name = &topic.name.0;
        let Some(route) = context.routing.route(client_name, client_id) else {
            for partition in &topic.partition_data {
                errors.push(LocalError {
                    topic: client_name.clone(),
                    partition: partition.index,
                    code: ResponseError::UnknownTopicOrPartition.code(),
                });
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
                    errors.push(LocalError {
                        topic: client_name.clone(),
                        partition: partition.index,
                        code: ResponseError::UnknownTopicOrPartition.code(),
                    });
                    continue;
                }
                Err(error) => {
                    tracing::debug!(cluster = %cluster.name, %error, "no leader for produce");
                    errors.push(LocalError {
                        topic: client_name.clone(),
                        partition: partition.index,
                        code: error.client_error_code(),
                    });
                    continue;
                }
            };
            let part = match parts
                .iter()
                .position(|p| p.cluster == route.write && p.node == node)
            {
                Some(i) => &mut parts[i],
                None => {
                    parts.push(Part {
                        cluster: route.write,
                        node,
                        topics: Vec::new(),
                        names: Vec::new(),
                    });
                    parts.last_mut().expect("just pushed")
                }
            };
            part.push(backend_name, client_name, partition.clone());
        }
    }

    let passthrough = parts.len() == 1 && errors.is_empty() && !renamed;
    let expect_response = request.acks != 0;
    let mut sent: Vec<(Part, Result<Option<ResponseFuture>, BackendError>)> = Vec::new();
    for part in parts {
        let body = if passthrough {
            context.request.body.clone()
        } else {
            let sub_request = ProduceRequest::default()
                .with_transactional_id(request.transactional_id.clone())
                .with_acks(request.acks)
                .with_timeout_ms(request.timeout_ms)
                .with_topic_data(part.topics.clone());
            codec::encode_body(&sub_request, context.request.api_version)?
        };
        let result = send(context, &part, body, expect_response).await;
        sent.push((part, result));
    }
    if !expect_response {
        for (part, result) in &sent {
            if let Err(error) = result {
                tracing::debug!(%error, node = part.node, "acks=0 produce not delivered");
            }
        }
        return Ok(Box::pin(async { Reply::None }));
    }

    let context = context.clone();
    let timeout = context.backend_timeout(request.timeout_ms);
    Ok(Box::pin(async move {
        let mut merged = ProduceResponse::default();
        for (part, result) in sent {
            let cluster = context.cluster(part.cluster).clone();
            let response = match result {
                Ok(Some(response)) => response.wait(timeout).await,
                Ok(None) => unreachable_no_response(&part),
                Err(error) => Err(error),
            };
            let body = match response {
                Ok(body) => body,
                Err(error) => {
                    tracing::debug!(cluster = %cluster.name, %error, "produce failed");
                    for (backend_name, _) in &part.names {
                        cluster.forget_leaders(backend_name);
                    }
                    for (topic, (_, client_name)) in part.topics.iter().zip(&part.names) {
                        for partition in &topic.partition_data {
                            errors.push(LocalError {
                                topic: client_name.clone(),
                                partition: partition.index,
                                code: error.client_error_code(),
                            });
                        }
                    }
                    continue;
                }
            };
            let response: ProduceResponse = match decode_body(
                body.clone(),
                context.request.api_version,
                "produce response",
            ) {
                Ok(response) => response,
                Err(error) => return Reply::Close(error.to_string()),
            };
            for topic in &response.responses {
                if topic
                    .partition_responses
                    .iter()
                    .any(|p| is_leadership_error(p.error_code))
                {
                    cluster.forget_leaders(topic.name.0.as_str());
                }
            }
            if passthrough {
                return context.respond_raw(body);
            }
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            for mut topic in response.responses {
                if let Some((_, client_name)) = part
                    .names
                    .iter()
                    .find(|(name, _)| name == topic.name.0.as_str())
                {
                    topic.name = TopicName(client_name.clone());
                }
                merged.responses.push(topic);
            }
        }
        for error in errors {
            let partition = PartitionProduceResponse::default()
                .with_index(error.partition)
                .with_error_code(error.code)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            match merged
                .responses
                .iter_mut()
                .find(|t| t.name.0 == error.topic)
            {
                Some(topic) => topic.partition_responses.push(partition),
                None => merged.responses.push(
                    TopicProduceResponse::default()
                        .with_name(TopicName(error.topic))
                        .with_partition_responses(vec![partition]),
                ),
            }
        }
        context.respond(&merged)
    }))
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

fn unreachable_no_response(part: &Part) -> Result<Bytes, BackendError> {
    Err(BackendError::Protocol {
        address: format!("node {}", part.node).into(),
        reason: "produce sent without expecting a response".into(),
    })
}
