//! Writes the fuzzing seed corpus (`fuzz/corpus/<target>/`): real frames encoded with
//! kafka-protocol at the versions clients send, so libFuzzer starts from valid input.
//! `#[ignore]`d: `scripts/fuzz.sh` runs it (`cargo test --test fuzz_seeds -- --ignored`).

mod common;

use std::path::Path;

use bytes::{Bytes, BytesMut};
use common::encode::{self, RecordBatch};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;

fn name(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn request<M: Encodable>(api_key: ApiKey, version: i16, message: &M) -> Vec<u8> {
    encode::request(api_key, version, 7, "seed", message).to_vec()
}

fn response<M: Encodable>(api_key: ApiKey, version: i16, message: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(api_key as i16).to_be_bytes());
    buf.extend_from_slice(&version.to_be_bytes());
    message.encode(&mut buf, version).expect("response encodes");
    buf.to_vec()
}

/// Five records (keys on every other one, timestamps a millisecond apart, a header) from
/// producer `producer_id` (-1: none).
fn batch(compression: Compression, producer_id: i64) -> Bytes {
    RecordBatch::new(5)
        .partition_leader_epoch(0)
        .producer(producer_id, 0)
        .timestamps_apart(1)
        .keyed_every(2)
        .values_of(b'v', 40)
        .header("h", b"x")
        .compression(compression)
        .encode()
}

fn write(target: &str, seeds: Vec<(String, Vec<u8>)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (seed_name, bytes) in seeds {
        std::fs::write(dir.join(seed_name), bytes).expect("write seed");
    }
}

#[test]
#[ignore = "writes fuzz/corpus; scripts/fuzz.sh runs it"]
fn write_fuzz_seed_corpus() {
    let compressions = [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    let mut records = Vec::new();
    for (label, compression) in compressions {
        records.push((format!("batch-{label}"), batch(compression, 1000).to_vec()));
    }
    let mut two = batch(Compression::None, -1).to_vec();
    two.extend_from_slice(&batch(Compression::Lz4, -1));
    records.push(("two-batches".into(), two));
    write("record_batches", records);

    let topic = TopicName(name("orders"));
    let produce = encode::produce_request("orders", 0, -1, 1000, batch(Compression::Zstd, 1000));
    let fetch = FetchRequest::default()
        .with_max_wait_ms(500)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic.clone())
            .with_partitions(vec![
                FetchPartition::default().with_partition_max_bytes(1 << 20)
            ])]);
    let metadata = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic.clone())),
    ]));
    let find_one = FindCoordinatorRequest::default().with_key(name("group"));
    let find_batched = FindCoordinatorRequest::default().with_coordinator_keys(vec![name("group")]);
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(name("group")))
        .with_session_timeout_ms(6000)
        .with_protocol_type(name("consumer"));
    let commit = OffsetCommitRequest::default().with_group_id(GroupId(name("group")));
    let mut requests = vec![
        ("produce-v3".into(), request(ApiKey::Produce, 3, &produce)),
        ("produce-v9".into(), request(ApiKey::Produce, 9, &produce)),
        ("fetch-v4".into(), request(ApiKey::Fetch, 4, &fetch)),
        ("fetch-v12".into(), request(ApiKey::Fetch, 12, &fetch)),
        (
            "metadata-v1".into(),
            request(ApiKey::Metadata, 1, &metadata),
        ),
        (
            "metadata-v12".into(),
            request(ApiKey::Metadata, 12, &metadata),
        ),
        (
            "find-coordinator-v2".into(),
            request(ApiKey::FindCoordinator, 2, &find_one),
        ),
        (
            "find-coordinator-v4".into(),
            request(ApiKey::FindCoordinator, 4, &find_batched),
        ),
        ("join-group-v9".into(), request(ApiKey::JoinGroup, 9, &join)),
        (
            "offset-commit-v8".into(),
            request(ApiKey::OffsetCommit, 8, &commit),
        ),
        (
            "list-offsets-v7".into(),
            request(ApiKey::ListOffsets, 7, &ListOffsetsRequest::default()),
        ),
        (
            "init-producer-id-v4".into(),
            request(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default()),
        ),
    ];
    requests.push((
        "api-versions-v3".into(),
        request(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(name("librdkafka"))
                .with_client_software_version(name("2.12.0")),
        ),
    ));
    write("request_frame", requests);

    let fetch_response =
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(topic.clone())
            .with_partitions(vec![PartitionData::default()
                .with_high_watermark(5)
                .with_records(Some(batch(Compression::Snappy, 1000)))])]);
    let metadata_response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(111))
            .with_host(name("127.0.0.1"))
            .with_port(9092)])
        .with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(topic))
            .with_partitions(vec![
                MetadataResponsePartition::default().with_leader_id(BrokerId(111))
            ])]);
    let responses = vec![
        (
            "fetch-v4".into(),
            response(ApiKey::Fetch, 4, &fetch_response),
        ),
        (
            "fetch-v12".into(),
            response(ApiKey::Fetch, 12, &fetch_response),
        ),
        (
            "metadata-v1".into(),
            response(ApiKey::Metadata, 1, &metadata_response),
        ),
        (
            "metadata-v12".into(),
            response(ApiKey::Metadata, 12, &metadata_response),
        ),
        (
            "produce-v9".into(),
            response(ApiKey::Produce, 9, &ProduceResponse::default()),
        ),
        (
            "api-versions-v3".into(),
            response(ApiKey::ApiVersions, 3, &ApiVersionsResponse::default()),
        ),
        (
            "find-coordinator-v4".into(),
            response(
                ApiKey::FindCoordinator,
                4,
                &FindCoordinatorResponse::default(),
            ),
        ),
        (
            "find-coordinator-v1".into(),
            response(
                ApiKey::FindCoordinator,
                1,
                &FindCoordinatorResponse::default(),
            ),
        ),
        (
            "init-producer-id-v4".into(),
            response(
                ApiKey::InitProducerId,
                4,
                &InitProducerIdResponse::default(),
            ),
        ),
        (
            "list-offsets-v7".into(),
            response(ApiKey::ListOffsets, 7, &ListOffsetsResponse::default()),
        ),
    ];
    write("response_body", responses);
}
