//! Prometheus metrics (prefix `kshift_`), registered once per proxy and rendered by the
//! admin API's `/metrics`.
//!
//! Invariant: label sets are bounded — api names, configured cluster names, route
//! positions, Kafka error names and a few outcome words. Never a client id or a topic.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub cluster: String,
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendErrorLabels {
    pub cluster: String,
    pub api: String,
    /// A Kafka error name (`NotLeaderOrFollower`), or `timeout` / `connection`.
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The api of the request, or `unknown` when its header could not be read.
    pub api: String,
    /// `client`, `backend` or `internal`: where the failure came from.
    pub source: String,
    /// The backend cluster the failure names; empty when it names none (a client's or
    /// kshift's failure, or a broken connection, which names a broker address).
    pub cluster: String,
    /// `true` when the client was told an error it may retry.
    pub retriable: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendBytesLabels {
    pub cluster: String,
    /// `sent` or `received`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `tls` (handshake failed or timed out) or `sasl` (authentication refused).
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HedgeLabels {
    pub cluster: String,
    /// `won` (the second broker answered first; the control connection moved to it) or
    /// `lost` (the control broker answered first after all).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub cluster: String,
    /// `mirror_overflow`: `drop` or `block`.
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub cluster: String,
    /// The broker's node id in that cluster (a handful per cluster).
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// The cluster the offsets were committed on.
    pub cluster: String,
    /// `synced`, `active` (left alone: members there) or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub cluster: String,
    pub route: String,
    /// `mirrored`, `failed` or `dropped`.
    pub outcome: String,
}

/// Api keys below this have their per-api metric handles cached (every key Kafka has today).
const API_SLOTS: usize = 128;

/// A request counter and a latency histogram of one api, resolved once.
type ApiHandles = (Counter, Histogram);

fn api_slots() -> Box<[OnceLock<ApiHandles>]> {
    (0..API_SLOTS).map(|_| OnceLock::new()).collect()
}

fn api_slot(slots: &[OnceLock<ApiHandles>], api: ApiKey) -> Option<&OnceLock<ApiHandles>> {
    usize::try_from(api as i16)
        .ok()
        .and_then(|index| slots.get(index))
}

/// One backend cluster's request metrics with their label sets resolved once per api: a
/// request then costs two atomic adds and an observation, where a lookup by labels formatted
/// and hashed them and took the family's lock (about a tenth of kshift's instructions per
/// produce, by callgrind).
pub struct BackendMetrics {
    metrics: Arc<Metrics>,
    cluster: Arc<str>,
    apis: Box<[OnceLock<ApiHandles>]>,
    sent: Counter,
    received: Counter,
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl BackendMetrics {
    pub fn request(&self, api: ApiKey, elapsed: Duration) {
        match api_slot(&self.apis, api) {
            Some(slot) => {
                let (requests, seconds) = slot.get_or_init(|| {
                    let labels = BackendLabels {
                        cluster: self.cluster.to_string(),
                        api: format!("{api:?}"),
                    };
                    (
                        self.metrics.backend_requests.get_or_create(&labels).clone(),
                        self.metrics
                            .backend_request_seconds
                            .get_or_create(&labels)
                            .clone(),
                    )
                });
                requests.inc();
                seconds.observe(elapsed.as_secs_f64());
            }
            None => self.metrics.backend_request(&self.cluster, api, elapsed),
        }
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.inc_by(bytes as u64);
    }

    pub fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    pub fn error(&self, api: ApiKey, failure: BackendFailure) {
        self.metrics.backend_error(&self.cluster, api, failure);
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric kshift exports.
pub struct Metrics {
    registry: Registry,
    pub client_connections: Gauge,
    pub client_connections_accepted: Counter,
    pub client_connections_refused: Counter,
    pub client_connections_idle_closed: Counter,
    /// Fetched partitions answered empty because their position belongs to the previous
    /// read cluster (the consumer has not rejoined its moved group yet).
    pub fetch_positions_held: Counter,
    /// Consumer groups moved by routing changes.
    pub groups_moved: Counter,
    pub client_authentication_failures: Family<StageLabels, Counter>,
    pub client_requests: Family<ApiLabels, Counter>,
    pub client_request_seconds: Family<ApiLabels, Histogram, fn() -> Histogram>,
    pub backend_requests: Family<BackendLabels, Counter>,
    pub backend_request_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    request_failures: Family<FailureLabels, Counter>,
    pub backend_bytes: Family<BackendBytesLabels, Counter>,
    /// Connections kshift opened to a cluster's brokers (client traffic and its own).
    pub backend_connections_opened: Family<ClusterLabels, Counter>,
    /// Lookups kshift also asked of a second broker because its control broker was slow.
    control_hedges: Family<HedgeLabels, Counter>,
    pub mirror_records: Family<MirrorLabels, Counter>,
    mirror_queue_bytes: Family<ClusterLabels, Gauge>,
    mirror_lag_records: Family<ClusterLabels, Gauge>,
    mirror_lag_seconds: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    mirror_queue_full: Family<PolicyLabels, Counter>,
    mirror_requests: Family<ClusterLabels, Counter>,
    mirror_request_bytes: Family<ClusterLabels, Counter>,
    mirror_requests_in_flight: Family<BrokerLabels, Gauge>,
    mirror_bytes_in_flight: Family<BrokerLabels, Gauge>,
    offset_sync_groups: Family<SyncLabels, Counter>,
    offset_sync_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    unrouted_records: Family<ClusterLabels, Counter>,
    routing_version: Gauge,
    routing_redis_connected: Gauge,
    pub routing_updates: Family<OutcomeLabels, Counter>,
    /// Serialises rendering (gauges are refreshed from live state first).
    render: Mutex<()>,
    /// `client_requests` and `client_request_seconds` per api key, resolved once.
    client_apis: Box<[OnceLock<ApiHandles>]>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or `rejected`.
    pub outcome: String,
    /// `file`, `admin`, `redis`, `start`.
    pub source: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kshift");
        let metrics = Metrics {
            client_connections: Gauge::default(),
            client_connections_accepted: Counter::default(),
            client_connections_refused: Counter::default(),
            client_authentication_failures: Family::default(),
            client_connections_idle_closed: Counter::default(),
            fetch_positions_held: Counter::default(),
            groups_moved: Counter::default(),
            client_requests: Family::default(),
            client_request_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            backend_requests: Family::default(),
            backend_request_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            backend_errors: Family::default(),
            request_failures: Family::default(),
            backend_bytes: Family::default(),
            backend_connections_opened: Family::default(),
            control_hedges: Family::default(),
            mirror_records: Family::default(),
            mirror_queue_bytes: Family::default(),
            mirror_lag_records: Family::default(),
            mirror_lag_seconds: Family::default(),
            mirror_queue_full: Family::default(),
            mirror_requests: Family::default(),
            mirror_request_bytes: Family::default(),
            mirror_requests_in_flight: Family::default(),
            mirror_bytes_in_flight: Family::default(),
            offset_sync_groups: Family::default(),
            offset_sync_age_seconds: Gauge::default(),
            unrouted_records: Family::default(),
            routing_version: Gauge::default(),
            routing_redis_connected: Gauge::default(),
            routing_updates: Family::default(),
            registry: Registry::default(),
            render: Mutex::new(()),
            client_apis: api_slots(),
        };
        registry.register(
            "client_connections",
            "Client connections open",
            metrics.client_connections.clone(),
        );
        registry.register(
            "client_connections_accepted",
            "Client connections accepted",
            metrics.client_connections_accepted.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Client connections closed at accept because max_connections was reached",
            metrics.client_connections_refused.clone(),
        );
        registry.register(
            "client_authentication_failures",
            "Client connections closed because TLS or SASL authentication failed",
            metrics.client_authentication_failures.clone(),
        );
        registry.register(
            "client_connections_idle_closed",
            "Client connections closed after idle_timeout_ms without a request",
            metrics.client_connections_idle_closed.clone(),
        );
        registry.register(
            "fetch_positions_held",
            "Fetched partitions answered empty while their consumer's position still belonged to the previous read cluster",
            metrics.fetch_positions_held.clone(),
        );
        registry.register(
            "groups_moved",
            "Consumer groups whose committed offsets a routing change moved to another cluster",
            metrics.groups_moved.clone(),
        );
        registry.register(
            "client_requests",
            "Client requests by api",
            metrics.client_requests.clone(),
        );
        registry.register(
            "client_request_duration_seconds",
            "Time from a client request's arrival to its answer being ready",
            metrics.client_request_seconds.clone(),
        );
        registry.register(
            "backend_requests",
            "Requests sent to backend brokers",
            metrics.backend_requests.clone(),
        );
        registry.register(
            "backend_request_duration_seconds",
            "Backend round-trip time (including any wait the request asked for)",
            metrics.backend_request_seconds.clone(),
        );
        registry.register(
            "backend_errors",
            "Backend failures: Kafka error codes in answers, timeouts, broken connections",
            metrics.backend_errors.clone(),
        );
        registry.register(
            "request_failures",
            "Failures kshift answered a client with: each partition, group or request it gave an \
             error code of its own (or closed the connection for), by where the failure came from",
            metrics.request_failures.clone(),
        );
        registry.register(
            "backend_bytes",
            "Bytes of request and response bodies exchanged with backend brokers",
            metrics.backend_bytes.clone(),
        );
        registry.register(
            "backend_connections_opened",
            "Connections opened to backend brokers (attempts, successful or not)",
            metrics.backend_connections_opened.clone(),
        );
        registry.register(
            "control_hedges",
            "Metadata and coordinator lookups also sent to a second broker because the control broker was slow to answer",
            metrics.control_hedges.clone(),
        );
        registry.register(
            "mirror_records",
            "Records handed to mirror clusters, by outcome",
            metrics.mirror_records.clone(),
        );
        registry.register(
            "mirror_queue_bytes",
            "Bytes waiting in a mirror queue",
            metrics.mirror_queue_bytes.clone(),
        );
        registry.register(
            "mirror_lag_records",
            "Records waiting to be mirrored",
            metrics.mirror_lag_records.clone(),
        );
        registry.register(
            "mirror_lag_seconds",
            "Age of the oldest record queued for a mirror and not on it yet (0 when none)",
            metrics.mirror_lag_seconds.clone(),
        );
        registry.register(
            "unrouted_records",
            "Records found on a mirrored partition of a write cluster that were not written through kshift",
            metrics.unrouted_records.clone(),
        );
        registry.register(
            "offset_sync_groups",
            "Consumer groups whose translated offsets a sync pass committed on a cluster, by outcome",
            metrics.offset_sync_groups.clone(),
        );
        registry.register(
            "offset_sync_age_seconds",
            "Seconds since the consumer-offset sync last finished a pass",
            metrics.offset_sync_age_seconds.clone(),
        );
        registry.register(
            "mirror_queue_full",
            "Items that found a mirror queue full, by what the overflow policy did (drop, block)",
            metrics.mirror_queue_full.clone(),
        );
        registry.register(
            "mirror_requests",
            "Produce requests kshift's mirror producer sent",
            metrics.mirror_requests.clone(),
        );
        registry.register(
            "mirror_request_bytes",
            "Bytes of record batches in the mirror producer's produce requests",
            metrics.mirror_request_bytes.clone(),
        );
        registry.register(
            "mirror_requests_in_flight",
            "Mirror produce requests awaiting their answer, per mirror broker",
            metrics.mirror_requests_in_flight.clone(),
        );
        registry.register(
            "mirror_bytes_in_flight",
            "Bytes of mirror produce requests awaiting their answer, per mirror broker",
            metrics.mirror_bytes_in_flight.clone(),
        );
        registry.register(
            "routing_version",
            "Version of the routing table in force",
            metrics.routing_version.clone(),
        );
        registry.register(
            "routing_redis_connected",
            "1 while the Redis routing subscription is up (absent without [routing] redis)",
            metrics.routing_redis_connected.clone(),
        );
        registry.register(
            "routing_updates",
            "Routing table updates, applied or rejected, by source",
            metrics.routing_updates.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A client connection refused at `stage` (`tls` or `sasl`).
    pub fn client_authentication_failure(&self, stage: &str) {
        self.client_authentication_failures
            .get_or_create(&StageLabels {
                stage: stage.to_string(),
            })
            .inc();
    }

    pub fn client_request(&self, api: ApiKey, elapsed: Duration) {
        let resolve = || {
            let labels = ApiLabels {
                api: format!("{api:?}"),
            };
            (
                self.client_requests.get_or_create(&labels).clone(),
                self.client_request_seconds.get_or_create(&labels).clone(),
            )
        };
        let uncached;
        let (requests, seconds) = match api_slot(&self.client_apis, api) {
            Some(slot) => slot.get_or_init(resolve),
            None => {
                uncached = resolve();
                &uncached
            }
        };
        requests.inc();
        seconds.observe(elapsed.as_secs_f64());
    }

    /// `cluster`'s request metrics, resolved once per api (see [`BackendMetrics`]).
    pub fn backend(self: &Arc<Self>, cluster: &Arc<str>) -> Arc<BackendMetrics> {
        let bytes = |direction: &str| {
            self.backend_bytes
                .get_or_create(&BackendBytesLabels {
                    cluster: cluster.to_string(),
                    direction: direction.to_string(),
                })
                .clone()
        };
        Arc::new(BackendMetrics {
            metrics: self.clone(),
            cluster: cluster.clone(),
            apis: api_slots(),
            sent: bytes("sent"),
            received: bytes("received"),
        })
    }

    pub fn backend_request(&self, cluster: &str, api: ApiKey, elapsed: Duration) {
        let labels = BackendLabels {
            cluster: cluster.to_string(),
            api: format!("{api:?}"),
        };
        self.backend_requests.get_or_create(&labels).inc();
        self.backend_request_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a failure: a Kafka error code (0 is ignored) or a named failure.
    pub fn backend_connection_opened(&self, cluster: &str) {
        self.backend_connections_opened
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    pub fn control_hedge(&self, cluster: &str, outcome: &str) {
        self.control_hedges
            .get_or_create(&HedgeLabels {
                cluster: cluster.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn backend_error(&self, cluster: &str, api: ApiKey, error: BackendFailure) {
        let error = match error {
            BackendFailure::Code(0) => return,
            BackendFailure::Code(code) => match ResponseError::try_from_code(code) {
                Some(ResponseError::Unknown(code)) => format!("code_{code}"),
                Some(error) => format!("{error:?}"),
                None => return,
            },
            BackendFailure::Timeout => "timeout".to_string(),
            BackendFailure::Connection => "connection".to_string(),
        };
        self.backend_errors
            .get_or_create(&BackendErrorLabels {
                cluster: cluster.to_string(),
                api: format!("{api:?}"),
                error,
            })
            .inc();
    }

    /// Counts one failure answered to a client (see [`FailureLabels`]).
    pub fn request_failure(
        &self,
        api: Option<ApiKey>,
        source: &str,
        cluster: Option<&str>,
        retriable: bool,
    ) {
        self.request_failures
            .get_or_create(&FailureLabels {
                api: api.map_or_else(|| "unknown".to_string(), |api| format!("{api:?}")),
                source: source.to_string(),
                cluster: cluster.unwrap_or_default().to_string(),
                retriable: retriable.to_string(),
            })
            .inc();
    }

    pub fn routing_update(&self, outcome: &str, source: &str) {
        self.routing_updates
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
                source: source.to_string(),
            })
            .inc();
    }

    /// One produce request of the mirror producer, carrying `bytes` of batches.
    pub fn mirror_request(&self, cluster: &str, bytes: usize) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.mirror_requests.get_or_create(&labels).inc();
        self.mirror_request_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    /// `records` written to a mirrored partition of `cluster` around kshift.
    pub fn unrouted_records(&self, cluster: &str, records: i64) {
        self.unrouted_records
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc_by(u64::try_from(records).unwrap_or(0));
    }

    /// A group's translated offsets on `cluster`: `synced`, `active` or `failed`.
    pub fn offset_sync(&self, cluster: &str, outcome: &str) {
        self.offset_sync_groups
            .get_or_create(&SyncLabels {
                cluster: cluster.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The mirror producer's requests and bytes awaiting an answer from `broker` of `cluster`.
    pub fn mirror_in_flight(&self, cluster: &str, broker: i32, requests: usize, bytes: usize) {
        let labels = BrokerLabels {
            cluster: cluster.to_string(),
            broker: broker.to_string(),
        };
        self.mirror_requests_in_flight
            .get_or_create(&labels)
            .set(i64::try_from(requests).unwrap_or(i64::MAX));
        self.mirror_bytes_in_flight
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// An item found `cluster`'s mirror queue full; `policy` is what happened to it
    /// (`drop` or `block`).
    pub fn mirror_queue_full(&self, cluster: &str, policy: &str) {
        self.mirror_queue_full
            .get_or_create(&PolicyLabels {
                cluster: cluster.to_string(),
                policy: policy.to_string(),
            })
            .inc();
    }

    pub fn mirror_outcome(&self, cluster: &str, route: usize, outcome: &str, records: u64) {
        self.mirror_records
            .get_or_create(&MirrorLabels {
                cluster: cluster.to_string(),
                route: route.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(records);
    }

    /// The text exposition, with gauges first refreshed by `refresh` (one rendering at a
    /// time, so two scrapes do not interleave their refreshes).
    pub fn render(&self, refresh: impl FnOnce(&Metrics)) -> String {
        let _guard = self.render.lock().unwrap_or_else(|p| p.into_inner());
        refresh(self);
        self.exposition()
    }

    pub fn set_routing_version(&self, version: u64) {
        self.routing_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn set_offset_sync_age(&self, seconds: f64) {
        self.offset_sync_age_seconds.set(seconds);
    }

    /// One mirror cluster's queue and lag gauges.
    pub fn set_mirror_gauges(
        &self,
        cluster: &str,
        queued_bytes: u64,
        lag_records: u64,
        lag_seconds: f64,
    ) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.mirror_queue_bytes
            .get_or_create(&labels)
            .set(i64::try_from(queued_bytes).unwrap_or(i64::MAX));
        self.mirror_lag_records
            .get_or_create(&labels)
            .set(i64::try_from(lag_records).unwrap_or(i64::MAX));
        self.mirror_lag_seconds
            .get_or_create(&labels)
            .set(lag_seconds);
    }

    /// The text exposition as it stands (gauges as last refreshed).
    pub fn exposition(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// What went wrong with a backend request, for [`Metrics::backend_error`].
#[derive(Debug, Clone, Copy)]
pub enum BackendFailure {
    Code(i16),
    Timeout,
    Connection,
}
