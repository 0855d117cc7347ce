//! `kshift repair --config FILE`: replays the write-offset ranges the mirror failure journal
//! lists, from the write cluster to the mirror, in journal order, with an idempotent
//! producer; each range done is marked repaired, so running it again only does what is
//! left. Partitioning, `mirror_percent` and `rename` follow the route in the config.
//!
//! A repaired batch lands after whatever the mirror received since it failed: per-partition
//! order on the mirror matches the write cluster only if nothing was mirrored in between
//! (as when the mirror was down). `kshift verify` tells.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::client_config;
use kshift::codec::batch::partition_for_key;
use kshift::config::Config;
use kshift::mirror::failures::{self, FailedRange};
use kshift::mirror::percent_selects;
use kshift::routing::{Partitioning, RoutingTable};

/// `kshift repair`'s flags.
#[derive(clap::Args)]
pub struct RepairArgs {
    /// The kshift configuration (clusters, routes, mirror_failures_file).
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the repair; returns the number of ranges repaired.
pub async fn run(config: &Config) -> anyhow::Result<usize> {
    let path = config
        .proxy
        .mirror_failures_file
        .as_deref()
        .ok_or_else(|| {
            anyhow!("the config sets no [proxy] mirror_failures_file: nothing to repair")
        })?;
    let path = Path::new(path);
    let pending = failures::pending(path).with_context(|| format!("reading {}", path.display()))?;
    let names = config.cluster_names();
    let table = RoutingTable::build(&config.routing_spec(), &names, 0)?;
    let (mut ranges, mut records, mut skipped) = (0, 0, 0);
    for run in contiguous_runs(&pending) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        // One copy per run of adjacent ranges: an outage journals one range per batch.
        let merged = FailedRange {
            last_offset: last.last_offset,
            ..(*first).clone()
        };
        let repair_run = RepairRun {
            range: &merged,
            batch_starts: run.iter().map(|range| range.first_offset).collect(),
            batch_ends: run.iter().map(|range| range.last_offset).collect(),
        };
        let copied = repair(config, &names, &table, &repair_run)
            .await
            .with_context(|| format!("repairing {}", merged.key()))?;
        for range in &run {
            failures::mark_repaired(path, range)?;
        }
        let landed = if copied.already_there > 0 {
            format!(
                ", {} already on the mirror: its first batch landed although the write failed",
                copied.already_there
            )
        } else {
            String::new()
        };
        println!(
            "repaired {} ({} records, {} journalled range(s){landed})",
            merged.key(),
            copied.records,
            run.len()
        );
        ranges += run.len();
        records += copied.records;
        skipped += copied.already_there;
    }
    println!(
        "{ranges} range(s) repaired, {records} record(s) copied, {skipped} found on the mirror \
         already; nothing left pending"
    );
    Ok(ranges)
}

/// `pending` cut into runs that one copy covers: ranges of one partition, mirror and target,
/// each starting where the previous ended. Per partition they go in write-offset order, which
/// is not always the journal's: the writer holds batches back behind a gap while the producer
/// is still journalling the batches that opened it. Partitions are independent.
fn contiguous_runs(pending: &[FailedRange]) -> Vec<Vec<&FailedRange>> {
    let mut sorted: Vec<&FailedRange> = pending.iter().collect();
    sorted.sort_by(|a, b| {
        (
            &a.mirror_cluster,
            &a.topic,
            a.write_partition,
            a.first_offset,
        )
            .cmp(&(
                &b.mirror_cluster,
                &b.topic,
                b.write_partition,
                b.first_offset,
            ))
    });
    let mut runs: Vec<Vec<&FailedRange>> = Vec::new();
    for range in sorted {
        let same_partition = |other: &FailedRange| {
            other.topic == range.topic
                && other.write_partition == range.write_partition
                && other.mirror_cluster == range.mirror_cluster
                && other.mirror == range.mirror
        };
        // The latest run of this partition, if any; a range continues only that one.
        let latest = runs
            .iter_mut()
            .rev()
            .find(|run| run.last().is_some_and(|last| same_partition(last)));
        match latest {
            Some(run)
                if run
                    .last()
                    .is_some_and(|last| last.last_offset + 1 == range.first_offset) =>
            {
                run.push(range)
            }
            _ => runs.push(vec![range]),
        }
    }
    runs
}

/// A record as repair reads and writes it: what the mirror must hold, compared field by field
/// when checking whether a batch already landed.
#[derive(Debug, PartialEq, Eq)]
struct CopiedRecord {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

impl CopiedRecord {
    fn of(message: &impl Message) -> CopiedRecord {
        CopiedRecord {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message.headers().map_or_else(Vec::new, |headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            }),
            timestamp: message.timestamp().to_millis(),
        }
    }
}

/// What one repair copies: a run of adjacent journalled ranges of one partition.
struct RepairRun<'a> {
    /// The whole run, first offset of the first range to last offset of the last.
    range: &'a FailedRange,
    /// First offset of each journalled range (each one produced batch), ascending: unkeyed
    /// records are selected for `mirror_percent` by the batch they were produced in.
    batch_starts: Vec<i64>,
    /// Last offset of each journalled range, ascending.
    batch_ends: Vec<i64>,
}

/// Journalled batches at the start of a run that may have landed together: the mirror
/// writer merges up to 512 KiB of queued batches into one request.
const MAY_HAVE_LANDED_BATCHES: usize = 256;
/// Records held back to compare with the mirror's end, at most.
const MAY_HAVE_LANDED_RECORDS: usize = 20_000;

impl RepairRun<'_> {
    /// The first offset of the batch `offset` was produced in.
    fn batch_start(&self, offset: i64) -> i64 {
        self.batch_starts
            .iter()
            .rev()
            .find(|start| **start <= offset)
            .copied()
            .unwrap_or(self.range.first_offset)
    }
}

/// What a repair run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Records written to the mirror.
    pub records: usize,
    /// Records of the run's first batch found on the mirror already, so not written again.
    pub already_there: usize,
}

async fn repair(
    config: &Config,
    names: &[String],
    table: &RoutingTable,
    run: &RepairRun<'_>,
) -> anyhow::Result<Copied> {
    let range = run.range;
    let route = table
        .route(&range.topic, "")
        .ok_or_else(|| anyhow!("no route matches topic {:?}", range.topic))?;
    let write_name = &names[route.write];
    let mirror = names
        .iter()
        .position(|n| *n == range.mirror_cluster)
        .ok_or_else(|| anyhow!("cluster {:?} is not configured", range.mirror_cluster))?;
    let write_topic = route.topic_on(route.write, &range.topic).to_string();
    // How it was to be mirrored when it failed; older journals: as the route says now.
    let (mirror_topic, partitioning, mirror_percent) = match &range.mirror {
        Some(target) => (
            target.mirror_topic.clone(),
            target.partitioning,
            target.mirror_percent,
        ),
        None => (
            route.topic_on(mirror, &range.topic).to_string(),
            route.partitioning,
            route.mirror_percent,
        ),
    };

    // Committed records only: the mirror writer skips aborted transactions.
    let consumer = consumer(config, write_name, "read_committed")?;
    let producer: FutureProducer = client_config(config, &range.mirror_cluster)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()?;
    let mirror_partitions = match partitioning {
        Partitioning::Identity => None,
        Partitioning::Murmur2 => {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&mirror_topic), Duration::from_secs(10))?;
            let count = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32);
            if count == 0 {
                bail!(
                    "topic {mirror_topic} does not exist on {}",
                    range.mirror_cluster
                );
            }
            Some(count)
        }
    };
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(
        &write_topic,
        range.write_partition,
        Offset::Offset(range.first_offset),
    )?;
    consumer.assign(&assignment)?;
    let mut sender = MirrorSender {
        producer: &producer,
        topic: &mirror_topic,
        deliveries: Vec::new(),
    };
    let mut already_there = 0;
    // The first batches' records are held back until it is known whether the mirror has
    // them already: the request in flight when the mirror failed (one batch, or several
    // merged) may have landed all the same.
    let hold_until = run.batch_ends[..run.batch_ends.len().min(MAY_HAVE_LANDED_BATCHES)]
        .last()
        .copied()
        .unwrap_or(range.last_offset);
    let mut held: Option<Vec<(i64, i32, CopiedRecord)>> = Some(Vec::new());
    let settle = |held: Vec<(i64, i32, CopiedRecord)>, sender: &mut MirrorSender<'_>| {
        let landed = if mirror_partitions.is_none() {
            landed_already(config, range, &mirror_topic, &run.batch_ends, &held).unwrap_or_else(
                |error| {
                    // Copying is the safe side: a duplicate, where skipping could lose records.
                    println!(
                        "warning: {error:#}; cannot tell whether the mirror got the batch at \
                         {} already, copying it (a duplicate if it did)",
                        range.first_offset
                    );
                    0
                },
            )
        } else {
            0
        };
        for (_, partition, record) in &held[landed..] {
            sender.send(*partition, record)?;
        }
        anyhow::Ok(landed)
    };
    loop {
        let message = match consumer.poll(Duration::from_secs(10)) {
            None => bail!("no data from {write_name} within 10 s"),
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => message,
        };
        let offset = message.offset();
        if offset > range.last_offset {
            break;
        }
        let full = held
            .as_ref()
            .is_some_and(|held| held.len() >= MAY_HAVE_LANDED_RECORDS);
        if offset > hold_until || full {
            if let Some(held) = held.take() {
                already_there = settle(held, &mut sender)?;
            }
        }
        let selected = match message.key() {
            Some(key) => percent_selects(key, mirror_percent),
            None => {
                let mut batch_id = range.write_partition.to_be_bytes().to_vec();
                batch_id.extend_from_slice(&run.batch_start(offset).to_be_bytes());
                percent_selects(&batch_id, mirror_percent)
            }
        };
        if !selected {
            continue;
        }
        let partition = match (mirror_partitions, message.key()) {
            (Some(count), Some(key)) => partition_for_key(key, count),
            (Some(count), None) => range.write_partition % count,
            (None, _) => range.write_partition,
        };
        let record = CopiedRecord::of(&message);
        match &mut held {
            Some(held) => held.push((offset, partition, record)),
            None => sender.send(partition, &record)?,
        }
    }
    if let Some(held) = held.take() {
        already_there = settle(held, &mut sender)?;
    }
    let records = sender.deliveries.len();
    for delivery in sender.deliveries {
        delivery
            .await
            .map_err(|_| anyhow!("delivery cancelled"))?
            .map_err(|(error, _)| {
                anyhow!("delivery to {} failed: {error}", range.mirror_cluster)
            })?;
    }
    let copied = Copied {
        records,
        already_there,
    };
    producer.flush(Duration::from_secs(30))?;
    Ok(copied)
}
/// Queues records for the mirror and keeps their delivery reports.
struct MirrorSender<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    deliveries: Vec<DeliveryFuture>,
}

impl MirrorSender<'_> {
    fn send(&mut self, partition: i32, record: &CopiedRecord) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut future = FutureRecord::to(self.topic)
            .partition(partition)
            .headers(headers);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(payload) = &record.payload {
            future = future.payload(payload);
        }
        if let Some(timestamp) = record.timestamp {
            future = future.timestamp(timestamp);
        }
        let delivery = self
            .producer
            .send_result(future)
            .map_err(|(error, _)| anyhow!("cannot queue a record: {error}"))?;
        self.deliveries.push(delivery);
        Ok(())
    }
}

/// A consumer of `cluster` for repair, signalling the end of each partition.
fn consumer(config: &Config, cluster: &str, isolation: &str) -> anyhow::Result<BaseConsumer> {
    Ok(client_config(config, cluster)?
        // An offset the broker does not have is an error, not a silent jump elsewhere.
        .set("auto.offset.reset", "error")
        .set("group.id", "kshift-repair")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()?)
}

/// How many of `held` (the first records of a run, with their write offsets) the mirror
/// partition already ends with, in whole journalled batches (`batch_ends`): the mirror
/// writer sends nothing to a partition past a gap, so a request that landed although its
/// write failed is the last thing there.
fn landed_already(
    config: &Config,
    range: &FailedRange,
    mirror_topic: &str,
    batch_ends: &[i64],
    held: &[(i64, i32, CopiedRecord)],
) -> anyhow::Result<usize> {
    if held.is_empty() {
        return Ok(0);
    }
    let tail = mirror_tail(
        config,
        &range.mirror_cluster,
        mirror_topic,
        range.write_partition,
        held.len(),
    )?;
    Ok(longest_landed_prefix(&tail, batch_ends, held))
}

/// The largest number of `held` records, ending at a batch boundary, that `tail` ends with.
fn longest_landed_prefix(
    tail: &[CopiedRecord],
    batch_ends: &[i64],
    held: &[(i64, i32, CopiedRecord)],
) -> usize {
    // Held records up to the end of each batch, longest first.
    let mut prefixes: Vec<usize> = batch_ends
        .iter()
        .map(|end| held.partition_point(|(offset, _, _)| offset <= end))
        .filter(|length| *length > 0 && *length <= tail.len())
        .collect();
    prefixes.dedup();
    prefixes
        .into_iter()
        .rev()
        .find(|length| {
            tail[tail.len() - length..]
                .iter()
                .zip(&held[..*length])
                .all(|(on_mirror, (_, _, copied))| on_mirror == copied)
        })
        .unwrap_or(0)
}

/// The last `count` records (at most) of `partition` of `topic` on `cluster`.
fn mirror_tail(
    config: &Config,
    cluster: &str,
    topic: &str,
    partition: i32,
    count: usize,
) -> anyhow::Result<Vec<CopiedRecord>> {
    // kshift writes mirrors without transactions.
    let consumer = consumer(config, cluster, "read_uncommitted")?;
    // Read from `count` records before the end the broker reports to the end of the log:
    // the end of the fetches, as some brokers (Tansu 0.6) report the last batch's base
    // offset + 1 as the latest offset, short of the real end.
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let start = low.max(high - i64::try_from(count).unwrap_or(i64::MAX));
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut tail = std::collections::VecDeque::with_capacity(count + 1);
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            None => bail!(
                "{topic}[{partition}] on {cluster}: no data and no end of log within 10 s \
                 reading from offset {start} (log {low}..{high}, {} read)",
                tail.len()
            ),
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                tail.push_back(CopiedRecord::of(&message));
                if tail.len() > count {
                    tail.pop_front();
                }
            }
        }
    }
    Ok(tail.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, first: i64, last: i64) -> FailedRange {
        FailedRange {
            topic: "orders".into(),
            write_partition: partition,
            first_offset: first,
            last_offset: last,
            mirror_cluster: "new".into(),
            reason: "test".into(),
            mirror: None,
        }
    }

    fn record(i: i64) -> CopiedRecord {
        CopiedRecord {
            key: None,
            payload: Some(format!("v{i}").into_bytes()),
            headers: Vec::new(),
            timestamp: Some(i),
        }
    }

    #[test]
    fn what_landed_is_found_in_whole_batches_at_the_mirror_end() {
        // Batches 0..=1, 2..=3, 4..=5 journalled; records 0..6 held.
        let held: Vec<(i64, i32, CopiedRecord)> = (0..6).map(|i| (i, 0, record(i))).collect();
        let ends = [1, 3, 5];
        let tail_of = |records: std::ops::Range<i64>| -> Vec<CopiedRecord> {
            // What was mirrored before the gap, then what landed.
            [record(100), record(101)]
                .into_iter()
                .chain(records.map(record))
                .collect()
        };
        // Two batches merged into one request landed.
        assert_eq!(longest_landed_prefix(&tail_of(0..4), &ends, &held), 4);
        // One batch landed.
        assert_eq!(longest_landed_prefix(&tail_of(0..2), &ends, &held), 2);
        // Nothing landed.
        assert_eq!(longest_landed_prefix(&tail_of(0..0), &ends, &held), 0);
        // Not a batch boundary: not a landed request, copy everything.
        assert_eq!(longest_landed_prefix(&tail_of(0..3), &ends, &held), 0);
        // A mirror shorter than what is held.
        assert_eq!(
            longest_landed_prefix(&[record(0), record(1)], &ends, &held),
            2
        );
    }

    #[test]
    fn adjacent_ranges_of_a_partition_are_copied_in_one_run_in_write_order() {
        let pending = [
            range(0, 10, 11),
            range(1, 4, 4),
            range(0, 12, 15),
            range(1, 5, 9),
            range(0, 20, 21), // after a gap in the journal: its own run
            range(1, 12, 12), // journalled before the range it follows
            range(1, 10, 11),
        ];
        let runs: Vec<Vec<(i32, i64, i64)>> = contiguous_runs(&pending)
            .into_iter()
            .map(|run| {
                run.iter()
                    .map(|r| (r.write_partition, r.first_offset, r.last_offset))
                    .collect()
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                vec![(0, 10, 11), (0, 12, 15)],
                vec![(0, 20, 21)],
                vec![(1, 4, 4), (1, 5, 9), (1, 10, 11), (1, 12, 12)],
            ]
        );
    }
}
