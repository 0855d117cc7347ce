//! Soak: kshift as its own process (`kshift serve`) in front of two Tansu brokers, under steady
//! produce + consume + live route swaps for `KSHIFT_SOAK_SECS` (default 600). Every
//! `KSHIFT_SOAK_SAMPLE_SECS` (default 5) it samples kshift's resident memory and open file
//! descriptors from /proc; at the end it checks that every acknowledged record was consumed
//! and that memory and descriptors did not keep growing.
//!
//! `#[ignore]`d (it runs for minutes): `scripts/soak.sh [SECONDS]` runs it.

mod common;
mod http;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;
use rdkafka::producer::FutureRecord;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// `kshift serve`, killed when dropped.
struct KshiftProcess(Child);

impl Drop for KshiftProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (resident set in KiB, open file descriptors) of process `pid`.
fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    (rss_kib, fds)
}

/// The route tables the soak swaps between: all write to `old` and read from `old` (so every
/// acknowledged record is consumable), and vary how `new` is mirrored.
fn route_table(step: u64) -> String {
    let mirror = match step % 4 {
        0 => "mirror = [\"new\"]\nmirror_mode = \"async\"",
        1 => "mirror = [\"new\"]\nmirror_mode = \"sync\"",
        2 => "mirror = [\"new\"]\nmirror_mode = \"async\"\nmirror_percent = 50",
        _ => "mirror = []",
    };
    format!(
        "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\n{mirror}\n\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs for minutes; scripts/soak.sh runs it"]
async fn soak_produce_consume_and_route_swaps_lose_nothing_and_do_not_leak() {
    let duration = Duration::from_secs(env_secs("KSHIFT_SOAK_SECS", 600));
    let sample_every = Duration::from_secs(env_secs("KSHIFT_SOAK_SAMPLE_SECS", 5));
    let (old, new) = (Broker::start().await, Broker::start().await);
    let (listen, admin) = (common::free_port(), common::free_port());
    let proxy_lines = format!("admin_listen = \"127.0.0.1:{admin}\"");
    let text = common::listening_at(
        &common::two_cluster_toml(&old, &new, &proxy_lines, &route_table(0)),
        &format!("127.0.0.1:{listen}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kshift.toml");
    std::fs::write(&config, &text).unwrap();
    let log = std::fs::File::create(dir.path().join("kshift.log")).unwrap();
    let mut kshift = KshiftProcess(
        Command::new(env!("CARGO_BIN_EXE_kshift"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kshift serve"),
    );
    let pid = kshift.0.id();
    let through = format!("127.0.0.1:{listen}");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    common::eventually(
        common::TIMEOUT,
        "kshift serve to accept connections",
        async || tokio::net::TcpStream::connect(&through).await.map(drop),
    )
    .await;
    let topic = common::unique_topic("soak");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = [("idempotent", "true"), ("plain", "false")]
        .into_iter()
        .map(|(name, idempotence)| {
            let producer = common::producer(
                &through,
                &[
                    ("acks", "all"),
                    ("enable.idempotence", idempotence),
                    ("message.timeout.ms", "30000"),
                    ("linger.ms", "5"),
                ],
            );
            let (stop, acknowledged, failed, topic) = (
                stop.clone(),
                acknowledged.clone(),
                failed.clone(),
                topic.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Bursts of 100, ~500 records/s per producer.
                    let mut deliveries = Vec::with_capacity(100);
                    for _ in 0..100 {
                        let (key, value) = (format!("key-{}", i % 64), format!("{name}-{i}"));
                        i += 1;
                        if let Ok(delivery) =
                            producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                        {
                            deliveries.push((value, delivery));
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    for (value, delivery) in deliveries {
                        match delivery.await {
                            Ok(Ok(_)) => acknowledged.lock().unwrap().push(value),
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();

    let consumer_stop = Arc::new(AtomicBool::new(false));
    let (seen, consuming) =
        common::collect_values(&through, "soak-group", &topic, consumer_stop.clone());

    // Sample, and swap the route table every 10 s.
    let started = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    let mut swaps = 0u64;
    let mut next_swap = started + Duration::from_secs(10);
    println!("elapsed_s rss_kib fds acknowledged consumed swaps");
    while started.elapsed() < duration {
        if let Ok(Some(status)) = kshift.0.try_wait() {
            panic!("kshift exited during the soak: {status}");
        }
        let (rss, fds) = sample(pid);
        let elapsed = started.elapsed().as_secs();
        samples.push((elapsed, rss, fds));
        println!(
            "{elapsed} {rss} {fds} {} {} {swaps}",
            acknowledged.lock().unwrap().len(),
            seen.lock().unwrap().len()
        );
        if Instant::now() >= next_swap {
            swaps += 1;
            let (status, body) = http::request(admin, "PUT", "/routes", &route_table(swaps)).await;
            assert_eq!(status, 200, "route swap {swaps} rejected: {body}");
            next_swap += Duration::from_secs(10);
        }
        tokio::time::sleep(sample_every).await;
    }
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    common::wait_until_seen(
        &seen,
        &acknowledged,
        Duration::from_secs(60),
        "the group consumer to get every acknowledged record",
    )
    .await;
    consumer_stop.store(true, Ordering::Relaxed);
    consuming.await.unwrap();
    let (rss_end, fds_end) = sample(pid);
    let rss_start = samples.first().map(|s| s.1).unwrap_or(0);
    let fds_start = samples.first().map(|s| s.2).unwrap_or(0);
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let consumed = seen.lock().unwrap().len();
    println!(
        "SOAK SUMMARY: {}s, {swaps} route swaps; records acknowledged {}, failed {}, consumed \
         (distinct) {consumed}, lost 0; RSS KiB start {rss_start} end {rss_end} max \
         {rss_max}; fds start {fds_start} end {fds_end} max {fds_max}",
        started.elapsed().as_secs(),
        acknowledged.len(),
        failed.load(Ordering::Relaxed),
    );
    assert!(!acknowledged.is_empty(), "nothing was produced");
    // Growth bounds generous enough for allocator noise; a leak per request or connection
    // over minutes of traffic exceeds them.
    assert!(
        fds_end <= fds_start + 16,
        "file descriptors grew from {fds_start} to {fds_end}"
    );
    if let Some(settled) = samples.iter().find(|s| s.0 >= 60) {
        assert!(
            rss_end <= settled.1 * 2 + 16 * 1024,
            "RSS grew from {} KiB (after 1 min) to {rss_end} KiB",
            settled.1
        );
    }
}
