//! The authentication layer in front of dispatch. With `[proxy.sasl]`, nothing but
//! ApiVersions, SaslHandshake and SaslAuthenticate passes before the client has
//! authenticated ([`SaslSession`]); the SASL steps are answered here, in request order.
//! Any other request, or a failed authentication (after its SASL_AUTHENTICATION_FAILED
//! answer, held back by `failed_delay` as a broker does), closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use crate::codec::Request;
use crate::handler::{ready, PendingReply, Reply};
use crate::metrics::Metrics;
use crate::security::sasl_server::{Outcome, SaslListener, SaslSession};

/// One connection's authentication: none without `[proxy.sasl]`.
pub struct Auth {
    session: Option<SaslSession>,
    peer: SocketAddr,
}

/// What the layer made of a request.
pub enum Gate {
    /// Dispatch it: the client is authenticated (or SASL is off), or it is ApiVersions.
    Pass(Request),
    /// A SASL step, answered here; read the next request.
    Answered(PendingReply),
    /// Write this answer, then close the connection.
    Close(PendingReply),
}

impl Auth {
    pub fn new(listener: Option<Arc<SaslListener>>, peer: SocketAddr) -> Auth {
        Auth {
            session: listener.map(SaslSession::new),
            peer,
        }
    }

    pub fn gate(&mut self, request: Request, metrics: &Metrics) -> Gate {
        let Some(session) = self.session.as_mut() else {
            return Gate::Pass(request);
        };
        let sasl_step = matches!(
            request.api_key,
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        );
        if request.api_key == ApiKey::ApiVersions || (session.is_authenticated() && !sasl_step) {
            return Gate::Pass(request);
        }
        let peer = self.peer;
        match session.handle(&request) {
            Outcome::Continue(reply) => Gate::Answered(ready(reply)),
            Outcome::Authenticated { reply, user } => {
                tracing::debug!(%peer, %user, "client authenticated");
                Gate::Answered(ready(reply))
            }
            Outcome::Refused { reply, reason } => {
                metrics.client_authentication_failure("sasl");
                tracing::info!(%peer, %reason, "closing client connection: authentication failed");
                let delay = session.failed_delay();
                Gate::Close(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    reply
                }))
            }
            Outcome::NotSasl => {
                let reason = format!("{:?} before SASL authentication", request.api_key);
                tracing::info!(%peer, %reason, "closing client connection");
                Gate::Close(ready(Reply::Close(reason)))
            }
        }
    }
}
