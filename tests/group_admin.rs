//! Group admin APIs through kshift: one DescribeGroups or DeleteGroups request naming groups that
//! live on different clusters is split by each group's coordinator on its own cluster, and the
//! answers come back merged, one entry per group, as a single broker would give them.

mod common;
mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Broker, Kshift};
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId,
};
use kafka_protocol::protocol::StrBytes;
use raw::RawClient;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const DESCRIBE_VERSION: i16 = 4;
const DELETE_VERSION: i16 = 1;

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_owned()))
}

/// Creates `group` by committing offset 1 of `topic` partition 0 for it through `bootstrap`,
/// without joining: an empty group with committed offsets, which DeleteGroups may delete.
fn commit_for(bootstrap: &str, group: &str, topic: &str) {
    let consumer = common::consumer(bootstrap, &[("group.id", group)]);
    consumer
        .commit(&offset_one(topic), CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit for {group}: {e}"));
}

/// Offset 1 of `topic` partition 0.
fn offset_one(topic: &str) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(1))
        .expect("add partition");
    offsets
}

/// (group, error code, state) of each group `address` describes, sorted by group.
async fn describe(address: SocketAddr, groups: &[&str]) -> Vec<(String, i16, String)> {
    let request =
        DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| group_id(g)).collect());
    let response: DescribeGroupsResponse =
        RawClient::ask(address, ApiKey::DescribeGroups, DESCRIBE_VERSION, &request).await;
    let mut described: Vec<_> = response
        .groups
        .into_iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.error_code,
                g.group_state.to_string(),
            )
        })
        .collect();
    described.sort();
    described
}

/// (group, error code) of each group `address` was asked to delete, sorted by group.
async fn delete(address: SocketAddr, groups: &[&str]) -> Vec<(String, i16)> {
    let request = DeleteGroupsRequest::default()
        .with_groups_names(groups.iter().map(|g| group_id(g)).collect());
    let response: DeleteGroupsResponse =
        RawClient::ask(address, ApiKey::DeleteGroups, DELETE_VERSION, &request).await;
    let mut results: Vec<_> = response
        .results
        .into_iter()
        .map(|r| (r.group_id.0.to_string(), r.error_code))
        .collect();
    results.sort();
    results
}

/// The offset `group` has committed for `topic` partition 0 on `bootstrap`, if any.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    let consumer = common::consumer(bootstrap, &[("group.id", group)]);
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {bootstrap}: {e}"));
    match committed.elements()[0].offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// A member of `group` subscribed to `topic` through `bootstrap`, once it has its assignment.
async fn member_of(bootstrap: &str, group: &str, topic: &str) -> common::TestConsumer {
    let consumer = common::consumer(bootstrap, &[("group.id", group)]);
    consumer.subscribe(&[topic]).expect("subscribe");
    let what = format!("a member of {group} to be assigned");
    common::eventually(common::TIMEOUT, &what, async || {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        match consumer.assignment() {
            Ok(assigned) if assigned.count() > 0 => Ok(()),
            other => Err(format!("assignment {other:?}")),
        }
    })
    .await;
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_two_clusters_are_described_and_deleted_in_one_request() {
    let old = Broker::start().await;
    let new = Broker::start().await;
    let routing = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\n\
                   [[groups]]\ngroups = \"on-new-*\"\ncluster = \"new\"\n\
                   [[groups]]\ngroups = \"*\"\ncluster = \"old\"\n";
    let kshift = Kshift::start_toml(&common::two_cluster_toml(&old, &new, "", routing)).await;
    let topic = common::unique_topic("group-admin");
    common::create_topic(&kshift.bootstrap(), &topic, 1).await;
    common::wait_for_topic(&new.bootstrap(), &topic, 1).await;
    let on_old = common::unique_topic("on-old");
    let on_new = common::unique_topic("on-new");

    // A live member of the group on new: only new describes it as Stable. (Tansu describes a
    // group it does not know as Empty, so the member is what tells the clusters apart.)
    let member = member_of(&kshift.bootstrap(), &on_new, &topic).await;
    commit_for(&kshift.bootstrap(), &on_old, &topic);
    let on_new_directly = describe(new.addr(), &[&on_new]).await;
    assert_eq!(on_new_directly[0].2, "Stable", "{on_new_directly:?}");
    assert_eq!(describe(old.addr(), &[&on_new]).await[0].2, "Empty");

    // One DescribeGroups through kshift: each group as its own cluster describes it.
    let through_kshift = describe(kshift.addr(), &[&on_new, &on_old]).await;
    let mut direct = [
        describe(old.addr(), &[&on_old]).await,
        describe(new.addr(), &[&on_new]).await,
    ]
    .concat();
    direct.sort();
    assert_eq!(
        through_kshift, direct,
        "described through kshift vs directly"
    );

    // The member leaves and commits; each group has committed offsets on its own cluster only.
    member
        .commit(&offset_one(&topic), CommitMode::Sync)
        .expect("member commit");
    drop(member);
    assert_eq!(committed(&old.bootstrap(), &on_old, &topic), Some(1));
    assert_eq!(committed(&new.bootstrap(), &on_new, &topic), Some(1));
    assert_eq!(committed(&new.bootstrap(), &on_old, &topic), None);
    assert_eq!(committed(&old.bootstrap(), &on_new, &topic), None);

    // One DeleteGroups through kshift deletes each on its own cluster.
    let deleted = delete(kshift.addr(), &[&on_old, &on_new]).await;
    let mut expected = vec![(on_old.clone(), 0), (on_new.clone(), 0)];
    expected.sort();
    assert_eq!(deleted, expected, "DeleteGroups answers through kshift");
    assert_eq!(committed(&old.bootstrap(), &on_old, &topic), None);
    assert_eq!(committed(&new.bootstrap(), &on_new, &topic), None);

    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_cluster_is_down_fails_alone() {
    let old = Broker::start().await;
    let mut new = Broker::start().await;
    let routing = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n\
                   [[groups]]\ngroups = \"on-new-*\"\ncluster = \"new\"\n\
                   [[groups]]\ngroups = \"*\"\ncluster = \"old\"\n";
    let kshift = Kshift::start_toml(&common::two_cluster_toml(&old, &new, "", routing)).await;
    let topic = common::unique_topic("group-admin-down");
    common::create_topic(&kshift.bootstrap(), &topic, 1).await;
    let on_old = common::unique_topic("on-old");
    commit_for(&kshift.bootstrap(), &on_old, &topic);
    let on_new = common::unique_topic("on-new");
    new.kill();

    // The group on the live cluster is answered; the one on the dead cluster gets the retriable
    // COORDINATOR_NOT_AVAILABLE, in the same answer.
    let coordinator_not_available = 15;
    let described = describe(kshift.addr(), &[&on_old, &on_new]).await;
    let codes: Vec<_> = described
        .iter()
        .map(|(group, code, _)| (group.clone(), *code))
        .collect();
    let mut expected = vec![
        (on_old.clone(), 0),
        (on_new.clone(), coordinator_not_available),
    ];
    expected.sort();
    assert_eq!(codes, expected, "described: {described:?}");

    let deleted = delete(kshift.addr(), &[&on_old, &on_new]).await;
    assert_eq!(deleted, expected);
    assert_eq!(committed(&old.bootstrap(), &on_old, &topic), None);

    kshift.shutdown().await;
}
