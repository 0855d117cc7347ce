//! One client socket: a reader that decodes request frames and submits them, and a writer
//! that sends the replies back.
//!
//! Invariants:
//! - Replies leave in the order requests arrived: the reader hands each request's pending
//!   reply to the writer, which awaits them concurrently and writes them in arrival order.
//! - Pending replies progress on the writer's task while the reader awaits a submission:
//!   a reply's future may hold a lock a later submission waits for (a cluster's control
//!   connection, held across a connect). Serving both from one task was tried (fewer
//!   wake-ups) and deadlocked a producer across a broker crash (`tests/faults.rs`).
//! - At most `max_in_flight_requests` requests are in flight — read, submitted and not yet
//!   answered; while that many are, the reader does not read the socket (TCP
//!   backpressure), as a broker does.
//! - Every frame's bytes count against the proxy-wide request budget
//!   (`queued_max_request_bytes`) from before its body is read until it is answered: at
//!   the budget, no connection reads a further frame — before SASL authentication too.
//! - Requests are submitted to backends in arrival order ([`dispatch::submit`] finishes
//!   sending before the next request is read), so a producer's pipelined batches reach the
//!   broker in the order it sent them.
//! - A connection that sends no request for `idle_timeout_ms` is closed (answers owed are
//!   still written first).
//! - A frame kshift cannot parse closes the connection after the replies already owed
//!   have been written — the broker's behaviour. Nothing else is affected.
//! - A frame with an unreadable header closes the connection, and no later frame is read.
//! - Authentication (`auth`) is a layer between the reader and dispatch: it runs in the
//!   reader, in request order, and what it does not pass is never dispatched.

mod auth;
mod in_order;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::cluster::UpstreamConnections;
use crate::codec::{self, Request};
use crate::dispatch;
use crate::error::Source;
use crate::handler::{ready, PendingReply, Reply};
use crate::handlers::fetch::positions::ReadPositions;
use crate::state::ProxyState;
use auth::{Auth, Gate};
use in_order::InOrder;

/// Read and write buffer of each client connection. Small, because every idle connection
/// holds both (the read buffer zero-filled): 64 KiB each made an idle connection cost ~37 KiB
/// of resident memory, 4 KiB (and the boxed submit below) ~13 KiB (`benches/scale.rs`). Frames larger than the buffer bypass it — a
/// produce body is read straight into its own allocation, a fetch answer written straight
/// from its chunks — so the size only decides how many small frames share one syscall.
const CLIENT_BUFFER_BYTES: usize = 4 * 1024;

pub struct ClientConnection {
    state: Arc<ProxyState>,
    peer: SocketAddr,
    /// This connection's own backend connections; dropped (and closed) with it.
    upstream: Arc<UpstreamConnections>,
    /// Which cluster this client's read positions belong to, per partition.
    positions: Arc<ReadPositions>,
}

impl ClientConnection {
    pub fn new(state: Arc<ProxyState>, peer: SocketAddr) -> ClientConnection {
        ClientConnection {
            state,
            peer,
            upstream: Arc::default(),
            positions: Arc::default(),
        }
    }

    /// Counts a frame kshift could not read as the client's failure (its api unknown).
    fn count_client_failure(&self) {
        self.state
            .metrics
            .request_failure(None, Source::Client.label(), None, false);
    }

    /// Serves the connection whose (plain or TLS) halves are `read_half`, `write_half`.
    pub async fn run<R, W>(self, read_half: R, write_half: W, mut shutdown: watch::Receiver<bool>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tracing::debug!("client connected");
        self.state.metrics.client_connections.inc();
        let mut auth = Auth::new(self.state.sasl.clone(), self.peer);
        // One permit per request in flight, taken before the request is read and given back
        // when it is answered: with all taken, the socket is not read (backpressure).
        let window = Arc::new(Semaphore::new(self.state.config.max_in_flight_requests));
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let mut writer = tokio::spawn(write_replies(write_half, replies_rx));
        let mut writer_done = false;
        let mut reader = BufReader::with_capacity(CLIENT_BUFFER_BYTES, read_half);
        let limit = self.state.config.max_frame_bytes;
        let idle_timeout = std::time::Duration::from_millis(self.state.config.idle_timeout_ms);
        // One idle timer per connection, moved only when it fires: setting a timer per
        // request made it the runtime's earliest deadline each time, which wakes a parked
        // worker thread (an eventfd write and a context switch per request).
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // Made once: a `changed()` per select registered and removed a waiter on the
        // watch's notifier each time (~600 instructions per request, callgrind).
        let stopping = shutdown.changed();
        tokio::pin!(stopping);
        loop {
            let permit = tokio::select! {
                permit = window.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = &mut stopping => break,
                _ = &mut writer => {
                    writer_done = true;
                    break;
                }
            };
            // Idle = no request read for `idle_timeout_ms` (Kafka's connections.max.idle.ms)
            // since this read started.
            let read_started = Instant::now();
            let budget = &self.state.request_budget;
            let read = async {
                let Some(length) = codec::read_frame_length(&mut reader, limit).await? else {
                    return Ok(None);
                };
                // Frames are at most max_frame_bytes (≤ 1 GiB) and the budget at least that.
                let permits = u32::try_from(length).unwrap_or(u32::MAX);
                let Ok(held) = budget.clone().acquire_many_owned(permits).await else {
                    return Ok(None);
                };
                let frame = codec::read_frame_body(&mut reader, length).await?;
                Ok::<_, codec::FrameError>(Some((frame, held)))
            };
            tokio::pin!(read);
            let frame = loop {
                tokio::select! {
                    frame = &mut read => break Some(frame),
                    _ = &mut idle => {
                        let deadline = read_started + idle_timeout;
                        if Instant::now() < deadline {
                            idle.as_mut().reset(deadline);
                            continue;
                        }
                        tracing::debug!(peer = %self.peer, "closing idle client connection");
                        self.state.metrics.client_connections_idle_closed.inc();
                        break None;
                    }
                    _ = &mut stopping => break None,
                    _ = &mut writer => {
                        writer_done = true;
                        break None;
                    }
                }
            };
            let Some(frame) = frame else { break };
            let (frame, held) = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::info!(peer = %self.peer, %error, "closing client connection: unreadable frame");
                    self.count_client_failure();
                    break;
                }
            };
            let request = match Request::parse(frame) {
                Ok(request) => request,
                Err(error) => {
                    tracing::info!(peer = %self.peer, %error, "closing client connection: bad request header");
                    self.count_client_failure();
                    let _ = replies.send(ready(Reply::Close(error.to_string())));
                    break;
                }
            };
            let request = match auth.gate(request, &self.state.metrics) {
                Gate::Pass(request) => request,
                Gate::Answered(reply) => {
                    drop((permit, held));
                    if replies.send(reply).is_err() {
                        break;
                    }
                    continue;
                }
                Gate::Close(reply) => {
                    let _ = replies.send(reply);
                    let _ = replies.send(Box::pin(async move {
                        Reply::Close("authentication failed".into())
                    }));
                    break;
                }
            };
            let started = std::time::Instant::now();
            let api_key = request.api_key;
            // A forward on an open connection needs no await, and no submit future.
            let pending =
                match dispatch::submit_now(&self.state, &self.upstream, &self.positions, request) {
                    Ok(pending) => pending,
                    // Boxed: the largest handler's submit future would otherwise sit inside
                    // every connection's task, idle ones too (~3 KiB each, benches/scale.rs).
                    Err(deferred) => {
                        Box::pin(dispatch::submit(
                            &self.state,
                            &self.upstream,
                            &self.positions,
                            deferred,
                        ))
                        .await
                    }
                };
            let metrics = self.state.metrics.clone();
            let reply: PendingReply = Box::pin(async move {
                let reply = pending.await;
                drop((permit, held));
                metrics.client_request(api_key, started.elapsed());
                reply
            });
            if replies.send(reply).is_err() {
                break;
            }
            if self.upstream.is_lost() {
                tracing::info!(peer = %self.peer, "closing client connection: a backend connection broke with its requests in flight (the client retries them in order)");
                let _ = replies.send(Box::pin(async {
                    Reply::Close("backend connection lost with requests in flight".into())
                }));
                break;
            }
        }
        drop(replies);
        // (A finished JoinHandle must not be polled again: it panics.)
        if !writer_done {
            let _ = writer.await;
        }
        self.state.metrics.client_connections.dec();
        tracing::debug!("client disconnected");
    }
}

/// Awaits the pending replies concurrently and writes them in the order their requests
/// arrived (the reader's permits bound how many there are).
async fn write_replies<W: AsyncWrite + Unpin>(
    write_half: W,
    mut replies: mpsc::UnboundedReceiver<PendingReply>,
) {
    let mut writer = BufWriter::with_capacity(CLIENT_BUFFER_BYTES, write_half);
    let mut in_flight = InOrder::new();
    let mut reading = true;
    loop {
        // The next reply in order, once the reader has handed over all it has.
        let next = std::future::poll_fn(|cx| {
            while reading {
                match replies.poll_recv(cx) {
                    Poll::Ready(Some(pending)) => in_flight.push_back(pending),
                    Poll::Ready(None) => reading = false,
                    Poll::Pending => break,
                }
            }
            match in_flight.poll_next(cx) {
                Poll::Ready(None) if reading => Poll::Pending,
                polled => polled,
            }
        })
        .await;
        match next {
            None => break,
            Some(Reply::Frame { head, body }) => {
                // One vectored write: head and body written in turn made an answer larger
                // than the buffer two syscalls, its 9-byte head a TCP segment of its own.
                let mut frame = (&head[..]).chain(&body[..]);
                if writer.write_all_buf(&mut frame).await.is_err() {
                    return;
                }
            }
            // An acks=0 produce: nothing to write, but what was buffered may wait for a flush.
            Some(Reply::None) => {}
            Some(Reply::Close(reason)) => {
                tracing::debug!(%reason, "closing client connection");
                break;
            }
        }
        if replies.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
