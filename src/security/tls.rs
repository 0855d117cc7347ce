//! TLS configurations built from PEM files: the client listener's (with optional client
//! certificate verification, mTLS) and each backend cluster's (CA bundle or the system's
//! roots, optional client certificate, server-name override). rustls with the ring
//! provider; TLS 1.2 and 1.3.
//!
//! Invariant: files are read once, when kshift starts; a file that is missing, empty or not
//! PEM stops the start with a message naming the config field.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{BackendTlsConfig, ConfigError, ListenerTlsConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(Path::new(path))
        .map_err(|e| format!("{path}: no usable private key: {e}"))
}

fn root_store(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{path}: not a CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// TLS on the client listener.
#[derive(Clone)]
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    /// Time a client has to finish the handshake (`handshake_timeout_ms`).
    pub handshake_timeout: std::time::Duration,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    pub fn from_config(config: &ListenerTlsConfig) -> Result<ListenerTls, ConfigError> {
        Ok(ListenerTls {
            acceptor: acceptor(config)?,
            handshake_timeout: std::time::Duration::from_millis(config.handshake_timeout_ms),
        })
    }
}

/// The acceptor of the client listener (`[proxy.tls]`).
pub fn acceptor(config: &ListenerTlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let field = |name: &str, reason: String| ConfigError::Field {
        field: format!("proxy.tls.{name}"),
        reason,
    };
    let certs = load_certs(&config.cert_file).map_err(|e| field("cert_file", e))?;
    let key = load_key(&config.key_file).map_err(|e| field("key_file", e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| field("cert_file", e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(path) => {
            let roots = root_store(path).map_err(|e| field("client_ca_file", e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| field("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| field("key_file", format!("does not match cert_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// TLS toward one backend cluster.
#[derive(Clone)]
pub struct BackendTls {
    connector: TlsConnector,
    /// The name every broker's certificate is checked against, instead of the host each
    /// broker is reached at.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Builds the connector of cluster `cluster` from `[clusters.NAME.tls]`.
    pub fn from_config(
        cluster: &str,
        config: &BackendTlsConfig,
    ) -> Result<BackendTls, ConfigError> {
        let field = |name: &str, reason: String| ConfigError::Field {
            field: format!("clusters.{cluster}.tls.{name}"),
            reason,
        };
        let roots = match &config.ca_file {
            Some(path) => root_store(path).map_err(|e| field("ca_file", e))?,
            None => {
                let native = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(field(
                        "ca_file",
                        "not set, and the system has no CA certificates".into(),
                    ));
                }
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| field("ca_file", e.to_string()))?
            .with_root_certificates(roots);
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let certs = load_certs(cert).map_err(|e| field("cert_file", e))?;
                let key = load_key(key).map_err(|e| field("key_file", e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| field("key_file", format!("does not match cert_file: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(field("key_file", "cert_file needs key_file".into())),
            (None, Some(_)) => return Err(field("cert_file", "key_file needs cert_file".into())),
        };
        let server_name = match &config.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| field("server_name", format!("{name:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(BackendTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// The name to check the certificate of the broker at `host` against.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}")),
        }
    }
}
