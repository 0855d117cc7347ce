//! What every client connection and every request shares: the backend clusters, the routing
//! snapshot, the mirrors, metrics, the listener's security and limits. The control plane
//! ([`crate::control::Control`]) holds this and adds what only it uses.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::mirror::written::{RouteWrites, WrittenRanges};
use crate::mirror::Mirrors;
use crate::routing::moves::GroupMoves;
use crate::routing::ClusterId;
use crate::routing::Routing;
use crate::security::sasl_server::SaslListener;
use crate::security::tls::ListenerTls;

/// The state every connection and request shares.
#[derive(Debug)]
pub struct ProxyState {
    pub config: ProxyConfig,
    /// Backend clusters, indexed by [`ClusterId`].
    pub clusters: Vec<Arc<Cluster>>,
    pub routing: Routing,
    pub metrics: Arc<Metrics>,
    /// Mirror queues and writers (one per cluster), the offset map, held transactions.
    pub mirrors: Arc<Mirrors>,
    /// Consumer groups this instance's clients use, and those a routing change is moving.
    pub group_moves: GroupMoves,
    /// Records written per mirrored route (the console's write rate).
    pub route_writes: RouteWrites,
    /// Offset ranges kshift wrote to mirrored partitions (the unrouted-writer check).
    pub written_ranges: WrittenRanges,
    /// kshift's advertised address (every virtual node is there), and the node id listed
    /// while no backend broker is known.
    pub node: VirtualNode,
    /// TLS on the client listener, when `[proxy.tls]` is set.
    pub tls: Option<ListenerTls>,
    /// SASL termination for clients, when `[proxy.sasl]` is set.
    pub sasl: Option<Arc<SaslListener>>,
    /// Permits for client connections (`max_connections`), one held by each connection
    /// task, shared by the `listen` and `bootstrap_listen` accept loops.
    pub connection_permits: Arc<tokio::sync::Semaphore>,
    /// The request memory budget (`queued_max_request_bytes`), one permit per byte: a client
    /// connection takes a frame's length in permits before reading its body and gives them
    /// back once the request is answered, so at the budget no socket is read.
    pub request_budget: Arc<tokio::sync::Semaphore>,
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
