//! The operator's view: the HTML status page as a browser renders it (headless Chromium),
//! the JSON status, and `kshift health` for container health checks.

mod common;
mod http;

use std::process::Command;
use std::time::Duration;

use common::Broker;
use kshift::config::Config;
use kshift::Proxy;
use rdkafka::producer::FutureRecord;

/// Debian's chromium, as the env notes describe it; a missing browser fails the test.
fn chromium_dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run chromium ({error}): install it with `apt-get install -y chromium` (or run .ci/run)")
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_routes_clusters_and_mirror_progress_in_a_browser() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routes = "[[routes]]\ntopics = \"orders.*\"\nwrite = \"old\"\nmirror = [\"new\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"";
    let text = common::two_cluster_toml(&old, &new, "admin_listen = \"127.0.0.1:0\"", routes);
    let proxy = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let admin = proxy.admin_addr().unwrap();
    let through = proxy.local_addr().to_string();
    let topic = format!("orders.{}", common::unique_topic("status"));
    common::create_topic(&through, &topic, 1).await;
    common::wait_for_topic(&new.bootstrap(), &topic, 1);
    let producer = common::producer(&through, &[]);
    for i in 0..5 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("v{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let new_id = proxy.state().cluster_id("new").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.state().mirrors.stats(new_id).mirrored_records < 5 {
        assert!(std::time::Instant::now() < deadline, "records not mirrored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&url))
        .await
        .unwrap();
    assert!(dom.contains("<h1>kshift status</h1>"), "{dom}");
    assert!(dom.contains("<b>version 1</b>"), "{dom}");
    assert!(dom.contains("<td>orders.*</td>"), "{dom}");
    // The mirrored route's row ends with its mirror lag: nothing waiting.
    assert!(dom.contains("<td>Identity</td><td>0</td></tr>"), "{dom}");
    // Cluster rows: name, health, mirrored records (5 reached `new`).
    assert!(
        dom.contains("<td>new</td><td class=\"up\">reachable</td><td>5</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>old</td><td class=\"up\">reachable</td>"),
        "{dom}"
    );

    let (status, json) = http::request(admin, "GET", "/status", "").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["routing"]["version"], 1);
    assert_eq!(json["mirror_lag_by_route"][0]["route"], 0);
    assert_eq!(json["mirror_lag_by_route"][0]["lag_records"], 0);
    let clusters = json["clusters"].as_array().unwrap();
    let new_status = clusters.iter().find(|c| c["name"] == "new").unwrap();
    assert_eq!(new_status["mirror"]["mirrored_records"], 5);

    let (status, metrics) = http::request(admin, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "kshift_mirror_records_total{cluster=\"new\",route=\"0\",outcome=\"mirrored\"} 5"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("kshift_backend_requests_total{cluster=\"old\",api=\"Produce\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kshift_client_requests_total{api=\"Produce\"}"),
        "{metrics}"
    );
    // The mirror writes went to `new`: bytes were sent there.
    assert!(
        metrics.contains("kshift_backend_bytes_total{cluster=\"new\",direction=\"sent\"}"),
        "{metrics}"
    );

    let health = Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(["health", "--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let unhealthy = Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(["health", "--admin", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!unhealthy.status.success());
}
