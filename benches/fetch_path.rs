//! The read path's per-fetch work in kshift: decode a broker's Fetch answer, clear what
//! belongs to the backend, note each partition's read position (for read cutover), merge into
//! the client's answer and encode it. Records stay `Bytes` (never copied), so the cost should
//! not grow with record bytes, only with partitions.
//!
//! `cargo bench --bench fetch_path`.

#[path = "../tests/common/encode.rs"]
mod encode;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use encode::RecordBatch;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchResponse, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kshift::codec::batch::next_offset;
use kshift::codec::{decode_body, encode_body};
use kshift::handlers::fetch::positions::ReadPositions;
use kshift::handlers::fetch::{present_partition, push_fetch_partition};

const VERSION: i16 = 12;

/// A broker's answer: `partitions` partitions of one topic, each with one batch (of an
/// idempotent producer, id 7) of `records` records of `size` bytes at offsets 1000…
fn broker_answer(partitions: i32, records: usize, size: usize) -> Bytes {
    let records = RecordBatch::new(records)
        .base_offset(1000)
        .producer(7, 0)
        .values_of(b'x', size)
        .encode();
    let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("orders")))
        .with_partitions(
            (0..partitions)
                .map(|p| {
                    PartitionData::default()
                        .with_partition_index(p)
                        .with_high_watermark(2000)
                        .with_last_stable_offset(2000)
                        .with_records(Some(records.clone()))
                })
                .collect(),
        )]);
    let mut buf = BytesMut::new();
    response.encode(&mut buf, VERSION).unwrap();
    buf.freeze()
}

fn fetch_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("fetch/merge");
    for (partitions, records, size) in
        [(1, 10, 100), (100, 10, 100), (10, 16, 1024), (10, 1, 16384)]
    {
        let body = broker_answer(partitions, records, size);
        let positions = ReadPositions::default();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{partitions}p x {records} x {size}B")),
            &body,
            |b, body| {
                b.iter(|| {
                    let response: FetchResponse =
                        decode_body(body.clone(), VERSION, "fetch response").unwrap();
                    let mut merged = FetchResponse::default();
                    for topic in response.responses {
                        let name = topic.topic.0.clone();
                        for mut partition in topic.partitions {
                            positions.check(&name, partition.partition_index, 1000, 0);
                            if let Some(next) = partition.records.as_deref().and_then(next_offset) {
                                positions.served(&name, partition.partition_index, 0, next);
                            }
                            present_partition(&mut partition);
                            push_fetch_partition(&mut merged, &name, partition);
                        }
                    }
                    encode_body(&merged, VERSION).unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fetch_merge);
criterion_main!(benches);
