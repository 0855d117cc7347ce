//! Continuous consumer-offset sync (`[[groups]] offset_sync_ms`): while a route mirrors, the
//! committed offsets of its consumer groups are copied, translated with the offset map, to
//! every other cluster that holds a copy of the topics (the route's write cluster and its
//! mirrors). A rollback then finds the groups where they are, and a consumer started straight
//! on the other cluster (a disaster, or a service that never went through kshift) resumes
//! without a gap: the translation is exact, record for record, unlike a checkpoint.
//!
//! Invariants:
//! - Only offsets that translate exactly are copied: a position the offset map covers, or the
//!   end of what was mirrored when the group has read all of it. A position the mirror has
//!   not reached yet waits for a later pass; one before the first mirrored record is never
//!   copied (it would skip records on the target).
//! - A group with members on the target cluster is left alone there (DescribeGroups): its
//!   own consumers own its offsets. Commits are admin commits (generation -1), which a Kafka
//!   broker also refuses for a group with members.
//! - Groups come from the source cluster's ListGroups and from those kshift's own clients
//!   used (some brokers, Tansu among them, list none), as at a read cutover.
//! - In a fleet every instance syncs (the same translated offsets: the offset map is shared
//!   through Redis); a pass only commits what changed since its last one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::control::cutover::{self, Committed};
use crate::control::Control;
use crate::error::BackendError;
use crate::mirror::offset_map::Position;
use crate::routing::ClusterId;
use crate::routing::{Partitioning, RoutingTable};
use crate::sync::lock;

/// DescribeGroups version kshift sends (capped by the broker).
const DESCRIBE_GROUPS_VERSION: i16 = 5;
/// How often the loop looks for a rule that is due, at most.
const TICK: Duration = Duration::from_millis(100);

/// What the sync did, for metrics and the status page.
#[derive(Debug, Default)]
pub struct Stats {
    /// Groups whose offsets were committed on a target (one per group and target per pass
    /// that changed something).
    pub groups_synced: AtomicU64,
    /// Groups left alone on a target because they have members there.
    pub groups_active: AtomicU64,
    /// Commits or lookups that failed (logged at debug; retried next pass).
    pub failures: AtomicU64,
    /// Committed positions that could not be translated (yet).
    pub untranslated: AtomicU64,
    /// When the last pass of any rule finished.
    last_pass: Mutex<Option<Instant>>,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub groups_synced: u64,
    pub groups_active: u64,
    pub failures: u64,
    pub untranslated: u64,
    /// Seconds since the last pass finished; `None` before the first.
    pub last_pass_age_seconds: Option<f64>,
}

impl Stats {
    pub fn snapshot(&self) -> Counts {
        Counts {
            groups_synced: self.groups_synced.load(Ordering::Relaxed),
            groups_active: self.groups_active.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            untranslated: self.untranslated.load(Ordering::Relaxed),
            last_pass_age_seconds: lock(&self.last_pass).map(|at| at.elapsed().as_secs_f64()),
        }
    }
}

/// Offsets last committed per (group, target cluster), so that a pass commits only changes.
type Synced = HashMap<(String, ClusterId), Vec<(String, i32, i64)>>;

/// Runs the sync until `shutdown` turns true: each rule with `offset_sync_ms` is synced that
/// often, from the routing table in force at the time.
pub async fn run(state: Arc<Control>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut due: HashMap<(usize, ClusterId), Instant> = HashMap::new();
    let mut synced: Synced = HashMap::new();
    loop {
        let table = state.routing.load();
        let now = Instant::now();
        for (rule, source, interval) in table.offset_sync_rules() {
            let next = due.entry((rule, source)).or_insert(now);
            if now < *next {
                continue;
            }
            *next = now + interval;
            sync_rule(&state, &table, rule, source, &mut synced).await;
            *lock(&state.offset_sync.last_pass) = Some(Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass over the groups of `[[groups]]` rule `rule`, hosted on `source`.
async fn sync_rule(
    state: &Control,
    table: &RoutingTable,
    rule: usize,
    source: ClusterId,
    synced: &mut Synced,
) {
    let stats = &state.offset_sync;
    let cluster = &state.clusters[source];
    let mut groups = match cutover::list_groups(cluster).await {
        Ok(groups) => groups,
        Err(error) => {
            tracing::debug!(cluster = %cluster.name, %error, "offset sync: cannot list groups");
            Default::default()
        }
    };
    groups.extend(state.group_moves.seen_groups());
    let mut refreshed = HashSet::new();
    for group in groups {
        if table.group_rule(&group) != Some(rule) {
            continue;
        }
        let committed = match cutover::committed(state, cluster, &group).await {
            Ok(committed) => committed,
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%group, cluster = %cluster.name, %error, "offset sync: cannot read offsets");
                continue;
            }
        };
        let mut by_target: BTreeMap<ClusterId, Vec<Committed>> = BTreeMap::new();
        for commit in &committed {
            let Some(route) = table.route(&commit.topic, "") else {
                continue;
            };
            if route.partitioning != Partitioning::Identity || route.read != source {
                continue;
            }
            let mut targets: Vec<ClusterId> = route.mirror.clone();
            targets.push(route.write);
            targets.sort_unstable();
            targets.dedup();
            for target in targets.into_iter().filter(|target| *target != source) {
                let key = (commit.topic.clone(), commit.partition, target);
                if refreshed.insert(key) {
                    // What other instances of a fleet mirrored, either direction.
                    for cluster in [target, source] {
                        let _ = state
                            .mirrors
                            .offsets
                            .refresh(&commit.topic, commit.partition, cluster)
                            .await;
                    }
                }
                let position = state.mirrors.offsets.position(
                    &commit.topic,
                    commit.partition,
                    source,
                    target,
                    commit.offset,
                );
                let offset = match position {
                    Position::Mapped(offset) => offset,
                    // Read everything mirrored so far: it continues after it there.
                    Position::AfterLast { end, to_end } if commit.offset == end => to_end,
                    _ => {
                        stats.untranslated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                by_target.entry(target).or_default().push(Committed {
                    topic: route.topic_on(target, &commit.topic).to_string(),
                    partition: commit.partition,
                    offset,
                    metadata: commit.metadata.clone(),
                });
            }
        }
        for (target, offsets) in by_target {
            let mut fingerprint: Vec<(String, i32, i64)> = offsets
                .iter()
                .map(|c| (c.topic.clone(), c.partition, c.offset))
                .collect();
            fingerprint.sort();
            let key = (group.clone(), target);
            if synced.get(&key) == Some(&fingerprint) {
                continue;
            }
            let to = &state.clusters[target];
            match has_members(to, &group).await {
                Ok(true) => {
                    stats.groups_active.fetch_add(1, Ordering::Relaxed);
                    to.metrics.offset_sync(&to.name, "active");
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%group, cluster = %to.name, %error, "offset sync: cannot describe the group");
                    continue;
                }
            }
            match cutover::commit_offsets(to, &group, &offsets).await {
                Ok(()) => {
                    stats.groups_synced.fetch_add(1, Ordering::Relaxed);
                    to.metrics.offset_sync(&to.name, "synced");
                    tracing::debug!(%group, from = %cluster.name, to = %to.name, partitions = offsets.len(), "offset sync: committed");
                    synced.insert(key, fingerprint);
                }
                Err(error) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    to.metrics.offset_sync(&to.name, "failed");
                    tracing::debug!(%group, cluster = %to.name, %error, "offset sync: commit refused");
                }
            }
        }
    }
}

/// Whether `group` has members on `cluster` (a broker without DescribeGroups is asked
/// nothing: the admin commit itself is refused for a group with members).
async fn has_members(cluster: &Cluster, group: &str) -> Result<bool, BackendError> {
    if !cluster
        .api_versions()
        .await?
        .contains_key(&(ApiKey::DescribeGroups as i16))
    {
        return Ok(false);
    }
    let version = cluster
        .version_for(ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSION)
        .await?;
    let node = cluster.coordinator(0, group).await?;
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let response: DescribeGroupsResponse = cluster
        .request_node(node, ApiKey::DescribeGroups, version, &request)
        .await?;
    Ok(response.groups.iter().any(|described| {
        !described.members.is_empty()
            || !matches!(described.group_state.as_str(), "" | "Empty" | "Dead")
    }))
}
