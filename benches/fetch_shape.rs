//! The read path at a production shape: a librdkafka consumer reading a 6-partition topic
//! spread over 3 brokers, straight from the cluster and through kshift, in alternating
//! rounds of the same run; then again with one broker answering every request `--slow-ms`
//! late (a rolling restart's slow broker), counting only the healthy brokers' partitions.
//!
//! The cluster is librdkafka's mock cluster (`tests/common/mock_cluster.rs`): partition p
//! led by broker p % 3 + 1. Its fetch answers in microseconds, where Tansu's takes 1–3 ms
//! and varies 2x run to run (BENCHMARKS.md, "The fetch path"), so a proxy's cost shows.
//! The consumer opens one connection per broker (per virtual node through kshift), so every
//! fetch it sends reaches one broker: the forwarded, undecoded path.
//!
//! A round's rate runs from the consumer's creation, as a restarted consumer sees it: at
//! 60,000 records its start-up (metadata, offsets, first fetches) is most of the time,
//! since fetched records drain at over a million a second. The mock's fetch cost grows with
//! its log (300,000 records were not read in 120 s), so keep `--records` near the default.
//!
//! `cargo bench --bench fetch_shape [-- --records 60000 --rounds 3 --slow-ms 1000
//! --slow-broker 1]`.
//!
//! `-- --haproxy` runs issue 18's fetch cell against an L4 proxy instead: one mock broker with a
//! one-partition topic, read by `kshift bench --mode fetch --fetch-from-bootstrap` (raw
//! Fetch requests of at most 16 KB, one in flight, on one connection) through haproxy (TCP
//! mode, the baseline), straight from the broker and through kshift, targets taking turns.
//! It needs haproxy (`apt-get install haproxy`) and fails without it; `--fetch-records`
//! (default 20,000) and `--fetch-rounds` (default 10) size it. With `--hold-broker SECONDS`
//! it only fills the broker, prints `mock broker ADDRESS` and keeps it that long, for a
//! proxy measured as its own process (`scripts/fetch-cost.sh`).
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke run of a few
//! seconds (6,000 records, one round, broker 1 200 ms late), which asserts that every record
//! is read through both targets.

#[path = "common/args.rs"]
mod args;
mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::mock_cluster::MockKafka;
use harness::Kshift;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 6;
const TOPIC: &str = "fetch-shape-bench";

struct Settings {
    records: u64,
    rounds: u32,
    slow: Duration,
    /// Which broker is slow in the second cell.
    slow_broker: i32,
    /// Run the raw-fetch cell against haproxy ([`haproxy_cell`]).
    haproxy: bool,
    fetch_records: u64,
    fetch_rounds: u32,
    /// With `--haproxy`: only fill the broker, print its address and keep it this long.
    hold_broker: Option<Duration>,
}

fn settings() -> Settings {
    let args = args::Args::from_env();
    let full = args.full();
    let value = |name: &str| args.value(name);
    Settings {
        records: value("--records").unwrap_or(if full { 60_000.0 } else { 6_000.0 }) as u64,
        rounds: value("--rounds").unwrap_or(if full { 3.0 } else { 1.0 }) as u32,
        slow: Duration::from_millis(
            value("--slow-ms").unwrap_or(if full { 1000.0 } else { 200.0 }) as u64,
        ),
        slow_broker: value("--slow-broker").unwrap_or(1.0) as i32,
        haproxy: args.flag("--haproxy"),
        fetch_records: value("--fetch-records").unwrap_or(20_000.0) as u64,
        fetch_rounds: value("--fetch-rounds").unwrap_or(10.0) as u32,
        hold_broker: value("--hold-broker").map(Duration::from_secs_f64),
    }
}

/// Writes `records` records of 100 bytes to `topic`, spread evenly over its `partitions`,
/// in batches of up to `batch_bytes`.
fn fill(bootstrap: &str, topic: &str, partitions: i32, records: u64, batch_bytes: u32) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("batch.size", batch_bytes.to_string())
        .set("queue.buffering.max.messages", "5000000")
        .create()
        .expect("producer");
    let payload = [b'x'; 100];
    for sent in 0..records {
        let partition = (sent % partitions as u64) as i32;
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&payload[..]);
        while let Err((error, returned)) = producer.send(record) {
            assert!(
                matches!(
                    error,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ),
                "send: {error}"
            );
            record = returned;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every record written");
}

/// Reads every record of the `counted` partitions from the beginning with a fresh consumer
/// assigned all partitions; records per second over those partitions, from the consumer's
/// creation (its start-up, metadata and offsets included, as a restarted consumer sees it).
fn read(bootstrap: &str, records: u64, counted: impl Fn(i32) -> bool) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fetch-shape-bench")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let per_partition = records / PARTITIONS as u64;
    let wanted = per_partition * (0..PARTITIONS).filter(|&p| counted(p)).count() as u64;
    let started = Instant::now();
    let mut read = 0;
    while read < wanted {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{bootstrap}: read {read} of {wanted} records in 120 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            if counted(message.partition()) {
                read += 1;
            }
        }
    }
    read as f64 / started.elapsed().as_secs_f64()
}

/// Alternating rounds of `read` direct and through kshift; prints each round's rates and
/// their ratio, returns the mean ratio.
fn cell(
    name: &str,
    direct: &str,
    kshift: &str,
    settings: &Settings,
    counted: impl Fn(i32) -> bool + Copy,
) -> f64 {
    let mut ratios = 0.0;
    for round in 1..=settings.rounds {
        let direct_rate = read(direct, settings.records, counted);
        let kshift_rate = read(kshift, settings.records, counted);
        let ratio = kshift_rate / direct_rate.max(1.0);
        println!("| {name} | {round} | {direct_rate:.0} | {kshift_rate:.0} | {ratio:.2}x |");
        ratios += ratio;
    }
    ratios / f64::from(settings.rounds.max(1))
}

/// haproxy in TCP mode from a free port to `upstream`; killed when dropped.
struct Haproxy {
    child: std::process::Child,
    address: String,
    _config: tempfile::NamedTempFile,
}

impl Haproxy {
    fn start(upstream: &str) -> Haproxy {
        use std::io::Write as _;
        let port = harness::free_port();
        let mut config = tempfile::NamedTempFile::new().expect("haproxy config file");
        write!(
            config,
            "global\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\nlisten kafka\n  bind 127.0.0.1:{port}\n  \
             server b {upstream}\n"
        )
        .expect("write the haproxy config");
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("--haproxy needs haproxy on PATH (apt-get install haproxy): {error}")
            });
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not listen on {address} in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            address,
            _config: config,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 18's fetch cell: raw 16 KB fetches, one in flight, through haproxy, direct and
/// through kshift, from one mock broker (`kshift bench --mode fetch --fetch-from-bootstrap`,
/// haproxy first, so its ratios are to haproxy). Prints the bench's report.
fn haproxy_cell(runtime: &tokio::runtime::Runtime, settings: &Settings) {
    let cluster = MockKafka::start(1);
    let topic = "fetch-l4-bench";
    cluster.create_topic(topic, 1);
    let broker = cluster.bootstrap();
    // Batches of about one fetch (16 KB): a fetch answers at least one whole batch.
    fill(&broker, topic, 1, settings.fetch_records, 16_384);
    if let Some(hold) = settings.hold_broker {
        // For a proxy measured as its own process (`scripts/fetch-cost.sh`).
        println!("mock broker {broker}");
        std::thread::sleep(hold);
        return;
    }
    let proxy = runtime.block_on(Kshift::start_toml(&harness::single_cluster_toml_at(
        &broker, "",
    )));
    let haproxy = Haproxy::start(&broker);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args([
            "bench",
            "--mode",
            "fetch",
            "--fetch-from-bootstrap",
            "--interval",
            "0",
        ])
        .args(["--target", &format!("haproxy={}", haproxy.address)])
        .args(["--target", &format!("direct={broker}")])
        .args(["--target", &format!("kshift={}", proxy.bootstrap())])
        // The mock broker has no CreateTopics; the topic is made and filled above.
        .args(["--topic", topic, "--size", "100", "--skip-fill"])
        .args(["--fetch-max-bytes", "16384"])
        .args(["--messages", &settings.fetch_records.to_string()])
        .args(["--rounds", &settings.fetch_rounds.to_string()])
        .output()
        .expect("run kshift bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kshift bench --mode fetch failed:\n{stdout}\n{stderr}"
    );
    println!(
        "\nraw fetches from one mock broker: {} records of 100 B per target and round, \
         16 KB per fetch, 1 in flight, {} rounds, ratios to haproxy",
        settings.fetch_records, settings.fetch_rounds
    );
    for line in stderr.lines().filter(|line| line.starts_with("round ")) {
        println!("{line}");
    }
    print!("{stdout}");
    drop(haproxy);
    runtime.block_on(proxy.shutdown());
}

fn main() {
    let settings = settings();
    let runtime = common::runtime();
    if settings.haproxy {
        haproxy_cell(&runtime, &settings);
        return;
    }
    let cluster = MockKafka::start(3);
    cluster.create_topic(TOPIC, PARTITIONS);
    let config = harness::single_cluster_toml_at(&cluster.bootstrap(), "");
    let proxy = runtime.block_on(Kshift::start_toml(&config));
    let direct = cluster.bootstrap();
    let through_kshift = proxy.bootstrap();
    // Large batches: the mock broker answers a fetch with one batch per partition.
    fill(&direct, TOPIC, PARTITIONS, settings.records, 1_000_000);

    println!(
        "fetch shape: {} records of 100 B over {PARTITIONS} partitions of 3 mock brokers, \
         {} rounds per cell, direct and through kshift alternating",
        settings.records, settings.rounds
    );
    println!("| cell | round | direct msg/s | kshift msg/s | kshift / direct |");
    println!("|---|---|---|---|---|");
    let healthy = cell(
        "3 healthy brokers",
        &direct,
        &through_kshift,
        &settings,
        |_| true,
    );
    let slow_broker = settings.slow_broker;
    cluster.set_round_trip(slow_broker, settings.slow);
    let slow_name = format!("broker {slow_broker} {} ms late", settings.slow.as_millis());
    // Partition p is led by broker p % 3 + 1.
    let with_slow = cell(&slow_name, &direct, &through_kshift, &settings, |p| {
        p % 3 + 1 != slow_broker
    });
    println!(
        "mean kshift / direct: {healthy:.2}x with 3 healthy brokers; {with_slow:.2}x on the \
         healthy brokers' partitions with one slow"
    );
    runtime.block_on(proxy.shutdown());
}
