//! A backend whose Produce answer kshift cannot decode is the backend's failure, not the
//! client's: the client gets a retriable error code for its partitions and keeps its
//! connection (it used to be closed as if the client had sent something malformed).
//! The backend is a fake broker that answers ApiVersions and Metadata properly and a
//! Produce with bytes that are no Produce response.

mod common;
mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, MetadataResponse, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::encode::RecordBatch;
use raw::{produce_request, RawClient};

const TOPIC: &str = "orders";

/// Serves one connection: real answers to ApiVersions and Metadata, garbage to Produce.
async fn serve(mut stream: TcpStream, address: SocketAddr) {
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(prefix) as usize];
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        let mut frame = Bytes::from(frame);
        let api_key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).expect("api key");
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
            .expect("request header");
        let mut body = BytesMut::new();
        match api_key {
            ApiKey::ApiVersions => ApiVersionsResponse::default()
                .with_api_keys(
                    [
                        (ApiKey::Produce, 3, 9),
                        (ApiKey::Metadata, 0, 12),
                        (ApiKey::ApiVersions, 0, 3),
                    ]
                    .into_iter()
                    .map(|(key, min, max)| {
                        ApiVersion::default()
                            .with_api_key(key as i16)
                            .with_min_version(min)
                            .with_max_version(max)
                    })
                    .collect(),
                )
                .encode(&mut body, version)
                .expect("encode"),
            ApiKey::Metadata => MetadataResponse::default()
                .with_brokers(vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_string(address.ip().to_string()))
                    .with_port(i32::from(address.port()))])
                .with_controller_id(BrokerId(1))
                .with_topics(vec![MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))
                    .with_partitions(vec![MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(1))
                        .with_replica_nodes(vec![BrokerId(1)])
                        .with_isr_nodes(vec![BrokerId(1)])])])
                .encode(&mut body, version)
                .expect("encode"),
            // Four bytes announcing a topic array of two billion entries: no Produce response.
            ApiKey::Produce => body.put_slice(&[0x7f, 0xff, 0xff, 0xff]),
            other => panic!("the fake broker got {other:?}"),
        }
        let mut head = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut head, api_key.response_header_version(version))
            .expect("encode header");
        let mut out = BytesMut::new();
        out.put_i32((head.len() + body.len()) as i32);
        out.put_slice(&head);
        out.put_slice(&body);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn start_fake_broker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, address));
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_produce_answer_is_a_retriable_error_and_the_client_stays_connected() {
    let broker = start_fake_broker().await;
    let config = kshift::config::Config::parse(&format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[clusters.old]
bootstrap = ["{broker}"]

[[routes]]
topics = "*"
write = "old"
read = "old"
"#
    ))
    .expect("config");
    let proxy = kshift::Proxy::start(config).await.expect("kshift starts");
    let mut client = RawClient::connect(proxy.local_addr()).await;

    for correlation_id in [1, 2] {
        client
            .send(
                ApiKey::Produce,
                7,
                correlation_id,
                &produce_request(TOPIC, 1, RecordBatch::new(3).encode()),
            )
            .await;
        let response: ProduceResponse = client.receive(ApiKey::Produce, 7, correlation_id).await;
        let partition = &response.responses[0].partition_responses[0];
        let error = ResponseError::try_from_code(partition.error_code)
            .expect("the partition carries an error");
        assert!(
            error.is_retriable(),
            "the client is told to retry, got {error:?}"
        );
    }
    // The same connection still serves requests.
    client
        .send(ApiKey::ApiVersions, 3, 3, &ApiVersionsRequest::default())
        .await;
    let versions: ApiVersionsResponse = client.receive(ApiKey::ApiVersions, 3, 3).await;
    assert_eq!(versions.error_code, 0);
    // Both failures are counted as the backend's, naming the cluster, retriable.
    let metrics = kshift::control::admin::metrics_text(proxy.control());
    let counted = r#"kshift_request_failures_total{api="Produce",source="backend",cluster="old",retriable="true"} 2"#;
    assert!(
        metrics.contains(counted),
        "{counted} missing from:\n{metrics}"
    );
    assert!(!metrics.contains(r#"source="client""#), "{metrics}");
    proxy.shutdown().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}
