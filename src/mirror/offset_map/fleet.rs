//! The offset map shared through Redis (`[routing] redis`): every instance of a fleet appends
//! the batches it mirrors, so any instance — or a restarted one — can translate positions of
//! records another instance mirrored.
//!
//! Invariants:
//! - One Redis list per (mirror cluster, topic, write partition), key
//!   `{redis_key}:offsets:{mirror}:{topic}:{partition}`, one entry per mirrored batch:
//!   `write_base mirror_partition mirror_base count`. Appends are asynchronous and batched
//!   (one pipeline per burst); the write path never waits for Redis.
//! - Each list keeps its newest [`super::MAX_SEGMENTS`] entries (trimmed as it is appended
//!   to), like the local map: an older position is refused at cutover, not mistranslated.
//! - While Redis is unreachable, entries wait in memory (at most `PENDING_LIMIT`, then the
//!   oldest are dropped with a warning: the local map and `offset_map_file` still have them).
//! - Readers merge a partition's list into the local map right before translating.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::OffsetMapping;
use crate::routing::ClusterId;

/// Entries kept while Redis is unreachable.
const PENDING_LIMIT: usize = 100_000;
/// Entries sent per pipeline.
const BATCH: usize = 512;

#[derive(Debug)]
pub struct FleetOffsets {
    client: redis::Client,
    prefix: String,
    clusters: Vec<String>,
    sender: mpsc::UnboundedSender<(String, String)>,
}

impl FleetOffsets {
    /// Starts the appending task (needs a tokio runtime).
    pub fn start(client: redis::Client, redis_key: &str, clusters: &[String]) -> Arc<FleetOffsets> {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(append(client.clone(), receiver));
        Arc::new(FleetOffsets {
            client,
            prefix: format!("{redis_key}:offsets"),
            clusters: clusters.to_vec(),
            sender,
        })
    }

    fn key(&self, mirror: ClusterId, topic: &str, partition: i32) -> Option<String> {
        let mirror = self.clusters.get(mirror)?;
        Some(format!("{}:{mirror}:{topic}:{partition}", self.prefix))
    }

    pub fn push(&self, mapping: &OffsetMapping) {
        let Some(key) = self.key(
            mapping.mirror_cluster,
            &mapping.topic,
            mapping.write_partition,
        ) else {
            return;
        };
        let value = format!(
            "{} {} {} {}",
            mapping.write_base_offset,
            mapping.mirror_partition,
            mapping.mirror_base_offset,
            mapping.record_count
        );
        let _ = self.sender.send((key, value));
    }

    /// Shares that this instance wrote `count` records to `topic`/`partition` of `cluster`
    /// from `start` (for the unrouted-writer check of every instance).
    pub fn push_routed(&self, cluster: &str, topic: &str, partition: i32, start: i64, count: i64) {
        let key = format!(
            "{}:routed:{cluster}:{topic}:{partition}",
            self.routed_prefix()
        );
        let _ = self.sender.send((key, format!("{start} {count}")));
    }

    /// Every `(start, count)` range any instance shared for `topic`/`partition` of `cluster`.
    pub async fn load_routed(
        &self,
        cluster: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<(i64, i64)>, String> {
        let key = format!(
            "{}:routed:{cluster}:{topic}:{partition}",
            self.routed_prefix()
        );
        let entries = self.range(&key).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let (start, count) = entry.split_once(' ')?;
                Some((start.parse().ok()?, count.parse().ok()?))
            })
            .collect())
    }

    /// `{redis_key}` (the offset lists live under `{redis_key}:offsets`).
    fn routed_prefix(&self) -> &str {
        self.prefix.strip_suffix(":offsets").unwrap_or(&self.prefix)
    }

    /// Every entry of the Redis list `key`.
    async fn range(&self, key: &str) -> Result<Vec<String>, String> {
        let mut connection = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "redis: no connection within 2 s".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    /// Every batch any instance mirrored from `topic`/`partition` to `mirror`.
    pub async fn load(
        &self,
        topic: &str,
        partition: i32,
        mirror: ClusterId,
    ) -> Result<Vec<OffsetMapping>, String> {
        let Some(key) = self.key(mirror, topic, partition) else {
            return Ok(Vec::new());
        };
        let entries = self.range(&key).await?;
        let topic: Arc<str> = Arc::from(topic);
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let mut fields = entry.split(' ').map(str::parse::<i64>);
                let (
                    Some(Ok(write)),
                    Some(Ok(mirror_partition)),
                    Some(Ok(mirror_base)),
                    Some(Ok(count)),
                ) = (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    tracing::warn!(key, entry, "unreadable offset map entry in Redis; skipped");
                    return None;
                };
                Some(OffsetMapping {
                    topic: topic.clone(),
                    write_partition: partition,
                    write_base_offset: write,
                    mirror_cluster: mirror,
                    mirror_partition: i32::try_from(mirror_partition).ok()?,
                    mirror_base_offset: mirror_base,
                    record_count: count,
                })
            })
            .collect())
    }
}

/// Appends queued entries, in order, retrying while Redis is away.
async fn append(client: redis::Client, mut receiver: mpsc::UnboundedReceiver<(String, String)>) {
    let mut pending: VecDeque<(String, String)> = VecDeque::new();
    let mut connection = None;
    let mut failing = false;
    loop {
        if pending.is_empty() {
            match receiver.recv().await {
                Some(entry) => pending.push_back(entry),
                None => return,
            }
        }
        while let Ok(entry) = receiver.try_recv() {
            pending.push_back(entry);
        }
        if pending.len() > PENDING_LIMIT {
            let excess = pending.len() - PENDING_LIMIT;
            pending.drain(..excess);
            tracing::warn!(dropped = excess, "Redis unreachable: oldest offset map entries not shared with the fleet (still in the local map)");
        }
        if connection.is_none() {
            connection = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(redis) = connection.as_mut() else {
            if !failing {
                tracing::warn!("cannot reach Redis to share the offset map; retrying");
                failing = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut pipeline = redis::pipe();
        let mut appended: Vec<&str> = Vec::new();
        for (key, value) in pending.iter().take(BATCH) {
            pipeline.cmd("RPUSH").arg(key).arg(value).ignore();
            if !appended.contains(&key.as_str()) {
                appended.push(key);
            }
        }
        for key in appended {
            let keep = i64::try_from(super::MAX_SEGMENTS).unwrap_or(i64::MAX);
            pipeline.cmd("LTRIM").arg(key).arg(-keep).arg(-1).ignore();
        }
        match pipeline.query_async::<()>(redis).await {
            Ok(()) => {
                let sent = pending.len().min(BATCH);
                pending.drain(..sent);
                if failing {
                    tracing::info!("offset map entries reach Redis again");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot append the offset map to Redis; retrying");
                    failing = true;
                }
                connection = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
