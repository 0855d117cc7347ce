//! Bad input from a client: oversized, negative, truncated and garbage frames, unknown api
//! keys and versions, malformed bodies. Each gets the broker's behaviour (an error answer or
//! a closed connection) and kshift keeps serving every other client. Also: replies stay in
//! request order, acks=0 gets no reply, a dead backend gets a retriable error, not a hang.

mod common;
mod raw;

use std::time::Duration;

use common::encode::{self, RecordBatch};
use common::{Broker, Kshift};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use raw::{produce_request, RawClient, Read};

const FRAME_LIMIT: usize = 1024;

async fn start() -> (Broker, Kshift) {
    let broker = Broker::start().await;
    let toml = common::single_cluster_toml(&broker).replace(
        "[proxy]",
        &format!("[proxy]\nmax_frame_bytes = {FRAME_LIMIT}\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 5000"),
    );
    let kshift = Kshift::start_toml(&toml).await;
    (broker, kshift)
}

fn metadata_for(topic: &str, auto_create: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(auto_create)
}

/// A new topic (`prefix`-…) created by a Metadata request on a new connection to kshift
/// (correlation id 1), and that connection.
async fn auto_created_topic(kshift: &Kshift, prefix: &str) -> (String, RawClient) {
    let topic = common::unique_topic(prefix);
    let mut client = RawClient::connect(kshift.addr()).await;
    client
        .send(ApiKey::Metadata, 9, 1, &metadata_for(&topic, true))
        .await;
    let created: MetadataResponse = client.receive(ApiKey::Metadata, 9, 1).await;
    assert_eq!(
        created.topics[0].error_code, 0,
        "topic {topic} auto-created"
    );
    (topic, client)
}

/// The base offset of the one partition `produced` answers, which must have succeeded.
fn written_at(produced: &ProduceResponse) -> i64 {
    let partition = &produced.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0, "{partition:?}");
    partition.base_offset
}

/// A fresh connection still gets ApiVersions and Metadata answered.
async fn assert_serving(kshift: &Kshift) {
    let mut client = RawClient::connect(kshift.addr()).await;
    client
        .send(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default())
        .await;
    let versions: ApiVersionsResponse = client.receive(ApiKey::ApiVersions, 3, 1).await;
    assert_eq!(versions.error_code, 0);
    client
        .send(ApiKey::Metadata, 9, 2, &metadata_for("serving-check", true))
        .await;
    let metadata: MetadataResponse = client.receive(ApiKey::Metadata, 9, 2).await;
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(metadata.brokers[0].port, i32::from(kshift.addr().port()));
}

/// ApiVersions v0 padded so that the whole frame is `length` bytes.
fn padded_api_versions(length: usize) -> Vec<u8> {
    // Header v1: api key 18, version 0, correlation id 7, client id "x".
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b'x'];
    frame.resize(length, 0);
    let mut bytes = (length as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&frame);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_at_the_limit_is_served_and_one_byte_more_closes_only_that_connection() {
    let (_broker, kshift) = start().await;
    let mut at_limit = RawClient::connect(kshift.addr()).await;
    at_limit.send_bytes(&padded_api_versions(FRAME_LIMIT)).await;
    match at_limit.read(Duration::from_secs(10)).await {
        Read::Frame(frame) => assert_eq!(&frame[..4], &7i32.to_be_bytes()),
        other => panic!("frame at the limit not answered: {other:?}"),
    }

    let mut over = RawClient::connect(kshift.addr()).await;
    over.send_bytes(&padded_api_versions(FRAME_LIMIT + 1)).await;
    over.assert_closed().await;
    assert_serving(&kshift).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_negative_length_prefixes_close_the_connection() {
    let (_broker, kshift) = start().await;
    for prefix in [i32::MAX, -1, -2_000_000_000] {
        let mut client = RawClient::connect(kshift.addr()).await;
        client.send_bytes(&prefix.to_be_bytes()).await;
        client.assert_closed().await;
    }
    assert_serving(&kshift).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_do_not_disturb_other_clients() {
    let (_broker, kshift) = start().await;
    // Too short for a header.
    let mut short = RawClient::connect(kshift.addr()).await;
    short.send_bytes(&[0, 0, 0, 3, 1, 2, 3]).await;
    short.assert_closed().await;
    // A client id longer than the frame.
    let mut lying = RawClient::connect(kshift.addr()).await;
    lying
        .send_bytes(&[0, 0, 0, 11, 0, 3, 0, 1, 0, 0, 0, 1, 0x7f, 0xff, b'a'])
        .await;
    lying.assert_closed().await;
    // Both are counted as the client's failures.
    assert_counted(
        &kshift,
        r#"kshift_request_failures_total{api="unknown",source="client",cluster="",retriable="false"} 2"#,
    );
    // Half a frame, then the client goes away.
    let mut truncated = RawClient::connect(kshift.addr()).await;
    truncated.send_bytes(&[0, 0, 0, 100, 0, 3, 0, 1]).await;
    drop(truncated);
    assert_serving(&kshift).await;
}

/// Asserts that kshift's metrics have the line `line`.
fn assert_counted(kshift: &Kshift, line: &str) {
    let metrics = kshift::control::admin::metrics_text(kshift.control());
    assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_key_and_unsupported_version_close_the_connection() {
    let (_broker, kshift) = start().await;
    let mut unknown = RawClient::connect(kshift.addr()).await;
    // Api key 999 does not exist.
    unknown
        .send_bytes(&[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await;
    unknown.assert_closed().await;

    let mut too_new = RawClient::connect(kshift.addr()).await;
    too_new.send_body(ApiKey::Produce, 99, 1, &[]).await;
    too_new.assert_closed().await;

    send_unserved_and_see_it_closed(&kshift).await;
    assert_serving(&kshift).await;
}

/// OffsetForLeaderEpoch is deliberately not served (leader epochs are per cluster): kshift
/// closes the connection.
async fn send_unserved_and_see_it_closed(kshift: &Kshift) {
    let mut unserved = RawClient::connect(kshift.addr()).await;
    unserved
        .send_body(ApiKey::OffsetForLeaderEpoch, 3, 1, &[])
        .await;
    unserved.assert_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_newer_than_kshift_knows_gets_the_v0_error_answer() {
    let (_broker, kshift) = start().await;
    let mut client = RawClient::connect(kshift.addr()).await;
    client
        .send_body(ApiKey::ApiVersions, 99, 5, &[0, 0, 0])
        .await;
    // The answer is v0-shaped whatever version was asked.
    let response: ApiVersionsResponse = client.receive(ApiKey::ApiVersions, 0, 5).await;
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    let api_versions = response
        .api_keys
        .iter()
        .find(|v| v.api_key == ApiKey::ApiVersions as i16)
        .expect("ApiVersions range in the error answer");
    assert_eq!((api_versions.min_version, api_versions.max_version), (0, 4));
    // The connection stays usable: the client retries with a version from the answer.
    client
        .send(ApiKey::ApiVersions, 3, 6, &ApiVersionsRequest::default())
        .await;
    let retried: ApiVersionsResponse = client.receive(ApiKey::ApiVersions, 3, 6).await;
    assert_eq!(retried.error_code, 0);
    let advertised: Vec<i16> = retried.api_keys.iter().map(|v| v.api_key).collect();
    assert!(advertised.contains(&(ApiKey::Produce as i16)));
    assert!(!advertised.contains(&(ApiKey::OffsetForLeaderEpoch as i16)));
    let produce = retried.api_keys.iter().find(|v| v.api_key == 0).unwrap();
    assert!(
        produce.max_version <= 9,
        "Produce v10+ carries broker endpoints"
    );
    let fetch = retried.api_keys.iter().find(|v| v.api_key == 1).unwrap();
    assert!(fetch.max_version <= 12, "Fetch v13+ names topics by id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_announcing_two_billion_topics_is_refused_without_allocating() {
    let (_broker, kshift) = start().await;
    let mut client = RawClient::connect(kshift.addr()).await;
    // Produce v3: transactional id null, acks 1, timeout 1000, then a topic count of 2^31-1.
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0x03, 0xe8];
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    client.send_body(ApiKey::Produce, 3, 1, &body).await;
    client.assert_closed().await;
    assert_serving(&kshift).await;
    assert_counted(
        &kshift,
        r#"kshift_request_failures_total{api="Produce",source="client",cluster="",retriable="false"} 1"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_acks_zero_gets_no_answer() {
    let (_broker, kshift) = start().await;
    let (topic, mut client) = auto_created_topic(&kshift, "pipelined").await;

    // Sent back to back without reading: acks=0 produce, ApiVersions, acks=1 produce, Metadata.
    client
        .send(
            ApiKey::Produce,
            7,
            2,
            &produce_request(&topic, 0, RecordBatch::new(5).encode()),
        )
        .await;
    client
        .send(ApiKey::ApiVersions, 3, 3, &ApiVersionsRequest::default())
        .await;
    client
        .send(
            ApiKey::Produce,
            7,
            4,
            &produce_request(&topic, 1, RecordBatch::new(2).encode()),
        )
        .await;
    client
        .send(ApiKey::Metadata, 9, 5, &metadata_for(&topic, false))
        .await;

    // No answer for correlation id 2: the first answer is for 3.
    let versions: ApiVersionsResponse = client.receive(ApiKey::ApiVersions, 3, 3).await;
    assert_eq!(versions.error_code, 0);
    let produced: ProduceResponse = client.receive(ApiKey::Produce, 7, 4).await;
    assert_eq!(
        written_at(&produced),
        5,
        "the acks=0 batch was written first"
    );
    let metadata: MetadataResponse = client.receive(ApiKey::Metadata, 9, 5).await;
    assert_eq!(metadata.topics[0].name.as_ref().unwrap().0.as_str(), topic);
}

/// A produce pipelined behind a frame with an unreadable header is never written: the
/// connection closes at the bad frame, as a broker's does, so the client's retry of that
/// produce cannot write it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_behind_an_unreadable_header_is_dispatched() {
    let (_broker, kshift) = start().await;
    let (topic, mut client) = auto_created_topic(&kshift, "behind-bad-header").await;

    // A client id longer than its frame, then a produce, in one write.
    let mut bytes = vec![0, 0, 0, 11, 0, 3, 0, 1, 0, 0, 0, 2, 0x7f, 0xff, b'a'];
    let produce = encode::request(
        ApiKey::Produce,
        7,
        3,
        "raw-test",
        &produce_request(&topic, 1, RecordBatch::new(4).encode()),
    );
    bytes.extend_from_slice(&encode::length_prefixed(&produce));
    client.send_bytes(&bytes).await;
    client.assert_closed().await;

    // The next record written to the partition is its first.
    let mut client = RawClient::connect(kshift.addr()).await;
    client
        .send(
            ApiKey::Produce,
            7,
            4,
            &produce_request(&topic, 1, RecordBatch::new(1).encode()),
        )
        .await;
    let produced: ProduceResponse = client.receive(ApiKey::Produce, 7, 4).await;
    assert_eq!(
        written_at(&produced),
        0,
        "the pipelined produce was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_gets_a_retriable_error_not_a_hang() {
    let (broker, kshift) = start().await;
    let (topic, mut client) = auto_created_topic(&kshift, "dead-backend").await;
    client
        .send(
            ApiKey::Produce,
            7,
            2,
            &produce_request(&topic, 1, RecordBatch::new(1).encode()),
        )
        .await;
    let first: ProduceResponse = client.receive(ApiKey::Produce, 7, 2).await;
    assert_eq!(first.responses[0].partition_responses[0].error_code, 0);

    drop(broker);
    client
        .send(
            ApiKey::Produce,
            7,
            3,
            &produce_request(&topic, 1, RecordBatch::new(1).encode()),
        )
        .await;
    let failed: ProduceResponse = client.receive(ApiKey::Produce, 7, 3).await;
    let code = failed.responses[0].partition_responses[0].error_code;
    let error = ResponseError::try_from_code(code).expect("an error code");
    assert!(error.is_retriable(), "{error:?} is not retriable");

    // Metadata still answers (topics the backend cannot describe are retriable errors).
    client
        .send(ApiKey::Metadata, 9, 4, &metadata_for(&topic, false))
        .await;
    let metadata: MetadataResponse = client.receive(ApiKey::Metadata, 9, 4).await;
    let error = ResponseError::try_from_code(metadata.topics[0].error_code).expect("an error code");
    assert!(error.is_retriable(), "{error:?} is not retriable");
}

/// Counts panics anywhere in this test process (kshift runs in it): a panicking task is
/// invisible to the tests otherwise, as tokio catches it.
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
    &PANICS
}

/// A connection kshift closes after an unserved request has its reply writer end first;
/// tearing it down must not poll that finished task again (which panics the connection's
/// task: "JoinHandle polled after completion").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_kshift_end_without_a_panic() {
    let panics = count_panics();
    let (_broker, kshift) = start().await;
    let before = panics.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        send_unserved_and_see_it_closed(&kshift).await;
    }
    assert_serving(&kshift).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a kshift task panicked (see the output above)"
    );
}
