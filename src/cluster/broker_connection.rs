//! One connection to one backend broker, over any byte stream: a socket opened (and
//! secured, and authenticated) by [`super::transport`], or an in-memory pipe in tests.
//!
//! Shape (after rskafka's messenger): a reader task owns the read half and hands each
//! response to the request waiting for its correlation id. Requests are written in place:
//! [`BrokerConnection::send`] writes its frame to the socket itself when nothing is queued,
//! and hands the write half, with what the socket did not take, to a writer task otherwise.
//! That task writes what is queued behind it and gives the half back once the queue is
//! empty. Waking a writer task for every request cost a second wake-up in the same poll as
//! the client's reply task, and tokio answers two wake-ups in one poll by waking its other
//! worker thread (a futex call, and the request hops threads).
//!
//! Invariants:
//! - Requests reach the broker in the order `send` was called; `send` itself never awaits,
//!   so a caller that calls it in request order keeps that order on the wire. The write half
//!   is in one place at a time, under the pending lock (`send` may write) or with the
//!   writer task (frames queue behind it).
//! - A read or write error poisons the connection: every pending request fails with that
//!   error, later sends fail at once, and the owner opens a new connection.
//! - A waiting request that is dropped (its client went away, or its deadline passed) leaves
//!   its entry until the broker answers; the answer is then discarded. The broker answers
//!   every request it read, so entries do not accumulate.
//! - When every handle is dropped the writer closes the stream once queued frames are
//!   written; the reader stops as soon as no response is awaited.

use foldhash::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, FrameError};
use crate::error::BackendError;
use crate::metrics::BackendFailure;
use crate::sync::lock;

/// The read half of a broker connection's stream.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a broker connection's stream.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Largest response frame accepted from a broker (fetch responses can be large).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// A handle to one broker connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerConnection {
    /// `host:port` of the broker, for errors and logs.
    address: Arc<str>,
    /// Where round trips and failures are counted, labelled with the cluster's name.
    observer: Option<Observer>,
    /// To the writer task, in wire order, while it holds the write half. Unbounded because
    /// the client connection's in-flight window already bounds what one connection can queue.
    outbound: mpsc::UnboundedSender<Outbound>,
    state: Arc<SharedState>,
}

#[derive(Debug)]
struct SharedState {
    next_correlation_id: AtomicI32,
    /// Requests awaiting a response, and the error that poisoned the connection; one lock
    /// so that no request can be registered after the pending set was failed.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<i32, Waiter>,
    poisoned: Option<BackendError>,
    /// Requests were waiting when the connection broke (some may have reached the broker).
    failed_in_flight: bool,
    writer_closed: bool,
    reader: Option<tokio::task::AbortHandle>,
    /// The write half while the writer task has nothing queued: `send` writes in place.
    /// `None` while the writer task holds it, and once the connection is poisoned.
    idle_writer: Option<Writer>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("waiting", &self.waiting.len())
            .field("poisoned", &self.poisoned)
            .field("failed_in_flight", &self.failed_in_flight)
            .field("writer_closed", &self.writer_closed)
            .field("idle_writer", &self.idle_writer.is_some())
            .finish()
    }
}

/// The write half, buffered for the writer task's batches (the buffer is empty whenever
/// the half is idle).
type Writer = BufWriter<WriteHalf>;

/// What the writer task is sent.
enum Outbound {
    /// A frame to write after the ones before it.
    Frame([Bytes; 2]),
    /// The write half, from a `send` that could not finish in place: the rest of its frame
    /// (possibly nothing but the flush) is to be written first.
    Resume(Writer, [Bytes; 2]),
}

#[derive(Debug)]
struct Waiter {
    header_version: i16,
    reply: oneshot::Sender<Result<Bytes, BackendError>>,
}

/// Metrics of the cluster a connection belongs to.
#[derive(Clone, Debug)]
pub struct Observer {
    pub metrics: Arc<crate::metrics::BackendMetrics>,
}

/// The response to one request: the body after the response header.
pub struct ResponseFuture {
    address: Arc<str>,
    receiver: oneshot::Receiver<Result<Bytes, BackendError>>,
    api_key: ApiKey,
    sent_at: std::time::Instant,
    observer: Option<Observer>,
}

impl ResponseFuture {
    /// Waits for the response, at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<Bytes, BackendError> {
        self.wait_until(deadline_after(timeout)).await
    }

    /// Waits for the response until `deadline`: the one deadline of the client request this
    /// belongs to, however many backend answers it awaits in turn.
    pub async fn wait_until(self, deadline: tokio::time::Instant) -> Result<Bytes, BackendError> {
        let result = match tokio::time::timeout_at(deadline, self.receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BackendError::Closed {
                address: self.address,
                reason: "connection dropped".into(),
            }),
            Err(_) => Err(BackendError::Timeout {
                address: self.address,
                after_ms: u64::try_from(self.sent_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        };
        if let Some(observer) = &self.observer {
            let metrics = &observer.metrics;
            match &result {
                Ok(body) => {
                    metrics.request(self.api_key, self.sent_at.elapsed());
                    metrics.received(body.len());
                }
                Err(BackendError::Timeout { .. }) => {
                    metrics.error(self.api_key, BackendFailure::Timeout)
                }
                Err(_) => metrics.error(self.api_key, BackendFailure::Connection),
            }
        }
        result
    }
}

impl BrokerConnection {
    /// Runs a connection over `stream`, already open (and secured and authenticated, if
    /// the cluster asks for that) to the broker at `address`. Spawns the reader and writer
    /// tasks, so it must be called inside a tokio runtime.
    pub fn new<S>(stream: S, address: Arc<str>, observer: Option<Observer>) -> BrokerConnection
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        BrokerConnection::from_halves(Box::new(read_half), Box::new(write_half), address, observer)
    }

    /// Like [`BrokerConnection::new`], over a stream already split in two: a TCP socket's
    /// owned halves need no lock between the reader and the writer
    /// ([`super::transport::Transport::into_halves`]).
    pub fn from_halves(
        read_half: ReadHalf,
        write_half: WriteHalf,
        address: Arc<str>,
        observer: Option<Observer>,
    ) -> BrokerConnection {
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let state = Arc::new(SharedState {
            next_correlation_id: AtomicI32::new(0),
            pending: Mutex::new(Pending {
                idle_writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half)),
                ..Pending::default()
            }),
        });
        let reader = tokio::spawn(run_reader(read_half, state.clone(), address.clone()));
        lock(&state.pending).reader = Some(reader.abort_handle());
        tokio::spawn(run_writer(outbound_rx, state.clone(), address.clone()));
        BrokerConnection {
            address,
            observer,
            outbound,
            state,
        }
    }

    pub fn address(&self) -> &Arc<str> {
        &self.address
    }

    /// True once a read or write error has made this connection unusable.
    pub fn is_poisoned(&self) -> bool {
        lock(&self.state.pending).poisoned.is_some()
    }

    /// True when the connection broke with requests in flight: requests sent after them on
    /// another connection could overtake their retries.
    pub fn failed_in_flight(&self) -> bool {
        lock(&self.state.pending).failed_in_flight
    }

    /// Queues one request that the broker answers.
    pub fn request(
        &self,
        api_key: ApiKey,
        api_version: i16,
        client_id: &StrBytes,
        body: Bytes,
    ) -> Result<ResponseFuture, BackendError> {
        self.send(api_key, api_version, client_id, body, true)?
            .ok_or_else(|| BackendError::Protocol {
                address: self.address.clone(),
                reason: "no response registered".into(),
            })
    }

    /// Queues one request. `Ok(None)` when `expect_response` is false (acks=0 produce):
    /// the broker sends nothing back for it.
    pub fn send(
        &self,
        api_key: ApiKey,
        api_version: i16,
        client_id: &StrBytes,
        body: Bytes,
        expect_response: bool,
    ) -> Result<Option<ResponseFuture>, BackendError> {
        let correlation_id = self
            .state
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed);
        let head =
            codec::request_frame_head(api_key, api_version, correlation_id, client_id, body.len())
                .map_err(|e| BackendError::Protocol {
                    address: self.address.clone(),
                    reason: e.to_string().into(),
                })?;
        if let Some(observer) = &self.observer {
            observer.metrics.sent(body.len());
        }
        let mut pending = lock(&self.state.pending);
        if let Some(error) = &pending.poisoned {
            return Err(error.clone());
        }
        let receiver = if expect_response {
            let (reply, receiver) = oneshot::channel();
            pending.waiting.insert(
                correlation_id,
                Waiter {
                    header_version: api_key.response_header_version(api_version),
                    reply,
                },
            );
            Some(receiver)
        } else {
            None
        };
        // Written or queued under the lock, so frames reach the wire in correlation-id order.
        let frame = [head, body];
        let queued = match pending.idle_writer.take() {
            None => self.outbound.send(Outbound::Frame(frame)).is_ok(),
            Some(mut writer) => match write_in_place(&mut writer, frame) {
                InPlace::Done => {
                    pending.idle_writer = Some(writer);
                    true
                }
                InPlace::Unfinished(rest) => {
                    self.outbound.send(Outbound::Resume(writer, rest)).is_ok()
                }
                InPlace::Failed(e) => {
                    let error = BackendError::Closed {
                        address: self.address.clone(),
                        reason: format!("write failed: {e}").into(),
                    };
                    poison_locked(&mut pending, error.clone());
                    return Err(error);
                }
            },
        };
        if !queued {
            pending.waiting.remove(&correlation_id);
            return Err(BackendError::Closed {
                address: self.address.clone(),
                reason: "connection writer stopped".into(),
            });
        }
        Ok(receiver.map(|receiver| ResponseFuture {
            address: self.address.clone(),
            receiver,
            api_key,
            sent_at: std::time::Instant::now(),
            observer: self.observer.clone(),
        }))
    }
}

/// `timeout` from now; a year from now if that does not fit an `Instant` (configured
/// durations are bounded well below, see [`crate::config::MAX_DURATION_MS`]).
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Fails every pending request with `error` and refuses new ones.
fn poison(state: &SharedState, error: BackendError) {
    poison_locked(&mut lock(&state.pending), error);
}

fn poison_locked(pending: &mut Pending, error: BackendError) {
    if pending.poisoned.is_none() {
        tracing::debug!(%error, "backend connection failed");
        pending.poisoned = Some(error.clone());
    }
    pending.failed_in_flight |= !pending.waiting.is_empty();
    for (_, waiter) in pending.waiting.drain() {
        let _ = waiter.reply.send(Err(error.clone()));
    }
}

/// Write buffer of a broker connection's writer task, which batches queued frames into one
/// flush. Larger frames bypass it.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How a frame written in place went.
enum InPlace {
    /// On the wire (or in the stream's own buffer, flushed).
    Done,
    /// The stream would block: the rest of the frame, for the writer task.
    Unfinished([Bytes; 2]),
    Failed(std::io::Error),
}

/// Writes `frame` to `writer`'s stream without waiting: as much as it takes now, then a
/// flush (a TLS stream keeps records in its own buffer until then). The stream registers no
/// useful wake-up (the waker is a no-op), so whatever is left goes to the writer task,
/// which polls the stream again with its own waker.
fn write_in_place(writer: &mut Writer, mut frame: [Bytes; 2]) -> InPlace {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let stream = writer.get_mut();
    while !frame[0].is_empty() || !frame[1].is_empty() {
        let slices = [
            std::io::IoSlice::new(&frame[0]),
            std::io::IoSlice::new(&frame[1]),
        ];
        match Pin::new(&mut *stream).poll_write_vectored(&mut cx, &slices) {
            Poll::Ready(Ok(0)) => {
                return InPlace::Failed(std::io::ErrorKind::WriteZero.into());
            }
            Poll::Ready(Ok(written)) => {
                let first = written.min(frame[0].len());
                bytes::Buf::advance(&mut frame[0], first);
                bytes::Buf::advance(&mut frame[1], written - first);
            }
            Poll::Ready(Err(e)) => return InPlace::Failed(e),
            Poll::Pending => return InPlace::Unfinished(frame),
        }
    }
    match Pin::new(stream).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => InPlace::Done,
        Poll::Ready(Err(e)) => InPlace::Failed(e),
        Poll::Pending => InPlace::Unfinished(frame),
    }
}

/// Holds the write half while frames queue behind a `send` that could not finish in place;
/// gives it back once the queue is empty. Closes the stream when every handle is dropped.
async fn run_writer(
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    state: Arc<SharedState>,
    address: Arc<str>,
) {
    let mut writer: Option<Writer> = None;
    while let Some(message) = outbound.recv().await {
        let mut next = Some(message);
        let mut result = Ok(());
        // Write what is queued, then flush; give the half back when nothing more came in
        // meanwhile (checked under the lock `send` queues under).
        while let Some(message) = next.take() {
            result = match message {
                Outbound::Resume(half, rest) => {
                    let half = writer.insert(half);
                    write_frame(half, &rest).await
                }
                Outbound::Frame(frame) => match writer.as_mut() {
                    Some(half) => write_frame(half, &frame).await,
                    // Frames queue only behind a Resume, which brought the half.
                    None => Err(std::io::Error::other("frame queued without the write half")),
                },
            };
            if result.is_err() {
                break;
            }
            next = outbound.try_recv().ok();
            if next.is_none() {
                if let Some(half) = writer.as_mut() {
                    result = half.flush().await;
                }
                if result.is_err() {
                    break;
                }
                let mut pending = lock(&state.pending);
                next = outbound.try_recv().ok();
                if next.is_none() && pending.poisoned.is_none() {
                    pending.idle_writer = writer.take();
                }
            }
        }
        if let Err(e) = result {
            poison(
                &state,
                BackendError::Closed {
                    address: address.clone(),
                    reason: format!("write failed: {e}").into(),
                },
            );
            return;
        }
    }
    let idle = lock(&state.pending).idle_writer.take();
    if let Some(mut half) = writer.or(idle) {
        let _ = half.shutdown().await;
    }
    let mut pending = lock(&state.pending);
    pending.writer_closed = true;
    if pending.waiting.is_empty() {
        if let Some(reader) = pending.reader.take() {
            reader.abort();
        }
    }
}

async fn write_frame(writer: &mut Writer, frame: &[Bytes; 2]) -> std::io::Result<()> {
    for chunk in frame {
        writer.write_all(chunk).await?;
    }
    Ok(())
}

/// How far away the runtime's earliest timer deadline is kept by [`keep_timer_armed`].
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Keeps a timer deadline at most [`TIMER_TICK`] away in the runtime, so that the request
/// timeouts [`ResponseFuture::wait`] sets (seconds away) are never its earliest deadline.
/// tokio wakes the worker parked on its I/O driver whenever a timer earlier than that
/// worker's own wake-up is set; without this tick that was one eventfd write and one extra
/// `epoll_wait` return per backend request (`strace -c` over 3,000 produces: 3,466 writes
/// and 9,299 `epoll_wait`, against 23 and 6,446 without a per-request timer). Ten wake-ups a
/// second for the whole process instead. Runs until `shutdown` changes or is dropped.
pub async fn keep_timer_armed(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The read buffer a broker connection keeps between answers, as the `BufReader` it
/// replaces did: a small answer's length prefix and body (and often the next answers') in
/// one read.
const SMALL_CHUNK_BYTES: usize = 8 * 1024;
/// The largest buffer read into before a frame's length is known.
const LARGE_CHUNK_BYTES: usize = 1024 * 1024;
/// Frames shorter than this are copied out of the read buffer, which is then reused; longer
/// ones are split off it.
const COPY_BELOW_BYTES: usize = 4 * 1024;

/// The response frames of one broker connection, read into a buffer.
///
/// A `BufReader` of 8 KiB copied every answer out of its buffer into the answer's own:
/// 8 KiB of memcpy per 16 KiB fetch answer (~2,000 instructions, callgrind). Here a large
/// answer read whole is split off the buffer it was read into, without a copy. After a
/// large answer the next read goes into a buffer of about that answer's size (answers of a
/// fetch connection come in runs of alike sizes), which is let go as soon as nothing is
/// left in it: an idle connection keeps at most [`SMALL_CHUNK_BYTES`]. A small answer (a
/// produce's) is copied out, as before: a buffer per answer would cost two allocations.
struct FrameReader {
    half: ReadHalf,
    buffer: BytesMut,
    /// What to read into when the buffer is empty: the last frame's size rounded up to a
    /// power of two, within [`SMALL_CHUNK_BYTES`] and [`LARGE_CHUNK_BYTES`].
    chunk: usize,
}

impl FrameReader {
    fn new(half: ReadHalf) -> FrameReader {
        FrameReader {
            half,
            buffer: BytesMut::new(),
            chunk: SMALL_CHUNK_BYTES,
        }
    }

    /// The next frame's body (after its length prefix); `Ok(None)` at a clean end of
    /// stream between frames.
    async fn next(&mut self, limit: usize) -> Result<Option<Bytes>, FrameError> {
        loop {
            let wanted = match self.buffer.get(..4) {
                Some(prefix) => {
                    let length = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
                    let length =
                        usize::try_from(length).map_err(|_| FrameError::NegativeLength(length))?;
                    if length > limit {
                        return Err(FrameError::TooLarge { length, limit });
                    }
                    if self.buffer.len() >= 4 + length {
                        return Ok(Some(self.take(length)));
                    }
                    4 + length - self.buffer.len()
                }
                None => self.chunk,
            };
            // Room for the rest of the frame, or a chunk: a reallocation copies what of the
            // frame is read, at most one chunk, once.
            if self.buffer.capacity() - self.buffer.len() < wanted.min(self.chunk) {
                self.buffer.reserve(wanted.max(self.chunk));
            }
            if self.half.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// The frame of `length` bytes at the start of the buffer, which holds all of it.
    fn take(&mut self, length: usize) -> Bytes {
        self.buffer.advance(4);
        // A power of two: the next answer of a run is rarely exactly as long.
        self.chunk = (4 + length)
            .next_power_of_two()
            .clamp(SMALL_CHUNK_BYTES, LARGE_CHUNK_BYTES);
        let frame = if length < COPY_BELOW_BYTES {
            let frame = Bytes::copy_from_slice(&self.buffer[..length]);
            self.buffer.advance(length);
            frame
        } else {
            self.buffer.split_to(length).freeze()
        };
        if self.buffer.is_empty() && self.buffer.capacity() > SMALL_CHUNK_BYTES {
            self.buffer = BytesMut::new();
        }
        frame
    }
}

async fn run_reader(read_half: ReadHalf, state: Arc<SharedState>, address: Arc<str>) {
    let mut frames = FrameReader::new(read_half);
    let closed = |reason: String| BackendError::Closed {
        address: address.clone(),
        reason: reason.into(),
    };
    let error = loop {
        let frame = match frames.next(MAX_RESPONSE_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break closed("broker closed the connection".into()),
            Err(FrameError::Io(e)) => break closed(format!("read failed: {e}")),
            Err(e) => {
                break BackendError::Protocol {
                    address: address.clone(),
                    reason: e.to_string().into(),
                }
            }
        };
        let Some(correlation_id) = codec::response_correlation_id(&frame) else {
            break BackendError::Protocol {
                address: address.clone(),
                reason: "response shorter than its header".into(),
            };
        };
        let waiter = lock(&state.pending).waiting.remove(&correlation_id);
        let Some(waiter) = waiter else {
            break BackendError::Protocol {
                address: address.clone(),
                reason: format!("response to unknown correlation id {correlation_id}").into(),
            };
        };
        let body = codec::split_response(frame, waiter.header_version)
            .map(|(_, body)| body)
            .map_err(|e| BackendError::Protocol {
                address: address.clone(),
                reason: e.to_string().into(),
            });
        let _ = waiter.reply.send(body);
        let pending = lock(&state.pending);
        if pending.writer_closed && pending.waiting.is_empty() {
            return;
        }
    };
    poison(&state, error);
}

#[cfg(test)]
mod tests {
    //! The connection driven over an in-memory pipe (`tokio::io::duplex`), with the test
    //! playing the broker on the other end, as rskafka's messenger tests do.

    use super::*;
    use tokio::io::DuplexStream;

    /// Metadata v12: flexible, so answers carry a response header with tagged fields (v1),
    /// which the reader must strip by the version the request registered.
    const API: ApiKey = ApiKey::Metadata;
    const VERSION: i16 = 12;
    const PATIENCE: Duration = Duration::from_secs(5);

    /// The broker's end of the pipe: reads kshift's requests, answers as the test says.
    struct FakeBroker {
        stream: DuplexStream,
    }

    impl FakeBroker {
        async fn request(&mut self) -> codec::Request {
            let frame = codec::read_frame(&mut self.stream, 1 << 20)
                .await
                .expect("a request frame")
                .expect("the connection is open");
            codec::Request::parse(frame).expect("a well-formed request header")
        }

        async fn answer(&mut self, request: &codec::Request, body: &[u8]) {
            self.answer_as(request, request.correlation_id, body).await;
        }

        async fn answer_as(&mut self, request: &codec::Request, correlation_id: i32, body: &[u8]) {
            let head = codec::response_frame_head(
                request.api_key,
                request.api_version,
                correlation_id,
                body.len(),
            )
            .unwrap();
            self.write(&head).await;
            self.write(body).await;
        }

        async fn write(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
            self.stream.flush().await.unwrap();
        }
    }

    fn connection_with(observer: Option<Observer>) -> (BrokerConnection, FakeBroker) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let connection = BrokerConnection::new(ours, "broker-7:9092".into(), observer);
        (connection, FakeBroker { stream: theirs })
    }

    fn connection() -> (BrokerConnection, FakeBroker) {
        connection_with(None)
    }

    fn try_send(
        connection: &BrokerConnection,
        body: &'static str,
    ) -> Result<ResponseFuture, BackendError> {
        connection.request(
            API,
            VERSION,
            &StrBytes::from_static_str("test"),
            Bytes::from_static(body.as_bytes()),
        )
    }

    fn send(connection: &BrokerConnection, body: &'static str) -> ResponseFuture {
        try_send(connection, body).expect("the connection takes the request")
    }

    async fn answer_of(response: ResponseFuture) -> Result<String, BackendError> {
        let body = response.wait(PATIENCE).await?;
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    /// Waits until the reader has noticed what the broker did (it runs as its own task).
    async fn until_poisoned(connection: &BrokerConnection) {
        tokio::time::timeout(PATIENCE, async {
            while !connection.is_poisoned() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the connection is poisoned");
    }

    #[tokio::test]
    async fn pipelined_requests_reach_the_broker_in_order_and_each_gets_its_own_answer() {
        let (connection, mut broker) = connection();
        let broker = tokio::spawn(async move {
            // All three are read before the first is answered: pipelined on one stream.
            let mut requests = Vec::new();
            for _ in 0..3 {
                requests.push(broker.request().await);
            }
            for request in &requests {
                let body = format!("answer to {}", String::from_utf8_lossy(&request.body));
                broker.answer(request, body.as_bytes()).await;
            }
            let seen: Vec<(i32, String)> = requests
                .iter()
                .map(|request| {
                    (
                        request.correlation_id,
                        String::from_utf8_lossy(&request.body).into_owned(),
                    )
                })
                .collect();
            // Handed back with the broker's end, which stays open.
            (seen, broker)
        });
        let one = send(&connection, "one");
        let two = send(&connection, "two");
        let three = send(&connection, "three");
        // Awaited last first: each answer still reaches the request it belongs to.
        assert_eq!(answer_of(three).await.unwrap(), "answer to three");
        assert_eq!(answer_of(one).await.unwrap(), "answer to one");
        assert_eq!(answer_of(two).await.unwrap(), "answer to two");
        let (seen, _broker) = broker.await.unwrap();
        let bodies: Vec<&str> = seen.iter().map(|(_, body)| body.as_str()).collect();
        assert_eq!(bodies, ["one", "two", "three"], "wire order is send order");
        let ids: Vec<i32> = seen.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(!connection.is_poisoned());
    }

    #[tokio::test]
    async fn a_frame_the_stream_cannot_take_at_once_keeps_its_place_ahead_of_later_ones() {
        // The pipe holds 64 KiB: the first frame is written in place only in part, the rest
        // and the two frames sent behind it go through the writer task, and the write half
        // comes back for the fourth.
        let (connection, mut broker) = connection();
        let large = Bytes::from(vec![b'x'; 300 * 1024]);
        let client = StrBytes::from_static_str("test");
        let first = connection
            .request(API, VERSION, &client, large.clone())
            .unwrap();
        let second = send(&connection, "second");
        let third = send(&connection, "third");
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let request = broker.request().await;
            broker.answer(&request, b"ok").await;
            bodies.push(request.body);
        }
        assert_eq!(bodies[0], large);
        assert_eq!(&bodies[1][..], b"second");
        assert_eq!(&bodies[2][..], b"third");
        for response in [first, second, third] {
            assert_eq!(answer_of(response).await.unwrap(), "ok");
        }
        let fourth = send(&connection, "fourth");
        let request = broker.request().await;
        assert_eq!(&request.body[..], b"fourth");
        broker.answer(&request, b"ok").await;
        assert_eq!(answer_of(fourth).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn an_answer_to_an_unknown_correlation_id_fails_every_waiter_and_poisons_the_connection()
    {
        let (connection, mut broker) = connection();
        let one = send(&connection, "one");
        let two = send(&connection, "two");
        let first = broker.request().await;
        broker.request().await;
        broker.answer_as(&first, 999, b"whose?").await;
        let errors = [
            answer_of(one).await.unwrap_err(),
            answer_of(two).await.unwrap_err(),
        ];
        for error in &errors {
            assert!(
                matches!(error, BackendError::Protocol { reason, .. } if reason.contains("unknown correlation id 999")),
                "{error}"
            );
        }
        assert_eq!(
            errors[0].to_string(),
            errors[1].to_string(),
            "one error for all"
        );
        assert!(connection.is_poisoned());
        assert!(connection.failed_in_flight());
        // Never reused: a later request fails at once with the same error, unsent.
        let later = try_send(&connection, "")
            .err()
            .expect("a poisoned connection refuses requests");
        assert_eq!(later.to_string(), errors[0].to_string());
    }

    #[tokio::test]
    async fn a_frame_that_cannot_be_an_answer_fails_every_waiter_and_poisons_the_connection() {
        let too_large = i32::try_from(MAX_RESPONSE_BYTES + 1).unwrap().to_be_bytes();
        let cases: [(&str, &[u8]); 3] = [
            ("shorter than its header", &[0, 0, 0, 2, 0, 1]),
            ("negative frame length", &(-5i32).to_be_bytes()),
            ("exceeds the limit", &too_large),
        ];
        for (expected, frame) in cases {
            let (connection, mut broker) = connection();
            let one = send(&connection, "one");
            let two = send(&connection, "two");
            broker.request().await;
            broker.request().await;
            broker.write(frame).await;
            for response in [one, two] {
                let error = answer_of(response).await.unwrap_err();
                assert!(
                    matches!(&error, BackendError::Protocol { reason, .. } if reason.contains(expected)),
                    "{expected}: {error}"
                );
            }
            assert!(connection.is_poisoned(), "{expected}");
            assert!(connection.failed_in_flight(), "{expected}");
            assert!(try_send(&connection, "").is_err());
        }
    }

    #[tokio::test]
    async fn an_answer_whose_header_does_not_decode_fails_only_its_own_request() {
        // The frame's length still says where the next answer starts, so the stream is in
        // step and the connection carries on.
        let (connection, mut broker) = connection();
        let one = send(&connection, "one");
        let two = send(&connection, "two");
        let first = broker.request().await;
        let second = broker.request().await;
        // Header v1: the correlation id, then one tagged field of 10 bytes that never come.
        let mut frame = 7i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&first.correlation_id.to_be_bytes());
        frame.extend_from_slice(&[1, 0, 10]);
        broker.write(&frame).await;
        broker.answer(&second, b"fine").await;
        let error = answer_of(one).await.unwrap_err();
        assert!(
            matches!(&error, BackendError::Protocol { reason, .. } if reason.contains("response header")),
            "{error}"
        );
        assert_eq!(answer_of(two).await.unwrap(), "fine");
        assert!(!connection.is_poisoned());
    }

    #[tokio::test]
    async fn a_broker_that_closes_fails_its_waiters_and_every_later_request() {
        let (connection, mut broker) = connection();
        let one = send(&connection, "one");
        let two = send(&connection, "two");
        broker.request().await;
        broker.request().await;
        drop(broker);
        for response in [one, two] {
            let error = answer_of(response).await.unwrap_err();
            assert!(
                matches!(&error, BackendError::Closed { reason, .. } if reason.contains("broker closed the connection")),
                "{error}"
            );
        }
        assert!(connection.is_poisoned());
        assert!(connection.failed_in_flight());
        let later = try_send(&connection, "")
            .err()
            .expect("a closed connection refuses requests");
        assert!(matches!(later, BackendError::Closed { .. }), "{later}");

        // Closed while idle: later requests fail too, but nothing was in flight (so its
        // owner may open a new connection without reordering anything).
        let (connection, broker) = self::connection();
        drop(broker);
        until_poisoned(&connection).await;
        assert!(!connection.failed_in_flight());
        assert!(try_send(&connection, "").is_err());
    }

    #[tokio::test]
    async fn a_timeout_fails_only_its_request_and_the_late_answer_is_discarded() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let observer = Observer {
            metrics: metrics.backend(&"old".into()),
        };
        let (connection, mut broker) = connection_with(Some(observer));
        let slow = send(&connection, "slow");
        let slow_request = broker.request().await;
        let error = slow.wait(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(error, BackendError::Timeout { .. }), "{error}");
        assert!(
            !connection.is_poisoned(),
            "a timeout does not break the connection"
        );
        let next = send(&connection, "next");
        let next_request = broker.request().await;
        // The broker answers in order: the timed-out request first, to no one.
        broker.answer(&slow_request, b"too late").await;
        broker.answer(&next_request, b"on time").await;
        assert_eq!(answer_of(next).await.unwrap(), "on time");
        assert!(!connection.is_poisoned());
        let exposition = metrics.exposition();
        let line = |name: &str| {
            exposition
                .lines()
                .find(|line| line.starts_with(name) && line.contains("api=\"Metadata\""))
                .map(str::to_string)
        };
        let errors = line("kshift_backend_errors_total").expect(&exposition);
        assert!(
            errors.contains("error=\"timeout\"") && errors.ends_with(" 1"),
            "{errors}"
        );
        let requests = line("kshift_backend_requests_total").expect(&exposition);
        assert!(requests.ends_with(" 1"), "{requests}");
    }

    #[tokio::test]
    async fn dropping_every_handle_closes_the_stream_after_what_was_queued() {
        let (connection, mut broker) = connection();
        let _response = connection
            .send(
                ApiKey::Produce,
                3,
                &StrBytes::from_static_str("test"),
                Bytes::from_static(b"acks=0"),
                false,
            )
            .unwrap();
        drop(connection);
        assert_eq!(&broker.request().await.body[..], b"acks=0");
        let end = tokio::time::timeout(PATIENCE, codec::read_frame(&mut broker.stream, 1 << 20))
            .await
            .expect("the stream is closed")
            .unwrap();
        assert!(
            end.is_none(),
            "the stream ends cleanly after the last frame"
        );
    }

    /// `sizes` frames (each body its size's bytes of one value) written through a pipe of
    /// `pipe` bytes, so that reads end anywhere; then the end of the stream.
    async fn frames_read_back(sizes: &[usize], pipe: usize) -> Vec<Bytes> {
        let (mut near, far) = tokio::io::duplex(pipe);
        let mut wire = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            wire.extend_from_slice(&u32::try_from(size).unwrap().to_be_bytes());
            wire.extend(std::iter::repeat_n(i as u8, size));
        }
        let writer = tokio::spawn(async move {
            near.write_all(&wire).await.unwrap();
        });
        let mut frames = FrameReader::new(Box::new(far));
        let mut read = Vec::new();
        while let Some(frame) = frames.next(1 << 24).await.expect("a whole frame") {
            read.push(frame);
        }
        writer.await.unwrap();
        read
    }

    #[tokio::test]
    async fn frames_come_whole_however_the_reads_cut_them() {
        let small = [0, 10, 1, 300, COPY_BELOW_BYTES];
        let all = [
            0,
            10,
            SMALL_CHUNK_BYTES - 4,
            16 * 1024,
            16 * 1024 + 1,
            COPY_BELOW_BYTES,
            LARGE_CHUNK_BYTES + 1,
            3 * LARGE_CHUNK_BYTES,
            100,
            1,
        ];
        // A pipe of a byte or an odd size cuts length prefixes too.
        for (sizes, pipe) in [(&small[..], 1), (&all[..], 4095), (&all[..], 1 << 20)] {
            let frames = frames_read_back(sizes, pipe).await;
            assert_eq!(frames.len(), sizes.len(), "pipe of {pipe}");
            for (i, (frame, &size)) in frames.iter().zip(sizes).enumerate() {
                assert_eq!(frame.len(), size, "frame {i}, pipe of {pipe}");
                assert!(
                    frame.iter().all(|&b| b == i as u8),
                    "frame {i}, pipe of {pipe}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_by_the_end_of_the_stream_is_truncated() {
        for wire in [&[0u8, 0][..], &[0, 0, 0, 5, 1, 2][..]] {
            let mut frames = FrameReader::new(Box::new(wire));
            assert!(
                matches!(frames.next(1 << 20).await, Err(FrameError::Truncated)),
                "{wire:?}"
            );
        }
        let mut frames = FrameReader::new(Box::new(&[0u8, 0, 0, 1, 7][..]));
        assert_eq!(frames.next(1 << 20).await.unwrap().unwrap().as_ref(), [7]);
        assert!(frames.next(1 << 20).await.unwrap().is_none(), "a clean end");
    }

    #[tokio::test]
    async fn a_frame_read_whole_is_not_shared_with_the_reader_once_it_moves_on() {
        let mut frames = FrameReader::new(Box::new(&[0u8, 0, 0, 3, 1, 2, 3][..]));
        let frame = frames.next(1 << 20).await.unwrap().unwrap();
        // The reader let go of the chunk: the frame can be patched in place.
        assert!(frame.try_into_mut().is_ok());
    }
}
