//! Every example in `config/` loads and validates, and `kshift check` tells an operator
//! exactly what is wrong with a bad file (exit code 64, the field named).

use std::path::Path;
use std::process::Command;

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

fn check(config_text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kshift.toml");
    std::fs::write(&path, config_text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kshift"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
    let (code, _, stderr) = {
        let output = Command::new(env!("CARGO_BIN_EXE_kshift"))
            .args(["check", "--config", "/nonexistent/kshift.toml"])
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            (),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, 64);
    assert!(stderr.contains("/nonexistent/kshift.toml"), "{stderr}");
}
