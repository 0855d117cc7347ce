//! The `kshift` binary's subcommands, one module each: `serve` runs the proxy, `check`
//! validates a configuration; the others are operator tools, clients of a running kshift
//! (through [`admin_client`]) or of its clusters (librdkafka, from [`client_config`]), and
//! `demo`, a live migration on one machine. This file holds what they share: logging, the
//! tokio runtimes they run on, the flags naming a configuration file, the cluster clients'
//! settings and topic creation.

pub mod admin_client;
pub mod backfill;
pub mod bench;
pub mod check;
pub mod cutover;
pub mod demo;
pub mod health;
pub mod prepare;
pub mod progress;
pub mod repair;
pub mod routes;
pub mod serve;
pub mod users;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;

use kshift::config::Config;

/// A librdkafka config reaching cluster `cluster`: its `bootstrap.servers` and the TLS and
/// SASL settings kshift's own connections use. The one place the CLI tools (`verify`,
/// `repair`, `prepare`) build their clients from.
pub fn client_config(config: &Config, cluster: &str) -> anyhow::Result<ClientConfig> {
    let cluster_config = config.clusters.get(cluster).ok_or_else(|| {
        anyhow!(
            "cluster {cluster:?} is not configured (configured: {})",
            config.cluster_names().join(", ")
        )
    })?;
    let mut settings = ClientConfig::new();
    for (key, value) in cluster_config.client_properties(cluster)? {
        settings.set(key, value);
    }
    settings.set("bootstrap.servers", cluster_config.bootstrap.join(","));
    Ok(settings)
}

/// Creates `topic` with `partitions` partitions and one replica through `admin`, unless it
/// exists (`bench` and `demo` make their own topics). `named` is how an error names it.
pub async fn create_topic<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    topic: &str,
    partitions: i32,
    named: &str,
) -> anyhow::Result<()> {
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("CreateTopics")?;
    for result in results {
        if let Err((_, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {named}: {code}");
            }
        }
    }
    Ok(())
}

/// The one flag of `kshift serve` and `kshift check`.
#[derive(clap::Args)]
pub struct ConfigFile {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// The flags of a command that reads the kshift configuration (`verify`, `prepare`): the
/// file, then the command's own.
#[derive(clap::Args)]
pub struct WithConfig<Options: clap::Args> {
    /// The kshift configuration (clusters and routes).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub options: Options,
}

/// Logs to stderr, as JSON lines with `json`, at `default_level` unless `RUST_LOG` says
/// otherwise.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `command` to its end on a multi-threaded runtime (the proxy, the Kafka clients'
/// tools).
pub fn block_on<T>(command: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new()?.block_on(command)
}

/// Runs `command` to its end on a runtime of one thread: for the admin API's clients, which
/// wait on one request at a time.
pub fn block_on_one_thread<T>(
    command: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
}
