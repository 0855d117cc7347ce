//! Limits, each tested on both sides: `max_connections` (excess refused at accept and
//! counted, room again once a client leaves) and `mirror_queue_bytes` (records that fit are
//! mirrored; what does not fit is dropped and counted, never blocking the producer).

mod common;
mod raw;

use std::time::Duration;

use common::Broker;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kshift::config::Config;
use kshift::Proxy;
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
    let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.state().metrics.client_connections.get() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fourth = RawClient::connect(proxy.local_addr()).await;
    api_versions_answered(&mut fourth, 1).await;
    api_versions_answered(&mut second, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_queue_bytes_mirrors_what_fits_and_drops_what_does_not() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    for (limit, expect_mirrored) in [(1_000_000usize, true), (64, false)] {
        let text = format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
[clusters.old]
bootstrap = ["{}"]
[clusters.new]
bootstrap = ["{}"]
mirror_queue_bytes = {limit}
[[routes]]
topics = "*"
write = "old"
mirror = ["new"]
"#,
            old.bootstrap(),
            new.bootstrap()
        );
        let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
        let through = proxy.local_addr().to_string();
        let topic = common::unique_topic("queue-limit");
        common::create_topic(&through, &topic, 1).await;
        common::wait_for_topic(&new.bootstrap(), &topic, 1);
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
        let new_id = proxy.state().cluster_id("new").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let counts = proxy.state().mirrors.stats(new_id);
            let settled =
                counts.mirrored_records + counts.dropped_records == 3 && counts.lag_records == 0;
            if settled {
                if expect_mirrored {
                    assert_eq!(
                        (counts.mirrored_records, counts.dropped_records),
                        (3, 0),
                        "limit {limit}"
                    );
                } else {
                    assert_eq!(
                        (counts.mirrored_records, counts.dropped_records),
                        (0, 3),
                        "limit {limit}"
                    );
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "limit {limit}: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_connections_and_keeps_busy_ones() {
    let broker = Broker::start().await;
    let text =
        common::single_cluster_toml(&broker).replace("[proxy]", "[proxy]\nidle_timeout_ms = 400");
    let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
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
