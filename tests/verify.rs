//! `kshift verify` reports parity for a mirrored topic, and names the partition and the
//! write-cluster offset range when a record exists on one side only.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Broker;
use kshift::config::Config;
use kshift::Proxy;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_parity_then_names_the_missing_range() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routes = "[[routes]]\ntopics = \"verify-*\"\nwrite = \"old\"\nmirror = [\"new\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"";
    let text = common::two_cluster_toml(&old, &new, "", routes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let through = proxy.local_addr().to_string();
    let topic = common::unique_topic("verify");
    common::create_topic(&through, &topic, 3).await;
    common::wait_for_topic(&new.bootstrap(), &topic, 3);
    let producer = common::producer(&through, &[]);
    for i in 0..60 {
        let (key, value) = (format!("key-{}", i % 7), format!("value-{i}"));
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let new_id = proxy.state().cluster_id("new").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.state().mirrors.stats(new_id).mirrored_records < 60 {
        assert!(std::time::Instant::now() < deadline, "records not mirrored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let verify = |path: std::path::PathBuf, topic: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_kshift"))
                .args([
                    "verify",
                    "--config",
                    path.to_str().unwrap(),
                    "--topics",
                    &topic,
                ])
                .output()
                .unwrap()
        })
    };
    let output = verify(path.clone(), "verify-*".into()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("  ok").count(), 3, "{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");

    // A record written to old behind kshift's back: only partition 1 differs, at its offset.
    let direct = common::producer(&old.bootstrap(), &[]);
    let delivery = direct
        .send(
            FutureRecord::to(&topic)
                .partition(1)
                .key("stray")
                .payload("only on old"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered directly");
    let (partition, offset) = (delivery.partition, delivery.offset);
    assert_eq!(partition, 1);
    let output = verify(path, topic.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let mismatch: Vec<&str> = stdout.lines().filter(|l| l.contains("MISMATCH")).collect();
    assert_eq!(mismatch.len(), 1, "{stdout}");
    assert!(mismatch[0].contains(" 1 "), "{stdout}");
    assert!(
        mismatch[0].contains(&format!("write offsets {offset}..={offset}")),
        "{stdout}"
    );
}
