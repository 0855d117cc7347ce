//! The handlers, one per family of api keys. Each has a submit phase (routes the request and
//! queues it upstream, in request order) and a wait phase (a [`crate::handler::PendingReply`]).
//!
//! - [`virtual_cluster`] answers ApiVersions, Metadata, FindCoordinator and DescribeCluster
//!   itself: one virtual node per backend broker, all at kshift's address;
//! - [`produce`] routes records to the route's write cluster and queues them for its mirrors;
//! - [`fetch`] serves Fetch and ListOffsets from the route's read cluster;
//! - [`groups`] forwards consumer-group and offset APIs to the group's coordinator;
//! - [`transactions`] sends producer-id and transaction APIs to the write cluster;
//! - [`admin_apis`] splits admin APIs naming topics or groups per cluster, leader or
//!   coordinator, and merges the answers; the others (configs of other resources, ACLs) go
//!   to any broker of the client's default write cluster;
//! - [`split`] groups a request's partitions by the broker that must serve them.

pub mod admin_apis;
pub mod fetch;
pub mod groups;
pub mod produce;
pub mod split;
pub mod transactions;
pub mod virtual_cluster;
