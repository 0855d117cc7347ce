//! A raw Kafka client for tests that must control every byte: encodes requests with
//! `kafka-protocol`, reads responses frame by frame, and tells a closed connection apart
//! from a silent one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawClient {
    stream: TcpStream,
}

/// What reading the next response gave.
#[derive(Debug)]
pub enum Read {
    Frame(Bytes),
    Closed,
    Silent,
}

impl RawClient {
    pub async fn connect(address: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(address)
                .await
                .expect("connect to kshift"),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The peer may already have closed; the test then sees it on read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends `message` as request `api_key` v`version` with `correlation_id`.
    pub async fn send<M: Encodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        message: &M,
    ) {
        let mut body = BytesMut::new();
        message.encode(&mut body, version).expect("encode request");
        self.send_body(api_key, version, correlation_id, &body)
            .await;
    }

    /// Sends an already-encoded body under a proper header.
    pub async fn send_body(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &[u8],
    ) {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .expect("encode header");
        frame.extend_from_slice(body);
        let mut bytes = BytesMut::new();
        bytes.put_i32(frame.len() as i32);
        bytes.extend_from_slice(&frame);
        self.send_bytes(&bytes).await;
    }

    /// The next response frame (correlation id first), or how the connection ended.
    pub async fn read(&mut self, timeout: Duration) -> Read {
        let read = async {
            let mut prefix = [0u8; 4];
            if self.stream.read_exact(&mut prefix).await.is_err() {
                return Read::Closed;
            }
            let mut frame = vec![0u8; i32::from_be_bytes(prefix) as usize];
            if self.stream.read_exact(&mut frame).await.is_err() {
                return Read::Closed;
            }
            Read::Frame(Bytes::from(frame))
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Read::Silent)
    }

    /// Reads the response to `api_key` v`version`, checks its correlation id, decodes it.
    pub async fn receive<M: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> M {
        let frame = match self.read(Duration::from_secs(15)).await {
            Read::Frame(frame) => frame,
            other => panic!("expected a response to {api_key:?}, got {other:?}"),
        };
        let mut body = frame;
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
            .expect("response header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "responses out of order"
        );
        M::decode(&mut body, version).expect("decode response")
    }

    /// Asserts that kshift closed this connection (and sent nothing first).
    pub async fn assert_closed(&mut self) {
        match self.read(Duration::from_secs(10)).await {
            Read::Closed => {}
            other => panic!("expected kshift to close the connection, got {other:?}"),
        }
    }
}

/// A v2 record batch of `count` records `key-i`/`value-i`.
pub fn record_batch(count: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode records");
    buf.freeze()
}

/// A Produce request of one batch to `topic` partition 0.
pub fn produce_request(topic: &str, acks: i16, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])])
}
