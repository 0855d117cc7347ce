//! Two kshift instances sharing a Redis: a table PUT on one is in force on the other within
//! a second; Redis killed: both keep their table and refuse updates; Redis back (empty):
//! both resync and follow updates again.

mod common;
mod http;
mod redis;

use std::time::{Duration, Instant};

use common::Broker;
use kshift::RunningProxy;
use redis::Redis;

async fn start(old: &Broker, new: &Broker, redis_url: &str) -> RunningProxy {
    common::trace_from_env();
    let routing = format!(
        "[routing]\nredis = \"{redis_url}\"\nredis_key = \"kshift:test\"\n[[routes]]\ntopics = \"*\"\nwrite = \"old\""
    );
    let text = common::two_cluster_toml(old, new, "admin_listen = \"127.0.0.1:0\"", &routing);
    common::start_proxy(&text).await
}

fn connected(proxy: &RunningProxy) -> bool {
    proxy.control().redis.as_ref().unwrap().is_connected()
}

/// Waits until both `a` and `b` are connected to Redis (`connected`) or both are not.
async fn both_connected(a: &RunningProxy, b: &RunningProxy, connected_now: bool, what: &str) {
    common::eventually(Duration::from_secs(10), what, async || {
        let (a, b) = (connected(a), connected(b));
        (a == connected_now && b == connected_now)
            .then_some(())
            .ok_or(format!("connected: a {a}, b {b}"))
    })
    .await;
}

/// Waits until `proxy` has applied routing table version `version`.
async fn applied(proxy: &RunningProxy, version: u64, within: Duration, what: &str) {
    common::eventually(within, what, async || {
        let applied = proxy.state().routing.load().version;
        (applied == version)
            .then_some(())
            .ok_or(format!("version {applied}"))
    })
    .await;
}

fn routes(write: &str) -> String {
    format!("[[routes]]\ntopics = \"*\"\nwrite = \"{write}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_redis_and_survives_its_restart() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let redis = Redis::start(0).await;
    let port = redis.port;
    let a = start(&old, &new, &redis.url()).await;
    let b = start(&old, &new, &redis.url()).await;
    both_connected(&a, &b, true, "both instances to subscribe").await;
    let new_id = a.state().cluster_id("new").unwrap();

    // A PUT on A is in force on B.
    let (status, body) =
        http::request(a.admin_addr().unwrap(), "PUT", "/routes", &routes("new")).await;
    assert_eq!(status, 200, "{body}");
    let version = a.state().routing.load().version;
    let put_returned = Instant::now();
    applied(&b, version, Duration::from_secs(5), "B to apply A's table").await;
    let elapsed = put_returned.elapsed();
    eprintln!("B applied A's table {elapsed:?} after A's PUT returned");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(
        b.state().routing.load().route("t", "c").unwrap().write,
        new_id
    );

    // Redis down: both keep the table; an update is refused with 503 and changes nothing.
    drop(redis);
    both_connected(&a, &b, false, "both instances to notice Redis is gone").await;
    let (status, body) =
        http::request(b.admin_addr().unwrap(), "PUT", "/routes", &routes("old")).await;
    assert_eq!(status, 503, "{body}");
    let (_, ready) = http::request(a.admin_addr().unwrap(), "GET", "/ready", "").await;
    assert!(ready.contains("\"redis\":{\"connected\":false}"), "{ready}");
    for proxy in [&a, &b] {
        let table = proxy.state().routing.load();
        assert_eq!(
            (table.version, table.route("t", "c").unwrap().write),
            (version, new_id)
        );
    }

    // Redis back, empty: both resync (the table in force is seeded) and follow again.
    let _redis = Redis::start(port).await;
    both_connected(&a, &b, true, "both instances to resubscribe").await;
    let (status, body) =
        http::request(b.admin_addr().unwrap(), "PUT", "/routes", &routes("old")).await;
    assert_eq!(status, 200, "{body}");
    let version = b.state().routing.load().version;
    applied(&a, version, Duration::from_secs(5), "A to apply B's table").await;
    let old_id = a.state().cluster_id("old").unwrap();
    assert_eq!(
        a.state().routing.load().route("t", "c").unwrap().write,
        old_id
    );

    // An invalid table is refused before it reaches Redis.
    let (status, body) =
        http::request(a.admin_addr().unwrap(), "PUT", "/routes", &routes("gone")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("routes[0].write"), "{body}");
    assert_eq!(b.state().routing.load().version, version);

    // An invalid table written into Redis behind kshift's back (newer version, announced):
    // every instance keeps its table and counts the rejection.
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let bad = r#"{"routes":[{"topics":"*","write":"nowhere"}]}"#;
    let _: () = ::redis::pipe()
        .set("kshift:test", bad)
        .set("kshift:test:version", version + 10)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg("kshift:test")
        .arg(version + 10)
        .query_async(&mut connection)
        .await
        .unwrap();
    for proxy in [&a, &b] {
        let admin = proxy.admin_addr().unwrap();
        common::eventually(
            Duration::from_secs(5),
            "the bad table to be rejected",
            async || {
                let rejected = proxy
                    .state()
                    .metrics
                    .routing_updates
                    .get_or_create(&kshift::metrics::OutcomeLabels {
                        outcome: "rejected".into(),
                        source: "redis".into(),
                    })
                    .get();
                (rejected > 0).then_some(())
            },
        )
        .await;
        assert_eq!(proxy.state().routing.load().version, version, "{admin}");
        assert_eq!(
            proxy.state().routing.load().route("t", "c").unwrap().write,
            old_id
        );
    }
}

/// The offset map is shared through Redis: an instance that mirrored nothing translates the
/// committed position of a group whose records another instance mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instance_translates_what_one_mirrored() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let redis = Redis::start(0).await;
    let routing = format!(
        "[routing]\nredis = \"{}\"\nredis_key = \"kshift:test\"\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nread = \"old\"\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"",
        redis.url()
    );
    let text = common::two_cluster_toml(&old, &new, "admin_listen = \"127.0.0.1:0\"", &routing);
    let mirroring = common::start_proxy(&text).await;
    let switching = common::start_proxy(&text).await;

    let topic = common::unique_topic("fleet-offsets");
    common::mirror::create_mirrored_topic(
        &mirroring.local_addr().to_string(),
        &new.bootstrap(),
        &topic,
        1,
    )
    .await;
    let values = |range: std::ops::Range<u32>| range.map(|i| format!("r-{i}"));
    // On old only: old's offsets are new's + 5; then mirrored by the first instance.
    common::send_values(&old.bootstrap(), &topic, values(0..5)).await;
    common::send_values(&mirroring.local_addr().to_string(), &topic, values(5..25)).await;

    // The group commits through the other instance, which has mirrored nothing itself.
    let group = common::unique_topic("fleet-group");
    common::commit_position(&switching.local_addr().to_string(), &group, &topic, 0, 15);
    assert_eq!(
        switching
            .state()
            .mirrors
            .offsets
            .mappings(&topic, 0, switching.state().cluster_id("new").unwrap())
            .len(),
        0,
        "the switching instance mirrored nothing itself"
    );

    let table = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nread = \"new\"\n[[groups]]\ngroups = \"*\"\ncluster = \"new\"";
    let (status, body) =
        http::request(switching.admin_addr().unwrap(), "PUT", "/routes", table).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let moved = &answer["moved_groups"][0];
    assert_eq!(moved["group"], group.as_str(), "{answer}");
    assert_eq!(moved["offsets"][0]["from"], 15, "{answer}");
    assert_eq!(moved["offsets"][0]["to"], 10, "{answer}");
    // The fleet follows the table.
    let version = switching.state().routing.load().version;
    applied(
        &mirroring,
        version,
        Duration::from_secs(2),
        "the first instance to follow",
    )
    .await;
}

/// The fleet's offset list of a partition keeps its newest `MAX_SEGMENTS` entries: Redis does
/// not grow with the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_offset_list_is_trimmed_to_the_newest_entries() {
    use kshift::mirror::offset_map::{fleet::FleetOffsets, OffsetMapping, MAX_SEGMENTS};
    let redis = Redis::start(0).await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let clusters = ["old".to_string(), "new".to_string()];
    let fleet = FleetOffsets::start(client, "kshift:trim", &clusters);
    let total = MAX_SEGMENTS as i64 + 100;
    for i in 0..total {
        fleet.push(&OffsetMapping {
            topic: "orders".into(),
            write_partition: 0,
            write_base_offset: i * 10,
            mirror_cluster: 1,
            mirror_partition: 0,
            mirror_base_offset: i * 10,
            record_count: 10,
        });
    }
    let entries = common::eventually(
        Duration::from_secs(30),
        "the newest entry to reach Redis",
        async || {
            let entries = fleet.load("orders", 0, 1).await.unwrap();
            if entries.last().map(|m| m.write_base_offset) == Some((total - 1) * 10) {
                Ok(entries)
            } else {
                Err(format!("{} entries in Redis", entries.len()))
            }
        },
    )
    .await;
    assert_eq!(entries.len(), MAX_SEGMENTS);
    assert_eq!(
        entries[0].write_base_offset,
        100 * 10,
        "the oldest went first"
    );
}
