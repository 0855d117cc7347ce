//! Graceful shutdown: kshift stops accepting, answers what it has read, flushes its mirror
//! queues, and exits 0 — no acknowledged record is lost, on the write cluster or the mirror.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Broker;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_no_acknowledged_record_and_flushes_the_mirror() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routes = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]";
    let text = common::two_cluster_toml(&old, &new, "drain_timeout_ms = 10000", routes);
    let proxy = common::start_proxy(&text).await;
    let through = proxy.local_addr().to_string();
    let topic = common::unique_topic("drain");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;

    let producer = Arc::new(common::producer(
        &through,
        &[
            ("linger.ms", "2"),
            ("message.timeout.ms", "3000"),
            ("acks", "all"),
        ],
    ));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let sending = {
        let (producer, acknowledged, topic) =
            (producer.clone(), acknowledged.clone(), topic.clone());
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..3000 {
                let value = format!("record-{i}");
                match producer.send_result(FutureRecord::to(&topic).key("k").payload(&value)) {
                    Ok(delivery) => deliveries.push((value, delivery)),
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            for (value, delivery) in deliveries {
                if let Ok(Ok(_)) = delivery.await {
                    acknowledged.lock().unwrap().push(value);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.shutdown().await;
    sending.await.unwrap();

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 10,
        "too few records acknowledged before shutdown: {}",
        acknowledged.len()
    );
    for cluster in [&old, &new] {
        let consumer = common::assigned_consumer(&cluster.bootstrap(), &topic, 1, &[]);
        let records =
            common::consume_at_least(&consumer, acknowledged.len(), Duration::from_secs(20)).await;
        let stored: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|v| !stored.contains(*v))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged records lost on {}: {:?}",
            lost.len(),
            cluster.bootstrap(),
            &lost[..lost.len().min(5)]
        );
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_after_draining() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    let port = common::free_port();
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[clusters.old]\nbootstrap = [\"{}\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually(
        Duration::from_secs(10),
        "kshift serve to accept connections",
        async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
        },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("kshift did not exit after SIGTERM")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
