//! `kshift repair --config FILE`: replays the write-offset ranges the mirror failure journal
//! lists, from the write cluster to the mirror, in journal order, with an idempotent
//! producer; each range done is marked repaired, so running it again only does what is
//! left. Partitioning, `mirror_percent` and `rename` follow the route in the config.
//!
//! A repaired batch lands after whatever the mirror received since it failed: per-partition
//! order on the mirror matches the write cluster only if nothing was mirrored in between
//! (as when the mirror was down). `kshift verify` tells.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::produce::batch::partition_for_key;
use crate::produce::failures::{self, FailedRange};
use crate::produce::mirror::percent_selects;
use crate::routing::{Partitioning, RoutingTable};

/// Runs the repair; returns (ranges repaired, records copied).
pub async fn run(config: &Config) -> anyhow::Result<(usize, usize)> {
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
    let (mut ranges, mut records) = (0, 0);
    for run in contiguous_runs(&pending) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        // One copy per run of adjacent ranges: an outage journals one range per batch.
        let merged = FailedRange {
            last_offset: last.last_offset,
            ..(*first).clone()
        };
        let copied = repair(config, &names, &table, &merged)
            .await
            .with_context(|| format!("repairing {}", merged.key()))?;
        for range in &run {
            failures::mark_repaired(path, range)?;
        }
        println!(
            "repaired {} ({copied} records, {} journalled range(s))",
            merged.key(),
            run.len()
        );
        ranges += run.len();
        records += copied;
    }
    println!("{ranges} range(s) repaired, {records} record(s) copied; nothing left pending");
    Ok((ranges, records))
}

/// `pending` cut into runs that one copy covers: ranges of one partition, mirror and target,
/// each starting where the previous ended. Per partition the journal order is kept (it is the
/// write order); partitions are independent, and an outage interleaves them in the journal.
fn contiguous_runs(pending: &[FailedRange]) -> Vec<Vec<&FailedRange>> {
    let mut runs: Vec<Vec<&FailedRange>> = Vec::new();
    for range in pending {
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

fn bootstrap(config: &Config, cluster: &str) -> anyhow::Result<String> {
    config
        .clusters
        .get(cluster)
        .map(|c| c.bootstrap.join(","))
        .ok_or_else(|| anyhow!("cluster {cluster:?} is not configured"))
}

/// A librdkafka config with cluster `cluster`'s TLS and SASL settings.
fn client_config(config: &Config, cluster: &str) -> anyhow::Result<ClientConfig> {
    let properties = config
        .clusters
        .get(cluster)
        .ok_or_else(|| anyhow!("cluster {cluster:?} is not configured"))?
        .client_properties(cluster)?;
    let mut settings = ClientConfig::new();
    for (key, value) in properties {
        settings.set(key, value);
    }
    Ok(settings)
}

async fn repair(
    config: &Config,
    names: &[String],
    table: &RoutingTable,
    range: &FailedRange,
) -> anyhow::Result<usize> {
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

    let consumer: BaseConsumer = client_config(config, write_name)?
        .set("bootstrap.servers", bootstrap(config, write_name)?)
        .set("group.id", "kshift-repair")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let producer: FutureProducer = client_config(config, &range.mirror_cluster)?
        .set(
            "bootstrap.servers",
            bootstrap(config, &range.mirror_cluster)?,
        )
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
    let mut deliveries = Vec::new();
    loop {
        let message = match consumer.poll(Duration::from_secs(10)) {
            None => bail!("no data from {write_name} within 10 s"),
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => message,
        };
        if message.offset() > range.last_offset {
            break;
        }
        let selected = match message.key() {
            Some(key) => percent_selects(key, mirror_percent),
            None => {
                let mut batch_id = range.write_partition.to_be_bytes().to_vec();
                batch_id.extend_from_slice(&range.first_offset.to_be_bytes());
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
        let mut headers = OwnedHeaders::new();
        if let Some(source) = message.headers() {
            for header in source.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let mut record = FutureRecord::to(&mirror_topic)
            .partition(partition)
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(timestamp) = message.timestamp().to_millis() {
            record = record.timestamp(timestamp);
        }
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(error, _)| anyhow!("cannot queue a record: {error}"))?,
        );
    }
    let copied = deliveries.len();
    for delivery in deliveries {
        delivery
            .await
            .map_err(|_| anyhow!("delivery cancelled"))?
            .map_err(|(error, _)| {
                anyhow!("delivery to {} failed: {error}", range.mirror_cluster)
            })?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(copied)
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

    #[test]
    fn adjacent_ranges_of_a_partition_are_copied_in_one_run() {
        let pending = [
            range(0, 10, 11),
            range(1, 4, 4),
            range(0, 12, 15),
            range(1, 5, 9),
            range(0, 20, 21), // after a gap in the journal: its own run
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
                vec![(1, 4, 4), (1, 5, 9)],
                vec![(0, 20, 21)],
            ]
        );
    }
}
