//! Records that reached the write cluster but not the mirror are journalled with their
//! write offsets; `kshift repair` copies exactly those to the mirror, after which `kshift
//! verify` reports parity, and a second repair has nothing left to do.

mod common;

use std::time::Duration;

use common::Broker;
use rdkafka::producer::FutureRecord;

/// Two brokers and a config mirroring `topics` from old to new with a failure journal.
struct Setup {
    old: Broker,
    new: Broker,
    /// Holds the journal and config: deleted when dropped.
    dir: tempfile::TempDir,
    journal: std::path::PathBuf,
    /// The config's text, and its path as `kshift repair` takes it.
    text: String,
    config: String,
}

async fn setup(topics: &str) -> Setup {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("failures.jsonl");
    let proxy_lines = format!("mirror_failures_file = \"{}\"", journal.display());
    let routes = format!("[[routes]]\ntopics = \"{topics}\"\nwrite = \"old\"\nmirror = [\"new\"]");
    // Mirror batches are given up after 2 s of retries (120 s by default).
    let routes = format!("mirror_delivery_timeout_ms = 2000\n{routes}");
    let text = common::two_cluster_toml(&old, &new, &proxy_lines, &routes);
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, &text).unwrap();
    let config = path.to_str().unwrap().to_string();
    Setup {
        old,
        new,
        dir,
        journal,
        text,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_copies_the_journalled_ranges_and_verify_then_agrees() {
    let Setup {
        old,
        new,
        journal,
        text,
        config,
        dir: _dir,
    } = setup("repair-*").await;
    let proxy = common::start_proxy(&text).await;

    // The topic exists on the write cluster only: every mirror attempt fails.
    let topic = common::unique_topic("repair");
    common::create_topic(&old.bootstrap(), &topic, 2).await;
    // (No auto-creation from the client's metadata requests, which would create it on the
    // mirror too.)
    let producer = common::producer(
        &proxy.local_addr().to_string(),
        &[("linger.ms", "50"), ("allow.auto.create.topics", "false")],
    );
    // Acknowledged by the write cluster.
    let records = (0..20).map(|i| (format!("key-{i}"), format!("value-{i}")));
    common::send_keyed(&producer, &topic, records).await;
    common::mirror::wait_for_counts(
        proxy.state(),
        "new",
        Duration::from_secs(60),
        "the 20 records' mirror writes to fail",
        |stats| stats.failed_records >= 20,
    )
    .await;
    let journalled = kshift::mirror::failures::pending(&journal).unwrap();
    let journalled_records: i64 = journalled
        .iter()
        .map(|r| r.last_offset - r.first_offset + 1)
        .sum();
    assert_eq!(journalled_records, 20, "{journalled:?}");
    // Each entry says how it was to be mirrored, independent of later routing changes.
    assert!(
        journalled
            .iter()
            .all(|r| r.mirror.as_ref().is_some_and(|m| m.mirror_topic == topic)),
        "{journalled:?}"
    );

    // The mirror comes right; repair copies what is missing.
    common::create_topic(&new.bootstrap(), &topic, 2).await;
    let stdout = common::kshift_repair(&config).await;
    assert!(
        stdout.contains(&format!(
            "{} range(s) repaired, 20 record(s) copied",
            journalled.len()
        )),
        "{stdout}"
    );

    let stdout = common::kshift_verify(&config, &topic).await;
    assert_eq!(stdout.matches("  ok").count(), 2, "{stdout}");

    let stdout = common::kshift_repair(&config).await;
    assert!(
        stdout.contains("0 range(s) repaired"),
        "a second repair redid work: {stdout}"
    );
}

/// Sends `values` to partition 0 of `topic` as one batch, each record stamped `timestamp + i`.
async fn send_batch(bootstrap: &str, topic: &str, values: &[String], timestamp: i64) {
    let producer = common::producer(bootstrap, &[("linger.ms", "100")]);
    let records = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            FutureRecord::to(topic)
                .partition(0)
                .key("k")
                .payload(value.as_str())
                .timestamp(timestamp + i as i64)
        })
        .collect();
    common::send_all(&producer, records).await;
}

/// A batch in flight when the mirror died can land although its write was reported failed:
/// then the mirror already ends with the first journalled batch, and repair copies only what
/// follows it. A mirror ending with anything else gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_skips_a_first_batch_the_mirror_already_holds() {
    let Setup {
        old,
        new,
        journal,
        config,
        dir: _dir,
        text: _,
    } = setup("landed-*").await;

    let value = |i: usize| format!("value-{i}");
    let timestamp = 1_700_000_000_000;
    // `landed-a`: the mirror holds the first batch (0..=4). `landed-b`: the mirror holds a
    // record that is not it.
    let (landed, other) = (
        common::unique_topic("landed-a"),
        common::unique_topic("landed-b"),
    );
    let mut journalled = String::new();
    for topic in [&landed, &other] {
        common::create_topic(&old.bootstrap(), topic, 1).await;
        common::create_topic(&new.bootstrap(), topic, 1).await;
        let first: Vec<String> = (0..5).map(value).collect();
        let second: Vec<String> = (5..10).map(value).collect();
        send_batch(&old.bootstrap(), topic, &first, timestamp).await;
        send_batch(&old.bootstrap(), topic, &second, timestamp + 5).await;
        for (first_offset, last_offset) in [(0, 4), (5, 9)] {
            let range = kshift::mirror::failures::FailedRange {
                topic: topic.clone(),
                write_partition: 0,
                first_offset,
                last_offset,
                mirror_cluster: "new".into(),
                reason: "test".into(),
                mirror: None,
            };
            journalled.push_str(&serde_json::to_string(&range).unwrap());
            journalled.push('\n');
        }
    }
    send_batch(
        &new.bootstrap(),
        &landed,
        &(0..5).map(value).collect::<Vec<_>>(),
        timestamp,
    )
    .await;
    // Same values, other timestamps: not the batch.
    send_batch(
        &new.bootstrap(),
        &other,
        &(0..5).map(value).collect::<Vec<_>>(),
        timestamp + 1,
    )
    .await;
    std::fs::write(&journal, journalled).unwrap();

    let stdout = common::kshift_repair(&config).await;
    assert!(
        stdout.contains("4 range(s) repaired, 15 record(s) copied, 5 found on the mirror already"),
        "{stdout}"
    );
    let on_mirror = |topic: &str, count: usize| {
        let consumer = common::assigned_consumer(&new.bootstrap(), topic, 1, &[]);
        async move {
            common::consume_until_quiet(&consumer, count, Duration::from_secs(20))
                .await
                .into_iter()
                .map(|record| String::from_utf8(record.value.unwrap_or_default()).unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        on_mirror(&landed, 10).await,
        (0..10).map(value).collect::<Vec<_>>()
    );
    let expected: Vec<String> = (0..5).map(value).chain((0..10).map(value)).collect();
    assert_eq!(on_mirror(&other, 15).await, expected);
}
