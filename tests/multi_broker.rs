//! kshift in front of multi-broker clusters (librdkafka's MockCluster, `tests/common/mock_cluster.rs`):
//! one virtual node per real broker, all at kshift's address, with stable ids; librdkafka opens
//! one connection per virtual node; a produce spanning brokers is split by leader; a fetch
//! spanning brokers answers as soon as one has data; coordinators on another broker than the
//! partitions' leaders; a moved leader shows as its new virtual node; a dead broker fails only
//! its partitions, retriably, until it returns; a slow broker holds only its own partitions;
//! every backend answer of one request shares one deadline; a fetch from one broker is
//! forwarded undecoded, yet sessionless and without leader epochs; a slow control broker
//! holds up one client Metadata by the hedge delay, then none.

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::encode::RecordBatch;
use common::mock_cluster::MockKafka;
use common::{Kshift, TIMEOUT};
use futures_util::FutureExt;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::mocking::MockCoordinator;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;

const PARTITIONS: i32 = 6;

/// kshift with one cluster `old` = `cluster`, plus `proxy_lines` in `[proxy]`.
fn one_cluster_toml(cluster: &MockKafka, proxy_lines: &str) -> String {
    common::single_cluster_toml_at(&cluster.bootstrap(), proxy_lines)
}

/// A 3-broker cluster with a fresh topic (named from `prefix`) of [`PARTITIONS`] partitions,
/// partition `p` led by broker `p % 3 + 1`, and kshift in front of it with `proxy_lines`.
async fn cluster_and_kshift(prefix: &str, proxy_lines: &str) -> (String, MockKafka, Kshift) {
    let topic = common::unique_topic(prefix);
    let cluster = MockKafka::with_topic(3, &topic, PARTITIONS).await;
    let kshift = Kshift::start_toml(&one_cluster_toml(&cluster, proxy_lines)).await;
    (topic, cluster, kshift)
}

/// What `bootstrap` says about the brokers and about `topic`'s leaders.
struct Shown {
    brokers: Vec<(i32, String, i32)>,
    leaders: BTreeMap<i32, i32>,
}

fn shown(bootstrap: &str, topic: &str) -> Shown {
    let consumer = common::consumer(bootstrap, &[]);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut brokers: Vec<(i32, String, i32)> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect();
    brokers.sort();
    let leaders = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| (p.id(), p.leader()))
                .collect()
        })
        .unwrap_or_default();
    Shown { brokers, leaders }
}

/// The virtual node id kshift shows for real broker `broker` of its cluster `old`.
fn virtual_node(kshift: &Kshift, broker: i32) -> i32 {
    kshift.state().clusters[0].virtual_node(broker)
}

fn batch_request(topic: &str, partitions: impl IntoIterator<Item = i32>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(0)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                partitions
                    .into_iter()
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(RecordBatch::new(2).encode()))
                    })
                    .collect(),
            )])
}

/// Error code per partition of a produce answer.
fn produce_codes(response: &ProduceResponse) -> BTreeMap<i32, i16> {
    response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| (p.index, p.error_code))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_shows_a_virtual_node_per_broker_all_at_kshift_with_fleet_wide_ids() {
    let topic = common::unique_topic("vnodes");
    let cluster = MockKafka::with_topic(3, &topic, PARTITIONS).await;
    let config = one_cluster_toml(&cluster, "");
    let kshift = Kshift::start_toml(&config).await;
    let fleet_member = Kshift::start_toml(&config).await;

    let backend_ports: BTreeSet<i32> = cluster
        .bootstrap()
        .split(',')
        .filter_map(|a| a.rsplit_once(':')?.1.parse().ok())
        .collect();
    let mut seen = Vec::new();
    for instance in [&kshift, &fleet_member] {
        let shown = shown(&instance.bootstrap(), &topic);
        let ids: BTreeSet<i32> = shown.brokers.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(
            ids.len(),
            3,
            "one virtual node per broker: {:?}",
            shown.brokers
        );
        for (_, host, port) in &shown.brokers {
            assert_eq!(host, &instance.addr().ip().to_string());
            assert_eq!(
                *port,
                i32::from(instance.addr().port()),
                "{:?}",
                shown.brokers
            );
            assert!(!backend_ports.contains(port), "a backend port leaked");
        }
        let expected: BTreeMap<i32, i32> = (0..PARTITIONS)
            .map(|p| (p, virtual_node(instance, p % 3 + 1)))
            .collect();
        assert_eq!(
            shown.leaders, expected,
            "leaders are the real leaders' virtual nodes"
        );
        assert_eq!(
            shown.leaders.values().copied().collect::<BTreeSet<_>>(),
            ids,
            "every virtual node leads the partitions of its broker"
        );
        for id in &ids {
            assert!(!(1..=3).contains(id), "a backend node id leaked: {id}");
        }
        seen.push((ids, shown.leaders));
    }
    assert_eq!(seen[0], seen[1], "two kshifts of a fleet show the same ids");
    fleet_member.shutdown().await;
    kshift.shutdown().await;
}

/// Keeps librdkafka's latest statistics (its own view of its broker connections).
#[derive(Clone, Default)]
struct StatsContext {
    latest: Arc<Mutex<Option<Statistics>>>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        *self.latest.lock().unwrap() = Some(statistics);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_opens_one_connection_per_virtual_node_at_one_address() {
    let (topic, _cluster, kshift) = cluster_and_kshift("vnode-conns", "").await;
    let context = StatsContext::default();
    let producer: FutureProducer<StatsContext> = ClientConfig::new()
        .set("bootstrap.servers", kshift.bootstrap())
        .set("broker.address.family", "v4")
        .set("statistics.interval.ms", "100")
        .set("linger.ms", "5")
        .create_with_context(context.clone())
        .expect("producer");
    for partition in 0..PARTITIONS {
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key("k")
            .payload("v");
        let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        tokio::time::timeout(TIMEOUT, delivery)
            .await
            .expect("delivered in time")
            .expect("delivery report")
            .expect("delivered");
    }
    let expected: BTreeSet<i32> = (1..=3).map(|b| virtual_node(&kshift, b)).collect();
    let what = format!("librdkafka to be connected to node ids {expected:?}");
    let brokers = common::eventually(TIMEOUT, &what, async || {
        let stats = context.latest.lock().unwrap().clone();
        let up: Vec<(i32, String, i64)> = stats
            .map(|s| {
                s.brokers
                    .values()
                    .filter(|b| b.nodeid >= 0 && b.state == "UP")
                    .map(|b| (b.nodeid, b.nodename.clone(), b.connects.unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        if up.iter().map(|(id, _, _)| *id).collect::<BTreeSet<_>>() == expected {
            Ok(up)
        } else {
            Err(format!("connected brokers {up:?}"))
        }
    })
    .await;
    for (id, name, connects) in &brokers {
        assert_eq!(
            name,
            &kshift.bootstrap(),
            "node {id} is at kshift's address"
        );
        assert_eq!(*connects, 1, "node {id}: one connection");
    }
    // kshift saw one connection per node id, plus at most librdkafka's bootstrap one.
    let accepted = kshift.state().metrics.client_connections_accepted.get();
    assert!((3..=4).contains(&accepted), "{accepted} client connections");
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_spanning_brokers_is_split_by_leader_and_merged() {
    let (topic, cluster, kshift) = cluster_and_kshift("split-produce", "").await;
    // A client with stale metadata (or one virtual node) sends every partition at once.
    let mut client = raw::RawClient::connect(kshift.addr()).await;
    client
        .send(ApiKey::Produce, 7, 1, &batch_request(&topic, 0..PARTITIONS))
        .await;
    let response: ProduceResponse = client.receive(ApiKey::Produce, 7, 1).await;
    let codes = produce_codes(&response);
    let ok: BTreeMap<i32, i16> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    assert_eq!(codes, ok, "{response:?}");
    let consumer = common::assigned_consumer(&cluster.bootstrap(), &topic, PARTITIONS, &[]);
    let received = common::consume_n(&consumer, 2 * PARTITIONS as usize, TIMEOUT).await;
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for record in &received {
        *per_partition.entry(record.partition).or_default() += 1;
    }
    let two_each: BTreeMap<i32, usize> = (0..PARTITIONS).map(|p| (p, 2)).collect();
    assert_eq!(per_partition, two_each, "each batch on its own partition");
    kshift.shutdown().await;
}

fn fetch_request(
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                partitions
                    .into_iter()
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(0)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_spanning_brokers_answers_as_soon_as_one_has_data() {
    let (topic, _cluster, kshift) = cluster_and_kshift("merge-fetch", "").await;
    // Records on partition 1 only (broker 2); partitions 0 and 2 (brokers 1 and 3) are empty
    // and long-poll for the whole max_wait_ms (the mock cluster holds an empty fetch that long).
    let producer = common::producer(&kshift.bootstrap(), &[]);
    let record = FutureRecord::to(&topic).partition(1).key("k").payload("v");
    common::send_all(&producer, vec![record]).await;

    let mut client = raw::RawClient::connect(kshift.addr()).await;
    // Far longer than the read below waits: answered only if kshift does not wait for all.
    let max_wait_ms = 60_000;
    client
        .send(
            ApiKey::Fetch,
            11,
            1,
            &fetch_request(&topic, 0..3, max_wait_ms),
        )
        .await;
    let response: FetchResponse = client.receive(ApiKey::Fetch, 11, 1).await;
    assert_eq!(response.error_code, 0, "{response:?}");
    let mut with_records = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for topic_response in &response.responses {
        assert_eq!(topic_response.topic.0.as_str(), topic);
        for partition in &topic_response.partitions {
            listed.insert(partition.partition_index);
            if partition.records.as_ref().is_some_and(|r| !r.is_empty()) {
                with_records.insert(partition.partition_index);
            }
            assert_eq!(partition.preferred_read_replica, BrokerId(-1));
        }
    }
    assert_eq!(with_records, BTreeSet::from([1]), "{response:?}");
    assert_eq!(
        listed,
        BTreeSet::from([0, 1, 2]),
        "every partition answered"
    );
    kshift.shutdown().await;
}

/// A fetch of partitions led by one broker is forwarded without being decoded: kshift must
/// still make it sessionless and epoch-free. The mock broker echoes the request's session id
/// and refuses a leader epoch it does not know, so a request passed on as the client wrote it
/// fails both checks below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_one_broker_is_forwarded_sessionless_and_without_epochs() {
    let (topic, _cluster, kshift) = cluster_and_kshift("forward-fetch", "").await;
    let producer = common::producer(&kshift.bootstrap(), &[]);
    let records = (0..3).map(|_| FutureRecord::to(&topic).partition(1).key("k").payload("v"));
    common::send_all(&producer, records.collect()).await;
    // Metadata first, as a client does: kshift then knows partition 1's leader.
    shown(&kshift.bootstrap(), &topic);

    for version in [11, 12] {
        let mut request = fetch_request(&topic, [1], 500)
            .with_session_id(42)
            .with_session_epoch(0);
        for partition in &mut request.topics[0].partitions {
            partition.current_leader_epoch = 99;
            if version >= 12 {
                partition.last_fetched_epoch = 98;
            }
        }
        let response: FetchResponse =
            raw::RawClient::ask(kshift.addr(), ApiKey::Fetch, version, &request).await;
        assert_eq!(response.error_code, 0, "v{version}: {response:?}");
        assert_eq!(
            response.session_id, 0,
            "v{version}: a session is not kshift's"
        );
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "v{version}: {partition:?}");
        assert_eq!(partition.preferred_read_replica, BrokerId(-1));
        let records = partition.records.clone().unwrap_or_default();
        assert_eq!(
            kshift::codec::batch::next_offset(&records),
            Some(3),
            "v{version}: all three records"
        );
    }
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_on_other_brokers_than_the_leaders_are_their_virtual_nodes() {
    let topic = common::unique_topic("coordinated");
    let group = common::unique_topic("group");
    let transactional_id = common::unique_topic("txn");
    let cluster = MockKafka::with_topic(3, &topic, 1).await; // led by broker 1
    cluster.coordinator(MockCoordinator::Group(group.clone()), 3);
    cluster.coordinator(MockCoordinator::Transaction(transactional_id.clone()), 2);
    let kshift = Kshift::start_toml(&one_cluster_toml(&cluster, "")).await;

    let mut client = raw::RawClient::connect(kshift.addr()).await;
    for (correlation_id, (key_type, key, broker)) in
        [(0, group.as_str(), 3), (1, transactional_id.as_str(), 2)]
            .into_iter()
            .enumerate()
    {
        let correlation_id = correlation_id as i32;
        for version in [1, 4] {
            let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
            if version >= 4 {
                request.coordinator_keys = vec![StrBytes::from_string(key.to_string())];
            } else {
                request.key = StrBytes::from_string(key.to_string());
            }
            client
                .send(ApiKey::FindCoordinator, version, correlation_id, &request)
                .await;
            let response: FindCoordinatorResponse = client
                .receive(ApiKey::FindCoordinator, version, correlation_id)
                .await;
            let (code, node, host, port) = match response.coordinators.first() {
                Some(c) => (c.error_code, c.node_id.0, c.host.to_string(), c.port),
                None => (
                    response.error_code,
                    response.node_id.0,
                    response.host.to_string(),
                    response.port,
                ),
            };
            assert_eq!(code, 0, "{response:?}");
            assert_eq!(node, virtual_node(&kshift, broker), "{key} v{version}");
            assert_eq!(host, kshift.addr().ip().to_string());
            assert_eq!(port, i32::from(kshift.addr().port()));
        }
    }

    // A transaction through the coordinator on broker 2, to a partition led by broker 1.
    let producer = common::producer(
        &kshift.bootstrap(),
        &[("transactional.id", transactional_id.as_str())],
    );
    producer
        .init_transactions(TIMEOUT)
        .expect("init transactions");
    producer.begin_transaction().expect("begin");
    let records: Vec<String> = (0..5).map(|i| format!("txn-{i}")).collect();
    let keyed = records.iter().map(|value| (value.clone(), value.clone()));
    common::send_keyed(&producer, &topic, keyed).await;
    producer.commit_transaction(TIMEOUT).expect("commit");

    // A group through the coordinator on broker 3: consume, commit, and a second member of
    // the group resumes after the commit.
    let settings = [
        ("group.id", group.as_str()),
        ("isolation.level", "read_committed"),
    ];
    let consumer = common::consumer(&kshift.bootstrap(), &settings);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let received = common::consume_at_least(&consumer, 3, TIMEOUT).await;
    let third = &received[2];
    let mut position = rdkafka::TopicPartitionList::new();
    position
        .add_partition_offset(&topic, 0, rdkafka::Offset::Offset(third.offset + 1))
        .unwrap();
    consumer
        .commit(&position, CommitMode::Sync)
        .expect("commit");
    drop(consumer);
    let consumer = common::consumer(&kshift.bootstrap(), &settings);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let rest = common::consume_at_least(&consumer, 2, TIMEOUT).await;
    let values: Vec<String> = received
        .iter()
        .take(3)
        .chain(&rest)
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).unwrap())
        .collect();
    assert_eq!(
        values, records,
        "committed records once, in order, across the commit"
    );
    drop(consumer);
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_leader_shows_as_its_new_virtual_node_and_takes_records() {
    let (topic, cluster, kshift) = cluster_and_kshift("moved", "").await;
    let producer = common::producer(&kshift.bootstrap(), &[("enable.idempotence", "true")]);
    let to_zero = |value: &'static str| {
        FutureRecord::to(&topic)
            .partition(0)
            .key(value)
            .payload(value)
    };
    common::send_all(&producer, vec![to_zero("before")]).await;
    assert_eq!(
        shown(&kshift.bootstrap(), &topic).leaders[&0],
        virtual_node(&kshift, 1)
    );

    cluster.move_leader(&topic, 0, 2);
    common::eventually(
        TIMEOUT,
        "partition 0 to be shown at broker 2's node",
        async || {
            let leaders = shown(&kshift.bootstrap(), &topic).leaders;
            (leaders[&0] == virtual_node(&kshift, 2))
                .then_some(())
                .ok_or(format!("leaders {leaders:?}"))
        },
    )
    .await;
    // The producer meets NOT_LEADER_OR_FOLLOWER, refreshes, and goes to the new node.
    common::send_all(&producer, vec![to_zero("after")]).await;
    let consumer = common::assigned_consumer(&cluster.bootstrap(), &topic, 1, &[]);
    let received = common::consume_n(&consumer, 2, TIMEOUT).await;
    let values: Vec<Vec<u8>> = received.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_fails_only_its_partitions_retriably_until_it_returns() {
    let (topic, cluster, kshift) =
        cluster_and_kshift("dead-broker", "connect_timeout_ms = 1000").await;
    let mut client = raw::RawClient::connect(kshift.addr()).await;
    // Warm kshift's leader cache and its connections.
    client
        .send(ApiKey::Produce, 7, 1, &batch_request(&topic, 0..PARTITIONS))
        .await;
    let warm: ProduceResponse = client.receive(ApiKey::Produce, 7, 1).await;
    assert!(
        produce_codes(&warm).values().all(|code| *code == 0),
        "{warm:?}"
    );

    cluster.broker_down(1); // leads partitions 0 and 3
    let retriable = [
        ResponseError::NotLeaderOrFollower.code(),
        ResponseError::LeaderNotAvailable.code(),
        ResponseError::RequestTimedOut.code(),
        ResponseError::NetworkException.code(),
    ];
    let mut client = raw::RawClient::connect(kshift.addr()).await;
    client
        .send(ApiKey::Produce, 7, 2, &batch_request(&topic, 0..PARTITIONS))
        .await;
    let during: ProduceResponse = client.receive(ApiKey::Produce, 7, 2).await;
    for (partition, code) in produce_codes(&during) {
        if partition % 3 == 0 {
            assert!(
                retriable.contains(&code),
                "partition {partition}: {code} {during:?}"
            );
        } else {
            assert_eq!(
                code, 0,
                "partition {partition} of a live broker: {during:?}"
            );
        }
    }

    cluster.broker_up(1);
    let mut correlation_id = 2;
    common::eventually(TIMEOUT, "broker 1's partitions to recover", async || {
        correlation_id += 1;
        let mut client = raw::RawClient::connect(kshift.addr()).await;
        client
            .send(
                ApiKey::Produce,
                7,
                correlation_id,
                &batch_request(&topic, [0, 3]),
            )
            .await;
        let after: ProduceResponse = client.receive(ApiKey::Produce, 7, correlation_id).await;
        let codes = produce_codes(&after);
        codes
            .values()
            .all(|code| *code == 0)
            .then_some(())
            .ok_or(format!("{codes:?} in {after:?}"))
    })
    .await;
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_holds_only_its_own_partitions() {
    let (topic, cluster, kshift) = cluster_and_kshift("slow-broker", "").await;
    let producer = common::producer(&kshift.bootstrap(), &[("linger.ms", "20")]);
    // Connections and metadata first, before the broker turns slow.
    let warm: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            FutureRecord::to(&topic)
                .partition(p)
                .key("warm")
                .payload("warm")
        })
        .collect();
    common::send_all(&producer, warm).await;

    cluster.set_round_trip(1, Duration::from_secs(4)); // leads partitions 0 and 3
    let mut slow = Vec::new();
    let mut healthy = Vec::new();
    for partition in 0..PARTITIONS {
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key("k")
            .payload("v");
        let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        if partition % 3 == 0 {
            slow.push(delivery);
        } else {
            healthy.push(delivery);
        }
    }
    for delivery in healthy {
        tokio::time::timeout(TIMEOUT, delivery)
            .await
            .expect("healthy partitions answered")
            .expect("delivery report")
            .expect("delivered");
    }
    // With one virtual broker every request held partitions of the slow broker too, and the
    // healthy ones were acknowledged only with them.
    let mut slow_pending = 0;
    let mut slow_deliveries = Vec::new();
    for mut delivery in slow {
        if (&mut delivery).now_or_never().is_none() {
            slow_pending += 1;
        }
        slow_deliveries.push(delivery);
    }
    assert_eq!(
        slow_pending, 2,
        "the slow broker's records were still pending"
    );
    for delivery in slow_deliveries {
        tokio::time::timeout(TIMEOUT, delivery)
            .await
            .expect("slow partitions answered in the end")
            .expect("delivery report")
            .expect("delivered");
    }
    cluster.set_round_trip(1, Duration::ZERO);
    drop(producer);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_answer_of_a_request_shares_one_deadline() {
    let (topic, cluster, kshift) =
        cluster_and_kshift("one-deadline", "request_timeout_ms = 1000").await;
    let mut client = raw::RawClient::connect(kshift.addr()).await;
    client
        .send(ApiKey::Produce, 7, 1, &batch_request(&topic, [0, 1]))
        .await;
    let warm: ProduceResponse = client.receive(ApiKey::Produce, 7, 1).await;
    assert!(
        produce_codes(&warm).values().all(|code| *code == 0),
        "{warm:?}"
    );

    // Brokers 1 and 2 (partitions 0 and 1) answer 1.5 s late: past the request's one 1 s
    // deadline, both. Awaited in turn with a fresh timeout each, the second one made it.
    cluster.set_round_trip(1, Duration::from_millis(1500));
    cluster.set_round_trip(2, Duration::from_millis(1500));
    client
        .send(ApiKey::Produce, 7, 2, &batch_request(&topic, [0, 1]))
        .await;
    let late: ProduceResponse = client.receive(ApiKey::Produce, 7, 2).await;
    let timed_out = ResponseError::RequestTimedOut.code();
    assert_eq!(
        produce_codes(&late),
        BTreeMap::from([(0, timed_out), (1, timed_out)]),
        "{late:?}"
    );
    cluster.set_round_trip(-1, Duration::ZERO);
    kshift.shutdown().await;
}

/// Client Metadata through kshift, `count` times on one connection: the topic's partitions
/// as each answer lists them.
async fn metadata_rounds(kshift: &Kshift, topic: &str, count: i32) {
    let mut client = raw::RawClient::connect(kshift.addr()).await;
    let request = MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.to_string())))),
    ]));
    for correlation in 1..=count {
        client
            .send(ApiKey::Metadata, 12, correlation, &request)
            .await;
        // Far less than the slow broker's round trip: only an answer from another broker
        // arrives in time.
        let answer: MetadataResponse = tokio::time::timeout(
            Duration::from_secs(10),
            client.receive(ApiKey::Metadata, 12, correlation),
        )
        .await
        .expect("Metadata answered without waiting for the slow broker");
        assert_eq!(answer.topics.len(), 1, "{answer:?}");
        assert_eq!(answer.topics[0].error_code, 0, "{answer:?}");
        assert_eq!(
            answer.topics[0].partitions.len(),
            PARTITIONS as usize,
            "{answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_control_broker_is_hedged_once_then_left() {
    let (topic, cluster, kshift) = cluster_and_kshift("slow-control", "").await;
    // Brokers known, and kshift's control connection open to broker 1 (first in bootstrap).
    metadata_rounds(&kshift, &topic, 1).await;
    let hedges = |outcome: &str| {
        common::metric_sum(
            &kshift.state().metrics.exposition(),
            "kshift_control_hedges_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(hedges("won"), 0.0, "healthy brokers: no hedge");

    // Broker 1 answers a minute late, as one stuck in a rolling restart might: without the
    // hedge every client Metadata waited for it (the request timeout is 30 s).
    cluster.set_round_trip(1, Duration::from_secs(60));
    metadata_rounds(&kshift, &topic, 1).await;
    assert_eq!(
        hedges("won"),
        1.0,
        "the first lookup was hedged to another broker"
    );
    // The control connection moved: later lookups are not hedged at all.
    metadata_rounds(&kshift, &topic, 5).await;
    assert_eq!(
        hedges("won"),
        1.0,
        "later lookups went to the new control broker"
    );
    assert_eq!(hedges("lost"), 0.0);
    cluster.set_round_trip(1, Duration::ZERO);
    kshift.shutdown().await;
}
