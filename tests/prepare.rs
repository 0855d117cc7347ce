//! `kshift prepare` creates on the mirror cluster the topics routes mirror there (renamed or
//! not) with the write topic's partition count and topic configs, changes nothing with
//! `--dry-run`, fails on an existing target whose partition count breaks identity
//! partitioning, warns on differing configs, and names a `--to` cluster it does not know.
//!
//! Tansu 0.6 answers DescribeConfigs with only the configs a topic was created with, each
//! labelled DEFAULT_CONFIG: the copied configs are checked here through that answer.

mod common;

use std::collections::BTreeMap;

use common::{Broker, CliRun};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::consumer::Consumer;

/// `orders` is renamed `orders-v2` on `new`; `payments` is `payments-legacy` on `old` and
/// `payments` on `new`; `prep-*` topics keep their names.
const ROUTES: &str = r#"
[[routes]]
topics = "payments"
write = "old"
mirror = ["new"]
rename = { old = "payments-legacy" }

[[routes]]
topics = "orders"
write = "old"
mirror = ["new"]
rename = { new = "orders-v2" }

[[routes]]
topics = "prep-*"
write = "old"
mirror = ["new"]

[[routes]]
topics = "*"
write = "old"
"#;

struct Setup {
    old: Broker,
    new: Broker,
    /// Holds the config: deleted when dropped.
    _dir: tempfile::TempDir,
    config: String,
}

async fn setup(routes: &str) -> Setup {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, common::two_cluster_toml(&old, &new, "", routes)).unwrap();
    Setup {
        old,
        new,
        config: path.to_str().unwrap().to_string(),
        _dir: dir,
    }
}

/// Topic name -> partition count on `bootstrap`.
fn topics(bootstrap: &str) -> BTreeMap<String, usize> {
    common::consumer(bootstrap, &[])
        .fetch_metadata(None, common::TIMEOUT)
        .unwrap()
        .topics()
        .iter()
        .map(|topic| (topic.name().to_string(), topic.partitions().len()))
        .collect()
}

/// The configs `bootstrap` lists for `topic`.
async fn configs(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let options = AdminOptions::new().operation_timeout(Some(common::TIMEOUT));
    let results = common::admin(bootstrap)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .unwrap();
    results
        .into_iter()
        .flat_map(|result| result.unwrap().entries)
        .filter_map(|entry| Some((entry.name, entry.value?)))
        .collect()
}

async fn prepare(config: &str, extra: &[&str]) -> CliRun {
    let mut args = vec!["prepare", "--config", config, "--topics", "*"];
    args.extend_from_slice(extra);
    common::kshift_cli(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_topics_are_created_renamed_or_not_with_their_partitions_and_configs() {
    let Setup {
        old,
        new,
        config,
        _dir,
    } = setup(ROUTES).await;
    common::create_topic_with(
        &old.bootstrap(),
        "orders",
        3,
        &[("retention.ms", "123456"), ("cleanup.policy", "compact")],
    )
    .await;
    common::create_topic_with(
        &old.bootstrap(),
        "prep-events",
        2,
        &[("retention.ms", "3600000")],
    )
    .await;
    common::create_topic_with(&old.bootstrap(), "payments-legacy", 1, &[]).await;
    // Routed, but to no mirror.
    common::create_topic_with(&old.bootstrap(), "unmirrored", 1, &[]).await;

    let output = prepare(&config, &[]).await;
    assert!(output.ok(), "{}", output.described());
    let printed = &output.stdout;
    assert!(
        printed.contains("orders -> new:orders-v2: created (3 partitions, cleanup.policy=compact, retention.ms=123456)"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "prep-events -> new:prep-events: created (2 partitions, retention.ms=3600000)"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("payments -> new:payments: created (1 partition)"),
        "{printed}"
    );
    assert!(
        printed.contains("3 target topic(s): 3 created"),
        "{printed}"
    );

    let on_new = topics(&new.bootstrap());
    assert_eq!(on_new.get("orders-v2"), Some(&3), "{on_new:?}");
    assert_eq!(on_new.get("prep-events"), Some(&2), "{on_new:?}");
    assert_eq!(on_new.get("payments"), Some(&1), "{on_new:?}");
    assert!(!on_new.contains_key("orders"), "{on_new:?}");
    assert!(!on_new.contains_key("payments-legacy"), "{on_new:?}");
    assert!(!on_new.contains_key("unmirrored"), "{on_new:?}");
    let orders = configs(&new.bootstrap(), "orders-v2").await;
    assert_eq!(
        orders.get("retention.ms").map(String::as_str),
        Some("123456")
    );
    assert_eq!(
        orders.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    let events = configs(&new.bootstrap(), "prep-events").await;
    assert_eq!(
        events.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(events.get("cleanup.policy"), None, "{events:?}");

    // Run again: everything is there and matches.
    let again = prepare(&config, &[]).await;
    assert!(again.ok(), "{}", again.described());
    let printed = &again.stdout;
    assert!(
        printed.contains("orders -> new:orders-v2: exists, matches (3 partitions)"),
        "{printed}"
    );
    assert!(
        printed.contains("prep-events -> new:prep-events: exists, matches (2 partitions)"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_what_it_would_create_and_creates_nothing() {
    let Setup {
        old,
        new,
        config,
        _dir,
    } = setup(ROUTES).await;
    common::create_topic_with(&old.bootstrap(), "orders", 3, &[("retention.ms", "123456")]).await;
    common::create_topic_with(&old.bootstrap(), "prep-events", 2, &[]).await;

    let output = prepare(&config, &["--dry-run"]).await;
    assert!(output.ok(), "{}", output.described());
    let printed = &output.stdout;
    assert!(
        printed
            .contains("orders -> new:orders-v2: would create (3 partitions, retention.ms=123456)"),
        "{printed}"
    );
    assert!(
        printed.contains("prep-events -> new:prep-events: would create (2 partitions)"),
        "{printed}"
    );
    assert!(printed.contains("2 would be created"), "{printed}");
    assert!(printed.contains("dry run: nothing changed"), "{printed}");
    let on_new = topics(&new.bootstrap());
    assert!(
        !on_new.contains_key("orders-v2") && !on_new.contains_key("prep-events"),
        "{on_new:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_target_with_another_partition_count_fails_identity_partitioning() {
    let Setup {
        old,
        new,
        config,
        _dir,
    } = setup(ROUTES).await;
    common::create_topic_with(&old.bootstrap(), "prep-events", 3, &[]).await;
    common::create_topic_with(&new.bootstrap(), "prep-events", 2, &[]).await;

    let output = prepare(&config, &[]).await;
    assert_eq!(output.code, Some(1), "{}", output.described());
    let printed = &output.stdout;
    assert!(
        printed.contains(
            "prep-events -> new:prep-events: exists with 2 partitions, but prep-events has 3 on old"
        ),
        "{printed}"
    );
    // Not altered.
    assert_eq!(topics(&new.bootstrap()).get("prep-events"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn murmur2_takes_any_partition_count_and_differing_configs_only_warn() {
    let routes = "[[routes]]\ntopics = \"prep-*\"\nwrite = \"old\"\nmirror = [\"new\"]\npartitioning = \"murmur2\"";
    let Setup {
        old,
        new,
        config,
        _dir,
    } = setup(routes).await;
    common::create_topic_with(
        &old.bootstrap(),
        "prep-events",
        3,
        &[("retention.ms", "3600000")],
    )
    .await;
    common::create_topic_with(
        &new.bootstrap(),
        "prep-events",
        2,
        &[("retention.ms", "60000")],
    )
    .await;

    let output = prepare(&config, &["--to", "new"]).await;
    assert!(output.ok(), "{}", output.described());
    let printed = &output.stdout;
    assert!(
        printed.contains(
            "prep-events -> new:prep-events: exists (2 partitions), configs differ (warning): \
             retention.ms is 60000 on new, 3600000 on old"
        ),
        "{printed}"
    );
    // Not altered.
    let events = configs(&new.bootstrap(), "prep-events").await;
    assert_eq!(
        events.get("retention.ms").map(String::as_str),
        Some("60000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_to_cluster_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    // Nothing listens there: prepare must stop before connecting.
    let text = common::two_cluster_toml_at("127.0.0.1:1", "127.0.0.1:2", "", "", ROUTES);
    std::fs::write(&path, text).unwrap();

    let output = prepare(path.to_str().unwrap(), &["--to", "newer"]).await;
    assert_eq!(output.code, Some(2), "{}", output.described());
    let stderr = &output.stderr;
    assert!(
        stderr.contains("--to \"newer\": no such cluster in the config (configured: new, old)"),
        "{}",
        output.described()
    );

    // A configured cluster no route mirrors to is named too.
    let output = prepare(path.to_str().unwrap(), &["--to", "old"]).await;
    assert_eq!(output.code, Some(2), "{}", output.described());
    let stderr = &output.stderr;
    assert!(
        stderr.contains("no route mirrors to cluster old"),
        "{}",
        output.described()
    );
}
