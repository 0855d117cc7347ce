//! Records that reached the write cluster but not the mirror are journalled with their
//! write offsets; `kshift repair` copies exactly those to the mirror, after which `kshift
//! verify` reports parity, and a second repair has nothing left to do.

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use kshift::config::Config;
use kshift::Proxy;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_copies_the_journalled_ranges_and_verify_then_agrees() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("failures.jsonl");
    let proxy_lines = format!("mirror_failures_file = \"{}\"", journal.display());
    let routes = "[[routes]]\ntopics = \"repair-*\"\nwrite = \"old\"\nmirror = [\"new\"]";
    let text = common::two_cluster_toml(&old, &new, &proxy_lines, routes);
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();

    // The topic exists on the write cluster only: every mirror attempt fails.
    let topic = common::unique_topic("repair");
    common::create_topic(&old.bootstrap(), &topic, 2).await;
    // (No auto-creation from the client's metadata requests, which would create it on the
    // mirror too.)
    let producer = common::producer(
        &proxy.local_addr().to_string(),
        &[("linger.ms", "50"), ("allow.auto.create.topics", "false")],
    );
    let deliveries: Vec<_> = (0..20)
        .map(|i| {
            let (key, value) = (format!("key-{i}"), format!("value-{i}"));
            producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                .expect("queued")
        })
        .collect();
    for delivery in deliveries {
        delivery
            .await
            .unwrap()
            .expect("acknowledged by the write cluster");
    }
    let new_id = proxy.state().cluster_id("new").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.state().mirrors.stats(new_id).failed_records < 20 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            proxy.state().mirrors.stats(new_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let journalled = kshift::produce::failures::pending(&journal).unwrap();
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
    let config = path.to_str().unwrap().to_string();
    let output = common::run_kshift(vec!["repair".into(), "--config".into(), config.clone()])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{} range(s) repaired, 20 record(s) copied",
            journalled.len()
        )),
        "{stdout}"
    );

    let output = common::run_kshift(vec![
        "verify".into(),
        "--config".into(),
        config.clone(),
        "--topics".into(),
        topic.clone(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "verify after repair: {stdout}");
    assert_eq!(stdout.matches("  ok").count(), 2, "{stdout}");

    let output = common::run_kshift(vec!["repair".into(), "--config".into(), config])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("0 range(s) repaired"),
        "a second repair redid work: {stdout}"
    );
}
