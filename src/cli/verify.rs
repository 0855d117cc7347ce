//! `kshift verify --config FILE --topics GLOB [--since MS]`: proves that a route's mirror
//! holds the same records as its write cluster, per partition: record counts and a digest
//! of the (key, value, headers) sequence, read from both clusters directly.
//!
//! With `identity` partitioning, partition p is compared with partition p (in offset order);
//! with `murmur2`, each key's sequence is compared (records of one key keep their order
//! across re-partitioning; different keys do not). Renames are followed. A mismatch names
//! the partition and the write-cluster offset range from the first difference on, and the
//! command exits 1.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use globset::Glob;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::progress::Progress;
use crate::config::Config;
use crate::routing::{Partitioning, RoutingTable};

/// One record as compared: its offset and the digest of its key, value and headers.
#[derive(Debug, Clone)]
struct Fingerprint {
    offset: i64,
    key: Option<Vec<u8>>,
    digest: u64,
}

/// 64-bit FNV-1a, fed field by field with lengths so that boundaries count.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(mut self, bytes: Option<&[u8]>) -> Fnv {
        let (length, bytes) = match bytes {
            Some(bytes) => (bytes.len() as i64, bytes),
            None => (-1, &[][..]),
        };
        for byte in length.to_be_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
}

/// Reads every record of partitions `0..partitions` of `topic` on `bootstrap`, from
/// `since` (ms) or the start, up to the end of each log as of now (one consumer).
fn read_topic(
    bootstrap: &str,
    security: &[(&str, String)],
    topic: &str,
    partitions: i32,
    since: Option<i64>,
) -> anyhow::Result<Vec<Vec<Fingerprint>>> {
    let mut records: Vec<Vec<Fingerprint>> = (0..partitions).map(|_| Vec::new()).collect();
    if partitions <= 0 {
        return Ok(records);
    }
    let mut settings = ClientConfig::new();
    for (key, value) in security {
        settings.set(*key, value);
    }
    let consumer: BaseConsumer = settings
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kshift-verify")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .context("consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let start = match since {
            Some(timestamp) => {
                let mut query = TopicPartitionList::new();
                query.add_partition_offset(topic, partition, Offset::Offset(timestamp))?;
                let found = consumer.offsets_for_times(query, Duration::from_secs(10))?;
                found
                    .elements()
                    .first()
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Beginning)
            }
            None => Offset::Beginning,
        };
        assignment.add_partition_offset(topic, partition, start)?;
    }
    // How many records there are to read, for the progress bar.
    let mut total = 0u64;
    for element in assignment.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
            .unwrap_or((0, 0));
        let start = match element.offset() {
            Offset::Offset(offset) => offset.max(low),
            _ => low,
        };
        total += u64::try_from(high - start).unwrap_or(0);
    }
    consumer.assign(&assignment)?;
    let mut at_end = vec![false; partitions as usize];
    let mut read = 0u64;
    let mut progress = Progress::new(format!("  {topic} on {bootstrap}"), total);
    while at_end.iter().any(|done| !done) {
        match consumer.poll(Duration::from_secs(10)) {
            None => bail!("{topic} on {bootstrap}: no data and no end of log within 10 s"),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(done) = usize::try_from(partition)
                    .ok()
                    .and_then(|p| at_end.get_mut(p))
                {
                    *done = true;
                }
            }
            Some(Err(error)) => bail!("{topic} on {bootstrap}: {error}"),
            Some(Ok(message)) => {
                let mut digest = Fnv::new().bytes(message.key()).bytes(message.payload());
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        digest = digest
                            .bytes(Some(header.key.as_bytes()))
                            .bytes(header.value);
                    }
                }
                if let Some(list) = usize::try_from(message.partition())
                    .ok()
                    .and_then(|p| records.get_mut(p))
                {
                    list.push(Fingerprint {
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        digest: digest.0,
                    });
                }
                read += 1;
                progress.update(read);
            }
        }
    }
    progress.finish(read);
    Ok(records)
}

/// One line of the report.
struct Row {
    topic: String,
    partition: String,
    write_count: usize,
    mirror_count: usize,
    verdict: String,
}

fn sequence_digest(records: &[&Fingerprint]) -> u64 {
    records
        .iter()
        .fold(Fnv::new(), |d, r| d.bytes(Some(&r.digest.to_be_bytes())))
        .0
}

/// The first position where the two sequences differ, if any.
fn first_difference(write: &[&Fingerprint], mirror: &[&Fingerprint]) -> Option<usize> {
    let common = write.len().min(mirror.len());
    (0..common)
        .find(|&i| write[i].digest != mirror[i].digest)
        .or((write.len() != mirror.len()).then_some(common))
}

fn compare(topic: &str, partition: String, write: &[&Fingerprint], mirror: &[&Fingerprint]) -> Row {
    let verdict =
        if sequence_digest(write) == sequence_digest(mirror) && write.len() == mirror.len() {
            "ok".to_string()
        } else {
            match first_difference(write, mirror) {
                Some(i) => match (write.get(i), write.last()) {
                    (Some(first), Some(last)) => format!(
                        "MISMATCH from record {i}: write offsets {}..={} (mirror has {} records)",
                        first.offset,
                        last.offset,
                        mirror.len()
                    ),
                    _ => format!(
                        "MISMATCH: mirror has {} records the write cluster does not",
                        mirror.len() - i
                    ),
                },
                None => "MISMATCH".to_string(),
            }
        };
    Row {
        topic: topic.to_string(),
        partition,
        write_count: write.len(),
        mirror_count: mirror.len(),
        verdict,
    }
}

/// Runs the verification; `Ok(false)` when any partition differs.
pub fn run(config: &Config, topics: &str, since: Option<i64>) -> anyhow::Result<bool> {
    let names = config.cluster_names();
    let table = RoutingTable::build(&config.routing_spec(), &names, 0)?;
    let pattern = Glob::new(topics).context("--topics")?.compile_matcher();
    let mut rows = Vec::new();
    for route_index in 0.. {
        let Some(route) = table.route_at(route_index) else {
            break;
        };
        if route.mirror.is_empty() {
            continue;
        }
        let write_name = &names[route.write];
        let write_bootstrap = config.clusters[write_name].bootstrap.join(",");
        let write_security = config.clusters[write_name].client_properties(write_name)?;
        let listed = list_topics(&write_bootstrap, &write_security)?;
        for (topic, partitions) in listed {
            if !pattern.is_match(&topic) || !table.route_serves_topic(route_index, &topic) {
                continue;
            }
            for &mirror in &route.mirror {
                let mirror_name = &names[mirror];
                let mirror_bootstrap = config.clusters[mirror_name].bootstrap.join(",");
                let mirror_security =
                    config.clusters[mirror_name].client_properties(mirror_name)?;
                let mirror_topic = route.topic_on(mirror, &topic).to_string();
                let mirror_partitions = list_topics(&mirror_bootstrap, &mirror_security)?
                    .get(&mirror_topic)
                    .copied()
                    .unwrap_or(0);
                eprintln!(
                    "verifying {topic} ({write_name}) against {mirror_topic} ({mirror_name})…"
                );
                let write_records =
                    read_topic(&write_bootstrap, &write_security, &topic, partitions, since)?;
                let mirror_records = read_topic(
                    &mirror_bootstrap,
                    &mirror_security,
                    &mirror_topic,
                    mirror_partitions,
                    since,
                )?;
                match route.partitioning {
                    Partitioning::Identity => {
                        for partition in 0..partitions.max(mirror_partitions) as usize {
                            let empty = Vec::new();
                            let write: Vec<&Fingerprint> = write_records
                                .get(partition)
                                .unwrap_or(&empty)
                                .iter()
                                .collect();
                            let mirrored: Vec<&Fingerprint> = mirror_records
                                .get(partition)
                                .unwrap_or(&empty)
                                .iter()
                                .collect();
                            rows.push(compare(&topic, partition.to_string(), &write, &mirrored));
                        }
                    }
                    Partitioning::Murmur2 => {
                        // Per key: the order of a key's records survives re-partitioning.
                        let by_key = |lists: &Vec<Vec<Fingerprint>>| {
                            let mut keys: BTreeMap<Option<Vec<u8>>, Vec<Fingerprint>> =
                                BTreeMap::new();
                            for list in lists {
                                for record in list {
                                    keys.entry(record.key.clone())
                                        .or_default()
                                        .push(record.clone());
                                }
                            }
                            keys
                        };
                        let (write_keys, mirror_keys) =
                            (by_key(&write_records), by_key(&mirror_records));
                        let keys: std::collections::BTreeSet<&Option<Vec<u8>>> =
                            write_keys.keys().chain(mirror_keys.keys()).collect();
                        let empty = Vec::new();
                        let mismatched = keys
                            .into_iter()
                            .filter(|key| {
                                let write: Vec<&Fingerprint> =
                                    write_keys.get(*key).unwrap_or(&empty).iter().collect();
                                let mirrored: Vec<&Fingerprint> =
                                    mirror_keys.get(*key).unwrap_or(&empty).iter().collect();
                                compare(&topic, String::new(), &write, &mirrored).verdict != "ok"
                            })
                            .count();
                        let row_write: usize = write_keys.values().map(Vec::len).sum();
                        let row_mirror: usize = mirror_keys.values().map(Vec::len).sum();
                        rows.push(Row {
                            topic: topic.clone(),
                            partition: "all (by key)".into(),
                            write_count: row_write,
                            mirror_count: row_mirror,
                            verdict: if mismatched == 0 {
                                "ok".into()
                            } else {
                                format!("MISMATCH in {mismatched} keys")
                            },
                        });
                    }
                }
            }
        }
    }
    println!(
        "{:<40} {:>14} {:>12} {:>12}  result",
        "topic", "partition", "write", "mirror"
    );
    let mut all_ok = true;
    for row in &rows {
        all_ok &= row.verdict == "ok";
        println!(
            "{:<40} {:>14} {:>12} {:>12}  {}",
            row.topic, row.partition, row.write_count, row.mirror_count, row.verdict
        );
    }
    if rows.is_empty() {
        println!("no mirrored topic matches {topics:?}");
    }
    Ok(all_ok)
}

/// Topic name -> partition count on a cluster.
fn list_topics(
    bootstrap: &str,
    security: &[(&str, String)],
) -> anyhow::Result<BTreeMap<String, i32>> {
    let mut settings = ClientConfig::new();
    for (key, value) in security {
        settings.set(*key, value);
    }
    let consumer: BaseConsumer = settings
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("metadata client")?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("metadata from {bootstrap}"))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}
