//! `kshift verify` reports parity for a mirrored topic, names the partition and the exact
//! write-cluster offset of a record that exists on one side only, counts its progress from
//! the high watermark a Fetch returns, and prints no librdkafka error for reaching the end of a
//! partition. In a fleet (two kshift instances sharing Redis, two producers writing one
//! partition through different instances) the mirror holds every record in another order:
//! verify says so and passes in fleet mode, fails in strict mode, and still reports a record
//! written behind kshift's back.

mod common;
mod redis;

use std::time::Duration;

use common::Broker;
use kshift::RunningProxy;
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::FutureRecord;

/// Runs `kshift verify --config PATH --topics TOPIC` plus `extra`; returns (exit code,
/// stdout, stderr).
async fn verify(
    path: &std::path::Path,
    topic: &str,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let path = path.display().to_string();
    let mut args = vec!["verify", "--config", &path, "--topics", topic];
    args.extend_from_slice(extra);
    let run = common::kshift_cli(&args).await;
    (run.code, run.stdout, run.stderr)
}

/// Waits until `proxy` has mirrored `records` records to `new`.
async fn mirrored(proxy: &RunningProxy, records: u64) {
    let what = format!("{records} records to be mirrored");
    let within = Duration::from_secs(20);
    common::mirror::wait_for_counts(proxy.state(), "new", within, &what, |stats| {
        stats.mirrored_records >= records
    })
    .await;
}

/// Writes one record straight to partition `partition` of `topic` on `old`, beside kshift:
/// the mirror never gets it.
async fn behind_kshifts_back(old: &Broker, topic: &str, partition: i32) -> Delivery {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key("stray")
        .payload("only on old");
    let direct = common::producer(&old.bootstrap(), &[]);
    common::send_all(&direct, vec![record]).await.remove(0)
}

/// Lines of `stdout` whose result says MISMATCH.
fn mismatches(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.contains("MISMATCH")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_parity_then_names_the_missing_record() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routes = "[[routes]]\ntopics = \"verify-*\"\nwrite = \"old\"\nmirror = [\"new\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"";
    let text = common::two_cluster_toml(&old, &new, "", routes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, &text).unwrap();
    let proxy = common::start_proxy(&text).await;
    let through = proxy.local_addr().to_string();
    let topic = common::unique_topic("verify");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 3).await;
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
    mirrored(&proxy, 60).await;

    let (code, stdout, stderr) = verify(&path, "verify-*", &[]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("mode: strict"), "{stdout}");
    assert_eq!(stdout.matches("  ok").count(), 3, "{stdout}");
    assert!(mismatches(&stdout).is_empty(), "{stdout}");
    assert!(stdout.contains("in write order"), "{stdout}");
    // Progress totals: 60 records on each side (Fetch high watermarks, not ListOffsets),
    // and the last line of each bar has read them all.
    for side in ["old", "new"] {
        let last = stderr
            .lines()
            .rfind(|l| l.contains(&format!("{topic} on {side}")))
            .unwrap_or_else(|| panic!("no progress for {side}: {stderr}"));
        assert!(last.contains("100% 60/60"), "{stderr}");
    }
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains("PartitionEOF"), "{stderr}");

    // A record written to old behind kshift's back: only partition 1 differs, at its offset.
    let delivery = behind_kshifts_back(&old, &topic, 1).await;
    let (partition, offset) = (delivery.partition, delivery.offset);
    assert_eq!(partition, 1);
    let (code, stdout, stderr) = verify(&path, &topic, &[]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let mismatch = mismatches(&stdout);
    assert_eq!(mismatch.len(), 1, "{stdout}");
    assert!(mismatch[0].contains(" 1 "), "{stdout}");
    assert!(
        mismatch[0].ends_with(&format!(
            "MISMATCH: 1 missing on the mirror (write offsets {offset})"
        )),
        "{stdout}"
    );
}

/// A kshift of a fleet in front of `old` and `new`, sharing `redis`; its mirror to `new`
/// lingers `linger_ms` before sending an async batch.
async fn fleet_member(old: &Broker, new: &Broker, redis: &str, linger_ms: u64) -> RunningProxy {
    let routing = format!(
        "[routing]\nredis = \"{redis}\"\nredis_key = \"kshift:verify\"\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"\n"
    );
    let text = common::two_cluster_toml_at(
        &old.bootstrap(),
        &new.bootstrap(),
        "",
        &format!("mirror_linger_ms = {linger_ms}"),
        &routing,
    );
    common::start_proxy(&text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_verify_passes_another_order_and_still_finds_a_record_behind_kshifts_back() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let redis = redis::Redis::start(0).await;
    // A holds each async batch for 400 ms before mirroring it, B sends at once: records that
    // A wrote first reach the mirror after B's.
    let a = fleet_member(&old, &new, &redis.url(), 400).await;
    let b = fleet_member(&old, &new, &redis.url(), 0).await;
    let topic = common::unique_topic("fleet-verify");
    common::mirror::create_mirrored_topic(&a.local_addr().to_string(), &new.bootstrap(), &topic, 1)
        .await;
    let through_a = common::producer(&a.local_addr().to_string(), &[("linger.ms", "0")]);
    let through_b = common::producer(&b.local_addr().to_string(), &[("linger.ms", "0")]);
    // Two producers, one partition, alternating: on old a-0, b-0, a-1, b-1, ...
    for i in 0..10 {
        for (producer, name) in [(&through_a, "a"), (&through_b, "b")] {
            let value = format!("{name}-{i}");
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key(&value)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("delivered");
        }
    }
    mirrored(&a, 10).await;
    mirrored(&b, 10).await;

    // The config verify reads is a fleet member's: Redis shared, so fleet mode by default.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    let text = common::two_cluster_toml(
        &old,
        &new,
        "",
        &format!(
            "[routing]\nredis = \"{}\"\nredis_key = \"kshift:verify\"\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\n",
            redis.url()
        ),
    );
    std::fs::write(&path, &text).unwrap();
    let (code, stdout, stderr) = verify(&path, &topic, &[]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("mode: fleet"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains(&topic) && l.contains(" 20 "))
        .unwrap_or_else(|| panic!("no row for {topic}: {stdout}"));
    assert!(row.contains("ok; order differs"), "{stdout}");
    assert!(
        stdout.contains("the order differs in 1 partition(s)"),
        "{stdout}"
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");

    // Strict mode calls the same mirror a mismatch of order only.
    let (code, stdout, _) = verify(&path, &topic, &["--order", "strict"]).await;
    assert_eq!(code, Some(1), "{stdout}");
    let mismatch = mismatches(&stdout);
    assert_eq!(mismatch.len(), 1, "{stdout}");
    assert!(
        mismatch[0].contains("MISMATCH: order differs from write offset"),
        "{stdout}"
    );

    // A record behind the fleet's back is reported exactly, order notwithstanding.
    let delivery = behind_kshifts_back(&old, &topic, 0).await;
    let (code, stdout, stderr) = verify(&path, &topic, &[]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let mismatch = mismatches(&stdout);
    assert_eq!(mismatch.len(), 1, "{stdout}");
    assert!(
        mismatch[0].contains(&format!(
            "MISMATCH: 1 missing on the mirror (write offsets {}); order differs",
            delivery.offset
        )),
        "{stdout}"
    );
    assert!(!mismatch[0].contains("extra"), "{stdout}");
    assert!(!mismatch[0].contains("changed"), "{stdout}");
}
