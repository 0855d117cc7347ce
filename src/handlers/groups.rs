//! Everything a client sends to a coordinator or to "any broker": consumer-group and
//! offset APIs (to the group's cluster, per `[[groups]]`), producer-id and transaction APIs
//! (to the write cluster's transaction coordinator) and admin APIs: those naming topics or
//! groups are split per cluster, leader or coordinator in [`crate::handlers::admin_apis`]; the
//! others (configs of other resources, ACLs) go to any broker of the client's default
//! write cluster.
//!
//! Invariants:
//! - Requests are forwarded byte for byte on this client connection's own upstream
//!   connection to the real coordinator, so a JoinGroup long poll holds only this client's
//!   connection, as it would going direct.
//! - A coordinator that answers NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE is forgotten;
//!   the client's retry (after FindCoordinator, answered by kshift) asks the cluster again.
//! - Transactions live on the write cluster: a transactional producer's groups should be
//!   hosted there too (TxnOffsetCommit goes to the write cluster's group coordinator).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, EndTxnRequest, EndTxnResponse, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, ResponseKind, SyncGroupRequest,
    TopicName, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::{Cluster, Lane};
use crate::codec::decode_body;
use crate::error::BackendError;
use crate::error::Error;
use crate::handler::{Context, PendingReply, Reply};
use crate::handlers::admin_apis;
use crate::routing::ClusterId;

/// Key types of FindCoordinator.
const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// Routes a request this module serves.
pub async fn submit(context: &Context) -> Result<PendingReply, Error> {
    let routing = &context.routing;
    let client_id = context.client_id();
    match context.request.api_key {
        ApiKey::JoinGroup => {
            let request: JoinGroupRequest = context.request.decode()?;
            context.state.group_moves.saw_group(&request.group_id.0, []);
            let wait = request.rebalance_timeout_ms.max(request.session_timeout_ms);
            to_group(context, &request.group_id.0, wait).await
        }
        ApiKey::SyncGroup => {
            let request: SyncGroupRequest = context.request.decode()?;
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::Heartbeat => {
            let request: HeartbeatRequest = context.request.decode()?;
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::LeaveGroup => {
            let request: LeaveGroupRequest = context.request.decode()?;
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = context.request.decode()?;
            let topics = request.topics.iter().map(|t| t.name.0.as_str());
            context
                .state
                .group_moves
                .saw_group(&request.group_id.0, topics);
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = context.request.decode()?;
            let topics = request.topics.iter().flatten().map(|t| t.name.0.as_str());
            context
                .state
                .group_moves
                .saw_group(&request.group_id.0, topics);
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::OffsetDelete => {
            let request: OffsetDeleteRequest = context.request.decode()?;
            to_group(context, &request.group_id.0, 0).await
        }
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = context.request.decode()?;
            admin_apis::describe_groups(context, request).await
        }
        ApiKey::DeleteGroups => {
            let request: DeleteGroupsRequest = context.request.decode()?;
            admin_apis::delete_groups(context, request).await
        }
        ApiKey::ListGroups => list_groups(context).await,
        ApiKey::TxnOffsetCommit => {
            let request: TxnOffsetCommitRequest = context.request.decode()?;
            let cluster = routing.default_write_cluster(client_id);
            to_coordinator(context, cluster, GROUP, &request.group_id.0, 0).await
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = context.request.decode()?;
            let cluster = routing.default_write_cluster(client_id);
            match request.transactional_id {
                Some(id) => {
                    // A new producer instance fences the old one: its open transaction
                    // will be aborted, so its records must never reach a mirror.
                    context.state.mirrors.end_transaction(id.0.as_str(), false);
                    to_coordinator(context, cluster, TRANSACTION, &id.0, 0).await
                }
                None => to_any_broker(context, cluster).await,
            }
        }
        ApiKey::AddPartitionsToTxn => {
            let request: AddPartitionsToTxnRequest = context.request.decode()?;
            let cluster = routing.default_write_cluster(client_id);
            let id = request.v3_and_below_transactional_id.0;
            to_coordinator(context, cluster, TRANSACTION, &id, 0).await
        }
        ApiKey::AddOffsetsToTxn => {
            let request: AddOffsetsToTxnRequest = context.request.decode()?;
            let cluster = routing.default_write_cluster(client_id);
            to_coordinator(
                context,
                cluster,
                TRANSACTION,
                &request.transactional_id.0,
                0,
            )
            .await
        }
        ApiKey::EndTxn => {
            let request: EndTxnRequest = context.request.decode()?;
            let cluster = routing.default_write_cluster(client_id);
            let id = request.transactional_id.0.to_string();
            let pending = to_coordinator(context, cluster, TRANSACTION, &id, 0).await?;
            let context = context.clone();
            Ok(Box::pin(async move {
                let reply = pending.await;
                // Release (commit) or discard (abort) the held mirror records once the
                // coordinator has accepted the outcome.
                if let Reply::Frame(chunks) = &reply {
                    let ended = chunks.last().and_then(|body| {
                        decode_body::<EndTxnResponse>(
                            body.clone(),
                            context.request.api_version,
                            "EndTxn response",
                        )
                        .ok()
                    });
                    if ended.is_some_and(|r| r.error_code == 0) {
                        context
                            .state
                            .mirrors
                            .end_transaction(&id, request.committed);
                    }
                }
                reply
            }))
        }
        ApiKey::CreateTopics => {
            let request: CreateTopicsRequest = context.request.decode()?;
            create_on_mirrors(context, &request);
            admin_apis::create_topics(context, request).await
        }
        ApiKey::DeleteTopics => {
            let request: DeleteTopicsRequest = context.request.decode()?;
            admin_apis::delete_topics(context, request).await
        }
        ApiKey::CreatePartitions => {
            let request: CreatePartitionsRequest = context.request.decode()?;
            admin_apis::create_partitions(context, request).await
        }
        ApiKey::DeleteRecords => {
            let request: DeleteRecordsRequest = context.request.decode()?;
            admin_apis::delete_records(context, request).await
        }
        ApiKey::DescribeConfigs => {
            let request: DescribeConfigsRequest = context.request.decode()?;
            admin_apis::describe_configs(context, request).await
        }
        ApiKey::AlterConfigs
        | ApiKey::IncrementalAlterConfigs
        | ApiKey::DescribeAcls
        | ApiKey::CreateAcls
        | ApiKey::DeleteAcls => to_admin(context).await,
        other => Ok(Box::pin(async move {
            Reply::Close(format!("{other:?} is not served"))
        })),
    }
}

/// Creates the topics of a CreateTopics request on their routes' mirror clusters too, under
/// their names there (in the background; the client gets the write cluster's answer).
fn create_on_mirrors(context: &Context, request: &CreateTopicsRequest) {
    if request.validate_only {
        return;
    }
    let client_id = context.client_id();
    let mut per_cluster: Vec<(ClusterId, CreateTopicsRequest)> = Vec::new();
    for topic in &request.topics {
        let Some(route) = context.routing.route(&topic.name.0, client_id) else {
            continue;
        };
        for &mirror in &route.mirror {
            let mut renamed = topic.clone();
            renamed.name = TopicName(StrBytes::from_string(
                route.topic_on(mirror, &topic.name.0).to_string(),
            ));
            match per_cluster.iter_mut().find(|(id, _)| *id == mirror) {
                Some((_, mirror_request)) => mirror_request.topics.push(renamed),
                None => per_cluster.push((mirror, request.clone().with_topics(vec![renamed]))),
            }
        }
    }
    for (mirror, mirror_request) in per_cluster {
        let cluster = context.cluster(mirror).clone();
        let version = context.request.api_version;
        tokio::spawn(async move {
            if let Err(error) = cluster
                .admin_request(ApiKey::CreateTopics, version, &mirror_request)
                .await
            {
                tracing::warn!(cluster = %cluster.name, %error, "creating topics on mirror failed");
            }
        });
    }
}

/// To the coordinator of `group` on the cluster the `[[groups]]` rules give it.
async fn to_group(
    context: &Context,
    group: &str,
    requested_wait_ms: i32,
) -> Result<PendingReply, Error> {
    // A group being moved waits, then goes where the new table sends it.
    let cluster = if context.state.group_moves.wait_if_moving(group).await {
        context.state.routing.load().group_cluster(group)
    } else {
        context.routing.group_cluster(group)
    };
    to_coordinator(context, cluster, GROUP, group, requested_wait_ms).await
}

async fn to_coordinator(
    context: &Context,
    cluster_id: ClusterId,
    key_type: i8,
    key: &str,
    requested_wait_ms: i32,
) -> Result<PendingReply, Error> {
    let cluster = context.cluster(cluster_id).clone();
    let node = cluster.coordinator(key_type, key).await?;
    let key = key.to_string();
    context
        .forward(cluster_id, node, requested_wait_ms, move |context, body| {
            if let Some(code) = coordinator_error(context, body) {
                tracing::debug!(cluster = %cluster.name, key, code, "coordinator moved; forgetting it");
                cluster.forget_coordinator(key_type, &key);
            }
        })
        .await
}

/// Admin APIs that name no topic or group go to any broker of the client's default write
/// cluster.
async fn to_admin(context: &Context) -> Result<PendingReply, Error> {
    to_any_broker(
        context,
        context.routing.default_write_cluster(context.client_id()),
    )
    .await
}

async fn to_any_broker(context: &Context, cluster: ClusterId) -> Result<PendingReply, Error> {
    let node = context.cluster(cluster).any_broker().await?;
    context.forward(cluster, node, 0, |_, _| {}).await
}

/// ListGroups asks every broker of every cluster that hosts groups, and merges.
async fn list_groups(context: &Context) -> Result<PendingReply, Error> {
    let mut sent = Vec::new();
    for cluster_id in context.routing.group_clusters() {
        let cluster: Arc<Cluster> = context.cluster(cluster_id).clone();
        let node = cluster.any_broker().await?;
        let connection = context.upstream.get(&cluster, node, Lane::Other).await?;
        let response = connection.request(
            ApiKey::ListGroups,
            context.request.api_version,
            &context.request.client_id,
            context.request.body.clone(),
        )?;
        sent.push(response);
    }
    let context = context.clone();
    // One deadline for every cluster's answer, awaited in turn below.
    let deadline = context.deadline(0);
    Ok(Box::pin(async move {
        let version = context.request.api_version;
        let mut merged = ListGroupsResponse::default();
        for response in sent {
            let body: Result<Bytes, BackendError> = response.wait_until(deadline).await;
            match body.map(|body| {
                decode_body::<ListGroupsResponse>(body, version, "list groups response")
            }) {
                Ok(Ok(response)) => {
                    merged.throttle_time_ms =
                        merged.throttle_time_ms.max(response.throttle_time_ms);
                    if response.error_code != 0 {
                        merged.error_code = response.error_code;
                    }
                    merged.groups.extend(response.groups);
                }
                // An undecodable answer is that cluster's failure, as an unreachable one is.
                Ok(Err(error)) => {
                    tracing::debug!(%error, "list groups answer undecodable");
                    merged.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
                Err(error) => {
                    tracing::debug!(%error, "list groups failed");
                    merged.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
            }
        }
        context.respond(&merged)
    }))
}

/// The coordinator error in a coordinator's answer, if it says it is not (or not yet)
/// the coordinator.
fn coordinator_error(context: &Context, body: &Bytes) -> Option<i16> {
    let mut body = body.clone();
    let response = ResponseKind::decode(
        context.request.api_key,
        &mut body,
        context.request.api_version,
    )
    .ok()?;
    let codes: Vec<i16> = match response {
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::LeaveGroup(r) => vec![r.error_code],
        ResponseKind::OffsetFetch(r) => vec![r.error_code],
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::AddOffsetsToTxn(r) => vec![r.error_code],
        ResponseKind::EndTxn(r) => vec![r.error_code],
        ResponseKind::AddPartitionsToTxn(r) => r
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| p.partition_error_code)
            })
            .collect(),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        _ => Vec::new(),
    };
    let moved = [
        ResponseError::NotCoordinator.code(),
        ResponseError::CoordinatorNotAvailable.code(),
    ];
    codes.into_iter().find(|code| moved.contains(code))
}
