//! kshift at scale, each load also run straight at the cluster in the same run: 1,000 idle
//! client connections (memory per connection), Metadata for 10,000 partitions over 1,000
//! topics (CPU per request), and 50 idempotent producers, each writing its own 20 topics, all
//! of them together every partition (CPU per record and per produce request, memory). Everything runs in this one process — librdkafka's mock
//! cluster (3 brokers), kshift, the clients — so each figure is a difference between a phase
//! through kshift and the same phase direct: process CPU time (`/proc/self/stat`) and resident
//! memory (`/proc/self/statm`) before and after.
//!
//! `cargo bench --bench scale`. Without `--bench` (as `cargo test --all-targets` runs it) a
//! smoke run of a few seconds: 50 connections, 100 partitions, 5 producers for 1 s.

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::encode;
use harness::mock_cluster::MockKafka;
use harness::Kshift;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Scale {
    idle_connections: usize,
    topics: usize,
    partitions_per_topic: i32,
    metadata_requests: usize,
    producers: usize,
    producer_seconds: f64,
    /// Records per second offered by all producers together.
    records_per_second: u64,
}

fn scale() -> Scale {
    if std::env::args().any(|a| a == "--bench") {
        Scale {
            idle_connections: 1_000,
            topics: 1_000,
            partitions_per_topic: 10,
            metadata_requests: 50,
            producers: 50,
            producer_seconds: 10.0,
            records_per_second: 10_000,
        }
    } else {
        Scale {
            idle_connections: 50,
            topics: 10,
            partitions_per_topic: 10,
            metadata_requests: 2,
            producers: 5,
            producer_seconds: 1.0,
            records_per_second: 2_000,
        }
    }
}

/// This process's CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// This process's resident memory.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn api_versions_frame() -> Vec<u8> {
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("scale"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    encode::length_prefixed(&encode::request(
        ApiKey::ApiVersions,
        3,
        1,
        "idle",
        &request,
    ))
}

/// Opens `count` connections to `address`, each answered one ApiVersions, and keeps them
/// open; returns the resident memory they added, per connection.
async fn idle_connections(address: &str, count: usize) -> (Vec<tokio::net::TcpStream>, f64) {
    let frame = api_versions_frame();
    let before = rss_bytes();
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.write_all(&frame).await.expect("write");
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await.expect("answer");
        let mut body = vec![0u8; i32::from_be_bytes(prefix).max(0) as usize];
        stream.read_exact(&mut body).await.expect("answer body");
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let added = rss_bytes().saturating_sub(before) as f64 / count as f64;
    (open, added)
}

/// CPU per full Metadata request (every topic) and the memory the requests left behind.
fn metadata_requests(bootstrap: &str, requests: usize, topics: usize) -> (Duration, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .expect("consumer");
    let before_rss = rss_bytes();
    let before = cpu_time();
    for _ in 0..requests {
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(30))
            .expect("metadata");
        assert!(
            metadata.topics().len() >= topics,
            "{} topics",
            metadata.topics().len()
        );
    }
    let per_request = (cpu_time() - before) / requests as u32;
    (per_request, rss_bytes() as f64 - before_rss as f64)
}

/// What the producers phase cost: CPU per record, memory added.
struct Produced {
    records: u64,
    cpu: Duration,
    rss_added: f64,
}

fn produce(bootstrap: &str, topics: &[String], scale: &Scale) -> Produced {
    let producers: Vec<ThreadedProducer<DefaultProducerContext>> = (0..scale.producers)
        .map(|_| {
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("broker.address.family", "v4")
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .expect("producer")
        })
        .collect();
    // Metadata and connections first: one record to each producer's first topic.
    let slice = (topics.len() / scale.producers).max(1);
    for (k, producer) in producers.iter().enumerate() {
        let topic = &topics[(k * slice) % topics.len()];
        let _ = producer.send(BaseRecord::<[u8], [u8]>::to(topic).payload(&b"warm"[..]));
        producer
            .flush(Duration::from_secs(30))
            .expect("warm-up flush");
    }
    let payload = [b'x'; 100];
    let total = (scale.records_per_second as f64 * scale.producer_seconds) as u64;
    let before_rss = rss_bytes();
    let before = cpu_time();
    let started = Instant::now();
    let partitions = scale.partitions_per_topic;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / scale.records_per_second as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Producer k writes its own slice of the topics, every partition of them in turn:
        // all producers together write every partition.
        let producers_count = scale.producers as u64;
        let k = i % producers_count;
        let slice = (topics.len() as u64 / producers_count).max(1);
        let round = i / producers_count;
        let producer = &producers[k as usize];
        let topic_index = (k * slice + round % slice) % topics.len() as u64;
        let topic = &topics[topic_index as usize];
        let partition = ((round / slice) % partitions as u64) as i32;
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&payload[..]);
        if producer.send(record).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for producer in &producers {
        producer.flush(Duration::from_secs(60)).expect("flush");
    }
    let produced = Produced {
        records: total,
        cpu: cpu_time() - before,
        rss_added: rss_bytes() as f64 - before_rss as f64,
    };
    drop(producers);
    produced
}

fn main() {
    let scale = scale();
    let runtime = common::runtime();
    let cluster = MockKafka::start(3);
    let topics: Vec<String> = (0..scale.topics).map(|t| format!("scale-{t:04}")).collect();
    for topic in &topics {
        cluster.create_topic(topic, scale.partitions_per_topic);
    }
    let addresses: Vec<String> = cluster
        .bootstrap()
        .split(',')
        .map(|a| a.trim().to_string())
        .collect();
    let config = harness::single_cluster_toml_at(&cluster.bootstrap(), "");
    let proxy = runtime.block_on(Kshift::start_toml(&config));
    let kshift = proxy.bootstrap();
    let partitions = scale.topics * scale.partitions_per_topic as usize;

    println!(
        "scale: {} idle connections; {partitions} partitions over {} topics; {} producers \
         offering {} records/s for {} s",
        scale.idle_connections,
        scale.topics,
        scale.producers,
        scale.records_per_second,
        scale.producer_seconds
    );
    let (direct_idle, direct_per_idle) =
        runtime.block_on(idle_connections(&addresses[0], scale.idle_connections));
    drop(direct_idle);
    let (kshift_idle, kshift_per_idle) =
        runtime.block_on(idle_connections(&kshift, scale.idle_connections));
    drop(kshift_idle);
    println!(
        "idle connections: resident memory per connection: direct {:.1} KiB, kshift {:.1} KiB",
        direct_per_idle / 1024.0,
        kshift_per_idle / 1024.0
    );

    let (direct_metadata, direct_metadata_rss) =
        metadata_requests(&cluster.bootstrap(), scale.metadata_requests, scale.topics);
    let (kshift_metadata, kshift_metadata_rss) =
        metadata_requests(&kshift, scale.metadata_requests, scale.topics);
    println!(
        "metadata of {partitions} partitions: CPU per request direct {:.1} ms, kshift {:.1} ms \
         (the process: client + mock cluster + kshift); memory after: direct {:+.1} MiB, kshift {:+.1} MiB",
        direct_metadata.as_secs_f64() * 1e3,
        kshift_metadata.as_secs_f64() * 1e3,
        direct_metadata_rss / 1048576.0,
        kshift_metadata_rss / 1048576.0
    );

    let produce_requests = |proxy: &Kshift| {
        harness::metric_sum(
            &proxy.state().metrics.exposition(),
            "kshift_client_requests_total",
            &["api=\"Produce\""],
        )
    };
    let direct = produce(&cluster.bootstrap(), &topics, &scale);
    let requests_before = produce_requests(&proxy);
    let through = produce(&kshift, &topics, &scale);
    let requests = produce_requests(&proxy) - requests_before;
    let per_record = |p: &Produced| p.cpu.as_secs_f64() * 1e6 / p.records as f64;
    let kshift_cpu = through.cpu.saturating_sub(direct.cpu);
    println!(
        "{} producers, {} records: process CPU per record direct {:.1} us, through kshift {:.1} us; \
         kshift's share {:.1} us per record, {:.1} us per produce request ({requests:.0} requests); \
         memory added: direct {:+.1} MiB, kshift {:+.1} MiB",
        scale.producers,
        direct.records,
        per_record(&direct),
        per_record(&through),
        kshift_cpu.as_secs_f64() * 1e6 / through.records as f64,
        kshift_cpu.as_secs_f64() * 1e6 / requests.max(1.0),
        direct.rss_added / 1048576.0,
        through.rss_added / 1048576.0
    );
    runtime.block_on(proxy.shutdown());
}
