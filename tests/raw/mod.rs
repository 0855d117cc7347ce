//! A raw Kafka client for tests that must control every byte: encodes requests with
//! `kafka-protocol` (`common::encode`), reads responses frame by frame, and tells a closed
//! connection apart from a silent one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::encode;

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
        let frame = encode::request(api_key, version, correlation_id, "raw-test", message);
        self.send_bytes(&encode::length_prefixed(&frame)).await;
    }

    /// Sends an already-encoded body under a proper header.
    pub async fn send_body(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &[u8],
    ) {
        let frame = encode::request_frame(api_key, version, correlation_id, "raw-test", body);
        self.send_bytes(&encode::length_prefixed(&frame)).await;
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

    /// Sends `message` as request `api_key` v`version` on a new connection to `address`
    /// and returns its decoded answer.
    pub async fn ask<M: Encodable, R: Decodable>(
        address: SocketAddr,
        api_key: ApiKey,
        version: i16,
        message: &M,
    ) -> R {
        let mut client = RawClient::connect(address).await;
        client.send(api_key, version, 1, message).await;
        client.receive(api_key, version, 1).await
    }

    /// Asserts that kshift closed this connection (and sent nothing first).
    pub async fn assert_closed(&mut self) {
        match self.read(Duration::from_secs(10)).await {
            Read::Closed => {}
            other => panic!("expected kshift to close the connection, got {other:?}"),
        }
    }
}

/// A Produce request (10 s timeout) of one batch to `topic` partition 0.
pub fn produce_request(topic: &str, acks: i16, batch: Bytes) -> ProduceRequest {
    encode::produce_request(topic, 0, acks, 10_000, batch)
}
