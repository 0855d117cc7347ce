//! Request dispatch by api key: checks the version is served, builds the request's
//! [`Context`] on the routing snapshot in force, and runs the handler's submit phase.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use crate::cluster::UpstreamConnections;
use crate::codec::Request;
use crate::handler::{self, ready, served_range, Context, PendingReply, Reply};
use crate::handlers::fetch::positions::ReadPositions;
use crate::handlers::{admin_apis, fetch, groups, produce, transactions, virtual_cluster};
use crate::state::ProxyState;

/// A request [`submit_now`] left to [`submit`].
pub struct Deferred {
    request: Request,
    /// False once [`submit_now`] found that the request cannot be forwarded unchanged:
    /// [`submit`] then does not plan it again (a mirrored produce would be walked twice).
    may_forward: bool,
}

/// The submit phase without an await, for the requests that need none: a Produce or
/// Fetch forwarded as it came on a connection already open ([`handler::forward_now`]).
/// Anything else is left to [`submit`].
pub fn submit_now(
    state: &Arc<ProxyState>,
    upstream: &Arc<UpstreamConnections>,
    positions: &Arc<ReadPositions>,
    request: Request,
) -> Result<PendingReply, Deferred> {
    let forward_now = match request.api_key {
        ApiKey::Produce => handler::forward_now::<produce::Unchanged>,
        ApiKey::Fetch => handler::forward_now::<fetch::Unchanged>,
        _ => {
            return Err(Deferred {
                request,
                may_forward: false,
            })
        }
    };
    if !is_served(&request) {
        return Err(Deferred {
            request,
            may_forward: false,
        });
    }
    forward_now(context(state, upstream, positions, request)).map_err(|not_now| Deferred {
        request: not_now.context.request,
        may_forward: not_now.forwardable,
    })
}

/// Runs the submit phase of the request `deferred` holds and returns its wait phase.
pub async fn submit(
    state: &Arc<ProxyState>,
    upstream: &Arc<UpstreamConnections>,
    positions: &Arc<ReadPositions>,
    deferred: Deferred,
) -> PendingReply {
    let Deferred {
        request,
        may_forward,
    } = deferred;
    let api_key = request.api_key;
    if api_key != ApiKey::ApiVersions && !is_served(&request) {
        let reason = format!("{api_key:?} v{} is not served", request.api_version);
        tracing::info!(%reason, "closing client connection");
        return ready(Reply::Close(reason));
    }
    let context = context(state, upstream, positions, request);
    let submitted = match api_key {
        ApiKey::ApiVersions => Ok(virtual_cluster::api_versions(context.clone())),
        ApiKey::Metadata => Ok(virtual_cluster::metadata(context.clone())),
        ApiKey::FindCoordinator => Ok(virtual_cluster::find_coordinator(context.clone())),
        ApiKey::DescribeCluster => Ok(virtual_cluster::describe_cluster(context.clone())),
        // Produce and Fetch take the context: a forwarded request's reply keeps it without a
        // copy.
        ApiKey::Produce => return produce::submit(context, may_forward).await,
        ApiKey::Fetch => return fetch::submit_fetch(context, may_forward).await,
        ApiKey::ListOffsets => fetch::submit_list_offsets(&context).await,
        ApiKey::TxnOffsetCommit
        | ApiKey::InitProducerId
        | ApiKey::AddPartitionsToTxn
        | ApiKey::AddOffsetsToTxn
        | ApiKey::EndTxn => transactions::submit(&context).await,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::OffsetDelete
        | ApiKey::ListGroups => groups::submit(&context).await,
        _ => admin_apis::submit(&context).await,
    };
    context.pending_or_error(submitted)
}

/// Whether kshift serves `request`'s api at its version.
fn is_served(request: &Request) -> bool {
    served_range(request.api_key)
        .is_some_and(|(min, max)| (min..=max).contains(&request.api_version))
}

/// `request`'s context on the routing snapshot in force.
fn context(
    state: &Arc<ProxyState>,
    upstream: &Arc<UpstreamConnections>,
    positions: &Arc<ReadPositions>,
    request: Request,
) -> Context {
    Context {
        state: state.clone(),
        upstream: upstream.clone(),
        positions: positions.clone(),
        routing: state.routing.load(),
        request,
    }
}
