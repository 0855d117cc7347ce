//! `kshift prepare --config FILE --topics GLOB [--to CLUSTER] [--replication-factor N]
//! [--dry-run]`: creates on the mirror clusters the topics the routes will mirror there, so
//! that preparing the new cluster is one command.
//!
//! What is planned, per route with mirrors: each topic on the route's write cluster that the
//! route serves and whose client-visible name matches `--topics`, once per mirror cluster
//! (only `--to` when given), under the route's `rename` for that cluster or its own name.
//! A missing target is created with the write topic's partition count and the topic-level
//! configs of [`COPIED_CONFIGS`] that are set on the write topic. An existing target is
//! compared, never altered: under identity partitioning its partition count must equal the
//! write topic's (records keep their partition), under murmur2 any count works; differing
//! copied configs are warnings.
//!
//! `run` answers `false` (the command exits 1) when an identity route cannot work because
//! partition counts differ, or a create failed. `--dry-run` changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use globset::Glob;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigEntry, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;

use super::client_config;
use kshift::config::Config;
use kshift::routing::{Partitioning, RoutingTable};

/// Topic-level configs copied to a created target (when set on the write topic) and compared
/// on an existing one, each with Kafka's built-in default.
pub const COPIED_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("max.compaction.lag.ms", "9223372036854775807"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
];

/// How long each admin request (metadata, DescribeConfigs, CreateTopics) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to prepare. The field docs are `kshift prepare`'s `--help` text.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Glob of client-visible topic names to prepare.
    #[arg(long)]
    pub topics: String,
    /// Only this mirror cluster (default: every route's mirrors).
    #[arg(long)]
    pub to: Option<String>,
    /// Replication factor of created topics; -1: the broker's default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,
    /// Print what would be created and compare what exists; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where one mirrored topic goes: a topic on a mirror cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The client-visible topic name.
    pub topic: String,
    pub write_cluster: String,
    /// The topic's name on `write_cluster`.
    pub write_topic: String,
    pub write_partitions: i32,
    pub partitioning: Partitioning,
    pub cluster: String,
    /// The topic's name on `cluster`.
    pub name: String,
    /// The copied configs set on the write topic, given to a created target.
    pub configs: BTreeMap<String, String>,
    pub state: State,
}

/// What prepare found or did for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Missing; `--dry-run` left it so.
    WouldCreate,
    Created,
    CreateFailed(String),
    /// Exists with a partition count that works and the same copied configs.
    Matches {
        partitions: i32,
    },
    /// Exists with a partition count that works; these copied configs differ (a warning).
    ConfigsDiffer {
        partitions: i32,
        differences: Vec<String>,
    },
    /// Exists with another partition count than the write topic, under identity
    /// partitioning: mirroring cannot keep each record's partition.
    PartitionsDiffer {
        partitions: i32,
    },
}

impl Target {
    /// Whether mirroring to this target can work as the route says.
    pub fn ok(&self) -> bool {
        !matches!(
            self.state,
            State::CreateFailed(_) | State::PartitionsDiffer { .. }
        )
    }

    /// One line for the operator: `topic -> cluster:name: what`.
    pub fn line(&self) -> String {
        let configs = if self.configs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .configs
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            format!(", {}", list.join(", "))
        };
        let what = match &self.state {
            State::WouldCreate => format!(
                "would create ({}{configs})",
                partition_count(self.write_partitions)
            ),
            State::Created => format!(
                "created ({}{configs})",
                partition_count(self.write_partitions)
            ),
            State::CreateFailed(error) => format!("create failed: {error}"),
            State::Matches { partitions } => {
                format!("exists, matches ({})", partition_count(*partitions))
            }
            State::ConfigsDiffer {
                partitions,
                differences,
            } => format!(
                "exists ({}), configs differ (warning): {}",
                partition_count(*partitions),
                differences.join("; ")
            ),
            State::PartitionsDiffer { partitions } => format!(
                "exists with {}, but {} has {} on {}: identity \
                 partitioning needs the same count (create the topic anew, or route it with \
                 partitioning = \"murmur2\")",
                partition_count(*partitions),
                self.topic,
                self.write_partitions,
                self.write_cluster
            ),
        };
        format!("{} -> {}:{}: {what}", self.topic, self.cluster, self.name)
    }
}

/// Everything prepare planned, found and did.
#[derive(Debug)]
pub struct Report {
    pub targets: Vec<Target>,
    pub dry_run: bool,
}

impl Report {
    /// No target makes a route unworkable.
    pub fn ok(&self) -> bool {
        self.targets.iter().all(Target::ok)
    }

    pub fn print(&self, topics: &str) {
        if self.targets.is_empty() {
            println!("no topic matching {topics:?} is mirrored by a route: nothing to prepare");
            return;
        }
        for target in &self.targets {
            println!("{}", target.line());
        }
        let count = |f: fn(&State) -> bool| self.targets.iter().filter(|t| f(&t.state)).count();
        let created = count(|s| matches!(s, State::Created));
        let would_create = count(|s| matches!(s, State::WouldCreate));
        let matching = count(|s| matches!(s, State::Matches { .. }));
        let differing = count(|s| matches!(s, State::ConfigsDiffer { .. }));
        let failed = count(|s| matches!(s, State::CreateFailed(_)));
        let partitions = count(|s| matches!(s, State::PartitionsDiffer { .. }));
        let mut parts = Vec::new();
        if self.dry_run {
            parts.push(format!("{would_create} would be created"));
        } else {
            parts.push(format!("{created} created"));
        }
        parts.push(format!("{matching} exist and match"));
        if differing > 0 {
            parts.push(format!(
                "{differing} exist with differing configs (warning)"
            ));
        }
        if partitions > 0 {
            parts.push(format!(
                "{partitions} exist with another partition count (identity cannot work)"
            ));
        }
        if failed > 0 {
            parts.push(format!("{failed} failed to be created"));
        }
        let dry_run = if self.dry_run {
            "; dry run: nothing changed"
        } else {
            ""
        };
        println!(
            "{} target topic(s): {}{dry_run}",
            self.targets.len(),
            parts.join(", ")
        );
    }
}

/// Runs prepare and prints its report; `false` when a route cannot work as configured.
pub async fn run(config: &Config, options: &Options) -> anyhow::Result<bool> {
    let report = prepare(config, options).await?;
    report.print(&options.topics);
    Ok(report.ok())
}

/// Plans the targets, compares the existing ones and (unless a dry run) creates the rest.
pub async fn prepare(config: &Config, options: &Options) -> anyhow::Result<Report> {
    let names = config.cluster_names();
    let table = RoutingTable::build(&config.routing_spec(), &names, 0)?;
    let pattern = Glob::new(&options.topics)
        .context("--topics")?
        .compile_matcher();
    if let Some(to) = &options.to {
        let Some(id) = names.iter().position(|name| name == to) else {
            bail!(
                "--to {to:?}: no such cluster in the config (configured: {})",
                names.join(", ")
            );
        };
        let mirrored = (0..)
            .map_while(|index| table.route_at(index))
            .any(|route| route.mirror.contains(&id));
        if !mirrored {
            bail!("--to {to:?}: no route mirrors to cluster {to}");
        }
    }

    let mut admins = Admins::default();
    let mut planned: Vec<Target> = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    // Each write cluster's topic -> partition count, listed once for all its routes.
    let mut write_topics: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
    // DescribeConfigs answers of the write topics, by (cluster, topic).
    let mut write_entries: BTreeMap<(String, String), Vec<ConfigEntry>> = BTreeMap::new();
    for (index, route) in (0..).map_while(|index| table.route_at(index).map(|r| (index, r))) {
        let Some(spec) = table.spec.routes.get(index) else {
            continue;
        };
        let mirrors: Vec<(usize, &String)> = route
            .mirror
            .iter()
            .filter_map(|&id| Some((id, names.get(id)?)))
            .filter(|(_, name)| options.to.as_ref().is_none_or(|to| to == *name))
            .collect();
        let Some(write_cluster) = names.get(route.write) else {
            continue;
        };
        if mirrors.is_empty() {
            continue;
        }
        let write = admins.get(config, write_cluster)?;
        if !write_topics.contains_key(write_cluster) {
            write_topics.insert(write_cluster.clone(), write.topics().await?);
        }
        let listed = write_topics.get(write_cluster).into_iter().flatten();
        for (write_topic, &write_partitions) in listed {
            // Kafka's own topics (__consumer_offsets, __transaction_state) are not mirrored.
            if write_topic.starts_with("__") {
                continue;
            }
            // The client-visible name: a route renaming its write cluster's topic names one
            // topic, its `topics`.
            let topic = match spec.rename.get(write_cluster) {
                None => write_topic.clone(),
                Some(renamed) if renamed == write_topic && !is_glob(&spec.topics) => {
                    spec.topics.clone()
                }
                Some(_) => continue,
            };
            if !pattern.is_match(&topic) || !table.route_serves_topic(index, &topic) {
                continue;
            }
            let key = (write_cluster.clone(), write_topic.clone());
            if !write_entries.contains_key(&key) {
                write_entries.insert(key.clone(), write.configs(write_topic).await?);
            }
            let configs = write_entries
                .get(&key)
                .map(|e| set_on_topic(e))
                .unwrap_or_default();
            for &(mirror_id, mirror) in &mirrors {
                let name = route.topic_on(mirror_id, &topic).to_string();
                if !seen.insert((mirror.clone(), name.clone())) {
                    continue; // an earlier route (for other clients) plans it already
                }
                planned.push(Target {
                    topic: topic.clone(),
                    write_cluster: write_cluster.clone(),
                    write_topic: write_topic.clone(),
                    write_partitions,
                    partitioning: route.partitioning,
                    cluster: mirror.clone(),
                    name,
                    configs: configs.clone(),
                    state: State::WouldCreate,
                });
            }
        }
    }

    // Per mirror cluster: compare what exists, create the rest in one request.
    let clusters: BTreeSet<String> = planned.iter().map(|t| t.cluster.clone()).collect();
    for cluster in clusters {
        let admin = admins.get(config, &cluster)?;
        let existing = admin.topics().await?;
        let mut to_create: Vec<usize> = Vec::new();
        for (position, target) in planned.iter_mut().enumerate() {
            if target.cluster != cluster {
                continue;
            }
            let Some(&partitions) = existing.get(&target.name) else {
                to_create.push(position);
                continue;
            };
            if target.partitioning == Partitioning::Identity
                && partitions != target.write_partitions
            {
                target.state = State::PartitionsDiffer { partitions };
                continue;
            }
            let write = write_entries
                .get(&(target.write_cluster.clone(), target.write_topic.clone()))
                .map_or(&[][..], Vec::as_slice);
            let differences = config_differences(
                write,
                &admin.configs(&target.name).await?,
                &target.write_cluster,
                &cluster,
            );
            target.state = if differences.is_empty() {
                State::Matches { partitions }
            } else {
                State::ConfigsDiffer {
                    partitions,
                    differences,
                }
            };
        }
        if options.dry_run || to_create.is_empty() {
            continue;
        }
        let requested: Vec<&Target> = to_create.iter().filter_map(|&i| planned.get(i)).collect();
        let results = admin.create(&requested, options.replication_factor).await?;
        for position in to_create {
            let Some(target) = planned.get_mut(position) else {
                continue;
            };
            target.state = match results.get(&target.name) {
                Some(Ok(())) => State::Created,
                Some(Err(error)) => State::CreateFailed(error.clone()),
                None => State::CreateFailed(format!("{cluster} did not answer for the topic")),
            };
        }
    }
    Ok(Report {
        targets: planned,
        dry_run: options.dry_run,
    })
}

/// `1 partition`, `3 partitions`.
fn partition_count(count: i32) -> String {
    match count {
        1 => "1 partition".to_string(),
        _ => format!("{count} partitions"),
    }
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// The copied configs set on a topic, from its DescribeConfigs entries: those the broker
/// says were set on the topic (Kafka: source DYNAMIC_TOPIC_CONFIG), and those labelled
/// default whose value is not Kafka's built-in default. The second rule is for Tansu 0.6:
/// it lists only the configs a topic was created with, every one labelled DEFAULT_CONFIG.
/// On Kafka a DEFAULT_CONFIG entry holds the built-in default, so the rule copies nothing
/// more there; broker-level settings (STATIC_BROKER_CONFIG and the like) belong to their
/// cluster and are not copied.
pub fn set_on_topic(entries: &[ConfigEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter_map(|entry| {
            let (_, builtin) = COPIED_CONFIGS
                .iter()
                .find(|(name, _)| *name == entry.name)?;
            let value = entry.value.as_ref()?;
            let set = match entry.source {
                ConfigSource::DynamicTopic => true,
                ConfigSource::Default => value != builtin,
                _ => false,
            };
            set.then(|| (entry.name.clone(), value.clone()))
        })
        .collect()
}

/// The copied configs set on either topic whose values differ, one sentence each. A config a
/// broker does not list (Tansu lists only those set) counts as Kafka's built-in default.
fn config_differences(
    write: &[ConfigEntry],
    target: &[ConfigEntry],
    write_cluster: &str,
    target_cluster: &str,
) -> Vec<String> {
    let (write_set, target_set) = (set_on_topic(write), set_on_topic(target));
    let effective = |entries: &[ConfigEntry], name: &str, builtin: &str| -> String {
        entries
            .iter()
            .find(|entry| entry.name == name)
            .and_then(|entry| entry.value.clone())
            .unwrap_or_else(|| builtin.to_string())
    };
    COPIED_CONFIGS
        .iter()
        .filter(|(name, _)| write_set.contains_key(*name) || target_set.contains_key(*name))
        .filter_map(|(name, builtin)| {
            let (on_write, on_target) = (
                effective(write, name, builtin),
                effective(target, name, builtin),
            );
            (on_write != on_target).then(|| {
                format!("{name} is {on_target} on {target_cluster}, {on_write} on {write_cluster}")
            })
        })
        .collect()
}

/// One admin client per cluster, made when first needed.
#[derive(Default)]
struct Admins {
    by_cluster: BTreeMap<String, Arc<ClusterAdmin>>,
}

impl Admins {
    fn get(&mut self, config: &Config, cluster: &str) -> anyhow::Result<Arc<ClusterAdmin>> {
        if let Some(admin) = self.by_cluster.get(cluster) {
            return Ok(Arc::clone(admin));
        }
        let admin = Arc::new(ClusterAdmin::new(config, cluster)?);
        self.by_cluster
            .insert(cluster.to_string(), Arc::clone(&admin));
        Ok(admin)
    }
}

/// One cluster's admin client, as prepare uses it.
struct ClusterAdmin {
    name: String,
    /// Shared with the blocking thread a metadata request runs on.
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl ClusterAdmin {
    fn new(config: &Config, cluster: &str) -> anyhow::Result<ClusterAdmin> {
        let admin = client_config(config, cluster)?
            .create()
            .with_context(|| format!("admin client for {cluster}"))?;
        Ok(ClusterAdmin {
            name: cluster.to_string(),
            admin: Arc::new(admin),
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// Topic name -> partition count.
    async fn topics(&self) -> anyhow::Result<BTreeMap<String, i32>> {
        let admin = Arc::clone(&self.admin);
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, REQUEST_TIMEOUT)
        })
        .await?
        .with_context(|| format!("metadata from {}", self.name))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none())
            .filter_map(|topic| {
                let partitions = i32::try_from(topic.partitions().len()).ok()?;
                Some((topic.name().to_string(), partitions))
            })
            .collect())
    }

    /// The topic's config entries as DescribeConfigs answers them.
    async fn configs(&self, topic: &str) -> anyhow::Result<Vec<ConfigEntry>> {
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &Self::options())
            .await
            .with_context(|| format!("DescribeConfigs of {topic} on {}", self.name))?;
        let mut entries = Vec::new();
        for result in results {
            let resource = result
                .map_err(|code| anyhow!("DescribeConfigs of {topic} on {}: {code:?}", self.name))?;
            entries.extend(resource.entries);
        }
        Ok(entries)
    }

    /// Creates `targets` (one request); topic name -> success or the error.
    async fn create(
        &self,
        targets: &[&Target],
        replication_factor: i32,
    ) -> anyhow::Result<BTreeMap<String, Result<(), String>>> {
        let new_topics: Vec<NewTopic<'_>> = targets
            .iter()
            .map(|target| {
                target.configs.iter().fold(
                    NewTopic::new(
                        &target.name,
                        target.write_partitions,
                        TopicReplication::Fixed(replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(&new_topics, &Self::options())
            .await
            .with_context(|| format!("CreateTopics on {}", self.name))?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                Ok(name) => (name, Ok(())),
                Err((name, code)) => (name, Err(format!("{code}"))),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: false,
        }
    }

    #[test]
    fn only_copied_configs_set_on_the_topic_are_copied() {
        let entries = [
            // Kafka: set on the topic, even to the built-in default.
            entry("retention.ms", "604800000", ConfigSource::DynamicTopic),
            // A broker's own setting belongs to its cluster.
            entry("min.insync.replicas", "2", ConfigSource::StaticBroker),
            // Kafka's built-in default.
            entry("cleanup.policy", "delete", ConfigSource::Default),
            // Tansu: set on the topic but labelled default.
            entry("max.message.bytes", "2000000", ConfigSource::Default),
            // Not on the list.
            entry(
                "unclean.leader.election.enable",
                "true",
                ConfigSource::DynamicTopic,
            ),
        ];
        let copied: Vec<(String, String)> = set_on_topic(&entries).into_iter().collect();
        assert_eq!(
            copied,
            vec![
                ("max.message.bytes".to_string(), "2000000".to_string()),
                ("retention.ms".to_string(), "604800000".to_string()),
            ]
        );
    }

    #[test]
    fn differences_are_named_with_both_values_and_an_unlisted_config_is_the_default() {
        let write = [
            entry("retention.ms", "1000", ConfigSource::DynamicTopic),
            entry("cleanup.policy", "compact", ConfigSource::DynamicTopic),
        ];
        // The target lists only what it was created with (as Tansu does).
        let target = [
            entry("retention.ms", "1000", ConfigSource::Default),
            entry("segment.bytes", "1000000", ConfigSource::Default),
        ];
        assert_eq!(
            config_differences(&write, &target, "old", "new"),
            vec![
                "cleanup.policy is delete on new, compact on old".to_string(),
                "segment.bytes is 1000000 on new, 1073741824 on old".to_string(),
            ]
        );
        assert!(config_differences(&write, &write, "old", "new").is_empty());
    }
}
