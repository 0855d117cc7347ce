//! Faults under load, with real brokers and real clients: the write cluster's broker crashes
//! and comes back, the mirror crashes and comes back, kshift itself restarts. In each case the
//! producers recover within their own retry budget, no acknowledged record is lost, and
//! consumers resume.
//!
//! A broker that must keep its data across a crash keeps its log in a local S3 store
//! (`common::ObjectStore`, moto), as Tansu's `memory://` engine loses everything on restart.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mirror::settled;
use common::{Broker, ObjectStore, TestProducer};
use rdkafka::producer::FutureRecord;

/// How long the producers may take to deliver each record: their retry budget, which must
/// cover the outage.
const DELIVERY_TIMEOUT_MS: &str = "60000";

/// What a steady producer saw: values acknowledged, and the errors of those that were not.
#[derive(Default)]
struct Produced {
    acknowledged: Vec<String>,
    failed: Vec<String>,
}

/// Sends `count` records (values `{name}-{i}`) to `topic`, one every `pause`, keys spread over
/// 8 keys; then waits for every delivery report.
fn produce_steadily(
    name: &'static str,
    producer: Arc<TestProducer>,
    topic: String,
    count: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Produced> {
    tokio::spawn(async move {
        let mut deliveries = Vec::with_capacity(count);
        for i in 0..count {
            let (key, value) = (format!("key-{}", i % 8), format!("{name}-{i}"));
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value)) {
                Ok(delivery) => deliveries.push((value, delivery)),
                Err((error, _)) => panic!("enqueue of {value} failed: {error}"),
            }
            tokio::time::sleep(pause).await;
        }
        let mut produced = Produced::default();
        for (value, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => produced.acknowledged.push(value),
                Ok(Err((error, _))) => produced.failed.push(format!("{value}: {error}")),
                Err(_canceled) => produced.failed.push(format!("{value}: report dropped")),
            }
        }
        produced
    })
}

/// 800 ms into the load, `broker` crashes (SIGKILL); it comes back after `down_for`.
async fn crash(broker: &mut Broker, down_for: Duration) {
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.kill();
    tokio::time::sleep(down_for).await;
    broker.restart().await;
}

/// Every record `bootstrap` holds in `topic`, read from the beginning of each partition: until
/// `expected` have come and then a quiet second, or until nothing more came for 5 s (a broker
/// that lost records holds fewer than were acknowledged; the caller says which).
async fn stored_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<common::Received> {
    let consumer = common::assigned_consumer(bootstrap, topic, partitions, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::with_capacity(expected);
    loop {
        // Short of `expected`, a pause is the restarted broker being slow (its object store
        // under a loaded machine), not the end: wait longer before calling it the end.
        let quiet = if records.len() >= expected {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(20)
        };
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(Ok(message)) => records.push(common::to_received(&message)),
            Ok(Err(error)) => panic!("consumer error after {} records: {error}", records.len()),
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "still reading {topic} after 120 s"
        );
    }
    records
}

/// The values of `stored_records`.
async fn stored_values(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<String> {
    stored_records(bootstrap, topic, partitions, expected)
        .await
        .iter()
        .map(value_of)
        .collect()
}

fn value_of(record: &common::Received) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

/// The holes in each partition's offsets (`partition: first..=last` missing), for a failure
/// message: a record lost by the broker after it allocated its offset leaves one.
fn offset_holes(records: &[common::Received]) -> Vec<String> {
    let mut by_partition: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
    for record in records {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record.offset);
    }
    let mut holes = Vec::new();
    for (partition, mut offsets) in by_partition {
        offsets.sort_unstable();
        for pair in offsets.windows(2) {
            if pair[1] > pair[0] + 1 {
                holes.push(format!("{partition}: {}..={}", pair[0] + 1, pair[1] - 1));
            }
        }
    }
    holes
}

/// Produces and consumes through kshift (or, with `via_kshift` false, straight to the broker:
/// the control that tells kshift's faults from the broker's) while the broker crashes.
async fn write_broker_crash(idempotent: bool, via_kshift: bool) {
    common::trace_from_env();
    let store = ObjectStore::start().await;
    let mut broker = Broker::start_persistent(&store).await;
    let kshift = common::Kshift::start_single(&broker).await;
    let bootstrap = if via_kshift {
        kshift.bootstrap()
    } else {
        broker.bootstrap()
    };
    let topic = common::unique_topic("crash-write");
    common::create_topic(&bootstrap, &topic, 2).await;

    let producer = Arc::new(common::producer(
        &bootstrap,
        &[
            ("acks", "all"),
            (
                "enable.idempotence",
                if idempotent { "true" } else { "false" },
            ),
            ("message.timeout.ms", DELIVERY_TIMEOUT_MS),
            ("linger.ms", "5"),
        ],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, consuming) =
        common::collect_values(&bootstrap, "crash-write-group", &topic, stop.clone());
    let sending = produce_steadily(
        "record",
        producer,
        topic.clone(),
        1500,
        Duration::from_millis(2),
    );

    crash(&mut broker, Duration::from_secs(3)).await;

    let produced = sending.await.unwrap();
    assert!(
        produced.failed.is_empty(),
        "{} of 1500 records not delivered within the producer's {DELIVERY_TIMEOUT_MS} ms \
         budget across the broker crash; first: {:?}",
        produced.failed.len(),
        produced.failed.first()
    );
    // The broker holds every acknowledged record (read directly, from the beginning).
    let records = stored_records(&broker.bootstrap(), &topic, 2, 1500).await;
    let stored: BTreeSet<String> = records.iter().map(value_of).collect();
    let lost: Vec<&String> = produced
        .acknowledged
        .iter()
        .filter(|value| !stored.contains(*value))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records missing from the restarted broker ({} records stored): {:?}; \
         offset holes (partition: offsets): {:?}",
        lost.len(),
        records.len(),
        lost,
        offset_holes(&records)
    );
    // And the group consumer, which ran through the crash, got past it to all of them.
    common::wait_until_seen(
        &seen,
        &produced.acknowledged,
        Duration::from_secs(60),
        "the group consumer through kshift to get every acknowledged record the broker holds",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    consuming.await.unwrap();
}

/// Ignored: fails through Tansu's bug, not kshift's. An idempotent producer loses acknowledged
/// records across the crash in many runs, through kshift (6 of 14 runs in one session, 2–16
/// records) and straight to the broker alike (the control below: 2 of 11, 2 and 20). Tansu's
/// `s3://` engine (tansu-storage `dynostore.rs`, `produce`) commits the producer's next sequence
/// to `meta.json`, then the partition's `watermark.json`, then writes the batch object; killed
/// between the first and the last, it comes back with the sequence advanced but no batch. The
/// client retries the batch unchanged (same producer id, epoch, sequence), Tansu answers
/// DUPLICATE_SEQUENCE_NUMBER, and the client counts it delivered (librdkafka: "DUPSEQ ...
/// marking the messages successfully delivered"). The lost records are whole batches that
/// were in flight at the kill, sometimes leaving an offset hole (watermark written) and
/// sometimes not. kshift forwards each batch as the client encoded it and relays the broker's
/// DUPLICATE_SEQUENCE_NUMBER answer unchanged (`RUST_LOG=kshift::codec::batch=trace`
/// shows both). Upstream: nisshi-io/nisshi#742. Run with `--ignored` to reproduce.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "Tansu bug: its s3 engine commits an idempotent batch's sequence before the batch (see comment)"]
async fn write_broker_crash_idempotent_producer_loses_nothing_and_consumers_resume() {
    write_broker_crash(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_broker_crash_plain_producer_loses_nothing_and_consumers_resume() {
    write_broker_crash(false, true).await;
}

/// The control for the idempotent case, without kshift: it loses records the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a control of the broker itself, not of kshift; fails through the same Tansu bug"]
async fn write_broker_crash_idempotent_producer_direct_to_the_broker() {
    write_broker_crash(true, false).await;
}

/// A batch whose mirror write was in flight when the mirror died can land although every
/// attempt reported failure (2 runs in 5 before repair learnt to check): repair must find it
/// on the mirror and not copy it twice, or verify reports a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_crash_leaves_producers_unaffected_and_repair_restores_parity() {
    common::trace_from_env();
    let store = ObjectStore::start().await;
    let old = Broker::start().await;
    let mut new = Broker::start_persistent(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("failures.jsonl");
    let proxy_lines = format!("mirror_failures_file = \"{}\"", journal.display());
    // Mirror batches are given up after 1.5 s of retries (120 s by default), so that the
    // 4 s outage below costs some.
    let routes = "mirror_delivery_timeout_ms = 1500\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_mode = \"async\"\n\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"";
    let text = common::two_cluster_toml(&old, &new, &proxy_lines, routes);
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, &text).unwrap();
    let proxy = common::start_proxy(&text).await;
    let through = proxy.local_addr().to_string();
    let topic = common::unique_topic("crash-mirror");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 2).await;

    let producer = Arc::new(common::producer(
        &through,
        &[("acks", "all"), ("message.timeout.ms", "10000")],
    ));
    let count = 2000;
    let sending = produce_steadily(
        "record",
        producer,
        topic.clone(),
        count,
        Duration::from_millis(2),
    );
    // Down longer than a mirror batch's retries (mirror_delivery_timeout_ms), so some give up.
    crash(&mut new, Duration::from_secs(4)).await;
    let produced = sending.await.unwrap();
    assert!(
        produced.failed.is_empty(),
        "an async mirror's crash reached the producer: {} failed, first {:?}",
        produced.failed.len(),
        produced.failed.first()
    );
    assert_eq!(produced.acknowledged.len(), count);

    // Every batch is either mirrored or journalled, and the crash did cost some.
    let stats = settled(proxy.state(), "new", count as u64, Duration::from_secs(60)).await;
    assert!(
        stats.failed_records + stats.dropped_records > 0,
        "the mirror crash cost nothing, so this test proved nothing: {stats:?}"
    );
    let journalled: i64 = kshift::mirror::failures::pending(&journal)
        .unwrap()
        .iter()
        .map(|range| range.last_offset - range.first_offset + 1)
        .sum();
    assert_eq!(
        journalled as u64,
        stats.failed_records + stats.dropped_records,
        "every record the mirror missed is journalled: {stats:?}"
    );

    let config = path.to_str().unwrap().to_string();
    let stdout = common::kshift_repair(&config).await;
    println!("kshift repair:\n{stdout}");
    // What was journalled is copied, except a batch that landed on the mirror although its
    // write failed (the mirror died with it in flight): repair finds it there and skips it.
    let summary = stdout.lines().last().unwrap_or_default();
    let numbers: Vec<i64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect();
    let [_ranges, copied, already_there] = numbers[..] else {
        panic!("unexpected summary: {stdout}");
    };
    assert_eq!(copied + already_there, journalled, "{stdout}");
    let stdout = common::kshift_verify(&config, &topic).await;
    assert_eq!(stdout.matches("  ok").count(), 2, "{stdout}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kshift_restart_under_load_loses_nothing_and_the_group_keeps_going() {
    let broker = Broker::start().await;
    let text = common::single_cluster_toml(&broker);
    let proxy = common::start_proxy(&text).await;
    let address = proxy.local_addr();
    let text = common::listening_at(&text, &address.to_string());
    let through = address.to_string();
    let topic = common::unique_topic("restart-kshift");
    common::create_topic(&through, &topic, 2).await;

    let producers: Vec<Arc<TestProducer>> = [true, false]
        .into_iter()
        .map(|idempotent| {
            Arc::new(common::producer(
                &through,
                &[
                    ("acks", "all"),
                    (
                        "enable.idempotence",
                        if idempotent { "true" } else { "false" },
                    ),
                    ("message.timeout.ms", DELIVERY_TIMEOUT_MS),
                ],
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, consuming) =
        common::collect_values(&through, "restart-kshift-group", &topic, stop.clone());
    let sending: Vec<_> = producers
        .iter()
        .zip(["idempotent", "plain"])
        .map(|(producer, name)| {
            produce_steadily(
                name,
                producer.clone(),
                topic.clone(),
                1000,
                Duration::from_millis(3),
            )
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // kshift restarts on the same port.
    let proxy = common::start_proxy(&text).await;
    assert_eq!(proxy.local_addr(), address);

    let mut acknowledged = Vec::new();
    for (index, task) in sending.into_iter().enumerate() {
        let produced = task.await.unwrap();
        assert!(
            produced.failed.is_empty(),
            "producer {index}: {} of 1000 records not delivered across kshift's restart; \
             first: {:?}",
            produced.failed.len(),
            produced.failed.first()
        );
        acknowledged.extend(produced.acknowledged);
    }
    common::wait_until_seen(
        &seen,
        &acknowledged,
        Duration::from_secs(60),
        "the group consumer to keep going and get every acknowledged record",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    consuming.await.unwrap();
    let stored: BTreeSet<String> = stored_values(&broker.bootstrap(), &topic, 2, 2000)
        .await
        .into_iter()
        .collect();
    let lost = acknowledged
        .iter()
        .filter(|value| !stored.contains(*value))
        .count();
    assert_eq!(lost, 0, "acknowledged records missing from the broker");
    proxy.shutdown().await;
}
