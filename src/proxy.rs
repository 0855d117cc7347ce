//! Starting and stopping the proxy: builds the shared state from a validated config, binds
//! the listeners and starts every long-lived task (accept loops, the admin API, the
//! console's sampler, the offset sync, the unrouted check, the fleet's Redis follower).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::{self, Cluster, ConnectionSettings};
use crate::config::{self, parse_host_port, Config};
use crate::control::{admin, console, file, offset_sync, redis, unrouted, Control};
use crate::listener;
use crate::metrics;
use crate::mirror;
use crate::mirror::written::{RouteWrites, WrittenRanges};
use crate::routing::moves::GroupMoves;
use crate::routing::{Routing, RoutingTable};
use crate::security::{
    self, credentials::CredentialStore, sasl_server::SaslListener, tls::ListenerTls,
};
use crate::state::{ProxyState, VirtualNode};

/// Routing tables kept for `POST /routes/rollback`.
const ROUTING_HISTORY: usize = 10;

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

/// A started proxy.
pub struct Proxy;

/// A running proxy; dropping it does not stop it, [`RunningProxy::shutdown`] does.
pub struct RunningProxy {
    local_addr: SocketAddr,
    /// The `bootstrap_listen` listener's address, when set.
    bootstrap_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    state: Arc<ProxyState>,
    control: Arc<Control>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The accept loop, and whether it was awaited to its end (a finished JoinHandle
    /// must not be polled again).
    listener: tokio::task::JoinHandle<()>,
    listener_done: bool,
    /// Tasks that end once `shutdown` is sent (admin API, console, offset sync, unrouted
    /// check, the timer keeper): awaited at shutdown within the drain deadline.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tasks that run until aborted (the fleet's Redis follower): aborted at shutdown.
    followers: Vec<tokio::task::JoinHandle<()>>,
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
            .map(ListenerTls::from_config)
            .transpose()?;
        let sasl = match &config.proxy.sasl {
            Some(sasl) => Some(Arc::new(SaslListener {
                store: CredentialStore::open(std::path::Path::new(&sasl.credentials_file))
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
        let writer_settings: Vec<mirror::WriterSettings> = names
            .iter()
            .map(|name| mirror::WriterSettings::from_config(&config.clusters[name]))
            .collect();
        let offsets = match &config.proxy.offset_map_file {
            Some(path) => mirror::offset_map::OffsetMap::open(std::path::Path::new(path), &names)
                .map_err(|source| StartError::OffsetMap {
                path: path.clone(),
                source,
            })?,
            None => mirror::offset_map::OffsetMap::default(),
        };
        // With a fleet, the offset map is shared through Redis as well.
        let offsets = match &config.routing.redis {
            Some(url) => offsets.with_fleet(mirror::offset_map::fleet::FleetOffsets::start(
                ::redis::Client::open(url.as_str()).map_err(|e| config::ConfigError::Field {
                    field: "routing.redis".into(),
                    reason: e.to_string(),
                })?,
                &config.routing.redis_key,
                &names,
            )),
            None => offsets,
        };
        let failures = match &config.proxy.mirror_failures_file {
            Some(path) => mirror::failures::FailureJournal::open(std::path::Path::new(path))
                .map_err(|source| StartError::OffsetMap {
                    path: path.clone(),
                    source,
                })?,
            None => mirror::failures::FailureJournal::default(),
        };
        let mirrors = mirror::Mirrors::start(
            &clusters,
            &writer_settings,
            Arc::new(offsets),
            Arc::new(failures),
        );
        let redis = match &config.routing.redis {
            Some(url) => Some(Arc::new(
                redis::RedisSource::new(url, &config.routing.redis_key).map_err(|e| {
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
            mirrors,
            clusters,
            routing: Routing::new(table, names.clone(), ROUTING_HISTORY),
            node,
            group_moves: GroupMoves::default(),
            route_writes: RouteWrites::default(),
            written_ranges: WrittenRanges::default(),
            tls,
            sasl,
            connection_permits: Arc::new(tokio::sync::Semaphore::new(config.proxy.max_connections)),
            request_budget: Arc::new(tokio::sync::Semaphore::new(
                config.proxy.queued_max_request_bytes,
            )),
        });
        let control = Arc::new(Control {
            state: state.clone(),
            redis: redis.clone(),
            offset_sync: offset_sync::Stats::default(),
            unrouted: unrouted::Unrouted::default(),
            console: console::Console::new(&config.routing_spec()),
        });
        for cluster in &state.clusters {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                if let Err(error) = cluster.api_versions().await {
                    tracing::warn!(cluster = %cluster.name, %error, "backend not reachable at start; will retry on demand");
                }
            });
        }
        // Every long-lived task has a handle here: `tasks` end when `shutdown` turns true and
        // are awaited then; `followers` run until they are aborted at shutdown.
        let mut tasks = Vec::new();
        let mut followers = Vec::new();
        if let Some(redis) = &redis {
            followers.push(tokio::spawn(redis.clone().follow_forever(control.clone())));
        }
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        tasks.push(tokio::spawn(cluster::keep_timer_armed(shutdown_rx.clone())));
        tasks.push(tokio::spawn(offset_sync::run(
            control.clone(),
            shutdown_rx.clone(),
        )));
        if config.proxy.unrouted_check_ms > 0 {
            tasks.push(tokio::spawn(unrouted::run(
                control.clone(),
                std::time::Duration::from_millis(config.proxy.unrouted_check_ms),
                shutdown_rx.clone(),
            )));
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
                tasks.push(tokio::spawn(admin::run(
                    admin,
                    control.clone(),
                    token,
                    shutdown_rx.clone(),
                )));
                tasks.push(tokio::spawn(console::run(
                    control.clone(),
                    shutdown_rx.clone(),
                )));
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
            control,
            shutdown,
            listener,
            listener_done: false,
            tasks,
            followers,
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
        file::spawn_watch(self.control.clone(), path.clone(), running).map_err(|source| {
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

    /// The control plane (routing source, console, offset sync, unrouted check).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
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
        for follower in &self.followers {
            follower.abort();
        }
        let remaining = self.state.mirrors.flush(deadline).await;
        if remaining > 0 {
            tracing::warn!(records = remaining, "drain deadline reached with records not yet mirrored; they exist only on the write cluster");
        }
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline.into(), task)
                .await
                .is_err()
            {
                tracing::warn!("a task did not stop by the drain deadline; aborted");
                abort.abort();
            }
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
