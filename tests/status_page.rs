//! The operator's view: the HTML status page as a browser renders it (headless Chromium),
//! the JSON status, and `kshift health` for container health checks.

mod common;
mod http;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Broker;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;

/// Debian's chromium, as the env notes describe it; a missing browser fails the test.
fn chromium_dump_dom(url: &str) -> String {
    chromium_dump_dom_after(url, None)
}

/// The DOM of `url` after the page's scripts ran for `budget_ms` of virtual time, if given.
fn chromium_dump_dom_after(url: &str, budget_ms: Option<u64>) -> String {
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
        .args(budget_ms.map(|ms| format!("--virtual-time-budget={ms}")))
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
    let proxy = common::start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let through = proxy.local_addr().to_string();
    let topic = format!("orders.{}", common::unique_topic("status"));
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
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
    common::mirror::wait_for_counts(
        proxy.state(),
        "new",
        Duration::from_secs(20),
        "5 records to be mirrored",
        |stats| stats.mirrored_records >= 5,
    )
    .await;

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

    let health = common::kshift_cli(&["health", "--admin", &format!("http://{admin}")]).await;
    assert!(health.ok(), "{}", health.stderr);
    let unhealthy = common::kshift_cli(&["health", "--admin", "http://127.0.0.1:1"]).await;
    assert!(!unhealthy.ok());
}

/// The text of the table cells of the first row of `table_id` whose second cell is `key`.
fn row_cells(html: &str, table_id: &str, key: &str) -> Vec<String> {
    let table = html
        .split(&format!("<table id=\"{table_id}\">"))
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("no table {table_id}: {html}"));
    table
        .split("<tr>")
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = cell.split_once('>').map_or("", |(_, rest)| rest);
                    text.split("</td>").next().unwrap_or("").to_string()
                })
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.get(1).is_some_and(|cell| cell == key))
        .unwrap_or_else(|| panic!("no row {key:?} in {table_id}: {table}"))
}

/// The status page as a migration's console, rendered by a browser while a producer and a
/// consumer group run through kshift: the route's phase, live write and mirror rates, the
/// lag sparkline, the group's positions on both clusters, the last verify (reported by
/// `kshift verify --admin`), offset-sync and unrouted lines; and the page refreshes itself
/// (its script swapped the console in) and follows a read cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_a_live_console_of_the_migration() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routes = "[[routes]]\ntopics = \"orders*\"\nwrite = \"old\"\nmirror = [\"new\"]\nread = \"old\"\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"\noffset_sync_ms = 500";
    let text = common::two_cluster_toml(&old, &new, "admin_listen = \"127.0.0.1:0\"", routes);
    let proxy = common::start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let through = proxy.local_addr().to_string();
    let topic = format!("orders-{}", common::unique_topic("console"));
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 2).await;

    // A producer writing ~200 records/s and a group consuming and committing, all along.
    let running = Arc::new(AtomicBool::new(true));
    let producing = {
        let (running, through, topic) = (running.clone(), through.clone(), topic.clone());
        tokio::spawn(async move {
            let producer = common::producer(&through, &[("linger.ms", "1")]);
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed) {
                let value = format!("v{sent}");
                producer
                    .send(
                        FutureRecord::to(&topic).key(&value).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("delivered");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let group = common::unique_topic("console-group");
    let consumer = common::consumer(&through, &[("group.id", &group)]);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let consuming = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut consumed = 0u64;
            while running.load(Ordering::Relaxed) {
                if let Ok(Ok(message)) =
                    tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
                {
                    consumed += 1;
                    let _ = consumer.commit_message(&message, CommitMode::Async);
                }
            }
            consumed
        })
    };
    // The console samples once a second and reads group positions every 5 s; the offset
    // sync copies the group's commits on old, translated, to new.
    let what = format!("the console to show {group} committed on both clusters");
    common::eventually(Duration::from_secs(30), &what, async || {
        let groups = proxy.control().console.groups();
        let committed_on_both = groups.iter().any(|g| {
            g.group == group
                && g.clusters.len() == 2
                && g.clusters
                    .iter()
                    .all(|(_, p)| p.as_ref().is_ok_and(|p| !p.is_empty()))
        });
        let samples = proxy.control().console.samples_taken();
        (committed_on_both && samples >= 4)
            .then_some(())
            .ok_or(format!("{samples} samples, groups {groups:?}"))
    })
    .await;

    // `kshift verify --admin` reports to the page.
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), &text).unwrap();
    let verify = common::kshift_cli(&[
        "verify",
        "--config",
        config_file.path().to_str().unwrap(),
        "--topics",
        &topic,
        "--order",
        "fleet",
        "--admin",
        &format!("http://{admin}"),
    ])
    .await;
    let reported = proxy
        .control()
        .console
        .verify()
        .unwrap_or_else(|| panic!("verify reported nothing: {}", verify.stderr));
    assert_eq!(reported.topics, topic);
    assert_eq!(reported.mode, "fleet");

    let rendering = |html: &str| -> u64 {
        html.split("data-rendering=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no rendering number: {html}"))
    };
    let (_, before) = http::request(admin, "GET", "/?part=console", "").await;
    let before = rendering(&before);
    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom_after(&url, Some(5000)))
        .await
        .unwrap();
    // The browser loaded rendering before + 1; its script swapped in a later one.
    assert!(
        rendering(&dom) >= before + 2,
        "the page did not refresh itself: {dom}"
    );
    let row = row_cells(&dom, "migration", "orders*");
    assert_eq!(row[2], "shadow (100%)", "{row:?}");
    let written: f64 = row[3].parse().unwrap_or_else(|_| panic!("{row:?}"));
    let mirrored: f64 = row[4].parse().unwrap_or_else(|_| panic!("{row:?}"));
    assert!(written > 20.0 && mirrored > 20.0, "{row:?}");
    assert!(row[6].contains("<polyline"), "no sparkline: {row:?}");
    assert!(
        dom.contains(&format!("<td>{group}</td><td>0</td><td>old</td>")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<td>{group}</td><td>0</td><td>new</td>")),
        "{dom}"
    );
    assert!(dom.contains(&format!("{topic}[0] ")), "{dom}");
    assert!(
        dom.contains(&format!("Last verify of <b>{topic}</b> (fleet mode)")),
        "{dom}"
    );
    let synced: u64 = dom
        .split("<li id=\"offset-sync\">Offset sync: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset-sync line: {dom}"));
    assert!(synced >= 1, "{dom}");
    assert!(
        dom.contains("<li id=\"unrouted\">Unrouted writes: none found"),
        "{dom}"
    );

    // A read cutover shows as the route's phase on the next refresh.
    let cutover = routes
        .replace("read = \"old\"", "read = \"new\"")
        .replace("cluster = \"old\"", "cluster = \"new\"");
    let (status, body) = http::request(admin, "PUT", "/routes", &cutover).await;
    assert_eq!(status, 200, "{body}");
    let (status, console) = http::request(admin, "GET", "/?part=console", "").await;
    assert_eq!(status, 200);
    assert!(
        !console.contains("<html"),
        "the console part is not the whole page"
    );
    let row = row_cells(&console, "migration", "orders*");
    assert_eq!(row[2], "read cut over (to new)", "{row:?}");

    running.store(false, Ordering::Relaxed);
    let (sent, consumed) = (producing.await.unwrap(), consuming.await.unwrap());
    assert!(sent > 0 && consumed > 0, "{sent} sent, {consumed} consumed");
}
