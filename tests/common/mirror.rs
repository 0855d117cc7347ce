//! What every mirroring test ends with: the mirror cluster holds exactly the write cluster's
//! records, in the same order per partition, and kshift's offset map takes every write offset
//! to the offset of the same record on the mirror. Also the kshift most of them start: write
//! `old`, mirror `new` asynchronously.

use std::collections::BTreeMap;
use std::time::Duration;

use kshift::mirror::MirrorCounts;

use super::{Kshift, Received};

/// Routing: every topic written to and read from `old`, mirrored to `new` asynchronously;
/// every group on `old`.
pub const ASYNC_MIRROR_ROUTING: &str = "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nmirror = [\"new\"]\nmirror_mode = \"async\"\nread = \"old\"\n[[groups]]\ngroups = \"*\"\ncluster = \"old\"";

/// kshift in front of `old` and `new` (each a `bootstrap.servers`) with
/// [`ASYNC_MIRROR_ROUTING`], `new_lines` added to `[clusters.new]`.
pub async fn async_mirroring_kshift(old: &str, new: &str, new_lines: &str) -> Kshift {
    Kshift::start_toml(&super::two_cluster_toml_at(
        old,
        new,
        "",
        new_lines,
        ASYNC_MIRROR_ROUTING,
    ))
    .await
}

/// (key, value) of one record.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Creates `topic` with `partitions` partitions through kshift (`through`), which creates it on
/// the write cluster and on the route's mirror, and waits until the mirror (`mirror`) shows it
/// too.
pub async fn create_mirrored_topic(through: &str, mirror: &str, topic: &str, partitions: i32) {
    super::create_topic(through, topic, partitions).await;
    super::wait_for_topic(mirror, topic, partitions).await;
}

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

/// Waits up to `within` until the counters of kshift's mirror to `mirror_cluster` satisfy
/// `until` (`what` says what that is, for the failure message); returns them then.
pub async fn wait_for_counts(
    state: &kshift::ProxyState,
    mirror_cluster: &str,
    within: Duration,
    what: &str,
    until: impl Fn(&MirrorCounts) -> bool,
) -> MirrorCounts {
    let id = state.cluster_id(mirror_cluster).expect("mirror cluster");
    super::eventually(within, what, async || {
        let stats = state.mirrors.stats(id);
        if until(&stats) {
            Ok(stats)
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await
}

/// Waits until kshift's mirror to `mirror_cluster` has settled `records` records (mirrored,
/// failed or dropped) with nothing left queued; returns its counters then.
pub async fn settled(
    state: &kshift::ProxyState,
    mirror_cluster: &str,
    records: u64,
    within: Duration,
) -> MirrorCounts {
    let what = format!("the mirror to {mirror_cluster} to settle {records} records");
    wait_for_counts(state, mirror_cluster, within, &what, |stats| {
        let done = stats.mirrored_records + stats.failed_records + stats.dropped_records;
        done >= records && stats.lag_records == 0
    })
    .await
}

/// Checks that each of `partitions` partitions of `topic` holds the same (key, value)
/// sequence `on_write` and `on_mirror`, naming the first difference.
pub fn assert_same_per_partition(
    topic: &str,
    partitions: i32,
    on_write: &[Received],
    on_mirror: &[Received],
) {
    let (written, mirrored) = (by_partition(on_write), by_partition(on_mirror));
    let text = |record: Option<&KeyValue>| {
        record.map(|(key, value)| {
            let text = |bytes: &Option<Vec<u8>>| {
                bytes
                    .as_deref()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            };
            (text(key), text(value))
        })
    };
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
                text(on_write.get(first)),
                text(on_mirror.get(first))
            );
        }
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
    assert_same_per_partition(topic, partitions, &on_write, &on_mirror);
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
