//! The virtual cluster's hot paths: request header parsing and response framing (every
//! request), and Metadata synthesis for a topic with 10,000 partitions (leaders mapped to
//! virtual nodes, epochs hidden) including encoding the answer.
//!
//! `cargo bench --bench virtual_cluster`.

#[path = "../tests/common/encode.rs"]
mod encode;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use kafka_protocol::messages::metadata_response::{
    MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataResponse, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kshift::codec::{response_frame_head, Request};
use kshift::handlers::virtual_cluster::present_topic;

/// A Produce v9 request header followed by a 200-byte body (never decoded here).
fn request_frame() -> Bytes {
    encode::request_frame(ApiKey::Produce, 9, 42, "producer-1", &[0u8; 200]).freeze()
}

fn backend_topic(partitions: i32) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
        .with_partitions(
            (0..partitions)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(p % 7))
                        .with_leader_epoch(12)
                        .with_replica_nodes(vec![
                            BrokerId(p % 7),
                            BrokerId((p + 1) % 7),
                            BrokerId((p + 2) % 7),
                        ])
                        .with_isr_nodes(vec![BrokerId(p % 7), BrokerId((p + 1) % 7)])
                })
                .collect(),
        )
}

/// Broker `b` of the bench's cluster as virtual node `1_000_000 + b`.
fn virtual_leader(partition: &MetadataResponsePartition) -> Option<BrokerId> {
    Some(BrokerId(1_000_000 + partition.leader_id.0))
}

fn codec(c: &mut Criterion) {
    let frame = request_frame();
    c.bench_function("codec/parse_request_header", |b| {
        b.iter(|| Request::parse(frame.clone()).unwrap().correlation_id)
    });
    c.bench_function("codec/response_frame_head", |b| {
        b.iter(|| response_frame_head(ApiKey::Fetch, 12, 42, 1024).unwrap())
    });
}

fn metadata(c: &mut Criterion) {
    let backend = backend_topic(10_000);
    c.bench_function("metadata/present_topic_10000_partitions", |b| {
        b.iter(|| present_topic("orders", &backend, virtual_leader))
    });
    c.bench_function("metadata/present_and_encode_10000_partitions", |b| {
        b.iter(|| {
            let response = MetadataResponse::default().with_topics(vec![present_topic(
                "orders",
                &backend,
                virtual_leader,
            )]);
            let mut buf = BytesMut::new();
            response.encode(&mut buf, 12).unwrap();
            buf.len()
        })
    });
}

criterion_group!(benches, codec, metadata);
criterion_main!(benches);
