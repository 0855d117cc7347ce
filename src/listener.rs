//! The accept loop: one task per client socket, at most `max_connections` at once (across
//! `listen` and `bootstrap_listen`, which run one loop each).
//!
//! Invariants: a connection over the limit is closed right after accept (counted in the
//! log), never queued. On shutdown the loop stops accepting and every connection stops
//! reading new requests, answers the ones it has, and closes; connections still busy at
//! the drain deadline (`drain_timeout_ms`) are cut.
//!
//! With `[proxy.tls]`, each connection's TLS handshake runs in that connection's own task
//! (never in the accept loop), bounded by `handshake_timeout_ms`; a failed handshake closes
//! only that socket and is logged with the reason (expired or untrusted certificate, …).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::client_connection::ClientConnection;
use crate::state::ProxyState;

pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = state.connection_permits.clone();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = state.config.max_connections, "connection refused: max_connections reached");
            state.metrics.client_connections_refused.inc();
            drop(socket);
            continue;
        };
        state.metrics.client_connections_accepted.inc();
        let _ = socket.set_nodelay(true);
        let connection = ClientConnection::new(state.clone(), peer);
        let shutdown = shutdown.clone();
        let tls = state.tls.clone();
        let metrics = state.metrics.clone();
        connections.spawn(
            async move {
                match tls {
                    None => {
                        let (read_half, write_half) = socket.into_split();
                        connection.run(read_half, write_half, shutdown).await;
                    }
                    Some(tls) => {
                        let handshake =
                            tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(socket));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                let (read_half, write_half) = tokio::io::split(stream);
                                connection.run(read_half, write_half, shutdown).await;
                            }
                            Ok(Err(error)) => {
                                metrics.client_authentication_failure("tls");
                                tracing::info!(%error, "TLS handshake failed; connection closed");
                            }
                            Err(_) => {
                                metrics.client_authentication_failure("tls");
                                tracing::info!(
                                    timeout_ms = tls.handshake_timeout.as_millis() as u64,
                                    "no TLS handshake within handshake_timeout_ms; connection closed"
                                );
                            }
                        }
                    }
                }
                drop(permit);
            }
            .instrument(tracing::info_span!("client", %peer)),
        );
    }
    let drain = std::time::Duration::from_millis(state.config.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "drain deadline reached; closing the remaining client connections"
        );
    }
    connections.shutdown().await;
}
