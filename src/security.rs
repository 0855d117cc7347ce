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

pub use crate::config::secrets::{Mechanism, Secret};

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
