//! The admin HTTP API (default 127.0.0.1 only): health, readiness, Prometheus metrics, the
//! routing table (read, replace, roll back) and a JSON status.
//!
//! Invariants:
//! - A `PUT /routes` is validated as a whole before anything changes; a 400 carries the
//!   reason, naming the rule and field, and the table in force stays.
//! - With a token configured, every endpoint but /health and /ready answers 401 without
//!   `Authorization: Bearer <token>` (compared in constant time); the token is never logged.
//! - Routing changes are logged with the caller's address (audit).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::backfill::queue_backfill;
use crate::control::console;
use crate::control::cutover::{self, Policy, Switched};
use crate::control::redis::RedisSourceError;
use crate::control::Control;
use crate::routing::{RoutingSpec, UpdateError};

/// Serves the admin API on `listener` until `shutdown` turns true.
/// Reads the admin token from `path` (surrounding whitespace trimmed).
pub fn read_token(path: &str) -> Result<String, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "the token in {path} must have at least 16 characters"
        ));
    }
    Ok(token)
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn run(
    listener: TcpListener,
    state: Arc<Control>,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/routes", get(get_routes).put(put_routes))
        .route("/routes/rollback", post(rollback))
        .route("/backfill", get(backfill_progress).post(start_backfill))
        .route("/status", get(status))
        .route("/verify", get(last_verify).post(report_verify))
        .route("/", get(status_page))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ));
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(protected)
        .with_state(state);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "admin API stopped");
    }
}

/// Refuses requests without the configured bearer token.
async fn require_token(
    State(token): State<Arc<Option<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = token.as_deref() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> &'static str {
    "ok\n"
}

/// Ready when every backend cluster answered ApiVersions (asked now if not yet known).
async fn ready(State(state): State<Arc<Control>>) -> Response {
    let mut clusters = serde_json::Map::new();
    let mut all_ready = true;
    for cluster in &state.clusters {
        let reachable = match cluster.known_api_versions() {
            Some(_) => true,
            None => matches!(
                tokio::time::timeout(Duration::from_secs(2), cluster.api_versions()).await,
                Ok(Ok(_))
            ),
        };
        all_ready &= reachable;
        clusters.insert(cluster.name.to_string(), json!({ "reachable": reachable }));
    }
    let code = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Redis down does not make kshift unready: it keeps serving on the table in force.
    let redis = state
        .redis
        .as_ref()
        .map(|redis| json!({ "connected": redis.is_connected() }));
    let body = json!({ "ready": all_ready, "clusters": clusters, "redis": redis });
    (code, Json(body)).into_response()
}

/// The metrics exposition, with the gauges kshift keeps elsewhere (routing version, offset
/// sync age, mirror queues and lag) refreshed first.
pub fn metrics_text(control: &Control) -> String {
    control.metrics.render(|metrics| {
        metrics.set_routing_version(control.routing.load().version);
        if let Some(age) = control.offset_sync.snapshot().last_pass_age_seconds {
            metrics.set_offset_sync_age(age);
        }
        for cluster in &control.clusters {
            if let Some(stats) = control.mirrors.stats_of(cluster.id) {
                metrics.set_mirror_gauges(
                    &cluster.name,
                    stats.queued_bytes.load(Ordering::Relaxed) as u64,
                    stats.lag_records.load(Ordering::Relaxed),
                    stats.lag_seconds(),
                );
                for (broker, (requests, bytes)) in stats.in_flight() {
                    metrics.mirror_in_flight(&cluster.name, broker, requests, bytes);
                }
            }
        }
    })
}

async fn metrics(State(state): State<Arc<Control>>) -> Response {
    let text = metrics_text(&state);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn routes_json(state: &Control) -> serde_json::Value {
    let table = state.routing.load();
    json!({
        "version": table.version,
        "age_seconds": table.built_at.elapsed().as_secs(),
        "routes": table.spec.routes,
        "groups": table.spec.groups,
    })
}

async fn get_routes(State(state): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(routes_json(&state))
}

/// Parses a table from a JSON body (`Content-Type: application/json`, or a body that
/// starts with `{`) or a TOML one (`[[routes]]` …).
fn parse_spec(headers: &HeaderMap, body: &str) -> Result<RoutingSpec, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
        || body.trim_start().starts_with('{');
    if is_json {
        serde_json::from_str(body).map_err(|e| format!("invalid JSON routing table: {e}"))
    } else {
        toml::from_str(body).map_err(|e| format!("invalid TOML routing table: {e}"))
    }
}

fn rejected(state: &Control, code: StatusCode, error: String) -> Response {
    state.metrics.routing_update("rejected", "admin");
    (code, Json(json!({ "error": error }))).into_response()
}

/// `?force=true`: put a change in force even where consumer groups cannot be moved.
/// Whether the query string sets `name` (`name` or `name=true`).
fn query_flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == name || pair.strip_suffix("=true") == Some(name))
    })
}

fn policy(uri: &Uri) -> Policy {
    if query_flag(uri, "force") {
        Policy::Force
    } else {
        Policy::Refuse
    }
}

async fn put_routes(
    State(state): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let policy = policy(&uri);
    let dry_run = query_flag(&uri, "dry_run");
    tracing::info!(%caller, ?policy, dry_run, "PUT /routes");
    let spec = match parse_spec(&headers, &body) {
        Ok(spec) => spec,
        Err(error) => return rejected(&state, StatusCode::BAD_REQUEST, error),
    };
    if dry_run {
        // Checked and planned like a change, translated from the offsets committed now;
        // nothing is fenced, committed or put in force.
        return match cutover::dry_run(&state, &spec).await {
            Ok(report) => {
                let status = if report.refusals.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::CONFLICT
                };
                (status, Json(json!({ "dry_run": report }))).into_response()
            }
            Err(error) => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": error.to_string() })),
            )
                .into_response(),
        };
    }
    submit(&state, &spec, policy).await
}

/// Applies `spec` here, or through Redis (and so on every instance) when configured.
async fn submit(state: &Control, spec: &RoutingSpec, policy: Policy) -> Response {
    let result = match &state.redis {
        Some(redis) => redis.publish(state, spec, "admin", policy).await,
        None => {
            cutover::switch(state, spec, policy, async {
                state
                    .routing
                    .apply(spec, "admin", None)
                    .map_err(RedisSourceError::from)
            })
            .await
        }
    };
    answer(state, result)
}

/// The admin API's answer to a routing update.
fn answer(state: &Control, result: Result<Switched, RedisSourceError>) -> Response {
    match result {
        Ok(Switched { applied, moved }) => {
            state.metrics.routing_update("applied", "admin");
            Json(json!({
                "version": applied.version,
                "changes": applied.diff,
                "moved_groups": moved,
            }))
            .into_response()
        }
        Err(RedisSourceError::Unavailable(error)) => rejected(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis unavailable, table unchanged: {error}"),
        ),
        Err(error @ RedisSourceError::Update(UpdateError::Refused(_))) => {
            rejected(state, StatusCode::CONFLICT, error.to_string())
        }
        Err(error) => rejected(state, StatusCode::BAD_REQUEST, error.to_string()),
    }
}

async fn rollback(
    State(state): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Response {
    let policy = policy(&uri);
    tracing::info!(%caller, ?policy, "POST /routes/rollback");
    if state.redis.is_some() {
        return match state.routing.previous_spec() {
            Some(previous) => submit(&state, &previous, policy).await,
            None => rejected(
                &state,
                StatusCode::CONFLICT,
                UpdateError::NoHistory.to_string(),
            ),
        };
    }
    let Some(previous) = state.routing.previous_spec() else {
        return rejected(
            &state,
            StatusCode::CONFLICT,
            UpdateError::NoHistory.to_string(),
        );
    };
    let result = cutover::switch(&state, &previous, policy, async {
        state
            .routing
            .rollback("admin")
            .map_err(RedisSourceError::from)
    })
    .await;
    answer(&state, result)
}

/// `POST /backfill` body.
#[derive(serde::Deserialize)]
struct BackfillRequest {
    topics: String,
    /// Copy pace; 0 or absent is unlimited.
    #[serde(default)]
    bytes_per_sec: u64,
}

async fn start_backfill(
    State(state): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    let request: BackfillRequest = match serde_json::from_str(&body) {
        Ok(request) => request,
        Err(error) => {
            let error = format!("expected {{\"topics\": GLOB, \"bytes_per_sec\": N}}: {error}");
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
        }
    };
    tracing::info!(%caller, topics = %request.topics, bytes_per_sec = request.bytes_per_sec, "POST /backfill");
    match queue_backfill(&state, &request.topics, request.bytes_per_sec).await {
        Ok(queued) => Json(json!({ "queued": queued })).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

async fn backfill_progress(State(state): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(
        json!({ "partitions": state.mirrors.backfill.states(&state.mirrors.offsets, state.routing.cluster_names()) }),
    )
}

/// `kshift verify --admin URL` reports its result here for the status page.
async fn report_verify(State(state): State<Arc<Control>>, body: String) -> Response {
    match serde_json::from_str::<crate::control::console::VerifyResult>(&body) {
        Ok(result) => {
            state.console.set_verify(result);
            (StatusCode::NO_CONTENT, "").into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("not a verify result (topics, ok, mode, summary): {error}") })),
        )
            .into_response(),
    }
}

async fn last_verify(State(state): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(json!({ "verify": state.console.verify() }))
}

async fn status(State(state): State<Arc<Control>>) -> Json<serde_json::Value> {
    let clusters: Vec<serde_json::Value> = state
        .clusters
        .iter()
        .map(|cluster| {
            let mirror = state.mirrors.stats(cluster.id);
            let (queue_limit_bytes, overflow) =
                state.mirrors.queue_settings(cluster.id).unwrap_or_default();
            let in_flight: Vec<serde_json::Value> = state
                .mirrors
                .stats_of(cluster.id)
                .map(|stats| stats.in_flight())
                .unwrap_or_default()
                .into_iter()
                .map(|(broker, (requests, bytes))| {
                    json!({ "broker": broker, "requests": requests, "bytes": bytes })
                })
                .collect();
            json!({
                "name": &*cluster.name,
                "reachable": cluster.known_api_versions().is_some(),
                "mirror": {
                    "mirrored_records": mirror.mirrored_records,
                    "failed_records": mirror.failed_records,
                    "dropped_records": mirror.dropped_records,
                    "lag_records": mirror.lag_records,
                    "queued_bytes": mirror.queued_bytes,
                    "queue_limit_bytes": queue_limit_bytes,
                    "overflow": overflow.to_string(),
                    "queue_full": {
                        "dropped": mirror.queue_full_dropped,
                        "blocked": mirror.queue_full_blocked,
                        "refused": mirror.queue_full_refused,
                    },
                    "requests_sent": mirror.requests_sent,
                    "in_flight": in_flight,
                },
            })
        })
        .collect();
    let lag: Vec<serde_json::Value> = console::mirror_lag_by_route(&state)
        .into_iter()
        .map(|(route, records)| json!({ "route": route, "lag_records": records }))
        .collect();
    Json(json!({
        "routing": routes_json(&state),
        "mirror_lag_by_route": lag,
        "clusters": clusters,
        "client_connections": state.metrics.client_connections.get(),
        "offset_sync": state.offset_sync.snapshot(),
        "unrouted": state.unrouted.report(),
        "console": {
            "routes": state.console.routes(&state.routing.load().spec),
            "groups": state.console.groups(),
            "verify": state.console.verify(),
        },
    }))
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page: the migration's console. `GET /` is the whole page; its script fetches
/// `GET /?part=console` (the same content without the page around it) every 2 s and swaps
/// it in, so the page stays live without a reload or a framework.
async fn status_page(State(state): State<Arc<Control>>, uri: Uri) -> axum::response::Html<String> {
    let console = render_console(&state);
    if uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "part=console"))
    {
        return axum::response::Html(console);
    }
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kshift status</title><style>\
         body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #999;padding:4px 8px}}\
         .down,.bad{{color:#b00}}.up,.good{{color:#070}}.phase{{font-weight:bold}}\
         svg.spark{{vertical-align:middle;background:#f4f4f4}}</style></head><body>\
         <h1>kshift status</h1><div id=\"console\">{console}</div>\
         <p><a href=\"/metrics\">metrics</a> · <a href=\"/status\">status (JSON)</a> · \
         <a href=\"/routes\">routes (JSON)</a> · <span id=\"live\">live: every 2 s</span></p>\
         <script>{REFRESH_SCRIPT}</script></body></html>"
    ))
}

/// Swaps in the console every 2 s; counts the refreshes on `<body data-refreshes>` and says
/// when the last one failed.
const REFRESH_SCRIPT: &str = "let refreshes=0;setInterval(async()=>{const live=document.getElementById('live');\
try{const answer=await fetch('/?part=console',{cache:'no-store'});if(!answer.ok)throw new Error(answer.status);\
document.getElementById('console').innerHTML=await answer.text();refreshes+=1;\
document.body.dataset.refreshes=refreshes;live.textContent='live: every 2 s';}\
catch(error){live.textContent='not refreshed: '+error;}},2000);";

/// The console: routing version, a row per route (phase, rates, lag and its sparkline),
/// groups with their positions per cluster, the last verify, offset sync, unrouted writes,
/// then the routes as configured and the clusters.
fn render_console(state: &Control) -> String {
    let table = state.routing.load();
    let mut html = format!(
        "<p id=\"routing\">Routing table <b>version {}</b>, in force for {} s. Client connections: \
         <b id=\"connections\">{}</b>.<span id=\"rendering\" data-rendering=\"{}\"></span></p>",
        table.version,
        table.built_at.elapsed().as_secs(),
        state.metrics.client_connections.get(),
        state.console.next_render(),
    );
    html.push_str("<h2>Migration</h2><table id=\"migration\"><tr><th>#</th><th>topics</th><th>phase</th>\
         <th>written (records/s)</th><th>mirrored (records/s)</th><th>mirror lag (records)</th><th>lag, last 5 min</th></tr>");
    let rate = |rate: Option<f64>| rate.map_or_else(|| "—".to_string(), |r| format!("{r:.0}"));
    for route in state.console.routes(&table.spec) {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"phase\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            route.route,
            escape(&route.topics),
            escape(&route.phase),
            rate(route.write_rate),
            rate(route.mirror_rate),
            route.lag_records,
            sparkline(&route.lag_history),
        ));
    }
    html.push_str("</table><h2>Consumer groups</h2>");
    let groups = state.console.groups();
    if groups.is_empty() {
        html.push_str("<p id=\"groups\">No consumer group has come through kshift yet.</p>");
    } else {
        html.push_str("<table id=\"groups\"><tr><th>group</th><th>route</th><th>cluster</th><th>committed positions</th></tr>");
        for group in &groups {
            for (cluster, positions) in &group.clusters {
                let shown = match positions {
                    Ok(positions) if positions.is_empty() => "none committed".to_string(),
                    Ok(positions) => positions
                        .iter()
                        .map(|(topic, partition, offset)| format!("{topic}[{partition}] {offset}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Err(error) => format!("unknown: {error}"),
                };
                html.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&group.group),
                    group.route,
                    escape(cluster),
                    escape(&shown)
                ));
            }
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Checks</h2><ul>");
    match state.console.verify() {
        Some(verify) => html.push_str(&format!(
            "<li id=\"verify\">Last verify of <b>{}</b> ({} mode): <span class=\"{}\">{}</span> — {}</li>",
            escape(&verify.topics),
            escape(&verify.mode),
            if verify.ok { "good" } else { "bad" },
            if verify.ok { "equal" } else { "DIFFERENT" },
            escape(&verify.summary)
        )),
        None => html.push_str(
            "<li id=\"verify\">No verify reported yet (<code>kshift verify --admin URL</code> reports here).</li>",
        ),
    }
    let sync = state.offset_sync.snapshot();
    html.push_str(&format!(
        "<li id=\"offset-sync\">Offset sync: {} group commits copied, {} groups left alone (members there), {} failures; last pass {}.</li>",
        sync.groups_synced,
        sync.groups_active,
        sync.failures,
        sync.last_pass_age_seconds
            .map_or_else(|| "never (no [[groups]] offset_sync_ms)".to_string(), |age| format!("{age:.0} s ago"))
    ));
    let unrouted = state.unrouted.report();
    match unrouted.findings.last() {
        Some(last) => html.push_str(&format!(
            "<li id=\"unrouted\" class=\"bad\">Unrouted writes: {} records written around kshift; last {}[{}] offsets {}–{} on {}, {:.0} s ago. <code>kshift cutover</code> refuses while they are recent.</li>",
            unrouted.records,
            escape(&last.topic),
            last.partition,
            last.first_offset,
            last.last_offset,
            escape(&last.cluster),
            unrouted.last_seen_seconds_ago.unwrap_or(0.0)
        )),
        None => html.push_str(&format!(
            "<li id=\"unrouted\">Unrouted writes: none found ({} checks).</li>",
            unrouted.passes
        )),
    }
    html.push_str("</ul>");
    html.push_str("<h2>Routes</h2><table id=\"routes\"><tr><th>#</th><th>topics</th><th>clients</th><th>write</th><th>mirror</th><th>mode</th><th>%</th><th>read</th><th>partitioning</th><th>mirror lag (records)</th></tr>");
    let lag = console::mirror_lag_by_route(state);
    for (index, route) in table.spec.routes.iter().enumerate() {
        html.push_str(&format!(
            "<tr><td>{index}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            escape(&route.topics),
            escape(&route.clients),
            escape(&route.write),
            escape(&route.mirror.join(", ")),
            route.mirror_mode,
            route.mirror_percent,
            escape(route.read.as_deref().unwrap_or(&route.write)),
            route.partitioning,
            lag.get(&index).copied().unwrap_or(0),
        ));
    }
    html.push_str("</table><h2>Clusters</h2><table id=\"clusters\"><tr><th>cluster</th><th>health</th><th>mirrored records</th><th>mirror lag (records)</th><th>mirror lag (s)</th><th>failed</th><th>dropped</th><th>mirror queue</th><th>requests in flight</th><th>queue full</th></tr>");
    for cluster in &state.clusters {
        let mirror = state.mirrors.stats(cluster.id);
        let lag_seconds = state
            .mirrors
            .stats_of(cluster.id)
            .map_or(0.0, |s| s.lag_seconds());
        let (class, health) = match cluster.known_api_versions() {
            Some(_) => ("up", "reachable"),
            None => ("down", "not reached yet"),
        };
        let (limit, overflow) = state.mirrors.queue_settings(cluster.id).unwrap_or_default();
        let in_flight: usize = state.mirrors.stats_of(cluster.id).map_or(0, |s| {
            s.in_flight().values().map(|(requests, _)| requests).sum()
        });
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"{class}\">{health}</td><td>{}</td><td>{}</td><td>{lag_seconds:.1}</td><td>{}</td><td>{}</td>\
             <td>{:.1} of {:.0} MiB, {overflow} when full</td><td>{in_flight}</td><td>{}</td></tr>",
            escape(&cluster.name),
            mirror.mirrored_records,
            mirror.lag_records,
            mirror.failed_records,
            mirror.dropped_records,
            mirror.queued_bytes as f64 / (1024.0 * 1024.0),
            limit as f64 / (1024.0 * 1024.0),
            mirror.queue_full_dropped + mirror.queue_full_blocked,
        ));
    }
    html.push_str("</table>");
    html
}

/// An inline SVG line of `values` (oldest first), scaled to its largest value, with that
/// value written beside it.
fn sparkline(values: &[u64]) -> String {
    const WIDTH: f64 = 150.0;
    const HEIGHT: f64 = 24.0;
    let peak = values.iter().copied().max().unwrap_or(0);
    if values.len() < 2 {
        return "<svg class=\"spark\" width=\"150\" height=\"24\"></svg> (sampling)".to_string();
    }
    let step = WIDTH / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &value)| {
            let y = if peak == 0 {
                HEIGHT - 1.0
            } else {
                HEIGHT - 1.0 - (value as f64 / peak as f64) * (HEIGHT - 2.0)
            };
            format!("{:.1},{y:.1}", i as f64 * step)
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"150\" height=\"24\" viewBox=\"0 0 150 24\"><polyline fill=\"none\" stroke=\"#06c\" stroke-width=\"1.5\" points=\"{}\"/></svg> peak {peak}",
        points.join(" ")
    )
}
