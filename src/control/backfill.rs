//! Backfill requests: an operator asks (admin API, `kshift backfill`) for the history of the
//! topics matching a glob to be copied to their mirrors; each partition is queued on its
//! mirror's writer, which copies it in order before the live records (see
//! [`crate::mirror`]'s backfill).

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::mirror::{MirrorItem, Source};
use crate::routing::ClusterId;
use crate::routing::Partitioning;
use crate::state::ProxyState;
use crate::sync::lock;

/// A partition a backfill was queued for.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub topic: String,
    pub partition: i32,
    pub mirror: String,
    pub target: i64,
}

/// Queues a backfill of every partition of the topics matching `topics` (on routes with
/// `backfill = true`) to each of their mirrors, paced at `bytes_per_sec` (0: unlimited).
pub async fn queue_backfill(
    state: &ProxyState,
    topics: &str,
    bytes_per_sec: u64,
) -> Result<Vec<Queued>, String> {
    let glob = globset::Glob::new(topics)
        .map_err(|e| format!("topics: invalid glob {topics:?}: {e}"))?
        .compile_matcher();
    state
        .mirrors
        .backfill
        .bytes_per_sec
        .store(bytes_per_sec, Ordering::Relaxed);
    let table = state.routing.load();
    let mut queued = Vec::new();
    let mut without_backfill = Vec::new();
    let mut write_clusters: Vec<ClusterId> = (0..state.clusters.len()).collect();
    write_clusters.retain(|id| {
        (0..)
            .map_while(|i| table.route_at(i))
            .any(|route| route.write == *id && !route.mirror.is_empty())
    });
    for cluster_id in write_clusters {
        let cluster = &state.clusters[cluster_id];
        let metadata = cluster
            .metadata(None, false)
            .await
            .map_err(|e| format!("cannot list the topics of {}: {e}", cluster.name))?;
        for topic in metadata.topics {
            let Some(name) = topic.name.map(|n| n.0.to_string()) else {
                continue;
            };
            if !glob.is_match(&name) {
                continue;
            }
            let Some(route) = table.route(&name, "") else {
                continue;
            };
            if route.write != cluster_id || route.mirror.is_empty() {
                continue;
            }
            if !route.backfill || route.partitioning != Partitioning::Identity {
                without_backfill.push(name);
                continue;
            }
            for partition in topic.partitions.iter().map(|p| p.partition_index) {
                let target = cluster
                    .list_offset(&name, partition, -1)
                    .await
                    .map_err(|e| e.to_string())?;
                for &mirror in &route.mirror {
                    lock(&state.mirrors.backfill.requested)
                        .insert((name.clone(), partition, mirror), target);
                    let (written, written_rx) = oneshot::channel();
                    let _ = written.send(Some(target));
                    let item = MirrorItem {
                        route: route.index,
                        topic: name.as_str().into(),
                        mirror_topic: route.topic_on(mirror, &name).into(),
                        write_partition: partition,
                        records: Bytes::new(),
                        record_count: 0,
                        partitioning: Partitioning::Identity,
                        mirror_percent: 100,
                        written: written_rx,
                        done: None,
                        enqueued_at: Instant::now(),
                        source: Some(Source {
                            cluster: cluster.clone(),
                            topic: name.as_str().into(),
                        }),
                        fill_only: true,
                    };
                    if state.mirrors.offer(mirror, item).is_err() {
                        return Err(format!(
                            "the mirror queue of {} refused the backfill request",
                            state.clusters[mirror].name
                        ));
                    }
                    queued.push(Queued {
                        topic: name.clone(),
                        partition,
                        mirror: state.clusters[mirror].name.to_string(),
                        target,
                    });
                }
            }
        }
    }
    if queued.is_empty() {
        return Err(if without_backfill.is_empty() {
            format!("no mirrored topic matches {topics:?}")
        } else {
            format!(
                "the routes of {without_backfill:?} do not have backfill = true: set it (with identity partitioning and mirror_percent = 100) first"
            )
        });
    }
    Ok(queued)
}
