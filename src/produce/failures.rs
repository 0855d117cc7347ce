//! The mirror failure journal (`[proxy] mirror_failures_file`): one JSON line per batch that
//! reached the write cluster but not a mirror — failed after its retries, or dropped by a
//! full queue — with its write-offset range. `kshift repair` replays these ranges.
//!
//! Invariant: a range is journalled only once its write offsets are known (the write
//! cluster acknowledged it); ranges already repaired are listed in `FILE.repaired` and
//! skipped by later repairs, so repair can be run again safely.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

#[derive(Debug, Default)]
pub struct FailureJournal {
    file: Option<Mutex<std::fs::File>>,
}

impl FailureJournal {
    pub fn open(path: &Path) -> std::io::Result<FailureJournal> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FailureJournal {
            file: Some(Mutex::new(file)),
        })
    }

    /// Appends `range` (a no-op without a journal file; the log line is still written by
    /// the caller).
    pub fn record(&self, range: &FailedRange) {
        let Some(file) = &self.file else { return };
        if let Ok(mut line) = serde_json::to_string(range) {
            line.push('\n');
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = file.write_all(line.as_bytes()) {
                tracing::error!(%error, "cannot append to the mirror failure file");
            }
        }
    }
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
}
