//! The admin API with a token: every endpoint but /health and /ready refuses a request
//! without the right bearer token, and `kshift routes` sends it from KSHIFT_ADMIN_TOKEN.

mod common;
mod http;

use std::process::Command;

use kshift::config::Config;
use kshift::Proxy;

const TOKEN: &str = "s3cret-token-for-tests-only";

/// A kshift config with the admin API locked by the token in `token_file`, one route and no
/// groups (so that a table PUT is no read switch). No backend is contacted by the admin
/// endpoints.
fn config_with_token_file(token_file: &std::path::Path) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[clusters.old]\nbootstrap = [\"127.0.0.1:1\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n",
        token_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_the_token_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let proxy = common::start_proxy(&config_with_token_file(&token_file)).await;
    let admin = proxy.admin_addr().unwrap();

    for (method, path) in [
        ("GET", "/routes"),
        ("GET", "/metrics"),
        ("GET", "/status"),
        ("GET", "/"),
        ("POST", "/routes/rollback"),
    ] {
        let (status, _) = http::request(admin, method, path, "").await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) =
            http::request_with_token(admin, method, path, "", Some("wrong-token-of-some-length"))
                .await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let table = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\n";
    let (status, _) = http::request(admin, "PUT", "/routes", table).await;
    assert_eq!(status, 401, "PUT /routes without a token");
    assert_eq!(
        proxy.state().routing.load().version,
        1,
        "an unauthorised PUT changed the table"
    );
    let (status, body) =
        http::request_with_token(admin, "PUT", "/routes", table, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http::request_with_token(admin, "GET", "/metrics", "", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let (status, _) = http::request(admin, "GET", "/health", "").await;
    assert_eq!(status, 200, "/health stays open for probes");

    let url = format!("http://{admin}");
    let run = move |token: Option<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_kshift"));
            command
                .args(["routes", "get", "--admin", &url])
                .env_remove("KSHIFT_ADMIN_TOKEN");
            if let Some(token) = token {
                command.env("KSHIFT_ADMIN_TOKEN", token);
            }
            command.output().unwrap()
        })
    };
    let refused = run(None).await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let allowed = run(Some(TOKEN)).await.unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("routing table version 2"));
}

#[test]
fn a_short_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "short").unwrap();
    let text = config_with_token_file(&token_file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(Proxy::start(Config::parse(&text).unwrap()))
        .err()
        .expect("a short token is refused")
        .to_string();
    assert!(
        error.contains("proxy.admin_token_file") && error.contains("16 characters"),
        "{error}"
    );
    assert!(
        !error.contains("short"),
        "the token itself must not appear in errors: {error}"
    );
}
