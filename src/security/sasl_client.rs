//! kshift authenticating its own connection to a backend broker: SaslHandshake v1 naming
//! the cluster's mechanism, then SaslAuthenticate rounds (PLAIN: one; SCRAM: two, and the
//! broker's final message must prove that it knows the credential).
//!
//! Runs on the freshly opened (and, with TLS, encrypted) stream before the connection's
//! reader and writer tasks start, so nothing else is on the wire yet. Errors carry the
//! broker's own message and never the password.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::scram::{ScramClient, ScramHash};
use super::{Mechanism, Secret};
use crate::codec;

/// SaslHandshake v1: tokens travel in SaslAuthenticate frames (every broker since 1.0).
const HANDSHAKE_VERSION: i16 = 1;
/// SaslAuthenticate v1 (Kafka 2.2+): the answer carries the session lifetime.
const AUTHENTICATE_VERSION: i16 = 1;
/// Largest answer accepted during authentication.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// What kshift authenticates to one cluster with.
#[derive(Debug, Clone)]
pub struct SaslCredentials {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: Secret,
}

/// Why authentication to a broker failed.
#[derive(Debug, thiserror::Error)]
pub enum SaslClientError {
    #[error("the broker does not enable SASL mechanism {mechanism} (it enables: {enabled})")]
    MechanismNotEnabled {
        mechanism: Mechanism,
        enabled: String,
    },
    #[error(
        "the broker refused {mechanism} authentication as {username:?} (error {code}): {message}"
    )]
    Refused {
        mechanism: Mechanism,
        username: String,
        code: i16,
        message: String,
    },
    #[error("SCRAM: {0}")]
    Scram(#[from] super::scram::ScramError),
    #[error("{0}")]
    Protocol(String),
    #[error("I/O during authentication: {0}")]
    Io(#[from] std::io::Error),
}

/// Authenticates `stream` with `credentials`.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    credentials: &SaslCredentials,
) -> Result<(), SaslClientError> {
    let mut exchange = Exchange {
        stream,
        correlation_id: 0,
    };
    let handshake: SaslHandshakeResponse = exchange
        .round_trip(
            ApiKey::SaslHandshake,
            HANDSHAKE_VERSION,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str(credentials.mechanism.name())),
        )
        .await?;
    if handshake.error_code != 0 {
        return Err(SaslClientError::MechanismNotEnabled {
            mechanism: credentials.mechanism,
            enabled: handshake
                .mechanisms
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let password = credentials.password.expose();
    match ScramHash::of(credentials.mechanism) {
        None => {
            let token = format!("\0{}\0{password}", credentials.username);
            exchange
                .authenticate(credentials, token.into_bytes())
                .await?;
        }
        Some(hash) => {
            let mut scram = ScramClient::new(hash, &credentials.username, password);
            let server_first = exchange
                .authenticate(credentials, scram.client_first())
                .await?;
            let client_final = scram.client_final(&server_first)?;
            let server_final = exchange.authenticate(credentials, client_final).await?;
            scram.server_final(&server_final)?;
        }
    }
    Ok(())
}

struct Exchange<'a, S> {
    stream: &'a mut S,
    correlation_id: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<'_, S> {
    /// One SaslAuthenticate round: sends `token`, returns the broker's.
    async fn authenticate(
        &mut self,
        credentials: &SaslCredentials,
        token: Vec<u8>,
    ) -> Result<Bytes, SaslClientError> {
        let response: SaslAuthenticateResponse = self
            .round_trip(
                ApiKey::SaslAuthenticate,
                AUTHENTICATE_VERSION,
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)),
            )
            .await?;
        if response.error_code != 0 {
            return Err(SaslClientError::Refused {
                mechanism: credentials.mechanism,
                username: credentials.username.clone(),
                code: response.error_code,
                message: response
                    .error_message
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            });
        }
        Ok(response.auth_bytes)
    }

    async fn round_trip<Q: Encodable, R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Q,
    ) -> Result<R, SaslClientError> {
        let protocol = |e: codec::FrameError| SaslClientError::Protocol(e.to_string());
        self.correlation_id += 1;
        let body = codec::encode_body(request, version).map_err(protocol)?;
        let head = codec::request_frame_head(
            api_key,
            version,
            self.correlation_id,
            &StrBytes::from_static_str("kshift"),
            body.len(),
        )
        .map_err(protocol)?;
        self.stream.write_all(&head).await?;
        self.stream.write_all(&body).await?;
        self.stream.flush().await?;
        let frame = codec::read_frame(&mut self.stream, MAX_FRAME_BYTES)
            .await
            .map_err(protocol)?
            .ok_or_else(|| {
                SaslClientError::Protocol(format!(
                    "the broker closed the connection after {api_key:?}"
                ))
            })?;
        let (correlation_id, body) =
            codec::split_response(frame, api_key.response_header_version(version))
                .map_err(protocol)?;
        if correlation_id != self.correlation_id {
            return Err(SaslClientError::Protocol(format!(
                "answer to correlation id {correlation_id}, expected {}",
                self.correlation_id
            )));
        }
        codec::decode_body(body, version, "SASL response").map_err(protocol)
    }
}
