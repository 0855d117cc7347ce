//! One client socket, served by one task: it reads request frames and submits them, and
//! writes the replies back as they complete. (One task rather than a reader and a writer:
//! a produce then wakes one task at each end instead of two, which on a busy machine was a
//! cross-thread wake-up per request.)
//!
//! Invariants:
//! - Replies leave in the order requests arrived: each request's pending reply joins the
//!   connection's ordered set of owed replies, awaited concurrently, written in arrival order.
//! - At most `max_in_flight_requests` requests are in flight — read, submitted and not yet
//!   answered; while that many are, the socket is not read (TCP backpressure), as a broker
//!   does. Nor is it while a reply is being written to a client that does not read.
//! - Requests are submitted to backends in arrival order ([`dispatch::submit`] finishes
//!   sending before the next request is read), so a producer's pipelined batches reach the
//!   broker in the order it sent them.
//! - A connection that sends no request for `idle_timeout_ms` is closed (answers owed are
//!   still written first).
//! - A frame kshift cannot parse closes the connection after the replies already owed
//!   have been written — the broker's behaviour. Nothing else is affected.
//! - With `[proxy.sasl]`, nothing but ApiVersions, SaslHandshake and SaslAuthenticate is
//!   served before the client has authenticated ([`SaslSession`]); the SASL steps run here,
//!   in request order. Any other request, or a failed authentication (after its
//!   SASL_AUTHENTICATION_FAILED answer), closes the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::UpstreamConnections;
use crate::codec::{self, Request};
use crate::dispatch::{self, PendingReply, Reply};
use crate::security::sasl_server::{Outcome, SaslSession};
use crate::ProxyState;

pub struct ClientConnection {
    state: Arc<ProxyState>,
    peer: SocketAddr,
    /// This connection's own backend connections; dropped (and closed) with it.
    upstream: Arc<UpstreamConnections>,
}

impl ClientConnection {
    pub fn new(state: Arc<ProxyState>, peer: SocketAddr) -> ClientConnection {
        ClientConnection {
            state,
            peer,
            upstream: Arc::default(),
        }
    }

    /// Serves the connection whose (plain or TLS) halves are `read_half`, `write_half`.
    pub async fn run<R, W>(self, read_half: R, write_half: W, mut shutdown: watch::Receiver<bool>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tracing::debug!("client connected");
        self.state.metrics.client_connections.inc();
        let mut sasl = self.state.sasl.clone().map(SaslSession::new);
        let window = self.state.config.max_in_flight_requests;
        let limit = self.state.config.max_frame_bytes;
        let idle_timeout = Duration::from_millis(self.state.config.idle_timeout_ms);
        let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
        // Replies owed, in request order; each resolves when its request has been answered.
        let mut owed: FuturesOrdered<PendingReply> = FuturesOrdered::new();
        // The socket's read side, lent to `reading` while a frame is being read (a frame read
        // is not cancel-safe, so it is kept across turns of the loop rather than restarted).
        let mut socket = Some(BufReader::with_capacity(64 * 1024, read_half));
        let mut reading: Option<FrameRead<R>> = None;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // Set once no more requests are read: the owed replies are written, then it closes.
        let mut closing = false;
        loop {
            if !closing && reading.is_none() && owed.len() < window {
                if let Some(mut socket) = socket.take() {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    reading = Some(Box::pin(async move {
                        let frame = codec::read_frame(&mut socket, limit).await;
                        (socket, frame)
                    }));
                }
            }
            if closing {
                // Not read again: a half-read frame is abandoned.
                reading = None;
                if owed.is_empty() {
                    break;
                }
            }
            tokio::select! {
                Some(reply) = owed.next(), if !owed.is_empty() => {
                    if !write_ready(&mut writer, reply, &mut owed).await {
                        break;
                    }
                }
                (read_half, frame) = async { reading.as_mut().expect("a frame read").await },
                    if reading.is_some() =>
                {
                    reading = None;
                    socket = Some(read_half);
                    closing = match frame {
                        Ok(Some(frame)) => self.serve(frame, &mut sasl, &mut owed).await,
                        Ok(None) => true,
                        Err(error) => {
                            tracing::info!(peer = %self.peer, %error, "closing client connection: unreadable frame");
                            true
                        }
                    };
                }
                // Idle = no request read for `idle_timeout_ms` (Kafka's connections.max.idle.ms).
                _ = &mut idle, if reading.is_some() => {
                    tracing::debug!(peer = %self.peer, "closing idle client connection");
                    self.state.metrics.client_connections_idle_closed.inc();
                    closing = true;
                }
                _ = shutdown.changed(), if !closing => closing = true,
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        self.state.metrics.client_connections.dec();
        tracing::debug!("client disconnected");
    }

    /// Serves one request frame; its pending reply joins `owed`. True when no further request
    /// is to be read (the connection closes once `owed` is written).
    async fn serve(
        &self,
        frame: Bytes,
        sasl: &mut Option<SaslSession>,
        owed: &mut FuturesOrdered<PendingReply>,
    ) -> bool {
        let request = match Request::parse(frame) {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(peer = %self.peer, %error, "closing client connection: bad request header");
                owed.push_back(Box::pin(async move { Reply::Close(error.to_string()) }));
                return true;
            }
        };
        let sasl_step = sasl.as_ref().is_some_and(|session| {
            !session.is_authenticated()
                || matches!(
                    request.api_key,
                    ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
                )
        }) && request.api_key != ApiKey::ApiVersions;
        if let (true, Some(session)) = (sasl_step, sasl.as_mut()) {
            let mut delay = None;
            let (reply, close) = match session.handle(&request) {
                Outcome::Continue(reply) => (reply, false),
                Outcome::Authenticated { reply, user } => {
                    tracing::debug!(peer = %self.peer, %user, "client authenticated");
                    (reply, false)
                }
                Outcome::Refused { reply, reason } => {
                    self.state.metrics.client_authentication_failure("sasl");
                    tracing::info!(peer = %self.peer, %reason, "closing client connection: authentication failed");
                    delay = self.state.sasl.as_ref().map(|sasl| sasl.failed_delay);
                    (reply, true)
                }
                Outcome::NotSasl => {
                    let reason = format!("{:?} before SASL authentication", request.api_key);
                    tracing::info!(peer = %self.peer, %reason, "closing client connection");
                    (Reply::Close(reason), true)
                }
            };
            owed.push_back(Box::pin(async move {
                // A failed login is answered late, as a broker does.
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                reply
            }));
            if close {
                owed.push_back(Box::pin(async move {
                    Reply::Close("authentication failed".into())
                }));
            }
            return close;
        }
        let started = Instant::now();
        let api_key = request.api_key;
        let pending = dispatch::submit(&self.state, &self.upstream, request).await;
        let metrics = self.state.metrics.clone();
        owed.push_back(Box::pin(async move {
            let reply = pending.await;
            metrics.client_request(api_key, started.elapsed());
            reply
        }));
        if self.upstream.is_lost() {
            tracing::info!(peer = %self.peer, "closing client connection: a backend connection broke with its requests in flight (the client retries them in order)");
            owed.push_back(Box::pin(async {
                Reply::Close("backend connection lost with requests in flight".into())
            }));
            return true;
        }
        false
    }
}

/// A frame being read from the client, with the read half it is read from.
type FrameRead<R> =
    Pin<Box<dyn Future<Output = (BufReader<R>, Result<Option<Bytes>, codec::FrameError>)> + Send>>;

/// Writes `reply` and every owed reply that is ready behind it, then flushes once. False
/// when the connection is to close: a `Close` reply, or a client that is gone.
async fn write_ready<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    mut reply: Reply,
    owed: &mut FuturesOrdered<PendingReply>,
) -> bool {
    loop {
        match reply {
            Reply::Frame(chunks) => {
                for chunk in &chunks {
                    if writer.write_all(chunk).await.is_err() {
                        return false;
                    }
                }
            }
            Reply::None => {}
            Reply::Close(reason) => {
                tracing::debug!(%reason, "closing client connection");
                return false;
            }
        }
        // (Polled without this task's waker; the caller's next `owed.next()` registers it.)
        match owed.next().now_or_never() {
            Some(Some(next)) => reply = next,
            _ => break,
        }
    }
    writer.flush().await.is_ok()
}
