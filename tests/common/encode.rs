//! Kafka bytes for tests and benches, encoded with `kafka-protocol` (never with kshift's own
//! codec, so that a test does not check kshift against itself): the one record-batch builder,
//! request frames and a one-batch Produce request.
//!
//! Depends on `bytes` and `kafka-protocol` only, so the criterion benches include it by
//! `#[path]` as well as the tests (through `tests/common`); each uses a part of it, hence the
//! module-wide `dead_code` allow.
#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The timestamp of a batch's first record unless [`RecordBatch::timestamps_apart`] says
/// otherwise: 2023-11-14, fixed so that encoded batches are the same in every run.
pub const TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// What every record's value is.
#[derive(Clone, Copy, Debug)]
enum Values {
    /// `value-{i}`.
    Numbered,
    /// `len` copies of `byte`.
    Filled { byte: u8, len: usize },
}

/// A v2 record batch, built up from [`RecordBatch::new`]'s defaults and encoded by
/// [`RecordBatch::encode`].
#[derive(Clone, Debug)]
pub struct RecordBatch {
    records: usize,
    base_offset: i64,
    /// Producer id and epoch; a negative id is none, and the records have no sequences.
    producer: (i64, i16),
    partition_leader_epoch: i32,
    /// Every `keyed_every`-th record (from the first) has its key `key-{i}`; the others none.
    keyed_every: usize,
    values: Values,
    header: Option<(&'static str, &'static [u8])>,
    compression: Compression,
    /// Milliseconds between consecutive records' timestamps.
    timestamp_step_ms: i64,
}

impl RecordBatch {
    /// `records` records `key-{i}`/`value-{i}` at offsets 0.., without a producer id (as a
    /// non-idempotent client writes them), uncompressed, all at [`TIMESTAMP_MS`].
    pub fn new(records: usize) -> RecordBatch {
        RecordBatch {
            records,
            base_offset: 0,
            producer: (-1, -1),
            partition_leader_epoch: -1,
            keyed_every: 1,
            values: Values::Numbered,
            header: None,
            compression: Compression::None,
            timestamp_step_ms: 0,
        }
    }

    /// The first record at `offset` (a broker's answer), not 0 (a client's request).
    pub fn base_offset(mut self, offset: i64) -> RecordBatch {
        self.base_offset = offset;
        self
    }

    /// As idempotent producer `id` at `epoch` writes it: sequences 0, 1, … (a negative `id`
    /// is no producer: sequences -1).
    pub fn producer(mut self, id: i64, epoch: i16) -> RecordBatch {
        self.producer = (id, epoch);
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> RecordBatch {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Only every `n`-th record has a key (records 0, n, 2n, …); the others have none.
    pub fn keyed_every(mut self, n: usize) -> RecordBatch {
        self.keyed_every = n.max(1);
        self
    }

    /// Every value is `len` copies of `byte` instead of `value-{i}`.
    pub fn values_of(mut self, byte: u8, len: usize) -> RecordBatch {
        self.values = Values::Filled { byte, len };
        self
    }

    /// Every record carries the header `key` = `value`.
    pub fn header(mut self, key: &'static str, value: &'static [u8]) -> RecordBatch {
        self.header = Some((key, value));
        self
    }

    pub fn compression(mut self, compression: Compression) -> RecordBatch {
        self.compression = compression;
        self
    }

    /// Record `i` is stamped [`TIMESTAMP_MS`] + `i * step_ms`.
    pub fn timestamps_apart(mut self, step_ms: i64) -> RecordBatch {
        self.timestamp_step_ms = step_ms;
        self
    }

    /// The batch's bytes, as they stand in a Produce request's or a Fetch answer's records.
    pub fn encode(&self) -> Bytes {
        let records: Vec<Record> = (0..self.records)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: self.partition_leader_epoch,
                producer_id: self.producer.0,
                producer_epoch: self.producer.1,
                timestamp_type: TimestampType::Creation,
                offset: self.base_offset + i as i64,
                sequence: if self.producer.0 < 0 { -1 } else { i as i32 },
                timestamp: TIMESTAMP_MS + i as i64 * self.timestamp_step_ms,
                key: (i % self.keyed_every == 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(match self.values {
                    Values::Numbered => Bytes::from(format!("value-{i}")),
                    Values::Filled { byte, len } => Bytes::from(vec![byte; len]),
                }),
                headers: self
                    .header
                    .iter()
                    .map(|(key, value)| {
                        (
                            StrBytes::from_static_str(key),
                            Some(Bytes::from_static(value)),
                        )
                    })
                    .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: self.compression,
            },
        )
        .expect("encode the record batch");
        buf.freeze()
    }
}

/// A request frame without its length prefix: the header of `api_key` v`version` (client id
/// `client_id`), then `body`.
pub fn request_frame(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
    body: &[u8],
) -> BytesMut {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut frame = BytesMut::new();
    header
        .encode(&mut frame, api_key.request_header_version(version))
        .expect("encode the request header");
    frame.extend_from_slice(body);
    frame
}

/// `message` encoded as the body of `api_key` v`version`, under its header
/// ([`request_frame`]).
pub fn request<M: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
    message: &M,
) -> BytesMut {
    let mut body = BytesMut::new();
    message
        .encode(&mut body, version)
        .expect("encode the request body");
    request_frame(api_key, version, correlation_id, client_id, &body)
}

/// `frame` with the 4-byte length in front, as it goes on the wire.
pub fn length_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = BytesMut::with_capacity(4 + frame.len());
    bytes.put_i32(frame.len() as i32);
    bytes.extend_from_slice(frame);
    bytes.to_vec()
}

/// A Produce request of one batch, `records`, to partition `partition` of `topic`.
pub fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    timeout_ms: i32,
    records: Bytes,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}
