//! The virtual cluster: the answers kshift gives as the broker itself — ApiVersions,
//! Metadata, FindCoordinator, DescribeCluster.
//!
//! Invariants:
//! - kshift speaks for every backend broker through a virtual node of its own
//!   ([`crate::cluster::Cluster::virtual_node`]): Metadata lists one per broker kshift knows
//!   of, every one at kshift's advertised address. Clients key connections by node id, so
//!   they open one connection to kshift per virtual node and send each one only the
//!   partitions of its real broker, as they would going direct; a slow or dead backend
//!   broker then holds only the requests of its own partitions.
//! - A partition's leader is the virtual node of its real leader on the route's write
//!   cluster (where producers' requests must be split), or on the read cluster where the
//!   write cluster does not have the partition. A group or transaction coordinator is the
//!   virtual node of the real coordinator. The controller is any virtual node.
//! - No backend host, port, node id, leader epoch or topic id reaches a client from here.
//! - Topics are listed as their route's read cluster has them, under the client-visible
//!   name; a topic no route matches does not exist for the client.

use std::collections::HashMap;
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

use crate::cluster::{GROUP, TRANSACTION};
use crate::codec;
use crate::error::BackendError;
use crate::handler::{
    served_range, Context, PendingReply, Reply, ANSWERED_LOCALLY, SERVED_VERSIONS,
};
use crate::routing::ClusterId;
use crate::state::ProxyState;

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
        let Some((mut min, mut max)) = served_range(*api_key) else {
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

/// Every virtual node: one per broker of every cluster kshift has heard of, all at kshift's
/// address (kshift's own `node_id` while it knows none, so clients have a broker to ask).
fn virtual_brokers(state: &ProxyState) -> Vec<(BrokerId, StrBytes, i32)> {
    let host = StrBytes::from_string(state.node.host.clone());
    let mut ids: Vec<i32> = state
        .clusters
        .iter()
        .flat_map(|cluster| {
            cluster
                .known_brokers()
                .into_iter()
                .map(|broker| cluster.virtual_node(broker))
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        ids.push(state.node.node_id);
    }
    ids.into_iter()
        .map(|id| (BrokerId(id), host.clone(), state.node.port))
        .collect()
}

/// Asks each cluster that serves this client (reads, groups, its default writes) and whose
/// brokers kshift does not know yet for them.
async fn learn_brokers(context: &Context) {
    let mut serving = context.routing.read_clusters();
    serving.extend(context.routing.group_clusters());
    serving.push(context.routing.default_write_cluster(context.client_id()));
    serving.sort_unstable();
    serving.dedup();
    for cluster_id in serving {
        let cluster = context.cluster(cluster_id);
        if cluster.known_brokers().is_empty() {
            if let Err(error) = cluster.any_broker().await {
                tracing::debug!(cluster = %cluster.name, %error, "Metadata: brokers unknown");
            }
        }
    }
}

/// The controller clients are shown: the virtual node of the client's write cluster's
/// controller, else the first virtual node.
fn controller(context: &Context, brokers: &[(BrokerId, StrBytes, i32)]) -> BrokerId {
    let cluster = context.cluster(context.routing.default_write_cluster(context.client_id()));
    match cluster.known_controller() {
        Some(node) => BrokerId(cluster.virtual_node(node)),
        None => brokers
            .first()
            .map_or(BrokerId(context.state.node.node_id), |(id, _, _)| *id),
    }
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
        let topics = match requested {
            Some(topics) => listed_topics(&context, topics, auto_create).await,
            None => all_topics(&context).await,
        };
        // After the topics: their metadata taught kshift the brokers. A cluster clients are
        // served from whose brokers kshift has not learned yet (a Metadata request naming no
        // topic, right after start) is asked first, so clients never see only the fallback.
        learn_brokers(&context).await;
        let brokers = virtual_brokers(&context.state);
        let response = MetadataResponse::default()
            .with_controller_id(controller(&context, &brokers))
            .with_brokers(
                brokers
                    .into_iter()
                    .map(|(id, host, port)| {
                        MetadataResponseBroker::default()
                            .with_node_id(id)
                            .with_host(host)
                            .with_port(port)
                    })
                    .collect(),
            )
            .with_cluster_id(Some(StrBytes::from_string(
                context.state.config.cluster_id.clone(),
            )))
            .with_cluster_authorized_operations(i32::MIN)
            .with_topics(topics);
        context.respond(&response)
    })
}

/// One topic of a Metadata answer: where its partitions are read and where they are led.
struct Wanted {
    client_name: String,
    read: ClusterId,
    read_name: String,
    write: ClusterId,
    write_name: String,
}

/// Partition index → real leader, for topics of one cluster's Metadata answer.
type Leaders = HashMap<String, HashMap<i32, i32>>;

fn leaders_of(response: &MetadataResponse) -> Leaders {
    response
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| {
            let name = t.name.as_ref()?.0.to_string();
            let leaders = t
                .partitions
                .iter()
                .filter(|p| p.leader_id.0 >= 0)
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect();
            Some((name, leaders))
        })
        .collect()
}

/// The write clusters' leaders of the `wanted` topics that are written elsewhere than read
/// (one Metadata request per write cluster); a cluster that cannot answer is left out, and
/// its topics' leaders are mapped from their read cluster.
async fn write_leaders(context: &Context, wanted: &[Wanted]) -> HashMap<ClusterId, Leaders> {
    let mut names: Vec<(ClusterId, Vec<String>)> = Vec::new();
    for topic in wanted.iter().filter(|t| t.write != t.read) {
        match names.iter_mut().find(|(id, _)| *id == topic.write) {
            Some((_, list)) => list.push(topic.write_name.clone()),
            None => names.push((topic.write, vec![topic.write_name.clone()])),
        }
    }
    let mut leaders = HashMap::new();
    for (cluster_id, list) in names {
        let cluster = context.cluster(cluster_id);
        match cluster.metadata(Some(&list), false).await {
            Ok(response) => {
                leaders.insert(cluster_id, leaders_of(&response));
            }
            Err(error) => {
                tracing::warn!(cluster = %cluster.name, %error, "metadata from write cluster failed; leaders shown from the read cluster")
            }
        }
    }
    leaders
}

/// `backend` (from `wanted.read`) as the client sees it, leaders mapped to virtual nodes.
fn present_wanted(
    context: &Context,
    wanted: &Wanted,
    backend: &MetadataResponseTopic,
    write_leaders: &HashMap<ClusterId, Leaders>,
) -> MetadataResponseTopic {
    let read = context.cluster(wanted.read);
    let write = context.cluster(wanted.write);
    let written = write_leaders
        .get(&wanted.write)
        .and_then(|leaders| leaders.get(&wanted.write_name));
    present_topic(&wanted.client_name, backend, |partition| {
        let on_write = written.and_then(|leaders| leaders.get(&partition.partition_index));
        match on_write {
            Some(&leader) => Some(BrokerId(write.virtual_node(leader))),
            None if partition.leader_id.0 >= 0 => {
                Some(BrokerId(read.virtual_node(partition.leader_id.0)))
            }
            None => None,
        }
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
    let mut wanted = Vec::with_capacity(topics.len());
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
        wanted.push(Wanted {
            read: route.read,
            read_name: route.topic_on(route.read, &topic).to_string(),
            write: route.write,
            write_name: route.topic_on(route.write, &topic).to_string(),
            client_name: topic,
        });
    }
    let mut read_clusters: Vec<ClusterId> = wanted.iter().map(|t| t.read).collect();
    read_clusters.sort_unstable();
    read_clusters.dedup();
    let mut read_answers = Vec::new();
    for cluster_id in read_clusters {
        let names: Vec<String> = wanted
            .iter()
            .filter(|t| t.read == cluster_id)
            .map(|t| t.read_name.clone())
            .collect();
        let cluster = context.cluster(cluster_id);
        let answer = cluster.metadata(Some(&names), auto_create).await;
        if let Err(error) = &answer {
            tracing::warn!(cluster = %cluster.name, %error, "metadata from read cluster failed");
        }
        read_answers.push((cluster_id, answer));
    }
    let write_leaders = write_leaders(context, &wanted).await;
    for topic in &wanted {
        let Some((_, answer)) = read_answers.iter().find(|(id, _)| *id == topic.read) else {
            continue;
        };
        answered.push(match answer {
            Ok(backend) => {
                let found = backend.topics.iter().find(|t| {
                    t.name
                        .as_ref()
                        .is_some_and(|n| n.0.as_str() == topic.read_name)
                });
                match found {
                    Some(found) => present_wanted(context, topic, found, &write_leaders),
                    None => topic_error(
                        &topic.client_name,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ),
                }
            }
            Err(_) => topic_error(&topic.client_name, ResponseError::LeaderNotAvailable.code()),
        });
    }
    answered
}

/// Every topic the client can reach: each read cluster's topics whose route reads there.
async fn all_topics(context: &Context) -> Vec<MetadataResponseTopic> {
    let client_id = context.client_id();
    let mut found = Vec::new();
    for cluster_id in context.routing.read_clusters() {
        let cluster = context.cluster(cluster_id);
        let backend = match cluster.metadata(None, false).await {
            Ok(backend) => backend,
            Err(error) => {
                tracing::warn!(cluster = %cluster.name, %error, "metadata from read cluster failed; its topics are left out");
                continue;
            }
        };
        for topic in backend.topics {
            let Some(name) = &topic.name else { continue };
            let name = name.0.to_string();
            let Some(route) = context.routing.route(&name, client_id) else {
                continue;
            };
            if route.read == cluster_id && route.topic_on(cluster_id, &name) == name {
                let wanted = Wanted {
                    read: cluster_id,
                    read_name: name.clone(),
                    write: route.write,
                    write_name: route.topic_on(route.write, &name).to_string(),
                    client_name: name,
                };
                found.push((wanted, topic));
            }
        }
    }
    let (wanted, backends): (Vec<Wanted>, Vec<MetadataResponseTopic>) = found.into_iter().unzip();
    let write_leaders = write_leaders(context, &wanted).await;
    wanted
        .iter()
        .zip(&backends)
        .map(|(wanted, backend)| present_wanted(context, wanted, backend, &write_leaders))
        .collect()
}

/// A backend topic as the client sees it: each partition led by the virtual node
/// `leader_of` gives it (none: LEADER_NOT_AVAILABLE), replicas and ISR that node alone,
/// epochs unknown.
pub fn present_topic(
    client_name: &str,
    backend: &MetadataResponseTopic,
    leader_of: impl Fn(&MetadataResponsePartition) -> Option<BrokerId>,
) -> MetadataResponseTopic {
    let partitions = backend
        .partitions
        .iter()
        .map(|p| {
            let leader = leader_of(p);
            let error_code = if p.error_code == 0 && leader.is_none() {
                ResponseError::LeaderNotAvailable.code()
            } else {
                p.error_code
            };
            let nodes: Vec<BrokerId> = leader.into_iter().collect();
            MetadataResponsePartition::default()
                .with_error_code(error_code)
                .with_partition_index(p.partition_index)
                .with_leader_id(leader.unwrap_or(BrokerId(-1)))
                .with_leader_epoch(-1)
                .with_replica_nodes(nodes.clone())
                .with_isr_nodes(nodes)
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

/// The virtual node of the real coordinator of `key`: a group's on the cluster the
/// `[[groups]]` rules give it, a transactional id's on the client's write cluster (where
/// [`crate::handlers::groups`] sends their requests).
async fn coordinator_node(context: &Context, key_type: i8, key: &str) -> Result<i32, i16> {
    let cluster_id = match key_type {
        GROUP => {
            // A group being moved waits, then is looked up where the new table puts it.
            if context.state.group_moves.wait_if_moving(key).await {
                context.state.routing.load().group_cluster(key)
            } else {
                context.routing.group_cluster(key)
            }
        }
        TRANSACTION => context.routing.default_write_cluster(context.client_id()),
        _ => return Err(ResponseError::InvalidRequest.code()),
    };
    let cluster = context.cluster(cluster_id);
    match cluster.coordinator(key_type, key).await {
        Ok(node) => Ok(cluster.virtual_node(node)),
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, key, %error, "coordinator lookup failed");
            Err(match error {
                BackendError::Kafka { code, .. } => code,
                _ => ResponseError::CoordinatorNotAvailable.code(),
            })
        }
    }
}

/// FindCoordinator (v0–3 one key, v4+ several): each key's real coordinator, as its
/// virtual node at kshift's address.
pub fn find_coordinator(context: Context) -> PendingReply {
    Box::pin(async move {
        let request: FindCoordinatorRequest = match context.request.decode() {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(%error, "closing client connection: malformed FindCoordinator request");
                return Reply::Close(error.to_string());
            }
        };
        let node = &context.state.node;
        let host = StrBytes::from_string(node.host.clone());
        let batched = context.request.api_version >= 4;
        let keys = if batched {
            request.coordinator_keys
        } else {
            vec![request.key]
        };
        let mut coordinators = Vec::with_capacity(keys.len());
        for key in keys {
            let coordinator = match coordinator_node(&context, request.key_type, &key).await {
                Ok(id) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(id))
                    .with_host(host.clone())
                    .with_port(node.port),
                Err(code) => Coordinator::default()
                    .with_key(key)
                    .with_error_code(code)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1),
            };
            coordinators.push(coordinator);
        }
        let response = if batched {
            FindCoordinatorResponse::default().with_coordinators(coordinators)
        } else {
            match coordinators.into_iter().next() {
                Some(c) => FindCoordinatorResponse::default()
                    .with_error_code(c.error_code)
                    .with_node_id(c.node_id)
                    .with_host(c.host)
                    .with_port(c.port),
                None => FindCoordinatorResponse::default(),
            }
        };
        context.respond(&response)
    })
}

pub fn describe_cluster(context: Context) -> PendingReply {
    Box::pin(async move {
        learn_brokers(&context).await;
        let brokers = virtual_brokers(&context.state);
        let response = DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_string(
                context.state.config.cluster_id.clone(),
            ))
            .with_controller_id(controller(&context, &brokers))
            .with_endpoint_type(1)
            .with_cluster_authorized_operations(i32::MIN)
            .with_brokers(
                brokers
                    .into_iter()
                    .map(|(id, host, port)| {
                        DescribeClusterBroker::default()
                            .with_broker_id(id)
                            .with_host(host)
                            .with_port(port)
                    })
                    .collect(),
            );
        context.respond(&response)
    })
}
