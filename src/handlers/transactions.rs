//! Producer-id and transaction APIs: to the transaction coordinator of the client's default
//! write cluster, forwarded byte for byte. Transactions live on the write cluster: a
//! transactional producer's groups should be hosted there too (TxnOffsetCommit goes to the
//! write cluster's group coordinator). The mirror holds a transaction's records until its
//! EndTxn is accepted, then releases (commit) or discards (abort) them.

use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, TxnOffsetCommitRequest,
};

use crate::cluster::{GROUP, TRANSACTION};
use crate::codec::decode_body;
use crate::error::Error;
use crate::handler::{Context, PendingReply, Reply};

/// Routes a transaction API request.
pub async fn submit(context: &Context) -> Result<PendingReply, Error> {
    // Transactions, and their group offsets, live on the client's default write cluster.
    let cluster = context.routing.default_write_cluster(context.client_id());
    match context.request.api_key {
        ApiKey::TxnOffsetCommit => {
            let request: TxnOffsetCommitRequest = context.request.decode()?;
            context
                .to_coordinator(cluster, GROUP, &request.group_id.0, 0)
                .await
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = context.request.decode()?;
            match request.transactional_id {
                Some(id) => {
                    // A new producer instance fences the old one: its open transaction
                    // will be aborted, so its records must never reach a mirror.
                    context.state.mirrors.end_transaction(id.0.as_str(), false);
                    context.to_coordinator(cluster, TRANSACTION, &id.0, 0).await
                }
                None => context.to_any_broker(cluster).await,
            }
        }
        ApiKey::AddPartitionsToTxn => {
            let request: AddPartitionsToTxnRequest = context.request.decode()?;
            let id = request.v3_and_below_transactional_id.0;
            context.to_coordinator(cluster, TRANSACTION, &id, 0).await
        }
        ApiKey::AddOffsetsToTxn => {
            let request: AddOffsetsToTxnRequest = context.request.decode()?;
            context
                .to_coordinator(cluster, TRANSACTION, &request.transactional_id.0, 0)
                .await
        }
        ApiKey::EndTxn => {
            let request: EndTxnRequest = context.request.decode()?;
            let id = request.transactional_id.0.to_string();
            let pending = context.to_coordinator(cluster, TRANSACTION, &id, 0).await?;
            let context = context.clone();
            Ok(Box::pin(async move {
                let reply = pending.await;
                // Release (commit) or discard (abort) the held mirror records once the
                // coordinator has accepted the outcome.
                if let Reply::Frame { body, .. } = &reply {
                    let ended = decode_body::<EndTxnResponse>(
                        body.clone(),
                        context.request.api_version,
                        "EndTxn response",
                    )
                    .ok();
                    if ended.is_some_and(|r| r.error_code == 0) {
                        context
                            .state
                            .mirrors
                            .end_transaction(&id, request.committed);
                    }
                }
                reply
            }))
        }
        other => Ok(Box::pin(async move {
            Reply::Close(format!("{other:?} is not a transaction api"))
        })),
    }
}
