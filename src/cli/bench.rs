//! `kshift bench`: produce latency and throughput of several targets (a broker directly,
//! kshift, an L4 proxy …) measured side by side, in interleaved rounds so that drift of the
//! machine hits every target alike.
//!
//! Closed loop: `--inflight N` records outstanding per target at any time (`--inflight 1`
//! is the pure per-hop cost); latency is from `send` to the delivery report. Open loop
//! (`--rate R`): records are due at a fixed rate and latency runs from when each was due,
//! so a stall is charged to every record it held up (no coordinated omission). Latencies go
//! to an HdrHistogram per target; figures are ratios to the first target, same run.
//!
//! Modes: `produce` (latency to the delivery report), `e2e` (latency from send — or due
//! time — to the record's arrival at a consumer of the same target: each payload starts with
//! its send time), `consume` (read throughput of records produced beforehand, untimed, by a
//! librdkafka consumer), `fetch` (the same records read by a loop of Fetch requests, one in
//! flight: each fetch's round trip and the read rate).
//! Every `--interval` seconds a line in kafka-producer-perf-test's style shows the window's
//! rate and latencies; `--plot FILE.svg` draws every target's latency percentile curve.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use super::progress::Progress;

/// What to measure: `kshift bench`'s flags. The field docs are the `--help` text.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// A target to measure, NAME=HOST:PORT (repeatable; the first is the baseline).
    #[arg(long = "target", value_parser = parse_target, required = true)]
    pub targets: Vec<(String, String)>,
    /// Topic to produce to (created on each target if missing).
    #[arg(long, default_value = "kshift-bench")]
    pub topic: String,
    /// Records per target, over all rounds.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Producer acks: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Records outstanding per target (1: the pure round-trip cost).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Rounds; targets take turns every round.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Producer linger.ms.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u32,
    /// Producer compression.type.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Also write the results as JSON (OpenMessaging-Benchmark-style field names).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    // Closed loop when absent.
    /// Open loop: records per second per target (latency from each record's due time).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds to run each target (over all rounds) instead of --messages.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// produce: latency to the delivery report; e2e: send to arrival at a consumer;
    /// consume: read throughput of records produced first.
    #[arg(long, value_enum, default_value = "produce")]
    pub mode: Mode,
    // A negative number is taken as 0.
    /// Seconds between interval lines (0: none).
    #[arg(long, default_value = "5", value_parser = parse_interval)]
    pub interval: Duration,
    /// Draw every target's latency percentile curve into this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// fetch: the most bytes one Fetch asks of the partition (max.partition.fetch.bytes).
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_max_bytes: i32,
    /// consume, fetch: read records already in the topic (from an earlier run); produce none
    /// and create no topic.
    #[arg(long)]
    pub skip_fill: bool,
    /// fetch: send the fetches to the bootstrap address itself, not to the leader metadata
    /// names (a broker behind an L4 proxy advertises the proxy's address: with this, one
    /// broker's log can be read directly, through the L4 proxy and through kshift alike).
    #[arg(long)]
    pub fetch_from_bootstrap: bool,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Produce latency: send to delivery report.
    Produce,
    /// End to end: send (or due time) to arrival at a consumer of the same target.
    E2e,
    /// Consume throughput of records produced beforehand.
    Consume,
    /// Fetch round trips and read rate of records produced beforehand, read by Fetch
    /// requests of the bench's own, one in flight.
    Fetch,
}

/// How records are offered to a target in one round.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// Closed loop: this many records outstanding. Open loop: unbounded.
    inflight: usize,
    rate: Option<f64>,
    /// Stop after this many records…
    count: u64,
    /// …or once this long has passed, whichever is first.
    budget: Option<Duration>,
}

/// Parses `NAME=HOST:PORT`.
fn parse_target(text: &str) -> Result<(String, String), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=HOST:PORT"))?;
    kshift::config::parse_host_port(address)?;
    Ok((name.to_string(), address.to_string()))
}

/// Parses `--duration`: seconds, as a decimal number.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{e}"))
}

/// Parses `--interval`: seconds, as a decimal number; below 0 is 0.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(seconds.max(0.0)).map_err(|e| format!("{e}"))
}

struct Target {
    name: String,
    /// e2e: marks this target's records (targets often share one broker and topic).
    tag: u64,
    bootstrap: String,
    producer: FutureProducer,
    /// e2e: reads what the producer sends, from the end of the topic on.
    consumer: Option<StreamConsumer>,
    latency: Histogram<u64>,
    sent: u64,
    busy: Duration,
}

/// Wall-clock microseconds, as e2e payloads carry them.
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    if options.targets.is_empty() {
        bail!("give at least one --target NAME=HOST:PORT");
    }
    let mut targets = Vec::new();
    for (name, bootstrap) in &options.targets {
        // With --skip-fill the records, and so the topic, are there already.
        if !options.skip_fill {
            create_topic(bootstrap, &options.topic)
                .await
                .with_context(|| format!("target {name} ({bootstrap})"))?;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", &options.acks)
            .set("linger.ms", options.linger_ms.to_string())
            .set("compression.type", &options.compression)
            .set("message.timeout.ms", "30000")
            .create()
            .with_context(|| format!("producer for {name}"))?;
        let consumer = match options.mode {
            Mode::E2e => Some(tail_consumer(bootstrap, &options.topic).await?),
            _ => None,
        };
        targets.push(Target {
            tag: targets.len() as u64 + 1,
            name: name.clone(),
            bootstrap: bootstrap.clone(),
            producer,
            consumer,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            sent: 0,
            busy: Duration::ZERO,
        });
    }
    if options.mode == Mode::E2e && options.size < 16 {
        bail!("--mode e2e needs --size of at least 16 bytes (each payload carries its send time and target)");
    }
    let payload = vec![b'x'; options.size];
    let rounds = options.rounds.max(1);
    match options.mode {
        Mode::Consume => return consume(targets, &options, &payload).await,
        Mode::Fetch => return fetch(targets, &options, &payload).await,
        Mode::Produce | Mode::E2e => {}
    }
    // Warm-up: connections, metadata, producer ids.
    let warm_up = Load {
        inflight: options.inflight,
        rate: None,
        count: 50.min(options.messages),
        budget: None,
    };
    for target in &mut targets {
        measure(target, &options, &payload, warm_up, false).await?;
    }
    let load = Load {
        inflight: options.inflight,
        rate: options.rate,
        count: match options.duration {
            Some(_) => u64::MAX,
            None => (options.messages / u64::from(rounds)).max(1),
        },
        budget: options.duration.map(|d| d / rounds),
    };
    let mut progress = Progress::new("bench", u64::from(rounds) * targets.len() as u64);
    let mut done = 0;
    for round in 1..=rounds {
        for target in &mut targets {
            measure(target, &options, &payload, load, true).await?;
            done += 1;
            progress.update(done);
            let p = |q: f64| target.latency.value_at_quantile(q);
            eprintln!(
                "round {round}/{} {:>10}: {} records sent, p50 {} us, p99 {} us, max {} us",
                options.rounds,
                target.name,
                target.sent,
                p(0.5),
                p(0.99),
                target.latency.max()
            );
        }
    }
    progress.finish(done);
    report(&targets, &options)
}

async fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    super::create_topic(&admin, topic, 1, topic).await
}

/// Offers records to `target` as `load` says; records latencies if `record`. Closed loop:
/// latency from send to delivery. Open loop: from the intended send time, so a stall
/// counts against every record it delayed.
async fn measure(
    target: &mut Target,
    options: &BenchOptions,
    payload: &[u8],
    load: Load,
    record: bool,
) -> anyhow::Result<()> {
    let topic = options.topic.as_str();
    let e2e = options.mode == Mode::E2e;
    let started = Instant::now();
    let wall_started = now_micros();
    let mut payload = payload.to_vec();
    let mut window = Window::new(&target.name, options.interval, options.size);
    let mut received = 0u64;
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate.max(0.001)));
    let mut outstanding = FuturesUnordered::new();
    let mut next = 0u64;
    let more = |next: u64| next < load.count && load.budget.is_none_or(|b| started.elapsed() < b);
    loop {
        // Closed loop: e2e counts a record in flight until a consumer has it.
        let in_flight = if e2e {
            usize::try_from(next - received).unwrap_or(usize::MAX)
        } else {
            outstanding.len()
        };
        let may_send = more(next) && (interval.is_some() || in_flight < load.inflight.max(1));
        let waiting_for_consumer = e2e && received < next;
        if !may_send && outstanding.is_empty() && !waiting_for_consumer {
            break;
        }
        let consumer = target.consumer.as_ref();
        let due = interval.map_or(started, |interval| started + interval * next as u32);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()), if may_send => {
                let key = next.to_string();
                // Open loop: the clock starts when the record was due, not when sent.
                let since = if interval.is_some() { due } else { Instant::now() };
                if e2e {
                    let sent_at = wall_started + since.duration_since(started).as_micros() as u64;
                    payload[..8].copy_from_slice(&sent_at.to_be_bytes());
                    payload[8..16].copy_from_slice(&target.tag.to_be_bytes());
                }
                let delivery = target
                    .producer
                    .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
                    .map_err(|(error, _)| anyhow!("{}: cannot queue: {error}", target.name))?;
                outstanding.push(async move { (since, delivery.await) });
                next += 1;
            }
            Some((since, delivered)) = outstanding.next(), if !outstanding.is_empty() => {
                delivered
                    .map_err(|_| anyhow!("{}: delivery cancelled", target.name))?
                    .map_err(|(error, _)| anyhow!("{}: delivery failed: {error}", target.name))?;
                if record && !e2e {
                    let micros = since.elapsed().as_micros().max(1) as u64;
                    target.latency.saturating_record(micros);
                    window.record(micros);
                }
            }
            message = async { consumer.map(|c| c.recv()).expect("e2e consumer").await }, if waiting_for_consumer => {
                let message = message.map_err(|error| anyhow!("{}: consumer: {error}", target.name))?;
                let field = |range: std::ops::Range<usize>| {
                    message
                        .payload()
                        .and_then(|p| p.get(range))
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_be_bytes)
                };
                if field(8..16) != target.tag {
                    continue; // another target's record on the same topic
                }
                received += 1;
                let sent_at = field(0..8);
                if record {
                    let micros = now_micros().saturating_sub(sent_at).max(1);
                    target.latency.saturating_record(micros);
                    window.record(micros);
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(30)), if !may_send => {
                bail!("{}: nothing delivered or received for 30 s", target.name);
            }
        }
    }
    if record {
        target.sent += next;
        target.busy += started.elapsed();
    }
    Ok(())
}

/// The interval lines: records, rate and latencies of the last `every`.
struct Window<'a> {
    name: &'a str,
    every: Duration,
    size: usize,
    started: Instant,
    latency: Histogram<u64>,
}

impl<'a> Window<'a> {
    fn new(name: &'a str, every: Duration, size: usize) -> Window<'a> {
        Window {
            name,
            every,
            size,
            started: Instant::now(),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn record(&mut self, micros: u64) {
        self.latency.saturating_record(micros);
        let elapsed = self.started.elapsed();
        if elapsed < self.every || self.every.is_zero() {
            return;
        }
        let count = self.latency.len();
        let rate = count as f64 / elapsed.as_secs_f64();
        eprintln!(
            "{}: {count} records sent, {rate:.1} records/sec ({:.2} MB/sec), {:.1} us avg latency, p50 {} us, p99 {} us, {} us max latency.",
            self.name,
            rate * self.size as f64 / 1e6,
            self.latency.mean(),
            self.latency.value_at_quantile(0.5),
            self.latency.value_at_quantile(0.99),
            self.latency.max()
        );
        self.latency.reset();
        self.started = Instant::now();
    }
}

/// A consumer of partition 0 of `topic` from its current end, ready to receive.
async fn tail_consumer(bootstrap: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kshift-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("e2e consumer")?;
    // The end as an explicit offset: some brokers resolve "latest" differently.
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .context("e2e consumer: end of the topic")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(end))?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Produces `messages` records to each target, untimed: what `consume` and `fetch` read
/// (none with `--skip-fill`).
async fn fill(
    targets: &mut [Target],
    options: &BenchOptions,
    payload: &[u8],
) -> anyhow::Result<()> {
    if options.skip_fill {
        return Ok(());
    }
    let fill = Load {
        inflight: 1000,
        rate: None,
        count: options.messages,
        budget: None,
    };
    let produce_only = BenchOptions {
        mode: Mode::Produce,
        ..options.clone()
    };
    for target in targets {
        measure(target, &produce_only, payload, fill, false).await?;
    }
    Ok(())
}

/// Reads back, once per round and target (targets taking turns), the records [`fill`]
/// wrote: `read_round` reads a target's `messages` records, recording its latencies, and
/// says how many it read, how, for the round's line, and how long the reading itself took
/// when the round's set-up is not to count (`None`: the whole round counts).
async fn read_rounds(
    mut targets: Vec<Target>,
    options: &BenchOptions,
    payload: &[u8],
    mut read_round: impl AsyncFnMut(&mut Target) -> anyhow::Result<(u64, String, Option<Duration>)>,
) -> anyhow::Result<()> {
    fill(&mut targets, options, payload).await?;
    let rounds = options.rounds.max(1);
    let mut progress = Progress::new("bench", u64::from(rounds) * targets.len() as u64);
    let mut done = 0;
    for round in 1..=rounds {
        for target in &mut targets {
            let started = Instant::now();
            let (records, how, reading) = read_round(target)
                .await
                .with_context(|| format!("target {}", target.name))?;
            let busy = reading.unwrap_or_else(|| started.elapsed());
            target.sent += records;
            target.busy += busy;
            eprintln!(
                "round {round}/{rounds} {:>10}: {records} records read in {:.3} s{how}",
                target.name,
                busy.as_secs_f64()
            );
            done += 1;
            progress.update(done);
        }
    }
    progress.finish(done);
    report(&targets, options)
}

/// `--mode consume`: produces `messages` records per target (untimed), then a librdkafka
/// consumer reads them back from the start once per round; latency is the gap before
/// each record.
async fn consume(
    targets: Vec<Target>,
    options: &BenchOptions,
    payload: &[u8],
) -> anyhow::Result<()> {
    read_rounds(targets, options, payload, async |target: &mut Target| {
        consume_round(target, options)
            .await
            .map(|records| (records, String::new(), None))
    })
    .await
}

/// One round of [`consume`]: the records read.
async fn consume_round(target: &mut Target, options: &BenchOptions) -> anyhow::Result<u64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set("group.id", "kshift-bench")
        .set("enable.auto.commit", "false")
        .create()
        .context("consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&options.topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut previous = Instant::now();
    for _ in 0..options.messages {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| anyhow!("no record for 30 s"))?
            .map_err(|error| anyhow!("consumer: {error}"))?;
        // The gap before each record: how long the reader waited for it.
        target
            .latency
            .saturating_record(previous.elapsed().as_micros().max(1) as u64);
        previous = Instant::now();
    }
    Ok(options.messages)
}

/// `--mode fetch`: produces `messages` records per target (untimed), then, once per round,
/// reads them back from the partition's log start with Fetch requests of its own: one in
/// flight, on one new connection to the partition's leader (or to the bootstrap address,
/// `--fetch-from-bootstrap`), each asking for the next offset. Latency is each fetch's
/// round trip; the rate is records read per second.
///
/// No consumer library sits between the bench and the target, so what is measured is the
/// target's fetch path. A librdkafka consumer reading from Tansu gave rates 5–10x apart from
/// one run to the next, with or without a proxy: its prefetch queue meeting Tansu's
/// long-poll timing, not the path under test.
async fn fetch(targets: Vec<Target>, options: &BenchOptions, payload: &[u8]) -> anyhow::Result<()> {
    read_rounds(targets, options, payload, async |target: &mut Target| {
        let (records, fetches, reading) = fetch_round(target, options).await?;
        Ok((records, format!(" ({fetches} fetches)"), Some(reading)))
    })
    .await
}

/// One round of [`fetch`]: `messages` records read from partition 0's log start; the
/// records, the fetches it took and how long they took (after the round's connection,
/// metadata and log-start lookup: the rate is the fetch path's own).
async fn fetch_round(
    target: &mut Target,
    options: &BenchOptions,
) -> anyhow::Result<(u64, u64, Duration)> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kshift::cluster::{Cluster, ConnectionSettings};

    let settings = ConnectionSettings {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        metadata_max_age: Duration::from_secs(300),
    };
    let cluster = Cluster::new(
        0,
        &target.name,
        vec![target.bootstrap.clone()],
        settings,
        kshift::security::BackendSecurity::none(),
        std::sync::Arc::new(kshift::metrics::Metrics::new()),
        0,
    );
    let topic = options.topic.as_str();
    let leader = cluster
        .leader(topic, 0)
        .await?
        .ok_or_else(|| anyhow!("{topic}[0] has no leader"))?;
    let version = cluster.version_for(ApiKey::Fetch, 12).await?;
    let start = cluster.list_offset(topic, 0, -2).await?.max(0);
    let end = start.saturating_add(i64::try_from(options.messages)?);
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let client_id = StrBytes::from_static_str("kshift-bench");
    let at_bootstrap = if options.fetch_from_bootstrap {
        Some(cluster.connect(&target.bootstrap).await?)
    } else {
        None
    };
    let (mut offset, mut fetches) = (start, 0u64);
    let reading = Instant::now();
    let deadline = reading + Duration::from_secs(60);
    while offset < end {
        if Instant::now() > deadline {
            bail!(
                "read only {} of {} records in 60 s",
                offset - start,
                end - start
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(options.fetch_max_bytes)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name.clone())
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(options.fetch_max_bytes)])]);
        let sent = Instant::now();
        let response: FetchResponse = match &at_bootstrap {
            Some(connection) => {
                let body = kshift::codec::encode_body(&request, version)?;
                let answer = connection
                    .request(ApiKey::Fetch, version, &client_id, body)?
                    .wait(Duration::from_secs(30))
                    .await?;
                kshift::codec::decode_body(answer, version, "fetch response")?
            }
            None => {
                cluster
                    .request_node(leader, ApiKey::Fetch, version, &request)
                    .await?
            }
        };
        target
            .latency
            .saturating_record(sent.elapsed().as_micros().max(1) as u64);
        fetches += 1;
        let partition = response
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == 0)
            .ok_or_else(|| anyhow!("the answer has no partition 0"))?;
        if response.error_code != 0 || partition.error_code != 0 {
            bail!(
                "fetch at offset {offset}: error code {}",
                response.error_code.max(partition.error_code)
            );
        }
        if let Some(next) = partition
            .records
            .as_deref()
            .and_then(kshift::codec::batch::next_offset)
        {
            offset = offset.max(next);
        }
    }
    // The last batch may reach past `end`: its records beyond are not counted.
    Ok((
        u64::try_from(offset.min(end) - start)?,
        fetches,
        reading.elapsed(),
    ))
}

/// Draws each target's latency by percentile (0 to 99.99, in nines) into an SVG file.
fn plot(targets: &[Target], options: &BenchOptions, path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    const NINES: f64 = 4.0; // up to 99.99
    let curve = |target: &Target| -> Vec<(f64, f64)> {
        (0..=400)
            .map(|step| {
                let nines = f64::from(step) / 100.0;
                let quantile = 1.0 - 10f64.powf(-nines);
                (nines, target.latency.value_at_quantile(quantile) as f64)
            })
            .collect()
    };
    let top = targets
        .iter()
        .map(|t| t.latency.value_at_quantile(0.9999) as f64)
        .fold(1.0, f64::max);
    let bottom = targets
        .iter()
        .map(|t| t.latency.min().max(1) as f64)
        .fold(top, f64::min);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "kshift bench: {} latency, {} B, acks={}, {}",
        match options.mode {
            Mode::Produce => "produce",
            Mode::E2e => "end-to-end",
            Mode::Consume => "consume (gap before each record)",
            Mode::Fetch => "fetch round trip",
        },
        options.size,
        options.acks,
        match options.rate {
            Some(rate) => format!("open loop {rate}/s"),
            None => format!("{} in flight", options.inflight),
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..NINES, (bottom / 1.5..top * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(5)
        .x_label_formatter(&|nines| {
            let percent = 100.0 - 100.0 * 10f64.powf(-*nines);
            format!("{}", (percent * 100.0).round() / 100.0)
        })
        .draw()?;
    for (index, target) in targets.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(curve(target), color.stroke_width(2)))?
            .label(&target.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn report(targets: &[Target], options: &BenchOptions) -> anyhow::Result<()> {
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
    let baseline = &targets[0];
    let rate = |t: &Target| t.sent as f64 / t.busy.as_secs_f64().max(f64::EPSILON);
    let load = match options.rate {
        Some(rate) => format!("open loop at {rate} records/s"),
        None => format!("closed loop, {} in flight", options.inflight),
    };
    let (done, load) = match options.mode {
        Mode::Produce | Mode::E2e => ("sent to", load),
        Mode::Consume => ("read by a consumer from", "1 consumer".to_string()),
        Mode::Fetch => ("fetched from", "1 fetch in flight".to_string()),
    };
    println!(
        "\n{} records of {} B {done} {}, acks={}, {load}, {} rounds (ratios vs {})",
        baseline.sent, options.size, baseline.name, options.acks, options.rounds, baseline.name
    );
    println!(
        "{:>12} {:>16} {:>16} {:>16} {:>16} {:>16} {:>18} {:>10}",
        "target", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "msg/s", "MB/s"
    );
    let mut json_targets = Vec::new();
    for target in targets {
        let mut row = format!("{:>12}", target.name);
        let mut fields = serde_json::Map::new();
        for (label, q) in quantiles {
            let value = target.latency.value_at_quantile(q);
            let ratio = value as f64 / baseline.latency.value_at_quantile(q).max(1) as f64;
            row.push_str(&format!(" {:>8} ({:.2}x)", value, ratio));
            fields.insert(
                format!(
                    "aggregatedPublishLatency{}",
                    label.replace("p", "").replace('.', "")
                ),
                json!(value as f64 / 1000.0),
            );
        }
        let max_ratio = target.latency.max() as f64 / baseline.latency.max().max(1) as f64;
        row.push_str(&format!(" {:>8} ({:.2}x)", target.latency.max(), max_ratio));
        let throughput = rate(target);
        row.push_str(&format!(
            " {:>10.0} ({:.2}x) {:>10.2}",
            throughput,
            throughput / rate(baseline),
            throughput * options.size as f64 / 1e6
        ));
        println!("{row}");
        fields.insert(
            "aggregatedPublishLatencyMax".into(),
            json!(target.latency.max() as f64 / 1000.0),
        );
        fields.insert(
            "aggregatedPublishLatencyAvg".into(),
            json!(target.latency.mean() / 1000.0),
        );
        fields.insert("publishRate".into(), json!(throughput));
        fields.insert("messageSize".into(), json!(options.size));
        fields.insert("target".into(), json!(target.name));
        json_targets.push(serde_json::Value::Object(fields));
    }
    if let Some(path) = &options.plot {
        plot(targets, options, path).with_context(|| format!("drawing {}", path.display()))?;
    }
    if let Some(path) = &options.json {
        let document = json!({ "latencyUnit": "ms", "targets": json_targets });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
