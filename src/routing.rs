//! The routing table: which backend cluster each topic is written to, mirrored to and read
//! from, and which cluster hosts each consumer group.
//!
//! Invariants:
//! - A [`RoutingTable`] is immutable and valid as a whole; [`RoutingTable::build`] checks the
//!   entire table before one exists, and errors name the rule and field (`routes[2].write`).
//! - The table in force lives in one [`Routing`] (one `ArcSwap`); every request loads it
//!   once and finishes on that snapshot, so a swap never splits a request across two tables.

pub mod moves;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// Index of a backend cluster in [`crate::ProxyState::clusters`] (clusters sorted by name).
pub type ClusterId = usize;

/// A routing table as operators write it (`[[routes]]`, `[[groups]]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
}

/// One `[[routes]]` rule as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Glob on the client-visible topic name.
    pub topics: String,
    /// Glob on the client's `client.id`, for per-service rollout.
    #[serde(default = "match_all")]
    pub clients: String,
    /// Cluster whose answer the producer gets.
    pub write: String,
    /// Clusters that also receive the produced records.
    #[serde(default)]
    pub mirror: Vec<String>,
    /// `async` never delays the client; `sync` answers after every mirror succeeded.
    #[serde(default)]
    pub mirror_mode: MirrorMode,
    /// Share of records mirrored (0–100), chosen by a hash of the record key.
    #[serde(default = "full_percent")]
    pub mirror_percent: u8,
    /// Cluster serving Fetch and ListOffsets; defaults to `write`.
    #[serde(default)]
    pub read: Option<String>,
    /// How partitions map between clusters.
    #[serde(default)]
    pub partitioning: Partitioning,
    /// Topic name per cluster, where it differs from the client-visible name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Keep each mirror a complete, ordered copy: before mirroring a batch, copy from the
    /// write cluster whatever the mirror lacks before it (records from before mirroring
    /// started, batches dropped or failed). Needs identity partitioning and 100%.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backfill: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One `[[groups]]` rule as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Glob on `group.id` (and on `transactional.id`, for transaction coordinators).
    pub groups: String,
    /// Cluster hosting these groups and their committed offsets.
    pub cluster: String,
    /// Copy these groups' committed offsets to every other cluster holding a copy of their
    /// topics (the route's write cluster and mirrors), translated with the offset map, this
    /// often (milliseconds): a rollback, or a consumer started straight on the other cluster,
    /// resumes where the group is. Groups with members on the target are left alone. Off
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_sync_ms: Option<u64>,
}

/// Least and most `offset_sync_ms`.
pub const OFFSET_SYNC_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;

fn match_all() -> String {
    "*".to_string()
}
fn full_percent() -> u8 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    #[default]
    Async,
    Sync,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    #[default]
    Identity,
    Murmur2,
}

/// Why a routing table was refused; the message names the rule and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RoutingError {
    pub field: String,
    pub reason: String,
}

fn error(field: String, reason: impl Into<String>) -> RoutingError {
    RoutingError {
        field,
        reason: reason.into(),
    }
}

/// A validated route, with its globs compiled and clusters resolved to ids.
#[derive(Debug)]
pub struct Route {
    /// Position in the table, used in logs and metric labels (`routes[3]`).
    pub index: usize,
    clients: GlobMatcher,
    pub write: ClusterId,
    pub mirror: Vec<ClusterId>,
    pub mirror_mode: MirrorMode,
    pub mirror_percent: u8,
    pub read: ClusterId,
    pub partitioning: Partitioning,
    /// Mirrors are kept complete and ordered by copying what they lack from `write`.
    pub backfill: bool,
    /// Topic name per cluster id, where it differs from the client-visible name.
    rename: BTreeMap<ClusterId, String>,
}

impl Route {
    /// The topic's name on `cluster`.
    pub fn topic_on<'a>(&'a self, cluster: ClusterId, topic: &'a str) -> &'a str {
        self.rename.get(&cluster).map_or(topic, String::as_str)
    }
}

#[derive(Debug)]
struct GroupRule {
    groups: GlobMatcher,
    cluster: ClusterId,
    offset_sync: Option<std::time::Duration>,
}

/// One immutable, validated routing table.
#[derive(Debug)]
pub struct RoutingTable {
    /// Increases on every swap; shown by `/routes` and in logs.
    pub version: u64,
    /// What the table was built from, for display and rollback.
    pub spec: RoutingSpec,
    /// When this table was built (put in force right after), for its age in `/status`.
    pub built_at: std::time::Instant,
    routes: Vec<Route>,
    /// Every route's `topics` glob, compiled together: one pass finds all candidates.
    topic_set: GlobSet,
    groups: Vec<GroupRule>,
    /// Cluster for groups no `[[groups]]` rule matches: the first route's read cluster.
    default_group_cluster: ClusterId,
    /// Unique per table built, for [`RouteCache`] (versions are not: a table that is
    /// checked and refused, or built by a test, may share one).
    id: u64,
}

/// Hands out [`RoutingTable::id`]s.
static NEXT_TABLE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many (topic, client id) decisions a thread's [`RouteCache`] holds before it starts
/// over: a bound on its memory however many topics and client ids come and go.
const ROUTE_CACHE_DECISIONS: usize = 16 * 1024;

/// This thread's route decisions for the table it last routed with, by topic and then
/// client id. Matching the globs cost ~1,700 instructions per produce (callgrind, one route
/// `topics = "*"`), more with more routes; a hit is two short-string hashes. Per thread, so
/// workers never contend; keyed by table id, so a swapped table starts it over.
#[derive(Default)]
struct RouteCache {
    table: u64,
    decisions: usize,
    topics: foldhash::HashMap<Box<str>, Vec<ClientDecision>>,
}

/// A client id and the position of the route it gets (none: no route takes the topic).
type ClientDecision = (Box<str>, Option<usize>);

impl RoutingTable {
    /// Validates `spec` against the configured cluster names and compiles it.
    pub fn build(
        spec: &RoutingSpec,
        clusters: &[String],
        version: u64,
    ) -> Result<RoutingTable, RoutingError> {
        let cluster_id = |field: String, name: &str| -> Result<ClusterId, RoutingError> {
            clusters.iter().position(|c| c == name).ok_or_else(|| {
                error(
                    field,
                    format!(
                        "unknown cluster {name:?} (configured: {})",
                        clusters.join(", ")
                    ),
                )
            })
        };
        if spec.routes.is_empty() {
            return Err(error(
                "routes".into(),
                "at least one [[routes]] rule is required",
            ));
        }
        let mut routes = Vec::with_capacity(spec.routes.len());
        for (index, rule) in spec.routes.iter().enumerate() {
            let field = |name: &str| format!("routes[{index}].{name}");
            compile_glob(field("topics"), &rule.topics)?;
            let clients = compile_glob(field("clients"), &rule.clients)?;
            let write = cluster_id(field("write"), &rule.write)?;
            let read = match &rule.read {
                Some(name) => cluster_id(field("read"), name)?,
                None => write,
            };
            let mut mirror = Vec::with_capacity(rule.mirror.len());
            for (i, name) in rule.mirror.iter().enumerate() {
                let id = cluster_id(format!("routes[{index}].mirror[{i}]"), name)?;
                if id == write {
                    return Err(error(
                        format!("routes[{index}].mirror[{i}]"),
                        format!(
                            "{name:?} is this route's write cluster; it cannot also be its mirror"
                        ),
                    ));
                }
                if mirror.contains(&id) {
                    return Err(error(
                        format!("routes[{index}].mirror[{i}]"),
                        format!("{name:?} is listed twice"),
                    ));
                }
                mirror.push(id);
            }
            if rule.mirror_percent > 100 {
                return Err(error(
                    field("mirror_percent"),
                    format!("{} is outside 0–100", rule.mirror_percent),
                ));
            }
            if rule.mirror_mode == MirrorMode::Sync && mirror.is_empty() {
                return Err(error(
                    field("mirror_mode"),
                    "\"sync\" needs at least one cluster in `mirror`",
                ));
            }
            if rule.backfill
                && (mirror.is_empty()
                    || rule.mirror_percent < 100
                    || rule.partitioning != Partitioning::Identity)
            {
                return Err(error(
                    field("backfill"),
                    "needs a mirror, mirror_percent = 100 and identity partitioning (it copies partition by partition, in offset order)",
                ));
            }
            let mut rename = BTreeMap::new();
            for (name, topic) in &rule.rename {
                let id = cluster_id(format!("routes[{index}].rename.{name}"), name)?;
                if topic.is_empty() || topic.len() > 249 {
                    return Err(error(
                        format!("routes[{index}].rename.{name}"),
                        "a topic name has 1 to 249 characters",
                    ));
                }
                rename.insert(id, topic.clone());
            }
            if let Some(earlier) = spec.routes[..index].iter().position(|earlier| {
                is_match_all(&earlier.topics) && is_match_all(&earlier.clients)
                    || earlier.topics == rule.topics && earlier.clients == rule.clients
                    || is_match_all(&earlier.clients) && earlier.topics == rule.topics
                    || is_match_all(&earlier.topics) && earlier.clients == rule.clients
            }) {
                return Err(error(
                    format!("routes[{index}]"),
                    format!("can never match: routes[{earlier}] matches every topic and client it would"),
                ));
            }
            routes.push(Route {
                index,
                clients,
                write,
                mirror,
                mirror_mode: rule.mirror_mode,
                mirror_percent: rule.mirror_percent,
                read,
                partitioning: rule.partitioning,
                backfill: rule.backfill,
                rename,
            });
        }
        let mut groups = Vec::with_capacity(spec.groups.len());
        for (index, rule) in spec.groups.iter().enumerate() {
            let matcher = compile_glob(format!("groups[{index}].groups"), &rule.groups)?;
            let cluster = cluster_id(format!("groups[{index}].cluster"), &rule.cluster)?;
            if let Some(earlier) = spec.groups[..index]
                .iter()
                .position(|earlier| is_match_all(&earlier.groups) || earlier.groups == rule.groups)
            {
                return Err(error(
                    format!("groups[{index}]"),
                    format!("can never match: groups[{earlier}] matches every group it would"),
                ));
            }
            if let Some(interval) = rule.offset_sync_ms {
                if !OFFSET_SYNC_MS.contains(&interval) {
                    return Err(error(
                        format!("groups[{index}].offset_sync_ms"),
                        format!(
                            "must be {} to {} (milliseconds)",
                            OFFSET_SYNC_MS.start(),
                            OFFSET_SYNC_MS.end()
                        ),
                    ));
                }
            }
            groups.push(GroupRule {
                groups: matcher,
                cluster,
                offset_sync: rule.offset_sync_ms.map(std::time::Duration::from_millis),
            });
        }
        let default_group_cluster = routes[0].read;
        let mut topic_set = GlobSetBuilder::new();
        for (index, rule) in spec.routes.iter().enumerate() {
            let glob = Glob::new(&rule.topics).map_err(|e| {
                error(
                    format!("routes[{index}].topics"),
                    format!("invalid glob: {e}"),
                )
            })?;
            topic_set.add(glob);
        }
        let topic_set = topic_set
            .build()
            .map_err(|e| error("routes".into(), format!("cannot compile topic globs: {e}")))?;
        Ok(RoutingTable {
            version,
            spec: spec.clone(),
            built_at: std::time::Instant::now(),
            routes,
            topic_set,
            groups,
            default_group_cluster,
            id: NEXT_TABLE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Whether some client can reach `topic` through the route at `index`: the route's
    /// topic glob matches and no earlier route takes the topic for every client.
    pub fn route_serves_topic(&self, index: usize, topic: &str) -> bool {
        let matching = self.topic_set.matches(topic);
        matching.contains(&index)
            && !matching.iter().any(|&earlier| {
                earlier < index
                    && self
                        .spec
                        .routes
                        .get(earlier)
                        .is_some_and(|r| is_match_all(&r.clients))
            })
    }

    /// The first route matching `topic` for `client_id`, if any.
    pub fn route(&self, topic: &str, client_id: &str) -> Option<&Route> {
        thread_local! {
            static CACHE: std::cell::RefCell<RouteCache> = std::cell::RefCell::default();
        }
        let index = CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.table != self.id || cache.decisions >= ROUTE_CACHE_DECISIONS {
                cache.table = self.id;
                cache.decisions = 0;
                cache.topics.clear();
            }
            if let Some(clients) = cache.topics.get(topic) {
                if let Some((_, index)) = clients.iter().find(|(c, _)| **c == *client_id) {
                    return *index;
                }
            }
            let index = self.match_route(topic, client_id);
            cache.decisions += 1;
            cache
                .topics
                .entry(topic.into())
                .or_default()
                .push((client_id.into(), index));
            index
        });
        index.and_then(|index| self.routes.get(index))
    }

    /// The position of the first route matching `topic` for `client_id`, by its globs.
    fn match_route(&self, topic: &str, client_id: &str) -> Option<usize> {
        thread_local! {
            static CANDIDATES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        CANDIDATES.with(|candidates| {
            let mut candidates = candidates.borrow_mut();
            self.topic_set.matches_into(topic, &mut candidates);
            candidates.sort_unstable();
            candidates.iter().copied().find(|&index| {
                self.routes
                    .get(index)
                    .is_some_and(|route| route.clients.is_match(client_id))
            })
        })
    }

    /// The route at position `index` (as recorded in a request's routing decisions).
    pub fn route_at(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The `[[groups]]` rule `group` falls under (its position), if any.
    pub fn group_rule(&self, group: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|rule| rule.groups.is_match(group))
    }

    /// The rules whose groups' offsets are synced: (position, cluster, interval).
    pub fn offset_sync_rules(&self) -> Vec<(usize, ClusterId, std::time::Duration)> {
        self.groups
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| Some((index, rule.cluster, rule.offset_sync?)))
            .collect()
    }

    /// The cluster hosting group (or transactional id) `group`.
    pub fn group_cluster(&self, group: &str) -> ClusterId {
        self.groups
            .iter()
            .find(|rule| rule.groups.is_match(group))
            .map_or(self.default_group_cluster, |rule| rule.cluster)
    }

    /// The write cluster for requests that name no topic (InitProducerId without a
    /// transactional id): that of the first route this client can match.
    pub fn default_write_cluster(&self, client_id: &str) -> ClusterId {
        self.routes
            .iter()
            .find(|route| route.clients.is_match(client_id))
            .unwrap_or(&self.routes[0])
            .write
    }

    /// Every cluster that serves reads for some route.
    pub fn read_clusters(&self) -> Vec<ClusterId> {
        let mut clusters: Vec<ClusterId> = self.routes.iter().map(|r| r.read).collect();
        clusters.sort_unstable();
        clusters.dedup();
        clusters
    }

    /// Every cluster hosting some groups.
    pub fn group_clusters(&self) -> Vec<ClusterId> {
        let mut clusters: Vec<ClusterId> = self.groups.iter().map(|g| g.cluster).collect();
        clusters.push(self.default_group_cluster);
        clusters.sort_unstable();
        clusters.dedup();
        clusters
    }
}

fn is_match_all(glob: &str) -> bool {
    !glob.is_empty() && glob.chars().all(|c| c == '*')
}

fn compile_glob(field: String, pattern: &str) -> Result<GlobMatcher, RoutingError> {
    if pattern.is_empty() {
        return Err(error(field, "empty glob; use \"*\" to match everything"));
    }
    Glob::new(pattern)
        .map(|glob| glob.compile_matcher())
        .map_err(|e| error(field, format!("invalid glob {pattern:?}: {e}")))
}

/// The routing table in force: one snapshot behind one `ArcSwap`, and the one updater
/// every source (file, SIGHUP, admin API, Redis) goes through.
#[derive(Debug)]
pub struct Routing {
    /// Swapped whole; readers take a snapshot with [`Routing::load`] once per request.
    current: ArcSwap<RoutingTable>,
    /// Configured cluster names, what tables are validated against.
    clusters: Vec<String>,
    /// Tables replaced so far, newest last, for rollback; at most `history_limit`.
    /// The lock also serialises updates so versions increase one swap at a time.
    history: Mutex<Vec<RoutingSpec>>,
    history_limit: usize,
}

/// Why an update was refused; the table in force is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("invalid routing table: {0}")]
    Invalid(#[from] RoutingError),
    #[error("no earlier routing table to roll back to")]
    NoHistory,
    /// The change would move consumer groups in a way that could lose their place.
    #[error("read switch refused: {0}")]
    Refused(String),
}

/// What an update changed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: u64,
    /// One line per changed rule (`routes[0]: {…} -> {…}`); empty when nothing changed.
    pub diff: Vec<String>,
}

impl Routing {
    pub fn new(table: RoutingTable, clusters: Vec<String>, history_limit: usize) -> Routing {
        Routing {
            current: ArcSwap::from_pointee(table),
            clusters,
            history: Mutex::default(),
            history_limit: history_limit.max(1),
        }
    }

    /// The cluster names tables are validated against.
    pub fn cluster_names(&self) -> &[String] {
        &self.clusters
    }

    /// The table a rollback would restore, if any.
    pub fn previous_spec(&self) -> Option<RoutingSpec> {
        lock(&self.history).last().cloned()
    }

    /// The table in force. Hold it for the whole request.
    pub fn load(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Validates `spec` as a whole and puts it in force under the next version, or under
    /// `version` when a fleet source dictates it (a version not newer than the one in
    /// force is ignored, so every instance ends on the same version numbers). Requests already
    /// running finish on the table they loaded; no connection is touched.
    pub fn apply(
        &self,
        spec: &RoutingSpec,
        source: &str,
        version: Option<u64>,
    ) -> Result<Applied, UpdateError> {
        let mut history = lock(&self.history);
        let current = self.load();
        let version = match version {
            // A fleet version this instance already has (it may arrive twice: applied by
            // the publisher itself and announced back to it): nothing to do.
            Some(version) if version <= current.version => {
                return Ok(Applied {
                    version: current.version,
                    diff: Vec::new(),
                })
            }
            Some(version) => version,
            None => current.version + 1,
        };
        let table = match RoutingTable::build(spec, &self.clusters, version) {
            Ok(table) => table,
            Err(error) => {
                tracing::warn!(source, %error, "routing update rejected; the table in force is unchanged");
                return Err(error.into());
            }
        };
        let diff = diff(&current.spec, spec);
        history.push(current.spec.clone());
        let excess = history.len().saturating_sub(self.history_limit);
        history.drain(..excess);
        self.current.store(Arc::new(table));
        tracing::info!(source, version, changes = %diff.join("; "), "routing table applied");
        Ok(Applied { version, diff })
    }

    /// Puts the previous table back in force (under a new version).
    pub fn rollback(&self, source: &str) -> Result<Applied, UpdateError> {
        let mut history = lock(&self.history);
        let previous = history.pop().ok_or(UpdateError::NoHistory)?;
        let current = self.load();
        let version = current.version + 1;
        let table = RoutingTable::build(&previous, &self.clusters, version)?;
        let diff = diff(&current.spec, &previous);
        self.current.store(Arc::new(table));
        tracing::info!(source, version, changes = %diff.join("; "), "routing table rolled back");
        Ok(Applied { version, diff })
    }
}

/// Human-readable changes from `before` to `after`, one line per rule.
pub fn diff(before: &RoutingSpec, after: &RoutingSpec) -> Vec<String> {
    fn show<T: Serialize>(rule: Option<&T>) -> String {
        rule.map_or_else(
            || "(none)".to_string(),
            |r| serde_json::to_string(r).unwrap_or_default(),
        )
    }
    let mut lines = Vec::new();
    for i in 0..before.routes.len().max(after.routes.len()) {
        let (old, new) = (before.routes.get(i), after.routes.get(i));
        if old != new {
            lines.push(format!("routes[{i}]: {} -> {}", show(old), show(new)));
        }
    }
    for i in 0..before.groups.len().max(after.groups.len()) {
        let (old, new) = (before.groups.get(i), after.groups.get(i));
        if old != new {
            lines.push(format!("groups[{i}]: {} -> {}", show(old), show(new)));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters() -> Vec<String> {
        vec!["new".to_string(), "old".to_string()]
    }

    fn spec(toml_text: &str) -> RoutingSpec {
        toml::from_str(toml_text).unwrap()
    }

    fn build(toml_text: &str) -> Result<RoutingTable, RoutingError> {
        RoutingTable::build(&spec(toml_text), &clusters(), 1)
    }

    #[test]
    fn offset_sync_is_per_group_rule_and_bounded_naming_the_field() {
        let with = |line: &str| {
            format!(
                "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n[[groups]]\ngroups = \"a*\"\ncluster = \"old\"\n\
                 [[groups]]\ngroups = \"b*\"\ncluster = \"old\"\n{line}"
            )
        };
        let table = build(&with("offset_sync_ms = 100")).unwrap();
        assert_eq!(
            table.offset_sync_rules(),
            vec![(1, 1, std::time::Duration::from_millis(100))] // cluster 1: "old"
        );
        assert_eq!(table.group_rule("b-group"), Some(1));
        assert_eq!(table.group_rule("c-group"), None);
        assert!(build(&with("offset_sync_ms = 86400000")).is_ok());
        for bad in ["offset_sync_ms = 99", "offset_sync_ms = 86400001"] {
            let error = build(&with(bad)).unwrap_err().to_string();
            assert!(error.contains("groups[1].offset_sync_ms"), "{bad}: {error}");
        }
        assert!(build(&with("")).unwrap().offset_sync_rules().is_empty());
    }

    #[test]
    fn first_matching_route_wins() {
        let table = build(
            r#"
            [[routes]]
            topics = "orders.*"
            clients = "billing-*"
            write = "new"
            [[routes]]
            topics = "*"
            write = "old"
            read = "new"
            "#,
        )
        .unwrap();
        let route = table.route("orders.eu", "billing-7").unwrap();
        assert_eq!((route.index, route.write, route.read), (0, 0, 0));
        let route = table.route("orders.eu", "shop").unwrap();
        assert_eq!((route.index, route.write, route.read), (1, 1, 0));
    }

    /// The per-thread route cache answers as the globs do: per client id, for topics no
    /// route takes, and for a table swapped in (which must not see the last table's
    /// decisions), including after the cache started over at its bound.
    #[test]
    fn cached_routes_are_the_globs_routes_and_a_new_table_starts_over() {
        let first = build(
            "[[routes]]\ntopics = \"orders.*\"\nclients = \"billing-*\"\nwrite = \"new\"\n\
             [[routes]]\ntopics = \"orders.*\"\nwrite = \"old\"",
        )
        .unwrap();
        let second = build("[[routes]]\ntopics = \"orders.*\"\nwrite = \"new\"").unwrap();
        let index = |table: &RoutingTable, topic: &str, client: &str| {
            table.route(topic, client).map(|route| route.index)
        };
        for _ in 0..2 {
            assert_eq!(index(&first, "orders.eu", "billing-1"), Some(0));
            assert_eq!(index(&first, "orders.eu", "shop"), Some(1));
            assert_eq!(index(&first, "payments", "shop"), None);
            // The first table sent "shop" to its route 1; the second has one route.
            assert_eq!(index(&second, "orders.eu", "shop"), Some(0));
            assert_eq!(index(&second, "payments", "shop"), None);
        }
        for i in 0..ROUTE_CACHE_DECISIONS + 10 {
            let client = format!("billing-{i}");
            assert_eq!(index(&first, "orders.eu", &client), Some(0), "{client}");
        }
        assert_eq!(index(&first, "orders.eu", "shop"), Some(1));
    }

    #[test]
    fn a_route_serves_a_topic_unless_an_earlier_route_takes_it_for_everyone() {
        let table = build(
            r#"
            [[routes]]
            topics = "orders"
            clients = "billing-*"
            write = "new"
            [[routes]]
            topics = "orders*"
            write = "old"
            [[routes]]
            topics = "*"
            write = "new"
            "#,
        )
        .unwrap();
        assert!(table.route_serves_topic(0, "orders"));
        assert!(table.route_serves_topic(1, "orders"));
        assert!(!table.route_serves_topic(2, "orders"));
        assert!(table.route_serves_topic(2, "payments"));
        assert!(!table.route_serves_topic(0, "payments"));
    }

    #[test]
    fn unmatched_topic_has_no_route() {
        let table = build("[[routes]]\ntopics = \"orders\"\nwrite = \"old\"").unwrap();
        assert!(table.route("payments", "any").is_none());
    }

    #[test]
    fn groups_default_to_first_route_read_cluster() {
        let table = build(
            r#"
            [[routes]]
            topics = "*"
            write = "old"
            read = "new"
            [[groups]]
            groups = "legacy-*"
            cluster = "old"
            "#,
        )
        .unwrap();
        assert_eq!(table.group_cluster("legacy-app"), 1);
        assert_eq!(table.group_cluster("app"), 0);
    }

    #[test]
    fn rename_maps_per_cluster() {
        let table = build(
            r#"
            [[routes]]
            topics = "orders"
            write = "old"
            mirror = ["new"]
            rename = { new = "orders.v2" }
            "#,
        )
        .unwrap();
        let route = table.route("orders", "x").unwrap();
        assert_eq!(route.topic_on(0, "orders"), "orders.v2");
        assert_eq!(route.topic_on(1, "orders"), "orders");
    }

    fn rejected(toml_text: &str) -> String {
        build(toml_text).unwrap_err().to_string()
    }

    #[test]
    fn invalid_tables_name_rule_and_field() {
        let unknown = rejected("[[routes]]\ntopics = \"*\"\nwrite = \"neww\"");
        assert!(
            unknown.starts_with("routes[0].write: unknown cluster \"neww\""),
            "{unknown}"
        );

        let own_mirror =
            rejected("[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"old\"]");
        assert!(
            own_mirror.starts_with("routes[0].mirror[0]"),
            "{own_mirror}"
        );

        for backfill in [
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nbackfill = true",
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_percent = 50\nbackfill = true",
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\npartitioning = \"murmur2\"\nbackfill = true",
        ] {
            let reason = rejected(backfill);
            assert!(reason.starts_with("routes[0].backfill: needs a mirror"), "{reason}");
        }

        let percent = rejected(
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_percent = 101",
        );
        assert!(percent.starts_with("routes[0].mirror_percent"), "{percent}");

        let sync = rejected("[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror_mode = \"sync\"");
        assert!(sync.starts_with("routes[0].mirror_mode"), "{sync}");

        let glob = rejected("[[routes]]\ntopics = \"orders[\"\nwrite = \"old\"");
        assert!(glob.starts_with("routes[0].topics: invalid glob"), "{glob}");

        let shadowed = rejected(
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n[[routes]]\ntopics = \"orders\"\nwrite = \"new\"",
        );
        assert!(
            shadowed.starts_with("routes[1]: can never match: routes[0]"),
            "{shadowed}"
        );

        let empty = rejected("");
        assert!(empty.starts_with("routes:"), "{empty}");

        let group = rejected(
            "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\n[[groups]]\ngroups = \"*\"\ncluster = \"gone\"",
        );
        assert!(group.starts_with("groups[0].cluster"), "{group}");
    }

    #[test]
    fn narrower_rule_after_wider_clients_is_allowed() {
        build(
            "[[routes]]\ntopics = \"orders\"\nclients = \"a*\"\nwrite = \"old\"\n[[routes]]\ntopics = \"orders\"\nwrite = \"new\"",
        )
        .unwrap();
    }

    #[test]
    fn swap_keeps_old_snapshot_alive_for_running_requests() {
        let routing = Routing::new(
            build("[[routes]]\ntopics = \"*\"\nwrite = \"old\"").unwrap(),
            clusters(),
            3,
        );
        let held = routing.load();
        let applied = routing
            .apply(
                &spec("[[routes]]\ntopics = \"*\"\nwrite = \"new\""),
                "test",
                None,
            )
            .unwrap();
        assert_eq!(applied.version, 2);
        assert_eq!(applied.diff.len(), 1);
        assert!(
            applied.diff[0].starts_with("routes[0]: "),
            "{:?}",
            applied.diff
        );
        assert_eq!(held.route("t", "c").unwrap().write, 1);
        assert_eq!(routing.load().route("t", "c").unwrap().write, 0);
        assert_eq!(routing.load().version, 2);
    }

    #[test]
    fn invalid_update_changes_nothing_and_rollback_restores() {
        let routing = Routing::new(
            build("[[routes]]\ntopics = \"*\"\nwrite = \"old\"").unwrap(),
            clusters(),
            2,
        );
        assert_eq!(
            routing.rollback("test").unwrap_err(),
            UpdateError::NoHistory
        );
        let error = routing
            .apply(
                &spec("[[routes]]\ntopics = \"*\"\nwrite = \"gone\""),
                "test",
                None,
            )
            .unwrap_err();
        assert!(error.to_string().contains("routes[0].write"), "{error}");
        assert_eq!(routing.load().version, 1);
        for write in ["new", "old", "new"] {
            let text = format!("[[routes]]\ntopics = \"*\"\nwrite = \"{write}\"");
            routing.apply(&spec(&text), "test", None).unwrap();
        }
        assert_eq!(routing.load().version, 4);
        assert_eq!(routing.rollback("test").unwrap().version, 5);
        assert_eq!(routing.load().route("t", "c").unwrap().write, 1);
        assert_eq!(routing.rollback("test").unwrap().version, 6);
        assert_eq!(routing.load().route("t", "c").unwrap().write, 0);
        // History keeps two tables only.
        assert_eq!(
            routing.rollback("test").unwrap_err(),
            UpdateError::NoHistory
        );
        // A fleet version newer than ours is adopted; an older one is not.
        let fleet = routing
            .apply(
                &spec("[[routes]]\ntopics = \"*\"\nwrite = \"old\""),
                "redis",
                Some(40),
            )
            .unwrap();
        assert_eq!(fleet.version, 40);
        let stale = routing
            .apply(
                &spec("[[routes]]\ntopics = \"*\"\nwrite = \"new\""),
                "redis",
                Some(3),
            )
            .unwrap();
        assert_eq!(
            stale.version, 40,
            "an old fleet version is not applied again"
        );
        assert_eq!(routing.load().route("t", "c").unwrap().write, 1);
    }
}
