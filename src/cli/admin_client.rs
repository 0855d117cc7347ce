//! The operator commands' client of a running kshift's admin API (`kshift routes`, `health`,
//! `backfill`, `cutover`, `verify --admin`, the demo): one HTTP/1.1 request per connection
//! (`Connection: close`), the body read to the end. When the API requires a token, it is
//! taken from the `KSHIFT_ADMIN_TOKEN` environment variable.

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use kshift::routing::RoutingSpec;

/// What `GET /routes` returns.
#[derive(Debug, Deserialize)]
pub struct RoutesDocument {
    pub version: u64,
    #[serde(flatten)]
    pub spec: RoutingSpec,
}

/// One HTTP/1.1 request to the admin API at `admin` (`http://host:port`); returns (status,
/// body).
pub async fn request(
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

/// `GET path`: the body of a 200 answer; any other status is an error naming it.
pub async fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let (status, body) = request(admin, "GET", path, "").await?;
    if status != 200 {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body)
}

/// The routing table in force and its version (`GET /routes`).
pub async fn routing_table(admin: &str) -> anyhow::Result<RoutesDocument> {
    let body = get(admin, "/routes").await?;
    serde_json::from_str(&body)
        .context("GET /routes answered something that is not a routing table")
}

/// Reports a refused update from the admin API's JSON error.
pub fn refused(status: u16, body: &str) -> anyhow::Error {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    anyhow!("refused ({status}): {reason}")
}
