//! Traffic splitting against two real brokers: records produced through kshift land on the
//! route's write cluster and are mirrored to its mirror cluster — in the same per-partition
//! order, by key percentage, re-partitioned by murmur2, renamed, committed transactions
//! only — and a mirror that goes down neither fails nor slows async producers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::mirror::{by_partition, read_all};
use common::{Broker, Received};
use kshift::codec::batch::partition_for_key;
use kshift::mirror::percent_selects;
use kshift::RunningProxy;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureRecord, Producer};

/// `old` is written and read, `new` mirrors; `route` is spliced into the route.
async fn start(old: &Broker, new: &Broker, route: &str) -> RunningProxy {
    start_with(old, new, route, "").await
}

/// As [`start`], with `mirror_lines` added to `[clusters.new]`.
async fn start_with(old: &Broker, new: &Broker, route: &str, mirror_lines: &str) -> RunningProxy {
    let routing = format!(
        "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\n{route}\n[[groups]]\ngroups = \"*\"\ncluster = \"old\""
    );
    start_routing(old, new, &routing, mirror_lines).await
}

/// kshift in front of `old` and `new` with the whole `routing` given.
async fn start_routing(
    old: &Broker,
    new: &Broker,
    routing: &str,
    mirror_lines: &str,
) -> RunningProxy {
    common::trace_from_env();
    let toml = common::two_cluster_toml(
        old,
        new,
        "connect_timeout_ms = 1000\nrequest_timeout_ms = 3000",
        &format!("{mirror_lines}\n{routing}"),
    );
    common::start_proxy(&toml).await
}

/// The id of the mirror cluster `new`.
fn new_id(proxy: &RunningProxy) -> usize {
    proxy.state().cluster_id("new").expect("cluster new")
}

fn bootstrap(proxy: &RunningProxy) -> String {
    proxy.local_addr().to_string()
}

/// Produces `per_key` rounds of one record per key (`key-{k}`, valued `value-{key}-{round}`)
/// for `keys` keys through `bootstrap`, with a producer of `settings`.
async fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    settings: &[(&str, &str)],
    keys: usize,
    per_key: usize,
) {
    let records = (0..per_key).flat_map(|round| {
        (0..keys).map(move |key| {
            let key = format!("key-{key}");
            let value = format!("value-{key}-{round}");
            (key, value)
        })
    });
    common::send_keyed(&common::producer(bootstrap, settings), topic, records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_reach_both_clusters_in_the_same_per_partition_order() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start(&old, &new, "mirror = [\"new\"]").await;
    let through = bootstrap(&proxy);
    for (topic, settings) in [
        (
            common::unique_topic("mirror-idempotent"),
            vec![("enable.idempotence", "true")],
        ),
        (
            common::unique_topic("mirror-plain"),
            vec![("enable.idempotence", "false"), ("acks", "1")],
        ),
    ] {
        // Created through kshift: on the write cluster and on the mirror.
        common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 3).await;
        produce_keyed(&through, &topic, &settings, 30, 5).await;

        let on_old = read_all(&old.bootstrap(), &topic, 3, 150).await;
        let on_new = read_all(&new.bootstrap(), &topic, 3, 150).await;
        assert_eq!(
            by_partition(&on_old),
            by_partition(&on_new),
            "{topic}: per-partition sequences differ"
        );
        let counts = proxy.state().mirrors.stats(new_id(&proxy));
        assert_eq!(
            counts.failed_records + counts.dropped_records,
            0,
            "{counts:?}"
        );
        // Every mirrored batch is in the offset map.
        let mapped: i64 = (0..3)
            .flat_map(|p| {
                proxy
                    .state()
                    .mirrors
                    .offsets
                    .mappings(&topic, p, new_id(&proxy))
            })
            .map(|m| m.record_count)
            .sum();
        assert_eq!(mapped, 150, "{topic}");
    }
    let counts = proxy.state().mirrors.stats(new_id(&proxy));
    assert_eq!(counts.mirrored_records, 300, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_map_translates_every_mirrored_record() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start(&old, &new, "mirror = [\"new\"]").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("offset-map");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    produce_keyed(&through, &topic, &[("linger.ms", "0")], 10, 4).await;
    let on_old = read_all(&old.bootstrap(), &topic, 1, 40).await;
    let on_new = read_all(&new.bootstrap(), &topic, 1, 40).await;
    assert_every_record_translates(&proxy, &topic, &on_old, &on_new);
}

/// The offset map takes each record of partition 0 on old (`on_old`) to the offset of the
/// same record (by value) on new (`on_new`).
fn assert_every_record_translates(
    proxy: &RunningProxy,
    topic: &str,
    on_old: &[Received],
    on_new: &[Received],
) {
    let new_offset_of: BTreeMap<_, _> =
        on_new.iter().map(|r| (r.value.clone(), r.offset)).collect();
    let offsets = &proxy.state().mirrors.offsets;
    for record in on_old {
        assert_eq!(
            offsets.translate(topic, 0, new_id(proxy), record.offset),
            Some((0, new_offset_of[&record.value])),
            "offset {}",
            record.offset
        );
    }
}

/// The count of `kshift_backend_requests_total` for `cluster`'s `api`.
fn backend_requests(proxy: &RunningProxy, cluster: &str, api: &str) -> u64 {
    common::metric_sum(
        &kshift::control::admin::metrics_text(proxy.control()),
        "kshift_backend_requests_total",
        &[&format!("cluster=\"{cluster}\""), &format!("api=\"{api}\"")],
    ) as u64
}

/// Produces one record and waits for its acknowledgement.
async fn send_one(producer: &common::TestProducer, topic: &str, key: &str, value: &str) {
    common::send_keyed(producer, topic, [(key.to_string(), value.to_string())]).await;
}

/// Reads the `count` records of single-partition `topic` from both clusters, checks they are
/// the same in the same order and that every offset translates; returns the produce
/// requests kshift sent to `old` and to the mirror `new`.
async fn mirrored_alike(
    proxy: &RunningProxy,
    old: &Broker,
    new: &Broker,
    topic: &str,
    count: usize,
) -> (u64, u64) {
    let on_old = read_all(&old.bootstrap(), topic, 1, count).await;
    let on_new = read_all(&new.bootstrap(), topic, 1, count).await;
    assert_eq!(by_partition(&on_old), by_partition(&on_new));
    assert_every_record_translates(proxy, topic, &on_old, &on_new);
    (
        backend_requests(proxy, "old", "Produce"),
        backend_requests(proxy, "new", "Produce"),
    )
}

/// A burst of small produce requests outruns the async mirror writer, which then sends the
/// queued batches of the partition merged: fewer requests, the same records in the same
/// order, every one translatable. (No lingering: this is the writer catching up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_async_batches_are_mirrored_merged_in_order_and_translatable() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start_with(
        &old,
        &new,
        "mirror = [\"new\"]\nmirror_mode = \"async\"",
        "mirror_linger_ms = 0",
    )
    .await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("merged");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    let settings = [
        ("linger.ms", "0"),
        ("acks", "1"),
        ("batch.num.messages", "5"),
    ];
    produce_keyed(&through, &topic, &settings, 20, 50).await;
    let (written, mirrored) = mirrored_alike(&proxy, &old, &new, &topic, 1000).await;
    assert!(
        mirrored < written,
        "{written} produce requests to old, {mirrored} to the mirror: nothing was merged"
    );
}

/// A producer that waits for each answer before sending the next record never builds a
/// queue; `mirror_linger_ms` gathers its batches so that the mirror gets fewer requests
/// anyway — the same records in the same order, every one translatable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_at_a_time_producers_batches_are_lingered_into_fewer_mirror_requests() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start_with(&old, &new, "mirror = [\"new\"]", "mirror_linger_ms = 1000").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("lingered");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    let producer = common::producer(&through, &[("linger.ms", "0"), ("acks", "all")]);
    for i in 0..10 {
        send_one(&producer, &topic, "key", &format!("value-{i}")).await;
    }
    let (written, mirrored) = mirrored_alike(&proxy, &old, &new, &topic, 10).await;
    assert!(
        written >= 10 && mirrored < written / 2,
        "{written} produce requests to old, {mirrored} to the mirror: batches were not gathered"
    );
}

/// A `sync` client waits for its mirror: its batch ends another route's `async` linger on
/// the same mirror cluster instead of waiting it out, and both reach the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_batch_does_not_wait_out_an_async_linger() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let routing = "[[routes]]\ntopics = \"eager-*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_mode = \"sync\"\n\
                   [[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_mode = \"async\"";
    let linger = Duration::from_secs(8);
    let proxy = start_routing(
        &old,
        &new,
        routing,
        &format!("mirror_linger_ms = {}", linger.as_millis()),
    )
    .await;
    let through = bootstrap(&proxy);
    let (lazy, eager) = (common::unique_topic("lazy"), common::unique_topic("eager"));
    for topic in [&lazy, &eager] {
        common::mirror::create_mirrored_topic(&through, &new.bootstrap(), topic, 1).await;
    }
    let producer = common::producer(&through, &[("linger.ms", "0")]);
    send_one(&producer, &lazy, "key", "value").await;
    let started = std::time::Instant::now();
    send_one(&producer, &eager, "key", "value").await;
    assert!(
        started.elapsed() < linger / 2,
        "the sync produce took {:?}: it waited for the async linger",
        started.elapsed()
    );
    // Both went out together, long before the linger would have ended.
    read_all(&new.bootstrap(), &lazy, 1, 1).await;
    read_all(&new.bootstrap(), &eager, 1, 1).await;
    assert!(started.elapsed() < linger / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_percent_mirrors_about_half_the_keys_each_completely() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start(&old, &new, "mirror = [\"new\"]\nmirror_percent = 50").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("mirror-percent");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 2).await;
    produce_keyed(&through, &topic, &[], 100, 3).await;

    let expected_keys: BTreeSet<String> = (0..100)
        .map(|k| format!("key-{k}"))
        .filter(|k| percent_selects(k.as_bytes(), 50))
        .collect();
    assert!(
        (30..70).contains(&expected_keys.len()),
        "{} keys selected",
        expected_keys.len()
    );
    let on_new = read_all(&new.bootstrap(), &topic, 2, expected_keys.len() * 3).await;
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for record in &on_new {
        let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(
        per_key.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys
    );
    assert!(
        per_key.values().all(|count| *count == 3),
        "a mirrored key is incomplete: {per_key:?}"
    );
    // The write cluster has everything.
    read_all(&old.bootstrap(), &topic, 2, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn murmur2_repartitions_three_partitions_onto_five_like_the_java_client() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start(&old, &new, "mirror = [\"new\"]\npartitioning = \"murmur2\"").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("murmur2");
    common::create_topic(&old.bootstrap(), &topic, 3).await;
    common::create_topic(&new.bootstrap(), &topic, 5).await;
    produce_keyed(&through, &topic, &[("compression.type", "zstd")], 40, 2).await;

    let on_new = read_all(&new.bootstrap(), &topic, 5, 80).await;
    for record in &on_new {
        let key = record.key.clone().unwrap();
        assert_eq!(
            record.partition,
            partition_for_key(&key, 5),
            "key {} on the wrong partition",
            String::from_utf8_lossy(&key)
        );
    }
    // Per key, the mirror keeps the write order.
    let mut rounds: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    let mut sorted = on_new.clone();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for record in sorted {
        rounds
            .entry(record.key.unwrap())
            .or_default()
            .push(record.value.unwrap());
    }
    for (key, values) in rounds {
        let key = String::from_utf8(key).unwrap();
        assert_eq!(
            values,
            vec![
                format!("value-{key}-0").into_bytes(),
                format!("value-{key}-1").into_bytes()
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_writes_orders_on_old_and_orders_v2_on_new() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let suffix = common::unique_topic("");
    let (orders, renamed) = (format!("orders{suffix}"), format!("orders{suffix}.v2"));
    let route = format!("mirror = [\"new\"]\nrename = {{ new = \"{renamed}\" }}");
    let proxy = start(&old, &new, &route).await;
    let through = bootstrap(&proxy);
    common::create_topic(&through, &orders, 1).await;
    common::wait_for_topic(&new.bootstrap(), &renamed, 1).await;
    produce_keyed(&through, &orders, &[], 5, 2).await;
    let on_old = read_all(&old.bootstrap(), &orders, 1, 10).await;
    let on_new = read_all(&new.bootstrap(), &renamed, 1, 10).await;
    assert_eq!(by_partition(&on_old), by_partition(&on_new));
    // The renamed name stays a backend detail: through kshift the topic is `orders`.
    let consumer = common::consumer(&through, &[]);
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(names.contains(&orders.as_str()), "{names:?}");
    assert!(!names.contains(&renamed.as_str()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_never_reach_the_mirror_and_committed_ones_do() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start(&old, &new, "mirror = [\"new\"]").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("mirror-txn");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    let transactional_id = common::unique_topic("txn");
    let producer = common::producer(&through, &[("transactional.id", transactional_id.as_str())]);
    producer
        .init_transactions(Duration::from_secs(15))
        .expect("init transactions");
    for (round, commit) in [(0, true), (1, false), (2, true)] {
        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            send_one(&producer, &topic, "k", &format!("txn-{round}-{i}")).await;
        }
        common::end_transaction(&producer, commit);
    }
    let on_new = read_all(&new.bootstrap(), &topic, 1, 6).await;
    let values: Vec<String> = on_new
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        ["txn-0-0", "txn-0-1", "txn-0-2", "txn-2-0", "txn-2-1", "txn-2-2"]
    );
}

/// kshift writing `old` and mirroring to `new` by `route`, the mirror producer giving a batch
/// up after 2 s of retries (120 s by default); a topic whose first `records` keyed records
/// reached the mirror, and then the mirror gone. The write cluster, kshift and the topic.
async fn a_mirror_that_went_down(
    route: &str,
    prefix: &str,
    records: usize,
) -> (Broker, RunningProxy, String) {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let proxy = start_with(&old, &new, route, "mirror_delivery_timeout_ms = 2000").await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic(prefix);
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    produce_keyed(&through, &topic, &[], records, 1).await;
    read_all(&new.bootstrap(), &topic, 1, records).await;
    drop(new);
    (old, proxy, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_down_async_producers_see_nothing_and_failures_are_counted() {
    let (old, proxy, topic) = a_mirror_that_went_down("mirror = [\"new\"]", "mirror-down", 5).await;
    let through = bootstrap(&proxy);
    produce_keyed(&through, &topic, &[], 5, 4).await;
    read_all(&old.bootstrap(), &topic, 1, 25).await;
    common::mirror::wait_for_counts(
        proxy.state(),
        "new",
        Duration::from_secs(60),
        "the 20 records written while the mirror was down to be counted failed",
        |counts| counts.lag_records == 0 && counts.failed_records == 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_down_sync_producers_get_retriable_errors() {
    let route = "mirror = [\"new\"]\nmirror_mode = \"sync\"";
    let (_old, proxy, topic) = a_mirror_that_went_down(route, "mirror-sync", 3).await;
    let through = bootstrap(&proxy);
    // With retries off, the client sees the retriable error itself.
    let producer = common::producer(
        &through,
        &[("retries", "0"), ("enable.idempotence", "false")],
    );
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("k").payload("v"),
            Duration::from_secs(10),
        )
        .await;
    let (error, _) = delivery.expect_err("a sync mirror failure fails the produce");
    let code = error.rdkafka_error_code().expect("a broker error code");
    assert_eq!(
        code,
        rdkafka::types::RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_map_survives_a_kshift_restart() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("offsets.jsonl");
    let config = |old: &Broker, new: &Broker| {
        let proxy_lines = format!("offset_map_file = \"{}\"", journal.display());
        let routes = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]";
        common::two_cluster_toml(old, new, &proxy_lines, routes)
    };
    let proxy = common::start_proxy(&config(&old, &new)).await;
    let through = bootstrap(&proxy);
    let topic = common::unique_topic("journal");
    common::mirror::create_mirrored_topic(&through, &new.bootstrap(), &topic, 1).await;
    produce_keyed(&through, &topic, &[("linger.ms", "0")], 4, 3).await;
    proxy.shutdown().await;

    let restarted = common::start_proxy(&config(&old, &new)).await;
    let on_old = read_all(&old.bootstrap(), &topic, 1, 12).await;
    let on_new = read_all(&new.bootstrap(), &topic, 1, 12).await;
    let new_offset_of: BTreeMap<_, _> =
        on_new.iter().map(|r| (r.value.clone(), r.offset)).collect();
    let new_cluster = new_id(&restarted);
    for record in &on_old {
        let translated =
            restarted
                .state()
                .mirrors
                .offsets
                .translate(&topic, 0, new_cluster, record.offset);
        assert_eq!(
            translated,
            Some((0, new_offset_of[&record.value])),
            "offset {} after restart",
            record.offset
        );
    }
}
