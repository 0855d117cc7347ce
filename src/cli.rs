//! Operator subcommands beyond `serve` and `check`: clients of a running kshift or of its
//! clusters, and `demo`, a live migration on one machine.

pub mod admin_client;
pub mod backfill;
pub mod bench;
pub mod cutover;
pub mod demo;
pub mod health;
pub mod prepare;
pub mod progress;
pub mod repair;
pub mod routes;
pub mod verify;

use anyhow::anyhow;
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
