//! One slow broker of three: the throughput a producer writing every partition round-robin
//! gets on the partitions of the two healthy brokers, straight to the cluster and through
//! kshift, in the same run. With one virtual node per real broker the client's requests to
//! the healthy brokers never carry a slow broker's partition, so kshift should keep close to
//! the direct client (issue 16's target: ≥ 0.9×); with one virtual broker it got 0.25×.
//!
//! The cluster is librdkafka's mock cluster (`tests/common/mock_cluster.rs`): 3 brokers, a
//! topic of 6 partitions (partition p led by broker p % 3 + 1), broker 1 answering every
//! request `--slow-ms` late (default 1000). Each phase runs a fresh librdkafka producer
//! (idempotent, so at most 5 requests in flight per connection; acks=all, linger 5 ms) for
//! `--seconds` after a 2 s warm-up; records go to partition
//! i % 6 in turn, 100 bytes each, as fast as the producer takes them (or at `--rate` msg/s).
//! Delivery reports are counted per partition.
//!
//! `cargo bench --bench slow_broker [-- --seconds 20 --slow-ms 1000 --rate 0]`. Without
//! `--bench` (as `cargo test --all-targets` runs it) it is a smoke run of about 5 seconds
//! (broker 1 200 ms late, 1 s warm-up, 0.5 s measured, nothing asserted).

#[path = "common/args.rs"]
mod args;
mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::mock_cluster::MockKafka;
use harness::Kshift;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

const PARTITIONS: usize = 6;
const SLOW_BROKER: i32 = 1;

/// Delivered records per partition.
#[derive(Clone, Default)]
struct Counting {
    delivered: Arc<[AtomicU64; PARTITIONS]>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(message) = result {
            use rdkafka::message::Message;
            if let Some(count) = usize::try_from(message.partition())
                .ok()
                .and_then(|p| self.delivered.get(p))
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Counting {
    /// Records delivered so far to partitions of the healthy brokers.
    fn healthy(&self) -> u64 {
        (0..PARTITIONS)
            .filter(|p| !is_slow(*p))
            .map(|p| self.delivered[p].load(Ordering::Relaxed))
            .sum()
    }

    fn slow(&self) -> u64 {
        (0..PARTITIONS)
            .filter(|p| is_slow(*p))
            .map(|p| self.delivered[p].load(Ordering::Relaxed))
            .sum()
    }
}

fn is_slow(partition: usize) -> bool {
    partition % 3 + 1 == SLOW_BROKER as usize
}

struct Settings {
    /// A full run (`--bench`), not the smoke run of `cargo test`.
    full: bool,
    warm_up: Duration,
    seconds: f64,
    slow: Duration,
    /// Offered records per second; 0: as fast as the producer takes them.
    rate: u64,
}

fn settings() -> Settings {
    let args = args::Args::from_env();
    let full = args.full();
    let value = |name: &str| args.value(name);
    Settings {
        full,
        warm_up: Duration::from_millis(if full { 2000 } else { 1000 }),
        seconds: value("--seconds").unwrap_or(if full { 20.0 } else { 0.5 }),
        slow: Duration::from_millis(
            value("--slow-ms").unwrap_or(if full { 1000.0 } else { 200.0 }) as u64,
        ),
        rate: value("--rate").unwrap_or(0.0) as u64,
    }
}

/// What one phase measured.
struct Phase {
    healthy_per_second: f64,
    slow_per_second: f64,
}

/// Runs a producer against `bootstrap` for a warm-up (2 s; 0.3 s in a smoke run) plus
/// `settings.seconds`.
fn run_phase(bootstrap: &str, topic: &str, settings: &Settings) -> Phase {
    let context = Counting::default();
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        // As Java's producer by default since Kafka 3.0: at most 5 requests in flight per
        // connection, which is what makes a request held by the slow broker cost the others.
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .set("queue.buffering.max.messages", "5000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create_with_context(context.clone())
        .expect("producer");
    let payload = [b'x'; 100];
    let started = Instant::now();
    let warm_until = started + settings.warm_up;
    let end = warm_until + Duration::from_secs_f64(settings.seconds);
    let mut measured_from = None;
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if measured_from.is_none() && now >= warm_until {
            measured_from = Some((now, context.healthy(), context.slow()));
        }
        if settings.rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / settings.rate as f64);
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let partition = (sent % PARTITIONS as u64) as i32;
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&payload[..]);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((error, _)) => panic!("send: {error}"),
        }
    }
    let (from, healthy_before, slow_before) = measured_from.unwrap_or((started, 0, 0));
    let elapsed = from.elapsed().as_secs_f64();
    let phase = Phase {
        healthy_per_second: (context.healthy() - healthy_before) as f64 / elapsed,
        slow_per_second: (context.slow() - slow_before) as f64 / elapsed,
    };
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    drop(producer);
    phase
}

fn main() {
    let settings = settings();
    let runtime = common::runtime();
    let cluster = MockKafka::start(3);
    let topic = "slow-broker-bench";
    cluster.create_topic(topic, PARTITIONS as i32);
    let config = harness::single_cluster_toml_at(&cluster.bootstrap(), "");
    let proxy = runtime.block_on(Kshift::start_toml(&config));
    let through_kshift = proxy.bootstrap();
    cluster.set_round_trip(SLOW_BROKER, settings.slow);

    let direct = run_phase(&cluster.bootstrap(), topic, &settings);
    let kshift = run_phase(&through_kshift, topic, &settings);
    println!(
        "slow broker: broker {SLOW_BROKER} of 3 answers {} ms late; {} s measured per phase; offered {}",
        settings.slow.as_millis(),
        settings.seconds,
        if settings.rate == 0 {
            "as fast as possible".to_string()
        } else {
            format!("{} msg/s", settings.rate)
        }
    );
    println!("| target | healthy partitions msg/s | slow partitions msg/s |");
    println!("|---|---|---|");
    for (name, phase) in [("direct", &direct), ("kshift", &kshift)] {
        println!(
            "| {name} | {:.0} | {:.0} |",
            phase.healthy_per_second, phase.slow_per_second
        );
    }
    let ratio = kshift.healthy_per_second / direct.healthy_per_second.max(1.0);
    println!("kshift / direct on the healthy partitions: {ratio:.2}x (target >= 0.9x)");
    // A smoke run (debug build, half a second) only shows that the bench runs.
    assert!(
        !settings.full || (kshift.healthy_per_second > 0.0 && direct.healthy_per_second > 0.0),
        "no record delivered to a healthy partition"
    );
    runtime.block_on(proxy.shutdown());
}
