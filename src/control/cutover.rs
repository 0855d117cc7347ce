//! Read cutover: moving running consumer groups, and their positions, from one cluster to
//! another when a routing change moves their coordinator (`[[groups]]`) and the read cluster
//! of their topics.
//!
//! Every routing change goes through [`switch`]. When it moves nothing, the table is simply
//! put in force. Otherwise:
//! 1. Plan: list the groups on every cluster hosting groups and read their committed
//!    offsets. A topic whose read cluster changes under a group that stays where it is would
//!    leave that group's offsets meaning positions on the wrong cluster: refused.
//! 2. Fence the moving groups: their coordinator requests wait (`groups::to_group`), so no
//!    commit lands on the old cluster after its offsets were read.
//! 3. Read their committed offsets again (now final) and translate each to the new read
//!    cluster with the offset map, waiting for the mirror to catch up with it. A group
//!    positioned before the first copied record, or where nothing maps, is refused with the
//!    reason: the switch never skips records silently.
//! 4. Commit the translated offsets to the new cluster's coordinator (as an admin commit,
//!    generation -1: the group has no members there yet).
//! 5. Put the table in force, release the fence. A member's next heartbeat or commit reaches
//!    the new coordinator, which does not know it: UNKNOWN_MEMBER_ID makes it rejoin there and
//!    fetch the translated positions. It re-reads at most what it had not committed.
//!
//! Until a member has rejoined, its fetches still carry positions on the old cluster.
//! [`ReadPositions`] (one per client connection) remembers which cluster each partition's
//! position belongs to and holds such fetches (empty answers) instead of reading the new
//! cluster at an offset that means something else there.
//!
//! Limits: translation is per partition, so routes with `murmur2` partitioning are refused;
//! groups are matched against routes as a client with an empty `client.id` would be.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, GroupId, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::cluster::GROUP;
use crate::control::Control;
use crate::error::BackendError;
use crate::mirror::offset_map::Position;
use crate::routing::moves::Fence;
use crate::routing::ClusterId;
use crate::routing::{Applied, Partitioning, Route, RoutingSpec, RoutingTable, UpdateError};

/// How long a switch waits for the mirror to copy what a group has committed.
const MIRROR_CATCH_UP: Duration = Duration::from_secs(10);

/// Versions kshift sends for its own group requests (capped by each broker).
const LIST_GROUPS_VERSION: i16 = 4;
const OFFSET_FETCH_VERSION: i16 = 7;
const OFFSET_COMMIT_VERSION: i16 = 8;
/// Partitions asked for a topic the group cluster's metadata does not list, from brokers
/// that need the partitions listed.
const MAX_PARTITIONS_ASKED: i32 = 256;

/// What a switch does when groups cannot be moved safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse the change (the table in force stays).
    Refuse,
    /// Put the change in force anyway, moving the groups that can be moved: for an
    /// emergency (a cluster down) and for fleet instances following a table already in force.
    Force,
}

/// A group moved by a switch, as reported to the operator.
#[derive(Debug, Clone, Serialize)]
pub struct MovedGroup {
    pub group: String,
    pub from: String,
    pub to: String,
    pub offsets: Vec<MovedOffset>,
}

/// One committed position, before and after translation.
#[derive(Debug, Clone, Serialize)]
pub struct MovedOffset {
    pub topic: String,
    pub partition: i32,
    /// Committed offset on the group's previous cluster.
    pub from: i64,
    /// The offset committed on the new cluster.
    pub to: i64,
}

/// What a routing change did.
#[derive(Debug, Clone)]
pub struct Switched {
    pub applied: Applied,
    pub moved: Vec<MovedGroup>,
}

/// Puts `spec` in force by awaiting `put_in_force`, moving the consumer groups the change
/// moves (see the module documentation). Refused changes leave the table in force as it is.
pub async fn switch<E, F>(
    state: &Control,
    spec: &RoutingSpec,
    policy: Policy,
    put_in_force: F,
) -> Result<Switched, E>
where
    F: Future<Output = Result<Applied, E>>,
    E: From<UpdateError>,
{
    let _serial = state.group_moves.serial.lock().await;
    let current = state.routing.load();
    let next = RoutingTable::build(spec, state.routing.cluster_names(), current.version + 1)
        .map_err(UpdateError::from)?;
    if !moves_groups(&current, &next) {
        let applied = put_in_force.await?;
        return Ok(Switched {
            applied,
            moved: Vec::new(),
        });
    }
    // Refused, unless forced: then the table goes in force with what could be moved.
    let refused = |reason: String| -> Result<(), E> {
        if policy == Policy::Force {
            tracing::warn!(%reason, "forced routing change: consumer groups not moved (their offsets are not translated)");
            return Ok(());
        }
        tracing::warn!(%reason, "routing change refused: consumer groups cannot be moved");
        Err(E::from(UpdateError::Refused(reason)))
    };
    let movers = match plan(state, &current, &next).await {
        Ok(movers) => movers,
        Err(reason) => {
            refused(reason)?;
            Vec::new()
        }
    };
    let fence = Fence::new(
        &state.group_moves,
        movers.iter().map(|m| m.group.clone()).collect(),
    );
    let mut moved = Vec::new();
    for mover in &movers {
        match move_group(state, &current, &next, mover).await {
            Ok(group) => moved.push(group),
            Err(reason) => refused(reason)?,
        }
    }
    let applied = put_in_force.await?;
    drop(fence);
    for group in &moved {
        state.metrics.groups_moved.inc();
        tracing::info!(
            group = %group.group, from = %group.from, to = %group.to,
            offsets = %group.offsets.iter().map(|o| format!("{}[{}] {}->{}", o.topic, o.partition, o.from, o.to)).collect::<Vec<_>>().join(", "),
            "consumer group moved"
        );
    }
    Ok(Switched { applied, moved })
}

/// What a routing change would do, found without doing it: nothing is fenced, committed or
/// put in force.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The rules that would change, as `PUT /routes` reports them.
    pub changes: Vec<String>,
    /// The groups that would move, with each position before and after translation (from
    /// the offsets committed now; a real switch reads them again once the group is fenced).
    pub would_move: Vec<MovedGroup>,
    /// Why the change would be refused (a group that cannot move, a position that does not
    /// translate): empty when it would go through.
    pub refusals: Vec<String>,
}

/// Plans `spec` as [`switch`] would, translating every moving group's committed offsets,
/// and reports it; changes nothing.
pub async fn dry_run(state: &Control, spec: &RoutingSpec) -> Result<DryRun, UpdateError> {
    let current = state.routing.load();
    let next = RoutingTable::build(spec, state.routing.cluster_names(), current.version + 1)?;
    let mut report = DryRun {
        changes: crate::routing::diff(&current.spec, spec),
        would_move: Vec::new(),
        refusals: Vec::new(),
    };
    if !moves_groups(&current, &next) {
        return Ok(report);
    }
    let movers = match plan(state, &current, &next).await {
        Ok(movers) => movers,
        Err(reason) => {
            report.refusals.push(reason);
            return Ok(report);
        }
    };
    for mover in &movers {
        match move_group_plan(state, &current, &next, mover).await {
            Ok(group) => report.would_move.push(group),
            Err(reason) => report.refusals.push(reason),
        }
    }
    Ok(report)
}

/// Whether `next` may move a group or the read cluster of a topic, as far as the rules
/// tell (a cheap test before asking any cluster).
fn moves_groups(current: &RoutingTable, next: &RoutingTable) -> bool {
    let reads = |table: &RoutingTable| {
        table
            .spec
            .routes
            .iter()
            .map(|r| {
                (
                    r.topics.clone(),
                    r.clients.clone(),
                    r.read.clone().unwrap_or_else(|| r.write.clone()),
                )
            })
            .collect::<Vec<_>>()
    };
    reads(current) != reads(next) || current.spec.groups != next.spec.groups
}

#[derive(Debug)]
struct Mover {
    group: String,
    from: ClusterId,
    to: ClusterId,
}

/// The route a group's consumers read `topic` through.
fn route_of<'a>(table: &'a RoutingTable, topic: &str) -> Option<&'a Route> {
    table.route(topic, "")
}

/// The routes of `topic` before and after, when its read cluster changes.
fn read_changes<'a>(
    current: &'a RoutingTable,
    next: &'a RoutingTable,
    topic: &str,
) -> Option<(&'a Route, &'a Route)> {
    match (route_of(current, topic), route_of(next, topic)) {
        (Some(before), Some(after)) if before.read != after.read => Some((before, after)),
        _ => None,
    }
}

/// The groups `next` moves; refuses a read change under a group left where it is.
async fn plan(
    state: &Control,
    current: &RoutingTable,
    next: &RoutingTable,
) -> Result<Vec<Mover>, String> {
    let mut movers = Vec::new();
    for from in current.group_clusters() {
        let cluster = &state.clusters[from];
        let mut groups = list_groups(cluster)
            .await
            .map_err(|e| format!("cannot list the consumer groups on {}: {e}", cluster.name))?;
        groups.extend(state.group_moves.seen_groups());
        for group in groups {
            if current.group_cluster(&group) != from {
                continue; // left over from an earlier move; not served from here
            }
            let to = next.group_cluster(&group);
            if to != from {
                movers.push(Mover { group, from, to });
                continue;
            }
            let offsets = committed(state, cluster, &group).await.map_err(|e| {
                format!(
                    "cannot read the offsets of group {group:?} on {}: {e}",
                    cluster.name
                )
            })?;
            let topics: BTreeSet<&str> = offsets.iter().map(|c| c.topic.as_str()).collect();
            let change = topics.into_iter().find_map(|t| {
                read_changes(current, next, t)
                    .map(|(before, after)| (t.to_string(), (before.read, after.read)))
            });
            if let Some((topic, (before, after))) = change {
                let name = |id: ClusterId| state.clusters[id].name.clone();
                return Err(format!(
                    "group {group:?} has committed offsets for topic {topic:?}, which would be read from {} instead of {}, \
                     but the group would stay on {}: move the group with it ([[groups]] cluster = {:?})",
                    name(after), name(before), name(from), &*name(after)
                ));
            }
        }
    }
    Ok(movers)
}

/// Reads `mover`'s final committed offsets, translates and commits them on its new cluster.
async fn move_group(
    state: &Control,
    current: &RoutingTable,
    next: &RoutingTable,
    mover: &Mover,
) -> Result<MovedGroup, String> {
    let (moved, translated) = translated_offsets(state, current, next, mover).await?;
    let to = &state.clusters[mover.to];
    let group = &mover.group;
    commit_offsets(to, group, &translated).await.map_err(|e| {
        format!(
            "cannot commit the offsets of group {group:?} on {}: {e}",
            to.name
        )
    })?;
    Ok(moved)
}

/// What [`move_group`] would commit, committing nothing.
async fn move_group_plan(
    state: &Control,
    current: &RoutingTable,
    next: &RoutingTable,
    mover: &Mover,
) -> Result<MovedGroup, String> {
    Ok(translated_offsets(state, current, next, mover).await?.0)
}

/// `mover`'s committed offsets on its cluster, translated to the new one: as reported, and
/// as they would be committed there.
async fn translated_offsets(
    state: &Control,
    current: &RoutingTable,
    next: &RoutingTable,
    mover: &Mover,
) -> Result<(MovedGroup, Vec<Committed>), String> {
    let from = &state.clusters[mover.from];
    let to = &state.clusters[mover.to];
    let group = &mover.group;
    let offsets = committed(state, from, group).await.map_err(|e| {
        format!(
            "cannot read the offsets of group {group:?} on {}: {e}",
            from.name
        )
    })?;
    let mut moved = Vec::new();
    let mut translated = Vec::new();
    for commit in offsets {
        let position = match read_changes(current, next, &commit.topic) {
            Some((before, after)) => {
                translate(state, before, after, &commit)
                    .await
                    .map_err(|reason| {
                        format!(
                            "group {group:?}, {}[{}]: {reason}",
                            commit.topic, commit.partition
                        )
                    })?
            }
            None => commit.offset,
        };
        moved.push(MovedOffset {
            topic: commit.topic.clone(),
            partition: commit.partition,
            from: commit.offset,
            to: position,
        });
        translated.push(Committed {
            offset: position,
            ..commit
        });
    }
    let moved = MovedGroup {
        group: group.clone(),
        from: from.name.to_string(),
        to: to.name.to_string(),
        offsets: moved,
    };
    Ok((moved, translated))
}

/// Where a consumer committed at `commit.offset` on `from` continues on `to`.
async fn translate(
    state: &Control,
    before: &Route,
    after: &Route,
    commit: &Committed,
) -> Result<i64, String> {
    let (from, to) = (before.read, after.read);
    if before.partitioning == Partitioning::Murmur2 || after.partitioning == Partitioning::Murmur2 {
        return Err("the route re-partitions (murmur2): positions cannot be translated partition by partition".into());
    }
    let names = (&*state.clusters[from].name, &*state.clusters[to].name);
    let (topic, partition, offset) = (commit.topic.as_str(), commit.partition, commit.offset);
    let deadline = Instant::now() + MIRROR_CATCH_UP;
    let mut refreshed: Option<Instant> = None;
    loop {
        // What other instances of a fleet mirrored (either direction), once a second.
        if refreshed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            for mirror in [to, from] {
                if let Err(error) = state
                    .mirrors
                    .offsets
                    .refresh(topic, partition, mirror)
                    .await
                {
                    tracing::warn!(%error, topic, partition, "cannot read the fleet's offset map; translating with this instance's");
                }
            }
            refreshed = Some(Instant::now());
        }
        let position = state
            .mirrors
            .offsets
            .position(topic, partition, from, to, offset);
        match position {
            Position::Mapped(target) => return Ok(target),
            Position::BeforeFirst { first } => {
                return Err(format!(
                    "committed offset {offset} on {} is before the first record copied to {} (offset {first}); \
                     records {offset}..{first} exist only on {}: run `kshift backfill`, or let the group catch up first",
                    names.0, names.1, names.0
                ))
            }
            Position::AfterLast { end, to_end } => {
                // Nothing between `end` and the committed offset still to be mirrored (only
                // markers or aborted records): it continues after the last copied record.
                let lag = state
                    .mirrors
                    .stats_of(to)
                    .and_then(|stats| stats.lag_by_route().get(&before.index).copied())
                    .unwrap_or(0);
                if offset == end || lag == 0 {
                    return Ok(to_end);
                }
            }
            Position::Unmapped => {
                let from_end = end_offset(&state.clusters[from], before.topic_on(from, topic), partition)
                    .await
                    .map_err(|e| e.to_string())?;
                if offset >= from_end {
                    // The group has read everything there and nothing was copied since.
                    return end_offset(&state.clusters[to], after.topic_on(to, topic), partition)
                        .await
                        .map_err(|e| e.to_string());
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "records {offset}..{from_end} on {} were never copied to {} as far as the offset map knows \
                         (is `offset_map_file` set? were they produced before mirroring started? `kshift backfill` copies them)",
                        names.0, names.1
                    ));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the mirror to {} has not caught up with committed offset {offset} within {MIRROR_CATCH_UP:?}",
                names.1
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One committed offset of a group.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) metadata: Option<StrBytes>,
}

/// The groups `cluster` lists. A cluster that does not serve ListGroups at all (librdkafka's
/// mock cluster, some Kafka-compatible brokers) lists none: then the groups kshift's own
/// clients used are the ones moved, as with a broker that lists none.
pub(crate) async fn list_groups(cluster: &Cluster) -> Result<BTreeSet<String>, BackendError> {
    if !cluster
        .api_versions()
        .await?
        .contains_key(&(ApiKey::ListGroups as i16))
    {
        tracing::warn!(cluster = %cluster.name, "cluster does not serve ListGroups: moving only the groups kshift's clients used");
        return Ok(BTreeSet::new());
    }
    let version = cluster
        .version_for(ApiKey::ListGroups, LIST_GROUPS_VERSION)
        .await?;
    let mut groups = BTreeSet::new();
    for node in cluster.broker_ids().await? {
        let response: ListGroupsResponse = cluster
            .request_node(
                node,
                ApiKey::ListGroups,
                version,
                &ListGroupsRequest::default(),
            )
            .await?;
        if response.error_code != 0 {
            return Err(kafka_error(cluster, "ListGroups", response.error_code));
        }
        groups.extend(
            response
                .groups
                .into_iter()
                .map(|g| g.group_id.0.to_string()),
        );
    }
    Ok(groups)
}

/// Every offset `group` has committed on `cluster`.
pub(crate) async fn committed(
    state: &Control,
    cluster: &Cluster,
    group: &str,
) -> Result<Vec<Committed>, BackendError> {
    let version = cluster
        .version_for(ApiKey::OffsetFetch, OFFSET_FETCH_VERSION)
        .await?;
    let node = cluster.coordinator(GROUP, group).await?;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())));
    // All topics (null), as Kafka answers it; brokers that cannot (Tansu) are asked for the
    // topics the group was seen with and every topic the cluster has.
    let all: Result<OffsetFetchResponse, BackendError> = cluster
        .request_node(
            node,
            ApiKey::OffsetFetch,
            version,
            &request.clone().with_topics(None),
        )
        .await;
    let response: OffsetFetchResponse = match all {
        Ok(response) if response.error_code == 0 && !response.topics.is_empty() => response,
        _ => {
            // Partition counts from the cluster's metadata; topics the group was seen with
            // that it does not list (renamed elsewhere) get a generous guess.
            let mut topics: BTreeMap<String, i32> = cluster
                .metadata(None, false)
                .await?
                .topics
                .into_iter()
                .filter_map(|t| Some((t.name?.0.to_string(), t.partitions.len() as i32)))
                .collect();
            for topic in state.group_moves.seen_topics(group) {
                topics.entry(topic).or_insert(MAX_PARTITIONS_ASKED);
            }
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partition_indexes((0..partitions).collect())
                })
                .collect();
            cluster
                .request_node(
                    node,
                    ApiKey::OffsetFetch,
                    version,
                    &request.with_topics(Some(topics)),
                )
                .await?
        }
    };
    if response.error_code != 0 {
        cluster.forget_coordinator(GROUP, group);
        return Err(kafka_error(cluster, "OffsetFetch", response.error_code));
    }
    let mut offsets = Vec::new();
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error_code == kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
            {
                continue; // asked for a partition the topic does not have
            }
            if partition.error_code != 0 {
                return Err(kafka_error(cluster, "OffsetFetch", partition.error_code));
            }
            if partition.committed_offset >= 0 {
                offsets.push(Committed {
                    topic: topic.name.0.to_string(),
                    partition: partition.partition_index,
                    offset: partition.committed_offset,
                    metadata: partition.metadata,
                });
            }
        }
    }
    Ok(offsets)
}

pub(crate) async fn commit_offsets(
    cluster: &Cluster,
    group: &str,
    offsets: &[Committed],
) -> Result<(), BackendError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let version = cluster
        .version_for(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION)
        .await?;
    let node = cluster.coordinator(GROUP, group).await?;
    let mut topics: HashMap<&str, Vec<OffsetCommitRequestPartition>> = HashMap::new();
    for commit in offsets {
        topics.entry(&commit.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(commit.partition)
                .with_committed_offset(commit.offset)
                .with_committed_metadata(commit.metadata.clone()),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response: OffsetCommitResponse = cluster
        .request_node(node, ApiKey::OffsetCommit, version, &request)
        .await?;
    let failed = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.error_code)
        .find(|code| *code != 0);
    match failed {
        Some(code) => {
            cluster.forget_coordinator(GROUP, group);
            Err(kafka_error(cluster, "OffsetCommit", code))
        }
        None => Ok(()),
    }
}

/// The offset the next record of `topic`/`partition` will get (the high watermark).
async fn end_offset(cluster: &Cluster, topic: &str, partition: i32) -> Result<i64, BackendError> {
    cluster.list_offset(topic, partition, -1).await
}

fn kafka_error(cluster: &Cluster, what: &'static str, code: i16) -> BackendError {
    BackendError::Kafka {
        cluster: cluster.name.clone(),
        what,
        code,
    }
}
