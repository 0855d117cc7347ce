//! What every mirroring test ends with: the mirror cluster holds exactly the write cluster's
//! records, in the same order per partition, and kshift's offset map takes every write offset
//! to the offset of the same record on the mirror.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Received;

/// (key, value) of one record.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Per partition, the (key, value) sequence in offset order.
pub fn by_partition(records: &[Received]) -> BTreeMap<i32, Vec<KeyValue>> {
    let mut sorted: Vec<&Received> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut map: BTreeMap<i32, Vec<KeyValue>> = BTreeMap::new();
    for record in sorted {
        map.entry(record.partition)
            .or_default()
            .push((record.key.clone(), record.value.clone()));
    }
    map
}

/// Reads the `records` records of `topic` (all its `partitions`) from a cluster directly.
pub async fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: usize,
) -> Vec<Received> {
    let consumer = super::assigned_consumer(bootstrap, topic, partitions, &[]);
    super::consume_n(&consumer, records, Duration::from_secs(60)).await
}

/// Waits until kshift's mirror to `mirror_cluster` has settled `records` records (mirrored,
/// failed or dropped) with nothing left queued; returns its counters then.
pub async fn settled(
    state: &kshift::ProxyState,
    mirror_cluster: &str,
    records: u64,
    within: Duration,
) -> kshift::mirror::MirrorCounts {
    let id = state.cluster_id(mirror_cluster).expect("mirror cluster");
    let deadline = Instant::now() + within;
    loop {
        let stats = state.mirrors.stats(id);
        let done = stats.mirrored_records + stats.failed_records + stats.dropped_records;
        if done >= records && stats.lag_records == 0 {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not settle {records} records within {within:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `records` records of `topic` from both clusters and checks that they are the same
/// records in the same order per partition, and that every write offset translates to the
/// mirror offset of the same record (records are told apart by value: tests write unique
/// values). Returns what the write cluster holds.
pub async fn assert_mirrored_alike(
    state: &kshift::ProxyState,
    write_bootstrap: &str,
    mirror_bootstrap: &str,
    mirror_cluster: &str,
    topic: &str,
    partitions: i32,
    records: usize,
) -> Vec<Received> {
    let on_write = read_all(write_bootstrap, topic, partitions, records).await;
    let on_mirror = read_all(mirror_bootstrap, topic, partitions, records).await;
    let (written, mirrored) = (by_partition(&on_write), by_partition(&on_mirror));
    for partition in 0..partitions {
        let on_write = written.get(&partition).cloned().unwrap_or_default();
        let on_mirror = mirrored.get(&partition).cloned().unwrap_or_default();
        if on_write != on_mirror {
            let first = on_write
                .iter()
                .zip(&on_mirror)
                .position(|(a, b)| a != b)
                .unwrap_or(on_write.len().min(on_mirror.len()));
            panic!(
                "{topic}[{partition}]: the write cluster has {} records, the mirror {}; first \
                 difference at position {first}: write {:?}, mirror {:?}",
                on_write.len(),
                on_mirror.len(),
                on_write.get(first),
                on_mirror.get(first)
            );
        }
    }
    let mirror_id = state.cluster_id(mirror_cluster).expect("mirror cluster");
    let mirror_offset_of: BTreeMap<_, _> = on_mirror
        .iter()
        .map(|r| (r.value.clone(), (r.partition, r.offset)))
        .collect();
    for record in &on_write {
        assert_eq!(
            state
                .mirrors
                .offsets
                .translate(topic, record.partition, mirror_id, record.offset),
            mirror_offset_of.get(&record.value).copied(),
            "{topic}[{}] write offset {} does not translate to its record on the mirror",
            record.partition,
            record.offset
        );
    }
    on_write
}
