//! The offset map: for each mirrored batch, where it landed on the mirror relative to
//! where it landed on the write cluster. Consumer cutover translates committed offsets
//! with it.
//!
//! Invariant: entries of one (topic, write partition, mirror cluster) are kept in the
//! order they were recorded, which is the write cluster's offset order (see the mirror's
//! ordering invariant); lookups binary-search them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ClusterId;

/// One mirrored batch: `record_count` records at `write_base_offset` on the write cluster
/// are at `mirror_base_offset` of `mirror_partition` on `mirror_cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMapping {
    pub topic: Arc<str>,
    pub write_partition: i32,
    pub write_base_offset: i64,
    pub mirror_cluster: ClusterId,
    pub mirror_partition: i32,
    pub mirror_base_offset: i64,
    pub record_count: i64,
}

type Key = (Arc<str>, i32, ClusterId);

#[derive(Debug, Default)]
pub struct OffsetMap {
    entries: Mutex<HashMap<Key, Vec<OffsetMapping>>>,
}

impl OffsetMap {
    pub fn record(&self, mapping: OffsetMapping) {
        let key = (
            mapping.topic.clone(),
            mapping.write_partition,
            mapping.mirror_cluster,
        );
        self.lock().entry(key).or_default().push(mapping);
    }

    /// Every mapping of `topic`/`write_partition` toward `mirror_cluster`, in order.
    pub fn mappings(
        &self,
        topic: &str,
        write_partition: i32,
        mirror_cluster: ClusterId,
    ) -> Vec<OffsetMapping> {
        self.lock()
            .get(&(Arc::from(topic), write_partition, mirror_cluster))
            .cloned()
            .unwrap_or_default()
    }

    /// The mirror position of write offset `offset`: `(mirror partition, mirror offset)`,
    /// for identity-partitioned batches. `None` when no mirrored batch covers it.
    pub fn translate(
        &self,
        topic: &str,
        write_partition: i32,
        mirror_cluster: ClusterId,
        offset: i64,
    ) -> Option<(i32, i64)> {
        let entries = self.lock();
        let list = entries.get(&(Arc::from(topic), write_partition, mirror_cluster))?;
        let index = list
            .partition_point(|m| m.write_base_offset <= offset)
            .checked_sub(1)?;
        let mapping = list.get(index)?;
        let delta = offset - mapping.write_base_offset;
        (delta < mapping.record_count)
            .then_some((mapping.mirror_partition, mapping.mirror_base_offset + delta))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<OffsetMapping>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(write: i64, mirror: i64, count: i64) -> OffsetMapping {
        OffsetMapping {
            topic: "orders".into(),
            write_partition: 0,
            write_base_offset: write,
            mirror_cluster: 1,
            mirror_partition: 0,
            mirror_base_offset: mirror,
            record_count: count,
        }
    }

    #[test]
    fn translates_inside_batches_and_not_in_gaps() {
        let map = OffsetMap::default();
        map.record(mapping(100, 0, 10));
        map.record(mapping(112, 10, 5)); // 110..111 were not mirrored (e.g. a txn marker)
        assert_eq!(map.translate("orders", 0, 1, 100), Some((0, 0)));
        assert_eq!(map.translate("orders", 0, 1, 109), Some((0, 9)));
        assert_eq!(map.translate("orders", 0, 1, 110), None);
        assert_eq!(map.translate("orders", 0, 1, 114), Some((0, 12)));
        assert_eq!(map.translate("orders", 0, 1, 99), None);
        assert_eq!(map.translate("orders", 0, 1, 117), None);
        assert_eq!(map.translate("orders", 1, 1, 100), None);
        assert_eq!(map.mappings("orders", 0, 1).len(), 2);
    }
}
