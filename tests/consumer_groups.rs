//! Consumer groups through kshift: a subscribed consumer joins, consumes, commits synchronously
//! and reads its commits back; after it leaves, the next member of the group resumes exactly at
//! the committed offsets — nothing delivered twice, nothing skipped.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Broker, Kshift, Received, TestConsumer};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// A join takes a few seconds on Tansu (it holds the first JoinGroup ~session timeout / 2).
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Records `key-{i}`/`value-{i}` for `i` in `first..first + count`.
async fn produce_keyed(bootstrap: &str, topic: &str, first: usize, count: usize) {
    let records = (first..first + count).map(|i| (format!("key-{i}"), format!("value-{i}")));
    common::send_keyed(&common::producer(bootstrap, &[]), topic, records).await;
}

/// A broker, kshift in front of it, a fresh group and a fresh topic (named from `prefix`) of
/// `partitions` partitions holding `records` keyed records.
async fn topic_with_records(
    prefix: &str,
    partitions: i32,
    records: usize,
) -> (Broker, Kshift, String, String) {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic(prefix);
    let group = common::unique_topic(&format!("{prefix}-id"));
    common::create_topic(&kshift.bootstrap(), &topic, partitions).await;
    produce_keyed(&kshift.bootstrap(), &topic, 0, records).await;
    (broker, kshift, topic, group)
}

fn subscribed(bootstrap: &str, group: &str, topic: &str) -> TestConsumer {
    let consumer = common::consumer(bootstrap, &[("group.id", group)]);
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// `value-{i}` for each `i` in `range`, sorted (as [`values`] sorts what was received).
fn sorted_values(range: std::ops::Range<usize>) -> Vec<String> {
    let mut values: Vec<String> = range.map(|i| format!("value-{i}")).collect();
    values.sort();
    values
}

fn values(records: &[Received]) -> Vec<String> {
    let mut values: Vec<String> = records
        .iter()
        .map(|record| String::from_utf8(record.value.clone().expect("value")).expect("utf-8"))
        .collect();
    values.sort();
    values
}

/// (partition → offset) of a list, skipping partitions without an offset.
fn offsets(list: &TopicPartitionList) -> HashMap<i32, i64> {
    list.elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_commits_and_the_next_member_resumes_there() {
    let (_broker, kshift, topic, group) = topic_with_records("group", 2, 20).await;

    let first = subscribed(&kshift.bootstrap(), &group, &topic);
    let consumed = common::consume_n(&first, 20, GROUP_TIMEOUT).await;
    let expected = sorted_values(0..20);
    assert_eq!(values(&consumed), expected);
    let mut end_of: HashMap<i32, i64> = HashMap::new();
    for record in &consumed {
        let end = end_of.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    assert_eq!(end_of.len(), 2, "20 keys all landed on one partition");

    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("synchronous commit");
    let committed = first
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(offsets(&committed), end_of, "committed() after commit");
    assert_eq!(offsets(&first.position().expect("position")), end_of);
    drop(first); // closes the consumer: LeaveGroup

    produce_keyed(&kshift.bootstrap(), &topic, 20, 10).await;
    let second = subscribed(&kshift.bootstrap(), &group, &topic);
    let resumed = common::consume_n(&second, 10, GROUP_TIMEOUT).await;
    let expected = sorted_values(20..30);
    assert_eq!(values(&resumed), expected, "resumed after the commit");
    for record in &resumed {
        assert!(
            record.offset >= end_of[&record.partition],
            "{record:?} was committed already"
        );
    }
    drop(second);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_in_the_middle_resumes_at_the_next_record() {
    let (_broker, kshift, topic, group) = topic_with_records("group-middle", 1, 10).await;

    let first = subscribed(&kshift.bootstrap(), &group, &topic);
    let consumed = common::consume_n(&first, 10, GROUP_TIMEOUT).await;
    let offsets_seen: Vec<i64> = consumed.iter().map(|record| record.offset).collect();
    assert_eq!(offsets_seen, (0..10).collect::<Vec<i64>>());
    // Processed up to and including offset 5: the committed position is 6.
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(6))
        .expect("add partition");
    first
        .commit(&commit, CommitMode::Sync)
        .expect("synchronous commit");
    let committed = first
        .committed_offsets(commit.clone(), Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(offsets(&committed), HashMap::from([(0, 6)]));
    drop(first);

    let second = subscribed(&kshift.bootstrap(), &group, &topic);
    let resumed = common::consume_n(&second, 4, GROUP_TIMEOUT).await;
    let offsets_resumed: Vec<i64> = resumed.iter().map(|record| record.offset).collect();
    assert_eq!(offsets_resumed, vec![6, 7, 8, 9]);
    assert_eq!(
        resumed[0].value.as_deref(),
        Some(b"value-6".as_slice()),
        "the record at the committed offset"
    );
    drop(second);
    kshift.shutdown().await;
}
