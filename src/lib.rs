//! kshift: a Kafka-protocol proxy that presents one virtual cluster to unmodified clients
//! and splits their traffic across backend clusters per a hot-swappable routing table.
//!
//! The data's path, module by module:
//! - [`listener`] accepts client sockets (connection limit, shutdown) and hands each to
//! - [`client_connection`], one task pair per socket: reads frames ([`codec`]), keeps a
//!   bounded window of requests in flight and writes responses in request order;
//! - [`dispatch`] sends each request by api key to its handler:
//!   - [`virtual_cluster`] answers ApiVersions, Metadata, FindCoordinator and
//!     DescribeCluster itself: one virtual node per backend broker, all at kshift's address;
//!   - [`produce`] routes records to the route's write cluster and queues them for its
//!     mirrors: per mirror cluster, a writer that takes the queue in order (waiting for write
//!     offsets, backfilling, planning) and a pipelined idempotent producer with a connection
//!     per leader broker and several requests in flight on each;
//!   - [`fetch`] serves Fetch and ListOffsets from the route's read cluster;
//!   - [`groups`] forwards group, offset and transaction APIs to the right coordinator;
//!   - [`admin_apis`] splits admin APIs naming topics or groups per cluster, leader or
//!     coordinator, and merges the answers;
//!   - [`split`] groups a request's partitions by the broker that must serve them;
//! - [`cluster`] is the client of one backend cluster (metadata and leader cache,
//!   coordinator cache) plus the upstream broker connections each client connection owns;
//! - [`offset_sync`] copies consumer groups' committed offsets, translated, to the other
//!   clusters holding their topics (`[[groups]] offset_sync_ms`);
//! - [`unrouted`] finds records written to a mirrored partition around kshift (they would
//!   be lost at cutover);
//! - [`admin`] serves the admin API and the status page, the migration's console, whose
//!   live figures [`console`] samples;
//! - [`routing`] holds the routing table, one immutable snapshot behind one `ArcSwap`;
//!   every change to it goes through [`cutover`], which moves consumer groups (and their
//!   committed positions, translated with the mirror's offset map) when reads switch;
//! - [`config`] parses and validates the TOML configuration;
//! - [`security`] holds TLS and SASL for both sides: the client listener's (kshift as the
//!   server) and each backend cluster's (kshift as the client).

pub mod admin;
pub mod admin_apis;
pub mod client_connection;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod console;
pub mod cutover;
pub mod dispatch;
pub mod fetch;
pub mod groups;
pub mod listener;
pub mod metrics;
pub mod offset_sync;
pub mod produce;
pub mod routing;
pub mod security;
pub mod split;
pub mod unrouted;
pub mod virtual_cluster;

use std::net::SocketAddr;
use std::sync::Arc;

use cluster::{Cluster, ConnectionSettings};
use config::{parse_host_port, Config, ProxyConfig};
use routing::{Routing, RoutingTable};

/// Routing tables kept for `POST /routes/rollback`.
const ROUTING_HISTORY: usize = 10;

/// Index of a backend cluster in [`ProxyState::clusters`] (clusters sorted by name).
pub type ClusterId = usize;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot watch config file {path}: {source}")]
    Watch { path: String, source: notify::Error },
    #[error("cannot open {path}: {source}")]
    OffsetMap {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// The state every connection shares.
#[derive(Debug)]
pub struct ProxyState {
    pub config: ProxyConfig,
    /// Backend clusters, indexed by [`ClusterId`].
    pub clusters: Vec<Arc<Cluster>>,
    pub routing: Routing,
    pub metrics: Arc<metrics::Metrics>,
    /// The fleet-wide routing source, when `[routing] redis` is set: updates go through it.
    pub redis: Option<Arc<routing::redis::RedisSource>>,
    /// Mirror queues and writers (one per cluster), the offset map, held transactions.
    pub mirrors: Arc<produce::mirror::Mirrors>,
    /// kshift's advertised address (every virtual node is there), and the node id listed
    /// while no backend broker is known.
    pub node: VirtualNode,
    /// Consumer groups being moved by a routing change.
    pub cutover: cutover::Cutover,
    /// What the continuous consumer-offset sync (`[[groups]] offset_sync_ms`) has done.
    pub offset_sync: offset_sync::Stats,
    /// What kshift wrote to mirrored partitions, and records found written around it.
    pub unrouted: unrouted::Unrouted,
    /// The status page's migration console: rates, lag history, group positions, verify.
    pub console: console::Console,
    /// TLS on the client listener, when `[proxy.tls]` is set.
    pub tls: Option<security::tls::ListenerTls>,
    /// SASL termination for clients, when `[proxy.sasl]` is set.
    pub sasl: Option<Arc<security::sasl_server::SaslListener>>,
    /// Permits for client connections (`max_connections`), one held by each connection
    /// task, shared by the `listen` and `bootstrap_listen` accept loops.
    pub connection_permits: Arc<tokio::sync::Semaphore>,
    /// The request memory budget (`queued_max_request_bytes`), one permit per byte: a client
    /// connection takes a frame's length in permits before reading its body and gives them
    /// back once the request is answered, so at the budget no socket is read.
    pub request_budget: Arc<tokio::sync::Semaphore>,
}

/// Locks `mutex`. A poisoned one (a task panicked while holding it) is used as it is, rather
/// than failing every later caller: one task's bug must not stop the proxy.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ProxyState {
    /// The id of the cluster configured as `name`.
    pub fn cluster_id(&self, name: &str) -> Option<ClusterId> {
        self.clusters.iter().position(|c| &*c.name == name)
    }
}

/// kshift as a broker: the address Metadata and FindCoordinator give every virtual node.
#[derive(Debug, Clone)]
pub struct VirtualNode {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// A started proxy.
pub struct Proxy;

/// A running proxy; dropping it does not stop it, [`RunningProxy::shutdown`] does.
pub struct RunningProxy {
    local_addr: SocketAddr,
    /// The `bootstrap_listen` listener's address, when set.
    bootstrap_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    state: Arc<ProxyState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The accept loop, and whether it was awaited to its end (a finished JoinHandle
    /// must not be polled again).
    listener: tokio::task::JoinHandle<()>,
    listener_done: bool,
}

impl Proxy {
    /// Binds the listener and starts serving. Backends need not be up yet: kshift connects
    /// to them when the first request needs them.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        config.validate()?;
        let tcp = tokio::net::TcpListener::bind(&config.proxy.listen)
            .await
            .map_err(|source| StartError::Bind {
                address: config.proxy.listen.clone(),
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| StartError::Bind {
            address: config.proxy.listen.clone(),
            source,
        })?;
        let bootstrap_tcp = match &config.proxy.bootstrap_listen {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(
                |source| StartError::Bind {
                    address: address.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let bootstrap_addr = bootstrap_tcp.as_ref().and_then(|l| l.local_addr().ok());
        let node = match &config.proxy.advertised {
            Some(advertised) => {
                let (host, port) =
                    parse_host_port(advertised).map_err(|reason| config::ConfigError::Field {
                        field: "proxy.advertised".into(),
                        reason,
                    })?;
                VirtualNode {
                    node_id: config.proxy.node_id,
                    host,
                    port: i32::from(port),
                }
            }
            None => VirtualNode {
                node_id: config.proxy.node_id,
                host: local_addr.ip().to_string(),
                port: i32::from(local_addr.port()),
            },
        };
        let settings = ConnectionSettings::from_config(&config.proxy);
        let metrics = Arc::new(metrics::Metrics::new());
        let names = config.cluster_names();
        let tls = config
            .proxy
            .tls
            .as_ref()
            .map(security::tls::ListenerTls::from_config)
            .transpose()?;
        let sasl = match &config.proxy.sasl {
            Some(sasl) => Some(Arc::new(security::sasl_server::SaslListener {
                store: security::credentials::CredentialStore::open(std::path::Path::new(
                    &sasl.credentials_file,
                ))
                .map_err(|reason| config::ConfigError::Field {
                    field: "proxy.sasl.credentials_file".into(),
                    reason,
                })?,
                mechanisms: sasl.mechanisms.clone(),
                failed_delay: std::time::Duration::from_millis(sasl.failed_authentication_delay_ms),
            })),
            None => None,
        };
        let mut clusters: Vec<Arc<Cluster>> = Vec::with_capacity(names.len());
        for (id, name) in names.iter().enumerate() {
            let cluster = &config.clusters[name];
            clusters.push(Arc::new(Cluster::new(
                id,
                name,
                cluster.bootstrap.clone(),
                settings,
                Arc::new(security::BackendSecurity::from_config(name, cluster)?),
                metrics.clone(),
                cluster.virtual_node_base(name),
            )));
        }
        let table = RoutingTable::build(&config.routing_spec(), &names, 1)
            .map_err(config::ConfigError::from)?;
        let writer_settings: Vec<produce::mirror::WriterSettings> = names
            .iter()
            .map(|name| produce::mirror::WriterSettings::from_config(&config.clusters[name]))
            .collect();
        let offsets = match &config.proxy.offset_map_file {
            Some(path) => produce::offset_map::OffsetMap::open(std::path::Path::new(path), &names)
                .map_err(|source| StartError::OffsetMap {
                    path: path.clone(),
                    source,
                })?,
            None => produce::offset_map::OffsetMap::default(),
        };
        // With a fleet, the offset map is shared through Redis as well.
        let offsets = match &config.routing.redis {
            Some(url) => offsets.with_fleet(produce::offset_map::fleet::FleetOffsets::start(
                redis::Client::open(url.as_str()).map_err(|e| config::ConfigError::Field {
                    field: "routing.redis".into(),
                    reason: e.to_string(),
                })?,
                &config.routing.redis_key,
                &names,
            )),
            None => offsets,
        };
        let failures = match &config.proxy.mirror_failures_file {
            Some(path) => produce::failures::FailureJournal::open(std::path::Path::new(path))
                .map_err(|source| StartError::OffsetMap {
                    path: path.clone(),
                    source,
                })?,
            None => produce::failures::FailureJournal::default(),
        };
        let mirrors = produce::mirror::Mirrors::start(
            &clusters,
            &writer_settings,
            Arc::new(offsets),
            Arc::new(failures),
        );
        let redis = match &config.routing.redis {
            Some(url) => Some(Arc::new(
                routing::redis::RedisSource::new(url, &config.routing.redis_key).map_err(|e| {
                    config::ConfigError::Field {
                        field: "routing.redis".into(),
                        reason: e.to_string(),
                    }
                })?,
            )),
            None => None,
        };
        let state = Arc::new(ProxyState {
            config: config.proxy.clone(),
            metrics,
            redis: redis.clone(),
            mirrors,
            clusters,
            routing: Routing::new(table, names.clone(), ROUTING_HISTORY),
            node,
            cutover: cutover::Cutover::default(),
            offset_sync: offset_sync::Stats::default(),
            unrouted: unrouted::Unrouted::default(),
            console: console::Console::new(&config.routing_spec()),
            tls,
            sasl,
            connection_permits: Arc::new(tokio::sync::Semaphore::new(config.proxy.max_connections)),
            request_budget: Arc::new(tokio::sync::Semaphore::new(
                config.proxy.queued_max_request_bytes,
            )),
        });
        for cluster in &state.clusters {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                if let Err(error) = cluster.api_versions().await {
                    tracing::warn!(cluster = %cluster.name, %error, "backend not reachable at start; will retry on demand");
                }
            });
        }
        if let Some(redis) = &redis {
            redis.spawn_sync(state.clone());
        }
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(cluster::keep_timer_armed(shutdown_rx.clone()));
        tokio::spawn(offset_sync::run(state.clone(), shutdown_rx.clone()));
        if config.proxy.unrouted_check_ms > 0 {
            tokio::spawn(unrouted::run(
                state.clone(),
                std::time::Duration::from_millis(config.proxy.unrouted_check_ms),
                shutdown_rx.clone(),
            ));
        }
        let admin_addr = match &config.proxy.admin_listen {
            Some(address) => {
                let admin = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind {
                        address: address.clone(),
                        source,
                    })?;
                let admin_addr = admin.local_addr().ok();
                let token = match &config.proxy.admin_token_file {
                    Some(path) => Some(admin::read_token(path).map_err(|reason| {
                        config::ConfigError::Field {
                            field: "proxy.admin_token_file".into(),
                            reason,
                        }
                    })?),
                    None => None,
                };
                tokio::spawn(admin::run(admin, state.clone(), token, shutdown_rx.clone()));
                tokio::spawn(console::run(state.clone(), shutdown_rx.clone()));
                tracing::info!(admin = ?admin_addr, "admin API listening");
                admin_addr
            }
            None => None,
        };
        let bootstrap_loop =
            bootstrap_tcp.map(|tcp| listener::run(tcp, state.clone(), shutdown_rx.clone()));
        let main_loop = listener::run(tcp, state.clone(), shutdown_rx);
        let listener = tokio::spawn(async move {
            match bootstrap_loop {
                Some(bootstrap_loop) => {
                    tokio::join!(main_loop, bootstrap_loop);
                }
                None => main_loop.await,
            }
        });
        tracing::info!(listen = %local_addr, advertised = %format!("{}:{}", state.node.host, state.node.port), "kshift listening");
        Ok(RunningProxy {
            local_addr,
            bootstrap_addr,
            admin_addr,
            state,
            shutdown,
            listener,
            listener_done: false,
        })
    }
}

impl RunningProxy {
    /// The address the Kafka listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the `bootstrap_listen` listener, when set.
    pub fn bootstrap_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_addr
    }

    /// The address of the admin API, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-applies `[[routes]]`/`[[groups]]` from `path` whenever it changes and on SIGHUP.
    /// `running` is the configuration kshift started with.
    pub fn watch_config_file(
        &self,
        path: std::path::PathBuf,
        running: Config,
    ) -> Result<(), StartError> {
        routing::file::spawn_watch(self.state.clone(), path.clone(), running).map_err(|source| {
            StartError::Watch {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// The state shared by all connections (routing table, clusters).
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Stops accepting, closes client connections and waits for the listener to end.
    /// Graceful stop: stop accepting, let every connection answer the requests it has read,
    /// then wait for the mirror queues to empty — all within `drain_timeout_ms`.
    pub async fn shutdown(self) {
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(self.state.config.drain_timeout_ms);
        let _ = self.shutdown.send(true);
        if !self.listener_done {
            let _ = self.listener.await;
        }
        let remaining = self.state.mirrors.flush(deadline).await;
        if remaining > 0 {
            tracing::warn!(records = remaining, "drain deadline reached with records not yet mirrored; they exist only on the write cluster");
        }
        tracing::info!("kshift stopped");
    }

    /// Waits until the proxy stops (it runs until [`RunningProxy::shutdown`]).
    pub async fn wait(&mut self) {
        if !self.listener_done {
            let _ = (&mut self.listener).await;
            self.listener_done = true;
        }
    }
}
