//! Produce and fetch through kshift with one backend cluster: every acks level, keyed and
//! unkeyed records, every compression codec, headers and null values round-trip exactly; keyed
//! records keep their partition; Metadata shows kshift as the only broker.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Broker, Kshift, Received};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};

const RECORDS: usize = 30;

/// The records every round trip sends: headers (one with a null value), and with `keyed` a key
/// per record; record 7 has a null value (a tombstone), the rest a value larger than a line.
fn expected_records(keyed: bool) -> Vec<Received> {
    (0..RECORDS)
        .map(|i| Received {
            partition: 0,
            offset: i as i64,
            key: keyed.then(|| format!("key-{i}").into_bytes()),
            value: (i != 7).then(|| format!("value-{i}-{}", "x".repeat(200 + i)).into_bytes()),
            headers: vec![
                ("index".to_string(), Some(i.to_string().into_bytes())),
                ("empty".to_string(), None),
            ],
        })
        .collect()
}

fn future_record<'a>(
    topic: &'a str,
    expected: &'a Received,
    header_values: &'a [String],
) -> FutureRecord<'a, str, str> {
    let index = expected.offset as usize;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "index",
            value: Some(header_values[index].as_str()),
        })
        .insert(Header::<&str> {
            key: "empty",
            value: None,
        });
    let mut record = FutureRecord::to(topic).partition(0).headers(headers);
    if let Some(key) = &expected.key {
        record = record.key(std::str::from_utf8(key).expect("utf-8 key"));
    }
    if let Some(value) = &expected.value {
        record = record.payload(std::str::from_utf8(value).expect("utf-8 value"));
    }
    record
}

/// Sends the records of `expected_records(keyed)` through kshift in three flushed rounds (so the
/// partition gets several batches) with `producer_settings`, then reads them back through kshift
/// from the beginning and compares everything the client can see.
async fn round_trip(producer_settings: &[(&str, &str)], keyed: bool) {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("round-trip");
    common::create_topic(&kshift.bootstrap(), &topic, 1).await;

    let expected = expected_records(keyed);
    let header_values: Vec<String> = (0..RECORDS).map(|i| i.to_string()).collect();
    let producer = common::producer(&kshift.bootstrap(), producer_settings);
    let acks_0 = producer_settings.contains(&("acks", "0"));
    for round in expected.chunks(RECORDS / 3) {
        let records = round
            .iter()
            .map(|record| future_record(&topic, record, &header_values))
            .collect();
        let delivered = common::send_all(&producer, records).await;
        for (delivery, record) in delivered.iter().zip(round) {
            assert_eq!(delivery.partition, 0);
            if acks_0 {
                // No response comes back, so the client cannot know the offset (librdkafka
                // reports RD_KAFKA_OFFSET_INVALID, -1001).
                assert!(
                    delivery.offset < 0,
                    "acks=0 delivery has offset {}",
                    delivery.offset
                );
            } else {
                assert_eq!(delivery.offset, record.offset, "delivery report offset");
            }
        }
        producer.flush(common::TIMEOUT).expect("flush");
    }
    // The producer's connection must still be in step after acks=0 produces (an answer to an
    // acks=0 Produce would be taken as the answer to this request).
    let metadata = producer
        .client()
        .fetch_metadata(Some(&topic), common::TIMEOUT)
        .expect("metadata after producing");
    assert_eq!(metadata.topics()[0].name(), topic);

    let consumer = common::assigned_consumer(&kshift.bootstrap(), &topic, 1, &[]);
    let received = common::consume_n(&consumer, RECORDS, common::TIMEOUT).await;
    assert_eq!(received, expected);
    drop(consumer);
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_0_records_arrive() {
    round_trip(&[("acks", "0")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_records_round_trip() {
    round_trip(&[("acks", "1")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_records_round_trip() {
    round_trip(&[("acks", "all")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_records_round_trip() {
    round_trip(&[("acks", "all")], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_batches_round_trip() {
    round_trip(&[("compression.type", "gzip")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_batches_round_trip() {
    round_trip(&[("compression.type", "snappy")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_batches_round_trip() {
    round_trip(&[("compression.type", "lz4")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_batches_round_trip() {
    round_trip(&[("compression.type", "zstd")], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_keep_their_partition() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("keyed");
    common::create_topic(&kshift.bootstrap(), &topic, 3).await;

    // Every key twice, in two separately flushed rounds.
    let keys: Vec<String> = (0..20).map(|i| format!("customer-{i}")).collect();
    let producer = common::producer(&kshift.bootstrap(), &[("partitioner", "murmur2_random")]);
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut sent: HashMap<(i32, i64), (String, String)> = HashMap::new();
    for round in 0..2 {
        let values: Vec<String> = keys.iter().map(|key| format!("{key}/{round}")).collect();
        let records = keys.iter().cloned().zip(values.iter().cloned());
        let delivered = common::send_keyed(&producer, &topic, records).await;
        for ((key, value), delivery) in keys.iter().zip(&values).zip(delivered) {
            let first = *partition_of_key
                .entry(key.clone())
                .or_insert(delivery.partition);
            assert_eq!(delivery.partition, first, "key {key} moved partition");
            sent.insert(
                (delivery.partition, delivery.offset),
                (key.clone(), value.clone()),
            );
        }
        producer.flush(common::TIMEOUT).expect("flush");
    }
    let used: BTreeSet<i32> = partition_of_key.values().copied().collect();
    assert!(used.len() > 1, "20 keys all hashed to {used:?}");

    let consumer = common::assigned_consumer(&kshift.bootstrap(), &topic, 3, &[]);
    let received = common::consume_n(&consumer, keys.len() * 2, common::TIMEOUT).await;
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for record in &received {
        let key = String::from_utf8(record.key.clone().expect("key")).expect("utf-8");
        let value = String::from_utf8(record.value.clone().expect("value")).expect("utf-8");
        assert_eq!(
            sent.get(&(record.partition, record.offset)),
            Some(&(key.clone(), value)),
            "record at {}/{} is not what was delivered there",
            record.partition,
            record.offset
        );
        assert_eq!(partition_of_key[&key], record.partition);
        let previous = last_offset.insert(record.partition, record.offset);
        assert!(previous.is_none_or(|previous| previous < record.offset));
    }
    drop(consumer);
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_shows_only_kshift() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("metadata");
    common::create_topic(&kshift.bootstrap(), &topic, 2).await;

    let consumer = common::consumer(&kshift.bootstrap(), &[]);
    for requested in [None, Some(topic.as_str())] {
        let metadata = consumer
            .fetch_metadata(requested, Duration::from_secs(10))
            .expect("metadata through kshift");
        let brokers: Vec<(i32, String, i32)> = metadata
            .brokers()
            .iter()
            .map(|b| (b.id(), b.host().to_string(), b.port()))
            .collect();
        assert_eq!(brokers.len(), 1, "brokers {brokers:?}");
        let (id, host, port) = brokers[0].clone();
        assert_eq!(host, kshift.addr().ip().to_string(), "brokers {brokers:?}");
        assert_eq!(port, i32::from(kshift.addr().port()), "brokers {brokers:?}");
        assert_ne!(port, i32::from(broker.port()), "the backend address leaked");
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .expect("topic in metadata");
        assert_eq!(found.partitions().len(), 2);
        for partition in found.partitions() {
            assert_eq!(partition.leader(), id, "partition {}", partition.id());
            assert_eq!(partition.replicas(), &[id]);
        }
    }
    drop(consumer);
    kshift.shutdown().await;
}
