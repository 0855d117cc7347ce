//! A multi-broker Kafka cluster for tests: librdkafka's in-process mock cluster
//! (`rdkafka::mocking::MockCluster`, real TCP ports on 127.0.0.1) behind a handle that any
//! thread or task may use. Tansu is one broker (node 111); this is where leaders spread over
//! brokers, leader moves, a dead or slow broker, injected errors and placed coordinators are
//! played (DESIGN.md, "Real cluster shapes").
//!
//! `MockCluster` holds a raw pointer and is not `Send`, so it lives on a thread of its own for
//! its whole life; [`MockKafka`] sends that thread one closure per call and waits for its
//! answer. Calls are quick (the mock applies each on its own I/O thread and answers at once),
//! so async tests may call them directly. Dropping the handle destroys the cluster.
//!
//! Known limits: no CreateTopics (topics are made here, or auto-created by Metadata), the
//! replication factor is at most the broker count, and flexible JoinGroup v6 as kafka-python
//! sends it closes the connection (group tests use librdkafka clients).

#![allow(dead_code)]

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

type Cluster = MockCluster<'static, DefaultProducerContext>;

/// One call, run on the cluster's thread.
type Job = Box<dyn FnOnce(&Cluster) + Send>;

/// A running mock cluster; `Send + Sync`. Brokers are numbered `1..=brokers`.
pub struct MockKafka {
    /// To the thread that owns the cluster; `None` once dropping (which ends that thread).
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    bootstrap: String,
    brokers: i32,
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers, each listening on a free port of 127.0.0.1.
    pub fn start(brokers: i32) -> MockKafka {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (started, start) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name(format!("mock-kafka-{brokers}"))
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = started.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = started.send(Ok(cluster.bootstrap_servers()));
                // Ends when the handle drops its sender; the cluster is destroyed with it.
                for job in receiver {
                    job(&cluster);
                }
            })
            .expect("spawn the mock cluster's thread");
        let bootstrap = match start.recv() {
            Ok(Ok(bootstrap)) => bootstrap,
            Ok(Err(error)) => panic!("MockCluster::new({brokers}) failed: {error}"),
            Err(_) => panic!("the mock cluster's thread died while starting"),
        };
        MockKafka {
            jobs: Some(jobs),
            thread: Some(thread),
            bootstrap,
            brokers,
        }
    }

    /// A cluster of `brokers` brokers with `topic` of `partitions` partitions (see
    /// [`MockKafka::create_topic`]), once its metadata shows every partition led.
    pub async fn with_topic(brokers: i32, topic: &str, partitions: i32) -> MockKafka {
        let cluster = MockKafka::start(brokers);
        cluster.create_topic(topic, partitions);
        super::wait_for_topic(&cluster.bootstrap(), topic, partitions).await;
        cluster
    }

    /// `bootstrap.servers` of every broker, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The broker ids, `1..=brokers`.
    pub fn broker_ids(&self) -> std::ops::RangeInclusive<i32> {
        1..=self.brokers
    }

    /// Creates `topic` with `partitions` partitions of one replica each; partition `p` is led
    /// by broker `p % brokers + 1`.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let name = topic.to_string();
        self.call(move |cluster| cluster.create_topic(&name, partitions, 1))
            .unwrap_or_else(|error| panic!("create mock topic {topic}: {error}"));
    }

    /// Makes `broker` the leader of `topic` partition `partition` (its leader epoch is bumped;
    /// the old leader answers NOT_LEADER_OR_FOLLOWER from now on).
    pub fn move_leader(&self, topic: &str, partition: i32, broker: i32) {
        let name = topic.to_string();
        self.call(move |cluster| cluster.partition_leader(&name, partition, Some(broker)))
            .unwrap_or_else(|error| {
                panic!("move leader of {topic}/{partition} to {broker}: {error}")
            });
    }

    /// Closes `broker`'s connections and refuses new ones (-1: every broker). Leaders stay.
    pub fn broker_down(&self, broker: i32) {
        self.call(move |cluster| cluster.broker_down(broker))
            .unwrap_or_else(|error| panic!("broker {broker} down: {error}"));
    }

    /// Lets `broker` accept connections again (-1: every broker).
    pub fn broker_up(&self, broker: i32) {
        self.call(move |cluster| cluster.broker_up(broker))
            .unwrap_or_else(|error| panic!("broker {broker} up: {error}"));
    }

    /// Delays every answer of `broker` (-1: every broker) by `round_trip`.
    pub fn set_round_trip(&self, broker: i32, round_trip: Duration) {
        self.call(move |cluster| cluster.broker_round_trip_time(broker, round_trip))
            .unwrap_or_else(|error| panic!("round trip of broker {broker}: {error}"));
    }

    /// Makes the next requests of `api_key` (on any broker) fail with `errors`, one each, in
    /// order. `RD_KAFKA_RESP_ERR__TRANSPORT` closes the connection instead.
    pub fn request_errors(&self, api_key: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let errors = errors.to_vec();
        self.call(move |cluster| cluster.request_errors(api_key, &errors));
    }

    /// Forgets the errors still pushed for `api_key`.
    pub fn clear_request_errors(&self, api_key: RDKafkaApiKey) {
        self.call(move |cluster| cluster.clear_request_errors(api_key));
    }

    /// Places the coordinator of a group (`MockCoordinator::Group`) or a transactional id
    /// (`MockCoordinator::Transaction`) on `broker`.
    pub fn coordinator(&self, key: MockCoordinator, broker: i32) {
        self.call(move |cluster| cluster.coordinator(key, broker))
            .unwrap_or_else(|error| panic!("place coordinator on {broker}: {error}"));
    }

    /// Runs `job` on the cluster's thread and returns what it returned.
    fn call<T: Send + 'static>(&self, job: impl FnOnce(&Cluster) -> T + Send + 'static) -> T {
        let (answer, answered) = mpsc::channel();
        let job: Job = Box::new(move |cluster| {
            let _ = answer.send(job(cluster));
        });
        self.jobs
            .as_ref()
            .expect("mock cluster running until dropped")
            .send(job)
            .expect("the mock cluster's thread is gone");
        answered
            .recv()
            .expect("the mock cluster's thread died during a call")
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
