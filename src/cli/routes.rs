//! `kshift routes get|set|rollback|diff --admin URL`: the operator's client for the admin
//! API's routing endpoints, with a readable before/after diff. When the API requires a
//! token, it is taken from the `KSHIFT_ADMIN_TOKEN` environment variable.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use kshift::routing::{diff, RoutingSpec};

/// What `GET /routes` returns.
#[derive(Debug, Deserialize)]
pub(crate) struct RoutesDocument {
    pub version: u64,
    #[serde(flatten)]
    pub spec: RoutingSpec,
}

/// Reads a routing table from a file: a table alone (`[[routes]]`, `[[groups]]`) or a whole
/// kshift config, whose `[[routes]]` and `[[groups]]` are taken.
pub fn read_table(path: &Path) -> anyhow::Result<RoutingSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let mut table = toml::Table::new();
    for key in ["routes", "groups"] {
        if let Some(rules) = value.get(key) {
            table.insert(key.to_string(), rules.clone());
        }
    }
    RoutingSpec::deserialize(toml::Value::Table(table))
        .with_context(|| format!("{}: invalid routing table", path.display()))
}

/// One HTTP/1.1 request to the admin API; returns (status, body).
pub(crate) async fn request(
    admin: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let authority = admin
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--admin must be an http:// URL, got {admin:?}"))?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot reach the admin API at {admin}"))?;
    // The admin token, when the API requires one, comes from the environment.
    let authorization = std::env::var("KSHIFT_ADMIN_TOKEN")
        .map(|token| format!("Authorization: Bearer {}\r\n", token.trim()))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{authorization}Content-Type: application/toml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer from {admin}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status from {admin}"))?;
    Ok((status, body.to_string()))
}

pub(crate) async fn current(admin: &str) -> anyhow::Result<RoutesDocument> {
    let (status, body) = request(admin, "GET", "/routes", "").await?;
    if status != 200 {
        bail!("GET /routes answered {status}: {body}");
    }
    serde_json::from_str(&body)
        .context("GET /routes answered something that is not a routing table")
}

fn print_changes(lines: &[String]) {
    if lines.is_empty() {
        println!("no changes");
    }
    for line in lines {
        println!("  {line}");
    }
}

/// Reports a refused update from the admin API's JSON error.
pub(crate) fn refused(status: u16, body: &str) -> anyhow::Error {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    anyhow!("refused ({status}): {reason}")
}

pub async fn get(admin: &str) -> anyhow::Result<()> {
    let document = current(admin).await?;
    println!("# routing table version {}", document.version);
    print!("{}", toml::to_string(&document.spec)?);
    Ok(())
}

pub async fn diff_file(admin: &str, file: &Path) -> anyhow::Result<()> {
    let proposed = read_table(file)?;
    let document = current(admin).await?;
    println!(
        "changes from version {} to {}:",
        document.version,
        file.display()
    );
    print_changes(&diff(&document.spec, &proposed));
    Ok(())
}

pub async fn set(admin: &str, file: &Path) -> anyhow::Result<()> {
    let proposed = read_table(file)?;
    let before = current(admin).await?;
    let (status, body) = request(admin, "PUT", "/routes", &toml::to_string(&proposed)?).await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    let after: serde_json::Value = serde_json::from_str(&body)?;
    println!(
        "applied: version {} -> {}",
        before.version,
        after.get("version").and_then(|v| v.as_u64()).unwrap_or(0)
    );
    print_changes(&diff(&before.spec, &proposed));
    Ok(())
}

pub async fn rollback(admin: &str) -> anyhow::Result<()> {
    let before = current(admin).await?;
    let (status, body) = request(admin, "POST", "/routes/rollback", "").await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    let after = current(admin).await?;
    println!(
        "rolled back: version {} -> {}",
        before.version, after.version
    );
    print_changes(&diff(&before.spec, &after.spec));
    Ok(())
}

/// `kshift health`: exit 0 when the admin API answers `/health` (container health checks).
pub async fn health(admin: &str) -> anyhow::Result<()> {
    let (status, body) = request(admin, "GET", "/health", "").await?;
    if status != 200 {
        bail!("/health answered {status}: {body}");
    }
    println!("{}", body.trim());
    Ok(())
}
