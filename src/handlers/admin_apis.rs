//! Admin APIs that name topics or groups: CreateTopics, DeleteTopics, CreatePartitions and
//! DescribeConfigs go to the write cluster of each topic they name (under its name there),
//! DeleteRecords to each partition's leader on it, DescribeGroups and DeleteGroups to each
//! group's coordinator on the cluster hosting it. A request naming topics or groups of
//! several clusters (or brokers) is split into one sub-request per (cluster, broker) and the
//! answers merged into one, with the client's names.
//!
//! Invariants:
//! - Every topic, partition or group the client named appears in the answer: with its
//!   backend's result, or with the error a broker would give when kshift could not reach it.
//! - Every sub-request of one request shares the request's one deadline.
//! - Sub-requests go over this client connection's own upstream connections, like every
//!   other request of the client.

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteGroupsRequest, DeleteGroupsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::cluster::GROUP;
use crate::cluster::{is_leadership_error, Lane};
use crate::codec::{self, decode_body};
use crate::error::BackendError;
use crate::error::Error;
use crate::handler::{Context, PendingReply, Reply};
use crate::routing::ClusterId;

/// Routes an admin API request.
pub async fn submit(context: &Context) -> Result<PendingReply, Error> {
    match context.request.api_key {
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = context.request.decode()?;
            per_group(context, request).await
        }
        ApiKey::DeleteGroups => {
            let request: DeleteGroupsRequest = context.request.decode()?;
            per_group(context, request).await
        }
        ApiKey::CreateTopics => {
            let request: CreateTopicsRequest = context.request.decode()?;
            create_on_mirrors(context, &request);
            create_topics(context, request).await
        }
        ApiKey::DeleteTopics => {
            let request: DeleteTopicsRequest = context.request.decode()?;
            delete_topics(context, request).await
        }
        ApiKey::CreatePartitions => {
            let request: CreatePartitionsRequest = context.request.decode()?;
            create_partitions(context, request).await
        }
        ApiKey::DeleteRecords => {
            let request: DeleteRecordsRequest = context.request.decode()?;
            delete_records(context, request).await
        }
        ApiKey::DescribeConfigs => {
            let request: DescribeConfigsRequest = context.request.decode()?;
            describe_configs(context, request).await
        }
        ApiKey::AlterConfigs
        | ApiKey::IncrementalAlterConfigs
        | ApiKey::DescribeAcls
        | ApiKey::CreateAcls
        | ApiKey::DeleteAcls => to_admin(context).await,
        other => Ok(Box::pin(async move {
            Reply::Close(format!("{other:?} is not an admin api"))
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

/// Admin APIs that name no topic or group go to any broker of the client's default write
/// cluster.
async fn to_admin(context: &Context) -> Result<PendingReply, Error> {
    context
        .to_any_broker(context.routing.default_write_cluster(context.client_id()))
        .await
}

/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;

/// One sub-request: its target and the client's names of what it carries.
struct Sub<T> {
    cluster: ClusterId,
    node: i32,
    items: Vec<T>,
}

/// Adds `item` to the sub-request for (`cluster`, `node`), making one if needed.
fn add<T>(subs: &mut Vec<Sub<T>>, cluster: ClusterId, node: i32, item: T) {
    match subs
        .iter_mut()
        .find(|s| s.cluster == cluster && s.node == node)
    {
        Some(sub) => sub.items.push(item),
        None => subs.push(Sub {
            cluster,
            node,
            items: vec![item],
        }),
    }
}

/// A topic the client named: its name there and on the cluster it goes to.
#[derive(Clone)]
struct Named {
    client: StrBytes,
    backend: StrBytes,
}

/// The write cluster of `topic` and its name there (the client's default write cluster
/// and the same name for a topic no route matches).
fn write_target(context: &Context, topic: &StrBytes) -> (ClusterId, Named) {
    match context.routing.route(topic, context.client_id()) {
        Some(route) => (
            route.write,
            Named {
                client: topic.clone(),
                backend: StrBytes::from_string(route.topic_on(route.write, topic).to_string()),
            },
        ),
        None => (
            context.routing.default_write_cluster(context.client_id()),
            Named {
                client: topic.clone(),
                backend: topic.clone(),
            },
        ),
    }
}

/// Sends each sub-request (encoded by `encode`) to its broker; the pending reply awaits every
/// answer by one deadline and folds each (or its failure) into `merged`.
async fn fan_out<T, Resp, E, F>(
    context: &Context,
    subs: Vec<Sub<T>>,
    mut merged: Resp,
    encode: E,
    fold: F,
) -> Result<PendingReply, Error>
where
    T: Send + 'static,
    Resp: Decodable + Encodable + Send + 'static,
    E: Fn(&Sub<T>) -> Result<Bytes, Error>,
    F: Fn(&Context, &mut Resp, &Sub<T>, Result<Resp, BackendError>) + Send + 'static,
{
    let mut sent = Vec::with_capacity(subs.len());
    for sub in subs {
        let body = encode(&sub)?;
        let response = match context
            .upstream
            .get(context.cluster(sub.cluster), sub.node, Lane::Other)
            .await
        {
            Ok(connection) => connection.request(
                context.request.api_key,
                context.request.api_version,
                &context.request.client_id,
                body,
            ),
            Err(error) => Err(error),
        };
        sent.push((sub, response));
    }
    let context = context.clone();
    let deadline = context.deadline(0);
    Ok(Box::pin(async move {
        let version = context.request.api_version;
        for (sub, response) in sent {
            let answer = match response {
                Ok(response) => response.wait_until(deadline).await,
                Err(error) => Err(error),
            }
            .and_then(|body| {
                decode_body::<Resp>(body, version, "admin response").map_err(|e| {
                    BackendError::undecodable(
                        &context.cluster(sub.cluster).name,
                        "admin response",
                        e,
                    )
                })
            });
            if let Err(error) = &answer {
                tracing::debug!(cluster = %context.cluster(sub.cluster).name, api = ?context.request.api_key, %error, "admin sub-request failed");
            }
            fold(&context, &mut merged, &sub, answer);
        }
        context.respond(&merged)
    }))
}

/// The client's name of `backend` among `items`.
fn client_name(items: &[Named], backend: &StrBytes) -> StrBytes {
    items
        .iter()
        .find(|n| n.backend == *backend)
        .map_or_else(|| backend.clone(), |n| n.client.clone())
}

pub async fn create_topics(
    context: &Context,
    request: CreateTopicsRequest,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<(Named, _)>> = Vec::new();
    for topic in request.topics.iter().cloned() {
        let (cluster, named) = write_target(context, &topic.name.0);
        let node = context.cluster(cluster).any_broker().await?;
        add(&mut subs, cluster, node, (named, topic));
    }
    let version = context.request.api_version;
    let merged = CreateTopicsResponse::default();
    fan_out(
        context,
        subs,
        merged,
        move |sub| {
            let topics = sub
                .items
                .iter()
                .map(|(named, topic)| topic.clone().with_name(TopicName(named.backend.clone())))
                .collect();
            Ok(codec::encode_body(
                &request.clone().with_topics(topics),
                version,
            )?)
        },
        |_, merged: &mut CreateTopicsResponse, sub, answer| {
            let names: Vec<Named> = sub.items.iter().map(|(n, _)| n.clone()).collect();
            match answer {
                Ok(response) => {
                    merged.throttle_time_ms =
                        merged.throttle_time_ms.max(response.throttle_time_ms);
                    for mut result in response.topics {
                        result.name = TopicName(client_name(&names, &result.name.0));
                        merged.topics.push(result);
                    }
                }
                Err(error) => merged.topics.extend(names.iter().map(|n| {
                    CreatableTopicResult::default()
                        .with_name(TopicName(n.client.clone()))
                        .with_error_code(error.client_error_code())
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                })),
            }
        },
    )
    .await
}

pub async fn delete_topics(
    context: &Context,
    request: DeleteTopicsRequest,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<Named>> = Vec::new();
    for topic in &request.topic_names {
        let (cluster, named) = write_target(context, &topic.0);
        let node = context.cluster(cluster).any_broker().await?;
        add(&mut subs, cluster, node, named);
    }
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        DeleteTopicsResponse::default(),
        move |sub| {
            let names = sub
                .items
                .iter()
                .map(|n| TopicName(n.backend.clone()))
                .collect();
            Ok(codec::encode_body(
                &request.clone().with_topic_names(names),
                version,
            )?)
        },
        |_, merged: &mut DeleteTopicsResponse, sub, answer| match answer {
            Ok(response) => {
                merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
                for mut result in response.responses {
                    result.name = result
                        .name
                        .map(|name| TopicName(client_name(&sub.items, &name.0)));
                    merged.responses.push(result);
                }
            }
            Err(error) => merged.responses.extend(sub.items.iter().map(|n| {
                DeletableTopicResult::default()
                    .with_name(Some(TopicName(n.client.clone())))
                    .with_error_code(error.client_error_code())
            })),
        },
    )
    .await
}

pub async fn create_partitions(
    context: &Context,
    request: CreatePartitionsRequest,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<(Named, _)>> = Vec::new();
    for topic in request.topics.iter().cloned() {
        let (cluster, named) = write_target(context, &topic.name.0);
        let node = context.cluster(cluster).any_broker().await?;
        add(&mut subs, cluster, node, (named, topic));
    }
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        CreatePartitionsResponse::default(),
        move |sub| {
            let topics = sub
                .items
                .iter()
                .map(|(named, topic)| topic.clone().with_name(TopicName(named.backend.clone())))
                .collect();
            Ok(codec::encode_body(
                &request.clone().with_topics(topics),
                version,
            )?)
        },
        |_, merged: &mut CreatePartitionsResponse, sub, answer| {
            let names: Vec<Named> = sub.items.iter().map(|(n, _)| n.clone()).collect();
            match answer {
                Ok(response) => {
                    merged.throttle_time_ms =
                        merged.throttle_time_ms.max(response.throttle_time_ms);
                    for mut result in response.results {
                        result.name = TopicName(client_name(&names, &result.name.0));
                        merged.results.push(result);
                    }
                }
                Err(error) => merged.results.extend(names.iter().map(|n| {
                    CreatePartitionsTopicResult::default()
                        .with_name(TopicName(n.client.clone()))
                        .with_error_code(error.client_error_code())
                })),
            }
        },
    )
    .await
}

/// DescribeConfigs: topic resources at their write cluster (under the name there), every
/// other resource at the client's default write cluster.
pub async fn describe_configs(
    context: &Context,
    request: DescribeConfigsRequest,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<(Named, _)>> = Vec::new();
    for resource in request.resources.iter().cloned() {
        let (cluster, named) = if resource.resource_type == TOPIC_RESOURCE {
            write_target(context, &resource.resource_name)
        } else {
            let name = resource.resource_name.clone();
            (
                context.routing.default_write_cluster(context.client_id()),
                Named {
                    client: name.clone(),
                    backend: name,
                },
            )
        };
        let node = context.cluster(cluster).any_broker().await?;
        add(&mut subs, cluster, node, (named, resource));
    }
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        DescribeConfigsResponse::default(),
        move |sub| {
            let resources = sub
                .items
                .iter()
                .map(|(named, resource)| resource.clone().with_resource_name(named.backend.clone()))
                .collect();
            Ok(codec::encode_body(
                &request.clone().with_resources(resources),
                version,
            )?)
        },
        |_, merged: &mut DescribeConfigsResponse, sub, answer| match answer {
            Ok(response) => {
                merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
                for mut result in response.results {
                    if let Some((named, _)) = sub.items.iter().find(|(n, r)| {
                        r.resource_type == result.resource_type && n.backend == result.resource_name
                    }) {
                        result.resource_name = named.client.clone();
                    }
                    merged.results.push(result);
                }
            }
            Err(error) => merged.results.extend(sub.items.iter().map(|(n, r)| {
                DescribeConfigsResult::default()
                    .with_error_code(error.client_error_code())
                    .with_resource_type(r.resource_type)
                    .with_resource_name(n.client.clone())
            })),
        },
    )
    .await
}

/// DeleteRecords: each partition at its leader on the topic's write cluster.
pub async fn delete_records(
    context: &Context,
    request: DeleteRecordsRequest,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<(Named, DeleteRecordsPartition)>> = Vec::new();
    // Partitions kshift answers itself: (client topic, partition, error code).
    let mut errors: Vec<(StrBytes, i32, i16)> = Vec::new();
    for topic in &request.topics {
        let (cluster_id, named) = write_target(context, &topic.name.0);
        let cluster = context.cluster(cluster_id);
        for partition in &topic.partitions {
            match cluster
                .leader(&named.backend, partition.partition_index)
                .await
            {
                Ok(Some(node)) => add(
                    &mut subs,
                    cluster_id,
                    node,
                    (named.clone(), partition.clone()),
                ),
                Ok(None) => errors.push((
                    named.client.clone(),
                    partition.partition_index,
                    ResponseError::UnknownTopicOrPartition.code(),
                )),
                Err(error) => errors.push((
                    named.client.clone(),
                    partition.partition_index,
                    error.client_error_code(),
                )),
            }
        }
    }
    let mut merged = DeleteRecordsResponse::default();
    for (topic, partition, code) in errors {
        push_deleted(
            &mut merged,
            &topic,
            DeleteRecordsPartitionResult::default()
                .with_partition_index(partition)
                .with_low_watermark(-1)
                .with_error_code(code),
        );
    }
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        merged,
        move |sub| {
            let mut topics: Vec<DeleteRecordsTopic> = Vec::new();
            for (named, partition) in &sub.items {
                let name = TopicName(named.backend.clone());
                match topics.iter_mut().find(|t| t.name == name) {
                    Some(topic) => topic.partitions.push(partition.clone()),
                    None => topics.push(
                        DeleteRecordsTopic::default()
                            .with_name(name)
                            .with_partitions(vec![partition.clone()]),
                    ),
                }
            }
            Ok(codec::encode_body(
                &request.clone().with_topics(topics),
                version,
            )?)
        },
        |context, merged: &mut DeleteRecordsResponse, sub, answer| {
            let names: Vec<Named> = sub.items.iter().map(|(n, _)| n.clone()).collect();
            let cluster = context.cluster(sub.cluster);
            match answer {
                Ok(response) => {
                    merged.throttle_time_ms =
                        merged.throttle_time_ms.max(response.throttle_time_ms);
                    for topic in response.topics {
                        if topic
                            .partitions
                            .iter()
                            .any(|p| is_leadership_error(p.error_code))
                        {
                            cluster.forget_leaders(topic.name.0.as_str());
                        }
                        let client = client_name(&names, &topic.name.0);
                        for partition in topic.partitions {
                            push_deleted(merged, &client, partition);
                        }
                    }
                }
                Err(error) => {
                    for (named, partition) in &sub.items {
                        cluster.forget_leaders(named.backend.as_str());
                        push_deleted(
                            merged,
                            &named.client,
                            DeleteRecordsPartitionResult::default()
                                .with_partition_index(partition.partition_index)
                                .with_low_watermark(-1)
                                .with_error_code(error.client_error_code()),
                        );
                    }
                }
            }
        },
    )
    .await
}

fn push_deleted(
    merged: &mut DeleteRecordsResponse,
    topic: &StrBytes,
    partition: DeleteRecordsPartitionResult,
) {
    match merged.topics.iter_mut().find(|t| t.name.0 == *topic) {
        Some(existing) => existing.partitions.push(partition),
        None => merged.topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(TopicName(topic.clone()))
                .with_partitions(vec![partition]),
        ),
    }
}

/// Groups grouped by (cluster hosting them, their coordinator there); groups whose
/// coordinator cannot be found are returned apart with the error code.
async fn by_coordinator(
    context: &Context,
    groups: &[GroupId],
) -> (Vec<Sub<GroupId>>, Vec<(GroupId, i16)>) {
    let mut subs = Vec::new();
    let mut failed = Vec::new();
    for group in groups {
        let cluster_id = context.routing.group_cluster(&group.0);
        match context
            .cluster(cluster_id)
            .coordinator(GROUP, &group.0)
            .await
        {
            Ok(node) => add(&mut subs, cluster_id, node, group.clone()),
            Err(error) => failed.push((group.clone(), error.coordinator_error_code())),
        }
    }
    (subs, failed)
}

/// A request that names groups and is answered group by group (DescribeGroups, DeleteGroups):
/// split by each group's coordinator, merged back one entry per group.
trait PerGroup: Encodable + Clone + Send + 'static {
    type Response: Decodable + Encodable + Default + Send + 'static;
    type Entry;
    fn groups(&self) -> &[GroupId];
    fn with_groups(self, groups: Vec<GroupId>) -> Self;
    /// The entry of a group that could not be asked.
    fn failed(group: GroupId, code: i16) -> Self::Entry;
    fn group_and_code(entry: &Self::Entry) -> (&GroupId, i16);
    fn throttle_time_ms(response: &mut Self::Response) -> &mut i32;
    fn entries(response: &mut Self::Response) -> &mut Vec<Self::Entry>;
}

impl PerGroup for DescribeGroupsRequest {
    type Response = DescribeGroupsResponse;
    type Entry = DescribedGroup;
    fn groups(&self) -> &[GroupId] {
        &self.groups
    }
    fn with_groups(self, groups: Vec<GroupId>) -> Self {
        DescribeGroupsRequest::with_groups(self, groups)
    }
    fn failed(group: GroupId, code: i16) -> DescribedGroup {
        DescribedGroup::default()
            .with_group_id(group)
            .with_error_code(code)
    }
    fn group_and_code(entry: &DescribedGroup) -> (&GroupId, i16) {
        (&entry.group_id, entry.error_code)
    }
    fn throttle_time_ms(response: &mut DescribeGroupsResponse) -> &mut i32 {
        &mut response.throttle_time_ms
    }
    fn entries(response: &mut DescribeGroupsResponse) -> &mut Vec<DescribedGroup> {
        &mut response.groups
    }
}

impl PerGroup for DeleteGroupsRequest {
    type Response = DeleteGroupsResponse;
    type Entry = DeletableGroupResult;
    fn groups(&self) -> &[GroupId] {
        &self.groups_names
    }
    fn with_groups(self, groups: Vec<GroupId>) -> Self {
        self.with_groups_names(groups)
    }
    fn failed(group: GroupId, code: i16) -> DeletableGroupResult {
        DeletableGroupResult::default()
            .with_group_id(group)
            .with_error_code(code)
    }
    fn group_and_code(entry: &DeletableGroupResult) -> (&GroupId, i16) {
        (&entry.group_id, entry.error_code)
    }
    fn throttle_time_ms(response: &mut DeleteGroupsResponse) -> &mut i32 {
        &mut response.throttle_time_ms
    }
    fn entries(response: &mut DeleteGroupsResponse) -> &mut Vec<DeletableGroupResult> {
        &mut response.results
    }
}

/// Sends each group of `request` to its coordinator on its own cluster, and merges the answers.
/// A group whose coordinator cannot be found or asked gets a coordinator error (retriable), and
/// a coordinator that says it is not (or no longer) one is forgotten, so the retry looks again.
async fn per_group<R: PerGroup>(context: &Context, request: R) -> Result<PendingReply, Error> {
    let (subs, failed) = by_coordinator(context, request.groups()).await;
    let mut merged = R::Response::default();
    R::entries(&mut merged).extend(
        failed
            .into_iter()
            .map(|(group, code)| R::failed(group, code)),
    );
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        merged,
        move |sub| {
            Ok(codec::encode_body(
                &request.clone().with_groups(sub.items.clone()),
                version,
            )?)
        },
        |context, merged: &mut R::Response, sub, answer| {
            let entries = match answer {
                Ok(mut response) => {
                    let throttle = *R::throttle_time_ms(&mut response);
                    let merged_throttle = R::throttle_time_ms(merged);
                    *merged_throttle = (*merged_throttle).max(throttle);
                    std::mem::take(R::entries(&mut response))
                }
                Err(error) => sub
                    .items
                    .iter()
                    .map(|group| R::failed(group.clone(), error.coordinator_error_code()))
                    .collect(),
            };
            for entry in &entries {
                let (group, code) = R::group_and_code(entry);
                if code == ResponseError::NotCoordinator.code()
                    || code == ResponseError::CoordinatorNotAvailable.code()
                {
                    context
                        .cluster(sub.cluster)
                        .forget_coordinator(GROUP, &group.0);
                }
            }
            R::entries(merged).extend(entries);
        },
    )
    .await
}
