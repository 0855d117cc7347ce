//! kshift's mirror producer at production shapes: a mirror cluster in another region (a delay
//! proxy in front of Tansu), a mirror cluster of several brokers whose leaders move and whose
//! Produce answers fail (librdkafka's MockCluster), and a mirror too slow for its producers,
//! with each overflow policy. Every test ends with the mirror holding exactly the write
//! cluster's records in the same order per partition, every offset translating — or, for
//! `drop`, with the loss counted.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mirror::{
    assert_mirrored_alike, async_mirroring_kshift, create_mirrored_topic, settled,
    ASYNC_MIRROR_ROUTING,
};
use common::mock_cluster::{MockKafka, RDKafkaApiKey, RDKafkaRespErr};
use common::{Broker, FarBroker, Kshift};
use kshift::mirror::MirrorCounts;
use rdkafka::producer::FutureRecord;

/// Sends `count` records keyed and valued `{prefix}-{i}` (unique values) as fast as the
/// producer takes them, then waits for every acknowledgement.
async fn send_many(producer: &common::TestProducer, topic: &str, prefix: &str, count: usize) {
    send_padded(producer, topic, prefix, count, 0).await;
}

/// As [`send_many`], each value padded with `pad` bytes.
async fn send_padded(
    producer: &common::TestProducer,
    topic: &str,
    prefix: &str,
    count: usize,
    pad: usize,
) {
    let padding = "x".repeat(pad);
    let records = (0..count).map(|i| {
        let key = format!("{prefix}-{i}");
        let value = format!("{key}{padding}");
        (key, value)
    });
    common::send_keyed(producer, topic, records).await;
}

/// Waits up to `within` until kshift's mirror to `new` has settled `records` records, checks
/// that every one was mirrored (none failed or dropped) and that the mirror holds what the
/// write cluster `old` holds ([`assert_mirrored_alike`]); returns the mirror's counters.
async fn assert_mirror_complete(
    kshift: &Kshift,
    old: &str,
    new: &str,
    topic: &str,
    partitions: i32,
    records: usize,
    within: Duration,
) -> MirrorCounts {
    let stats = settled(kshift.state(), "new", records as u64, within).await;
    assert_eq!(
        (
            stats.mirrored_records,
            stats.failed_records,
            stats.dropped_records
        ),
        (records as u64, 0, 0),
        "{stats:?}"
    );
    assert_mirrored_alike(kshift.state(), old, new, "new", topic, partitions, records).await;
    stats
}

/// A mirror 10 ms away (a 20 ms round trip): the producer keeps several requests in flight
/// to it, and the mirror still gets every record in write order with every offset mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_mirror_gets_every_record_in_write_order_with_several_requests_in_flight() {
    const PARTITIONS: i32 = 3;
    const RECORDS: usize = 6_000;
    let old = Broker::start().await;
    let new = FarBroker::start(Duration::from_millis(10)).await;
    let kshift = async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), "").await;
    let topic = common::unique_topic("far-mirror");
    create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, PARTITIONS).await;
    // 1 KB records in rounds: each round is several full mirror batches per partition, more
    // than one request's worth for each of the mirror's round trips.
    let producer = common::producer(&kshift.bootstrap(), &[("linger.ms", "1")]);
    for round in 0..RECORDS / 1_000 {
        send_padded(&producer, &topic, &format!("far-{round}"), 1_000, 1_000).await;
    }
    let stats = assert_mirror_complete(
        &kshift,
        &old.bootstrap(),
        &new.bootstrap(),
        &topic,
        PARTITIONS,
        RECORDS,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        stats.max_requests_in_flight >= 2,
        "the producer never had two requests in flight to the far mirror: {stats:?}"
    );
}

/// The link to a far mirror breaks again and again while batches are in flight on it: some
/// of what was on the link had reached the broker, some not. The producer resends everything
/// unanswered in sequence order, and the broker's idempotence drops what had landed: nothing
/// lost, nothing twice, the order kept, every offset mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_mirror_whose_link_breaks_gets_every_record_once_in_order() {
    const PARTITIONS: i32 = 3;
    const PER_ROUND: usize = 300;
    common::trace_from_env();
    let old = Broker::start().await;
    let new = FarBroker::start(Duration::from_millis(10)).await;
    let kshift = async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), "").await;
    let topic = common::unique_topic("far-breaks");
    create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, PARTITIONS).await;
    let producer = common::producer(
        &kshift.bootstrap(),
        &[("linger.ms", "1"), ("batch.num.messages", "50")],
    );
    // The producer is connected and has its producer id before the link starts breaking.
    send_many(&producer, &topic, "warm-up", 1).await;
    settled(kshift.state(), "new", 1, Duration::from_secs(30)).await;
    // Each round's mirror requests are on the link for ~20 ms after its records are written:
    // every third round, the break comes 12 ms in. Rounds go on until the breaks have failed
    // a few requests.
    let mut rounds = 0;
    while rounds < 12 || (mirror_produce_failures(&kshift) < 3 && rounds < 150) {
        send_many(&producer, &topic, &format!("round-{rounds}"), PER_ROUND).await;
        rounds += 1;
        if rounds % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(12)).await;
            new.break_connections();
        }
    }
    let records = rounds * PER_ROUND + 1;
    assert_mirror_complete(
        &kshift,
        &old.bootstrap(),
        &new.bootstrap(),
        &topic,
        PARTITIONS,
        records,
        Duration::from_secs(90),
    )
    .await;
    assert_mirror_produces_failed(&kshift);
}

/// A batch whose answer is lost on the way back (the link breaks after the request reached
/// the far broker) is resent; the broker answers it as a duplicate — Tansu without saying
/// where it is — and kshift finds where it landed, so the offset map stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_the_mirror_already_holds_is_mapped_where_it_landed() {
    common::trace_from_env();
    let old = Broker::start().await;
    // 200 ms each way: a request reaches the broker ~200 ms after it is sent, its answer is
    // on the link until ~400 ms.
    let new = FarBroker::start(Duration::from_millis(200)).await;
    let kshift = async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), "").await;
    let topic = common::unique_topic("lost-answer");
    create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, 1).await;
    let producer = common::producer(&kshift.bootstrap(), &[("linger.ms", "0")]);
    send_many(&producer, &topic, "before", 1).await;
    settled(kshift.state(), "new", 1, Duration::from_secs(30)).await;
    let new_id = kshift.state().cluster_id("new").unwrap();
    // Each try breaks the link while an answer is on it; a busy machine can miss that
    // moment, so it tries a few times.
    let mut sent = 1;
    for attempt in 0..5 {
        send_many(&producer, &topic, &format!("lost-{attempt}"), 1).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        new.break_connections();
        settled(kshift.state(), "new", sent, Duration::from_secs(30)).await;
        if kshift.state().mirrors.stats(new_id).duplicates > 0 {
            break;
        }
    }
    let stats = kshift.state().mirrors.stats(new_id);
    assert!(
        stats.duplicates > 0,
        "no resend was answered as a duplicate in 5 tries: {stats:?}"
    );
    assert_eq!(
        (stats.mirrored_records, stats.failed_records),
        (sent, 0),
        "{stats:?}"
    );
    assert_eq!(stats.duplicates_located, stats.duplicates, "{stats:?}");
    // Every record once, in order, and every write offset translates to its record.
    assert_mirrored_alike(
        kshift.state(),
        &old.bootstrap(),
        &new.bootstrap(),
        "new",
        &topic,
        1,
        sent as usize,
    )
    .await;
}

/// Faults injected on a 3-broker mirror while an idempotent producer writes through kshift.
struct Faults {
    /// Move one partition's leader to the next broker at every step.
    move_leaders: bool,
    /// Fail the next mirror Produce request with one of these at every step.
    produce_errors: &'static [RDKafkaRespErr],
    /// `[clusters.new]` lines.
    mirror_lines: &'static str,
}

/// Writes 4,000 records (or more, until 10 faults have hit) through kshift while `faults` hit the mirror every 100 ms, then
/// checks that nothing was lost or written twice, the order was kept and every offset
/// translates, and that the faults did reach kshift's producer.
async fn mirror_through(faults: Faults) {
    const PARTITIONS: i32 = 6;
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 200;
    common::trace_from_env();
    let old = Broker::start().await;
    let topic = common::unique_topic("mock-mirror-faults");
    let new = Arc::new(MockKafka::with_topic(3, &topic, PARTITIONS).await);
    common::create_topic(&old.bootstrap(), &topic, PARTITIONS).await;
    let kshift =
        async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), faults.mirror_lines).await;

    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (new, topic, stop, steps) = (new.clone(), topic.clone(), stop.clone(), steps.clone());
        let Faults {
            move_leaders,
            produce_errors,
            ..
        } = faults;
        tokio::spawn(async move {
            let mut leaders: Vec<i32> = (0..PARTITIONS).map(|p| p % 3 + 1).collect();
            for step in 0usize.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if move_leaders {
                    let partition = step % PARTITIONS as usize;
                    leaders[partition] = leaders[partition] % 3 + 1;
                    new.move_leader(&topic, partition as i32, leaders[partition]);
                }
                if !produce_errors.is_empty() {
                    let error = produce_errors[step % produce_errors.len()];
                    new.request_errors(RDKafkaApiKey::Produce, &[error]);
                }
                steps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let producer = common::producer(
        &kshift.bootstrap(),
        &[("enable.idempotence", "true"), ("linger.ms", "2")],
    );
    // At least ROUNDS rounds, and on until the faults have hit 10 times (a fast run writes
    // ROUNDS rounds in less than the injector's first second).
    let mut rounds = 0;
    while rounds < ROUNDS || (steps.load(Ordering::Relaxed) < 10 && rounds < 10 * ROUNDS) {
        send_many(&producer, &topic, &format!("round-{rounds}"), PER_ROUND).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        rounds += 1;
    }
    let records = rounds * PER_ROUND;
    // The injector fails or moves about 10 times a second: more often than a stalled
    // partition retries (its backoff grows to 1 s). It stops with the producer, and the
    // mirror then catches up.
    stop.store(true, Ordering::Relaxed);
    chaos.await.expect("fault injector");
    new.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(
        steps.load(Ordering::Relaxed) >= 10,
        "only {} faults were injected while the records were written",
        steps.load(Ordering::Relaxed)
    );
    assert_mirror_complete(
        &kshift,
        &old.bootstrap(),
        &new.bootstrap(),
        &topic,
        PARTITIONS,
        records,
        Duration::from_secs(90),
    )
    .await;
    assert_mirror_produces_failed(&kshift);
}

/// The faults reached kshift's mirror producer, not just the network: some of its produce
/// requests failed.
fn assert_mirror_produces_failed(kshift: &Kshift) {
    assert!(
        mirror_produce_failures(kshift) > 0,
        "no mirror produce failed, so this test proved little:\n{}",
        kshift.state().metrics.exposition()
    );
}

/// `kshift_backend_errors_total` of the mirror cluster `new`'s Produce, over every error.
fn mirror_produce_failures(kshift: &Kshift) -> u64 {
    common::metric_sum(
        &kshift.state().metrics.exposition(),
        "kshift_backend_errors_total",
        &["cluster=\"new\"", "api=\"Produce\""],
    ) as u64
}

/// Leaders moving every 100 ms with 5 batches in flight per partition: a moved leader
/// answers everything after the move NOT_LEADER_OR_FOLLOWER, and each partition's failed
/// batches are resent in sequence order to the new leader. (Broken connections are tested
/// against Tansu, above: the mock neither checks nor deduplicates a non-transactional
/// producer's sequences, so a batch that landed before its connection broke would land twice
/// on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_broker_mirror_loses_nothing_through_leader_moves() {
    mirror_through(Faults {
        move_leaders: true,
        produce_errors: &[],
        mirror_lines: "",
    })
    .await;
}

/// Single failed Produce answers while leaders move: NOT_LEADER_OR_FOLLOWER,
/// REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS and a broken connection, one request in flight at
/// a time. (The mock checks sequences only for transactional producers, so a batch pipelined
/// behind a failed one would land out of order on it, where a Kafka broker refuses it with
/// OUT_OF_ORDER_SEQUENCE_NUMBER and the producer resends both in order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_broker_mirror_loses_nothing_through_failed_produce_answers() {
    mirror_through(Faults {
        move_leaders: true,
        produce_errors: &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
        mirror_lines: "mirror_max_in_flight = 1",
    })
    .await;
}

/// Ten `sync` clients, each waiting for its record to be on a mirror 10 ms away before it
/// sends the next: their batches share requests and several requests are in flight at once,
/// instead of each record waiting for a request of its own, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_clients_share_the_mirrors_requests_instead_of_queueing() {
    const CLIENTS: usize = 10;
    const EACH: usize = 20;
    let old = Broker::start().await;
    let new = FarBroker::start(Duration::from_millis(10)).await;
    let routing = ASYNC_MIRROR_ROUTING.replace("mirror_mode = \"async\"", "mirror_mode = \"sync\"");
    let kshift = Kshift::start_toml(&common::two_cluster_toml_at(
        &old.bootstrap(),
        &new.bootstrap(),
        "",
        "",
        &routing,
    ))
    .await;
    let topic = common::unique_topic("sync-clients");
    create_mirrored_topic(
        &kshift.bootstrap(),
        &new.bootstrap(),
        &topic,
        CLIENTS as i32,
    )
    .await;
    let new_id = kshift.state().cluster_id("new").unwrap();
    let before = kshift.state().mirrors.stats(new_id).requests_sent;
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (bootstrap, topic) = (kshift.bootstrap(), topic.clone());
        clients.push(tokio::spawn(async move {
            let producer = common::producer(&bootstrap, &[("linger.ms", "0")]);
            for i in 0..EACH {
                let value = format!("client-{client}-{i}");
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .partition(client as i32)
                            .key(&value)
                            .payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .unwrap_or_else(|(error, _)| panic!("{value}: {error}"));
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let stats = kshift.state().mirrors.stats(new_id);
    let records = (CLIENTS * EACH) as u64;
    assert_eq!(stats.mirrored_records, records, "{stats:?}");
    let requests = stats.requests_sent - before;
    assert!(
        requests < records && stats.max_requests_in_flight >= 2,
        "{requests} mirror requests for {records} sync records, at most {} in flight: the \
         clients queued behind one another ({stats:?})",
        stats.max_requests_in_flight
    );
    assert_mirrored_alike(
        kshift.state(),
        &old.bootstrap(),
        &new.bootstrap(),
        "new",
        &topic,
        CLIENTS as i32,
        records as usize,
    )
    .await;
}

/// A mirror far too slow for its producer, with a small queue: `drop` keeps the producer fast
/// and loses records from the mirror (counted), `block` slows the producer down and the
/// mirror gets every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_keeps_the_mirror_complete_where_drop_loses_records() {
    const RECORDS: usize = 3_000;
    let old = Broker::start().await;
    // 100 ms each way and one request in flight: the mirror takes about one request per
    // 200 ms, far less than the producer sends.
    let new = FarBroker::start(Duration::from_millis(100)).await;
    for policy in ["drop", "block"] {
        let mirror_lines = format!(
            "mirror_overflow = \"{policy}\"\nmirror_queue_bytes = 16384\nmirror_max_in_flight = 1\nmirror_batch_bytes = 4096\nmirror_request_bytes = 4096"
        );
        let kshift =
            async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), &mirror_lines).await;
        let topic = common::unique_topic(&format!("overflow-{policy}"));
        create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, 1).await;
        let producer = common::producer(
            &kshift.bootstrap(),
            &[
                ("linger.ms", "0"),
                ("batch.num.messages", "20"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "120000"),
            ],
        );
        send_many(&producer, &topic, policy, RECORDS).await;
        let within = Duration::from_secs(120);
        match policy {
            "drop" => {
                let stats = settled(kshift.state(), "new", RECORDS as u64, within).await;
                assert!(
                    stats.dropped_records > 0 && stats.queue_full_dropped > 0,
                    "the queue never overflowed, so this test proved little: {stats:?}"
                );
                assert_eq!(stats.queue_full_blocked, 0, "{stats:?}");
                assert_eq!(
                    stats.mirrored_records + stats.dropped_records,
                    RECORDS as u64,
                    "{stats:?}"
                );
            }
            _ => {
                let stats = assert_mirror_complete(
                    &kshift,
                    &old.bootstrap(),
                    &new.bootstrap(),
                    &topic,
                    1,
                    RECORDS,
                    within,
                )
                .await;
                assert!(
                    stats.queue_full_blocked > 0,
                    "no produce ever waited for room, so this test proved little: {stats:?}"
                );
            }
        }
        kshift.shutdown().await;
    }
}

/// With `block`, a produce that finds no room within half its timeout is refused unwritten
/// with the retriable REQUEST_TIMED_OUT: the client sees the error (retries off), and the
/// write cluster does not hold the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_produce_that_gets_no_room_is_refused_unwritten() {
    let old = Broker::start().await;
    let new = Broker::start().await;
    let mirror_lines = "mirror_overflow = \"block\"\nmirror_queue_bytes = 1024";
    let kshift = async_mirroring_kshift(&old.bootstrap(), &new.bootstrap(), mirror_lines).await;
    let topic = common::unique_topic("blocked");
    create_mirrored_topic(&kshift.bootstrap(), &new.bootstrap(), &topic, 1).await;
    drop(new); // nothing leaves the queue now (for mirror_delivery_timeout_ms, 120 s)
    let producer = common::producer(
        &kshift.bootstrap(),
        &[
            ("retries", "0"),
            ("enable.idempotence", "false"),
            ("request.timeout.ms", "2000"),
            ("linger.ms", "0"),
        ],
    );
    let value = "x".repeat(2000);
    // The first fills the queue (alone, it fits even though it is larger); the second finds
    // it full and waits ~1 s (half of request.timeout.ms) before it is refused.
    producer
        .send(
            FutureRecord::to(&topic).key("first").payload(&value),
            Duration::from_secs(10),
        )
        .await
        .expect("the first record fits the empty queue");
    let refused = producer
        .send(
            FutureRecord::to(&topic).key("second").payload(&value),
            Duration::from_secs(10),
        )
        .await;
    let (error, _) = refused.expect_err("no room came: the produce is refused");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::RequestTimedOut),
        "{error}"
    );
    let stats = kshift
        .state()
        .mirrors
        .stats(kshift.state().cluster_id("new").unwrap());
    assert_eq!(
        (stats.queue_full_blocked, stats.queue_full_refused),
        (1, 1),
        "{stats:?}"
    );
    // Only the first record was written.
    let on_old = common::mirror::read_all(&old.bootstrap(), &topic, 1, 1).await;
    assert_eq!(on_old[0].key.as_deref(), Some(&b"first"[..]));
}
