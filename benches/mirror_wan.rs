//! How fast kshift's mirror writer delivers, against the producer it stands in for: real Tansu
//! brokers (started here), in-process kshift, a librdkafka producer (100 B values, linger.ms 5,
//! acks=all, librdkafka's default batching and queue). One run measures three cells:
//!
//! - `wan`: the mirror cluster is far (behind `tests/common/delay.rs`, 10 ms each way by
//!   default). (a) the producer straight to the far cluster over the same kind of link;
//!   (b) the producer through kshift (write = local `old`, mirror = far `new`, async): the
//!   client's rate and the mirror's delivery rate, N / (first send → kshift's counters say all
//!   N are mirrored). The ratio mirror / direct is what a pipelined writer must raise (a
//!   writer with one request in flight per cluster got ~0.25x; DESIGN.md).
//! - `lan`: both clusters local: the client through a passthrough kshift and through a
//!   mirroring one, and the mirror's delivery rate against its client's.
//! - `burst`: 1,000,000 records as fast as the client goes, mirror far (`--burst-mirror lan`
//!   for a local one): records dropped and how complete the mirror is, once per overflow policy.
//!
//! `cargo bench --bench mirror_wan [-- OPTIONS]`; each option also reads from an environment
//! variable (the option wins):
//!
//! | option | env | default |
//! |---|---|---|
//! | `--cells wan,lan,burst` | `KSHIFT_BENCH_CELLS` | all three |
//! | `--records N` (wan, lan) | `KSHIFT_BENCH_RECORDS` | 200000 |
//! | `--burst-records N` | `KSHIFT_BENCH_BURST_RECORDS` | 1000000 |
//! | `--one-way-ms MS` | `KSHIFT_BENCH_ONE_WAY_MS` | 10 |
//! | `--partitions P` | `KSHIFT_BENCH_PARTITIONS` | 6 |
//! | `--burst-mirror wan\|lan` | `KSHIFT_BENCH_BURST_MIRROR` | wan |
//! | `--overflow drop,block` | `KSHIFT_BENCH_OVERFLOW` | today's config (no `mirror_overflow` line) |
//! | `--mirror-toml LINES` | `KSHIFT_BENCH_MIRROR_CLUSTER_TOML` | none |
//!
//! `--mirror-toml` lines go into the mirror's `[clusters.new]` in every cell (e.g.
//! `mirror_max_in_flight = 5`); `--overflow` runs the burst once per policy, each adding
//! `mirror_overflow = "POLICY"` there (so do not set that key in `--mirror-toml` as well).
//!
//! Every producer run starts warm: one record is acknowledged (and, through a mirroring kshift,
//! mirrored) before the clock starts, so connection set-up over the far link is not counted.
//!
//! Under `cargo test` (no `--bench` argument) it runs a smoke version instead — a few hundred
//! records over a 2 ms link, every cell — and asserts that every record was acknowledged and
//! mirrored, so the bench cannot rot. Output: one line per measurement, then a summary of the
//! ratios. Figures depend on the machine; compare cells and builds within one run.

#[path = "../tests/common/mod.rs"]
mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Broker, FarBroker, Kshift};
use kshift::mirror::MirrorCounts;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

const VALUE_BYTES: usize = 100;
/// How long the mirror may make no progress before a measurement gives up waiting for it.
const MIRROR_STALL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Wan,
    Lan,
    Burst,
}

/// What one run measures.
#[derive(Debug)]
struct Settings {
    /// Run under `cargo test`: tiny sizes, and assert completeness.
    smoke: bool,
    cells: Vec<Cell>,
    records: u64,
    burst_records: u64,
    one_way: Duration,
    partitions: i32,
    /// The burst's mirror is far (true) or local.
    burst_far: bool,
    /// `None`: today's config, no `mirror_overflow` line.
    overflow: Vec<Option<String>>,
    /// Extra lines for the mirror's `[clusters.new]`.
    mirror_lines: String,
}

impl Settings {
    fn from_args_and_env() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = !args.iter().any(|arg| arg == "--bench");
        // Under `cargo test` the arguments are the test harness's (filters, --nocapture):
        // the smoke run takes none of them.
        let option = |name: &str, env: &str| -> Option<String> {
            if !smoke {
                if let Some(at) = args.iter().position(|arg| arg == name) {
                    return Some(
                        args.get(at + 1)
                            .unwrap_or_else(|| usage(&format!("{name} needs a value")))
                            .clone(),
                    );
                }
            }
            std::env::var(env).ok().filter(|value| !value.is_empty())
        };
        if !smoke {
            let known = [
                "--cells",
                "--records",
                "--burst-records",
                "--one-way-ms",
                "--partitions",
                "--burst-mirror",
                "--overflow",
                "--mirror-toml",
            ];
            let mut rest = args.iter();
            while let Some(arg) = rest.next() {
                if known.contains(&arg.as_str()) {
                    rest.next();
                } else if arg != "--bench" {
                    usage(&format!("unknown argument {arg}"));
                }
            }
        }
        let number = |name: &str, env: &str, default: u64| -> u64 {
            option(name, env).map_or(default, |text| {
                text.replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("{name}: not a number: {text}")))
            })
        };
        let cells = option("--cells", "KSHIFT_BENCH_CELLS")
            .unwrap_or_else(|| "wan,lan,burst".into())
            .split(',')
            .map(|cell| match cell.trim() {
                "wan" => Cell::Wan,
                "lan" => Cell::Lan,
                "burst" => Cell::Burst,
                other => usage(&format!("unknown cell {other}")),
            })
            .collect();
        let overflow = option("--overflow", "KSHIFT_BENCH_OVERFLOW").map_or(vec![None], |list| {
            list.split(',')
                .map(|policy| Some(policy.trim().to_string()))
                .collect()
        });
        let burst_far = match option("--burst-mirror", "KSHIFT_BENCH_BURST_MIRROR").as_deref() {
            None | Some("wan") => true,
            Some("lan") => false,
            Some(other) => usage(&format!("--burst-mirror: wan or lan, not {other}")),
        };
        let mirror_lines = option("--mirror-toml", "KSHIFT_BENCH_MIRROR_CLUSTER_TOML")
            .unwrap_or_default()
            .replace("\\n", "\n");
        let (records, burst_records, one_way_ms) = if smoke {
            (300, 2_000, 2)
        } else {
            (200_000, 1_000_000, 10)
        };
        Settings {
            smoke,
            cells,
            records: number("--records", "KSHIFT_BENCH_RECORDS", records),
            burst_records: number(
                "--burst-records",
                "KSHIFT_BENCH_BURST_RECORDS",
                burst_records,
            ),
            one_way: Duration::from_millis(number(
                "--one-way-ms",
                "KSHIFT_BENCH_ONE_WAY_MS",
                one_way_ms,
            )),
            partitions: number("--partitions", "KSHIFT_BENCH_PARTITIONS", 6) as i32,
            burst_far,
            overflow,
            mirror_lines,
        }
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "mirror_wan: {problem}\nusage: cargo bench --bench mirror_wan -- [--cells wan,lan,burst] \
         [--records N] [--burst-records N] [--one-way-ms MS] [--partitions P] \
         [--burst-mirror wan|lan] [--overflow drop,block] [--mirror-toml 'LINES']"
    );
    std::process::exit(64)
}

/// The bench producer's delivery reports, counted.
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// `last_nanos` counts from here.
    base: Instant,
    /// When the latest delivery report was served, in nanoseconds since `base`: the end of the
    /// run (rdkafka's `flush` only looks every 100 ms).
    last_nanos: AtomicU64,
}

impl Deliveries {
    fn new() -> Deliveries {
        Deliveries {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            base: Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        let nanos = self.base.elapsed().as_nanos() as u64;
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _message)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// What one producer run got.
struct Produced {
    records: u64,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    first_send: Instant,
    /// When the last delivery report was served.
    done: Instant,
}

impl Produced {
    fn seconds(&self) -> f64 {
        self.done.duration_since(self.first_send).as_secs_f64()
    }

    fn rate(&self) -> f64 {
        self.acked as f64 / self.seconds().max(1e-9)
    }
}

/// Produces `records` values of 100 B to `topic` through `bootstrap` as fast as librdkafka's
/// default queue lets it (waiting for delivery reports when it is full), then flushes.
///
/// The clock starts warm: one record is produced and acknowledged first (connections,
/// metadata, the broker's producer state), then `before_timing` runs (on this blocking thread;
/// it may wait for a mirror to catch up) and its result is returned with the measurement.
async fn produce<T: Send + 'static>(
    bootstrap: String,
    topic: String,
    records: u64,
    before_timing: impl FnOnce() -> T + Send + 'static,
) -> (Produced, T) {
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("message.timeout.ms", "300000")
            .create_with_context(Deliveries::new())
            .expect("create the bench producer");
        let value = [b'x'; VALUE_BYTES];
        producer
            .send(BaseRecord::<(), [u8]>::to(&topic).payload(&value[..]))
            .unwrap_or_else(|(error, _)| panic!("enqueue the warm-up record: {error}"));
        producer
            .flush(Duration::from_secs(60))
            .unwrap_or_else(|error| panic!("the warm-up record to {topic}: {error}"));
        let deliveries = producer.context();
        if deliveries.acked.swap(0, Ordering::Relaxed) != 1 {
            panic!(
                "the warm-up record to {topic} failed: {:?}",
                deliveries
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            );
        }
        let hooked = before_timing();

        let first_send = Instant::now();
        for sent in 0..records {
            loop {
                let record = BaseRecord::<(), [u8]>::to(&topic).payload(&value[..]);
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Serves delivery reports (which frees queue room) for 1 ms.
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((error, _)) => panic!("enqueue of record {sent} failed: {error}"),
                }
            }
            if sent % 1024 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        if let Err(error) = producer.flush(Duration::from_secs(600)) {
            eprintln!("mirror_wan: flush of {topic} did not finish: {error}");
        }
        let first_error = deliveries
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let produced = Produced {
            records,
            acked: deliveries.acked.load(Ordering::Relaxed),
            failed: deliveries.failed.load(Ordering::Relaxed),
            first_error,
            first_send,
            done: deliveries.last(),
        };
        (produced, hooked)
    })
    .await
    .expect("the bench producer panicked")
}

/// Produces with nothing to wait for between the warm-up and the timed run (no mirror).
async fn produce_plain(bootstrap: String, topic: String, records: u64) -> Produced {
    produce(bootstrap, topic, records, || ()).await.0
}

/// How far the mirror got, counting only the timed records.
struct Mirrored {
    /// Counters since the timed run began (the warm-up record excluded).
    counts: MirrorCounts,
    /// When the mirror held every record, if it did.
    complete: Option<Instant>,
    /// When the watch ended (complete, settled short, or stalled).
    ended: Instant,
    stalled: bool,
}

/// Counters of mirror cluster `new` now.
fn mirror_counts(state: &kshift::ProxyState) -> MirrorCounts {
    state
        .mirrors
        .stats(state.cluster_id("new").expect("a cluster named new"))
}

/// `now` minus `baseline`, for the counters a watch compares.
fn since(baseline: &MirrorCounts, now: MirrorCounts) -> MirrorCounts {
    MirrorCounts {
        mirrored_records: now.mirrored_records - baseline.mirrored_records,
        dropped_records: now.dropped_records - baseline.dropped_records,
        failed_records: now.failed_records - baseline.failed_records,
        ..now
    }
}

/// Watches kshift's counters until `expected` more records than in `baseline` are mirrored,
/// every one is accounted for (mirrored, dropped or failed, nothing queued), or nothing moved
/// for [`MIRROR_STALL`].
async fn watch_mirror(
    state: Arc<kshift::ProxyState>,
    baseline: MirrorCounts,
    expected: u64,
) -> Mirrored {
    let mut last_settled = 0;
    let mut last_progress = Instant::now();
    loop {
        let counts = since(&baseline, mirror_counts(&state));
        let now = Instant::now();
        let settled = counts.mirrored_records + counts.dropped_records + counts.failed_records;
        let complete = counts.mirrored_records >= expected;
        let stalled = now.duration_since(last_progress) > MIRROR_STALL;
        if complete || stalled || (settled >= expected && counts.lag_records == 0) {
            return Mirrored {
                counts,
                complete: complete.then_some(now),
                ended: now,
                stalled: stalled && !complete,
            };
        }
        if settled != last_settled {
            last_settled = settled;
            last_progress = now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Produces through `kshift` while watching its mirror; both results. The timed run starts
/// once the warm-up record is mirrored, so the mirror writer is warm as well.
async fn produce_mirrored(kshift: &Kshift, topic: &str, records: u64) -> (Produced, Mirrored) {
    let state = kshift.state().clone();
    let runtime = tokio::runtime::Handle::current();
    let (produced, watch) = produce(kshift.bootstrap(), topic.to_string(), records, move || {
        let baseline = runtime.block_on(harness::eventually(
            Duration::from_secs(60),
            "the warm-up record to be mirrored",
            async || {
                let counts = mirror_counts(&state);
                if counts.mirrored_records >= 1 && counts.lag_records == 0 {
                    Ok(counts)
                } else {
                    Err(format!("{counts:?}"))
                }
            },
        ));
        runtime.spawn(watch_mirror(state, baseline, records))
    })
    .await;
    let mirrored = watch.await.expect("the mirror watch panicked");
    (produced, mirrored)
}

fn report_client(settings: &Settings, cell: &str, what: &str, produced: &Produced) {
    let error = produced
        .first_error
        .as_deref()
        .map(|error| format!(" first_error=\"{error}\""))
        .unwrap_or_default();
    println!(
        "mirror_wan {cell:<14} {what:<16} records={} acked={} failed={} seconds={:.2} rate={:.0}/s{error}",
        produced.records,
        produced.acked,
        produced.failed,
        produced.seconds(),
        produced.rate()
    );
    if settings.smoke {
        assert_eq!(
            (produced.acked, produced.failed),
            (produced.records, 0),
            "{cell} {what}: every record acknowledged ({error})"
        );
    }
}

/// Prints the mirror's line; returns its delivery rate (records mirrored per second since the
/// first send, up to completion or to the end of the watch).
fn report_mirror(settings: &Settings, cell: &str, produced: &Produced, mirrored: &Mirrored) -> f64 {
    let end = mirrored.complete.unwrap_or(mirrored.ended);
    let seconds = end.duration_since(produced.first_send).as_secs_f64();
    let rate = mirrored.counts.mirrored_records as f64 / seconds.max(1e-9);
    let state = match (mirrored.complete, mirrored.stalled) {
        (Some(_), _) => "complete",
        (None, true) => "STALLED",
        (None, false) => "INCOMPLETE",
    };
    println!(
        "mirror_wan {cell:<14} {:<16} records={} mirrored={} dropped={} failed={} seconds={seconds:.2} rate={rate:.0}/s {state}",
        "mirror",
        produced.records,
        mirrored.counts.mirrored_records,
        mirrored.counts.dropped_records,
        mirrored.counts.failed_records,
    );
    if settings.smoke {
        assert!(
            mirrored.complete.is_some() && mirrored.counts.dropped_records == 0,
            "{cell}: the mirror holds every record: {:?}",
            mirrored.counts
        );
    }
    rate
}

/// Config lines for `[clusters.new]`: the bench's own, then `extra`.
fn mirror_lines(settings: &Settings, extra: &str) -> String {
    format!("{}\n{extra}", settings.mirror_lines)
}

/// A fresh topic of the bench's partition count on each of `bootstraps`.
async fn topic_on(settings: &Settings, prefix: &str, bootstraps: &[&str]) -> String {
    let topic = harness::unique_topic(prefix);
    for bootstrap in bootstraps {
        harness::create_topic(bootstrap, &topic, settings.partitions).await;
    }
    topic
}

/// `records` records through a kshift writing `old` and mirroring to `mirror` asynchronously
/// (the bench's mirror lines, then `extra`), on a fresh topic of both: the client's run
/// (reported as `client`) and the mirror's, and the mirror's delivery rate.
async fn through_mirroring_kshift(
    settings: &Settings,
    cell: &str,
    client: &str,
    old: &str,
    mirror: &str,
    extra: &str,
    records: u64,
) -> (Produced, Mirrored, f64) {
    let topic = topic_on(settings, "mirrored", &[old, mirror]).await;
    let kshift =
        harness::mirror::async_mirroring_kshift(old, mirror, &mirror_lines(settings, extra)).await;
    let (produced, mirrored) = produce_mirrored(&kshift, &topic, records).await;
    report_client(settings, cell, client, &produced);
    let mirror_rate = report_mirror(settings, cell, &produced, &mirrored);
    kshift.shutdown().await;
    (produced, mirrored, mirror_rate)
}

async fn wan(settings: &Settings, summary: &mut Vec<String>) {
    let cell = format!("wan({}ms)", settings.one_way.as_millis());
    let old = Broker::start().await;
    let far = FarBroker::start(settings.one_way).await;

    let topic = topic_on(settings, "wan-direct", &[&far.bootstrap()]).await;
    let direct = produce_plain(far.bootstrap(), topic, settings.records).await;
    report_client(settings, &cell, "direct-far", &direct);

    let (client, mirrored, mirror_rate) = through_mirroring_kshift(
        settings,
        &cell,
        "kshift-client",
        &old.bootstrap(),
        &far.bootstrap(),
        "",
        settings.records,
    )
    .await;

    let line = format!(
        "{cell}: mirror delivery / direct-far producer = {:.2}x ({:.0} vs {:.0} records/s); \
         kshift client / direct-far = {:.2}x; dropped {}",
        mirror_rate / direct.rate(),
        mirror_rate,
        direct.rate(),
        client.rate() / direct.rate(),
        mirrored.counts.dropped_records
    );
    println!("mirror_wan {line}");
    summary.push(line);
}

async fn lan(settings: &Settings, summary: &mut Vec<String>) {
    let cell = "lan";
    let old = Broker::start().await;
    let new = Broker::start().await;

    let topic = topic_on(settings, "lan-pass", &[&old.bootstrap()]).await;
    let passthrough = Kshift::start_single(&old).await;
    let pass = produce_plain(passthrough.bootstrap(), topic, settings.records).await;
    report_client(settings, cell, "passthrough", &pass);
    passthrough.shutdown().await;

    let (client, mirrored, mirror_rate) = through_mirroring_kshift(
        settings,
        cell,
        "mirroring-client",
        &old.bootstrap(),
        &new.bootstrap(),
        "",
        settings.records,
    )
    .await;

    let line = format!(
        "{cell}: mirroring client / passthrough client = {:.2}x ({:.0} vs {:.0} records/s); \
         mirror delivery / mirroring client = {:.2}x; dropped {}",
        client.rate() / pass.rate(),
        client.rate(),
        pass.rate(),
        mirror_rate / client.rate(),
        mirrored.counts.dropped_records
    );
    println!("mirror_wan {line}");
    summary.push(line);
}

async fn burst(settings: &Settings, overflow: Option<&str>, summary: &mut Vec<String>) {
    let cell = format!(
        "burst[{},{}]",
        overflow.unwrap_or("default"),
        if settings.burst_far { "wan" } else { "lan" }
    );
    let old = Broker::start().await;
    let (far, local);
    let mirror = if settings.burst_far {
        far = FarBroker::start(settings.one_way).await;
        far.bootstrap()
    } else {
        local = Broker::start().await;
        local.bootstrap()
    };
    let policy_line = overflow
        .map(|policy| format!("mirror_overflow = \"{policy}\""))
        .unwrap_or_default();
    let (client, mirrored, mirror_rate) = through_mirroring_kshift(
        settings,
        &cell,
        "kshift-client",
        &old.bootstrap(),
        &mirror,
        &policy_line,
        settings.burst_records,
    )
    .await;

    let records = settings.burst_records.max(1) as f64;
    let line = format!(
        "{cell}: dropped {} ({:.1}%), mirror holds {:.1}% ({} of {}); client {:.0} records/s, \
         mirror {:.0} records/s",
        mirrored.counts.dropped_records,
        100.0 * mirrored.counts.dropped_records as f64 / records,
        100.0 * mirrored.counts.mirrored_records as f64 / records,
        mirrored.counts.mirrored_records,
        settings.burst_records,
        client.rate(),
        mirror_rate
    );
    println!("mirror_wan {line}");
    summary.push(line);
}

fn main() {
    let settings = Settings::from_args_and_env();
    harness::trace_from_env();
    println!(
        "mirror_wan {}: cells {:?}, {} records (burst {}), {} B values, {} partitions, {:?} one way, \
         mirror config {:?}",
        if settings.smoke { "smoke run" } else { "bench" },
        settings.cells,
        settings.records,
        settings.burst_records,
        VALUE_BYTES,
        settings.partitions,
        settings.one_way,
        settings.mirror_lines
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut summary = Vec::new();
    runtime.block_on(async {
        for cell in &settings.cells {
            match cell {
                Cell::Wan => wan(&settings, &mut summary).await,
                Cell::Lan => lan(&settings, &mut summary).await,
                Cell::Burst => {
                    for overflow in &settings.overflow {
                        burst(&settings, overflow.as_deref(), &mut summary).await;
                    }
                }
            }
        }
    });
    println!("mirror_wan summary:");
    for line in &summary {
        println!("  {line}");
    }
}
