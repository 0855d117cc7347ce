//! Configuration: the TOML file an operator writes, parsed with serde and checked by
//! [`Config::validate`] before anything starts.
//!
//! Invariant: a [`Config`] that left [`Config::parse`] is valid as a whole: every cluster a
//! route or group rule names exists, every glob compiles, every limit is in range. Errors
//! name the offending field (`routes[2].write`), so an operator can fix the file without
//! reading kshift's source.

pub mod secrets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::routing::{GroupSpec, RouteSpec, RoutingError, RoutingSpec};
pub use secrets::{Mechanism, Secret};

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("invalid config: {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("invalid config: {0}")]
    Routing(#[from] RoutingError),
}

impl ConfigError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing side: listener, advertised address, limits.
    pub proxy: ProxyConfig,
    /// Backend clusters by name (`old`, `new`, …); routes refer to them by that name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// `[[routes]]`: which cluster each topic is written to, mirrored to and read from.
    /// First match wins. Part of the routing table operators swap at run time.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// `[[groups]]`: which cluster hosts each consumer group. First match wins.
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// `[routing]`: where the routing table is shared across a fleet.
    #[serde(default)]
    pub routing: RoutingSourceConfig,
}

/// `[routing]`: optional fleet-wide routing through Redis.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSourceConfig {
    /// `redis://host:port[/db]`: the table lives in a Redis key and changes are announced on
    /// a pub/sub channel, so every kshift sharing it applies the same table.
    #[serde(default)]
    pub redis: Option<String>,
    /// The Redis key (and pub/sub channel) holding the table.
    #[serde(default = "default_redis_key")]
    pub redis_key: String,
}

fn default_redis_key() -> String {
    "kshift:routing".to_string()
}

/// `[proxy]`: how clients reach kshift and the limits of each client connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the Kafka listener binds, e.g. `0.0.0.0:9092` (port 0 picks a free port).
    pub listen: String,
    /// `host:port` that clients are told to connect to (Metadata, FindCoordinator): where
    /// every virtual node is. Defaults to the bound listen address.
    #[serde(default)]
    pub advertised: Option<String>,
    /// A second listener, served exactly like `listen`, for clients' `bootstrap.servers`
    /// only: then no client's bootstrap address is spelled like the virtual nodes'
    /// (`advertised`). kafkajs needs that: it takes every node at exactly its bootstrap
    /// host:port for its bootstrap broker and then sends only one node's records of a batch,
    /// losing the others silently. Off when absent.
    #[serde(default)]
    pub bootstrap_listen: Option<String>,
    /// Address of the admin HTTP API (metrics, health, routes); off when absent. Anything
    /// but a loopback address requires `admin_token_file`.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// File holding the bearer token the admin API requires (`Authorization: Bearer …`)
    /// on every endpoint but /health and /ready. The token stays out of the config file.
    #[serde(default)]
    pub admin_token_file: Option<String>,
    /// Node id of the one broker Metadata lists while kshift knows no backend broker (every
    /// cluster unreachable since start). Otherwise clients see one virtual node per backend
    /// broker (`[clusters.NAME] node_id_base`), all at `advertised`.
    #[serde(default)]
    pub node_id: i32,
    /// Cluster id reported in Metadata and DescribeCluster.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Largest request frame a client may send; larger ones close the connection.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Bytes of request frames read from clients and not yet answered, across all client
    /// connections (Kafka's `queued.max.request.bytes`). At the budget kshift reads no
    /// further frame from any socket, authenticated or not, until answers free some; at
    /// least `max_frame_bytes`, so that any one frame fits.
    #[serde(default = "default_queued_max_request_bytes")]
    pub queued_max_request_bytes: usize,
    /// Requests of one client connection handled concurrently; when full, kshift stops
    /// reading that socket (backpressure), as a broker does.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Client connections served at once; further ones are closed right after accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed to open a TCP connection to a backend broker.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for a backend broker to answer one request, on top of any time the
    /// request itself asks the broker to wait (fetch `max_wait_ms`, produce `timeout_ms`).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Age after which cached backend metadata (leaders, brokers) is refreshed.
    #[serde(default = "default_metadata_max_age_ms")]
    pub metadata_max_age_ms: u64,
    /// How often mirrored partitions are checked for records written around kshift (which
    /// never reach the mirror), in milliseconds; 0 turns the check off. A pass looks at what
    /// was written at least `request_timeout_ms` earlier.
    #[serde(default = "default_unrouted_check_ms")]
    pub unrouted_check_ms: u64,
    /// Journal of the offset map (write offset -> mirror offset per mirrored batch), one
    /// JSON line per batch, read back at start so a restarted kshift translates committed
    /// offsets as before. In memory only when absent.
    #[serde(default)]
    pub offset_map_file: Option<String>,
    /// Journal of batches that reached the write cluster but not a mirror (failed after
    /// retries, or dropped by a full queue), with their write offsets, for `kshift repair`.
    #[serde(default)]
    pub mirror_failures_file: Option<String>,
    /// A client connection that sends no request for this long is closed (Kafka's
    /// `connections.max.idle.ms`; clients reconnect when they need to).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// On SIGTERM/SIGINT: how long in-flight requests may finish and mirror queues may
    /// flush before kshift exits anyway.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// `[proxy.tls]`: clients connect over TLS (and, with `client_ca_file`, must present a
    /// certificate). Plain TCP when absent.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// `[proxy.sasl]`: clients must authenticate (SASL PLAIN / SCRAM) before any request
    /// but ApiVersions. No authentication when absent.
    #[serde(default)]
    pub sasl: Option<ListenerSaslConfig>,
}

/// `[proxy.tls]`: TLS on the client listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM file with kshift's certificate chain (leaf first).
    pub cert_file: String,
    /// PEM file with the private key of `cert_file`.
    pub key_file: String,
    /// PEM file of the CAs whose client certificates are accepted; when set, every client
    /// must present a valid certificate signed by one of them (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// Time a client has to complete the TLS handshake after connecting.
    #[serde(default = "default_tls_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_tls_handshake_timeout_ms() -> u64 {
    10_000
}

/// `[proxy.sasl]`: SASL authentication of clients, terminated by kshift.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSaslConfig {
    /// TOML file of users and their hashed secrets (`kshift user add` writes it). Re-read
    /// when it changes: every new authentication sees the file as it is.
    pub credentials_file: String,
    /// Mechanisms offered to clients.
    #[serde(default = "default_listener_mechanisms")]
    pub mechanisms: Vec<Mechanism>,
    /// How long a failed authentication's answer is held before it is sent and the
    /// connection closed (Kafka's `connection.failed.authentication.delay.ms`): slows
    /// password guessing and reconnect storms of misconfigured clients.
    #[serde(default = "default_failed_authentication_delay_ms")]
    pub failed_authentication_delay_ms: u64,
}

fn default_failed_authentication_delay_ms() -> u64 {
    100
}

fn default_listener_mechanisms() -> Vec<Mechanism> {
    Mechanism::ALL.to_vec()
}

fn default_idle_timeout_ms() -> u64 {
    600_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

fn default_cluster_id() -> String {
    "kshift".to_string()
}
fn default_max_frame_bytes() -> usize {
    100 * 1024 * 1024
}
fn default_queued_max_request_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_in_flight_requests() -> usize {
    64
}
fn default_max_connections() -> usize {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_unrouted_check_ms() -> u64 {
    30_000
}
fn default_metadata_max_age_ms() -> u64 {
    30_000
}

/// `[clusters.NAME]`: one backend Kafka cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Bootstrap brokers, `host:port` each.
    pub bootstrap: Vec<String>,
    /// Bytes of records waiting to be mirrored to this cluster; when full, `async` routes
    /// drop (and count, and log) what does not fit and `sync` routes fail the produce with
    /// a retriable error.
    #[serde(default = "default_mirror_queue_bytes")]
    pub mirror_queue_bytes: usize,
    /// How long kshift's writer to this cluster waits for more `async` batches of a
    /// partition before sending one it has (a producer's `linger.ms`): one request then
    /// carries several client batches, which costs the mirror cluster and kshift less than
    /// a request per batch. Clients never wait for it; `sync` batches never linger.
    #[serde(default = "default_mirror_linger_ms")]
    pub mirror_linger_ms: u64,
    /// What an item that does not fit in a full mirror queue does: `drop` (never delays
    /// the client; the records are counted, logged and journalled for `kshift repair`) or
    /// `block` (the client's produce waits for room, up to its request timeout, and is
    /// refused unwritten with a retriable error after that: the mirror stays complete and
    /// producers slow down instead).
    #[serde(default)]
    pub mirror_overflow: MirrorOverflow,
    /// Produce requests kshift's mirror producer keeps in flight on each connection to a
    /// broker of this cluster, and batches per partition (Kafka's idempotence keeps at most
    /// 5 in order). Over a link of round trip R the mirror carries at most this many
    /// requests' bytes per R.
    #[serde(default = "default_mirror_max_in_flight")]
    pub mirror_max_in_flight: usize,
    /// Largest produce request the mirror producer sends, in bytes: the ready batches of
    /// every partition a broker leads, up to this (Java's `max.request.size`). A single
    /// batch larger than this still goes, alone. With `mirror_max_in_flight`, it bounds the
    /// bytes in flight per broker, hence the mirror's rate over a long round trip.
    #[serde(default = "default_mirror_request_bytes")]
    pub mirror_request_bytes: usize,
    /// Largest batch the mirror producer makes by merging a partition's queued client
    /// batches, in bytes; keep it under the mirror topics' `max.message.bytes`.
    #[serde(default = "default_mirror_batch_bytes")]
    pub mirror_batch_bytes: usize,
    /// How long the mirror producer keeps retrying a batch (leader moves, a broker down,
    /// timeouts) before it counts it as failed and journals it for `kshift repair`, in
    /// milliseconds (Java's `delivery.timeout.ms`). Batches behind a failed one in its
    /// partition fail with it, so that the mirror keeps a prefix of the write log.
    #[serde(default = "default_mirror_delivery_timeout_ms")]
    pub mirror_delivery_timeout_ms: u64,
    /// `[clusters.NAME.tls]`: connect to this cluster's brokers over TLS. Plain TCP when
    /// absent; an empty table means TLS checked against the system's CA certificates.
    #[serde(default)]
    pub tls: Option<BackendTlsConfig>,
    /// `[clusters.NAME.sasl]`: the credentials kshift authenticates to this cluster with.
    #[serde(default)]
    pub sasl: Option<BackendSaslConfig>,
    /// The first of this cluster's 1,000,000 virtual node ids: clients know its broker `b`
    /// as node `node_id_base + b`. Defaults to a multiple of 1,000,000 derived from the
    /// cluster's name alone (see [`ClusterConfig::virtual_node_base`]), so every kshift of a
    /// fleet shows the same ids; set it only when two clusters' default blocks meet.
    #[serde(default)]
    pub node_id_base: Option<i32>,
}

/// Broker ids a cluster's block of virtual node ids holds: broker `b` is virtual node
/// `base + b mod VIRTUAL_NODE_BLOCK`.
pub const VIRTUAL_NODE_BLOCK: i32 = 1_000_000;

/// Largest `node_id_base`: the block above it still fits an `i32`.
pub const MAX_NODE_ID_BASE: i32 = i32::MAX - (VIRTUAL_NODE_BLOCK - 1);

impl ClusterConfig {
    /// Where cluster `name`'s virtual node ids start: `node_id_base` when set, else
    /// 1,000,000 × (1 + FNV-1a(name) mod 2,000) — stable for a name, whatever else the
    /// configuration holds.
    pub fn virtual_node_base(&self, name: &str) -> i32 {
        self.node_id_base.unwrap_or_else(|| {
            let hash = name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
                (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
            });
            let block = i32::try_from(hash % 2_000).unwrap_or(0) + 1;
            block * VIRTUAL_NODE_BLOCK
        })
    }

    /// The librdkafka properties (besides `bootstrap.servers`) that give the CLI tools
    /// (`verify`, `repair`) the same TLS and SASL as kshift's own connections to cluster
    /// `name`. librdkafka cannot check another name than the broker's host, so with
    /// `server_name` set it checks the certificate chain but not the name.
    pub fn client_properties(
        &self,
        name: &str,
    ) -> Result<Vec<(&'static str, String)>, ConfigError> {
        let mut properties = Vec::new();
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        properties.push(("security.protocol", protocol.to_string()));
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_file {
                properties.push(("ssl.ca.location", ca.clone()));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                properties.push(("ssl.certificate.location", cert.clone()));
                properties.push(("ssl.key.location", key.clone()));
            }
            if tls.server_name.is_some() {
                properties.push(("ssl.endpoint.identification.algorithm", "none".into()));
            }
        }
        if let Some(sasl) = &self.sasl {
            properties.push(("sasl.mechanism", sasl.mechanism.name().to_string()));
            properties.push(("sasl.username", sasl.username.clone()));
            properties.push((
                "sasl.password",
                sasl.resolve_password(name)?.expose().to_string(),
            ));
        }
        Ok(properties)
    }
}

/// `[clusters.NAME.tls]`: TLS toward one backend cluster.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM file of the CAs the brokers' certificates must chain to; the system's CA
    /// certificates when absent.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM file with kshift's client certificate, for clusters that require mTLS.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM file with the private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The name every broker certificate is checked against, instead of the host the
    /// broker is reached at (e.g. when brokers are reached by IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[clusters.NAME.sasl]`: how kshift authenticates to one backend cluster. The password
/// comes from exactly one of `password`, `password_env` and `password_file`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: Mechanism,
    pub username: String,
    /// The password itself (prefer `password_env` or `password_file`: then no secret sits
    /// in the config file).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password, read at start.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored), read at start.
    #[serde(default)]
    pub password_file: Option<String>,
}

impl BackendSaslConfig {
    /// The password, from wherever it is configured; errors name the field of `cluster`.
    pub fn resolve_password(&self, cluster: &str) -> Result<Secret, ConfigError> {
        let field = |name: &str, reason: String| {
            ConfigError::field(format!("clusters.{cluster}.sasl.{name}"), reason)
        };
        match (&self.password, &self.password_env, &self.password_file) {
            (Some(password), None, None) => Ok(password.clone()),
            (None, Some(variable), None) => std::env::var(variable)
                .map(Secret::new)
                .map_err(|e| field("password_env", format!("${variable}: {e}"))),
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Secret::new(text.trim_end_matches(['\r', '\n'])))
                .map_err(|e| field("password_file", format!("cannot read {path}: {e}"))),
            _ => Err(field(
                "password",
                "set exactly one of password, password_env and password_file".into(),
            )),
        }
    }
}

fn default_mirror_queue_bytes() -> usize {
    64 * 1024 * 1024
}

/// Kafka producers' default `linger.ms` since Kafka 4.0.
fn default_mirror_linger_ms() -> u64 {
    5
}

/// Largest `queued_max_request_bytes` (64 GiB).
pub const MAX_QUEUED_REQUEST_BYTES: usize = 64 << 30;

/// Longest duration any `_ms` field may hold (7 days): far beyond any sensible timeout, and
/// far enough below what an `Instant` can add that no deadline computed from one overflows.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// Longest `mirror_linger_ms`: lingering is for gathering batches, not for holding them.
pub const MAX_MIRROR_LINGER_MS: u64 = 10_000;

/// What a full mirror queue does with what does not fit (`mirror_overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorOverflow {
    /// Drop it (counted, logged, journalled): never delays the client.
    #[default]
    Drop,
    /// Hold the client's produce until there is room, up to its timeout.
    Block,
}

impl std::fmt::Display for MirrorOverflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MirrorOverflow::Drop => "drop",
            MirrorOverflow::Block => "block",
        })
    }
}

fn default_mirror_max_in_flight() -> usize {
    5
}

/// Most `mirror_max_in_flight`: what an idempotent Kafka broker keeps in order per partition.
pub const MAX_MIRROR_IN_FLIGHT: usize = 5;

/// 8 MiB: bytes in flight are what carries a mirror over a long round trip (5 requests per
/// broker per round trip), and a broker takes requests up to its `socket.request.max.bytes`
/// (100 MiB); each partition's batch in it stays under `mirror_batch_bytes`.
fn default_mirror_request_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_mirror_batch_bytes() -> usize {
    512 * 1024
}

/// Most `mirror_request_bytes` and `mirror_batch_bytes`: a broker's default
/// `socket.request.max.bytes`.
pub const MAX_MIRROR_REQUEST_BYTES: usize = 100 * 1024 * 1024;

fn default_mirror_delivery_timeout_ms() -> u64 {
    120_000
}

/// Longest `mirror_delivery_timeout_ms` (a day): long enough for any outage, short enough
/// that no deadline computed from it can overflow.
pub const MAX_MIRROR_DELIVERY_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Reads and parses a configuration file without validating it (the routing table is
    /// validated when it is applied, which names the failing rule).
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(toml::from_str(&text)?)
    }

    /// True when `[proxy]` or `[clusters]` differ from `other` (they need a restart).
    pub fn proxy_and_clusters_differ(&self, other: &Config) -> bool {
        let parts = |c: &Config| serde_json::to_value((&c.proxy, &c.clusters, &c.routing)).ok();
        parts(self) != parts(other)
    }

    /// Cluster names in a stable order; a cluster's position is its [`crate::routing::ClusterId`].
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let proxy = &self.proxy;
        proxy
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::field("proxy.listen", format!("{:?}: {e}", proxy.listen)))?;
        if let Some(advertised) = &proxy.advertised {
            parse_host_port(advertised).map_err(|e| ConfigError::field("proxy.advertised", e))?;
        }
        if let Some(bootstrap) = &proxy.bootstrap_listen {
            let address = bootstrap.parse::<SocketAddr>().map_err(|e| {
                ConfigError::field("proxy.bootstrap_listen", format!("{bootstrap:?}: {e}"))
            })?;
            if address.port() != 0 && Some(address) == proxy.listen.parse::<SocketAddr>().ok() {
                return Err(ConfigError::field(
                    "proxy.bootstrap_listen",
                    "must differ from listen (it exists to be another address)",
                ));
            }
        }
        if let Some(admin) = &proxy.admin_listen {
            let address = admin
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::field("proxy.admin_listen", format!("{admin:?}: {e}")))?;
            if !address.ip().is_loopback() && proxy.admin_token_file.is_none() {
                return Err(ConfigError::field(
                    "proxy.admin_token_file",
                    format!("admin_listen {admin:?} is reachable from other hosts: set a token file (or bind 127.0.0.1)"),
                ));
            }
        }
        if proxy.node_id < 0 {
            return Err(ConfigError::field("proxy.node_id", "must be 0 or more"));
        }
        if proxy.cluster_id.is_empty() {
            return Err(ConfigError::field("proxy.cluster_id", "must not be empty"));
        }
        // 12 bytes is the smallest request header; 1 GiB is beyond any broker's limit.
        if !(12..=1 << 30).contains(&proxy.max_frame_bytes) {
            return Err(ConfigError::field(
                "proxy.max_frame_bytes",
                "must be between 12 and 1073741824",
            ));
        }
        // Held as semaphore permits; 64 GiB is far beyond any host kshift runs on.
        if !(proxy.max_frame_bytes..=MAX_QUEUED_REQUEST_BYTES)
            .contains(&proxy.queued_max_request_bytes)
        {
            return Err(ConfigError::field(
                "proxy.queued_max_request_bytes",
                format!(
                    "must be between max_frame_bytes ({}) and {MAX_QUEUED_REQUEST_BYTES}",
                    proxy.max_frame_bytes
                ),
            ));
        }
        for (field, value) in [
            ("proxy.max_in_flight_requests", proxy.max_in_flight_requests),
            ("proxy.max_connections", proxy.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        if proxy.unrouted_check_ms != 0
            && !(100..=MAX_DURATION_MS).contains(&proxy.unrouted_check_ms)
        {
            return Err(ConfigError::field(
                "proxy.unrouted_check_ms",
                format!("must be 0 (off) or 100 to {MAX_DURATION_MS} (7 days)"),
            ));
        }
        for (field, value) in [
            ("proxy.connect_timeout_ms", proxy.connect_timeout_ms),
            ("proxy.request_timeout_ms", proxy.request_timeout_ms),
            ("proxy.metadata_max_age_ms", proxy.metadata_max_age_ms),
            ("proxy.drain_timeout_ms", proxy.drain_timeout_ms),
            ("proxy.idle_timeout_ms", proxy.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
            if value > MAX_DURATION_MS {
                return Err(ConfigError::field(
                    field,
                    format!("must be at most {MAX_DURATION_MS} (7 days)"),
                ));
            }
        }
        if self.clusters.is_empty() {
            return Err(ConfigError::field(
                "clusters",
                "at least one [clusters.NAME] section is required",
            ));
        }
        if let Some(tls) = &proxy.tls {
            if !(1..=MAX_DURATION_MS).contains(&tls.handshake_timeout_ms) {
                return Err(ConfigError::field(
                    "proxy.tls.handshake_timeout_ms",
                    format!("must be between 1 and {MAX_DURATION_MS}"),
                ));
            }
        }
        if let Some(sasl) = &proxy.sasl {
            if sasl.mechanisms.is_empty() {
                return Err(ConfigError::field(
                    "proxy.sasl.mechanisms",
                    "must name at least one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
                ));
            }
            if sasl.failed_authentication_delay_ms > 60_000 {
                return Err(ConfigError::field(
                    "proxy.sasl.failed_authentication_delay_ms",
                    "must be at most 60000",
                ));
            }
            if sasl.credentials_file.is_empty() {
                return Err(ConfigError::field(
                    "proxy.sasl.credentials_file",
                    "must not be empty",
                ));
            }
        }
        for (name, cluster) in &self.clusters {
            if let Some(tls) = &cluster.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return Err(ConfigError::field(
                        format!("clusters.{name}.tls.key_file"),
                        "cert_file and key_file go together",
                    ));
                }
            }
            if let Some(sasl) = &cluster.sasl {
                if sasl.username.is_empty() {
                    return Err(ConfigError::field(
                        format!("clusters.{name}.sasl.username"),
                        "must not be empty",
                    ));
                }
                let sources = [
                    sasl.password.is_some(),
                    sasl.password_env.is_some(),
                    sasl.password_file.is_some(),
                ];
                if sources.iter().filter(|set| **set).count() != 1 {
                    return Err(ConfigError::field(
                        format!("clusters.{name}.sasl.password"),
                        "set exactly one of password, password_env and password_file",
                    ));
                }
            }
            if cluster.bootstrap.is_empty() {
                return Err(ConfigError::field(
                    format!("clusters.{name}.bootstrap"),
                    "must list at least one host:port",
                ));
            }
            if cluster.mirror_queue_bytes == 0 {
                return Err(ConfigError::field(
                    format!("clusters.{name}.mirror_queue_bytes"),
                    "must be at least 1",
                ));
            }
            if cluster.mirror_linger_ms > MAX_MIRROR_LINGER_MS {
                return Err(ConfigError::field(
                    format!("clusters.{name}.mirror_linger_ms"),
                    format!("must be at most {MAX_MIRROR_LINGER_MS}"),
                ));
            }
            if !(1..=MAX_MIRROR_IN_FLIGHT).contains(&cluster.mirror_max_in_flight) {
                return Err(ConfigError::field(
                    format!("clusters.{name}.mirror_max_in_flight"),
                    format!("must be 1 to {MAX_MIRROR_IN_FLIGHT}"),
                ));
            }
            for (field, bytes) in [
                ("mirror_request_bytes", cluster.mirror_request_bytes),
                ("mirror_batch_bytes", cluster.mirror_batch_bytes),
            ] {
                if !(1024..=MAX_MIRROR_REQUEST_BYTES).contains(&bytes) {
                    return Err(ConfigError::field(
                        format!("clusters.{name}.{field}"),
                        format!("must be 1024 to {MAX_MIRROR_REQUEST_BYTES}"),
                    ));
                }
            }
            if !(1..=MAX_MIRROR_DELIVERY_TIMEOUT_MS).contains(&cluster.mirror_delivery_timeout_ms) {
                return Err(ConfigError::field(
                    format!("clusters.{name}.mirror_delivery_timeout_ms"),
                    format!("must be 1 to {MAX_MIRROR_DELIVERY_TIMEOUT_MS}"),
                ));
            }
            if let Some(base) = cluster.node_id_base {
                if !(0..=MAX_NODE_ID_BASE).contains(&base) {
                    return Err(ConfigError::field(
                        format!("clusters.{name}.node_id_base"),
                        format!("must be between 0 and {MAX_NODE_ID_BASE}"),
                    ));
                }
            }
            let base = cluster.virtual_node_base(name);
            let block = VIRTUAL_NODE_BLOCK;
            if let Some((other, _)) = self.clusters.iter().find(|(other, config)| {
                *other != name
                    && (i64::from(config.virtual_node_base(other)) - i64::from(base)).abs()
                        < i64::from(block)
            }) {
                return Err(ConfigError::field(
                    format!("clusters.{name}.node_id_base"),
                    format!("virtual node ids {base}.. overlap those of cluster {other:?}: set node_id_base on one of them, at least {block} apart"),
                ));
            }
            for (i, address) in cluster.bootstrap.iter().enumerate() {
                parse_host_port(address).map_err(|e| {
                    ConfigError::field(format!("clusters.{name}.bootstrap[{i}]"), e)
                })?;
            }
        }
        if let Some(url) = &self.routing.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::field(
                    "routing.redis",
                    format!("{url:?} is not a redis:// URL"),
                ));
            }
        }
        crate::routing::RoutingTable::build(&self.routing_spec(), &self.cluster_names(), 0)?;
        Ok(())
    }

    /// The routing part of the file, as the routing table is built from it.
    pub fn routing_spec(&self) -> RoutingSpec {
        RoutingSpec {
            routes: self.routes.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// Splits `host:port`, checking that the port is a number.
pub fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{address:?}: port {port:?} is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [proxy]
        listen = "127.0.0.1:9092"
        [clusters.old]
        bootstrap = ["127.0.0.1:9093"]
        [[routes]]
        topics = "*"
        write = "old"
        read = "old"
    "#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.proxy.max_in_flight_requests, 64);
        assert_eq!(config.proxy.cluster_id, "kshift");
        assert_eq!(config.cluster_names(), vec!["old".to_string()]);
    }

    #[test]
    fn bad_listen_names_the_field() {
        let text = MINIMAL.replace("127.0.0.1:9092", "nowhere");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("proxy.listen"), "{error}");
    }

    #[test]
    fn bad_bootstrap_names_the_field() {
        let text = MINIMAL.replace("127.0.0.1:9093", "broker-without-port");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("clusters.old.bootstrap[0]"), "{error}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = MINIMAL.replace("[proxy]", "[proxy]\nlisten_port = 3");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("listen_port"), "{error}");
    }

    #[test]
    fn mirror_linger_is_bounded_and_defaults_to_a_producers() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.clusters["old"].mirror_linger_ms, 5);
        let bootstrap = "bootstrap = [\"127.0.0.1:9093\"]";
        let text = MINIMAL.replace(bootstrap, &format!("{bootstrap}\nmirror_linger_ms = 10001"));
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("clusters.old.mirror_linger_ms"), "{error}");
    }

    #[test]
    fn mirror_producer_fields_have_defaults_and_bounds_naming_the_field() {
        let config = Config::parse(MINIMAL).unwrap();
        let old = &config.clusters["old"];
        assert_eq!(old.mirror_overflow, MirrorOverflow::Drop);
        assert_eq!(old.mirror_max_in_flight, 5);
        assert_eq!(old.mirror_request_bytes, 8 * 1024 * 1024);
        assert_eq!(old.mirror_batch_bytes, 512 * 1024);
        assert_eq!(old.mirror_delivery_timeout_ms, 120_000);
        let bootstrap = "bootstrap = [\"127.0.0.1:9093\"]";
        let with = |line: &str| MINIMAL.replace(bootstrap, &format!("{bootstrap}\n{line}"));
        for good in [
            "mirror_overflow = \"block\"",
            "mirror_max_in_flight = 1",
            "mirror_max_in_flight = 5",
            "mirror_request_bytes = 1024",
            "mirror_batch_bytes = 104857600",
            "mirror_delivery_timeout_ms = 1",
            "mirror_delivery_timeout_ms = 86400000",
        ] {
            Config::parse(&with(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, field) in [
            ("mirror_max_in_flight = 0", "mirror_max_in_flight"),
            ("mirror_max_in_flight = 6", "mirror_max_in_flight"),
            ("mirror_request_bytes = 1023", "mirror_request_bytes"),
            ("mirror_batch_bytes = 104857601", "mirror_batch_bytes"),
            (
                "mirror_delivery_timeout_ms = 0",
                "mirror_delivery_timeout_ms",
            ),
            (
                "mirror_delivery_timeout_ms = 86400001",
                "mirror_delivery_timeout_ms",
            ),
            ("mirror_overflow = \"wait\"", "mirror_overflow"),
        ] {
            let error = Config::parse(&with(bad)).unwrap_err().to_string();
            assert!(error.contains(field), "{bad}: {error}");
        }
    }

    #[test]
    fn virtual_node_ids_come_from_the_cluster_name_and_never_overlap() {
        let config = Config::parse(MINIMAL).unwrap();
        let base = config.clusters["old"].virtual_node_base("old");
        // Derived from the name alone: the same for any kshift of a fleet.
        assert_eq!(
            base,
            Config::parse(MINIMAL).unwrap().clusters["old"].virtual_node_base("old")
        );
        assert_eq!(base % VIRTUAL_NODE_BLOCK, 0);
        assert!(base > 0 && base <= MAX_NODE_ID_BASE, "{base}");
        let bootstrap = "bootstrap = [\"127.0.0.1:9093\"]";
        let with_base = |value: i64| {
            MINIMAL.replace(bootstrap, &format!("{bootstrap}\nnode_id_base = {value}"))
        };
        let highest = with_base(i64::from(MAX_NODE_ID_BASE));
        assert_eq!(
            Config::parse(&highest).unwrap().clusters["old"].virtual_node_base("old"),
            MAX_NODE_ID_BASE
        );
        assert!(Config::parse(&with_base(0)).is_ok());
        for beyond in [-1, i64::from(MAX_NODE_ID_BASE) + 1] {
            let error = Config::parse(&with_base(beyond)).unwrap_err().to_string();
            assert!(error.contains("clusters.old.node_id_base"), "{error}");
        }
        // A second cluster whose block meets old's is refused, naming the field.
        let two = |new_base: i32| {
            format!(
                "{}\n[clusters.new]\nbootstrap = [\"127.0.0.1:9094\"]\nnode_id_base = {new_base}\n",
                with_base(0)
            )
        };
        let error = Config::parse(&two(999_999)).unwrap_err().to_string();
        assert!(error.contains("node_id_base"), "{error}");
        assert!(Config::parse(&two(1_000_000)).is_ok());
    }

    #[test]
    fn durations_are_bounded_so_no_deadline_overflows() {
        let fields = [
            "connect_timeout_ms",
            "request_timeout_ms",
            "metadata_max_age_ms",
            "drain_timeout_ms",
            "idle_timeout_ms",
        ];
        for field in fields {
            let set =
                |value: u64| MINIMAL.replace("[proxy]", &format!("[proxy]\n{field} = {value}"));
            assert!(Config::parse(&set(MAX_DURATION_MS)).is_ok(), "{field}");
            for beyond in [MAX_DURATION_MS + 1, i64::MAX as u64] {
                let error = Config::parse(&set(beyond)).unwrap_err().to_string();
                assert!(error.contains(&format!("proxy.{field}")), "{error}");
            }
        }
        let handshake = |value: u64| {
            SECURED.replace(
                "key_file = \"/etc/kshift/kshift.key\"",
                &format!("key_file = \"/etc/kshift/kshift.key\"\nhandshake_timeout_ms = {value}"),
            )
        };
        assert!(Config::parse(&handshake(MAX_DURATION_MS)).is_ok());
        let error = Config::parse(&handshake(MAX_DURATION_MS + 1))
            .unwrap_err()
            .to_string();
        assert!(error.contains("proxy.tls.handshake_timeout_ms"), "{error}");
        // The largest accepted value still makes a deadline.
        let now = std::time::Instant::now();
        assert!(now
            .checked_add(std::time::Duration::from_millis(MAX_DURATION_MS))
            .is_some());
    }

    #[test]
    fn bootstrap_listen_is_another_socket_address() {
        let set = |value: &str| {
            MINIMAL.replace(
                "[proxy]",
                &format!("[proxy]\nbootstrap_listen = \"{value}\""),
            )
        };
        assert!(Config::parse(&set("127.0.0.1:9091")).is_ok());
        assert!(Config::parse(MINIMAL)
            .unwrap()
            .proxy
            .bootstrap_listen
            .is_none());
        for bad in ["127.0.0.1:9092", "kshift:9091", "nowhere"] {
            let error = Config::parse(&set(bad)).unwrap_err().to_string();
            assert!(error.contains("proxy.bootstrap_listen"), "{bad}: {error}");
        }
    }

    #[test]
    fn zero_in_flight_window_is_rejected() {
        let text = MINIMAL.replace("[proxy]", "[proxy]\nmax_in_flight_requests = 0");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("proxy.max_in_flight_requests"), "{error}");
    }

    #[test]
    fn admin_api_beyond_loopback_needs_a_token() {
        let open = MINIMAL.replace("[proxy]", "[proxy]\nadmin_listen = \"0.0.0.0:9644\"");
        let error = Config::parse(&open).unwrap_err().to_string();
        assert!(error.contains("proxy.admin_token_file"), "{error}");
        let with_token = open.replace(
            "[proxy]",
            "[proxy]\nadmin_token_file = \"/run/secrets/token\"",
        );
        assert!(Config::parse(&with_token).is_ok());
        let loopback = MINIMAL.replace("[proxy]", "[proxy]\nadmin_listen = \"127.0.0.1:9644\"");
        assert!(Config::parse(&loopback).is_ok());
    }

    #[test]
    fn the_request_memory_budget_holds_at_least_one_frame() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.proxy.queued_max_request_bytes, 256 << 20);
        let set = |frame: usize, budget: usize| {
            MINIMAL.replace(
                "[proxy]",
                &format!("[proxy]\nmax_frame_bytes = {frame}\nqueued_max_request_bytes = {budget}"),
            )
        };
        assert!(Config::parse(&set(1000, 1000)).is_ok());
        assert!(Config::parse(&set(1000, MAX_QUEUED_REQUEST_BYTES)).is_ok());
        for (frame, budget) in [(1000, 999), (1000, MAX_QUEUED_REQUEST_BYTES + 1)] {
            let error = Config::parse(&set(frame, budget)).unwrap_err().to_string();
            assert!(error.contains("proxy.queued_max_request_bytes"), "{error}");
        }
    }

    #[test]
    fn frame_limit_bounds() {
        let small = MINIMAL.replace("[proxy]", "[proxy]\nmax_frame_bytes = 11");
        assert!(Config::parse(&small).is_err());
        let smallest = MINIMAL.replace("[proxy]", "[proxy]\nmax_frame_bytes = 12");
        assert!(Config::parse(&smallest).is_ok());
    }

    const SECURED: &str = r#"
        [proxy]
        listen = "127.0.0.1:9092"
        [proxy.tls]
        cert_file = "/etc/kshift/kshift.pem"
        key_file = "/etc/kshift/kshift.key"
        [proxy.sasl]
        credentials_file = "/etc/kshift/users.toml"
        [clusters.old]
        bootstrap = ["127.0.0.1:9093"]
        [clusters.old.tls]
        [clusters.old.sasl]
        mechanism = "SCRAM-SHA-256"
        username = "kshift"
        password = "inline-secret-value"
        [[routes]]
        topics = "*"
        write = "old"
    "#;

    #[test]
    fn security_sections_parse_with_defaults() {
        let config = Config::parse(SECURED).unwrap();
        let tls = config.proxy.tls.as_ref().unwrap();
        assert_eq!(tls.handshake_timeout_ms, 10_000);
        assert!(tls.client_ca_file.is_none());
        assert_eq!(config.proxy.sasl.as_ref().unwrap().mechanisms.len(), 3);
        let sasl = config.clusters["old"].sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, Mechanism::ScramSha256);
        assert_eq!(
            sasl.resolve_password("old").unwrap().expose(),
            "inline-secret-value"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_or_serialized_config() {
        let config = Config::parse(SECURED).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("inline-secret-value"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let json = serde_json::to_string(&config.clusters).unwrap();
        assert!(!json.contains("inline-secret-value"), "{json}");
        // A changed password still counts as a changed config (restart needed).
        let changed = Config::parse(&SECURED.replace("inline-secret-value", "another")).unwrap();
        assert!(config.proxy_and_clusters_differ(&changed));
        assert!(!config.proxy_and_clusters_differ(&Config::parse(SECURED).unwrap()));
    }

    #[test]
    fn security_errors_name_the_field() {
        let cases = [
            (
                SECURED.replace("password = \"inline-secret-value\"", ""),
                "clusters.old.sasl.password",
            ),
            (
                SECURED.replace(
                    "password = \"inline-secret-value\"",
                    "password = \"x\"\npassword_env = \"Y\"",
                ),
                "clusters.old.sasl.password",
            ),
            (
                SECURED.replace("username = \"kshift\"", "username = \"\""),
                "clusters.old.sasl.username",
            ),
            (SECURED.replace("SCRAM-SHA-256", "GSSAPI"), "mechanism"),
            (
                SECURED.replace(
                    "[clusters.old.tls]",
                    "[clusters.old.tls]\ncert_file = \"/x.pem\"",
                ),
                "clusters.old.tls.key_file",
            ),
            (
                SECURED.replace(
                    "credentials_file = \"/etc/kshift/users.toml\"",
                    "credentials_file = \"/etc/kshift/users.toml\"\nmechanisms = []",
                ),
                "proxy.sasl.mechanisms",
            ),
            (
                SECURED.replace(
                    "key_file = \"/etc/kshift/kshift.key\"",
                    "key_file = \"/etc/kshift/kshift.key\"\nhandshake_timeout_ms = 0",
                ),
                "proxy.tls.handshake_timeout_ms",
            ),
        ];
        for (text, field) in cases {
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
            assert!(!error.contains("inline-secret-value"), "{error}");
        }
    }

    #[test]
    fn passwords_come_from_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let sasl = |source: String| {
            BackendSaslConfig {
                mechanism: Mechanism::Plain,
                username: "u".into(),
                password: None,
                password_env: None,
                password_file: None,
            }
            .with_source(source)
        };
        let from_file = sasl(format!("file:{}", file.display()));
        assert_eq!(
            from_file.resolve_password("old").unwrap().expose(),
            "from-file"
        );
        let variable = format!("KSHIFT_CONFIG_TEST_{}", std::process::id());
        std::env::set_var(&variable, "from-env");
        let from_env = sasl(format!("env:{variable}"));
        assert_eq!(
            from_env.resolve_password("old").unwrap().expose(),
            "from-env"
        );
        let missing = sasl("env:KSHIFT_CONFIG_TEST_NOT_SET".into());
        let error = missing.resolve_password("old").unwrap_err().to_string();
        assert!(error.contains("clusters.old.sasl.password_env"), "{error}");
        let missing = sasl("file:/nonexistent/kshift".into());
        let error = missing.resolve_password("old").unwrap_err().to_string();
        assert!(error.contains("clusters.old.sasl.password_file"), "{error}");
    }

    impl BackendSaslConfig {
        fn with_source(mut self, source: String) -> Self {
            match source.split_once(':') {
                Some(("file", path)) => self.password_file = Some(path.to_string()),
                Some(("env", name)) => self.password_env = Some(name.to_string()),
                _ => unreachable!(),
            }
            self
        }
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            parse_host_port("[::1]:9092").unwrap(),
            ("::1".to_string(), 9092)
        );
        assert!(parse_host_port("host:99999").is_err());
        assert!(parse_host_port(":9092").is_err());
    }
}
