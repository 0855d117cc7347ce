//! The mirror failure journal (`[proxy] mirror_failures_file`): one JSON line per batch that
//! reached the write cluster but not a mirror — failed after its retries, or dropped by a
//! full queue — with its write-offset range. `kshift repair` replays these ranges.
//!
//! Invariant: a range is journalled only once its write offsets are known (the write
//! cluster acknowledged it); ranges already repaired are listed in `FILE.repaired` and
//! skipped by later repairs, so repair can be run again safely.
//!
//! Gaps: while a (mirror, topic, partition) has a pending range, it has a *gap*, and the
//! mirror writer and producer journal that partition's later `async` batches too instead of
//! sending them (`MirrorWriter::process`, `MirrorProducer::add`). So the mirror holds a prefix
//! of the write cluster's log and `kshift repair` appends the rest in write order; sending
//! later batches past the gap would leave the repaired ones out of order (and offset
//! translation wrong). The journal re-reads the file at most once per [`GAP_RECHECK`] per gap
//! to notice a repair. (Writer and producer run apart, so a partition's ranges can reach the
//! file out of write order; repair sorts them.)

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One batch missing from a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRange {
    /// Client-visible topic name.
    pub topic: String,
    pub write_partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub mirror_cluster: String,
    pub reason: String,
    /// How the batch was to be mirrored, as the route said when it failed (so a repair
    /// does not depend on the routing table in force later). Absent in older journals.
    #[serde(default)]
    pub mirror: Option<MirrorTarget>,
}

/// Where and how a batch is mirrored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorTarget {
    pub mirror_topic: String,
    pub partitioning: crate::routing::Partitioning,
    pub mirror_percent: u8,
}

impl FailedRange {
    /// Identifies the range in the `.repaired` list.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}..={}->{}",
            self.topic,
            self.write_partition,
            self.first_offset,
            self.last_offset,
            self.mirror_cluster
        )
    }
}

/// How often a gap's partition re-reads the journal to learn whether repair closed it.
pub const GAP_RECHECK: Duration = Duration::from_secs(1);

/// (mirror cluster, client-visible topic, write partition).
type GapKey = (String, String, i32);

#[derive(Debug, Default)]
pub struct FailureJournal {
    file: Option<Mutex<std::fs::File>>,
    /// The journal's path, re-read to see repairs; `None` without a journal.
    path: Option<PathBuf>,
    /// Partitions with pending ranges, and when each was last checked against the file.
    gaps: Mutex<HashMap<GapKey, Instant>>,
}

impl FailureJournal {
    /// Opens (or creates) the journal; ranges still pending from an earlier run are gaps.
    pub fn open(path: &Path) -> std::io::Result<FailureJournal> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let now = Instant::now();
        let gaps = pending(path)?
            .into_iter()
            .map(|range| (gap_key(&range), now))
            .collect();
        Ok(FailureJournal {
            file: Some(Mutex::new(file)),
            path: Some(path.to_path_buf()),
            gaps: Mutex::new(gaps),
        })
    }

    /// Appends `range` (a no-op without a journal file; the log line is still written by
    /// the caller) and opens a gap for its partition.
    pub fn record(&self, range: &FailedRange) {
        let Some(file) = &self.file else { return };
        if let Ok(mut line) = serde_json::to_string(range) {
            line.push('\n');
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = file.write_all(line.as_bytes()) {
                tracing::error!(%error, "cannot append to the mirror failure file");
                return;
            }
        }
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        if gaps.insert(gap_key(range), Instant::now()).is_none() {
            tracing::warn!(
                mirror_cluster = %range.mirror_cluster,
                topic = %range.topic,
                partition = range.write_partition,
                "mirror gap opened: later async batches of this partition are journalled, not \
                 mirrored, until `kshift repair` copies the gap (keeps the mirror in write order)"
            );
        }
    }

    /// Whether `topic`'s `partition` has unrepaired ranges for `mirror_cluster`. Always
    /// false without a journal file (nothing could ever close the gap).
    pub fn has_gap(&self, mirror_cluster: &str, topic: &str, partition: i32) -> bool {
        let Some(path) = &self.path else { return false };
        let key = (mirror_cluster.to_string(), topic.to_string(), partition);
        {
            let gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
            match gaps.get(&key) {
                None => return false,
                Some(checked) if checked.elapsed() < GAP_RECHECK => return true,
                Some(_) => {}
            }
        }
        // Read outside the lock; a range journalled meanwhile is in the file already.
        let still_pending = match pending(path) {
            Ok(ranges) => ranges.iter().any(|range| gap_key(range) == key),
            Err(error) => {
                tracing::error!(%error, "cannot read the mirror failure file");
                true
            }
        };
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        if still_pending {
            gaps.insert(key, Instant::now());
        } else {
            gaps.remove(&key);
            tracing::info!(
                mirror_cluster,
                topic,
                partition,
                "mirror gap repaired: mirroring this partition again"
            );
        }
        still_pending
    }
}

fn gap_key(range: &FailedRange) -> GapKey {
    (
        range.mirror_cluster.clone(),
        range.topic.clone(),
        range.write_partition,
    )
}

fn repaired_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".repaired");
    PathBuf::from(name)
}

fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    std::io::BufReader::new(std::fs::File::open(path)?)
        .lines()
        .collect()
}

/// The ranges in the journal at `path` not yet repaired, in journal order.
pub fn pending(path: &Path) -> std::io::Result<Vec<FailedRange>> {
    let repaired: std::collections::HashSet<String> =
        read_lines(&repaired_path(path))?.into_iter().collect();
    Ok(read_lines(path)?
        .iter()
        .filter_map(|line| serde_json::from_str::<FailedRange>(line).ok())
        .filter(|range| !repaired.contains(&range.key()))
        .collect())
}

/// Records `range` as repaired.
pub fn mark_repaired(path: &Path, range: &FailedRange) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(repaired_path(path))?;
    writeln!(file, "{}", range.key())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: i64) -> FailedRange {
        FailedRange {
            topic: "orders".into(),
            write_partition: 2,
            first_offset: first,
            last_offset: first + 4,
            mirror_cluster: "new".into(),
            reason: "test".into(),
            mirror: None,
        }
    }

    #[test]
    fn repaired_ranges_are_not_pending_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.jsonl");
        let journal = FailureJournal::open(&path).unwrap();
        journal.record(&range(0));
        journal.record(&range(5));
        assert_eq!(pending(&path).unwrap(), vec![range(0), range(5)]);
        mark_repaired(&path, &range(0)).unwrap();
        assert_eq!(pending(&path).unwrap(), vec![range(5)]);
        FailureJournal::default().record(&range(9));
        assert_eq!(pending(&path).unwrap().len(), 1);
    }

    #[test]
    fn a_gap_stays_open_until_every_range_of_its_partition_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.jsonl");
        let journal = FailureJournal::open(&path).unwrap();
        assert!(!journal.has_gap("new", "orders", 2));
        journal.record(&range(0));
        journal.record(&range(5));
        assert!(journal.has_gap("new", "orders", 2));
        assert!(
            !journal.has_gap("new", "orders", 3),
            "other partitions flow"
        );
        assert!(!journal.has_gap("other", "orders", 2), "other mirrors flow");
        mark_repaired(&path, &range(0)).unwrap();
        std::thread::sleep(GAP_RECHECK);
        assert!(journal.has_gap("new", "orders", 2), "range 5 still pending");
        // A restarted kshift finds the gap in the file.
        assert!(FailureJournal::open(&path)
            .unwrap()
            .has_gap("new", "orders", 2));
        mark_repaired(&path, &range(5)).unwrap();
        std::thread::sleep(GAP_RECHECK);
        assert!(!journal.has_gap("new", "orders", 2));
        assert!(!FailureJournal::default().has_gap("new", "orders", 2));
    }
}
