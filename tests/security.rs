//! TLS and SASL on both sides of kshift, against real brokers and real clients.
//!
//! What Tansu 0.6.0 (the test broker) can and cannot do, found by running it and reading its
//! source (tansu-broker/src/broker.rs, tansu-auth, tansu-service/src/frame.rs at v0.6.0):
//! - `--authentication` makes it require SASL before anything but ApiVersions and the SASL
//!   apis, and it runs SCRAM-SHA-256/512 against its user store (answering an unknown user
//!   with `e=unknown-user`). PLAIN is not built in (rsasl without its `plain` feature): a
//!   SaslHandshake for PLAIN closes the connection.
//! - No user can be created on a broker that requires authentication: `tansu user create`
//!   does not authenticate and gets NotAuthenticated, there is no mechanism to log in with
//!   first, and this build's only storage engine, `dynostore`, keeps `memory://` per
//!   process (a shared store would need an S3 service). So kshift's successful SCRAM login cannot be shown against Tansu; its refusal
//!   can (`tansu_refuses_kshift_scram_login_cleanly`).
//! - `--cert`/`--key` are accepted but unused: its listener is plain TCP whatever they say.
//!
//! So a cluster that requires TLS and SASL is played by a kshift terminating them in front of
//! a Tansu: a real TLS + SASL peer for the kshift under test, whose server side is itself
//! checked against librdkafka's SCRAM and TLS clients here.

mod common;
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kshift::security::sasl_client::{self, SaslClientError, SaslCredentials};
use kshift::security::{credentials, Mechanism, Secret};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Log capture: every kshift log line of this test binary, at trace level, so a test can
// assert that no secret ever reached a log.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("kshift=trace")
            .with_writer(move || writer.clone())
            .try_init();
        captured
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured_log().0.lock().unwrap_or_else(|p| p.into_inner()))
        .into_owned()
}

/// Fails if any of `secrets` appears in kshift's log or in `texts`.
fn assert_no_secret(secrets: &[&str], texts: &[&str]) {
    let log = log_text();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "secret {secret:?} appears in kshift's log"
        );
        for text in texts {
            assert!(
                !text.contains(secret),
                "secret {secret:?} appears in: {text}"
            );
        }
    }
}

/// Waits until kshift's log contains `needle` (log lines are written as events happen).
async fn wait_for_log(needle: &str) -> String {
    let what = format!("kshift to log {needle:?}");
    common::eventually(common::TIMEOUT, &what, async || {
        let log = log_text();
        if log.contains(needle) {
            Ok(log)
        } else {
            let tail_start = log.floor_char_boundary(log.len().saturating_sub(3000));
            Err(format!("the log's tail:\n{}", &log[tail_start..]))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Certificates.

/// A test PKI in a temporary directory: a CA and another CA, server certificates for
/// 127.0.0.1 and localhost (valid, expired), client certificates (valid, expired, from the
/// other CA).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let new_ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, ca) = new_ca("kshift test CA");
        let (other_ca_pem, other_ca) = new_ca("some other CA");
        write("ca.pem", ca_pem);
        write("other-ca.pem", other_ca_pem);
        let leaf = |name: &str, sans: &[&str], issuer: &Issuer<'_, KeyPair>, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        leaf("server", &["127.0.0.1", "localhost"], &ca, false);
        leaf("client", &["client"], &ca, false);
        leaf("expired-client", &["client"], &ca, true);
        leaf("untrusted-client", &["client"], &other_ca, false);
        leaf("expired-server", &["127.0.0.1", "localhost"], &ca, true);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A credentials file in `dir` with `users` (name, password), all mechanisms.
fn credentials_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(format!("users-{}.toml", common::unique_topic("c")));
    for (name, password) in users {
        add_user(&path, name, password);
    }
    path
}

fn add_user(path: &Path, name: &str, password: &str) {
    let entry = credentials::user_entry(password, &Mechanism::ALL, 4096);
    credentials::add_user(path, name, entry).unwrap();
}

// ---------------------------------------------------------------------------------------
// Raw protocol over any stream (plain or TLS).

async fn send<S: AsyncWrite + Unpin, M: Encodable>(
    stream: &mut S,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    message: &M,
) {
    let body = kshift::codec::encode_body(message, version).unwrap();
    let head = kshift::codec::request_frame_head(
        api_key,
        version,
        correlation_id,
        &StrBytes::from_static_str("security-test"),
        body.len(),
    )
    .unwrap();
    try_send_frame(stream, &head, &body).await.unwrap();
}

/// Writes one frame; the peer may already have closed (a refused connection).
async fn try_send_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// An ApiVersions v3 request frame.
fn api_versions_frame() -> (Bytes, Bytes) {
    let body = kshift::codec::encode_body(&ApiVersionsRequest::default(), 3).unwrap();
    let head = kshift::codec::request_frame_head(
        ApiKey::ApiVersions,
        3,
        1,
        &StrBytes::from_static_str("security-test"),
        body.len(),
    )
    .unwrap();
    (head, body)
}

/// The next response frame's body, or `None` when the peer closed (or sent no Kafka frame).
async fn receive<S: AsyncRead + Unpin, M: Decodable>(
    stream: &mut S,
    api_key: ApiKey,
    version: i16,
) -> Option<M> {
    let frame = tokio::time::timeout(common::TIMEOUT, kshift::codec::read_frame(stream, 1 << 20))
        .await
        .expect("an answer or a close within the timeout")
        .ok()??;
    let (_, body) =
        kshift::codec::split_response(frame, api_key.response_header_version(version)).ok()?;
    M::decode(&mut body.clone(), version).ok()
}

/// True when the peer closes the stream without sending a Kafka frame.
async fn closed_without_answer<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    matches!(
        tokio::time::timeout(common::TIMEOUT, kshift::codec::read_frame(stream, 1 << 20)).await,
        Ok(Ok(None)) | Ok(Err(_))
    )
}

/// A TLS connection to `address` trusting `ca`, optionally with a client certificate.
async fn tls_connect(
    address: SocketAddr,
    ca: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in kshift::security::tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                kshift::security::tls::load_certs(cert).unwrap(),
                kshift::security::tls::load_key(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

fn sasl_client_settings<'a>(
    mechanism: &'a str,
    user: &'a str,
    password: &'a str,
    ca: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut settings = vec![
        (
            "security.protocol",
            if ca.is_some() {
                "sasl_ssl"
            } else {
                "sasl_plaintext"
            },
        ),
        ("sasl.mechanisms", mechanism),
        ("sasl.username", user),
        ("sasl.password", password),
    ];
    if let Some(ca) = ca {
        settings.push(("ssl.ca.location", ca));
    }
    settings
}

// ---------------------------------------------------------------------------------------

/// Tansu's own SCRAM server, as kshift's backend side meets it: kshift runs the exchange
/// with both hashes and gets a clean refusal naming the mechanism and user (Tansu holds no
/// users that could be created, see the file comment), and PLAIN is refused as a mechanism
/// Tansu does not enable. Neither error carries the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_refuses_kshift_scram_login_cleanly() {
    captured_log();
    let broker = Broker::start_with_args(&["--authentication"]).await;
    for mechanism in Mechanism::ALL {
        let login = SaslCredentials {
            mechanism,
            username: "svc-kshift".into(),
            password: Secret::new("tansu-scram-pw"),
        };
        let mut stream = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
        let error = sasl_client::authenticate(&mut stream, &login)
            .await
            .expect_err("Tansu has no such user");
        let text = error.to_string();
        eprintln!("{mechanism}: {text}");
        assert!(!text.contains("tansu-scram-pw"), "{text}");
        match mechanism {
            Mechanism::Plain => assert!(
                matches!(error, SaslClientError::MechanismNotEnabled { .. })
                    || matches!(error, SaslClientError::Protocol(_)),
                "{text}"
            ),
            // Tansu answers the client-first message with "e=unknown-user".
            _ => assert!(
                matches!(
                    &error,
                    SaslClientError::Scram(kshift::security::scram::ScramError::ServerError(e))
                        if e == "unknown-user"
                ),
                "{text}"
            ),
        }
    }
}

/// A kshift that stands in front of `broker` as a secured cluster would: TLS on its
/// listener when `tls` (kshift's server certificate), SASL with `mechanism` for `user`.
async fn start_secured_front(
    pki: &Pki,
    broker: &Broker,
    tls: bool,
    mechanism: &str,
    user: (&str, &str),
) -> kshift::RunningProxy {
    let users = credentials_file(pki.dir.path(), &[user]);
    let tls = if tls {
        format!(
            "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key")
        )
    } else {
        String::new()
    };
    let proxy_lines = format!(
        "{tls}[proxy.sasl]\ncredentials_file = \"{}\"\nmechanisms = [\"{mechanism}\"]",
        users.display()
    );
    common::start_proxy(&common::single_cluster_toml_at(
        &broker.bootstrap(),
        &proxy_lines,
    ))
    .await
}

/// Produces `values` (all keyed `k`) to `topic` through `bootstrap`, with a producer of
/// `settings`, and waits until all are acknowledged.
async fn produce_values(
    bootstrap: &str,
    settings: &[(&str, &str)],
    topic: &str,
    values: &[String],
) {
    send_values(&common::producer(bootstrap, settings), topic, values).await;
}

/// As [`produce_values`], with `producer`.
async fn send_values(producer: &common::TestProducer, topic: &str, values: &[String]) {
    let records = values.iter().map(|value| ("k".to_string(), value.clone()));
    common::send_keyed(producer, topic, records).await;
}

fn values_of(records: &[common::Received]) -> Vec<String> {
    let mut values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    values.sort();
    values
}

/// The whole chain: a client over TLS + SCRAM-SHA-256 to kshift; kshift over TLS +
/// SCRAM-SHA-512 to `old` and SASL PLAIN to `new` (each a kshift terminating that cluster's
/// TLS/SASL in front of a Tansu, see the file comment), mirror route. Records land on both
/// clusters, the client reads them back through kshift, and neither the admin API (locked
/// with a token) nor any log shows a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_scram_client_through_kshift_to_differently_secured_clusters_mirror_route() {
    captured_log();
    let pki = Pki::new();
    let (tansu_old, tansu_new) = (Broker::start().await, Broker::start().await);
    const OLD_PASSWORD: &str = "old-cluster-pw-4f1c";
    const NEW_PASSWORD: &str = "new-cluster-pw-9a2e";
    const CLIENT_PASSWORD: &str = "client-app-pw-77d0";
    const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
    let front_old = start_secured_front(
        &pki,
        &tansu_old,
        true,
        "SCRAM-SHA-512",
        ("kshift-old", OLD_PASSWORD),
    )
    .await;
    let front_new = start_secured_front(
        &pki,
        &tansu_new,
        false,
        "PLAIN",
        ("kshift-new", NEW_PASSWORD),
    )
    .await;

    let old_password_file = pki.dir.path().join("old-password");
    std::fs::write(&old_password_file, format!("{OLD_PASSWORD}\n")).unwrap();
    let new_password_env = format!("KSHIFT_TEST_NEW_PASSWORD_{}", std::process::id());
    std::env::set_var(&new_password_env, NEW_PASSWORD);
    let token_file = pki.dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let users = credentials_file(pki.dir.path(), &[("app", CLIENT_PASSWORD)]);
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{token}"
connect_timeout_ms = 3000
request_timeout_ms = 5000
[proxy.tls]
cert_file = "{cert}"
key_file = "{key}"
[proxy.sasl]
credentials_file = "{users}"
mechanisms = ["SCRAM-SHA-256"]

[clusters.old]
bootstrap = ["{old}"]
[clusters.old.tls]
ca_file = "{ca}"
[clusters.old.sasl]
mechanism = "SCRAM-SHA-512"
username = "kshift-old"
password_file = "{old_password}"

[clusters.new]
bootstrap = ["{new}"]
[clusters.new.sasl]
mechanism = "PLAIN"
username = "kshift-new"
password_env = "{new_env}"

[[routes]]
topics = "*"
write = "old"
mirror = ["new"]
read = "old"

[[groups]]
groups = "*"
cluster = "old"
"#,
        token = token_file.display(),
        cert = pki.path("server.pem"),
        key = pki.path("server.key"),
        users = users.display(),
        old = front_old.local_addr(),
        ca = pki.path("ca.pem"),
        old_password = old_password_file.display(),
        new = front_new.local_addr(),
        new_env = new_password_env,
    );
    let proxy = common::start_proxy(&toml).await;
    let through = proxy.local_addr().to_string();
    let ca = pki.path("ca.pem");
    let client = sasl_client_settings("SCRAM-SHA-256", "app", CLIENT_PASSWORD, Some(&ca));

    let topic = common::unique_topic("secure-mirror");
    common::create_topic(&tansu_old.bootstrap(), &topic, 1).await;
    common::create_topic(&tansu_new.bootstrap(), &topic, 1).await;
    let values: Vec<String> = (0..20).map(|i| format!("secure-{i}")).collect();
    produce_values(&through, &client, &topic, &values).await;

    // On both clusters, read directly from the brokers behind the secured fronts.
    for broker in [&tansu_old, &tansu_new] {
        let consumer = common::assigned_consumer(&broker.bootstrap(), &topic, 1, &[]);
        let records = common::consume_n(&consumer, values.len(), Duration::from_secs(30)).await;
        let mut expected = values.clone();
        expected.sort();
        assert_eq!(
            values_of(&records),
            expected,
            "records on {}",
            broker.bootstrap()
        );
    }
    // And back through kshift, over TLS + SCRAM.
    let consumer = common::assigned_consumer(&through, &topic, 1, &client);
    let records = common::consume_n(&consumer, values.len(), Duration::from_secs(30)).await;
    assert_eq!(records.len(), values.len());

    // `kshift verify` reaches both clusters with their own TLS and SASL (through librdkafka)
    // and finds them equal.
    let config_file = pki.dir.path().join("kshift.toml");
    std::fs::write(&config_file, &toml).unwrap();
    let verify = common::kshift_cli(&["verify", "--config", config_file.to_str().unwrap()]).await;
    let verify_out = format!("{}{}", verify.stdout, verify.stderr);
    assert!(verify.ok(), "kshift verify: {verify_out}");
    assert!(verify_out.contains(&topic), "{verify_out}");

    // The admin API: locked without the token, and no secret in what it shows with it.
    let admin = proxy.admin_addr().expect("admin API");
    let mut bodies = Vec::new();
    for path in ["/status", "/routes", "/metrics", "/"] {
        let (status, _) = http::request_with_token(admin, "GET", path, "", None).await;
        assert_eq!(status, 401, "GET {path} without the token");
        let (status, body) =
            http::request_with_token(admin, "GET", path, "", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "GET {path} with the token: {body}");
        bodies.push(body);
    }
    let debug = format!("{:?}", kshift::config::Config::parse(&toml).unwrap());
    bodies.push(debug);
    bodies.push(verify_out);
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    assert_no_secret(
        &[OLD_PASSWORD, NEW_PASSWORD, CLIENT_PASSWORD, ADMIN_TOKEN],
        &bodies,
    );
    drop(consumer);
    proxy.shutdown().await;
    front_old.shutdown().await;
    front_new.shutdown().await;
}

/// A client that gets something wrong is refused the way a broker refuses it — wrong
/// password or unknown user (SASL_AUTHENTICATION_FAILED with a message, then closed), a
/// mechanism not enabled (UNSUPPORTED_SASL_MECHANISM), a request before authenticating or
/// plain TCP to the TLS listener (closed) — while a correct client on the same kshift keeps
/// producing and consuming. A user added to the credentials file works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_protocol_are_refused_and_a_correct_client_keeps_working() {
    captured_log();
    let pki = Pki::new();
    let broker = Broker::start().await;
    const GOOD_PASSWORD: &str = "good-client-pw-31b5";
    const WRONG_PASSWORD: &str = "wrong-client-pw-8c44";
    const LATE_PASSWORD: &str = "late-user-pw-5e19";
    let users = credentials_file(pki.dir.path(), &[("good", GOOD_PASSWORD)]);
    let proxy_lines = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [proxy.sasl]\ncredentials_file = \"{}\"\nfailed_authentication_delay_ms = 500",
        pki.path("server.pem"),
        pki.path("server.key"),
        users.display()
    );
    let proxy = common::start_proxy(&common::single_cluster_toml_at(
        &broker.bootstrap(),
        &proxy_lines,
    ))
    .await;
    let address = proxy.local_addr();
    let through = address.to_string();
    let ca = pki.path("ca.pem");
    let good = sasl_client_settings("SCRAM-SHA-512", "good", GOOD_PASSWORD, Some(&ca));
    let topic = common::unique_topic("refusals");
    common::create_topic(&broker.bootstrap(), &topic, 1).await;
    let producer = common::producer(&through, &good);
    let first: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    send_values(&producer, &topic, &first).await;

    // Wrong password, unknown user: SASL_AUTHENTICATION_FAILED (58) with Kafka's message,
    // then the connection is closed.
    for (mechanism, user, password) in [
        (Mechanism::ScramSha256, "good", WRONG_PASSWORD),
        (Mechanism::ScramSha512, "nobody", WRONG_PASSWORD),
        (Mechanism::Plain, "good", WRONG_PASSWORD),
    ] {
        let mut stream = tls_connect(address, &ca, None).await.unwrap();
        let login = SaslCredentials {
            mechanism,
            username: user.into(),
            password: Secret::new(password),
        };
        let started = std::time::Instant::now();
        let outcome = sasl_client::authenticate(&mut stream, &login).await;
        // The refusal is held back `failed_authentication_delay_ms` (~90 ms without).
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "refused after {:?}",
            started.elapsed()
        );
        match outcome {
            Err(SaslClientError::Refused { code, message, .. }) => {
                assert_eq!(code, 58, "{mechanism} {user}: {message}");
                assert!(
                    message.starts_with("Authentication failed")
                        && message.contains(mechanism.name()),
                    "{message}"
                );
            }
            other => panic!("{mechanism} as {user} with a wrong password: {other:?}"),
        }
        assert!(
            closed_without_answer(&mut stream).await,
            "closed after the refusal"
        );
    }
    // The right password over the same path passes (the refusals above were not luck).
    let mut stream = tls_connect(address, &ca, None).await.unwrap();
    let login = |mechanism, user: &str, password: &str| SaslCredentials {
        mechanism,
        username: user.into(),
        password: Secret::new(password),
    };
    sasl_client::authenticate(&mut stream, &login(Mechanism::Plain, "good", GOOD_PASSWORD))
        .await
        .expect("PLAIN with the right password");

    // A mechanism kshift does not enable: UNSUPPORTED_SASL_MECHANISM (33) listing the
    // enabled ones, then closed.
    let mut stream = tls_connect(address, &ca, None).await.unwrap();
    send(
        &mut stream,
        ApiKey::SaslHandshake,
        1,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
    )
    .await;
    let answer: SaslHandshakeResponse = receive(&mut stream, ApiKey::SaslHandshake, 1)
        .await
        .expect("a SaslHandshake answer");
    assert_eq!(answer.error_code, 33);
    assert!(answer
        .mechanisms
        .iter()
        .any(|m| m.as_str() == "SCRAM-SHA-256"));
    assert!(closed_without_answer(&mut stream).await);

    // Before authenticating: ApiVersions is answered and lists the SASL apis; anything else
    // closes the connection without an answer.
    let mut stream = tls_connect(address, &ca, None).await.unwrap();
    send(
        &mut stream,
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default(),
    )
    .await;
    let versions: ApiVersionsResponse = receive(&mut stream, ApiKey::ApiVersions, 3)
        .await
        .expect("ApiVersions before authentication");
    for api in [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate] {
        assert!(
            versions.api_keys.iter().any(|v| v.api_key == api as i16),
            "{api:?} advertised"
        );
    }
    send(
        &mut stream,
        ApiKey::Metadata,
        9,
        2,
        &MetadataRequest::default(),
    )
    .await;
    assert!(
        closed_without_answer(&mut stream).await,
        "Metadata before authentication must close the connection"
    );

    // Plain TCP to the TLS listener: no Kafka answer, the connection is closed.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    let (head, body) = api_versions_frame();
    let _ = try_send_frame(&mut plain, &head, &body).await;
    assert!(closed_without_answer(&mut plain).await);
    wait_for_log("TLS handshake failed").await;

    // A real client with a wrong password gets no metadata.
    let wrong = sasl_client_settings("SCRAM-SHA-256", "good", WRONG_PASSWORD, Some(&ca));
    let refused = common::consumer(&through, &wrong);
    let metadata = tokio::task::spawn_blocking(move || {
        let result = refused.fetch_metadata(None, Duration::from_secs(3));
        drop(refused);
        result.map(|_| ())
    })
    .await
    .unwrap();
    assert!(metadata.is_err(), "a wrong password must not get metadata");

    // A user added to the file while kshift runs: its next connection authenticates.
    add_user(&users, "late", LATE_PASSWORD);
    let mut stream = tls_connect(address, &ca, None).await.unwrap();
    sasl_client::authenticate(
        &mut stream,
        &login(Mechanism::ScramSha256, "late", LATE_PASSWORD),
    )
    .await
    .expect("a user added to the credentials file authenticates");

    // The correct client was not disturbed: its producer goes on, a new consumer reads all.
    let second: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    send_values(&producer, &topic, &second).await;
    let consumer = common::assigned_consumer(&through, &topic, 1, &good);
    let records = common::consume_n(&consumer, 10, Duration::from_secs(30)).await;
    let mut expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    expected.sort();
    assert_eq!(values_of(&records), expected);

    let log = wait_for_log("SASL SCRAM-SHA-256 authentication failed").await;
    assert!(log.contains("before SASL authentication"), "{log}");
    assert_no_secret(&[GOOD_PASSWORD, WRONG_PASSWORD, LATE_PASSWORD], &[]);
    drop(consumer);
    drop(producer);
    proxy.shutdown().await;
}

/// mTLS: with `client_ca_file`, a client certificate signed by that CA is required. No
/// certificate, an expired one or one from another CA is refused at the handshake (and
/// logged with the reason); a client with a valid certificate works before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked() {
    captured_log();
    let pki = Pki::new();
    let broker = Broker::start().await;
    let proxy_lines = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let proxy = common::start_proxy(&common::single_cluster_toml_at(
        &broker.bootstrap(),
        &proxy_lines,
    ))
    .await;
    let address = proxy.local_addr();
    let through = address.to_string();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let with_certificate = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ];
    let topic = common::unique_topic("mtls");
    common::create_topic(&broker.bootstrap(), &topic, 1).await;
    produce_values(&through, &with_certificate, &topic, &["one".to_string()]).await;

    for (what, client) in [
        ("no client certificate", None),
        (
            "an expired client certificate",
            Some(("expired-client.pem", "expired-client.key")),
        ),
        (
            "a client certificate from another CA",
            Some(("untrusted-client.pem", "untrusted-client.key")),
        ),
    ] {
        let paths = client.map(|(c, k)| (pki.path(c), pki.path(k)));
        let refused = match tls_connect(
            address,
            &ca,
            paths.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .await
        {
            Err(_) => true,
            // TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
            Ok(mut stream) => {
                let (head, body) = api_versions_frame();
                let _ = try_send_frame(&mut stream, &head, &body).await;
                closed_without_answer(&mut stream).await
            }
        };
        assert!(refused, "{what} must be refused");
    }
    let log = wait_for_log("TLS handshake failed").await;
    for reason in [
        "peer sent no certificates",
        "certificate expired",
        "UnknownIssuer",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains("TLS handshake failed") && line.contains(reason)),
            "no handshake failure logged with {reason}: {}",
            log.lines()
                .filter(|l| l.contains("TLS handshake failed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    produce_values(&through, &with_certificate, &topic, &["two".to_string()]).await;
    let consumer = common::assigned_consumer(&through, &topic, 1, &with_certificate);
    assert_eq!(
        common::consume_n(&consumer, 2, Duration::from_secs(30))
            .await
            .len(),
        2
    );
    drop(consumer);
    proxy.shutdown().await;
}

/// kshift's backend side refused: a wrong password for one cluster, a CA that did not sign
/// another cluster's certificate, an expired certificate on a third. Each is logged with
/// the cluster and the reason (and never the password); a producer to such a cluster gets
/// an error within its timeout instead of hanging; a cluster configured right, on the same
/// kshift, keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusals_are_reported_and_leave_other_clusters_working() {
    captured_log();
    let pki = Pki::new();
    let broker = Broker::start().await;
    const BACKEND_PASSWORD: &str = "backend-pw-6b0d";
    const WRONG_BACKEND_PASSWORD: &str = "wrong-backend-pw-e713";
    let front = start_secured_front(
        &pki,
        &broker,
        true,
        "SCRAM-SHA-512",
        ("kshift", BACKEND_PASSWORD),
    )
    .await;
    // A front whose certificate has expired.
    let users = credentials_file(pki.dir.path(), &[("kshift", BACKEND_PASSWORD)]);
    let proxy_lines = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[proxy.sasl]\ncredentials_file = \"{}\"",
        pki.path("expired-server.pem"),
        pki.path("expired-server.key"),
        users.display()
    );
    let expired_front = common::start_proxy(&common::single_cluster_toml_at(
        &broker.bootstrap(),
        &proxy_lines,
    ))
    .await;
    let cluster = |name: &str, address: SocketAddr, ca: &str, password: &str| {
        format!(
            "[clusters.{name}]\nbootstrap = [\"{address}\"]\n[clusters.{name}.tls]\nca_file = \"{}\"\n\
             [clusters.{name}.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"kshift\"\npassword = \"{password}\"\n",
            pki.path(ca)
        )
    };
    let route = |name: &str| {
        format!("[[routes]]\ntopics = \"{name}-*\"\nwrite = \"{name}\"\nread = \"{name}\"\n")
    };
    let mut toml = String::from(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 3000\n",
    );
    toml += &cluster("good", front.local_addr(), "ca.pem", BACKEND_PASSWORD);
    toml += &cluster(
        "badpw",
        front.local_addr(),
        "ca.pem",
        WRONG_BACKEND_PASSWORD,
    );
    toml += &cluster(
        "untrusted",
        front.local_addr(),
        "other-ca.pem",
        BACKEND_PASSWORD,
    );
    toml += &cluster(
        "expired",
        expired_front.local_addr(),
        "ca.pem",
        BACKEND_PASSWORD,
    );
    for name in ["good", "badpw", "untrusted", "expired"] {
        toml += &route(name);
    }
    toml += "[[groups]]\ngroups = \"*\"\ncluster = \"good\"\n";
    let proxy = common::start_proxy(&toml).await;
    let through = proxy.local_addr().to_string();

    let good_topic = common::unique_topic("good");
    let bad_topic = common::unique_topic("badpw");
    common::create_topic(&broker.bootstrap(), &good_topic, 1).await;
    common::create_topic(&broker.bootstrap(), &bad_topic, 1).await;
    produce_values(&through, &[], &good_topic, &["first".to_string()]).await;

    // A producer to the cluster kshift cannot log in to fails within its own timeout.
    let producer = common::producer(&through, &[("message.timeout.ms", "3000")]);
    let delivery = producer
        .send_result(FutureRecord::to(&bad_topic).key("k").payload("never"))
        .expect("queued");
    let outcome = tokio::time::timeout(common::TIMEOUT, delivery)
        .await
        .expect("a delivery report within the producer's timeout")
        .expect("report");
    assert!(
        outcome.is_err(),
        "producing to a cluster kshift cannot log in to must fail"
    );

    let log = wait_for_log("certificate expired").await;
    let warning = |needle: &str| {
        log.lines()
            .find(|line| {
                line.contains("backend refused kshift's connection") && line.contains(needle)
            })
            .map(str::to_string)
    };
    let wrong_password = warning("cluster=badpw").expect("the wrong password is reported");
    assert!(
        wrong_password.contains("SASL authentication to")
            && wrong_password.contains("Authentication failed"),
        "{wrong_password}"
    );
    let untrusted = warning("cluster=untrusted").expect("the untrusted CA is reported");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    let expired = warning("cluster=expired").expect("the expired certificate is reported");
    assert!(expired.contains("certificate expired"), "{expired}");
    assert!(
        warning("cluster=good").is_none(),
        "the good cluster was refused"
    );

    // The good cluster was not affected.
    produce_values(&through, &[], &good_topic, &["second".to_string()]).await;
    let consumer = common::assigned_consumer(&broker.bootstrap(), &good_topic, 1, &[]);
    assert_eq!(
        common::consume_n(&consumer, 2, Duration::from_secs(30))
            .await
            .len(),
        2
    );
    assert_no_secret(&[BACKEND_PASSWORD, WRONG_BACKEND_PASSWORD], &[]);
    drop(consumer);
    drop(producer);
    proxy.shutdown().await;
    front.shutdown().await;
    expired_front.shutdown().await;
}

/// `kshift user add` writes hashed entries (no password in the file) that a running kshift
/// accepts for every mechanism; `kshift user remove` takes a user away for the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kshift_user_add_writes_entries_that_authenticate() {
    captured_log();
    const PASSWORD: &str = "cli-made-pw-0c3a";
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kshift"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kshift");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let file = users.display().to_string();
    let (ok, stderr) = run(
        &[
            "user",
            "add",
            "--credentials-file",
            &file,
            "--iterations",
            "4096",
            "carol",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{stderr}");
    let (ok, stderr) = run(&["user", "add", "--credentials-file", &file, "dave"], "");
    assert!(
        !ok && stderr.contains("no password"),
        "an empty password is refused: {stderr}"
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        !text.contains(PASSWORD) && text.contains("stored_key"),
        "{text}"
    );

    // No backend is contacted for authentication.
    let proxy = common::start_proxy(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.sasl]\ncredentials_file = \"{file}\"\n\
         [clusters.old]\nbootstrap = [\"127.0.0.1:1\"]\n[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n"
    ))
    .await;
    for mechanism in Mechanism::ALL {
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        let login = SaslCredentials {
            mechanism,
            username: "carol".into(),
            password: Secret::new(PASSWORD),
        };
        sasl_client::authenticate(&mut stream, &login)
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    }
    let (ok, stderr) = run(
        &["user", "remove", "--credentials-file", &file, "carol"],
        "",
    );
    assert!(ok, "{stderr}");
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let login = SaslCredentials {
        mechanism: Mechanism::ScramSha256,
        username: "carol".into(),
        password: Secret::new(PASSWORD),
    };
    assert!(
        sasl_client::authenticate(&mut stream, &login)
            .await
            .is_err(),
        "a removed user is refused"
    );
    assert_no_secret(&[PASSWORD], &[]);
    proxy.shutdown().await;
}
