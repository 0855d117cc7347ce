//! Mutation smoke test of everything kshift decodes from the network: valid requests and
//! record batches, corrupted at random (flipped bytes, truncation, huge lengths and counts),
//! must be refused with an error — never a panic, never a giant allocation (an abort
//! would kill this test process). Deterministic: a fixed-seed PRNG, so a failure
//! reproduces. A complement to coverage-guided fuzzing, runnable on stable Rust in CI.

mod common;

use bytes::Bytes;
use common::encode::{self, RecordBatch};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kshift::codec::batch::split_batches;
use kshift::codec::Request;

/// xorshift64*: small, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = 0xff,
            2 => bytes.truncate(at),
            3 => {
                // A huge (or negative) 32-bit length or count.
                let end = (at + 4).min(bytes.len());
                for b in &mut bytes[at..end] {
                    *b = if rng.below(2) == 0 { 0x7f } else { 0xff };
                }
            }
            _ => bytes.insert(at, rng.next() as u8),
        }
    }
    bytes
}

fn frame<M: Encodable>(api_key: ApiKey, version: i16, message: &M) -> Bytes {
    encode::request(api_key, version, 7, "fuzz", message).freeze()
}

/// Five records with keys, 50-byte values and a header, from idempotent producer 1.
fn batch(compression: Compression) -> Bytes {
    RecordBatch::new(5)
        .partition_leader_epoch(0)
        .producer(1, 0)
        .values_of(b'v', 50)
        .header("h", b"x")
        .compression(compression)
        .encode()
}

/// Decodes a frame the way kshift does: header, then the body as its api's message.
fn decode_like_kshift(bytes: Vec<u8>) {
    let Ok(request) = Request::parse(Bytes::from(bytes)) else {
        return;
    };
    match request.api_key {
        ApiKey::Produce => {
            if let Ok(produce) = request.decode::<ProduceRequest>() {
                for topic in produce.topic_data {
                    for partition in topic.partition_data {
                        if let Some(records) = partition.records {
                            let _ = split_batches(records);
                        }
                    }
                }
            }
        }
        ApiKey::Fetch => drop(request.decode::<FetchRequest>()),
        ApiKey::Metadata => drop(request.decode::<MetadataRequest>()),
        ApiKey::JoinGroup => drop(request.decode::<JoinGroupRequest>()),
        ApiKey::FindCoordinator => drop(request.decode::<FindCoordinatorRequest>()),
        ApiKey::ListOffsets => drop(request.decode::<ListOffsetsRequest>()),
        _ => {}
    }
}

#[test]
fn corrupted_requests_are_refused_without_panicking() {
    let produce = encode::produce_request("orders", 0, -1, 1000, batch(Compression::None));
    let fetch = FetchRequest::default().with_topics(vec![FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_static_str("orders")))
        .with_partitions(vec![
            FetchPartition::default().with_partition_max_bytes(1024)
        ])]);
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))]));
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("group")))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(b"\0\0\0\0"))]);
    let find = FindCoordinatorRequest::default()
        .with_coordinator_keys(vec![StrBytes::from_static_str("g")]);
    let seeds = [
        frame(ApiKey::Produce, 3, &produce),
        frame(ApiKey::Produce, 9, &produce),
        frame(ApiKey::Fetch, 4, &fetch),
        frame(ApiKey::Fetch, 12, &fetch),
        frame(ApiKey::Metadata, 1, &metadata),
        frame(ApiKey::Metadata, 12, &metadata),
        frame(ApiKey::JoinGroup, 9, &join),
        frame(ApiKey::FindCoordinator, 4, &find),
        frame(ApiKey::ListOffsets, 7, &ListOffsetsRequest::default()),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in &seeds {
        decode_like_kshift(seed.to_vec());
        for _ in 0..20_000 {
            decode_like_kshift(mutate(&mut rng, seed));
        }
    }
}

#[test]
fn corrupted_record_batches_are_refused_without_panicking() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let seed = batch(compression);
        for _ in 0..5_000 {
            let bytes = Bytes::from(mutate(&mut rng, &seed));
            if let Ok(batches) = split_batches(bytes.clone()) {
                for batch in &batches {
                    let _ = batch.crc_is_valid();
                    let _ = batch.for_mirror(1, 0, 0);
                }
            }
            // What the mirror does for murmur2 / mirror_percent: decode the records.
            let mut buf = bytes;
            let _ = RecordBatchDecoder::decode(&mut buf);
        }
    }
}

/// Found by `scripts/fuzz.sh` (record_batches): a batch whose record count says 2^28 made the
/// record decoder (what the mirror runs for murmur2 / `mirror_percent`) reserve 35 GB and
/// abort the process. Now refused with an error.
#[test]
fn fuzz_regression_a_huge_record_count_does_not_abort() {
    let input = Bytes::from_static(include_bytes!(
        "fuzz_regressions/record_batch_huge_record_count.bin"
    ));
    if let Ok(batches) = split_batches(input.clone()) {
        for batch in &batches {
            let mut bytes = batch.bytes().clone();
            let _ = RecordBatchDecoder::decode(&mut bytes);
        }
    }
    let mut whole = input;
    let _ = RecordBatchDecoder::decode(&mut whole);
}
