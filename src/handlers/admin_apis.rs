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
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
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
            per_write_topic(context, request).await
        }
        ApiKey::DeleteTopics => {
            let request: DeleteTopicsRequest = context.request.decode()?;
            per_write_topic(context, request).await
        }
        ApiKey::CreatePartitions => {
            let request: CreatePartitionsRequest = context.request.decode()?;
            per_write_topic(context, request).await
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

/// A request that names topics and is answered topic by topic at each topic's write cluster
/// (CreateTopics, DeleteTopics, CreatePartitions): split by cluster, each topic under its name
/// there, merged back under the client's names.
trait PerWriteTopic: Encodable + Clone + Send + 'static {
    /// What the request carries for one topic besides its name.
    type Item: Clone + Send + 'static;
    type Response: Decodable + Encodable + Default + Send + 'static;
    type Entry;
    /// Each topic the request names, with its item.
    fn topics(&self) -> Vec<(StrBytes, Self::Item)>;
    /// This request for only `topics`, each under the given name.
    fn with_topics(self, topics: Vec<(StrBytes, Self::Item)>) -> Self;
    /// The entry of a topic whose cluster could not be asked.
    fn failed(topic: StrBytes, code: i16) -> Self::Entry;
    fn name(entry: &mut Self::Entry) -> Option<&mut StrBytes>;
    fn throttle_time_ms(response: &mut Self::Response) -> &mut i32;
    fn entries(response: &mut Self::Response) -> &mut Vec<Self::Entry>;
}

impl PerWriteTopic for CreateTopicsRequest {
    type Item = CreatableTopic;
    type Response = CreateTopicsResponse;
    type Entry = CreatableTopicResult;
    fn topics(&self) -> Vec<(StrBytes, CreatableTopic)> {
        self.topics
            .iter()
            .map(|topic| (topic.name.0.clone(), topic.clone()))
            .collect()
    }
    fn with_topics(self, topics: Vec<(StrBytes, CreatableTopic)>) -> Self {
        let topics = topics
            .into_iter()
            .map(|(name, topic)| topic.with_name(TopicName(name)))
            .collect();
        CreateTopicsRequest::with_topics(self, topics)
    }
    fn failed(topic: StrBytes, code: i16) -> CreatableTopicResult {
        CreatableTopicResult::default()
            .with_name(TopicName(topic))
            .with_error_code(code)
            .with_num_partitions(-1)
            .with_replication_factor(-1)
    }
    fn name(entry: &mut CreatableTopicResult) -> Option<&mut StrBytes> {
        Some(&mut entry.name.0)
    }
    fn throttle_time_ms(response: &mut CreateTopicsResponse) -> &mut i32 {
        &mut response.throttle_time_ms
    }
    fn entries(response: &mut CreateTopicsResponse) -> &mut Vec<CreatableTopicResult> {
        &mut response.topics
    }
}

impl PerWriteTopic for DeleteTopicsRequest {
    type Item = ();
    type Response = DeleteTopicsResponse;
    type Entry = DeletableTopicResult;
    fn topics(&self) -> Vec<(StrBytes, ())> {
        self.topic_names.iter().map(|n| (n.0.clone(), ())).collect()
    }
    fn with_topics(self, topics: Vec<(StrBytes, ())>) -> Self {
        self.with_topic_names(topics.into_iter().map(|(n, ())| TopicName(n)).collect())
    }
    fn failed(topic: StrBytes, code: i16) -> DeletableTopicResult {
        DeletableTopicResult::default()
            .with_name(Some(TopicName(topic)))
            .with_error_code(code)
    }
    fn name(entry: &mut DeletableTopicResult) -> Option<&mut StrBytes> {
        entry.name.as_mut().map(|name| &mut name.0)
    }
    fn throttle_time_ms(response: &mut DeleteTopicsResponse) -> &mut i32 {
        &mut response.throttle_time_ms
    }
    fn entries(response: &mut DeleteTopicsResponse) -> &mut Vec<DeletableTopicResult> {
        &mut response.responses
    }
}

impl PerWriteTopic for CreatePartitionsRequest {
    type Item = CreatePartitionsTopic;
    type Response = CreatePartitionsResponse;
    type Entry = CreatePartitionsTopicResult;
    fn topics(&self) -> Vec<(StrBytes, CreatePartitionsTopic)> {
        self.topics
            .iter()
            .map(|topic| (topic.name.0.clone(), topic.clone()))
            .collect()
    }
    fn with_topics(self, topics: Vec<(StrBytes, CreatePartitionsTopic)>) -> Self {
        let topics = topics
            .into_iter()
            .map(|(name, topic)| topic.with_name(TopicName(name)))
            .collect();
        CreatePartitionsRequest::with_topics(self, topics)
    }
    fn failed(topic: StrBytes, code: i16) -> CreatePartitionsTopicResult {
        CreatePartitionsTopicResult::default()
            .with_name(TopicName(topic))
            .with_error_code(code)
    }
    fn name(entry: &mut CreatePartitionsTopicResult) -> Option<&mut StrBytes> {
        Some(&mut entry.name.0)
    }
    fn throttle_time_ms(response: &mut CreatePartitionsResponse) -> &mut i32 {
        &mut response.throttle_time_ms
    }
    fn entries(response: &mut CreatePartitionsResponse) -> &mut Vec<CreatePartitionsTopicResult> {
        &mut response.results
    }
}

/// Sends each topic of `request` to a broker of its write cluster under its name there, and
/// merges the answers under the client's names.
async fn per_write_topic<R: PerWriteTopic>(
    context: &Context,
    request: R,
) -> Result<PendingReply, Error> {
    let mut subs: Vec<Sub<(Named, R::Item)>> = Vec::new();
    for (topic, item) in request.topics() {
        let (cluster, named) = write_target(context, &topic);
        let node = context.cluster(cluster).any_broker().await?;
        add(&mut subs, cluster, node, (named, item));
    }
    let version = context.request.api_version;
    fan_out(
        context,
        subs,
        R::Response::default(),
        move |sub| {
            let topics = sub
                .items
                .iter()
                .map(|(named, item)| (named.backend.clone(), item.clone()))
                .collect();
            Ok(codec::encode_body(
                &request.clone().with_topics(topics),
                version,
            )?)
        },
        |context, merged: &mut R::Response, sub, answer| {
            let names: Vec<Named> = sub.items.iter().map(|(n, _)| n.clone()).collect();
            match answer {
                Ok(mut response) => {
                    let throttle = *R::throttle_time_ms(&mut response);
                    let merged_throttle = R::throttle_time_ms(merged);
                    *merged_throttle = (*merged_throttle).max(throttle);
                    for mut entry in std::mem::take(R::entries(&mut response)) {
                        if let Some(name) = R::name(&mut entry) {
                            *name = client_name(&names, name);
                        }
                        R::entries(merged).push(entry);
                    }
                }
                Err(error) => R::entries(merged).extend(
                    names
                        .into_iter()
                        .map(|n| R::failed(n.client, context.failure_code(&error))),
                ),
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
        |context, merged: &mut DescribeConfigsResponse, sub, answer| match answer {
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
                    .with_error_code(context.failure_code(&error))
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
                    context.failure_code(&error),
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
                                .with_error_code(context.failure_code(&error)),
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
            Err(error) => failed.push((group.clone(), context.coordinator_failure_code(&error))),
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
                    .map(|group| R::failed(group.clone(), context.coordinator_failure_code(&error)))
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
