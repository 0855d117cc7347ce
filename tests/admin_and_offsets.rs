//! Admin requests and offset lookups through kshift: topics created through kshift exist on the
//! write cluster, deleted ones disappear, topic configs are described, and ListOffsets answers
//! earliest, latest and by-timestamp lookups from the read cluster.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Broker, Kshift};
use rdkafka::admin::{
    AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Partition count of `topic` as `bootstrap` reports it, `None` if it is not listed.
fn partition_count(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer = common::consumer(bootstrap, &[]);
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map(|found| found.partitions().len())
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(common::TIMEOUT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_created_through_kshift_exists_on_the_broker() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("created");
    common::create_topic(&kshift.bootstrap(), &topic, 3).await;

    assert_eq!(partition_count(&kshift.bootstrap(), &topic), Some(3));
    assert_eq!(partition_count(&broker.bootstrap(), &topic), Some(3));

    // Creating it again fails with the broker's error, passed through.
    let admin = common::admin(&kshift.bootstrap());
    let again = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options(),
        )
        .await
        .expect("CreateTopics request");
    assert_eq!(
        again,
        vec![Err((topic.clone(), RDKafkaErrorCode::TopicAlreadyExists))]
    );
    drop(admin);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_deleted_through_kshift_is_gone() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let kept = common::unique_topic("kept");
    let deleted = common::unique_topic("deleted");
    common::create_topic(&kshift.bootstrap(), &kept, 1).await;
    common::create_topic(&kshift.bootstrap(), &deleted, 2).await;

    let admin = common::admin(&kshift.bootstrap());
    let results = admin
        .delete_topics(&[&deleted], &options())
        .await
        .expect("DeleteTopics request");
    assert_eq!(results, vec![Ok(deleted.clone())]);

    let what = format!("{deleted} to be gone from the broker");
    common::eventually(common::TIMEOUT, &what, async || {
        match partition_count(&broker.bootstrap(), &deleted) {
            None => Ok(()),
            Some(partitions) => Err(format!("listed with {partitions} partitions")),
        }
    })
    .await;
    assert_eq!(partition_count(&kshift.bootstrap(), &deleted), None);
    assert_eq!(partition_count(&kshift.bootstrap(), &kept), Some(1));

    // Deleting it again: the broker's UNKNOWN_TOPIC_OR_PARTITION, passed through.
    let again = admin
        .delete_topics(&[&deleted], &options())
        .await
        .expect("DeleteTopics request");
    assert_eq!(
        again,
        vec![Err((
            deleted.clone(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );
    drop(admin);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_are_described() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("configs");
    let admin = common::admin(&kshift.bootstrap());
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
                .set("retention.ms", "86400000")],
            &options(),
        )
        .await
        .expect("CreateTopics request");
    assert_eq!(created, vec![Ok(topic.clone())]);

    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &options())
        .await
        .expect("DescribeConfigs request");
    assert_eq!(described.len(), 1);
    let resource = described[0].as_ref().expect("topic configs");
    assert_eq!(
        resource.specifier,
        OwnedResourceSpecifier::Topic(topic.clone())
    );
    // Tansu returns the configs set at creation (with source DEFAULT); Kafka returns every
    // config. Both include these two with the values set.
    let value_of = |name: &str| resource.get(name).and_then(|entry| entry.value.clone());
    assert_eq!(value_of("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value_of("retention.ms").as_deref(), Some("86400000"));
    drop(admin);
    kshift.shutdown().await;
}

fn now_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    now.as_millis() as i64
}

/// The offset `bootstrap` answers for the first record of partition 0 at or after `timestamp`.
fn offset_for_time(consumer: &common::TestConsumer, topic: &str, timestamp: i64) -> Offset {
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(topic, 0, Offset::Offset(timestamp))
        .expect("add partition");
    let answer = consumer
        .offsets_for_times(query, common::TIMEOUT)
        .expect("ListOffsets by timestamp");
    let element = answer
        .find_partition(topic, 0)
        .expect("partition 0 answered");
    assert!(element.error().is_ok(), "{:?}", element.error());
    element.offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_listed_earliest_latest_and_by_timestamp() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("offsets");
    common::create_topic(&kshift.bootstrap(), &topic, 2).await;

    // Five records on partition 0, one batch each, with a pause and a noted time before each:
    // the record timestamps (CreateTime) are after the noted time, and so is the time the broker
    // stored them (Tansu looks up timestamps by the time it stored a batch, not by the records'
    // timestamps). Partition 1 stays empty.
    let before = now_ms() - 3_600_000;
    let producer = common::producer(&kshift.bootstrap(), &[("linger.ms", "0")]);
    let mut noted = Vec::new();
    for i in 0..5i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        noted.push(now_ms());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let value = format!("record-{i}");
        let delivered = common::send_all(
            &producer,
            vec![FutureRecord::to(&topic)
                .partition(0)
                .key("key")
                .payload(value.as_str())],
        )
        .await;
        assert_eq!((delivered[0].partition, delivered[0].offset), (0, i));
        producer.flush(common::TIMEOUT).expect("flush");
    }
    let after = now_ms() + 3_600_000;

    let consumer = common::consumer(&kshift.bootstrap(), &[]);
    // One record per batch: Tansu answers LATEST with the last batch's base offset + 1, which is
    // the high watermark only when that batch holds one record.
    let watermarks = |partition| {
        consumer
            .fetch_watermarks(&topic, partition, common::TIMEOUT)
            .expect("ListOffsets earliest/latest")
    };
    assert_eq!(watermarks(0), (0, 5));
    assert_eq!(watermarks(1), (0, 0));

    assert_eq!(
        offset_for_time(&consumer, &topic, before),
        Offset::Offset(0)
    );
    for (i, noted) in noted.iter().enumerate() {
        assert_eq!(
            offset_for_time(&consumer, &topic, *noted),
            Offset::Offset(i as i64),
            "first record after the time noted before record {i}"
        );
    }
    // After the last record Kafka answers -1 (Offset::End); Tansu answers 0. Either way kshift
    // must answer what the broker does.
    let direct = common::consumer(&broker.bootstrap(), &[]);
    assert_eq!(
        offset_for_time(&consumer, &topic, after),
        offset_for_time(&direct, &topic, after)
    );
    drop(direct);
    drop(consumer);
    drop(producer);
    kshift.shutdown().await;
}

/// Topics of `bootstrap` whose name is one of `names`.
fn present(bootstrap: &str, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|name| partition_count(bootstrap, name).is_some())
        .map(|name| name.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_naming_topics_of_two_clusters_reach_each_topics_write_cluster() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routing = "[[routes]]\ntopics = \"on-old-*\"\nwrite = \"old\"\nread = \"old\"\n\
                   [[routes]]\ntopics = \"on-new-*\"\nwrite = \"new\"\nread = \"new\"\n";
    let kshift = Kshift::start_toml(&common::two_cluster_toml(&old, &new, "", routing)).await;
    let on_old = common::unique_topic("on-old");
    let on_new = common::unique_topic("on-new");
    let admin = common::admin(&kshift.bootstrap());

    // One CreateTopics request naming both (librdkafka sends them together).
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&on_old, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&on_new, 1, TopicReplication::Fixed(1)),
            ],
            &options(),
        )
        .await
        .expect("CreateTopics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let names = [on_old.as_str(), on_new.as_str()];
    // Whether old and new list exactly these of the two topics; what they list if not.
    let on_each = |expected_old: &[String], expected_new: &[String]| {
        let (on_old, on_new) = (
            present(&old.bootstrap(), &names),
            present(&new.bootstrap(), &names),
        );
        if on_old == expected_old && on_new == expected_new {
            Ok(())
        } else {
            Err(format!("old has {on_old:?}, new has {on_new:?}"))
        }
    };
    common::eventually(
        common::TIMEOUT,
        "each topic on its write cluster only",
        async || on_each(std::slice::from_ref(&on_old), std::slice::from_ref(&on_new)),
    )
    .await;

    // One DeleteTopics request naming both.
    let deleted = admin
        .delete_topics(&names, &options())
        .await
        .expect("DeleteTopics");
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
    common::eventually(
        common::TIMEOUT,
        "both topics to be deleted everywhere",
        async || on_each(&[], &[]),
    )
    .await;
    drop(admin);
    kshift.shutdown().await;
}
