//! The produce hot path, per request: decode the Produce request, match its topic against
//! the routing table, split the partition's records into batches and rewrite one for a
//! mirror (producer identity + CRC-32C), encode the request sent upstream.
//!
//! `cargo bench --bench produce_path` — compare the stages with each other in one run;
//! absolute figures depend on the machine.

#[path = "../tests/common/encode.rs"]
mod encode;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use encode::RecordBatch;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::protocol::{Decodable, Encodable};
use kshift::codec::batch::split_batches;
use kshift::routing::{RoutingSpec, RoutingTable};

/// One uncompressed batch of `records` keyed records of `value_bytes` bytes, as an idempotent
/// producer (id 7) writes it.
fn batch(records: usize, value_bytes: usize) -> Bytes {
    RecordBatch::new(records)
        .producer(7, 0)
        .values_of(b'x', value_bytes)
        .encode()
}

fn request_bytes(records: Bytes) -> Bytes {
    let request = encode::produce_request("orders.eu", 3, -1, 30_000, records);
    let mut buf = BytesMut::new();
    request.encode(&mut buf, 9).unwrap();
    buf.freeze()
}

fn table(rules: usize) -> RoutingTable {
    let mut text = String::new();
    for i in 0..rules {
        text.push_str(&format!(
            "[[routes]]\ntopics = \"service{i}.*\"\nwrite = \"old\"\nmirror = [\"new\"]\n"
        ));
    }
    text.push_str("[[routes]]\ntopics = \"orders.*\"\nwrite = \"old\"\nmirror = [\"new\"]\n");
    let spec: RoutingSpec = toml::from_str(&text).unwrap();
    RoutingTable::build(&spec, &["new".to_string(), "old".to_string()], 1).unwrap()
}

fn produce_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("produce_path");
    for (records, value_bytes) in [(1usize, 100usize), (100, 100), (10, 16 * 1024)] {
        let frame = request_bytes(batch(records, value_bytes));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        let label = format!("{records}x{value_bytes}B");
        let routes = table(10);
        group.bench_with_input(BenchmarkId::new("decode", &label), &frame, |b, frame| {
            b.iter(|| ProduceRequest::decode(&mut frame.clone(), 9).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("decode+route+rewrite+encode", &label),
            &frame,
            |b, frame| {
                b.iter(|| {
                    let request = ProduceRequest::decode(&mut frame.clone(), 9).unwrap();
                    let topic = &request.topic_data[0];
                    let route = routes.route(topic.name.0.as_str(), "client-1").unwrap();
                    let records = topic.partition_data[0].records.clone().unwrap();
                    let mirrored: Vec<Bytes> = split_batches(records)
                        .unwrap()
                        .iter()
                        .map(|batch| batch.for_mirror(1000, 0, 42))
                        .collect();
                    let mut upstream = BytesMut::new();
                    request.encode(&mut upstream, 9).unwrap();
                    (route.write, mirrored, upstream)
                })
            },
        );
    }
    group.finish();
}

fn routing_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    for rules in [10usize, 1000] {
        let routes = table(rules);
        group.bench_function(BenchmarkId::new("match_last_rule", rules), |b| {
            b.iter(|| routes.route("orders.eu", "client-1").unwrap().index)
        });
    }
    group.finish();
}

criterion_group!(benches, produce_path, routing_lookup);
criterion_main!(benches);
