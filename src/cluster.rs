//! The client of one backend cluster: bootstrap, the API versions its brokers speak, a
//! metadata cache (brokers, controller, partition leaders) and a coordinator cache.
//!
//! kshift's own requests to a cluster use its own connections, never a client's: metadata
//! and coordinator lookups one control connection per cluster (hedged to a second broker
//! when its broker is slow: [`Cluster::control_request`]), and requests that must reach
//! one broker (offsets and groups at cutover, backfill reads, `list_offset`) one pooled
//! connection per broker ([`Cluster::request_node`]), opened once and reused until it
//! breaks. Client traffic goes over the [`UpstreamConnections`] owned by each client
//! connection (see DESIGN.md, "one connection, one request at a time").
//!
//! Invariants:
//! - Cached leaders are refreshed when older than `metadata_max_age_ms`, and dropped at
//!   once when a broker answers with a leadership error, so the next request asks again.
//! - Addresses learned here never leave kshift, nor do backend node ids: the virtual
//!   cluster shows each broker as its virtual node ([`Cluster::virtual_node`]), at kshift's
//!   own address.

pub mod broker_connection;
pub mod transport;

use foldhash::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FindCoordinatorRequest,
    FindCoordinatorResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub use broker_connection::{keep_timer_armed, BrokerConnection, Observer, ResponseFuture};

use crate::codec::{self, decode_body};
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::routing::ClusterId;
use crate::security::BackendSecurity;
use crate::sync::lock;

pub use crate::error::BackendError;

/// Key types of FindCoordinator (and of [`Cluster::coordinator`]).
pub const GROUP: i8 = 0;
pub const TRANSACTION: i8 = 1;

/// Errors after which a partition's cached leader must be asked for again.
pub fn is_leadership_error(code: i16) -> bool {
    [
        ResponseError::UnknownTopicOrPartition,
        ResponseError::LeaderNotAvailable,
        ResponseError::NotLeaderOrFollower,
        ResponseError::FencedLeaderEpoch,
        ResponseError::UnknownLeaderEpoch,
    ]
    .iter()
    .any(|error| error.code() == code)
}

/// Timeouts that apply to every backend connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub metadata_max_age: Duration,
}

impl ConnectionSettings {
    pub fn from_config(proxy: &ProxyConfig) -> ConnectionSettings {
        ConnectionSettings {
            connect_timeout: Duration::from_millis(proxy.connect_timeout_ms),
            request_timeout: Duration::from_millis(proxy.request_timeout_ms),
            metadata_max_age: Duration::from_millis(proxy.metadata_max_age_ms),
        }
    }
}

/// Version range per api key, as one cluster's brokers advertise it.
pub type ApiVersionTable = HashMap<i16, (i16, i16)>;

/// What kshift knows about one topic on one cluster.
#[derive(Debug, Clone)]
struct TopicLeaders {
    /// Leader node per partition index; -1 where the partition has no leader.
    leaders: HashMap<i32, i32>,
    fetched_at: Instant,
}

#[derive(Debug, Default)]
struct ClusterState {
    brokers: HashMap<i32, Arc<str>>,
    controller: Option<i32>,
    topics: HashMap<String, TopicLeaders>,
    api_versions: Option<Arc<ApiVersionTable>>,
}

/// One backend cluster.
#[derive(Debug)]
pub struct Cluster {
    pub id: ClusterId,
    pub name: Arc<str>,
    bootstrap: Vec<String>,
    pub settings: ConnectionSettings,
    /// TLS and SASL toward this cluster: every connection kshift opens to it uses them.
    security: Arc<BackendSecurity>,
    pub metrics: Arc<Metrics>,
    /// This cluster's request and byte metrics, resolved once for its connections.
    backend_metrics: Arc<crate::metrics::BackendMetrics>,
    state: RwLock<ClusterState>,
    /// Coordinator node per (key type, key): groups are 0, transactional ids 1.
    coordinators: Mutex<HashMap<(i8, String), i32>>,
    /// kshift's own connection for metadata and coordinator lookups; replaced on failure,
    /// or when another broker answers a hedged lookup first.
    control: tokio::sync::Mutex<Option<BrokerConnection>>,
    /// The control broker's usual round trip, for [`Cluster::hedge_delay`].
    control_rtt: RoundTrip,
    /// kshift's own connection per broker for requests that must reach that broker
    /// ([`Cluster::request_node`]): shared by all of them (pipelined), replaced once broken.
    /// A std mutex: never held across an await.
    pool: Mutex<HashMap<i32, BrokerConnection>>,
    /// Broker `b` of this cluster is virtual node `node_id_base + b` (see
    /// [`crate::config::ClusterConfig::node_id_base`]).
    node_id_base: i32,
}

pub use crate::config::VIRTUAL_NODE_BLOCK;

/// Versions kshift itself sends to backends (the newest it handles, capped by the broker).
const METADATA_VERSION: i16 = 12;
const FIND_COORDINATOR_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 7;

/// Lookups wait at least this long for the control broker before asking a second one.
const HEDGE_FLOOR: Duration = Duration::from_millis(50);
/// … or this many times the control broker's usual round trip, if that is longer.
const HEDGE_RTT_FACTOR: u32 = 4;

/// A smoothed round-trip time (an exponentially weighted mean, weight 1/8 per answer, as
/// TCP's SRTT), in microseconds; zero until the first answer.
#[derive(Debug, Default)]
struct RoundTrip(std::sync::atomic::AtomicU64);

impl RoundTrip {
    fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn observe(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        let old = self.0.load(std::sync::atomic::Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(7).saturating_add(sample)) / 8
        };
        // A lost update between two concurrent answers only drops one sample.
        self.0.store(new, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts over from `sample` (the control connection moved to another broker).
    fn reset(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        self.0.store(sample, std::sync::atomic::Ordering::Relaxed);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
impl Cluster {
    pub fn new(
        id: ClusterId,
        name: &str,
        bootstrap: Vec<String>,
        settings: ConnectionSettings,
        security: Arc<BackendSecurity>,
        metrics: Arc<Metrics>,
        node_id_base: i32,
    ) -> Cluster {
        let name: Arc<str> = name.into();
        Cluster {
            node_id_base,
            id,
            backend_metrics: metrics.backend(&name),
            name,
            bootstrap,
            settings,
            security,
            metrics,
            state: RwLock::default(),
            coordinators: Mutex::default(),
            control: tokio::sync::Mutex::new(None),
            control_rtt: RoundTrip::default(),
            pool: Mutex::default(),
        }
    }

    fn kafka_error(&self, what: &'static str, code: i16) -> BackendError {
        BackendError::Kafka {
            cluster: self.name.clone(),
            what,
            code,
        }
    }

    /// The control connection, opened if there is none or it broke.
    async fn control_connection(&self) -> Result<BrokerConnection, BackendError> {
        let mut control = self.control.lock().await;
        match control.as_ref() {
            Some(connection) if !connection.is_poisoned() => Ok(connection.clone()),
            _ => {
                let connection = self.connect_any().await?;
                *control = Some(connection.clone());
                Ok(connection)
            }
        }
    }

    /// Sends one request on the control connection, opening it if needed.
    ///
    /// A lookup (Metadata, ApiVersions, FindCoordinator) the control broker has not answered
    /// within [`Cluster::hedge_delay`] is asked of a second broker too, and the first answer
    /// wins. When the second broker's wins, it becomes the control connection: a broker that
    /// is slow (restarting, overloaded, far) holds up one lookup by the hedge delay, not
    /// every client's Metadata by its own latency. Other requests (CreateTopics, …) change
    /// state and are sent once.
    async fn control_request(
        &self,
        api_key: ApiKey,
        api_version: i16,
        body: Bytes,
    ) -> Result<Bytes, BackendError> {
        let connection = self.control_connection().await?;
        let client_id = StrBytes::from_static_str("kshift");
        let deadline = broker_connection::deadline_after(self.settings.request_timeout);
        let sent_at = Instant::now();
        let hedgeable = matches!(
            api_key,
            ApiKey::Metadata | ApiKey::ApiVersions | ApiKey::FindCoordinator
        );
        let first = connection
            .request(api_key, api_version, &client_id, body.clone())?
            .wait_until(deadline);
        if !hedgeable {
            return first.await;
        }
        tokio::pin!(first);
        if let Ok(answer) = tokio::time::timeout(self.hedge_delay(), &mut first).await {
            if answer.is_ok() {
                self.control_rtt.observe(sent_at.elapsed());
            }
            return answer;
        }
        let Some(node) = self.hedge_broker(connection.address()) else {
            return first.await;
        };
        let hedged_at = Instant::now();
        let hedge = async {
            let connection = self.pooled(node).await?;
            let answer = connection
                .request(api_key, api_version, &client_id, body)?
                .wait_until(deadline)
                .await?;
            Ok::<_, BackendError>((connection, answer))
        };
        tokio::pin!(hedge);
        tokio::select! {
            answer = &mut first => {
                self.metrics.control_hedge(&self.name, "lost");
                match answer {
                    Ok(answer) => {
                        self.control_rtt.observe(sent_at.elapsed());
                        Ok(answer)
                    }
                    Err(error) => match hedge.await {
                        Ok((second, answer)) => {
                            self.adopt_control(&connection, second, hedged_at).await;
                            Ok(answer)
                        }
                        Err(_) => Err(error),
                    },
                }
            }
            hedged = &mut hedge => match hedged {
                Ok((second, answer)) => {
                    self.metrics.control_hedge(&self.name, "won");
                    self.adopt_control(&connection, second, hedged_at).await;
                    Ok(answer)
                }
                Err(_) => {
                    self.metrics.control_hedge(&self.name, "lost");
                    first.await
                }
            },
        }
    }

    /// How long a lookup waits on the control broker before a second broker is asked too:
    /// [`HEDGE_RTT_FACTOR`] times its usual round trip, at least [`HEDGE_FLOOR`], so that a
    /// far cluster's ordinary latency never looks slow.
    fn hedge_delay(&self) -> Duration {
        (self.control_rtt.get() * HEDGE_RTT_FACTOR)
            .max(HEDGE_FLOOR)
            .min(self.settings.request_timeout)
    }

    /// A known broker that is not at `control`'s address, to hedge a lookup to.
    fn hedge_broker(&self, control: &Arc<str>) -> Option<i32> {
        let state = read(&self.state);
        let mut brokers: Vec<(i32, &Arc<str>)> = state
            .brokers
            .iter()
            .filter(|(_, address)| *address != control)
            .map(|(node, address)| (*node, address))
            .collect();
        brokers.sort_unstable();
        brokers.first().map(|(node, _)| *node)
    }

    /// Makes `second`, which answered a hedged lookup before `slow` did, the control
    /// connection (unless the control connection was replaced meanwhile).
    async fn adopt_control(
        &self,
        slow: &BrokerConnection,
        second: BrokerConnection,
        hedged_at: Instant,
    ) {
        self.control_rtt.reset(hedged_at.elapsed());
        let mut control = self.control.lock().await;
        if control
            .as_ref()
            .is_none_or(|current| current.address() == slow.address())
        {
            tracing::info!(
                cluster = %self.name,
                from = %slow.address(),
                to = %second.address(),
                "control connection moved: another broker answered a lookup first"
            );
            *control = Some(second);
        }
    }

    /// Opens a connection to `address`, one of this cluster's brokers.
    pub async fn connect(&self, address: &str) -> Result<BrokerConnection, BackendError> {
        self.metrics.backend_connection_opened(&self.name);
        let opened =
            transport::connect(address, self.settings.connect_timeout, &self.security).await;
        if let Err(error @ (BackendError::Tls { .. } | BackendError::Authentication { .. })) =
            &opened
        {
            // A configuration problem an operator must fix (credentials, CA, name).
            tracing::warn!(cluster = %self.name, %error, "backend refused kshift's connection");
        }
        let (read_half, write_half) = opened?.into_halves();
        let observer = Observer {
            metrics: self.backend_metrics.clone(),
        };
        Ok(BrokerConnection::from_halves(
            read_half,
            write_half,
            address.into(),
            Some(observer),
        ))
    }

    /// Connects to any known broker, then to the bootstrap list.
    async fn connect_any(&self) -> Result<BrokerConnection, BackendError> {
        let mut candidates: Vec<String> = read(&self.state)
            .brokers
            .values()
            .map(|address| address.to_string())
            .collect();
        candidates.extend(self.bootstrap.iter().cloned());
        let mut last_error = None;
        for address in candidates {
            match self.connect(&address).await {
                Ok(connection) => return Ok(connection),
                Err(e) => last_error = Some(e),
            }
        }
        Err(BackendError::Unreachable {
            cluster: self.name.clone(),
            reason: last_error.map_or_else(|| "no brokers".into(), |e| e.to_string().into()),
        })
    }

    /// The API versions this cluster supports, asked once and cached.
    pub async fn api_versions(&self) -> Result<Arc<ApiVersionTable>, BackendError> {
        if let Some(versions) = read(&self.state).api_versions.clone() {
            return Ok(versions);
        }
        let mut response = self.request_api_versions(3).await?;
        if response.error_code == ResponseError::UnsupportedVersion.code() {
            response = self.request_api_versions(0).await?;
        }
        if response.error_code != 0 {
            return Err(self.kafka_error("ApiVersions", response.error_code));
        }
        let table: ApiVersionTable = response
            .api_keys
            .iter()
            .map(|v| (v.api_key, (v.min_version, v.max_version)))
            .collect();
        let table = Arc::new(table);
        write(&self.state).api_versions = Some(table.clone());
        Ok(table)
    }

    /// API versions if already known, without asking.
    pub fn known_api_versions(&self) -> Option<Arc<ApiVersionTable>> {
        read(&self.state).api_versions.clone()
    }

    async fn request_api_versions(
        &self,
        version: i16,
    ) -> Result<ApiVersionsResponse, BackendError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kshift"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let body = self.encode(&request, version)?;
        let response = self
            .control_request(ApiKey::ApiVersions, version, body)
            .await?;
        // An ApiVersions error answer is always v0-shaped.
        match decode_body::<ApiVersionsResponse>(response.clone(), version, "ApiVersions response")
        {
            Ok(decoded) => Ok(decoded),
            Err(_) => self.decode(response, 0),
        }
    }

    /// The version to send `api_key` at: the broker's newest, capped at `newest_known`.
    pub async fn version_for(
        &self,
        api_key: ApiKey,
        newest_known: i16,
    ) -> Result<i16, BackendError> {
        let versions = self.api_versions().await?;
        match versions.get(&(api_key as i16)) {
            Some(&(min, max)) if min <= newest_known => Ok(max.min(newest_known)),
            _ => Err(self.kafka_error(
                "version negotiation",
                ResponseError::UnsupportedVersion.code(),
            )),
        }
    }

    fn encode<M: kafka_protocol::protocol::Encodable>(
        &self,
        message: &M,
        version: i16,
    ) -> Result<Bytes, BackendError> {
        codec::encode_body(message, version).map_err(|e| BackendError::Protocol {
            address: self.name.clone(),
            reason: e.to_string().into(),
        })
    }

    fn decode<M: kafka_protocol::protocol::Decodable>(
        &self,
        body: Bytes,
        version: i16,
    ) -> Result<M, BackendError> {
        decode_body(body, version, "backend response")
            .map_err(|e| BackendError::undecodable(&self.name, "backend response", e))
    }

    /// Asks the cluster for metadata (all topics when `topics` is `None`) and refreshes
    /// the caches from the answer.
    pub async fn metadata(
        &self,
        topics: Option<&[String]>,
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse, BackendError> {
        let version = self.version_for(ApiKey::Metadata, METADATA_VERSION).await?;
        let request = MetadataRequest::default()
            .with_topics(topics.map(|topics| {
                topics
                    .iter()
                    .map(|name| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(allow_auto_topic_creation);
        let body = self.encode(&request, version)?;
        let response = self
            .control_request(ApiKey::Metadata, version, body)
            .await?;
        let response: MetadataResponse = self.decode(response, version)?;
        self.absorb_metadata(&response);
        Ok(response)
    }

    fn absorb_metadata(&self, response: &MetadataResponse) {
        let now = Instant::now();
        let mut state = write(&self.state);
        for broker in &response.brokers {
            state.brokers.insert(
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port).into(),
            );
        }
        if response.controller_id.0 >= 0 {
            state.controller = Some(response.controller_id.0);
        }
        for topic in &response.topics {
            let Some(name) = &topic.name else { continue };
            if topic.error_code != 0 {
                state.topics.remove(name.0.as_str());
                continue;
            }
            // Keyed by index, never a vector sized by the largest index a broker sent (an
            // index near 2^31 asked for 8 GiB, and `+ 1` on it overflowed).
            let leaders: HashMap<i32, i32> = topic
                .partitions
                .iter()
                .filter(|p| p.partition_index >= 0)
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect();
            state.topics.insert(
                name.0.to_string(),
                TopicLeaders {
                    leaders,
                    fetched_at: now,
                },
            );
        }
    }

    /// The leader of `topic`/`partition`: `Ok(None)` when the cluster has no such
    /// partition or it has no leader right now.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Option<i32>, BackendError> {
        let cached = self.cached_leader(topic, partition);
        if let Some(leader) = cached {
            return Ok(Some(leader));
        }
        self.metadata(Some(&[topic.to_string()]), false).await?;
        Ok(self.cached_leader(topic, partition))
    }

    /// The number of partitions of `topic`, `Ok(None)` when the cluster has no such topic.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<i32>, BackendError> {
        if let Some(count) = self.cached_partition_count(topic) {
            return Ok(Some(count));
        }
        self.metadata(Some(&[topic.to_string()]), false).await?;
        Ok(self.cached_partition_count(topic))
    }

    fn cached_partition_count(&self, topic: &str) -> Option<i32> {
        let state = read(&self.state);
        let leaders = state.topics.get(topic)?;
        (leaders.fetched_at.elapsed() <= self.settings.metadata_max_age)
            .then(|| i32::try_from(leaders.leaders.len()).unwrap_or(i32::MAX))
    }

    /// The leader of `topic`/`partition` as last learnt, without asking (`None` when
    /// unknown, stale or leaderless).
    pub fn known_leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.cached_leader(topic, partition)
    }

    fn cached_leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let state = read(&self.state);
        let leaders = state.topics.get(topic)?;
        if leaders.fetched_at.elapsed() > self.settings.metadata_max_age {
            return None;
        }
        let leader = *leaders.leaders.get(&partition)?;
        (leader >= 0).then_some(leader)
    }

    /// The node id clients know broker `broker` of this cluster by: stable per (cluster,
    /// broker), the same on every kshift with this cluster's configuration, never derived
    /// from an address. Broker ids beyond the block fold into it (two brokers then share a
    /// virtual node: still served correctly, since kshift serves any partition on any
    /// connection).
    pub fn virtual_node(&self, broker: i32) -> i32 {
        self.node_id_base
            .saturating_add(broker.rem_euclid(VIRTUAL_NODE_BLOCK))
    }

    /// The brokers the last metadata (or coordinator lookup) named, in id order.
    pub fn known_brokers(&self) -> Vec<i32> {
        let mut brokers: Vec<i32> = read(&self.state).brokers.keys().copied().collect();
        brokers.sort_unstable();
        brokers
    }

    /// The controller the last metadata named, if it is still a known broker.
    pub fn known_controller(&self) -> Option<i32> {
        let state = read(&self.state);
        state
            .controller
            .filter(|node| state.brokers.contains_key(node))
    }

    /// Forgets what is cached about `topic`, after a broker said it is not the leader.
    pub fn forget_leaders(&self, topic: &str) {
        write(&self.state).topics.remove(topic);
    }

    /// `host:port` of node `node`.
    pub fn broker_address(&self, node: i32) -> Result<Arc<str>, BackendError> {
        read(&self.state)
            .brokers
            .get(&node)
            .cloned()
            .ok_or_else(|| BackendError::UnknownBroker {
                cluster: self.name.clone(),
                node,
            })
    }

    /// A broker for requests any broker can serve: the controller if known, else any.
    pub async fn any_broker(&self) -> Result<i32, BackendError> {
        if let Some(node) = self.known_any_broker() {
            return Ok(node);
        }
        self.metadata(Some(&[]), false).await?;
        self.known_any_broker()
            .ok_or_else(|| BackendError::Unreachable {
                cluster: self.name.clone(),
                reason: "metadata lists no brokers".into(),
            })
    }

    fn known_any_broker(&self) -> Option<i32> {
        let state = read(&self.state);
        state
            .controller
            .filter(|node| state.brokers.contains_key(node))
            .or_else(|| state.brokers.keys().min().copied())
    }

    /// The coordinator node for a group (`key_type` 0) or transactional id (1).
    pub async fn coordinator(&self, key_type: i8, key: &str) -> Result<i32, BackendError> {
        if let Some(node) = lock(&self.coordinators).get(&(key_type, key.to_string())) {
            return Ok(*node);
        }
        let version = self
            .version_for(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION)
            .await?;
        let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
        if version >= 4 {
            request.coordinator_keys = vec![StrBytes::from_string(key.to_string())];
        } else {
            request.key = StrBytes::from_string(key.to_string());
        }
        let body = self.encode(&request, version)?;
        let response = self
            .control_request(ApiKey::FindCoordinator, version, body)
            .await?;
        let response: FindCoordinatorResponse = self.decode(response, version)?;
        let (error_code, node, host, port) = match response.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.node_id.0, c.host.clone(), c.port),
            _ => (
                response.error_code,
                response.node_id.0,
                response.host.clone(),
                response.port,
            ),
        };
        if error_code != 0 {
            return Err(self.kafka_error("FindCoordinator", error_code));
        }
        write(&self.state)
            .brokers
            .insert(node, format!("{}:{}", host.as_str(), port).into());
        lock(&self.coordinators).insert((key_type, key.to_string()), node);
        Ok(node)
    }

    /// Sends an admin request (CreateTopics, …) to any broker over the control connection
    /// and returns the raw answer.
    pub async fn admin_request<M: kafka_protocol::protocol::Encodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &M,
    ) -> Result<Bytes, BackendError> {
        let body = self.encode(request, version)?;
        self.control_request(api_key, version, body).await
    }

    /// kshift's pooled connection to broker `node`, opened if there is none (or it broke,
    /// or the broker moved to another address).
    async fn pooled(&self, node: i32) -> Result<BrokerConnection, BackendError> {
        let address = self.broker_address(node)?;
        let usable = |connection: &BrokerConnection| {
            !connection.is_poisoned() && *connection.address() == address
        };
        if let Some(connection) = lock(&self.pool).get(&node).filter(|c| usable(c)) {
            return Ok(connection.clone());
        }
        let connection = self.connect(&address).await?;
        let mut pool = lock(&self.pool);
        // Another request may have opened one meanwhile: keep that one, drop this.
        match pool.get(&node).filter(|c| usable(c)) {
            Some(existing) => Ok(existing.clone()),
            None => {
                pool.insert(node, connection.clone());
                Ok(connection)
            }
        }
    }

    /// Sends one request to broker `node` on kshift's pooled connection to it and decodes
    /// the answer: for kshift's own requests (offsets and groups at cutover, backfill reads),
    /// which must reach one particular broker and must not queue behind a client's.
    pub async fn request_node<Req, Resp>(
        &self,
        node: i32,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, BackendError>
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        let connection = self.pooled(node).await?;
        let body = self.encode(request, version)?;
        let client_id = StrBytes::from_static_str("kshift");
        let response = connection.request(api_key, version, &client_id, body)?;
        let body = response.wait(self.settings.request_timeout).await?;
        self.decode(body, version)
    }

    /// ListOffsets for one partition at its leader: `timestamp` -1 is the high watermark,
    /// -2 the log start.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, BackendError> {
        let version = self
            .version_for(ApiKey::ListOffsets, LIST_OFFSETS_VERSION)
            .await?;
        let Some(leader) = self.leader(topic, partition).await? else {
            return Err(
                self.kafka_error("ListOffsets", ResponseError::UnknownTopicOrPartition.code())
            );
        };
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse = self
            .request_node(leader, ApiKey::ListOffsets, version, &request)
            .await?;
        let answer = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| {
                self.kafka_error("ListOffsets", ResponseError::UnknownServerError.code())
            })?;
        if answer.error_code != 0 {
            if is_leadership_error(answer.error_code) {
                self.forget_leaders(topic);
            }
            return Err(self.kafka_error("ListOffsets", answer.error_code));
        }
        Ok(answer.offset)
    }

    /// Every broker the last metadata named.
    pub async fn broker_ids(&self) -> Result<Vec<i32>, BackendError> {
        if read(&self.state).brokers.is_empty() {
            self.metadata(Some(&[]), false).await?;
        }
        Ok(read(&self.state).brokers.keys().copied().collect())
    }

    /// Forgets a coordinator after the broker said it is not (or no longer) it.
    pub fn forget_coordinator(&self, key_type: i8, key: &str) {
        lock(&self.coordinators).remove(&(key_type, key.to_string()));
    }
}

/// Which of a client connection's connections to a broker a request uses. Fetches get
/// their own, so a long poll never holds up that client's produce or commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Fetch,
    Other,
}

/// The backend connections of one client connection, opened lazily, one per
/// (cluster, broker, lane) — as the client would have had going direct.
#[derive(Debug, Default)]
pub struct UpstreamConnections {
    /// Held across a connect so that requests of this client connection keep their order.
    connections: tokio::sync::Mutex<HashMap<(ClusterId, i32, Lane), BrokerConnection>>,
    /// Set when one of these connections broke with requests in flight (see `get`).
    lost: std::sync::atomic::AtomicBool,
}

impl UpstreamConnections {
    /// True once a backend connection broke with requests of this client in flight: the
    /// client connection must close so that the client retries them in order.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The open connection to `node` of `cluster` on `lane`, without waiting: `None` when
    /// there is none yet, it broke, or another request is opening one (then
    /// [`UpstreamConnections::get`] decides what to do).
    pub fn try_get(&self, cluster: &Cluster, node: i32, lane: Lane) -> Option<BrokerConnection> {
        let connections = self.connections.try_lock().ok()?;
        connections
            .get(&(cluster.id, node, lane))
            .filter(|connection| !connection.is_poisoned())
            .cloned()
    }

    /// The connection to `node` of `cluster` on `lane`, opened if needed.
    pub async fn get(
        &self,
        cluster: &Cluster,
        node: i32,
        lane: Lane,
    ) -> Result<BrokerConnection, BackendError> {
        let key = (cluster.id, node, lane);
        let mut connections = self.connections.lock().await;
        if let Some(connection) = connections.get(&key) {
            if !connection.is_poisoned() {
                return Ok(connection.clone());
            }
            if connection.failed_in_flight() {
                // The client pipelined this request behind ones that failed with that
                // connection and will be retried: sending it on a new connection could put
                // it ahead of them (an idempotent producer's sequence gap, records lost).
                // The client connection closes instead, as the broker's would have.
                self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(BackendError::Closed {
                    address: connection.address().clone(),
                    reason: "the connection broke with requests in flight".into(),
                });
            }
        }
        let address = cluster.broker_address(node)?;
        let connection = cluster.connect(&address).await?;
        connections.insert(key, connection.clone());
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };

    fn cluster() -> Cluster {
        Cluster::new(
            0,
            "old",
            vec!["127.0.0.1:9".into()],
            ConnectionSettings {
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(1),
                metadata_max_age: Duration::from_secs(60),
            },
            Arc::new(BackendSecurity::default()),
            Arc::new(Metrics::new()),
            5_000_000,
        )
    }

    fn topic(name: &str, partitions: &[(i32, i32)]) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.into()))))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(index, leader)| {
                        MetadataResponsePartition::default()
                            .with_partition_index(index)
                            .with_leader_id(BrokerId(leader))
                    })
                    .collect(),
            )
    }

    #[test]
    fn a_partition_index_near_2_pow_31_neither_overflows_nor_allocates_by_it() {
        let cluster = cluster();
        let response = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(7))
                .with_host(StrBytes::from_static_str("b7"))
                .with_port(9092)])
            .with_topics(vec![
                topic("huge", &[(i32::MAX, 7), (0, 7)]),
                topic("negative", &[(-5, 7), (1, 7)]),
            ]);
        cluster.absorb_metadata(&response);
        assert_eq!(cluster.cached_leader("huge", i32::MAX), Some(7));
        assert_eq!(cluster.cached_leader("huge", 0), Some(7));
        assert_eq!(cluster.cached_leader("huge", 1), None);
        assert_eq!(cluster.cached_partition_count("huge"), Some(2));
        assert_eq!(cluster.cached_leader("negative", -5), None);
        assert_eq!(cluster.cached_leader("negative", 1), Some(7));
    }

    #[test]
    fn virtual_nodes_are_the_base_plus_the_broker_id() {
        let cluster = cluster();
        assert_eq!(cluster.virtual_node(0), 5_000_000);
        assert_eq!(cluster.virtual_node(111), 5_000_111);
        // Ids beyond the block fold into it rather than into another cluster's.
        assert_eq!(cluster.virtual_node(VIRTUAL_NODE_BLOCK + 3), 5_000_003);
        assert_eq!(
            cluster.virtual_node(i32::MAX),
            5_000_000 + i32::MAX % VIRTUAL_NODE_BLOCK
        );
    }

    #[test]
    fn the_hedge_waits_four_round_trips_at_least_the_floor_at_most_the_timeout() {
        let cluster = cluster();
        assert_eq!(cluster.hedge_delay(), HEDGE_FLOOR, "no answer seen yet");
        cluster.control_rtt.observe(Duration::from_millis(2));
        assert_eq!(cluster.hedge_delay(), HEDGE_FLOOR, "a near cluster");
        cluster.control_rtt.reset(Duration::from_millis(80));
        assert_eq!(
            cluster.hedge_delay(),
            Duration::from_millis(320),
            "a far one"
        );
        cluster.control_rtt.observe(Duration::from_millis(160));
        assert_eq!(
            cluster.control_rtt.get(),
            Duration::from_millis(90),
            "1/8 per answer"
        );
        cluster.control_rtt.reset(Duration::from_secs(5));
        assert_eq!(
            cluster.hedge_delay(),
            Duration::from_secs(1),
            "the request timeout"
        );
    }

    #[test]
    fn lookups_are_hedged_to_a_broker_at_another_address() {
        let cluster = cluster();
        let brokers = |ids: &[(i32, &str)]| {
            MetadataResponse::default().with_brokers(
                ids.iter()
                    .map(|&(id, host)| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_string(host.into()))
                            .with_port(9092)
                    })
                    .collect(),
            )
        };
        let control: Arc<str> = "a:9092".into();
        assert_eq!(cluster.hedge_broker(&control), None, "no broker known");
        cluster.absorb_metadata(&brokers(&[(1, "a")]));
        assert_eq!(
            cluster.hedge_broker(&control),
            None,
            "only the control broker"
        );
        cluster.absorb_metadata(&brokers(&[(3, "c"), (2, "b")]));
        assert_eq!(cluster.hedge_broker(&control), Some(2));
        assert_eq!(cluster.hedge_broker(&"b:9092".into()), Some(1));
    }
}
