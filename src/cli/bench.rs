//! `kshift bench`: produce latency and throughput of several targets (a broker directly,
//! kshift, an L4 proxy …) measured side by side, in interleaved rounds so that drift of the
//! machine hits every target alike.
//!
//! Closed loop: `--inflight N` records outstanding per target at any time (`--inflight 1`
//! is the pure per-hop cost); latency is from `send` to the delivery report. Open loop
//! (`--rate R`): records are due at a fixed rate and latency runs from when each was due,
//! so a stall is charged to every record it held up (no coordinated omission). Latencies go
//! to an HdrHistogram per target; figures are ratios to the first target, same run.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// What to measure, from the command line.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// (name, bootstrap) per target, in the order given; the first is the baseline.
    pub targets: Vec<(String, String)>,
    pub topic: String,
    pub messages: u64,
    pub size: usize,
    pub acks: String,
    pub inflight: usize,
    pub rounds: u32,
    pub linger_ms: u32,
    pub compression: String,
    pub json: Option<std::path::PathBuf>,
    /// Open loop: records per second per target, latency measured from each record's
    /// intended send time (no coordinated omission). Closed loop when absent.
    pub rate: Option<f64>,
    /// Run each target for this long in total (split over the rounds) instead of
    /// `messages` records.
    pub duration: Option<Duration>,
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
pub fn parse_target(text: &str) -> Result<(String, String), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=HOST:PORT"))?;
    crate::config::parse_host_port(address)?;
    Ok((name.to_string(), address.to_string()))
}

struct Target {
    name: String,
    producer: FutureProducer,
    latency: Histogram<u64>,
    sent: u64,
    busy: Duration,
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    if options.targets.is_empty() {
        bail!("give at least one --target NAME=HOST:PORT");
    }
    let mut targets = Vec::new();
    for (name, bootstrap) in &options.targets {
        create_topic(bootstrap, &options.topic)
            .await
            .with_context(|| format!("target {name} ({bootstrap})"))?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", &options.acks)
            .set("linger.ms", options.linger_ms.to_string())
            .set("compression.type", &options.compression)
            .set("message.timeout.ms", "30000")
            .create()
            .with_context(|| format!("producer for {name}"))?;
        targets.push(Target {
            name: name.clone(),
            producer,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            sent: 0,
            busy: Duration::ZERO,
        });
    }
    let payload = vec![b'x'; options.size];
    let rounds = options.rounds.max(1);
    // Warm-up: connections, metadata, producer ids.
    let warm_up = Load {
        inflight: options.inflight,
        rate: None,
        count: 50.min(options.messages),
        budget: None,
    };
    for target in &mut targets {
        measure(target, &options.topic, &payload, warm_up, false).await?;
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
    for round in 1..=rounds {
        for target in &mut targets {
            measure(target, &options.topic, &payload, load, true).await?;
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
    report(&targets, &options)
}

async fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("CreateTopics")?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {topic}: {code}");
            }
        }
    }
    Ok(())
}

/// Offers records to `target` as `load` says; records latencies if `record`. Closed loop:
/// latency from send to delivery. Open loop: from the intended send time, so a stall
/// counts against every record it delayed.
async fn measure(
    target: &mut Target,
    topic: &str,
    payload: &[u8],
    load: Load,
    record: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate.max(0.001)));
    let mut outstanding = FuturesUnordered::new();
    let mut next = 0u64;
    let more = |next: u64| next < load.count && load.budget.is_none_or(|b| started.elapsed() < b);
    loop {
        let may_send =
            more(next) && (interval.is_some() || outstanding.len() < load.inflight.max(1));
        if !may_send && outstanding.is_empty() {
            break;
        }
        let due = interval.map_or(started, |interval| started + interval * next as u32);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()), if may_send => {
                let key = next.to_string();
                // Open loop: the clock starts when the record was due, not when sent.
                let since = if interval.is_some() { due } else { Instant::now() };
                let delivery = target
                    .producer
                    .send_result(FutureRecord::to(topic).key(&key).payload(payload))
                    .map_err(|(error, _)| anyhow!("{}: cannot queue: {error}", target.name))?;
                outstanding.push(async move { (since, delivery.await) });
                next += 1;
            }
            Some((since, delivered)) = outstanding.next(), if !outstanding.is_empty() => {
                delivered
                    .map_err(|_| anyhow!("{}: delivery cancelled", target.name))?
                    .map_err(|(error, _)| anyhow!("{}: delivery failed: {error}", target.name))?;
                if record {
                    let micros = since.elapsed().as_micros().max(1) as u64;
                    target.latency.saturating_record(micros);
                }
            }
        }
    }
    if record {
        target.sent += next;
        target.busy += started.elapsed();
    }
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
    println!(
        "\n{} records of {} B sent to {}, acks={}, {load}, {} rounds (ratios vs {})",
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
    if let Some(path) = &options.json {
        let document = json!({ "latencyUnit": "ms", "targets": json_targets });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
