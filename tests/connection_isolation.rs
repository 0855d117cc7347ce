//! One client's long-poll fetch must never delay another client's produce (DESIGN.md, "one
//! connection, one request at a time"): kshift gives each client connection its own
//! upstream connections, so a broker holding one client's Fetch for `max_wait_ms` does not
//! hold anybody else's requests.

mod common;
mod raw;

use std::time::Duration;

use common::encode::RecordBatch;
use common::{Broker, Kshift};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use raw::{produce_request, RawClient};

const LONG_POLL_MS: i32 = 8_000;

fn long_poll(topic: &str) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(LONG_POLL_MS)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_fetch_does_not_delay_another_clients_produce() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let topic = common::unique_topic("isolation");

    let mut consumer = RawClient::connect(kshift.addr()).await;
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.clone()))))]))
        .with_allow_auto_topic_creation(true);
    consumer.send(ApiKey::Metadata, 9, 1, &metadata).await;
    let created: MetadataResponse = consumer.receive(ApiKey::Metadata, 9, 1).await;
    assert_eq!(created.topics[0].error_code, 0);

    // The consumer parks a fetch on the empty partition; give it time to reach the broker.
    consumer
        .send(ApiKey::Fetch, 11, 2, &long_poll(&topic))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut producer = RawClient::connect(kshift.addr()).await;
    producer
        .send(
            ApiKey::Produce,
            7,
            1,
            &produce_request(&topic, 1, RecordBatch::new(3).encode()),
        )
        .await;

    // Whichever answer comes first tells whether the produce waited behind the fetch.
    let fetch_answer = consumer.receive::<FetchResponse>(ApiKey::Fetch, 11, 2);
    tokio::pin!(fetch_answer);
    let produce_answer = producer.receive::<ProduceResponse>(ApiKey::Produce, 7, 1);
    tokio::select! {
        biased;
        produced = produce_answer => {
            let partition = &produced.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, 0);
            assert_eq!(partition.base_offset, 0);
        }
        fetched = &mut fetch_answer => {
            let records = fetched.responses[0].partitions[0].records.clone().unwrap_or_default();
            panic!(
                "the long-poll fetch ({} record bytes) was answered before the other client's produce",
                records.len()
            );
        }
    }
    // The parked fetch completes too: with the new records, or empty after max_wait_ms.
    let fetched = fetch_answer.await;
    assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
}
