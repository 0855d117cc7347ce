//! `kshift routes get|set|diff|rollback --admin URL` against a running kshift: readable
//! output, a diff of what changed, and a refused table reported with its reason.

use std::process::{Command, Output};

use kshift::config::Config;
use kshift::Proxy;

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

fn kshift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(args)
        .output()
        .expect("run kshift")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_cli_reads_changes_diffs_and_rolls_back() {
    let proxy = Proxy::start(Config::parse(CONFIG).unwrap()).await.unwrap();
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
    let output = tokio::task::spawn_blocking({
        let admin = admin.to_string();
        move || kshift(&["routes", "get", "--admin", &admin])
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.starts_with("# routing table version 1"), "{stdout}");
    assert!(stdout.contains("topics = \"orders.*\""), "{stdout}");

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kshift(&args)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let output = run(args(&["routes", "diff", &proposed, "--admin", admin]))
        .await
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("routes[0]:") && stdout.contains("\"mirror\":[\"new\"]"),
        "{stdout}"
    );
    assert_eq!(
        proxy.state().routing.load().version,
        1,
        "diff changed nothing"
    );

    let output = run(args(&["routes", "set", &proposed, "--admin", admin]))
        .await
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.starts_with("applied: version 1 -> 2"), "{stdout}");
    assert!(stdout.contains("routes[0]:"), "{stdout}");
    assert_eq!(
        proxy
            .state()
            .routing
            .load()
            .route("orders.eu", "c")
            .unwrap()
            .mirror
            .len(),
        1
    );

    let output = run(args(&["routes", "rollback", "--admin", admin]))
        .await
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("rolled back: version 2 -> 3"),
        "{stdout}"
    );
    assert!(proxy
        .state()
        .routing
        .load()
        .route("orders.eu", "c")
        .unwrap()
        .mirror
        .is_empty());

    std::fs::write(
        dir.path().join("bad.toml"),
        "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"old\"]\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml").to_str().unwrap().to_string();
    let output = run(args(&["routes", "set", &bad, "--admin", admin]))
        .await
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refused (400)") && stderr.contains("routes[0].mirror[0]"),
        "{stderr}"
    );
    assert_eq!(proxy.state().routing.load().version, 3);

    let output = run(args(&["routes", "get", "--admin", "http://127.0.0.1:1"]))
        .await
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
}
