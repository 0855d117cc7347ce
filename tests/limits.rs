//! Limits, each tested on both sides: `max_connections` (excess refused at accept and
//! counted, room again once a client leaves), `mirror_queue_bytes` (records that fit are
//! mirrored; what does not fit is dropped and counted, never blocking the producer) and
//! `queued_max_request_bytes` (another connection's frame is not read while unanswered
//! frames hold the budget; read at once while they leave room).

mod common;
mod raw;

use std::time::Duration;

use common::encode::RecordBatch;
use common::mirror::settled;
use common::Broker;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchResponse};
use raw::{RawClient, Read};
use rdkafka::producer::FutureRecord;

async fn api_versions_answered(client: &mut RawClient, correlation_id: i32) {
    client
        .send(
            ApiKey::ApiVersions,
            3,
            correlation_id,
            &ApiVersionsRequest::default(),
        )
        .await;
    let response: ApiVersionsResponse =
        client.receive(ApiKey::ApiVersions, 3, correlation_id).await;
    assert_eq!(response.error_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_excess_and_frees_room_when_a_client_leaves() {
    let broker = Broker::start().await;
    let text =
        common::single_cluster_toml(&broker).replace("[proxy]", "[proxy]\nmax_connections = 2");
    let proxy = common::start_proxy(&text).await;
    let mut first = RawClient::connect(proxy.local_addr()).await;
    let mut second = RawClient::connect(proxy.local_addr()).await;
    api_versions_answered(&mut first, 1).await;
    api_versions_answered(&mut second, 1).await;

    let mut third = RawClient::connect(proxy.local_addr()).await;
    third.send_body(ApiKey::ApiVersions, 0, 1, &[]).await;
    match third.read(Duration::from_secs(5)).await {
        Read::Closed => {}
        other => panic!("the connection over the limit was not closed: {other:?}"),
    }
    assert_eq!(proxy.state().metrics.client_connections_refused.get(), 1);

    drop(first);
    common::eventually(
        Duration::from_secs(5),
        "the closed connection to be released",
        async || {
            let open = proxy.state().metrics.client_connections.get();
            (open <= 1).then_some(()).ok_or(format!("{open} open"))
        },
    )
    .await;
    let mut fourth = RawClient::connect(proxy.local_addr()).await;
    api_versions_answered(&mut fourth, 1).await;
    api_versions_answered(&mut second, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_queue_bytes_mirrors_what_fits_and_drops_what_does_not() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    for (limit, expect_mirrored) in [(1_000_000usize, true), (64, false)] {
        let text = common::two_cluster_toml_at(
            &old.bootstrap(),
            &new.bootstrap(),
            "",
            &format!("mirror_queue_bytes = {limit}"),
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]",
        );
        let proxy = common::start_proxy(&text).await;
        let through = proxy.local_addr().to_string();
        let topic = common::unique_topic("queue-limit");
        common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
        let producer = common::producer(&through, &[("linger.ms", "0")]);
        let value = "x".repeat(200);
        for _ in 0..3 {
            producer
                .send(
                    FutureRecord::to(&topic).key("k").payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("the producer is never failed by the mirror queue");
        }
        let counts = settled(proxy.state(), "new", 3, Duration::from_secs(20)).await;
        let expected = if expect_mirrored { (3, 0) } else { (0, 3) };
        assert_eq!(
            (counts.mirrored_records, counts.dropped_records),
            expected,
            "limit {limit}: {counts:?}"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_connections_and_keeps_busy_ones() {
    let broker = Broker::start().await;
    let text =
        common::single_cluster_toml(&broker).replace("[proxy]", "[proxy]\nidle_timeout_ms = 400");
    let proxy = common::start_proxy(&text).await;
    let mut busy = RawClient::connect(proxy.local_addr()).await;
    let mut silent = RawClient::connect(proxy.local_addr()).await;
    api_versions_answered(&mut silent, 1).await;
    // The busy client asks every 100 ms for 1.2 s: never idle for 400 ms.
    for correlation_id in 0..12 {
        api_versions_answered(&mut busy, correlation_id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match silent.read(Duration::from_secs(5)).await {
        Read::Closed => {}
        other => panic!("the idle connection was not closed: {other:?}"),
    }
    api_versions_answered(&mut busy, 100).await;
    assert_eq!(
        proxy.state().metrics.client_connections_idle_closed.get(),
        1
    );
}

/// A TCP proxy in front of `backend` that holds every chunk the backend sends for `delay`.
async fn slow_proxy(backend: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(server) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(
                    async move { tokio::io::copy(&mut client_read, &mut server_write).await },
                );
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_a_slow_backend_with_a_retriable_timeout() {
    let broker = Broker::start().await;
    let topic = common::unique_topic("slow");
    common::create_topic(&broker.bootstrap(), &topic, 1).await;
    for (delay_ms, expect_timeout) in [(100u64, false), (3_000, true)] {
        // The cluster's bootstrap is the slow proxy, so kshift's own requests (metadata on
        // its control connection) wait `delay_ms` for every answer. (Tansu advertises its
        // own port, so produce and fetch would bypass the proxy: metadata is what is slowed.)
        let slow = slow_proxy(broker.addr(), Duration::from_millis(delay_ms)).await;
        let text = common::single_cluster_toml_at(&slow.to_string(), "request_timeout_ms = 1000");
        let proxy = common::start_proxy(&text).await;
        let mut client = RawClient::connect(proxy.local_addr()).await;
        let started = std::time::Instant::now();
        client
            .send(
                ApiKey::Metadata,
                9,
                1,
                &kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string(topic.clone()),
                        ))),
                ])),
            )
            .await;
        let metadata: kafka_protocol::messages::MetadataResponse =
            client.receive(ApiKey::Metadata, 9, 1).await;
        let elapsed = started.elapsed();
        let code = metadata.topics[0].error_code;
        if expect_timeout {
            // The backend answers after 3 s; kshift gives up after request_timeout_ms and
            // answers a retriable error instead of hanging.
            assert_ne!(code, 0, "a 3 s backend should not look healthy");
            let error = kafka_protocol::ResponseError::try_from_code(code).unwrap();
            assert!(error.is_retriable(), "{error:?}");
            assert!(
                elapsed < Duration::from_millis(2_900),
                "kshift waited for the slow backend: {elapsed:?}"
            );
        } else {
            assert_eq!(code, 0, "a 100 ms backend is within request_timeout_ms");
        }
        proxy.shutdown().await;
    }
}

/// Sends a parked long-poll Fetch and then a Produce on one connection; returns whether the
/// produced record became visible (to another connection) while the fetch was still parked.
async fn produce_runs_behind_a_parked_fetch(window: usize) -> bool {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{BrokerId, FetchRequest, MetadataRequest, TopicName};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    use kafka_protocol::protocol::StrBytes;

    let broker = Broker::start().await;
    let text = common::single_cluster_toml(&broker).replace(
        "[proxy]",
        &format!("[proxy]\nmax_in_flight_requests = {window}"),
    );
    let proxy = common::start_proxy(&text).await;
    let topic = common::unique_topic("window");
    let name = TopicName(StrBytes::from_string(topic.clone()));
    let mut client = RawClient::connect(proxy.local_addr()).await;
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name.clone()))
        ]))
        .with_allow_auto_topic_creation(true);
    client.send(ApiKey::Metadata, 9, 1, &metadata).await;
    let _: kafka_protocol::messages::MetadataResponse =
        client.receive(ApiKey::Metadata, 9, 1).await;

    // Parked for 4 s on the empty partition... (offset 1: nothing there even after the
    // produce below, so the fetch stays parked for its whole max_wait_ms)
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(4_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name.clone())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    client.send(ApiKey::Fetch, 11, 2, &fetch).await;
    // ...then a produce pipelined behind it on the same connection.
    client
        .send(
            ApiKey::Produce,
            7,
            3,
            &raw::produce_request(&topic, 1, RecordBatch::new(1).encode()),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Is the record on the broker already? Ask it directly (ListOffsets LATEST).
    let mut direct = RawClient::connect(broker.addr()).await;
    let latest = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name)
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    direct.send(ApiKey::ListOffsets, 7, 1, &latest).await;
    let answer: ListOffsetsResponse = direct.receive(ApiKey::ListOffsets, 7, 1).await;
    let visible = answer.topics[0].partitions[0].offset > 0;
    // Both answers still arrive, in order.
    let _: FetchResponse = client.receive(ApiKey::Fetch, 11, 2).await;
    let produced: kafka_protocol::messages::ProduceResponse =
        client.receive(ApiKey::Produce, 7, 3).await;
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    visible
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_requests_bounds_what_runs_behind_a_parked_request() {
    // A window of 2: the produce runs while the fetch is parked (pipelining).
    assert!(
        produce_runs_behind_a_parked_fetch(2).await,
        "window 2 did not pipeline"
    );
    // A window of 1: kshift does not even read the produce until the fetch is answered.
    assert!(
        !produce_runs_behind_a_parked_fetch(1).await,
        "window 1 ran a second request"
    );
}

/// Two connections each send a ~40 KB produce: the first to a partition of a broker that
/// answers 2 s late, the second to a healthy broker's. Returns true if the second was
/// answered while the first was still waiting.
async fn second_frame_read_while_first_waits(budget_bytes: usize) -> bool {
    use common::mock_cluster::MockKafka;
    use kafka_protocol::messages::ProduceResponse;

    let topic = common::unique_topic("budget");
    let cluster = MockKafka::with_topic(3, &topic, 3).await; // partition p led by broker p + 1
    let text = common::single_cluster_toml_at(
        &cluster.bootstrap(),
        &format!("max_frame_bytes = 65536\nqueued_max_request_bytes = {budget_bytes}"),
    );
    let proxy = common::start_proxy(&text).await;
    let batch = RecordBatch::new(600).encode();
    assert!(
        (33_000..60_000).contains(&batch.len()),
        "{} bytes",
        batch.len()
    );
    let request = |partition: i32| {
        let mut request = raw::produce_request(&topic, 1, batch.clone());
        request.topic_data[0].partition_data[0].index = partition;
        request
    };
    // Leaders and connections first, then broker 1 turns slow.
    let mut warm = RawClient::connect(proxy.local_addr()).await;
    for partition in [0, 1] {
        warm.send(ApiKey::Produce, 7, partition, &request(partition))
            .await;
        let answer: ProduceResponse = warm.receive(ApiKey::Produce, 7, partition).await;
        assert_eq!(answer.responses[0].partition_responses[0].error_code, 0);
    }
    cluster.set_round_trip(1, Duration::from_secs(2));

    let mut first = RawClient::connect(proxy.local_addr()).await;
    let mut second = RawClient::connect(proxy.local_addr()).await;
    first.send(ApiKey::Produce, 7, 1, &request(0)).await;
    // The first frame is read (its bytes held in the budget) before the second is sent.
    common::eventually(
        Duration::from_secs(10),
        "the first frame to be read",
        async || {
            let available = proxy.state().request_budget.available_permits();
            (available + batch.len() <= budget_bytes)
                .then_some(())
                .ok_or(format!(
                    "{available} of {budget_bytes} budget bytes available"
                ))
        },
    )
    .await;
    second.send(ApiKey::Produce, 7, 2, &request(1)).await;
    let second_first = tokio::select! {
        answer = first.read(Duration::from_secs(15)) => {
            assert!(matches!(answer, Read::Frame(_)), "{answer:?}");
            false
        }
        answer = second.read(Duration::from_secs(15)) => {
            assert!(matches!(answer, Read::Frame(_)), "{answer:?}");
            true
        }
    };
    // Whichever waited is answered in the end.
    let other = if second_first {
        first.read(Duration::from_secs(15)).await
    } else {
        second.read(Duration::from_secs(15)).await
    };
    assert!(matches!(other, Read::Frame(_)), "{other:?}");
    cluster.set_round_trip(-1, Duration::ZERO);
    proxy.shutdown().await;
    second_first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_max_request_bytes_stops_reading_sockets_at_the_budget() {
    // 64 KiB: the first (unanswered) 40 KB frame leaves no room for the second.
    assert!(!second_frame_read_while_first_waits(65_536).await);
    // 1 MiB: room for both; the second is answered while the first waits.
    assert!(second_frame_read_while_first_waits(1 << 20).await);
}
