//! What Kafka client libraries other than librdkafka do with kshift's virtual nodes — several
//! node ids at one address — proven by running each through kshift in front of a 3-broker
//! MockCluster (`tests/multi_broker.rs` has librdkafka):
//! - kafka-python keeps one connection per node id;
//! - sarama (Debian's 1.22, built with Debian's Go in GOPATH mode) keeps one per node id,
//!   plus its seed broker's;
//! - kafkajs keeps one per node id when the nodes' address is not spelled as its bootstrap
//!   address. Every node at exactly its bootstrap host:port becomes its bootstrap broker
//!   object, and then kafkajs 2.2.4 sends only the last such node's partitions and reports
//!   the send done: the other records are silently lost (its `sendMessages` keys requests by
//!   broker object). Operators point kafkajs clients at `[proxy] bootstrap_listen`, a second
//!   listener whose address no virtual node has (or at another spelling of `advertised`).
//!
//! The programs live in `tests/clients/`; `.ci/run` installs kafka-python (PyPI), kafkajs
//! (npm, `tests/clients/package.json`), Go and sarama (Debian). A missing client fails its
//! test with the install command, never skips it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::mock_cluster::MockKafka;
use common::{Kshift, TIMEOUT};
use serde_json::Value;

const PARTITIONS: i32 = 3;

/// A 3-broker cluster with `topic` (partition p led by broker p + 1) and kshift in front,
/// advertising `advertised` when given.
async fn cluster_and_kshift(topic: &str, advertised: Option<&str>) -> (MockKafka, Kshift) {
    cluster_and_kshift_with(topic, advertised, "").await
}

/// As [`cluster_and_kshift`], with `proxy_lines` in `[proxy]`.
async fn cluster_and_kshift_with(
    topic: &str,
    advertised: Option<&str>,
    proxy_lines: &str,
) -> (MockKafka, Kshift) {
    let cluster = MockKafka::with_topic(3, topic, PARTITIONS).await;
    let port = common::free_port();
    let advertised = advertised
        .map(|host| format!("advertised = \"{host}:{port}\"\n"))
        .unwrap_or_default();
    let text =
        common::single_cluster_toml_at(&cluster.bootstrap(), &format!("{advertised}{proxy_lines}"));
    let text = common::listening_at(&text, &format!("127.0.0.1:{port}"));
    (cluster, Kshift::start_toml(&text).await)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Runs `program script args…` (on a blocking thread, so kshift keeps serving) and returns the
/// JSON it printed; panics with `how` to install the client when it fails.
async fn run_client(program: &str, args: Vec<String>, how: &'static str) -> Value {
    let program = program.to_string();
    let run = tokio::task::spawn_blocking(move || Command::new(&program).args(&args).output());
    let output = tokio::time::timeout(TIMEOUT * 2, run)
        .await
        .expect("the client finished in time")
        .expect("client thread")
        .unwrap_or_else(|error| panic!("cannot run the client ({error}); {how}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed ({how}):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("client output is not JSON ({error}): {stdout}"))
}

/// Runs `tests/clients/kafkajs_producer.js` bootstrapped at `bootstrap`, sending one record to
/// each partition of `topic`; what it printed.
async fn run_kafkajs(bootstrap: String, topic: &str) -> Value {
    let args = vec![
        script("kafkajs_producer.js").display().to_string(),
        bootstrap,
        topic.to_string(),
        PARTITIONS.to_string(),
    ];
    run_client("node", args, KAFKAJS).await
}

/// The node ids a kafkajs run saw in its metadata.
fn kafkajs_nodes(answer: &Value) -> BTreeSet<String> {
    answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

fn virtual_nodes(kshift: &Kshift) -> BTreeSet<String> {
    (1..=3)
        .map(|broker| kshift.state().clusters[0].virtual_node(broker).to_string())
        .collect()
}

/// Waits until `cluster` holds one record on each partition of `topic`.
async fn one_record_per_partition(cluster: &MockKafka, topic: &str) {
    let consumer = common::assigned_consumer(&cluster.bootstrap(), topic, PARTITIONS, &[]);
    let received = common::consume_n(&consumer, PARTITIONS as usize, TIMEOUT).await;
    let partitions: BTreeSet<i32> = received.iter().map(|r| r.partition).collect();
    assert_eq!(partitions, (0..PARTITIONS).collect());
}

/// A kafkajs run kept a broker object per node (none of them its seed), and every record it
/// sent was acknowledged and reached `cluster`.
async fn assert_one_broker_per_node_and_every_record(
    answer: &Value,
    cluster: &MockKafka,
    topic: &str,
) {
    assert_eq!(answer["distinct_broker_objects"], 3, "{answer}");
    assert_eq!(answer["seed_is_a_node"], false, "{answer}");
    assert_eq!(
        answer["acknowledged"],
        serde_json::json!([0, 1, 2]),
        "{answer}"
    );
    one_record_per_partition(cluster, topic).await;
}

const SARAMA: &str =
    "sarama is needed: `apt-get install golang-go golang-github-shopify-sarama-dev` (.ci/run)";
const KAFKA_PYTHON: &str = "kafka-python is needed: `pip install kafka-python==3.0.12` (.ci/run)";
const KAFKAJS: &str =
    "kafkajs is needed: `npm ci --prefix tests/clients` (.ci/run), and node on the PATH";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_keeps_one_connection_per_virtual_node_at_one_address() {
    let topic = common::unique_topic("kafka-python");
    let (cluster, kshift) = cluster_and_kshift(&topic, None).await;
    let answer = run_client(
        "python3",
        vec![
            script("kafka_python_producer.py").display().to_string(),
            kshift.bootstrap(),
            topic.clone(),
            PARTITIONS.to_string(),
        ],
        KAFKA_PYTHON,
    )
    .await;
    let expected = virtual_nodes(&kshift);
    let connections = answer["connections"].as_object().expect("connections");
    let by_node: BTreeSet<String> = connections
        .keys()
        .filter(|id| id.parse::<i32>().is_ok_and(|id| id >= 0))
        .cloned()
        .collect();
    assert_eq!(by_node, expected, "one connection per node id: {answer}");
    for id in &expected {
        assert_eq!(connections[id], kshift.bootstrap(), "node {id}: {answer}");
    }
    let brokers = answer["brokers"].as_object().expect("brokers");
    assert_eq!(brokers.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(brokers
        .values()
        .all(|b| b == &Value::String(kshift.bootstrap())));
    one_record_per_partition(&cluster, &topic).await;
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_bootstrapped_at_the_advertised_address_loses_all_but_one_nodes_records() {
    let topic = common::unique_topic("kafkajs-same");
    let (cluster, kshift) = cluster_and_kshift(&topic, None).await;
    let answer = run_kafkajs(kshift.bootstrap(), &topic).await;
    assert_eq!(kafkajs_nodes(&answer), virtual_nodes(&kshift), "{answer}");
    // kafkajs maps every broker whose host:port is its seed's to the seed broker itself...
    assert_eq!(answer["distinct_broker_objects"], 1, "{answer}");
    assert_eq!(answer["seed_is_a_node"], true, "{answer}");
    // ...and then sends one request, for the last node's partition, and calls it done.
    assert_eq!(answer["sent"], 3, "{answer}");
    let acknowledged = answer["acknowledged"].as_array().expect("acknowledged");
    assert_eq!(acknowledged.len(), 1, "{answer}");
    let consumer = common::assigned_consumer(&cluster.bootstrap(), &topic, PARTITIONS, &[]);
    let received = common::consume_until_quiet(&consumer, 1, TIMEOUT).await;
    assert_eq!(
        received.len(),
        1,
        "only one record reached the cluster: {received:?}"
    );
    assert_eq!(Value::from(received[0].partition), acknowledged[0]);
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_keeps_one_broker_per_node_id_when_advertised_differs_from_its_bootstrap() {
    let topic = common::unique_topic("kafkajs-apart");
    // The same listener, named differently from the bootstrap address the client is given.
    let (cluster, kshift) = cluster_and_kshift(&topic, Some("localhost")).await;
    let answer = run_kafkajs(kshift.bootstrap(), &topic).await;
    assert_eq!(kafkajs_nodes(&answer), virtual_nodes(&kshift), "{answer}");
    assert_one_broker_per_node_and_every_record(&answer, &cluster, &topic).await;
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_bootstrapped_at_bootstrap_listen_keeps_one_broker_per_node_and_every_record() {
    let topic = common::unique_topic("kafkajs-bootstrap-listen");
    let bootstrap = format!("127.0.0.1:{}", common::free_port());
    let (cluster, kshift) =
        cluster_and_kshift_with(&topic, None, &format!("bootstrap_listen = \"{bootstrap}\"")).await;
    let answer = run_kafkajs(bootstrap, &topic).await;
    assert_one_broker_per_node_and_every_record(&answer, &cluster, &topic).await;
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarama_keeps_one_connection_per_virtual_node_at_one_address() {
    let topic = common::unique_topic("sarama");
    let (cluster, kshift) = cluster_and_kshift(&topic, None).await;
    // Debian's sarama (1.22) in GOPATH mode: `go run` builds it against /usr/share/gocode.
    let answer = run_client(
        "sh",
        vec![
            "-c".into(),
            "cd \"$1\" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=\"${TMPDIR:-/tmp}/kshift-sarama-cache\" go run main.go \"$2\" \"$3\" \"$4\"".into(),
            "sarama".into(),
            script("sarama").display().to_string(),
            kshift.bootstrap(),
            topic.clone(),
            PARTITIONS.to_string(),
        ],
        SARAMA,
    )
    .await;
    let expected = virtual_nodes(&kshift);
    let brokers = answer["brokers"].as_object().expect("brokers");
    assert_eq!(
        brokers.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "one broker per node id: {answer}"
    );
    for (id, broker) in brokers {
        assert_eq!(
            broker["address"],
            kshift.bootstrap().as_str(),
            "node {id}: {answer}"
        );
        assert_eq!(broker["connected"], true, "node {id}: {answer}");
    }
    // kshift saw one connection per node id, plus sarama's seed broker's.
    let accepted = kshift.state().metrics.client_connections_accepted.get();
    assert_eq!(accepted, 4, "{accepted} connections: {answer}");
    one_record_per_partition(&cluster, &topic).await;
    kshift.shutdown().await;
}
