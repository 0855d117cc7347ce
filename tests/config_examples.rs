//! Every example in `config/` loads and validates, and `kshift check` tells an operator
//! exactly what is wrong with a bad file (exit code 64, the field named).

mod common;

use std::path::Path;

use kshift::config::Config;

#[test]
fn every_example_config_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no example configs found");
}

/// `kshift check` of a file holding `config_text`: (exit code, stdout, stderr).
fn check(config_text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, config_text).unwrap();
    check_file(path.to_str().unwrap())
}

/// `kshift check --config PATH`: (exit code, stdout, stderr).
fn check_file(path: &str) -> (i32, String, String) {
    let run = common::kshift_cli_blocking(&["check", "--config", path]);
    (run.code.unwrap_or(-1), run.stdout, run.stderr)
}

const VALID: &str = r#"
[proxy]
listen = "127.0.0.1:9092"
[clusters.old]
bootstrap = ["127.0.0.1:9093"]
[clusters.new]
bootstrap = ["127.0.0.1:9094"]
[[routes]]
topics = "orders.*"
write = "new"
[[routes]]
topics = "*"
write = "old"
"#;

#[test]
fn check_prints_the_routing_table_of_a_valid_config() {
    let (code, stdout, stderr) = check(VALID);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[0] topics=\"orders.*\""), "{stdout}");
    assert!(stdout.contains("write=new"), "{stdout}");
}

#[test]
fn check_rejects_bad_configs_with_exit_64_naming_the_field() {
    let cases = [
        (
            VALID.replace("write = \"new\"", "write = \"neww\""),
            "routes[0].write",
        ),
        (
            VALID.replace("127.0.0.1:9093", "no-port"),
            "clusters.old.bootstrap[0]",
        ),
        (
            VALID.replace("listen = \"127.0.0.1:9092\"", "listen = \"x\""),
            "proxy.listen",
        ),
        (
            VALID.replace("[proxy]", "[proxy]\nmax_frame_bytes = 0"),
            "proxy.max_frame_bytes",
        ),
        (
            VALID.replace("topics = \"orders.*\"", "topics = \"orders.[\""),
            "routes[0].topics",
        ),
        (
            VALID.replace(
                "[[routes]]\ntopics = \"orders.*\"",
                "[[routes]]\ntopic = \"orders.*\"",
            ),
            "topic",
        ),
        ("not toml at all [".to_string(), "invalid config"),
    ];
    for (text, field) in cases {
        let (code, _, stderr) = check(&text);
        assert_eq!(code, 64, "expected exit 64 for {field}: {stderr}");
        assert!(
            stderr.contains(field),
            "message should name {field}: {stderr}"
        );
    }
    let (code, _, stderr) = check_file("/nonexistent/kshift.toml");
    assert_eq!(code, 64);
    assert!(stderr.contains("/nonexistent/kshift.toml"), "{stderr}");
}

/// The `kshift_…` metric names an expression refers to, without exposition suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("kshift_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = tail[..end].to_string();
        for suffix in ["_bucket", "_count", "_sum", "_total"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base.to_string();
            }
        }
        names.push(name);
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_kshift_exports() {
    // A proxy (no backend is contacted) with one sample of every family.
    let text = VALID.replace("127.0.0.1:9092", "127.0.0.1:0");
    let proxy = common::start_proxy(&text).await;
    let state = proxy.state();
    let metrics = &state.metrics;
    let api = kafka_protocol::messages::ApiKey::Produce;
    metrics.client_request(api, std::time::Duration::from_millis(1));
    metrics.backend_request("old", api, std::time::Duration::from_millis(1));
    metrics.backend_error("old", api, kshift::metrics::BackendFailure::Code(6));
    metrics.mirror_outcome("new", 0, "failed", 1);
    metrics.mirror_queue_full("new", "drop");
    metrics.mirror_request("new", 100);
    metrics.mirror_in_flight("new", 1, 1, 100);
    metrics.unrouted_records("old", 1);
    metrics.offset_sync("new", "synced");
    metrics.routing_update("rejected", "admin");
    let exposition = kshift::control::admin::metrics_text(proxy.control());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let dashboard = std::fs::read_to_string(config.join("grafana/kshift.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            expressions.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(expressions.len() >= 8);
    expressions.push(std::fs::read_to_string(config.join("prometheus/alerts.yml")).unwrap());
    for expression in &expressions {
        let names = metric_names(expression);
        assert!(!names.is_empty(), "no kshift metric in {expression}");
        for name in names {
            assert!(
                exposition.contains(&format!("# TYPE {name} ")),
                "{name} (in {expression}) is not exported:\n{exposition}"
            );
        }
    }
}

#[test]
fn kubernetes_configmap_holds_a_valid_config() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/kshift.yaml"),
    )
    .unwrap();
    let (_, rest) = manifest
        .split_once("kshift.toml: |\n")
        .expect("ConfigMap with kshift.toml");
    let embedded: String = rest
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let config = Config::parse(&embedded).unwrap_or_else(|e| panic!("{e}\n{embedded}"));
    assert!(
        config.routing.redis.is_some(),
        "the fleet shares routing through Redis"
    );
}
