//! What the status page shows as a migration's console: per route its phase, the write and
//! mirror rates and the mirror lag over the last minutes (sampled once a second), the
//! consumer groups on it with their committed positions on each of its clusters, and the
//! last verify result. The page itself is rendered in `admin`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::metrics::MirrorLabels;
use crate::routing::{RouteSpec, RoutingSpec};
use crate::sync::lock;

/// Samples kept per route: five minutes at one a second.
const SAMPLES: usize = 300;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Rates are averaged over this many of the latest samples.
const RATE_WINDOW: usize = 5;
/// Committed positions are read this often, and each read waits at most this long.
const GROUPS_EVERY: Duration = Duration::from_secs(5);
const GROUPS_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters fed by the produce path and the history the sampler keeps.
#[derive(Debug)]
pub struct Console {
    /// Each route's write cluster when kshift started, by `topics` glob: the phase of a
    /// route is told against it.
    origin: BTreeMap<String, String>,
    history: Mutex<BTreeMap<usize, VecDeque<Sample>>>,
    groups: Mutex<Vec<GroupPositions>>,
    verify: Mutex<Option<VerifyResult>>,
    /// Samples taken so far.
    samples_taken: AtomicU64,
    /// Consoles rendered so far: each rendering carries its number, so a page's refresh can
    /// be told from what it first showed.
    renders: AtomicU64,
}

/// One route's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    written: u64,
    mirrored: u64,
    lag_records: u64,
}

/// Committed positions on one cluster: (topic on that cluster, partition, offset), or why
/// they are unknown.
pub type Positions = Result<Vec<(String, i32, i64)>, String>;

/// A group's committed positions on each cluster of a route it consumes.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPositions {
    pub group: String,
    pub route: usize,
    /// Per cluster name.
    pub clusters: Vec<(String, Positions)>,
}

/// What the last `kshift verify` found, as it reported it (`POST /verify`, or the demo).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyResult {
    pub topics: String,
    pub ok: bool,
    /// `strict` or `fleet`.
    pub mode: String,
    /// One line: what was compared and what differed.
    pub summary: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub at_ms: i64,
}

/// A route's live figures, as the page and `/status` show them.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConsole {
    pub route: usize,
    pub topics: String,
    pub phase: String,
    /// Records per second over the last few seconds; `None` for routes without a mirror
    /// (their writes are passed through uncounted).
    pub write_rate: Option<f64>,
    pub mirror_rate: Option<f64>,
    pub lag_records: u64,
    /// Mirror lag, oldest first, one value a second.
    pub lag_history: Vec<u64>,
}

impl Console {
    pub fn new(initial: &RoutingSpec) -> Console {
        Console {
            origin: initial
                .routes
                .iter()
                .map(|route| (route.topics.clone(), route.write.clone()))
                .collect(),
            history: Mutex::default(),
            groups: Mutex::default(),
            verify: Mutex::default(),
            samples_taken: AtomicU64::new(0),
            renders: AtomicU64::new(0),
        }
    }

    pub fn set_verify(&self, result: VerifyResult) {
        *lock(&self.verify) = Some(result);
    }

    pub fn verify(&self) -> Option<VerifyResult> {
        lock(&self.verify).clone()
    }

    pub fn groups(&self) -> Vec<GroupPositions> {
        lock(&self.groups).clone()
    }

    /// The number of the next rendering, from 1.
    pub fn next_render(&self) -> u64 {
        self.renders.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn samples_taken(&self) -> u64 {
        self.samples_taken.load(Ordering::Relaxed)
    }

    /// Each route of `spec` with its phase, rates and lag history.
    pub fn routes(&self, spec: &RoutingSpec) -> Vec<RouteConsole> {
        let history = lock(&self.history);
        spec.routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let samples = history.get(&index);
                let mirrored = !route.mirror.is_empty();
                let rate = |value: fn(&Sample) -> u64| {
                    let samples = samples?;
                    let last = samples.back()?;
                    let first = samples.iter().rev().nth(RATE_WINDOW).or(samples.front())?;
                    let seconds = last.at.duration_since(first.at).as_secs_f64();
                    (mirrored && seconds > 0.0)
                        .then(|| value(last).saturating_sub(value(first)) as f64 / seconds)
                };
                RouteConsole {
                    route: index,
                    topics: route.topics.clone(),
                    phase: phase(route, self.origin.get(&route.topics).map(String::as_str)),
                    write_rate: rate(|s| s.written),
                    mirror_rate: rate(|s| s.mirrored),
                    lag_records: samples.and_then(|s| s.back()).map_or(0, |s| s.lag_records),
                    lag_history: samples
                        .map(|s| s.iter().map(|s| s.lag_records).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    fn sample(&self, state: &Control) {
        let table = state.routing.load();
        let lag = mirror_lag_by_route(state);
        let now = Instant::now();
        let mut history = lock(&self.history);
        for index in 0..table.spec.routes.len() {
            let mirrored: u64 = state
                .clusters
                .iter()
                .map(|cluster| {
                    state
                        .metrics
                        .mirror_records
                        .get_or_create(&MirrorLabels {
                            cluster: cluster.name.to_string(),
                            route: index.to_string(),
                            outcome: "mirrored".into(),
                        })
                        .get()
                })
                .sum();
            let samples = history.entry(index).or_default();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at: now,
                written: state.route_writes.of(index),
                mirrored,
                lag_records: lag.get(&index).copied().unwrap_or(0),
            });
        }
        history.retain(|index, _| *index < table.spec.routes.len());
        self.samples_taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the committed positions of the groups kshift has seen, on every cluster of
    /// each route their topics are on.
    async fn read_groups(&self, state: &Control) {
        let table = state.routing.load();
        let mut found = Vec::new();
        for group in state.group_moves.seen_groups() {
            let topics = state.group_moves.seen_topics(&group);
            for index in 0..table.spec.routes.len() {
                let on_route: Vec<&String> = topics
                    .iter()
                    .filter(|topic| table.route_serves_topic(index, topic))
                    .collect();
                let Some(route) = table.route_at(index) else {
                    continue;
                };
                if on_route.is_empty() {
                    continue;
                }
                let mut clusters = vec![route.write, route.read];
                clusters.extend(&route.mirror);
                clusters.sort_unstable();
                clusters.dedup();
                let mut positions = Vec::new();
                for id in clusters {
                    let cluster = &state.clusters[id];
                    let names: Vec<&str> = on_route
                        .iter()
                        .map(|topic| route.topic_on(id, topic))
                        .collect();
                    let read = tokio::time::timeout(
                        GROUPS_TIMEOUT,
                        crate::control::cutover::committed(state, cluster, &group),
                    )
                    .await;
                    let result = match read {
                        Ok(Ok(committed)) => Ok(committed
                            .into_iter()
                            .filter(|c| names.contains(&c.topic.as_str()))
                            .map(|c| (c.topic, c.partition, c.offset))
                            .collect()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err("no answer in time".to_string()),
                    };
                    positions.push((cluster.name.to_string(), result));
                }
                found.push(GroupPositions {
                    group: group.clone(),
                    route: index,
                    clusters: positions,
                });
            }
        }
        *lock(&self.groups) = found;
    }
}

/// Records waiting to be mirrored per route position, over all mirror clusters.
pub fn mirror_lag_by_route(state: &Control) -> BTreeMap<usize, u64> {
    let mut lag = BTreeMap::new();
    for cluster in &state.clusters {
        if let Some(stats) = state.mirrors.stats_of(cluster.id) {
            for (route, records) in stats.lag_by_route() {
                *lag.entry(route).or_default() += records;
            }
        }
    }
    lag
}

/// Where a route is in a migration, told against its write cluster when kshift started.
pub fn phase(route: &RouteSpec, origin: Option<&str>) -> String {
    let origin = origin.unwrap_or(&route.write);
    let read = route.read.as_deref().unwrap_or(&route.write);
    if route.write != origin {
        if route.mirror.iter().any(|m| m == origin) {
            format!(
                "write cut over (to {}, mirror to {origin} kept)",
                route.write
            )
        } else {
            format!("write cut over (to {})", route.write)
        }
    } else if route.mirror.is_empty() {
        if read == route.write {
            "direct (no mirror)".to_string()
        } else {
            format!("read from {read}, no mirror")
        }
    } else if read != route.write {
        format!("read cut over (to {read})")
    } else if route.mirror_percent < 100 {
        format!("ramp {}%", route.mirror_percent)
    } else {
        "shadow (100%)".to_string()
    }
}

/// Samples once a second and reads group positions every few seconds, until `shutdown`.
pub async fn run(state: std::sync::Arc<Control>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut groups_read = Instant::now() - GROUPS_EVERY;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        state.console.sample(&state);
        if groups_read.elapsed() >= GROUPS_EVERY {
            groups_read = Instant::now();
            state.console.read_groups(&state).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(write: &str, mirror: &[&str], percent: u8, read: Option<&str>) -> RouteSpec {
        let mut text = format!(
            "topics = \"*\"\nwrite = \"{write}\"\nmirror = [{}]\nmirror_percent = {percent}\n",
            mirror
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some(read) = read {
            text.push_str(&format!("read = \"{read}\"\n"));
        }
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn phases_follow_the_runbook() {
        let old = Some("old");
        assert_eq!(
            phase(&route("old", &[], 100, None), old),
            "direct (no mirror)"
        );
        assert_eq!(phase(&route("old", &["new"], 10, None), old), "ramp 10%");
        assert_eq!(
            phase(&route("old", &["new"], 100, None), old),
            "shadow (100%)"
        );
        assert_eq!(
            phase(&route("old", &["new"], 100, Some("new")), old),
            "read cut over (to new)"
        );
        assert_eq!(
            phase(&route("new", &["old"], 100, Some("new")), old),
            "write cut over (to new, mirror to old kept)"
        );
        assert_eq!(
            phase(&route("new", &[], 100, None), old),
            "write cut over (to new)"
        );
    }
}
