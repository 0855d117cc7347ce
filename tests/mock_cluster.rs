//! The multi-broker cluster of `tests/common/mock_cluster.rs`, first on its own (librdkafka
//! clients straight at it, no kshift): leaders spread over its brokers, records go in and
//! come out, and each fault it plays — a leader move, injected Produce errors, a broker down,
//! a slow broker, a placed coordinator — is seen by a client. Then kshift in front of two of
//! them, mirroring while both clusters' leaders move under it: every record is on the write
//! cluster once and on the mirror once, in the same order per partition.

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mirror::{assert_same_per_partition, async_mirroring_kshift, read_all, settled};
use common::mock_cluster::{MockKafka, RDKafkaApiKey, RDKafkaRespErr};
use common::TIMEOUT;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCoordinator;
use rdkafka::producer::FutureRecord;

/// Leader of each partition of `topic` as `bootstrap` reports it now (a Metadata request).
fn leaders(bootstrap: &str, topic: &str) -> BTreeMap<i32, i32> {
    let consumer = common::consumer(bootstrap, &[]);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map(|found| {
            found
                .partitions()
                .iter()
                .map(|partition| (partition.id(), partition.leader()))
                .collect()
        })
        .unwrap_or_default()
}

/// A cluster of 3 brokers with a fresh topic (named from `prefix`) of 6 partitions.
async fn three_brokers_with_topic(prefix: &str) -> (MockKafka, String) {
    let topic = common::unique_topic(prefix);
    (MockKafka::with_topic(3, &topic, 6).await, topic)
}

/// Sends one record to `topic` partition `partition`; what its delivery report said.
async fn send_to(
    producer: &common::TestProducer,
    topic: &str,
    partition: i32,
) -> Result<(), KafkaError> {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key("k")
        .payload("v");
    let delivery = producer
        .send_result(record)
        .map_err(|(error, _record)| error)?;
    match tokio::time::timeout(TIMEOUT, delivery).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err((error, _message)))) => Err(error),
        Ok(Err(_canceled)) => panic!("the producer dropped a delivery report"),
        Err(_) => panic!("no delivery report within {TIMEOUT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_through_a_three_broker_cluster_with_leaders_spread() {
    let (cluster, topic) = three_brokers_with_topic("mock-direct").await;
    let leaders = leaders(&cluster.bootstrap(), &topic);
    let spread: BTreeMap<i32, i32> = (0..6).map(|p| (p, p % 3 + 1)).collect();
    assert_eq!(leaders, spread, "partition p is led by broker p % 3 + 1");
    assert_eq!(
        leaders.values().copied().collect::<BTreeSet<_>>(),
        cluster.broker_ids().collect(),
        "every broker leads some partition"
    );

    let producer = common::producer(&cluster.bootstrap(), &[("enable.idempotence", "true")]);
    let values: Vec<String> = (0..600).map(|i| format!("value-{i}")).collect();
    let records = values.iter().map(|value| (value.clone(), value.clone()));
    let delivered = common::send_keyed(&producer, &topic, records).await;
    let used: BTreeSet<i32> = delivered.iter().map(|d| d.partition).collect();
    assert_eq!(used.len(), 6, "keys spread over all partitions: {used:?}");

    let consumer = common::assigned_consumer(&cluster.bootstrap(), &topic, 6, &[]);
    let received = common::consume_n(&consumer, values.len(), TIMEOUT).await;
    let mut got: Vec<String> = received
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).unwrap())
        .collect();
    got.sort();
    let mut sent = values.clone();
    sent.sort();
    assert_eq!(got, sent, "the consumer read back what was produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_leader_shows_in_metadata() {
    let (cluster, topic) = three_brokers_with_topic("mock-move").await;
    let before = leaders(&cluster.bootstrap(), &topic)[&0];
    let target = before % 3 + 1;
    cluster.move_leader(&topic, 0, target);
    let what = format!("metadata to show partition 0 moved from broker {before} to {target}");
    common::eventually(TIMEOUT, &what, async || {
        let now = leaders(&cluster.bootstrap(), &topic);
        (now[&0] == target)
            .then_some(())
            .ok_or(format!("leaders {now:?}"))
    })
    .await;
    // And a producer follows it there.
    let producer = common::producer(&cluster.bootstrap(), &[]);
    send_to(&producer, &topic, 0)
        .await
        .expect("produce to the new leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_reach_the_producer_until_cleared() {
    let (cluster, topic) = three_brokers_with_topic("mock-errors").await;
    // No retries: the first error is the delivery report's.
    let producer = common::producer(
        &cluster.bootstrap(),
        &[("message.send.max.retries", "0"), ("acks", "all")],
    );
    send_to(&producer, &topic, 1).await.expect("a first record");

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
    );
    let error = send_to(&producer, &topic, 1)
        .await
        .expect_err("the injected error fails the record");
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)
    );

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    send_to(&producer, &topic, 1)
        .await
        .expect("no error left after clearing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_fails_its_partitions_until_it_is_up() {
    let (cluster, topic) = three_brokers_with_topic("mock-down").await;
    let leaders = leaders(&cluster.bootstrap(), &topic);
    let leader = leaders[&0];
    let other = (1..6)
        .find(|partition| leaders[partition] != leader)
        .unwrap();
    let producer = common::producer(&cluster.bootstrap(), &[("message.timeout.ms", "2000")]);
    send_to(&producer, &topic, 0)
        .await
        .expect("before the fault");

    cluster.broker_down(leader);
    let error = send_to(&producer, &topic, 0)
        .await
        .expect_err("a partition whose leader is down takes no record");
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    );
    send_to(&producer, &topic, other)
        .await
        .expect("another broker's partition still takes records");

    cluster.broker_up(leader);
    send_to(&producer, &topic, 0)
        .await
        .expect("after broker_up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_outlasts_a_short_request_timeout() {
    let (cluster, topic) = three_brokers_with_topic("mock-slow").await;
    let producer = common::producer(
        &cluster.bootstrap(),
        &[
            ("request.timeout.ms", "500"),
            ("message.timeout.ms", "1000"),
        ],
    );
    send_to(&producer, &topic, 0)
        .await
        .expect("before the fault");

    cluster.set_round_trip(-1, Duration::from_secs(3));
    let error = send_to(&producer, &topic, 0)
        .await
        .expect_err("a 3 s round trip outlasts a 1 s delivery timeout");
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    );

    cluster.set_round_trip(-1, Duration::ZERO);
    let producer = common::producer(&cluster.bootstrap(), &[]);
    send_to(&producer, &topic, 0)
        .await
        .expect("after the round trip is back to zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_coordinator_is_the_one_find_coordinator_names() {
    let cluster = MockKafka::start(3);
    let first: std::net::SocketAddr = cluster
        .bootstrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut client = raw::RawClient::connect(first).await;
    let group = common::unique_topic("mock-group");
    for (correlation_id, broker) in [(1, 3), (2, 2)] {
        cluster.coordinator(MockCoordinator::Group(group.clone()), broker);
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.clone()))
            .with_key_type(0);
        client
            .send(ApiKey::FindCoordinator, 1, correlation_id, &request)
            .await;
        let response: FindCoordinatorResponse = client
            .receive(ApiKey::FindCoordinator, 1, correlation_id)
            .await;
        assert_eq!(response.error_code, 0, "{response:?}");
        assert_eq!(response.node_id.0, broker, "{response:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_keeps_every_record_once_and_in_order_while_leaders_move() {
    const PARTITIONS: i32 = 6;
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 100;
    const RECORDS: usize = ROUNDS * PER_ROUND;
    common::trace_from_env();
    let topic = common::unique_topic("mock-mirror-moves");
    let old = Arc::new(MockKafka::with_topic(3, &topic, PARTITIONS).await);
    let new = Arc::new(MockKafka::with_topic(3, &topic, PARTITIONS).await);
    let kshift = async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), "").await;

    // Every ~150 ms one partition of each cluster moves to the next broker: different
    // partitions on the two clusters, so a mirror move and a write move do not coincide.
    let moves = Arc::new(AtomicUsize::new(0));
    let mut old_leaders: Vec<i32> = leaders(&old.bootstrap(), &topic).into_values().collect();
    let mut new_leaders: Vec<i32> = leaders(&new.bootstrap(), &topic).into_values().collect();
    let mover = {
        let (old, new, topic, moves) = (old.clone(), new.clone(), topic.clone(), moves.clone());
        tokio::spawn(async move {
            for step in 0.. {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let (p, q) = (step % PARTITIONS, (step + 3) % PARTITIONS);
                old_leaders[p as usize] = old_leaders[p as usize] % 3 + 1;
                new_leaders[q as usize] = new_leaders[q as usize] % 3 + 1;
                old.move_leader(&topic, p, old_leaders[p as usize]);
                new.move_leader(&topic, q, new_leaders[q as usize]);
                moves.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let producer = common::producer(
        &kshift.bootstrap(),
        &[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
        ],
    );
    let mut sent = Vec::with_capacity(RECORDS);
    for round in 0..ROUNDS {
        let values: Vec<String> = (0..PER_ROUND)
            .map(|i| format!("value-{}", round * PER_ROUND + i))
            .collect();
        let records = values.iter().map(|value| (value.clone(), value.clone()));
        common::send_keyed(&producer, &topic, records).await;
        sent.extend(values);
        // Each round of records meets a leader move on both clusters.
        let what = format!("leader move {} (the mover stalled)", round + 1);
        common::eventually(TIMEOUT, &what, async || {
            let moved = moves.load(Ordering::Relaxed);
            (moved > round)
                .then_some(())
                .ok_or(format!("{moved} moves"))
        })
        .await;
    }
    mover.abort();
    let moved = moves.load(Ordering::Relaxed);
    assert!(moved >= ROUNDS, "only {moved} leader moves during the run");

    // The mirror writer settles: everything mirrored, nothing dropped or failed.
    let stats = settled(
        kshift.state(),
        "new",
        RECORDS as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        (stats.failed_records, stats.dropped_records),
        (0, 0),
        "records the mirror writer gave up on: {stats:?}"
    );

    let written = read_all(&old.bootstrap(), &topic, PARTITIONS, RECORDS).await;
    let mirrored = read_all(&new.bootstrap(), &topic, PARTITIONS, RECORDS).await;
    let mut all: Vec<String> = written
        .iter()
        .map(|record| String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into())
        .collect();
    all.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(all, expected, "the write cluster holds every record once");
    assert_same_per_partition(&topic, PARTITIONS, &written, &mirrored);
    // The moves reached the write path too (the mirror's are certain: every round wrote every
    // partition after a move there, and the data above is all there).
    let metrics = kshift.state().metrics.exposition();
    let not_leader = common::metric_sum(
        &metrics,
        "kshift_backend_errors_total",
        &[
            "cluster=\"old\"",
            "api=\"Produce\"",
            "error=\"NotLeaderOrFollower\"",
        ],
    );
    assert!(
        not_leader > 0.0,
        "no produce through kshift met a moved leader, so this test proved little:\n{metrics}"
    );
    kshift.shutdown().await;
}
