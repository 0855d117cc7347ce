//! Security on both sides of kshift: TLS and SASL for client connections (kshift is the
//! server) and for backend connections (kshift is the client, with each cluster's own
//! settings), and the [`Secret`] type that keeps passwords out of logs and answers.
//!
//! - [`tls`] builds rustls server and client configurations from PEM files;
//! - [`sasl_server`] terminates a client's SASL (PLAIN, SCRAM-SHA-256/512) against the
//!   [`credentials`] file;
//! - [`sasl_client`] authenticates kshift's own connections to a backend;
//! - [`scram`] is the SCRAM exchange both of them use.
//!
//! Invariant: no secret (password, SCRAM key, token) is ever formatted by `Debug`,
//! `Display` or `Serialize` — [`Secret`] prints `<redacted>`.

pub mod credentials;
pub mod sasl_client;
pub mod sasl_server;
pub mod scram;
pub mod tls;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A SASL mechanism kshift speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::Plain,
    ];

    /// The name on the wire (SaslHandshake).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM hash, for the SCRAM mechanisms.
    pub fn scram_hash(self) -> Option<scram::ScramHash> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(scram::ScramHash::Sha256),
            Mechanism::ScramSha512 => Some(scram::ScramHash::Sha512),
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A password or other secret: readable through [`Secret::expose`] only; `Debug`,
/// `Display` and `Serialize` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    /// A fingerprint keyed with a random per-process key: two serializations of one
    /// configuration compare equal (so a changed password is noticed), but nothing that
    /// leaves the process can be checked against a guessed password.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| random_bytes(32));
        let mac = scram::ScramHash::Sha256.hmac(key, self.0.as_bytes());
        let fingerprint: String = mac.iter().take(8).map(|b| format!("{b:02x}")).collect();
        serializer.serialize_str(&format!("<redacted {fingerprint}>"))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `len` bytes from the operating system's random source.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness at all: refuse to continue rather than use predictable salts
        // and nonces.
        tracing::error!("the operating system's random source failed");
        std::process::abort();
    }
    bytes
}

/// How kshift connects to one backend cluster: TLS and SASL, either optional.
#[derive(Debug, Default, Clone)]
pub struct BackendSecurity {
    pub tls: Option<tls::BackendTls>,
    pub sasl: Option<sasl_client::SaslCredentials>,
}

impl BackendSecurity {
    /// None: plain TCP, no authentication.
    pub fn none() -> Arc<BackendSecurity> {
        Arc::default()
    }

    /// Builds cluster `name`'s settings: reads its PEM files and resolves its password.
    pub fn from_config(
        name: &str,
        cluster: &crate::config::ClusterConfig,
    ) -> Result<BackendSecurity, crate::config::ConfigError> {
        let tls = cluster
            .tls
            .as_ref()
            .map(|tls| tls::BackendTls::from_config(name, tls))
            .transpose()?;
        let sasl = match &cluster.sasl {
            Some(sasl) => Some(sasl_client::SaslCredentials {
                mechanism: sasl.mechanism,
                username: sasl.username.clone(),
                password: sasl.resolve_password(name)?,
            }),
            None => None,
        };
        Ok(BackendSecurity { tls, sasl })
    }
}
