//! Opening the byte stream to one backend broker, before any Kafka request of kshift's own
//! travels on it: TCP (with `TCP_NODELAY`), then TLS when the cluster has `[tls]`, then SASL
//! authentication when it has `[sasl]`. Each step gets the whole connect timeout, as
//! before the split from [`super::BrokerConnection`].
//!
//! What comes out is a [`Transport`]: a stream that is ready for requests, which a
//! [`super::BrokerConnection`] then runs. The connection itself knows nothing of sockets,
//! certificates or credentials, so it can be driven over an in-memory stream in tests.
//!
//! Errors name the step that failed ([`BackendError::Connect`], [`BackendError::Tls`],
//! [`BackendError::Authentication`]) and the broker's address; never a password.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::broker_connection::{ReadHalf, WriteHalf};
use crate::error::BackendError;
use crate::security::{sasl_client, BackendSecurity};

/// A stream to one broker, plain or TLS, authenticated when the cluster asks for it.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: a TLS session is some kilobytes, a `TcpStream` a file descriptor.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain(_) => f.write_str("Transport::Plain"),
            Transport::Tls(_) => f.write_str("Transport::Tls"),
        }
    }
}

/// Opens a stream to the broker at `address` (`host:port`): TCP, then TLS and SASL as
/// `security` says, each within `timeout`.
pub async fn connect(
    address: &str,
    timeout: Duration,
    security: &BackendSecurity,
) -> Result<Transport, BackendError> {
    let address: Arc<str> = address.into();
    let connect_error = |reason: String| BackendError::Connect {
        address: address.clone(),
        reason: reason.into(),
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&*address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(connect_error(e.to_string())),
        Err(_) => return Err(connect_error(format!("no answer within {timeout:?}"))),
    };
    stream
        .set_nodelay(true)
        .map_err(|e| connect_error(e.to_string()))?;
    let mut transport = match &security.tls {
        None => Transport::Plain(stream),
        Some(tls) => {
            let tls_error = |reason: String| BackendError::Tls {
                address: address.clone(),
                reason: reason.into(),
            };
            let host = crate::config::parse_host_port(&address)
                .map(|(host, _)| host)
                .map_err(tls_error)?;
            let server_name = tls.server_name(&host).map_err(tls_error)?;
            match tokio::time::timeout(timeout, tls.connector().connect(server_name, stream)).await
            {
                Ok(Ok(stream)) => Transport::Tls(Box::new(stream)),
                Ok(Err(e)) => return Err(tls_error(e.to_string())),
                Err(_) => return Err(tls_error(format!("no handshake within {timeout:?}"))),
            }
        }
    };
    authenticate(&mut transport, &address, timeout, security).await?;
    tracing::debug!(broker = %address, "connected to backend broker");
    Ok(transport)
}

impl Transport {
    /// The read and write halves for a [`super::BrokerConnection`]. Plain TCP splits into
    /// owned halves, so its reader and writer never wait on each other; a TLS session is one
    /// state machine, shared by the two halves behind a lock.
    pub fn into_halves(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Plain(stream) => {
                let (read_half, write_half) = stream.into_split();
                (Box::new(read_half), Box::new(write_half))
            }
            Transport::Tls(stream) => {
                let (read_half, write_half) = tokio::io::split(*stream);
                (Box::new(read_half), Box::new(write_half))
            }
        }
    }
}

/// Runs the SASL exchange on a fresh `stream` when the cluster has credentials.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    address: &Arc<str>,
    timeout: Duration,
    security: &BackendSecurity,
) -> Result<(), BackendError> {
    let Some(credentials) = &security.sasl else {
        return Ok(());
    };
    let failed = |reason: String| BackendError::Authentication {
        address: address.clone(),
        reason: reason.into(),
    };
    match tokio::time::timeout(timeout, sasl_client::authenticate(stream, credentials)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
