//! Consumer-group and offset APIs, to the group's coordinator on the group's cluster (per
//! `[[groups]]`); ListGroups asks every cluster hosting groups and merges.
//!
//! Invariants:
//! - Requests are forwarded byte for byte on this client connection's own upstream
//!   connection to the real coordinator, so a JoinGroup long poll holds only this client's
//!   connection, as it would going direct.
//! - A coordinator that answers NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE is forgotten;
//!   the client's retry (after FindCoordinator, answered by kshift) asks the cluster again.
//! - A group being moved by a read cutover waits, then goes where the new table sends it.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::ResponseError;

use crate::cluster::GROUP;
use crate::cluster::{Cluster, Lane};
use crate::codec::decode_body;
use crate::error::BackendError;
use crate::error::Error;
use crate::handler::{Context, PendingReply, Reply};

/// Routes a request this module serves.
pub async fn submit(context: &Context) -> Result<PendingReply, Error> {
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
        ApiKey::ListGroups => list_groups(context).await,
        other => Ok(Box::pin(async move {
            Reply::Close(format!("{other:?} is not served"))
        })),
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
    context
        .to_coordinator(cluster, GROUP, group, requested_wait_ms)
        .await
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
