//! kshift: a Kafka-protocol proxy that presents one virtual cluster to unmodified clients
//! and splits their traffic across backend clusters per a hot-swappable routing table.
//!
//! The data's path, module by module; every module imports only modules below it:
//! - [`proxy`] starts everything: it builds the shared state and spawns the tasks;
//! - [`control`] is the control plane (config file and Redis routing sources, the admin API
//!   and status page, cutover, backfill, offset sync, the unrouted-writer check);
//! - [`listener`] accepts client sockets (connection limit, shutdown) and hands each to
//! - [`client_connection`], one task pair per socket: reads frames ([`codec`]), keeps a
//!   bounded window of requests in flight and writes responses in request order; SASL
//!   authentication is a layer there (`client_connection::auth`), in front of dispatch,
//!   and the pending replies are polled by `client_connection::in_order`;
//! - [`dispatch`] sends each request by api key to its handler in [`handlers`]
//!   (virtual cluster, produce, fetch, groups, transactions, admin APIs);
//! - [`handler`] is what every handler shares: the request's context and its reply;
//! - [`state`] is what every connection shares ([`ProxyState`]);
//! - [`mirror`] copies what was written to the route's mirror clusters: per mirror cluster
//!   a writer that takes the queue in order and a pipelined idempotent producer; the offset
//!   map and the failure journal;
//! - [`cluster`] is the client of one backend cluster (metadata and leader cache,
//!   coordinator cache, connection pool) and its broker connections;
//! - [`routing`] holds the routing table, one immutable snapshot behind one `ArcSwap`, and
//!   the consumer groups a cutover moves;
//! - the leaves: [`codec`] (frames, headers, record batches, answers read in place),
//!   [`config`] (TOML, validated),
//!   [`security`] (TLS, SASL, SCRAM, credentials), [`metrics`], [`sync`], and [`error`], the
//!   one error type whose source (client, backend, internal) decides the client's answer.

pub mod client_connection;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod error;
pub mod handler;
pub mod handlers;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod routing;
pub mod security;
pub mod state;
pub mod sync;

pub use proxy::{Proxy, RunningProxy, StartError};
pub use routing::ClusterId;
pub use state::{ProxyState, VirtualNode};
