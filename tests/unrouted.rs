//! Unrouted-writer detection: records written straight to the write cluster's copy of a
//! mirrored partition, beside kshift, are found by partition and exact offset range (the
//! metric, `/status`, the log) and block `kshift cutover` until `--force`. kshift's own
//! writes, transaction markers included, are never taken for them.

mod common;
mod redis;

use std::time::Duration;

use common::{Broker, Kshift};
use rdkafka::producer::{FutureRecord, Producer};

/// kshift checking every 300 ms, with writes answered within 1 s (so a pass looks at what was
/// written 2 s before it).
async fn start(old: &Broker, new: &Broker) -> Kshift {
    start_with(old, new, "").await
}

/// As [`start`], with `routing_lines` (`[routing]` for a fleet) before the routes.
async fn start_with(old: &Broker, new: &Broker, routing_lines: &str) -> Kshift {
    let proxy_lines =
        "admin_listen = \"127.0.0.1:0\"\nunrouted_check_ms = 300\nrequest_timeout_ms = 1000";
    let routing = format!(
        "{routing_lines}\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\n\
         mirror = [\"new\"]\n[[groups]]\ngroups = \"*\"\ncluster = \"old\""
    );
    Kshift::start_toml(&common::two_cluster_toml(old, new, proxy_lines, &routing)).await
}

/// Waits until the checker has made `passes` more passes.
async fn passes(kshift: &Kshift, more: u64) {
    let until = kshift.control().unrouted.report().passes + more;
    let what = format!("the unrouted check to make pass {until} (it stopped)");
    common::eventually(Duration::from_secs(30), &what, async || {
        let passes = kshift.control().unrouted.report().passes;
        (passes >= until)
            .then_some(())
            .ok_or(format!("{passes} passes"))
    })
    .await;
}

/// Waits until `kshift`'s checker has found unrouted records; its report then.
async fn found(kshift: &Kshift, what: &str) -> kshift::control::unrouted::Report {
    common::eventually(Duration::from_secs(30), what, async || {
        let report = kshift.control().unrouted.report();
        if report.records > 0 {
            Ok(report)
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_beside_kshift_is_found_exactly_and_blocks_the_cutover() {
    common::trace_from_env();
    let (old, new) = (Broker::start().await, Broker::start().await);
    let kshift = start(&old, &new).await;
    let topic = common::unique_topic("unrouted");
    common::mirror::create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, 1).await;

    // kshift's own writes, a committed and an aborted transaction among them (their markers
    // sit between kshift's offsets): nothing is unrouted.
    common::send_numbered(&kshift.bootstrap(), &topic, "through", 10).await; // offsets 0..=9
    let transactional_id = common::unique_topic("txn");
    let producer = common::producer(
        &kshift.bootstrap(),
        &[("transactional.id", transactional_id.as_str())],
    );
    producer
        .init_transactions(Duration::from_secs(15))
        .expect("init transactions");
    for commit in [true, false] {
        producer.begin_transaction().expect("begin");
        producer
            .send(
                FutureRecord::to(&topic).key("txn").payload("txn"),
                Duration::from_secs(10),
            )
            .await
            .expect("transactional record");
        common::end_transaction(&producer, commit);
    }
    drop(producer);
    // Offsets 10..=13: a record and its commit marker, a record and its abort marker.
    common::send_numbered(&kshift.bootstrap(), &topic, "after-txn", 2).await; // 14..=15
    tokio::time::sleep(Duration::from_secs(2)).await; // older than the pass's grace
    common::send_numbered(&kshift.bootstrap(), &topic, "later", 1).await; // 16: moves Tansu's end past 15
    passes(&kshift, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    passes(&kshift, 4).await;
    let report = kshift.control().unrouted.report();
    assert!(report.passes > 0);
    assert_eq!(
        report.records, 0,
        "kshift's own writes were taken for unrouted ones: {report:?}"
    );

    // A service still pointed at old writes 3 records straight to it (offsets 17..=19).
    common::send_numbered(&old.bootstrap(), &topic, "beside", 3).await;
    common::send_numbered(&kshift.bootstrap(), &topic, "through-again", 5).await; // 20..=24
    let report = found(&kshift, "the writer beside kshift to be found").await;
    assert_eq!(report.records, 3, "{report:?}");
    let finding = &report.findings[0];
    assert_eq!(
        (
            finding.cluster.as_str(),
            finding.topic.as_str(),
            finding.partition,
            finding.first_offset,
            finding.last_offset
        ),
        ("old", topic.as_str(), 0, 17, 19),
        "{report:?}"
    );
    let metrics = kshift::control::admin::metrics_text(kshift.control());
    assert!(
        metrics.contains("kshift_unrouted_records_total{cluster=\"old\"} 3"),
        "{metrics}"
    );

    // The cutover refuses, naming what the mirror lacks; --force goes ahead and says so.
    let admin = format!("http://{}", kshift.admin_addr().expect("admin API"));
    let cutover = ["cutover", "--admin", &admin, "--topics", "*", "--to", "new"];
    let (ok, stdout, stderr) = common::kshift_cli(&cutover).await.into_parts();
    assert!(!ok, "the cutover went ahead: {stdout}");
    assert!(
        stderr.contains("without going through kshift")
            && stderr.contains(&format!("{topic}[0] on old: offsets 17..=19 (3 records)")),
        "{stderr}"
    );
    let (ok, stdout, stderr) = common::kshift_cli(&[&cutover[..], &["--dry-run"]].concat())
        .await
        .into_parts();
    assert!(!ok, "the dry run did not refuse: {stdout}");
    assert!(
        stdout.contains("check: no record was written to a mirrored partition around kshift"),
        "{stdout}"
    );
    let (ok, stdout, stderr_forced) = common::kshift_cli(&[&cutover[..], &["--force"]].concat())
        .await
        .into_parts();
    assert!(ok, "the forced cutover failed: {stderr_forced}\n{stdout}");
    assert!(
        stderr_forced.contains("switching anyway (--force)") && stderr_forced.contains("lost"),
        "{stderr_forced}"
    );
    let _ = stderr;
    kshift.shutdown().await;
}

/// Two instances of a fleet write one partition in turns: neither takes the other's writes
/// for unrouted ones (they share what they wrote through Redis), and both find a writer
/// beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_what_it_wrote_and_finds_only_the_writer_beside_it() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let redis = redis::Redis::start(0).await;
    let fleet = format!(
        "[routing]\nredis = \"{}\"\nredis_key = \"kshift:unrouted-test\"",
        redis.url()
    );
    let a = start_with(&old, &new, &fleet).await;
    let b = start_with(&old, &new, &fleet).await;
    let topic = common::unique_topic("unrouted-fleet");
    common::mirror::create_mirrored_topic(&a.bootstrap(), &new.bootstrap(), &topic, 1).await;
    for round in 0..6 {
        let through = if round % 2 == 0 { &a } else { &b };
        common::send_numbered(&through.bootstrap(), &topic, &format!("round-{round}"), 4).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::send_numbered(&a.bootstrap(), &topic, "later", 1).await;
    for instance in [&a, &b] {
        passes(instance, 4).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for instance in [&a, &b] {
        passes(instance, 4).await;
        let report = instance.control().unrouted.report();
        assert_eq!(
            report.records, 0,
            "the other instance's writes were taken for unrouted ones: {report:?}"
        );
    }
    common::send_numbered(&old.bootstrap(), &topic, "beside", 2).await;
    common::send_numbered(&b.bootstrap(), &topic, "after", 2).await;
    for instance in [&a, &b] {
        let report = found(
            instance,
            "each instance to find the writer beside the fleet",
        )
        .await;
        assert_eq!(report.records, 2, "{report:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
