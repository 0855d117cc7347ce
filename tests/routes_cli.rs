//! `kshift routes get|set|diff|rollback --admin URL` against a running kshift: readable
//! output, a diff of what changed, and a refused table reported with its reason.

mod common;

/// Backends are never contacted here: routing changes need no broker.
const CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[clusters.old]
bootstrap = ["127.0.0.1:1"]
[clusters.new]
bootstrap = ["127.0.0.1:2"]
[[routes]]
topics = "orders.*"
write = "old"
[[routes]]
topics = "*"
write = "old"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_cli_reads_changes_diffs_and_rolls_back() {
    let proxy = common::start_proxy(CONFIG).await;
    let admin = format!("http://{}", proxy.admin_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let proposed = dir.path().join("routes.toml");
    std::fs::write(
        &proposed,
        "[[routes]]\ntopics = \"orders.*\"\nwrite = \"old\"\nmirror = [\"new\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n",
    )
    .unwrap();
    let proposed = proposed.to_str().unwrap().to_string();

    let admin = admin.as_str();
    // How many mirrors the table in force gives `orders.*`.
    let mirrors_of_orders = || {
        let table = proxy.state().routing.load();
        table.route("orders.eu", "c").unwrap().mirror.len()
    };
    let (ok, stdout, stderr) = common::kshift_cli(&["routes", "get", "--admin", admin])
        .await
        .into_parts();
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("# routing table version 1"), "{stdout}");
    assert!(stdout.contains("topics = \"orders.*\""), "{stdout}");

    let (ok, stdout, stderr) = common::kshift_cli(&["routes", "diff", &proposed, "--admin", admin])
        .await
        .into_parts();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("routes[0]:") && stdout.contains("\"mirror\":[\"new\"]"),
        "{stdout}"
    );
    assert_eq!(
        proxy.state().routing.load().version,
        1,
        "diff changed nothing"
    );

    let (ok, stdout, stderr) = common::kshift_cli(&["routes", "set", &proposed, "--admin", admin])
        .await
        .into_parts();
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("applied: version 1 -> 2"), "{stdout}");
    assert!(stdout.contains("routes[0]:"), "{stdout}");
    assert_eq!(mirrors_of_orders(), 1);

    let (ok, stdout, stderr) = common::kshift_cli(&["routes", "rollback", "--admin", admin])
        .await
        .into_parts();
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("rolled back: version 2 -> 3"),
        "{stdout}"
    );
    assert_eq!(mirrors_of_orders(), 0);

    std::fs::write(
        dir.path().join("bad.toml"),
        "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"old\"]\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml").to_str().unwrap().to_string();
    let (ok, _, stderr) = common::kshift_cli(&["routes", "set", &bad, "--admin", admin])
        .await
        .into_parts();
    assert!(!ok);
    assert!(
        stderr.contains("refused (400)") && stderr.contains("routes[0].mirror[0]"),
        "{stderr}"
    );
    assert_eq!(proxy.state().routing.load().version, 3);

    let (ok, _, stderr) = common::kshift_cli(&["routes", "get", "--admin", "http://127.0.0.1:1"])
        .await
        .into_parts();
    assert!(!ok);
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
}
