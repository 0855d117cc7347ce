//! `kshift verify --config FILE --topics GLOB [--since MS] [--order strict|fleet]`: proves that
//! each mirrored topic's mirror holds the records of its write cluster, per partition, read
//! from both clusters directly.
//!
//! How a partition is compared:
//! - The snapshot: the write cluster's partition is read (librdkafka, read_committed) up to the
//!   high watermark a Fetch returned when verify started (kshift's own client asks; ListOffsets
//!   LATEST is wrong on some brokers, Tansu among them). The mirror's partition is read after
//!   it, up to its own high watermark then.
//! - Records are compared as multisets of (key, value, headers, timestamp): *missing* records
//!   are on the write cluster but not on the mirror (listed by write offset), *extra* ones are
//!   on the mirror and nowhere on the write cluster (a mirror record that the write cluster
//!   holds past the snapshot was written meanwhile, and is not extra), *changed* ones are a
//!   write and a mirror record with the same key, paired in order, that differ in value,
//!   headers or timestamp.
//! - Order is compared apart, over the records both sides hold. In `strict` mode (one kshift
//!   instance writes each partition) the mirror must keep the write order: a difference fails.
//!   In `fleet` mode several instances write a partition; each instance mirrors its own
//!   batches in order, but batches of different instances may interleave differently on the
//!   mirror: a difference is noted, not a failure. The default is `fleet` when the config shares
//!   its routing table through Redis (a fleet), `strict` otherwise; the report says which.
//!
//! With `murmur2` partitioning, records are compared per key over the whole topic (a key's
//! records keep their order across re-partitioning; different keys do not). Below 100%
//! `mirror_percent`, only keyed records the percentage selects are expected on the mirror, and
//! unkeyed records are not compared. Renames are followed. The command exits 1 when any
//! partition differs, naming it with the offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use globset::Glob;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::progress::Progress;
use kshift::cluster::{Cluster, ConnectionSettings};
use kshift::config::Config;
use kshift::mirror::percent_selects;
use kshift::routing::{Partitioning, RoutingTable};

/// How a difference in order is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OrderMode {
    /// One kshift instance writes each partition: the mirror keeps the write order.
    Strict,
    /// Several instances write a partition: their batches may interleave differently.
    Fleet,
}

impl OrderMode {
    /// The mode's name, as `--order` takes it.
    pub fn name(self) -> &'static str {
        match self {
            OrderMode::Strict => "strict",
            OrderMode::Fleet => "fleet",
        }
    }

    fn explained(self) -> &'static str {
        match self {
            OrderMode::Strict => {
                "strict (one kshift instance writes each partition: the mirror must keep the write order)"
            }
            OrderMode::Fleet => {
                "fleet (several kshift instances may write a partition: order between their batches may differ, records may not)"
            }
        }
    }
}

/// What to verify. The field docs are `kshift verify`'s `--help` text.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Glob of client-visible topic names to verify.
    #[arg(long, default_value = "*")]
    pub topics: String,
    /// Only records from this time on (milliseconds since the epoch).
    #[arg(long)]
    pub since: Option<i64>,
    // `None`: `fleet` when the config uses Redis, `strict` otherwise.
    /// strict: the mirror must keep each partition's write order (one kshift writes it);
    /// fleet: order may differ between instances' batches. Default: fleet when the
    /// config uses Redis, strict otherwise.
    #[arg(long, value_enum)]
    pub order: Option<OrderMode>,
    /// No progress bars and no per-topic lines on stderr (the demo).
    #[arg(skip)]
    pub quiet: bool,
    /// A kshift admin API (http://host:port) to report the result to: its status page
    /// shows the last verify.
    #[arg(long = "admin", value_name = "ADMIN")]
    pub report_to: Option<String>,
}

/// The comparison of one partition (or, with murmur2, one topic by key).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub mirror_cluster: String,
    pub mirror_topic: String,
    /// `None`: compared by key over the whole topic (murmur2).
    pub partition: Option<i32>,
    pub write_records: usize,
    pub mirror_records: usize,
    /// Write-cluster offsets of records the mirror lacks.
    pub missing: Vec<i64>,
    /// Mirror offsets of records the write cluster does not hold.
    pub extra: Vec<i64>,
    /// (write offset, mirror offset) of same-key records that differ.
    pub changed: Vec<(i64, i64)>,
    /// The write offset of the first record found in another order on the mirror.
    pub order_differs_at: Option<i64>,
}

/// At most this many offsets are listed per kind in a verdict (all are counted).
const LISTED_OFFSETS: usize = 10;

impl PartitionReport {
    /// Whether this partition passes in `mode`.
    pub fn ok(&self, mode: OrderMode) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.changed.is_empty()
            && (mode == OrderMode::Fleet || self.order_differs_at.is_none())
    }

    /// One line: `ok`, `ok; order differs …` or `MISMATCH: …`.
    pub fn verdict(&self, mode: OrderMode) -> String {
        let mut problems = Vec::new();
        if !self.missing.is_empty() {
            problems.push(format!(
                "{} missing on the mirror (write offsets {})",
                self.missing.len(),
                offset_list(&self.missing)
            ));
        }
        if !self.extra.is_empty() {
            problems.push(format!(
                "{} extra on the mirror (mirror offsets {})",
                self.extra.len(),
                offset_list(&self.extra)
            ));
        }
        if !self.changed.is_empty() {
            let pairs: Vec<String> = self
                .changed
                .iter()
                .take(LISTED_OFFSETS)
                .map(|(write, mirror)| format!("{write}->{mirror}"))
                .collect();
            let more = self.changed.len().saturating_sub(LISTED_OFFSETS);
            problems.push(format!(
                "{} changed (write->mirror offsets {}{})",
                self.changed.len(),
                pairs.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        let order = self.order_differs_at.map(|offset| match mode {
            OrderMode::Strict => format!("order differs from write offset {offset}"),
            OrderMode::Fleet => format!(
                "order differs from write offset {offset} (expected when several instances write a partition)"
            ),
        });
        if problems.is_empty() {
            return match order {
                Some(order) if mode == OrderMode::Fleet => format!("ok; {order}"),
                Some(order) => format!("MISMATCH: {order}"),
                None => "ok".to_string(),
            };
        }
        if let Some(order) = order {
            problems.push(order);
        }
        format!("MISMATCH: {}", problems.join("; "))
    }
}

/// Offsets as ranges (`3..=5, 9`), the first [`LISTED_OFFSETS`] ranges.
fn offset_list(offsets: &[i64]) -> String {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for offset in sorted {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(offset) => *end = offset,
            _ => ranges.push((offset, offset)),
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(LISTED_OFFSETS)
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..={last}")
            }
        })
        .collect();
    let more = ranges.len().saturating_sub(LISTED_OFFSETS);
    if more > 0 {
        format!("{} and {more} more ranges", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Everything one run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: OrderMode,
    pub topics: String,
    pub since: Option<i64>,
    pub partitions: Vec<PartitionReport>,
    /// Remarks on what was not compared (percentages below 100).
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.ok(self.mode))
    }

    /// Partitions whose order differs (noted in fleet mode).
    pub fn order_differences(&self) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.order_differs_at.is_some())
            .count()
    }

    /// The result as the status page shows it (`POST /verify`).
    pub fn console_result(&self) -> kshift::control::console::VerifyResult {
        let (write, mirror) = self.partitions.iter().fold((0, 0), |(w, m), p| {
            (w + p.write_records, m + p.mirror_records)
        });
        let differ: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| !p.ok(self.mode))
            .map(|p| {
                let partition = p
                    .partition
                    .map_or_else(|| "all".to_string(), |p| p.to_string());
                format!("{}[{partition}] {}", p.topic, p.verdict(self.mode))
            })
            .collect();
        let summary = if differ.is_empty() {
            format!(
                "{} partitions compared, {write} records on the write cluster, {mirror} on the mirror; {} with another order",
                self.partitions.len(),
                self.order_differences()
            )
        } else {
            format!(
                "{} of {} partitions differ: {}",
                differ.len(),
                self.partitions.len(),
                differ.join("; ")
            )
        };
        kshift::control::console::VerifyResult {
            topics: self.topics.clone(),
            ok: self.ok() && !self.partitions.is_empty(),
            mode: self.mode.name().to_string(),
            summary,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// The table `kshift verify` prints.
    pub fn print(&self) {
        println!("mode: {}", self.mode.explained());
        for note in &self.notes {
            println!("note: {note}");
        }
        println!(
            "{:<40} {:>14} {:>12} {:>12}  result",
            "topic", "partition", "write", "mirror"
        );
        for row in &self.partitions {
            let partition = row
                .partition
                .map_or_else(|| "all (by key)".to_string(), |p| p.to_string());
            println!(
                "{:<40} {:>14} {:>12} {:>12}  {}",
                format!("{} -> {}", row.topic, row.mirror_cluster),
                partition,
                row.write_records,
                row.mirror_records,
                row.verdict(self.mode)
            );
        }
        if self.partitions.is_empty() {
            println!("no mirrored topic matches {:?}", self.topics);
        } else if self.ok() {
            let order = self.order_differences();
            if order > 0 {
                println!("parity: every record is on the mirror; the order differs in {order} partition(s), as expected in fleet mode");
            } else {
                println!("parity: every record is on the mirror, in write order");
            }
        }
    }
}

/// Runs the verification and prints the table; `Ok(false)` when any partition differs.
pub async fn run(config: &Config, options: &Options) -> anyhow::Result<bool> {
    let report = verify(config, options).await?;
    report.print();
    if let Some(admin) = &options.report_to {
        let body = serde_json::to_string(&report.console_result())?;
        let (status, answer) =
            super::admin_client::request(admin, "POST", "/verify", &body).await?;
        if status != 204 {
            return Err(super::admin_client::refused(status, &answer)
                .context(format!("reporting the result to {admin}")));
        }
    }
    Ok(report.ok())
}

/// One record as compared: where it is, its key, and a digest of everything compared.
#[derive(Debug, Clone)]
struct Fingerprint {
    offset: i64,
    /// Milliseconds since the epoch (-1: none).
    timestamp: i64,
    key: Option<Vec<u8>>,
    /// Key, value, headers and timestamp.
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

fn fingerprint(message: &BorrowedMessage<'_>) -> Fingerprint {
    let timestamp = message.timestamp().to_millis().unwrap_or(-1);
    let mut digest = Fnv::new()
        .bytes(message.key())
        .bytes(message.payload())
        .bytes(Some(&timestamp.to_be_bytes()));
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            digest = digest
                .bytes(Some(header.key.as_bytes()))
                .bytes(header.value);
        }
    }
    Fingerprint {
        offset: message.offset(),
        timestamp,
        key: message.key().map(<[u8]>::to_vec),
        digest: digest.0,
    }
}

/// What one comparison found (offsets only; counts come from the inputs).
#[derive(Debug, Default, PartialEq, Eq)]
struct Comparison {
    missing: Vec<i64>,
    extra: Vec<i64>,
    changed: Vec<(i64, i64)>,
    order_differs_at: Option<i64>,
    /// Mirror records the write cluster received after the snapshot (not compared).
    after_snapshot: usize,
}

/// Compares the write cluster's records with the mirror's; `later` are write records past
/// the snapshot (a mirror record among them is not extra).
fn compare(write: &[&Fingerprint], mirror: &[&Fingerprint], later: &[&Fingerprint]) -> Comparison {
    let mut by_digest: HashMap<u64, VecDeque<usize>> = HashMap::new();
    for (position, record) in mirror.iter().enumerate() {
        by_digest
            .entry(record.digest)
            .or_default()
            .push_back(position);
    }
    let mut matched = vec![false; mirror.len()];
    // (write position, mirror position) of records both hold, in write order.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut unmatched_write = Vec::new();
    for (position, record) in write.iter().enumerate() {
        match by_digest
            .get_mut(&record.digest)
            .and_then(VecDeque::pop_front)
        {
            Some(found) => {
                if let Some(flag) = matched.get_mut(found) {
                    *flag = true;
                }
                pairs.push((position, found));
            }
            None => unmatched_write.push(position),
        }
    }
    // Mirror records the write cluster received after the snapshot are not extra.
    let mut after_snapshot = 0;
    for record in later {
        if let Some(found) = by_digest
            .get_mut(&record.digest)
            .and_then(VecDeque::pop_front)
        {
            if let Some(flag) = matched.get_mut(found) {
                *flag = true;
                after_snapshot += 1;
            }
        }
    }
    let mut unmatched_mirror: HashMap<&Option<Vec<u8>>, VecDeque<usize>> = HashMap::new();
    for (position, record) in mirror.iter().enumerate() {
        if !matched.get(position).copied().unwrap_or(true) {
            unmatched_mirror
                .entry(&record.key)
                .or_default()
                .push_back(position);
        }
    }
    let mut comparison = Comparison {
        after_snapshot,
        ..Comparison::default()
    };
    let mut paired_mirror = vec![false; mirror.len()];
    for position in unmatched_write {
        let Some(record) = write.get(position) else {
            continue;
        };
        match unmatched_mirror
            .get_mut(&record.key)
            .and_then(VecDeque::pop_front)
        {
            Some(found) => {
                if let (Some(flag), Some(other)) = (paired_mirror.get_mut(found), mirror.get(found))
                {
                    *flag = true;
                    comparison.changed.push((record.offset, other.offset));
                }
            }
            None => comparison.missing.push(record.offset),
        }
    }
    for (position, record) in mirror.iter().enumerate() {
        let is_matched = matched.get(position).copied().unwrap_or(true);
        let is_paired = paired_mirror.get(position).copied().unwrap_or(true);
        if !is_matched && !is_paired {
            comparison.extra.push(record.offset);
        }
    }
    let mut highest = None;
    for &(write_position, mirror_position) in &pairs {
        if highest.is_some_and(|h| mirror_position < h) {
            comparison.order_differs_at = write.get(write_position).map(|r| r.offset);
            break;
        }
        highest = Some(mirror_position);
    }
    comparison
}

/// librdkafka's log and errors, minus the noise of normal operation: verify reads every
/// partition to its end, which is no error.
struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::{Alert, Critical, Emerg, Error, Warning};
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            tracing::warn!(target: "librdkafka", facility, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(target: "librdkafka", %error, "{reason}");
        }
    }
}

impl ConsumerContext for QuietContext {}

/// One cluster as verify reads it: librdkafka for records, kshift's own client for high
/// watermarks.
struct Side {
    name: String,
    /// How librdkafka reaches the cluster (bootstrap, TLS, SASL).
    settings: ClientConfig,
    cluster: Cluster,
}

impl Side {
    fn new(config: &Config, name: &str) -> anyhow::Result<Side> {
        let cluster_config = config
            .clusters
            .get(name)
            .ok_or_else(|| anyhow!("no cluster {name:?} in the config"))?;
        let cluster = Cluster::new(
            0,
            name,
            cluster_config.bootstrap.clone(),
            ConnectionSettings::from_config(&config.proxy),
            Arc::new(kshift::security::BackendSecurity::from_config(
                name,
                cluster_config,
            )?),
            Arc::new(kshift::metrics::Metrics::new()),
            cluster_config.virtual_node_base(name),
        );
        Ok(Side {
            name: name.to_string(),
            settings: super::client_config(config, name)?,
            cluster,
        })
    }

    fn consumer(&self) -> anyhow::Result<BaseConsumer<QuietContext>> {
        self.settings
            .clone()
            .set("group.id", "kshift-verify")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(QuietContext)
            .with_context(|| format!("consumer for {}", self.name))
    }

    /// Topic name -> partition count.
    async fn topics(&self) -> anyhow::Result<BTreeMap<String, i32>> {
        let metadata = self
            .cluster
            .metadata(None, false)
            .await
            .with_context(|| format!("metadata from {}", self.name))?;
        Ok(metadata
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| {
                let name = t.name.as_ref()?.0.to_string();
                Some((name, i32::try_from(t.partitions.len()).ok()?))
            })
            .collect())
    }

    /// Each partition's high watermark, as a Fetch from its leader answers it.
    async fn high_watermarks(&self, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for partition in 0..partitions {
            let leader = self
                .cluster
                .leader(topic, partition)
                .await?
                .ok_or_else(|| anyhow!("{topic}[{partition}] has no leader on {}", self.name))?;
            let start = self.cluster.list_offset(topic, partition, -2).await?;
            by_leader
                .entry(leader)
                .or_default()
                .push((partition, start.max(0)));
        }
        let version = self.cluster.version_for(ApiKey::Fetch, 12).await?;
        let mut marks = vec![0i64; usize::try_from(partitions).unwrap_or(0)];
        for (leader, wanted) in by_leader {
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                // Tansu answers a fetch with max_wait_ms 0 without the partition.
                .with_max_wait_ms(100)
                .with_min_bytes(1)
                .with_max_bytes(1)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(
                        wanted
                            .iter()
                            .map(|&(partition, offset)| {
                                FetchPartition::default()
                                    .with_partition(partition)
                                    .with_current_leader_epoch(-1)
                                    .with_fetch_offset(offset)
                                    .with_log_start_offset(-1)
                                    .with_partition_max_bytes(1)
                            })
                            .collect(),
                    )]);
            let response: FetchResponse = self
                .cluster
                .request_node(leader, ApiKey::Fetch, version, &request)
                .await?;
            for answer in response.responses.iter().flat_map(|t| t.partitions.iter()) {
                if answer.error_code != 0 {
                    bail!(
                        "fetching {topic}[{}] from {}: error code {}",
                        answer.partition_index,
                        self.name,
                        answer.error_code
                    );
                }
                if let Some(mark) = usize::try_from(answer.partition_index)
                    .ok()
                    .and_then(|p| marks.get_mut(p))
                {
                    *mark = answer.high_watermark;
                }
            }
        }
        Ok(marks)
    }

    /// Where each partition's comparison starts: the log start, or the first offset at or
    /// after `since`.
    async fn starts(
        &self,
        topic: &str,
        partitions: i32,
        since: Option<i64>,
        ends: &[i64],
    ) -> anyhow::Result<Vec<i64>> {
        let mut starts = Vec::new();
        for partition in 0..partitions {
            let end = ends
                .get(usize::try_from(partition).unwrap_or(usize::MAX))
                .copied()
                .unwrap_or(0);
            let start = match since {
                Some(timestamp) => {
                    match self.cluster.list_offset(topic, partition, timestamp).await {
                        // No record at or after `since`.
                        Ok(offset) if offset < 0 => end,
                        Ok(offset) => offset,
                        Err(error) => return Err(error.into()),
                    }
                }
                None => self.cluster.list_offset(topic, partition, -2).await?,
            };
            starts.push(start.clamp(0, end.max(0)));
        }
        Ok(starts)
    }

    /// Reads `[start, end)` of each partition (`ranges`: (partition, start, end)).
    async fn read(
        &self,
        topic: &str,
        ranges: Vec<(i32, i64, i64)>,
        quiet: bool,
    ) -> anyhow::Result<BTreeMap<i32, Vec<Fingerprint>>> {
        let consumer = self.consumer()?;
        let label = format!("  {topic} on {}", self.name);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || read_ranges(&consumer, &topic, &ranges, &label, quiet))
            .await
            .context("reading records")?
    }
}

/// Reads `[start, end)` of each partition in `ranges` with one consumer.
fn read_ranges(
    consumer: &BaseConsumer<QuietContext>,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    label: &str,
    quiet: bool,
) -> anyhow::Result<BTreeMap<i32, Vec<Fingerprint>>> {
    let mut records: BTreeMap<i32, Vec<Fingerprint>> = BTreeMap::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let mut total = 0u64;
    for &(partition, start, end) in ranges {
        records.insert(partition, Vec::new());
        if end > start {
            open.insert(partition, end);
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            total += u64::try_from(end - start).unwrap_or(0);
        }
    }
    if open.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let mut progress = (!quiet).then(|| Progress::new(label, total));
    let mut read = 0u64;
    while !open.is_empty() {
        match consumer.poll(Duration::from_secs(10)) {
            None => bail!(
                "{topic}: no data and no end of log within 10 s (partitions {:?} still open)",
                open.keys().collect::<Vec<_>>()
            ),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error)) => bail!("{topic}: {error}"),
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(&end) = open.get(&partition) else {
                    continue;
                };
                if message.offset() < end {
                    if let Some(list) = records.get_mut(&partition) {
                        list.push(fingerprint(&message));
                    }
                    read += 1;
                    if let Some(progress) = progress.as_mut() {
                        progress.update(read);
                    }
                }
                if message.offset() >= end - 1 {
                    open.remove(&partition);
                }
            }
        }
    }
    if let Some(progress) = progress.as_mut() {
        // Short of the total by the transaction markers and aborted records in the range.
        progress.finish(read);
    }
    Ok(records)
}

/// Keeps the records `percent` selects by key (unkeyed ones cannot be told: dropped).
fn selected(records: Vec<Fingerprint>, percent: u8) -> Vec<Fingerprint> {
    if percent >= 100 {
        return records;
    }
    records
        .into_iter()
        .filter(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| percent_selects(k, percent))
        })
        .collect()
}

/// Compares every route's mirrored topics matching `options.topics`.
pub async fn verify(config: &Config, options: &Options) -> anyhow::Result<Report> {
    let names = config.cluster_names();
    let table = RoutingTable::build(&config.routing_spec(), &names, 0)?;
    let pattern = Glob::new(&options.topics)
        .context("--topics")?
        .compile_matcher();
    let mode = options.order.unwrap_or(if config.routing.redis.is_some() {
        OrderMode::Fleet
    } else {
        OrderMode::Strict
    });
    let mut report = Report {
        mode,
        topics: options.topics.clone(),
        since: options.since,
        partitions: Vec::new(),
        notes: Vec::new(),
    };
    let mut sides: BTreeMap<String, Side> = BTreeMap::new();
    for name in &names {
        sides.insert(name.clone(), Side::new(config, name)?);
    }
    let side = |name: &str| {
        sides
            .get(name)
            .ok_or_else(|| anyhow!("no cluster {name:?} in the config"))
    };
    for route_index in 0.. {
        let Some(route) = table.route_at(route_index) else {
            break;
        };
        if route.mirror.is_empty() {
            continue;
        }
        let write = side(&names[route.write])?;
        for (topic, partitions) in write.topics().await? {
            if !pattern.is_match(&topic) || !table.route_serves_topic(route_index, &topic) {
                continue;
            }
            let write_topic = route.topic_on(route.write, &topic).to_string();
            if write_topic != topic {
                continue; // listed under its write-cluster name; the client name is what matches
            }
            if route.mirror_percent < 100 {
                report.notes.push(format!(
                    "{topic}: the route mirrors {}% of the keys: only keyed records it selects are compared",
                    route.mirror_percent
                ));
            }
            for &mirror_id in &route.mirror {
                let mirror = side(&names[mirror_id])?;
                let mirror_topic = route.topic_on(mirror_id, &topic).to_string();
                let mirror_partitions = mirror
                    .topics()
                    .await?
                    .get(&mirror_topic)
                    .copied()
                    .unwrap_or(0);
                if !options.quiet {
                    eprintln!(
                        "verifying {topic} ({}) against {mirror_topic} ({})…",
                        write.name, mirror.name
                    );
                }
                // The snapshot of the write cluster, then the mirror up to its end.
                let write_ends = write.high_watermarks(&topic, partitions).await?;
                let write_starts = write
                    .starts(&topic, partitions, options.since, &write_ends)
                    .await?;
                let ranges = |starts: &[i64], ends: &[i64]| -> Vec<(i32, i64, i64)> {
                    starts
                        .iter()
                        .zip(ends)
                        .zip(0..)
                        .map(|((&start, &end), partition)| (partition, start, end))
                        .collect()
                };
                let write_records = write
                    .read(&topic, ranges(&write_starts, &write_ends), options.quiet)
                    .await?;
                let mirror_records = if mirror_partitions > 0 {
                    let ends = mirror
                        .high_watermarks(&mirror_topic, mirror_partitions)
                        .await?;
                    let starts = mirror
                        .starts(&mirror_topic, mirror_partitions, options.since, &ends)
                        .await?;
                    mirror
                        .read(&mirror_topic, ranges(&starts, &ends), options.quiet)
                        .await?
                } else {
                    BTreeMap::new()
                };
                let percent = route.mirror_percent;
                // A time lookup finds a batch: the mirror's batches (merged from several
                // of the client's) can start before `since` where the write cluster's do
                // not, so records are filtered by their own timestamps too.
                let since = options.since.unwrap_or(i64::MIN);
                let group = |records: &BTreeMap<i32, Vec<Fingerprint>>| {
                    records
                        .iter()
                        .map(|(&p, list)| {
                            let recent = list.iter().filter(|r| r.timestamp >= since).cloned();
                            (p, selected(recent.collect(), percent))
                        })
                        .collect::<BTreeMap<i32, Vec<Fingerprint>>>()
                };
                let (write_records, mirror_records) =
                    (group(&write_records), group(&mirror_records));
                let compared = compare_route(
                    route.partitioning,
                    &write_records,
                    &mirror_records,
                    &BTreeMap::new(),
                );
                // Mirror records not in the snapshot may have been written meanwhile.
                let compared = if compared
                    .iter()
                    .any(|(_, c)| !c.extra.is_empty() || !c.changed.is_empty())
                {
                    let now = write.high_watermarks(&topic, partitions).await?;
                    let later = write.read(&topic, ranges(&write_ends, &now), true).await?;
                    compare_route(
                        route.partitioning,
                        &write_records,
                        &mirror_records,
                        &group(&later),
                    )
                } else {
                    compared
                };
                for (partition, comparison) in compared {
                    let count = |records: &BTreeMap<i32, Vec<Fingerprint>>| match partition {
                        Some(p) => records.get(&p).map_or(0, Vec::len),
                        None => records.values().map(Vec::len).sum(),
                    };
                    report.partitions.push(PartitionReport {
                        topic: topic.clone(),
                        mirror_cluster: mirror.name.clone(),
                        mirror_topic: mirror_topic.clone(),
                        partition,
                        write_records: count(&write_records),
                        mirror_records: count(&mirror_records)
                            .saturating_sub(comparison.after_snapshot),
                        missing: comparison.missing,
                        extra: comparison.extra,
                        changed: comparison.changed,
                        order_differs_at: comparison.order_differs_at,
                    });
                }
            }
        }
    }
    Ok(report)
}

/// Per partition (identity) or per key over the topic (murmur2, one entry `None`).
fn compare_route(
    partitioning: Partitioning,
    write: &BTreeMap<i32, Vec<Fingerprint>>,
    mirror: &BTreeMap<i32, Vec<Fingerprint>>,
    later: &BTreeMap<i32, Vec<Fingerprint>>,
) -> Vec<(Option<i32>, Comparison)> {
    match partitioning {
        Partitioning::Identity => {
            let partitions: std::collections::BTreeSet<i32> =
                write.keys().chain(mirror.keys()).copied().collect();
            partitions
                .into_iter()
                .map(|p| {
                    let refs = |records: &BTreeMap<i32, Vec<Fingerprint>>| -> Vec<Fingerprint> {
                        records.get(&p).cloned().unwrap_or_default()
                    };
                    let (w, m, l) = (refs(write), refs(mirror), refs(later));
                    let comparison = compare(
                        &w.iter().collect::<Vec<_>>(),
                        &m.iter().collect::<Vec<_>>(),
                        &l.iter().collect::<Vec<_>>(),
                    );
                    (Some(p), comparison)
                })
                .collect()
        }
        Partitioning::Murmur2 => {
            fn by_key(
                records: &BTreeMap<i32, Vec<Fingerprint>>,
            ) -> BTreeMap<Option<Vec<u8>>, Vec<&Fingerprint>> {
                let mut keys: BTreeMap<Option<Vec<u8>>, Vec<&Fingerprint>> = BTreeMap::new();
                for record in records.values().flatten() {
                    keys.entry(record.key.clone()).or_default().push(record);
                }
                keys
            }
            let (w, m, l) = (by_key(write), by_key(mirror), by_key(later));
            let keys: std::collections::BTreeSet<&Option<Vec<u8>>> =
                w.keys().chain(m.keys()).collect();
            let mut total = Comparison::default();
            for key in keys {
                let none = Vec::new();
                let one = compare(
                    w.get(key).unwrap_or(&none),
                    m.get(key).unwrap_or(&none),
                    l.get(key).unwrap_or(&none),
                );
                total.missing.extend(one.missing);
                total.extra.extend(one.extra);
                total.changed.extend(one.changed);
                total.order_differs_at = total.order_differs_at.or(one.order_differs_at);
                total.after_snapshot += one.after_snapshot;
            }
            vec![(None, total)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &str, content: u64) -> Fingerprint {
        Fingerprint {
            offset,
            timestamp: 0,
            key: Some(key.as_bytes().to_vec()),
            digest: content,
        }
    }

    fn run(write: &[Fingerprint], mirror: &[Fingerprint], later: &[Fingerprint]) -> Comparison {
        compare(
            &write.iter().collect::<Vec<_>>(),
            &mirror.iter().collect::<Vec<_>>(),
            &later.iter().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_same_records_in_the_same_order_compare_equal() {
        let write = [record(0, "a", 1), record(1, "b", 2), record(2, "a", 3)];
        let mirror = [record(5, "a", 1), record(6, "b", 2), record(7, "a", 3)];
        assert_eq!(run(&write, &mirror, &[]), Comparison::default());
    }

    #[test]
    fn another_order_is_told_apart_from_missing_and_extra_records() {
        let write = [record(0, "a", 1), record(1, "b", 2), record(2, "c", 3)];
        let mirror = [record(0, "b", 2), record(1, "a", 1), record(2, "c", 3)];
        let found = run(&write, &mirror, &[]);
        assert_eq!(found.order_differs_at, Some(1));
        assert!(found.missing.is_empty() && found.extra.is_empty() && found.changed.is_empty());
    }

    #[test]
    fn missing_extra_and_changed_records_are_named_by_offset() {
        let write = [record(0, "a", 1), record(1, "b", 2), record(2, "c", 3)];
        // b's record differs; c's is gone; d's was never written.
        let mirror = [record(10, "a", 1), record(11, "b", 9), record(12, "d", 4)];
        let found = run(&write, &mirror, &[]);
        assert_eq!(found.changed, vec![(1, 11)]);
        assert_eq!(found.missing, vec![2]);
        assert_eq!(found.extra, vec![12]);
        assert_eq!(found.order_differs_at, None);
    }

    #[test]
    fn a_mirror_record_written_after_the_snapshot_is_not_extra() {
        let write = [record(0, "a", 1)];
        let mirror = [record(0, "a", 1), record(1, "b", 2)];
        assert_eq!(run(&write, &mirror, &[]).extra, vec![1]);
        assert_eq!(
            run(&write, &mirror, &[record(1, "b", 2)]),
            Comparison {
                after_snapshot: 1,
                ..Comparison::default()
            }
        );
    }

    #[test]
    fn a_duplicate_on_the_mirror_is_extra() {
        let write = [record(0, "a", 1)];
        let mirror = [record(0, "a", 1), record(1, "a", 1)];
        assert_eq!(run(&write, &mirror, &[]).extra, vec![1]);
    }

    #[test]
    fn verdicts_depend_on_the_mode() {
        let report = PartitionReport {
            topic: "t".into(),
            mirror_cluster: "new".into(),
            mirror_topic: "t".into(),
            partition: Some(0),
            write_records: 3,
            mirror_records: 3,
            missing: vec![],
            extra: vec![],
            changed: vec![],
            order_differs_at: Some(4),
        };
        assert!(report.ok(OrderMode::Fleet));
        assert!(!report.ok(OrderMode::Strict));
        assert!(report
            .verdict(OrderMode::Fleet)
            .starts_with("ok; order differs from write offset 4"));
        assert_eq!(
            report.verdict(OrderMode::Strict),
            "MISMATCH: order differs from write offset 4"
        );
        let missing = PartitionReport {
            missing: vec![7, 8, 9, 12],
            order_differs_at: None,
            ..report
        };
        assert_eq!(
            missing.verdict(OrderMode::Fleet),
            "MISMATCH: 4 missing on the mirror (write offsets 7..=9, 12)"
        );
    }
}
