//! The virtual cluster: the answers kshift gives as the broker itself — ApiVersions,
//! Metadata, FindCoordinator, DescribeCluster.
//!
//! Invariants:
//! - kshift is the only broker clients see: it is every partition's leader, the
//!   controller and every coordinator, at its advertised address. No backend host, port,
//!   node id, leader epoch or topic id reaches a client from here.
//! - Topics are listed as their route's read cluster has them, under the client-visible
//!   name; a topic no route matches does not exist for the client.

use std::time::Duration;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeClusterResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::codec;
use crate::dispatch::{
    Context, HandlerError, PendingReply, Reply, ANSWERED_LOCALLY, SERVED_VERSIONS,
};
use crate::{ClusterId, ProxyState};

/// The newest ApiVersions version kshift answers; a newer request gets the v0-shaped
/// UNSUPPORTED_VERSION answer, from which the client picks a version it shares.
const API_VERSIONS_MAX: i16 = 4;

/// The ranges kshift advertises: what it serves, intersected with what every backend that
/// answered supports. Backends that cannot be reached right now are left out (logged).
pub async fn advertised_versions(state: &ProxyState) -> Vec<ApiVersion> {
    let mut backend_tables = Vec::new();
    for cluster in &state.clusters {
        let lookup = tokio::time::timeout(
            cluster.settings.connect_timeout + Duration::from_secs(1),
            cluster.api_versions(),
        );
        match lookup.await {
            Ok(Ok(table)) => backend_tables.push(table),
            Ok(Err(error)) => {
                tracing::warn!(cluster = %cluster.name, %error, "ApiVersions: backend unreachable, advertising without it")
            }
            Err(_) => {
                tracing::warn!(cluster = %cluster.name, "ApiVersions: backend timed out, advertising without it")
            }
        }
    }
    let mut advertised = Vec::new();
    for (api_key, _, _) in SERVED_VERSIONS {
        let Some((mut min, mut max)) = crate::dispatch::served_range(*api_key) else {
            continue;
        };
        if !ANSWERED_LOCALLY.contains(api_key) {
            for table in &backend_tables {
                match table.get(&(*api_key as i16)) {
                    Some(&(backend_min, backend_max)) => {
                        min = min.max(backend_min);
                        max = max.min(backend_max);
                    }
                    None => max = -1,
                }
            }
        }
        if min <= max {
            advertised.push(
                ApiVersion::default()
                    .with_api_key(*api_key as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            );
        }
    }
    if state.sasl.is_some() {
        // Served by kshift itself (the client's SASL ends here), whatever the backends do.
        use crate::security::sasl_server::{SASL_AUTHENTICATE_VERSIONS, SASL_HANDSHAKE_VERSIONS};
        for (api_key, (min, max)) in [
            (ApiKey::SaslHandshake, SASL_HANDSHAKE_VERSIONS),
            (ApiKey::SaslAuthenticate, SASL_AUTHENTICATE_VERSIONS),
        ] {
            advertised.push(
                ApiVersion::default()
                    .with_api_key(api_key as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            );
        }
    }
    advertised
}

pub fn api_versions(context: Context) -> PendingReply {
    Box::pin(async move {
        let api_keys = advertised_versions(&context.state).await;
        let version = context.request.api_version;
        if !(0..=API_VERSIONS_MAX).contains(&version) {
            let response = ApiVersionsResponse::default()
                .with_error_code(ResponseError::UnsupportedVersion.code())
                .with_api_keys(
                    api_keys
                        .into_iter()
                        .filter(|v| v.api_key == ApiKey::ApiVersions as i16)
                        .collect(),
                );
            return match codec::encode_body(&response, 0) {
                Ok(body) => context.respond_raw(body),
                Err(error) => Reply::Close(error.to_string()),
            };
        }
        context.respond(&ApiVersionsResponse::default().with_api_keys(api_keys))
    })
}

fn node_id(context: &Context) -> BrokerId {
    BrokerId(context.state.node.node_id)
}

pub fn metadata(context: Context) -> PendingReply {
    Box::pin(async move {
        let request: MetadataRequest = match context.request.decode() {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(version = context.request.api_version, body = ?context.request.body, %error, "closing client connection: malformed Metadata request");
                return Reply::Close(error.to_string());
            }
        };
        let version = context.request.api_version;
        let node = &context.state.node;
        let mut response = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(node_id(&context))
                .with_host(StrBytes::from_string(node.host.clone()))
                .with_port(node.port)])
            .with_cluster_id(Some(StrBytes::from_string(
                context.state.config.cluster_id.clone(),
            )))
            .with_controller_id(node_id(&context))
            .with_cluster_authorized_operations(i32::MIN);
        // v0 asks for every topic with an empty list, later versions with null.
        let requested: Option<Vec<String>> = match request.topics {
            Some(topics) if !(topics.is_empty() && version == 0) => Some(
                topics
                    .into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect(),
            ),
            _ => None,
        };
        let auto_create = version < 4 || request.allow_auto_topic_creation;
        response.topics = match requested {
            Some(topics) => listed_topics(&context, topics, auto_create).await,
            None => all_topics(&context).await,
        };
        context.respond(&response)
    })
}

/// Metadata for the topics a client named, each from its route's read cluster.
async fn listed_topics(
    context: &Context,
    topics: Vec<String>,
    auto_create: bool,
) -> Vec<MetadataResponseTopic> {
    let client_id = context.client_id();
    let mut answered = Vec::with_capacity(topics.len());
    // (cluster, backend names, client names), one request per read cluster.
    let mut per_cluster: Vec<(ClusterId, Vec<String>, Vec<String>)> = Vec::new();
    for topic in topics {
        let Some(route) = context.routing.route(&topic, client_id) else {
            answered.push(topic_error(
                &topic,
                ResponseError::UnknownTopicOrPartition.code(),
            ));
            continue;
        };
        if auto_create {
            // Created where records are written and mirrored; read from the read cluster
            // below (which auto-creates it there too if it is one of them).
            for &cluster_id in std::iter::once(&route.write).chain(&route.mirror) {
                if cluster_id == route.read {
                    continue;
                }
                let cluster = context.cluster(cluster_id);
                let name = route.topic_on(cluster_id, &topic).to_string();
                if let Err(error) = cluster.metadata(Some(&[name]), true).await {
                    tracing::warn!(cluster = %cluster.name, %error, "auto-creating topic failed");
                }
            }
        }
        let backend_name = route.topic_on(route.read, &topic).to_string();
        match per_cluster.iter_mut().find(|(id, _, _)| *id == route.read) {
            Some((_, backend, client)) => {
                backend.push(backend_name);
                client.push(topic);
            }
            None => per_cluster.push((route.read, vec![backend_name], vec![topic])),
        }
    }
    for (cluster_id, backend_names, client_names) in per_cluster {
        let cluster = context.cluster(cluster_id);
        let create_here = auto_create;
        match cluster.metadata(Some(&backend_names), create_here).await {
            Ok(backend) => {
                for (backend_name, client_name) in backend_names.iter().zip(&client_names) {
                    let found = backend.topics.iter().find(|t| {
                        t.name
                            .as_ref()
                            .is_some_and(|n| n.0.as_str() == backend_name)
                    });
                    answered.push(match found {
                        Some(topic) => present_topic(node_id(context), client_name, topic),
                        None => {
                            topic_error(client_name, ResponseError::UnknownTopicOrPartition.code())
                        }
                    });
                }
            }
            Err(error) => {
                tracing::warn!(cluster = %cluster.name, %error, "metadata from read cluster failed");
                for client_name in &client_names {
                    answered.push(topic_error(
                        client_name,
                        ResponseError::LeaderNotAvailable.code(),
                    ));
                }
            }
        }
    }
    answered
}

/// Every topic the client can reach: each read cluster's topics whose route reads there.
async fn all_topics(context: &Context) -> Vec<MetadataResponseTopic> {
    let client_id = context.client_id();
    let mut answered = Vec::new();
    for cluster_id in context.routing.read_clusters() {
        let cluster = context.cluster(cluster_id);
        let backend = match cluster.metadata(None, false).await {
            Ok(backend) => backend,
            Err(error) => {
                tracing::warn!(cluster = %cluster.name, %error, "metadata from read cluster failed; its topics are left out");
                continue;
            }
        };
        for topic in &backend.topics {
            let Some(name) = &topic.name else { continue };
            let name = name.0.as_str();
            let Some(route) = context.routing.route(name, client_id) else {
                continue;
            };
            if route.read == cluster_id && route.topic_on(cluster_id, name) == name {
                answered.push(present_topic(node_id(context), name, topic));
            }
        }
    }
    answered
}

/// A backend topic as the client sees it: kshift leads every partition, epochs unknown.
pub fn present_topic(
    node: BrokerId,
    client_name: &str,
    backend: &MetadataResponseTopic,
) -> MetadataResponseTopic {
    let partitions = backend
        .partitions
        .iter()
        .map(|p| {
            let has_leader = p.leader_id.0 >= 0;
            let error_code = if p.error_code == 0 && !has_leader {
                ResponseError::LeaderNotAvailable.code()
            } else {
                p.error_code
            };
            MetadataResponsePartition::default()
                .with_error_code(error_code)
                .with_partition_index(p.partition_index)
                .with_leader_id(if has_leader { node } else { BrokerId(-1) })
                .with_leader_epoch(-1)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(backend.error_code)
        .with_name(Some(TopicName(StrBytes::from_string(
            client_name.to_string(),
        ))))
        .with_is_internal(backend.is_internal)
        .with_partitions(partitions)
        .with_topic_authorized_operations(backend.topic_authorized_operations)
}

fn topic_error(name: &str, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_authorized_operations(i32::MIN)
}

/// kshift coordinates every group and transaction; it forwards their requests to the
/// real coordinator of the right cluster.
pub fn find_coordinator(context: &Context) -> Result<PendingReply, HandlerError> {
    let request: FindCoordinatorRequest = context.request.decode()?;
    let node = &context.state.node;
    let host = StrBytes::from_string(node.host.clone());
    let mut response = FindCoordinatorResponse::default();
    if context.request.api_version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(node_id(context))
                    .with_host(host.clone())
                    .with_port(node.port)
            })
            .collect();
    } else {
        response = response
            .with_node_id(node_id(context))
            .with_host(host)
            .with_port(node.port);
    }
    let reply = context.respond(&response);
    Ok(Box::pin(async move { reply }))
}

pub fn describe_cluster(context: &Context) -> Result<PendingReply, HandlerError> {
    let node = &context.state.node;
    let response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(
            context.state.config.cluster_id.clone(),
        ))
        .with_controller_id(node_id(context))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(i32::MIN)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node_id(context))
            .with_host(StrBytes::from_string(node.host.clone()))
            .with_port(node.port)]);
    let reply = context.respond(&response);
    Ok(Box::pin(async move { reply }))
}
