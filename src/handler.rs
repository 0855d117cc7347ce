//! What every handler shares: the per-request [`Context`] (routing snapshot, upstream
//! connections), the [`Reply`] it produces and [`Context::forward`] for requests passed on
//! byte for byte. A leaf of the handlers: it imports nothing above it on the data path.
//!
//! A handler has two phases. The *submit* phase runs in the client connection's reader, in
//! request order: it routes the request and queues it on the upstream connections. The
//! returned [`PendingReply`] is the *wait* phase: it awaits the backends and builds the
//! response, concurrently with later requests. Splitting them is what keeps a producer's
//! pipelined requests in order on the wire while their answers overlap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, ApiKey, EndTxnResponse, HeartbeatResponse, InitProducerIdResponse,
    JoinGroupResponse, LeaveGroupResponse, OffsetFetchResponse, SyncGroupResponse,
};
use kafka_protocol::protocol::Encodable;
use kafka_protocol::ResponseError;

use crate::cluster::{BrokerConnection, Cluster, Lane, UpstreamConnections};
use crate::codec::Request;
use crate::error::{BackendError, Error, Source};
use crate::handlers::fetch::positions::ReadPositions;
use crate::routing::ClusterId;
use crate::routing::RoutingTable;
use crate::state::ProxyState;

pub use crate::codec::Reply;

pub type PendingReply = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// A reply known at once, as a [`PendingReply`].
pub fn ready(reply: Reply) -> PendingReply {
    Box::pin(async move { reply })
}

/// A request passed on to one broker as it came, not decoded (a Produce, a Fetch): how its
/// handler plans it and sends it. [`forward`] and [`forward_now`] do the rest.
pub trait Forward: Sized {
    /// Which of the client's connections to the broker it goes on.
    const LANE: Lane;
    /// The forward the request in `context` allows, if any (nothing is sent).
    fn plan(context: &Context) -> Option<Self>;
    /// The cluster and broker it goes to.
    fn target(&self) -> (ClusterId, i32);
    /// Sends it on `connection` (or answers the failure to get one) and returns its reply.
    fn send(
        self,
        context: Context,
        connection: Result<BrokerConnection, BackendError>,
    ) -> PendingReply;
}

/// Forwards the request in `context` as `F` plans it, connecting to the broker if needed.
/// The context back, with nothing sent, when `F` does not apply.
pub async fn forward<F: Forward>(context: Context) -> Result<PendingReply, Context> {
    let Some(forward) = F::plan(&context) else {
        return Err(context);
    };
    let (cluster, node) = forward.target();
    let connection = context
        .upstream
        .get(context.cluster(cluster), node, F::LANE)
        .await;
    Ok(forward.send(context, connection))
}

/// What [`forward_now`] hands back: the context, and whether [`forward`] may still apply
/// (the request can be forwarded unchanged, but its broker connection is not open yet).
pub struct NotNow {
    pub context: Context,
    pub forwardable: bool,
}

/// [`forward`] without an await, for the client connection's reader to call before it
/// builds (and boxes) the full submit future, whose state is that of the largest handler:
/// moving it cost ~1,000 instructions of memcpy per request (callgrind). Only when the
/// connection to the broker is open already. Otherwise the context back, saying whether
/// [`forward`] may still apply; it then plans again (a fetch's read positions, checked
/// twice at the same offsets, decide the same).
pub fn forward_now<F: Forward>(context: Context) -> Result<PendingReply, NotNow> {
    let Some(forward) = F::plan(&context) else {
        return Err(NotNow {
            context,
            forwardable: false,
        });
    };
    let (cluster, node) = forward.target();
    match context
        .upstream
        .try_get(context.cluster(cluster), node, F::LANE)
    {
        Some(connection) => Ok(forward.send(context, Ok(connection))),
        None => Err(NotNow {
            context,
            forwardable: true,
        }),
    }
}

/// Everything one request is handled with.
#[derive(Clone)]
pub struct Context {
    pub state: Arc<ProxyState>,
    pub upstream: Arc<UpstreamConnections>,
    /// Which cluster this client connection's read positions belong to.
    pub positions: Arc<ReadPositions>,
    /// The routing table this request was started on, and will finish on.
    pub routing: Arc<RoutingTable>,
    pub request: Request,
}

impl Context {
    pub fn cluster(&self, id: ClusterId) -> &Arc<Cluster> {
        &self.state.clusters[id]
    }

    pub fn client_id(&self) -> &str {
        self.request.client_id.as_str()
    }

    /// The request timeout toward backends, plus however long the request asks the
    /// broker to wait (`max_wait_ms`, produce `timeout_ms`, a rebalance).
    pub fn backend_timeout(&self, requested_wait_ms: i32) -> Duration {
        self.state
            .clusters
            .first()
            .map_or(Duration::from_secs(30), |c| c.settings.request_timeout)
            + Duration::from_millis(u64::try_from(requested_wait_ms).unwrap_or(0))
    }

    /// The one deadline of this request toward backends ([`Context::backend_timeout`] from
    /// now): every backend answer it awaits, in turn or at once, shares it.
    pub fn deadline(&self, requested_wait_ms: i32) -> tokio::time::Instant {
        crate::cluster::broker_connection::deadline_after(self.backend_timeout(requested_wait_ms))
    }

    /// Encodes `message` as the response to this request.
    pub fn respond<M: Encodable>(&self, message: &M) -> Reply {
        self.request.reply(message)
    }

    /// `body` (already encoded at the request's version) as the response.
    pub fn respond_raw(&self, body: Bytes) -> Reply {
        self.request.reply_raw(body)
    }

    /// A submitted handler's pending reply, or, when submitting failed, the reply
    /// [`Context::error_reply`] gives at once.
    pub fn pending_or_error(&self, submitted: Result<PendingReply, Error>) -> PendingReply {
        submitted.unwrap_or_else(|error| ready(self.error_reply(&error)))
    }

    /// Forwards the request unchanged to `node` of `cluster` and the answer unchanged to
    /// the client; `inspect` sees the answer first (to drop a stale cache entry).
    pub async fn forward<F>(
        &self,
        cluster: ClusterId,
        node: i32,
        requested_wait_ms: i32,
        inspect: F,
    ) -> Result<PendingReply, Error>
    where
        F: FnOnce(&Context, &Bytes) + Send + 'static,
    {
        let connection = self
            .upstream
            .get(self.cluster(cluster), node, Lane::Other)
            .await?;
        let response = connection.request(
            self.request.api_key,
            self.request.api_version,
            &self.request.client_id,
            self.request.body.clone(),
        )?;
        let context = self.clone();
        let deadline = self.deadline(requested_wait_ms);
        Ok(Box::pin(async move {
            match response.wait_until(deadline).await {
                Ok(body) => {
                    inspect(&context, &body);
                    context.respond_raw(body)
                }
                Err(error) => context.error_reply(&Error::Backend(error)),
            }
        }))
    }

    /// Forwards the request to the coordinator of `key` (a group or transactional id) on
    /// `cluster_id`; a coordinator that says it moved is forgotten.
    pub async fn to_coordinator(
        &self,
        cluster_id: ClusterId,
        key_type: i8,
        key: &str,
        requested_wait_ms: i32,
    ) -> Result<PendingReply, Error> {
        let cluster = self.cluster(cluster_id).clone();
        let node = cluster.coordinator(key_type, key).await?;
        let key = key.to_string();
        self
            .forward(cluster_id, node, requested_wait_ms, move |context, body| {
                if let Some(code) = coordinator_error(context, body) {
                    tracing::debug!(cluster = %cluster.name, key, code, "coordinator moved; forgetting it");
                    cluster.forget_coordinator(key_type, &key);
                }
            })
            .await
    }

    /// Forwards the request to any broker of `cluster`.
    pub async fn to_any_broker(&self, cluster: ClusterId) -> Result<PendingReply, Error> {
        let node = self.cluster(cluster).any_broker().await?;
        self.forward(cluster, node, 0, |_, _| {}).await
    }

    /// Counts a failure of (part of) this request in `kshift_request_failures`.
    fn count_failure(&self, source: Source<'_>, retriable: bool) {
        let cluster = match source {
            Source::Backend { cluster } => cluster,
            Source::Client | Source::Internal => None,
        };
        self.state.metrics.request_failure(
            Some(self.request.api_key),
            source.label(),
            cluster,
            retriable,
        );
    }

    /// The error code a broker would give for the partitions (or topics, resources) of this
    /// request that `error` failed; counted as a failure.
    pub fn failure_code(&self, error: &BackendError) -> i16 {
        self.count_failure(error.source(), error.retriable());
        error.client_error_code()
    }

    /// As [`Context::failure_code`], for a group or transactional id whose coordinator
    /// `error` kept kshift from.
    pub fn coordinator_failure_code(&self, error: &BackendError) -> i16 {
        self.count_failure(error.source(), error.retriable());
        error.coordinator_error_code()
    }

    /// The reply a broker would give when it cannot serve this request: a retriable error
    /// code for the APIs whose response carries one at the top, else a closed connection
    /// (which every client treats as retriable).
    pub fn error_reply(&self, error: &Error) -> Reply {
        self.count_failure(error.source(), error.retriable());
        let code = match error {
            Error::Client(error) => {
                tracing::info!(api = ?self.request.api_key, %error, "closing client connection: malformed request");
                return Reply::Close(error.to_string());
            }
            Error::Internal(reason) => {
                tracing::warn!(api = ?self.request.api_key, %reason, "closing client connection: kshift could not serve the request");
                return Reply::Close(reason.to_string());
            }
            Error::Backend(error) => {
                tracing::debug!(api = ?self.request.api_key, %error, "backend failed");
                error.coordinator_error_code()
            }
        };
        match self.request.api_key {
            ApiKey::JoinGroup => self.respond(&JoinGroupResponse::default().with_error_code(code)),
            ApiKey::SyncGroup => self.respond(&SyncGroupResponse::default().with_error_code(code)),
            ApiKey::Heartbeat => self.respond(&HeartbeatResponse::default().with_error_code(code)),
            ApiKey::LeaveGroup => {
                self.respond(&LeaveGroupResponse::default().with_error_code(code))
            }
            ApiKey::OffsetFetch if self.request.api_version >= 2 => {
                self.respond(&OffsetFetchResponse::default().with_error_code(code))
            }
            ApiKey::InitProducerId => self.respond(
                &InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id((-1).into())
                    .with_producer_epoch(-1),
            ),
            ApiKey::AddOffsetsToTxn => {
                self.respond(&AddOffsetsToTxnResponse::default().with_error_code(code))
            }
            ApiKey::EndTxn => self.respond(&EndTxnResponse::default().with_error_code(code)),
            _ => Reply::Close(format!("{error}")),
        }
    }
}

/// The versions kshift serves per api key, before intersecting with the backends'.
/// Capped where a newer version carries something kshift does not translate: topic ids
/// (Produce v13, Fetch v13+, OffsetFetch v10, OffsetCommit v10), broker endpoints (Produce
/// v10+, Fetch v16+), batched group fetches (OffsetFetch v8+), broker-only batching
/// (AddPartitionsToTxn v4+). OffsetForLeaderEpoch is not served: leader epochs belong to
/// one backend cluster (DESIGN.md), and without it clients skip KIP-320 validation.
pub const SERVED_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 5),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
];

/// Api keys kshift answers itself: advertised whatever the backends support.
pub const ANSWERED_LOCALLY: &[ApiKey] = &[
    ApiKey::ApiVersions,
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::DescribeCluster,
];

/// The version range kshift serves for `api_key`, if any.
pub fn served_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SERVED_VERSIONS
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| {
            let valid = api_key.valid_versions();
            ((*min).max(valid.min), (*max).min(valid.max))
        })
}

/// The coordinator error in a coordinator's answer, if it says it is not (or not yet)
/// the coordinator.
fn coordinator_error(context: &Context, body: &Bytes) -> Option<i16> {
    let mut body = body.clone();
    let response = ResponseKind::decode(
        context.request.api_key,
        &mut body,
        context.request.api_version,
    )
    .ok()?;
    let codes: Vec<i16> = match response {
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::LeaveGroup(r) => vec![r.error_code],
        ResponseKind::OffsetFetch(r) => vec![r.error_code],
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::AddOffsetsToTxn(r) => vec![r.error_code],
        ResponseKind::EndTxn(r) => vec![r.error_code],
        ResponseKind::AddPartitionsToTxn(r) => r
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| p.partition_error_code)
            })
            .collect(),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        _ => Vec::new(),
    };
    let moved = [
        ResponseError::NotCoordinator.code(),
        ResponseError::CoordinatorNotAvailable.code(),
    ];
    codes.into_iter().find(|code| moved.contains(code))
}
