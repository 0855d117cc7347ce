//! SASL termination for one client connection, as a Kafka broker does it: ApiVersions,
//! then SaslHandshake v1 naming a mechanism, then SaslAuthenticate rounds carrying the
//! tokens (PLAIN: one round; SCRAM: two).
//!
//! Invariants:
//! - Until the exchange succeeds the connection serves nothing but ApiVersions,
//!   SaslHandshake and SaslAuthenticate; any other request closes it (a broker's answer).
//! - A failed authentication is answered with SASL_AUTHENTICATION_FAILED and a message,
//!   then the connection closes. The message never echoes what the client sent.
//! - Credentials are looked up in the file as it is when the exchange starts (the store
//!   re-reads a changed file), so a user added or removed applies to the next connection.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::credentials::{CredentialStore, Credentials};
use super::scram::{ScramError, ScramHash, ScramServer};
use super::Mechanism;
use crate::codec::Reply;
use crate::codec::Request;

/// The versions served while authenticating (advertised in ApiVersions when SASL is on).
/// SaslHandshake v0 (tokens sent raw, outside Kafka frames) is not served.
pub const SASL_HANDSHAKE_VERSIONS: (i16, i16) = (1, 1);
pub const SASL_AUTHENTICATE_VERSIONS: (i16, i16) = (0, 2);

/// The listener's SASL settings, shared by every connection.
#[derive(Debug)]
pub struct SaslListener {
    pub store: CredentialStore,
    /// Mechanisms offered, in the order of the config.
    pub mechanisms: Vec<Mechanism>,
    /// How long the answer to a failed authentication is held before it is sent.
    pub failed_delay: std::time::Duration,
}

/// Where one connection's exchange stands.
#[derive(Debug)]
pub struct SaslSession {
    listener: Arc<SaslListener>,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitingHandshake,
    AwaitingToken {
        mechanism: Mechanism,
        credentials: Arc<Credentials>,
    },
    Scram {
        mechanism: Mechanism,
        server: Box<ScramServer>,
    },
    Authenticated,
}

/// What the client connection does with a request read before authentication completed.
#[derive(Debug)]
pub enum Outcome {
    /// Not a SASL request: the caller serves it (ApiVersions) or closes the connection.
    NotSasl,
    /// Write this answer and read the next request.
    Continue(Reply),
    /// Write this answer; the client is now `user`.
    Authenticated { reply: Reply, user: String },
    /// Write this answer, then close the connection: `reason` is for the log.
    Refused { reply: Reply, reason: String },
}

impl SaslSession {
    pub fn new(listener: Arc<SaslListener>) -> SaslSession {
        SaslSession {
            listener,
            state: State::AwaitingHandshake,
        }
    }

    /// How long the answer to a failed authentication is held before it is sent.
    pub fn failed_delay(&self) -> std::time::Duration {
        self.listener.failed_delay
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated)
    }

    /// Handles `request` if it is a SaslHandshake or SaslAuthenticate.
    pub fn handle(&mut self, request: &Request) -> Outcome {
        match request.api_key {
            ApiKey::SaslHandshake => self.handshake(request),
            ApiKey::SaslAuthenticate => self.authenticate(request),
            _ => Outcome::NotSasl,
        }
    }

    fn handshake(&mut self, request: &Request) -> Outcome {
        let (min, max) = SASL_HANDSHAKE_VERSIONS;
        if !(min..=max).contains(&request.api_version) {
            return refuse_without_answer(format!(
                "SaslHandshake v{} is not served (v1 only)",
                request.api_version
            ));
        }
        let enabled: Vec<StrBytes> = self
            .listener
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let answer = |code: i16| {
            request.reply(
                &SaslHandshakeResponse::default()
                    .with_error_code(code)
                    .with_mechanisms(enabled.clone()),
            )
        };
        if !matches!(self.state, State::AwaitingHandshake) {
            return Outcome::Refused {
                reply: answer(ResponseError::IllegalSaslState.code()),
                reason: "SaslHandshake in the middle of (or after) authentication".into(),
            };
        }
        let decoded: SaslHandshakeRequest = match request.decode() {
            Ok(decoded) => decoded,
            Err(error) => {
                return refuse_without_answer(format!("malformed SaslHandshake: {error}"))
            }
        };
        let mechanism = Mechanism::from_name(decoded.mechanism.as_str())
            .filter(|m| self.listener.mechanisms.contains(m));
        match mechanism {
            Some(mechanism) => {
                self.state = State::AwaitingToken {
                    mechanism,
                    credentials: self.listener.store.current(),
                };
                Outcome::Continue(answer(0))
            }
            None => Outcome::Refused {
                reply: answer(ResponseError::UnsupportedSaslMechanism.code()),
                reason: format!(
                    "client asked for SASL mechanism {:?}, which is not enabled",
                    decoded.mechanism.as_str()
                ),
            },
        }
    }

    fn authenticate(&mut self, request: &Request) -> Outcome {
        let (min, max) = SASL_AUTHENTICATE_VERSIONS;
        if !(min..=max).contains(&request.api_version) {
            return refuse_without_answer(format!(
                "SaslAuthenticate v{} is not served",
                request.api_version
            ));
        }
        let decoded: SaslAuthenticateRequest = match request.decode() {
            Ok(decoded) => decoded,
            Err(error) => {
                return refuse_without_answer(format!("malformed SaslAuthenticate: {error}"))
            }
        };
        let token = decoded.auth_bytes;
        match std::mem::replace(&mut self.state, State::AwaitingHandshake) {
            State::AwaitingToken {
                mechanism: Mechanism::Plain,
                credentials,
            } => match check_plain(&credentials, &token) {
                Some(user) => {
                    self.state = State::Authenticated;
                    Outcome::Authenticated {
                        reply: authenticate_answer(request, 0, None, Bytes::new()),
                        user,
                    }
                }
                None => failed(
                    request,
                    Mechanism::Plain,
                    "invalid user name or password".into(),
                ),
            },
            State::AwaitingToken {
                mechanism,
                credentials,
            } => {
                let Some(hash) = ScramHash::of(mechanism) else {
                    return failed(request, mechanism, "no such mechanism".into());
                };
                let mut server = ScramServer::new(hash);
                match server.client_first(&token, |user| credentials.scram(user, hash)) {
                    Ok(server_first) => {
                        self.state = State::Scram {
                            mechanism,
                            server: Box::new(server),
                        };
                        Outcome::Continue(authenticate_answer(
                            request,
                            0,
                            None,
                            Bytes::from(server_first),
                        ))
                    }
                    Err(error) => failed(request, mechanism, scram_reason(&error)),
                }
            }
            State::Scram {
                mechanism,
                mut server,
            } => match server.client_final(&token) {
                Ok((user, server_final)) => {
                    self.state = State::Authenticated;
                    Outcome::Authenticated {
                        reply: authenticate_answer(request, 0, None, Bytes::from(server_final)),
                        user,
                    }
                }
                Err(error) => failed(request, mechanism, scram_reason(&error)),
            },
            State::AwaitingHandshake | State::Authenticated => Outcome::Refused {
                reply: authenticate_answer(
                    request,
                    ResponseError::IllegalSaslState.code(),
                    Some("SaslAuthenticate without a SaslHandshake before it".into()),
                    Bytes::new(),
                ),
                reason: "SaslAuthenticate out of order".into(),
            },
        }
    }
}

/// The user a PLAIN token (`authzid NUL user NUL password`) authenticates, if any.
fn check_plain(credentials: &Credentials, token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let mut parts = text.splitn(3, '\0');
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if !authzid.is_empty() && authzid != user {
        return None;
    }
    credentials
        .check_plain(user, password)
        .then(|| user.to_string())
}

fn scram_reason(error: &ScramError) -> String {
    match error {
        ScramError::InvalidCredentials => "invalid user name or password".into(),
        other => other.to_string(),
    }
}

/// SASL_AUTHENTICATION_FAILED with Kafka's message, then close.
fn failed(request: &Request, mechanism: Mechanism, reason: String) -> Outcome {
    let message = format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
    );
    Outcome::Refused {
        reply: authenticate_answer(
            request,
            ResponseError::SaslAuthenticationFailed.code(),
            Some(message),
            Bytes::new(),
        ),
        reason: format!("SASL {mechanism} authentication failed: {reason}"),
    }
}

fn refuse_without_answer(reason: String) -> Outcome {
    Outcome::Refused {
        reply: Reply::Close(reason.clone()),
        reason,
    }
}

fn authenticate_answer(
    request: &Request,
    code: i16,
    message: Option<String>,
    token: Bytes,
) -> Reply {
    request.reply(
        &SaslAuthenticateResponse::default()
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
            .with_auth_bytes(token)
            .with_session_lifetime_ms(0),
    )
}
