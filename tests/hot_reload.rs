//! The routing table changes under live traffic — 100 times, through the admin API and
//! through the config file — without a failed request or a dropped connection, and records
//! produced after each swap follow the new table. Invalid tables change nothing and say why.

mod common;
mod http;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Broker;
use kshift::config::Config;
use kshift::{Proxy, RunningProxy};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

fn config_text(old: &Broker, new: &Broker, swap_write: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[clusters.old]
bootstrap = ["{old}"]
[clusters.new]
bootstrap = ["{new}"]
[[routes]]
topics = "stable-*"
write = "old"
[[routes]]
topics = "swap-*"
write = "{swap_write}"
[[groups]]
groups = "*"
cluster = "old"
"#,
        old = old.bootstrap(),
        new = new.bootstrap()
    )
}

fn routes_toml(swap_write: &str) -> String {
    format!(
        "[[routes]]\ntopics = \"stable-*\"\nwrite = \"old\"\n[[routes]]\ntopics = \"swap-*\"\nwrite = \"{swap_write}\"\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"\n"
    )
}

async fn start(text: &str, file: &Path) -> RunningProxy {
    std::fs::write(file, text).unwrap();
    let config = Config::load(file).unwrap();
    let proxy = Proxy::start(config.clone()).await.unwrap();
    proxy.watch_config_file(file.to_path_buf(), config).unwrap();
    proxy
}

async fn wait_for_version(proxy: &RunningProxy, version: u64) {
    let what = format!("routing version {version} to be applied");
    common::eventually(Duration::from_secs(10), &what, async || {
        let applied = proxy.state().routing.load().version;
        (applied >= version)
            .then_some(())
            .ok_or(format!("version {applied}"))
    })
    .await;
}

/// Waits until the background consumer has counted at least `count` records.
async fn wait_for_consumed(
    consumed: &AtomicU64,
    count: u64,
    within: Duration,
    consuming: &tokio::task::JoinHandle<()>,
) {
    let what = format!("the consumer group to receive {count} records");
    common::eventually(within, &what, async || {
        assert!(!consuming.is_finished(), "the consumer failed");
        let so_far = consumed.load(Ordering::Relaxed);
        (so_far >= count)
            .then_some(())
            .ok_or(format!("{so_far} received"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_traffic_fail_nothing_and_take_effect() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kshift.toml");
    let proxy = start(&config_text(&old, &new, "old"), &file).await;
    let admin = proxy.admin_addr().unwrap();
    let through = proxy.local_addr().to_string();
    let stable = common::unique_topic("stable");
    let swap = common::unique_topic("swap");
    common::create_topic(&through, &stable, 1).await;
    common::create_topic(&old.bootstrap(), &swap, 1).await;
    common::create_topic(&new.bootstrap(), &swap, 1).await;

    // Background traffic: a producer on the stable topic and a consumer group reading it.
    let producer = Arc::new(common::producer(&through, &[("linger.ms", "0")]));
    let group = common::unique_topic("group");
    let consumer = common::consumer(&through, &[("group.id", group.as_str())]);
    consumer.subscribe(&[&stable]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let background = {
        let (producer, stop, produced, stable) = (
            producer.clone(),
            stop.clone(),
            produced.clone(),
            stable.clone(),
        );
        tokio::spawn(async move {
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                let value = produced.load(Ordering::Relaxed).to_string();
                match producer
                    .send(
                        FutureRecord::to(&stable).key("k").payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(_) => {
                        produced.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((error, _)) => {
                        eprintln!("stable produce failed: {error}");
                        failures += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };
    // Count what the group consumes, from now on, in the background.
    let consumed = Arc::new(AtomicU64::new(0));
    let consuming = {
        let (consumed, stable) = (consumed.clone(), stable.clone());
        tokio::spawn(async move {
            loop {
                let message = consumer.recv().await.expect("consumer error");
                assert_eq!(message.topic(), stable);
                consumed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Steady state first: every client connected (the group joined, records flow).
    wait_for_consumed(&consumed, 10, Duration::from_secs(30), &consuming).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted_before = proxy.state().metrics.client_connections_accepted.get();
    let open_before = proxy.state().metrics.client_connections.get();

    // 100 swaps of the swap-* route's write cluster, alternating admin API and file; after
    // each, a marker record produced through kshift must land on that table's cluster.
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for swap_number in 0..100u64 {
        let write = if swap_number % 2 == 0 { "new" } else { "old" };
        let version = proxy.state().routing.load().version + 1;
        if swap_number % 4 < 2 {
            let (status, body) = http::request(admin, "PUT", "/routes", &routes_toml(write)).await;
            assert_eq!(status, 200, "{body}");
        } else {
            std::fs::write(&file, config_text(&old, &new, write)).unwrap();
        }
        wait_for_version(&proxy, version).await;
        let marker = format!("marker-{swap_number}");
        producer
            .send(
                FutureRecord::to(&swap).key("m").payload(&marker),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("marker {swap_number} failed: {error}"));
        expected.insert(marker, write);
    }
    stop.store(true, Ordering::Relaxed);
    let failures = background.await.unwrap();
    assert_eq!(failures, 0, "produce requests failed during swaps");

    let on_old = common::consume_n(
        &common::assigned_consumer(&old.bootstrap(), &swap, 1, &[]),
        50,
        Duration::from_secs(20),
    )
    .await;
    let on_new = common::consume_n(
        &common::assigned_consumer(&new.bootstrap(), &swap, 1, &[]),
        50,
        Duration::from_secs(20),
    )
    .await;
    for (records, cluster) in [(&on_old, "old"), (&on_new, "new")] {
        for record in records.iter() {
            let marker = String::from_utf8(record.value.clone().unwrap()).unwrap();
            assert_eq!(expected[&marker], cluster, "{marker} landed on {cluster}");
        }
    }

    // The consumer group saw every stable record without an error.
    let total = produced.load(Ordering::Relaxed);
    wait_for_consumed(&consumed, total, Duration::from_secs(30), &consuming).await;
    consuming.abort();
    // No connection was dropped by a swap. A swap of the write cluster moves the swap
    // topic's leader to the other cluster's virtual node, as a partition reassignment would:
    // the marker producer opens a connection to that node once, and keeps both.
    let accepted_after = proxy.state().metrics.client_connections_accepted.get();
    let open_after = proxy.state().metrics.client_connections.get();
    let closed = |accepted: u64, open: i64| accepted as i64 - open;
    assert_eq!(
        closed(accepted_before, open_before),
        closed(accepted_after, open_after),
        "client connections closed during the swaps"
    );
    assert!(
        accepted_after - accepted_before <= 1,
        "{} connections opened during the swaps: clients reconnected",
        accepted_after - accepted_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tables_from_each_source_change_nothing_and_say_why() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kshift.toml");
    let proxy = start(&config_text(&old, &new, "old"), &file).await;
    let admin = proxy.admin_addr().unwrap();

    let (status, body) = http::request(admin, "PUT", "/routes", &routes_toml("nowhere")).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("routes[1].write") && body.contains("nowhere"),
        "{body}"
    );
    let (status, body) = http::request(
        admin,
        "PUT",
        "/routes",
        "{\"routes\": [{\"topics\": \"*\"}]}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("write"), "{body}");
    let (status, body) = http::request(admin, "POST", "/routes/rollback", "").await;
    assert_eq!(status, 409, "{body}");

    // An invalid file is reported (metrics) and changes nothing.
    std::fs::write(&file, config_text(&old, &new, "nowhere")).unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the file's rejection to be counted",
        async || {
            let (_, metrics) = http::request(admin, "GET", "/metrics", "").await;
            let counted = "kshift_routing_updates_total{outcome=\"rejected\",source=\"file\"} 1";
            metrics
                .contains(counted)
                .then_some(())
                .ok_or(format!("\n{metrics}"))
        },
    )
    .await;
    assert_eq!(proxy.state().routing.load().version, 1);

    // JSON works too, GET shows it, and rollback restores the previous table.
    let json = r#"{"routes":[{"topics":"*","write":"new","mirror":["old"]}]}"#;
    let (status, body) = http::request(admin, "PUT", "/routes", json).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\":2"), "{body}");
    let (_, routes) = http::request(admin, "GET", "/routes", "").await;
    assert!(routes.contains("\"mirror\":[\"old\"]"), "{routes}");
    let (status, body) = http::request(admin, "POST", "/routes/rollback", "").await;
    assert_eq!(status, 200, "{body}");
    let table = proxy.state().routing.load();
    assert_eq!(table.version, 3);
    assert_eq!(
        table.route("swap-x", "c").unwrap().write,
        proxy.state().cluster_id("old").unwrap()
    );
    let (status, _) = http::request(admin, "GET", "/health", "").await;
    assert_eq!(status, 200);
    let (status, ready) = http::request(admin, "GET", "/ready", "").await;
    assert_eq!(status, 200, "{ready}");
}
