//! One error for every failure on the data path, tagged with where it came from. The tag
//! decides what the client sees, whether its connection closes and the metric's label:
//! - [`Source::Client`]: the client sent something kshift cannot decode or does not serve.
//!   Its connection closes, as a broker's would; the client's fault, counted as `client`.
//! - [`Source::Backend`]: a backend cluster failed (unreachable, slow, an error code, an
//!   answer kshift cannot decode). The client gets the error code a broker would give —
//!   retriable where the failure is ([`Error::retriable`]) — and keeps its connection.
//! - [`Source::Internal`]: kshift itself could not go on (an answer it cannot encode, a
//!   mirror writer gone). The connection closes; a bug or a shutdown, counted as `internal`.
//!
//! The backend's kinds are [`BackendError`], cloneable so that one broken connection fails
//! every request waiting on it with the same error.

use std::sync::Arc;

use kafka_protocol::ResponseError;

use crate::codec::FrameError;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    Client,
    /// A backend cluster, by name when the failure names one (a broker address otherwise).
    Backend {
        cluster: Option<&'a str>,
    },
    Internal,
}

impl Source<'_> {
    /// The `source` label of metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Backend { .. } => "backend",
            Source::Internal => "internal",
        }
    }
}

/// A failure on the data path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something kshift cannot decode: the connection is closed.
    #[error("malformed request: {0}")]
    Client(#[from] FrameError),
    /// A backend failed: the client gets the error a broker would give.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// kshift could not go on with the request.
    #[error("internal: {0}")]
    Internal(Arc<str>),
}

impl Error {
    pub fn internal(reason: impl Into<Arc<str>>) -> Error {
        Error::Internal(reason.into())
    }

    /// An answer of `cluster` that kshift cannot decode: the backend's fault, not the
    /// client's (the client's connection stays; it gets a retriable error).
    pub fn undecodable(cluster: &Arc<str>, what: &'static str, error: FrameError) -> Error {
        Error::Backend(BackendError::undecodable(cluster, what, error))
    }

    pub fn source(&self) -> Source<'_> {
        match self {
            Error::Client(_) => Source::Client,
            Error::Backend(error) => error.source(),
            Error::Internal(_) => Source::Internal,
        }
    }

    /// Whether trying again may succeed: the client is told a retriable code.
    pub fn retriable(&self) -> bool {
        match self {
            Error::Backend(error) => error.retriable(),
            Error::Client(_) | Error::Internal(_) => false,
        }
    }

    /// The Kafka error code to answer with, or `None` when the connection must close.
    pub fn client_error_code(&self) -> Option<i16> {
        match self {
            Error::Backend(error) => Some(error.client_error_code()),
            Error::Client(_) | Error::Internal(_) => None,
        }
    }
}

/// A failure talking to a backend cluster. Cloneable: one broken connection fails every
/// request waiting on it with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: Arc<str>, reason: Arc<str> },
    #[error("TLS handshake with {address} failed: {reason}")]
    Tls { address: Arc<str>, reason: Arc<str> },
    #[error("SASL authentication to {address} failed: {reason}")]
    Authentication { address: Arc<str>, reason: Arc<str> },
    #[error("{address} did not answer within {after_ms} ms")]
    Timeout { address: Arc<str>, after_ms: u64 },
    #[error("connection to {address} closed: {reason}")]
    Closed { address: Arc<str>, reason: Arc<str> },
    #[error("protocol error from {address}: {reason}")]
    Protocol { address: Arc<str>, reason: Arc<str> },
    #[error("cluster {cluster} sent an undecodable {what}: {reason}")]
    Undecodable {
        cluster: Arc<str>,
        what: &'static str,
        reason: Arc<str>,
    },
    /// Records could not be copied to mirror cluster `cluster`.
    #[error("mirror cluster {cluster}: {reason}")]
    Mirror { cluster: Arc<str>, reason: Arc<str> },
    #[error("cluster {cluster}: no reachable broker ({reason})")]
    Unreachable { cluster: Arc<str>, reason: Arc<str> },
    #[error("cluster {cluster}: broker {node} is not in its metadata")]
    UnknownBroker { cluster: Arc<str>, node: i32 },
    #[error("cluster {cluster} answered {what} with error {code}")]
    Kafka {
        cluster: Arc<str>,
        what: &'static str,
        code: i16,
    },
}

impl BackendError {
    /// An answer of `cluster` that kshift cannot decode.
    pub fn undecodable(cluster: &Arc<str>, what: &'static str, error: FrameError) -> BackendError {
        BackendError::Undecodable {
            cluster: cluster.clone(),
            what,
            reason: error.to_string().into(),
        }
    }

    /// The Kafka error code a broker would have given the client for this failure.
    pub fn client_error_code(&self) -> i16 {
        match self {
            BackendError::Timeout { .. } => ResponseError::RequestTimedOut.code(),
            BackendError::Kafka { code, .. } => *code,
            _ => ResponseError::NotLeaderOrFollower.code(),
        }
    }

    /// The code a coordinator request (group, transaction) gets when kshift could not
    /// reach the coordinator: the cluster's own code, else COORDINATOR_NOT_AVAILABLE, after
    /// which clients look the coordinator up again.
    pub fn coordinator_error_code(&self) -> i16 {
        match self {
            BackendError::Kafka { code, .. } => *code,
            _ => ResponseError::CoordinatorNotAvailable.code(),
        }
    }

    pub fn source(&self) -> Source<'_> {
        Source::Backend {
            cluster: self.cluster(),
        }
    }

    /// The cluster the failure names, when it names one (connection-level failures name
    /// the broker's address instead).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            BackendError::Undecodable { cluster, .. }
            | BackendError::Mirror { cluster, .. }
            | BackendError::Unreachable { cluster, .. }
            | BackendError::UnknownBroker { cluster, .. }
            | BackendError::Kafka { cluster, .. } => Some(cluster),
            _ => None,
        }
    }

    /// Whether a retry may succeed: everything but a refused login or TLS handshake and an
    /// error code Kafka calls non-retriable.
    pub fn retriable(&self) -> bool {
        match self {
            BackendError::Tls { .. } | BackendError::Authentication { .. } => false,
            BackendError::Kafka { code, .. } => {
                ResponseError::try_from_code(*code).is_none_or(|error| error.is_retriable())
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_decides_the_answer_and_the_label() {
        let client = Error::from(FrameError::TooShort(3));
        assert_eq!(client.source(), Source::Client);
        assert_eq!(client.client_error_code(), None);
        assert!(!client.retriable());

        let cluster: Arc<str> = Arc::from("new");
        let undecodable = Error::undecodable(&cluster, "produce response", FrameError::Truncated);
        assert_eq!(
            undecodable.source(),
            Source::Backend {
                cluster: Some("new")
            }
        );
        assert_eq!(undecodable.source().label(), "backend");
        assert_eq!(
            undecodable.client_error_code(),
            Some(ResponseError::NotLeaderOrFollower.code())
        );
        assert!(undecodable.retriable());

        let timeout = Error::from(BackendError::Timeout {
            address: "b:9092".into(),
            after_ms: 5,
        });
        assert_eq!(
            timeout.client_error_code(),
            Some(ResponseError::RequestTimedOut.code())
        );
        assert_eq!(timeout.source(), Source::Backend { cluster: None });

        let refused = BackendError::Kafka {
            cluster: cluster.clone(),
            what: "produce",
            code: ResponseError::TopicAuthorizationFailed.code(),
        };
        assert!(!refused.retriable());
        let login = BackendError::Authentication {
            address: "b:9092".into(),
            reason: "bad password".into(),
        };
        assert!(!login.retriable());

        let internal = Error::internal("mirror writer stopped");
        assert_eq!(internal.source().label(), "internal");
        assert_eq!(internal.client_error_code(), None);
    }
}
