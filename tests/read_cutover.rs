//! Read cutover against two real brokers: a consumer group reading through kshift while
//! producers write through it keeps going when the routing table moves its reads and its
//! coordinator from `old` to `new` — no restart, no gap, and duplicates only of what it had
//! not committed — also after a kshift restart between mirroring and the switch; a group
//! whose position precedes everything copied is refused with the reason. The same switch
//! between two 3-broker clusters (MockCluster) whose leaders differ.

mod common;
mod http;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mock_cluster::MockKafka;
use common::Broker;
use kshift::RunningProxy;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

const PARTITIONS: i32 = 2;

fn routing(read: &str, mirror: &str) -> String {
    format!(
        "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [{mirror}]\nread = \"{read}\"\n\n[[groups]]\ngroups = \"*\"\ncluster = \"{read}\"\n"
    )
}

fn config_text(
    old: &Broker,
    new: &Broker,
    listen: &str,
    offset_map: &std::path::Path,
    routing: &str,
) -> String {
    config_text_at(
        &old.bootstrap(),
        &new.bootstrap(),
        listen,
        offset_map,
        routing,
    )
}

/// As [`config_text`], each cluster given by its `bootstrap.servers`.
fn config_text_at(
    old: &str,
    new: &str,
    listen: &str,
    offset_map: &std::path::Path,
    routing: &str,
) -> String {
    let proxy_lines = format!(
        "admin_listen = \"127.0.0.1:0\"\noffset_map_file = \"{}\"\nconnect_timeout_ms = 1000\nrequest_timeout_ms = 5000",
        offset_map.display()
    );
    common::listening_at(
        &common::two_cluster_toml_at(old, new, &proxy_lines, "", routing),
        listen,
    )
}

async fn start(config: &str) -> RunningProxy {
    common::trace_from_env();
    common::start_proxy(config).await
}

/// PUTs a routing table (TOML); returns the status and the JSON answer.
async fn put_routes(proxy: &RunningProxy, table: &str) -> (u16, Value) {
    let admin: SocketAddr = proxy.admin_addr().expect("admin API");
    let (status, body) = http::request(admin, "PUT", "/routes", table).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
    (status, json)
}

/// Produces `seq-N` records (keyed) through kshift until stopped; remembers where each
/// landed on the write cluster.
struct Producing {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<u64, (i32, i64)>>,
}

fn start_producing(bootstrap: String, topic: String, first_seq: u64) -> Producing {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let producer = common::producer(
            &bootstrap,
            &[("acks", "all"), ("message.timeout.ms", "30000")],
        );
        let mut landed = BTreeMap::new();
        let mut seq = first_seq;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let values: Vec<String> = (seq..seq + 10).map(|s| format!("seq-{s}")).collect();
            let records = values
                .iter()
                .map(|value| {
                    FutureRecord::to(&topic)
                        .key(value.as_str())
                        .payload(value.as_str())
                })
                .collect();
            for (offset, delivery) in common::send_all(&producer, records)
                .await
                .into_iter()
                .enumerate()
            {
                landed.insert(seq + offset as u64, (delivery.partition, delivery.offset));
            }
            seq += 10;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        landed
    });
    Producing { stop, task }
}

impl Producing {
    async fn finish(self) -> BTreeMap<u64, (i32, i64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("producer task")
    }
}

/// What the group's member received: (seq, partition, offset) in order.
type Log = Arc<Mutex<Vec<(u64, i32, i64)>>>;

/// One group member consuming `topic` with auto commit, recording what it receives, until
/// the task is aborted. The same process (and librdkafka instance) throughout.
fn start_consuming(
    bootstrap: &str,
    topic: &str,
    group: &str,
) -> (Log, tokio::task::JoinHandle<()>) {
    let consumer = common::consumer(
        bootstrap,
        &[
            ("group.id", group),
            ("enable.auto.commit", "true"),
            // A member notices the move at its next commit or heartbeat; until then it
            // fetches with old's positions, which kshift holds.
            ("auto.commit.interval.ms", "1000"),
            ("heartbeat.interval.ms", "2000"),
        ],
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    let log: Log = Arc::default();
    let received = log.clone();
    let task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    let value =
                        String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string();
                    // Records produced before the test's producer started are not tracked.
                    let Some(seq) = value.strip_prefix("seq-").and_then(|s| s.parse().ok()) else {
                        continue;
                    };
                    received
                        .lock()
                        .unwrap()
                        .push((seq, message.partition(), message.offset()));
                }
                Err(error) => eprintln!("consumer error (it retries): {error}"),
            }
        }
    });
    (log, task)
}

/// Waits until the group has received `count` records in all; `when` names the moment.
async fn wait_for_count(log: &Log, count: usize, when: &str) {
    let what = format!("the group to receive {count} records ({when})");
    common::eventually(Duration::from_secs(60), &what, async || {
        let received = log.lock().unwrap().len();
        (received >= count)
            .then_some(())
            .ok_or(format!("{received} received"))
    })
    .await;
}

/// Waits until the group has received every produced seq.
async fn wait_for_all(log: &Log, produced: &BTreeMap<u64, (i32, i64)>) {
    let what = "the group to receive every record produced, after the switch";
    common::eventually(Duration::from_secs(60), what, async || {
        let missing: Vec<u64> = {
            let received: std::collections::HashSet<u64> =
                log.lock().unwrap().iter().map(|r| r.0).collect();
            produced
                .keys()
                .filter(|seq| !received.contains(seq))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} records missing, first {:?} (at {:?} on old)",
            missing.len(),
            &missing[..missing.len().min(10)],
            missing
                .iter()
                .take(10)
                .map(|s| produced[s])
                .collect::<Vec<_>>()
        ))
    })
    .await;
}

/// The committed positions on `old` that the switch moved, per partition.
fn moved_from(answer: &Value, group: &str) -> HashMap<i32, i64> {
    let moved = answer["moved_groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no moved_groups in {answer}"));
    let entry = moved
        .iter()
        .find(|g| g["group"] == group)
        .unwrap_or_else(|| panic!("group {group} not moved: {answer}"));
    assert_eq!(entry["from"], "old");
    assert_eq!(entry["to"], "new");
    entry["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().unwrap() as i32,
                o["from"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every duplicate the member received was at or after its committed position at the
/// switch (it had not committed it); returns how many there were.
fn check_duplicates(
    log: &Log,
    produced: &BTreeMap<u64, (i32, i64)>,
    committed: &HashMap<i32, i64>,
) -> usize {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (seq, _, _) in log.lock().unwrap().iter() {
        *seen.entry(*seq).or_default() += 1;
    }
    let mut duplicates = 0;
    for (seq, count) in seen {
        if count > 1 {
            duplicates += count - 1;
            let (partition, offset) = produced[&seq];
            let position = committed.get(&partition).copied().unwrap_or(0);
            assert!(
                offset >= position,
                "seq {seq} (old {partition}@{offset}) received {count} times although committed up to {position}"
            );
        }
    }
    duplicates
}

/// Two brokers and a kshift reading `old` with the offset map journalled in `_dir`.
struct Setup {
    old: Broker,
    new: Broker,
    _dir: tempfile::TempDir,
    proxy: RunningProxy,
}

/// Two brokers and kshift in front of them: writes and reads on old, mirrored to `mirror`.
async fn two_clusters(mirror: &str) -> Setup {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("offsets.jsonl");
    let text = config_text(&old, &new, "127.0.0.1:0", &map, &routing("old", mirror));
    let proxy = start(&text).await;
    Setup {
        old,
        new,
        _dir: dir,
        proxy,
    }
}

/// Two brokers, a topic with records on old from before kshift mirrored anything (so
/// offsets on old and new differ), created on both.
async fn setup(old: &Broker, new: &Broker, bootstrap: &str) -> String {
    let topic = common::unique_topic("cutover");
    common::mirror::create_mirrored_topic(bootstrap, &new.bootstrap(), &topic, PARTITIONS).await;
    send_early_records(&old.bootstrap(), &topic).await;
    topic
}

/// Records straight to the write cluster, before kshift mirrors anything: offsets on old and
/// new differ from then on.
async fn send_early_records(old: &str, topic: &str) {
    common::send_values(old, topic, (0..25).map(|i| format!("early-{i}"))).await;
}

/// The switch while the member runs, then checks: nothing missing, duplicates only of
/// uncommitted records, and the member now reads new's offsets.
async fn switch_and_check(
    proxy: &RunningProxy,
    log: Log,
    consumer: tokio::task::JoinHandle<()>,
    producing: Producing,
    group: &str,
) {
    let at_switch = log.lock().unwrap().len();
    let (status, answer) = put_routes(proxy, &routing("new", "\"new\"")).await;
    assert_eq!(status, 200, "switch refused: {answer}");
    let committed = moved_from(&answer, group);
    assert_eq!(
        committed.len(),
        PARTITIONS as usize,
        "offsets moved: {answer}"
    );
    let metric = |name: &str| {
        let name = name.to_string();
        async move {
            let (_, text) = http::request(proxy.admin_addr().unwrap(), "GET", "/metrics", "").await;
            common::metric_sum(&text, &name, &[])
        }
    };
    assert_eq!(metric("kshift_groups_moved_total").await, 1.0);

    wait_for_count(&log, at_switch + 150, "after the switch").await;
    let produced = producing.finish().await;
    wait_for_all(&log, &produced).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.abort();

    let duplicates = check_duplicates(&log, &produced, &committed);
    // Fetches at old's positions sent before the member noticed the move: held, not read.
    let held = metric("kshift_fetch_positions_held_total").await;
    let last = *log.lock().unwrap().last().unwrap();
    let (partition, old_offset) = produced[&last.0];
    assert_eq!(partition, last.1);
    assert!(
        last.2 < old_offset,
        "the last record came at offset {} (old's is {old_offset}): not read from new",
        last.2
    );
    eprintln!(
        "switch moved {group} at {committed:?}; {} produced, {} received, {duplicates} duplicates, {held} fetched partitions held",
        produced.len(),
        log.lock().unwrap().len()
    );
}

/// A group member consuming `topic` through `bootstrap` while a producer writes it; once the
/// member has 150 records and auto commit has recorded its position on old, the switch
/// ([`switch_and_check`]).
async fn run_through_the_switch(proxy: &RunningProxy, bootstrap: &str, topic: &str) {
    let group = common::unique_topic("cutover-group");
    let (log, consumer) = start_consuming(bootstrap, topic, &group);
    let producing = start_producing(bootstrap.to_string(), topic.to_string(), 0);
    wait_for_count(&log, 150, "before the switch").await;
    // Let auto commit (every second) record a position on old.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    switch_and_check(proxy, log, consumer, producing, &group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_group_follows_a_read_switch_without_gap() {
    let Setup {
        old,
        new,
        _dir,
        proxy,
    } = two_clusters("\"new\"").await;
    let bootstrap = proxy.local_addr().to_string();
    let topic = setup(&old, &new, &bootstrap).await;
    run_through_the_switch(&proxy, &bootstrap, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_group_follows_a_read_switch_between_multi_broker_clusters() {
    let topic = common::unique_topic("cutover-mock");
    let old = MockKafka::with_topic(3, &topic, PARTITIONS).await;
    let new = MockKafka::with_topic(3, &topic, PARTITIONS).await;
    // new's leaders differ from old's (which clients are shown): after the switch, fetches
    // sent by old's leaders are split by new's.
    new.move_leader(&topic, 0, 3);
    new.move_leader(&topic, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("offsets.jsonl");
    let text = config_text_at(
        &old.bootstrap(),
        &new.bootstrap(),
        "127.0.0.1:0",
        &map,
        &routing("old", "\"new\""),
    );
    let proxy = start(&text).await;
    let bootstrap = proxy.local_addr().to_string();
    send_early_records(&old.bootstrap(), &topic).await;
    run_through_the_switch(&proxy, &bootstrap, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offset_map_survives_a_kshift_restart_before_the_switch() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("offsets.jsonl");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let text = config_text(&old, &new, &listen, &map, &routing("old", "\"new\""));
    let first = start(&text).await;
    let topic = setup(&old, &new, &listen).await;
    let group = common::unique_topic("cutover-group");

    let (log, consumer) = start_consuming(&listen, &topic, &group);
    let producing = start_producing(listen.clone(), topic.clone(), 0);
    wait_for_count(&log, 150, "before the restart").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Restart: the same address, the same offset map file; clients reconnect on their own.
    first.shutdown().await;
    let second = start(&text).await;
    // The restarted instance translates what the first one mirrored.
    let (old_id, new_id) = (
        second.state().cluster_id("old").unwrap(),
        second.state().cluster_id("new").unwrap(),
    );
    for partition in 0..PARTITIONS {
        let position = second
            .state()
            .mirrors
            .offsets
            .position(&topic, partition, old_id, new_id, 0);
        assert!(
            matches!(position, kshift::mirror::offset_map::Position::BeforeFirst { first } if first > 0),
            "partition {partition}: {position:?}"
        );
    }
    let restarted_at = log.lock().unwrap().len();
    wait_for_count(&log, restarted_at + 100, "after the restart").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    switch_and_check(&second, log, consumer, producing, &group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_positioned_before_mirroring_began_is_refused() {
    // No mirror yet.
    let Setup {
        old: _old, // kept running
        new,
        _dir,
        proxy,
    } = two_clusters("").await;
    let bootstrap = proxy.local_addr().to_string();
    let topic = common::unique_topic("history");
    common::create_topic(&bootstrap, &topic, 1).await;
    common::create_topic(&new.bootstrap(), &topic, 1).await;
    let producer = common::producer(&bootstrap, &[]);
    // Records `history-{i}` for `i` in `range`, without keys.
    let send = async |range: std::ops::Range<u32>| {
        let values: Vec<String> = range.map(|i| format!("history-{i}")).collect();
        let records = values
            .iter()
            .map(|v| FutureRecord::to(&topic).payload(v.as_str()))
            .collect();
        common::send_all(&producer, records).await;
    };
    send(0..30).await;
    // The group has read (and committed) only the first ten.
    let group = common::unique_topic("history-group");
    common::commit_position(&bootstrap, &group, &topic, 0, 10);
    // Mirroring starts; later records reach new.
    let (status, answer) = put_routes(&proxy, &routing("old", "\"new\"")).await;
    assert_eq!(status, 200, "{answer}");
    send(30..40).await;

    let (status, answer) = put_routes(&proxy, &routing("new", "\"new\"")).await;
    assert_eq!(status, 409, "{answer}");
    let reason = answer["error"].as_str().unwrap_or_default().to_string();
    for needed in [
        group.as_str(),
        &format!("{topic}[0]"),
        "committed offset 10",
        "offset 30",
        "backfill",
    ] {
        assert!(
            reason.contains(needed),
            "{needed:?} missing from the refusal: {reason}"
        );
    }
    // Nothing changed: reads and the group stay on old.
    let (status, table) = http::request(proxy.admin_addr().unwrap(), "GET", "/routes", "").await;
    assert_eq!(status, 200);
    assert!(table.contains("\"read\":\"old\""), "{table}");

    // Forced (an emergency, say old is down): the table goes in force, the group is not moved.
    let admin = proxy.admin_addr().unwrap();
    let table = routing("new", "\"new\"");
    let (status, body) = http::request(admin, "PUT", "/routes?force=true", &table).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"moved_groups\":[]"), "{body}");
    let (_, table) = http::request(admin, "GET", "/routes", "").await;
    assert!(table.contains("\"read\":\"new\""), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kshift_cutover_switches_reads_and_rolls_back() {
    let Setup {
        old,
        new,
        _dir,
        proxy,
    } = two_clusters("\"new\"").await;
    let bootstrap = proxy.local_addr().to_string();
    let admin = format!("http://{}", proxy.admin_addr().unwrap());
    let topic = common::unique_topic("cli-cutover");
    common::mirror::create_mirrored_topic(&bootstrap, &new.bootstrap(), &topic, 1).await;
    let values = |range: std::ops::Range<u32>| range.map(|i| format!("r-{i}"));
    // On old only: old's offsets are new's + 5.
    common::send_values(&old.bootstrap(), &topic, values(0..5)).await;
    common::send_values(&bootstrap, &topic, values(5..25)).await;
    let group = common::unique_topic("cli-group");
    common::commit_position(&bootstrap, &group, &topic, 0, 15);

    let (ok, _, stderr) = common::kshift_cli(&[
        "cutover", "--admin", &admin, "--topics", "orders.*", "--to", "new",
    ])
    .await
    .into_parts();
    assert!(
        !ok && stderr.contains("no route has topics = \"orders.*\""),
        "{stderr}"
    );

    // A dry run prints its checks and what would move, and changes nothing.
    let routes_before = http::request(proxy.admin_addr().unwrap(), "GET", "/routes", "")
        .await
        .1;
    let (ok, stdout, stderr) = common::kshift_cli(&[
        "cutover",
        "--admin",
        &admin,
        "--topics",
        "*",
        "--to",
        "new",
        "--dry-run",
    ])
    .await
    .into_parts();
    assert!(ok, "dry run failed: {stderr}\n{stdout}");
    for expected in [
        "check: routes [0] (*) mirror every record to new".to_string(),
        "check: the mirror lag of these routes reaches 0 record(s)".to_string(),
        format!("group {group} would move from old to new"),
        format!("{topic}[0] committed 15 -> 10"),
        "dry run: nothing was changed".to_string(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} not in:\n{stdout}");
    }
    let routes_after = http::request(proxy.admin_addr().unwrap(), "GET", "/routes", "")
        .await
        .1;
    assert_eq!(
        routes_before, routes_after,
        "the dry run changed the routes"
    );
    let consumer = common::consumer(&new.bootstrap(), &[("group.id", group.as_str())]);
    let mut partition = rdkafka::TopicPartitionList::new();
    partition.add_partition(&topic, 0);
    let committed = rdkafka::consumer::Consumer::committed_offsets(
        &*consumer,
        partition,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        committed.find_partition(&topic, 0).map(|p| p.offset()),
        Some(rdkafka::Offset::Invalid),
        "the dry run committed the group's offsets on new"
    );

    let (ok, stdout, stderr) =
        common::kshift_cli(&["cutover", "--admin", &admin, "--topics", "*", "--to", "new"])
            .await
            .into_parts();
    assert!(ok, "cutover failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(&format!("group {group} moved from old to new")),
        "{stdout}"
    );
    // Run again (as after an interruption once it had switched), it finds it done.
    let (ok, again, stderr) =
        common::kshift_cli(&["cutover", "--admin", &admin, "--topics", "*", "--to", "new"])
            .await
            .into_parts();
    assert!(ok, "second cutover failed: {stderr}\n{again}");
    assert!(
        again.contains("already reads from new") && again.contains("nothing to switch"),
        "{again}"
    );
    assert!(
        stdout.contains(&format!("{topic}[0] committed 15 -> 10")),
        "{stdout}"
    );
    let (_, table) = http::request(proxy.admin_addr().unwrap(), "GET", "/routes", "").await;
    assert!(
        table.contains("\"read\":\"new\"") && table.contains("\"cluster\":\"new\""),
        "{table}"
    );

    let (ok, stdout, stderr) = common::kshift_cli(&["cutover", "--admin", &admin, "--rollback"])
        .await
        .into_parts();
    assert!(ok, "rollback failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(&format!("group {group} moved from new to old")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{topic}[0] committed 10 -> 15")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_then_cutover_moves_a_topic_with_history() {
    let Setup {
        old: _old, // kept running
        new,
        _dir,
        proxy,
    } = two_clusters("").await;
    let bootstrap = proxy.local_addr().to_string();
    let admin = format!("http://{}", proxy.admin_addr().unwrap());
    let prefix = common::unique_topic("backfill");
    let (busy, idle) = (format!("{prefix}-busy"), format!("{prefix}-idle"));
    for topic in [&busy, &idle] {
        common::create_topic(&bootstrap, topic, 1).await;
        common::create_topic(&new.bootstrap(), topic, 1).await;
    }
    let values = |range: std::ops::Range<u32>| range.map(|i| format!("r-{i}"));
    // History, before any mirroring; the group has read a third of it.
    common::send_values(&bootstrap, &busy, values(0..30)).await;
    common::send_values(&bootstrap, &idle, values(0..20)).await;
    let group = common::unique_topic("backfill-group");
    common::commit_position(&bootstrap, &group, &busy, 0, 10);

    // Mirroring starts with backfill: the first live batch brings the history before it.
    let shadow =
        routing("old", "\"new\"").replace("read = \"old\"\n", "read = \"old\"\nbackfill = true\n");
    let (status, answer) = put_routes(&proxy, &shadow).await;
    assert_eq!(status, 200, "{answer}");
    common::send_values(&bootstrap, &busy, values(30..40)).await;
    // The idle topic gets its history from `kshift backfill`.
    let pattern = format!("{prefix}-*");
    let (ok, stdout, stderr) = common::kshift_cli(&[
        "backfill",
        "--admin",
        &admin,
        "--topics",
        &pattern,
        "--wait-secs",
        "20",
    ])
    .await
    .into_parts();
    assert!(ok, "backfill failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(&format!("{idle}[0] -> new: copied up to offset 20")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{busy}[0] -> new: copied up to offset 40")),
        "{stdout}"
    );

    // new holds both topics complete and in order.
    for (topic, count) in [(&busy, 40), (&idle, 20)] {
        let consumer = common::assigned_consumer(&new.bootstrap(), topic, 1, &[]);
        let records = common::consume_n(&consumer, count, Duration::from_secs(20)).await;
        let values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string())
            .collect();
        let expected: Vec<String> = (0..count).map(|i| format!("r-{i}")).collect();
        assert_eq!(values, expected, "{topic} on new");
    }
    // A second request copies nothing twice.
    let (ok, stdout, stderr) =
        common::kshift_cli(&["backfill", "--admin", &admin, "--topics", &pattern])
            .await
            .into_parts();
    assert!(ok, "{stderr}\n{stdout}");

    // The read cutover now finds the group's position on new.
    let (ok, stdout, stderr) =
        common::kshift_cli(&["cutover", "--admin", &admin, "--topics", "*", "--to", "new"])
            .await
            .into_parts();
    assert!(ok, "cutover failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(&format!("{busy}[0] committed 10 -> 10")),
        "{stdout}"
    );
    let consumer = common::consumer(&bootstrap, &[("group.id", group.as_str())]);
    consumer.subscribe(&[busy.as_str()]).unwrap();
    let records = common::consume_n(&consumer, 30, Duration::from_secs(30)).await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string())
        .collect();
    let expected: Vec<String> = (10..40).map(|i| format!("r-{i}")).collect();
    assert_eq!(values, expected, "the group continues on new where it was");
}
