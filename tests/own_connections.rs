//! kshift's own requests to a backend (offsets and groups at a cutover, backfill reads,
//! `list_offset`) share one pooled connection per broker instead of opening a TCP (+TLS +SASL)
//! connection per call; counted by `kshift_backend_connections_opened_total`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Broker;
use kshift::cluster::{Cluster, ConnectionSettings};
use kshift::metrics::Metrics;
use kshift::security::BackendSecurity;

fn connections_opened(metrics: &Metrics, cluster: &str) -> u64 {
    common::metric_sum(
        &metrics.exposition(),
        "kshift_backend_connections_opened_total",
        &[&format!("cluster=\"{cluster}\"")],
    ) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_offset_lookups_reuse_one_connection_per_broker() {
    let broker = Broker::start().await;
    let topic = common::unique_topic("pooled");
    common::create_topic(&broker.bootstrap(), &topic, 1).await;
    common::send_values(&broker.bootstrap(), &topic, (0..3).map(|i| format!("v{i}"))).await;

    let metrics = Arc::new(Metrics::new());
    let settings = ConnectionSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        metadata_max_age: Duration::from_secs(30),
    };
    let cluster = Cluster::new(
        0,
        "old",
        vec![broker.bootstrap()],
        settings,
        Arc::new(BackendSecurity::default()),
        metrics.clone(),
        1_000_000,
    );
    for _ in 0..20 {
        let latest = cluster
            .list_offset(&topic, 0, -1)
            .await
            .expect("ListOffsets at the leader");
        assert!(latest > 0, "latest offset {latest}");
    }
    // The control connection (metadata) and one pooled connection to the leader; one per
    // lookup before the pool.
    let opened = connections_opened(&metrics, "old");
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for 20 lookups"
    );
}
