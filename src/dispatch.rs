//! Request dispatch by api key: checks the version is served, builds the request's
//! [`Context`] on the routing snapshot in force, and runs the handler's submit phase.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use crate::cluster::UpstreamConnections;
use crate::codec::Request;
use crate::handler::{ready, served_range, Context, PendingReply, Reply};
use crate::handlers::fetch::positions::ReadPositions;
use crate::handlers::{admin_apis, fetch, groups, produce, transactions, virtual_cluster};
use crate::state::ProxyState;

/// The submit phase without an await, for the requests that need none: a Produce or
/// Fetch forwarded as it came on a connection already open ([`produce::forward_now`],
/// [`fetch::forward_now`]). The request back for [`submit`] otherwise.
pub fn submit_now(
    state: &Arc<ProxyState>,
    upstream: &Arc<UpstreamConnections>,
    positions: &Arc<ReadPositions>,
    request: Request,
) -> Result<PendingReply, Request> {
    let forward_now = match request.api_key {
        ApiKey::Produce => produce::forward_now,
        ApiKey::Fetch => fetch::forward_now,
        _ => return Err(request),
    };
    if !served_range(request.api_key)
        .is_some_and(|(min, max)| (min..=max).contains(&request.api_version))
    {
        return Err(request);
    }
    let context = Context {
        state: state.clone(),
        upstream: upstream.clone(),
        positions: positions.clone(),
        routing: state.routing.load(),
        request,
    };
    forward_now(context).map_err(|context| context.request)
}

/// Runs the submit phase of `request` and returns its wait phase.
pub async fn submit(
    state: &Arc<ProxyState>,
    upstream: &Arc<UpstreamConnections>,
    positions: &Arc<ReadPositions>,
    request: Request,
) -> PendingReply {
    let api_key = request.api_key;
    let version = request.api_version;
    if api_key != ApiKey::ApiVersions {
        match served_range(api_key) {
            Some((min, max)) if (min..=max).contains(&version) => {}
            _ => {
                let reason = format!("{api_key:?} v{version} is not served");
                tracing::info!(%reason, "closing client connection");
                return ready(Reply::Close(reason));
            }
        }
    }
    let context = Context {
        state: state.clone(),
        upstream: upstream.clone(),
        positions: positions.clone(),
        routing: state.routing.load(),
        request,
    };
    let submitted = match api_key {
        ApiKey::ApiVersions => Ok(virtual_cluster::api_versions(context.clone())),
        ApiKey::Metadata => Ok(virtual_cluster::metadata(context.clone())),
        ApiKey::FindCoordinator => Ok(virtual_cluster::find_coordinator(context.clone())),
        ApiKey::DescribeCluster => Ok(virtual_cluster::describe_cluster(context.clone())),
        // Produce and Fetch take the context: a forwarded request's reply keeps it without a
        // copy.
        ApiKey::Produce => return produce::submit(context).await,
        ApiKey::Fetch => return fetch::submit_fetch(context).await,
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
