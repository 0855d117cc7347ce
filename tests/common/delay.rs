//! A TCP delay proxy: a far link on loopback. It listens on `127.0.0.1:0`, opens its own
//! upstream connection for each connection it accepts, and delivers every byte in both
//! directions a fixed one-way delay after it arrived, without limiting throughput (this kernel
//! has no netem; see DESIGN.md, "Real cluster shapes").
//!
//! How: per direction, a reader stamps each chunk it reads with `arrival + one_way` and queues
//! it; a writer sends each chunk once it is due. Nothing sleeps per read, so a link carries as
//! many bytes per delay as arrive in it; only the queue is bounded: at [`IN_FLIGHT_BYTES`] per
//! direction (far more than a bandwidth-delay product) the reader stops reading, which is the
//! backpressure a full link gives. An end of stream is delayed like the bytes before it and
//! passed on as a half-close; an error on either side ends the whole connection.
//!
//! Dropping a [`DelayProxy`] stops it: the accept loop and every connection are aborted.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Most bytes one read takes off a socket (one queued chunk at most).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes queued per direction of a connection before its reader stops reading.
pub const IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// A running delay proxy; see the module doc.
pub struct DelayProxy {
    addr: SocketAddr,
    one_way: Duration,
    /// Where accepted connections go; `None` until [`DelayProxy::set_upstream`] (connections
    /// accepted before wait for it).
    upstream: watch::Sender<Option<SocketAddr>>,
    /// The accept loop; it owns every connection's task (a `JoinSet`), so aborting it on drop
    /// ends them all.
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// A proxy in front of `upstream`, delaying each direction by `one_way`. Must be called
    /// within a tokio runtime.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        let proxy = DelayProxy::bind(one_way);
        proxy.set_upstream(upstream);
        proxy
    }

    /// A proxy whose upstream is not known yet: its port can be advertised by the server it
    /// will front before that server starts. Give the upstream with
    /// [`DelayProxy::set_upstream`]; connections accepted before wait for it.
    pub fn bind(one_way: Duration) -> DelayProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .expect("bind the delay proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("delay proxy address");
        let listener = TcpListener::from_std(listener).expect("delay proxy inside a tokio runtime");
        let (upstream, upstream_receiver) = watch::channel(None);
        let accept = tokio::spawn(accept_loop(listener, upstream_receiver, one_way));
        DelayProxy {
            addr,
            one_way,
            upstream,
            accept,
        }
    }

    /// Sets (or changes, for connections accepted from now on) where connections go.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.upstream.send_replace(Some(upstream));
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delay added to each direction.
    pub fn one_way(&self) -> Duration {
        self.one_way
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: watch::Receiver<Option<SocketAddr>>,
    one_way: Duration,
) {
    // Dropped with this task when the proxy is dropped: that aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _peer)) = accepted else { continue };
                let upstream = upstream.clone();
                connections.spawn(async move {
                    // Its end (a peer closed, an upstream refused) concerns only this connection.
                    let _ = serve(client, upstream, one_way).await;
                });
            }
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relays one accepted connection both ways until both directions ended or either failed.
async fn serve(
    client: TcpStream,
    mut upstream: watch::Receiver<Option<SocketAddr>>,
    one_way: Duration,
) -> std::io::Result<()> {
    let address = match *upstream
        .wait_for(Option::is_some)
        .await
        .map_err(|_| std::io::Error::other("delay proxy stopped"))?
    {
        Some(address) => address,
        None => return Err(std::io::Error::other("no upstream")),
    };
    let server = TcpStream::connect(address).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::try_join!(
        relay(client_read, server_write, one_way),
        relay(server_read, client_write, one_way),
    )?;
    Ok(())
}

/// A queued chunk: when it is due and its bytes (`None`: the end of the stream).
struct Due {
    at: Instant,
    bytes: Option<Bytes>,
}

/// One direction: reads `from` into a queue of due chunks that a writer drains into `to`.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    one_way: Duration,
) -> std::io::Result<()> {
    // The queue itself is unbounded; the semaphore bounds the bytes in it.
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
    let (queue, mut due) = mpsc::unbounded_channel::<Due>();
    let reader = {
        let budget = budget.clone();
        async move {
            let mut buffer = BytesMut::new();
            loop {
                buffer.reserve(CHUNK_BYTES);
                let read = from.read_buf(&mut buffer).await?;
                let at = Instant::now() + one_way;
                if read == 0 {
                    let _ = queue.send(Due { at, bytes: None });
                    return Ok::<(), std::io::Error>(());
                }
                let bytes = buffer.split().freeze();
                // Waits only when IN_FLIGHT_BYTES are queued: the link is full.
                let permits = budget
                    .acquire_many(bytes.len() as u32)
                    .await
                    .map_err(|_| std::io::Error::other("budget closed"))?;
                permits.forget();
                if queue
                    .send(Due {
                        at,
                        bytes: Some(bytes),
                    })
                    .is_err()
                {
                    return Ok(()); // the writer failed; its error ends the connection
                }
            }
        }
    };
    let writer = async move {
        while let Some(chunk) = due.recv().await {
            if chunk.at > Instant::now() {
                tokio::time::sleep_until(chunk.at).await;
            }
            match chunk.bytes {
                Some(bytes) => {
                    to.write_all(&bytes).await?;
                    budget.add_permits(bytes.len());
                }
                None => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}
