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
//!
//! Ranges are appended by the [`super::journal`]'s thread (what a crash may lose: see that
//! module). A gap is open from the moment its range is queued; a re-read does not close it
//! before the last range queued for it is in the file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::journal::{self, Journal, JournalName, LineNumber};
use crate::sync::lock;

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

const JOURNAL_NAME: JournalName = JournalName {
    what: "the mirror failure file",
    if_lost: "kshift repair will not know these ranges",
};

#[derive(Debug, Default)]
pub struct FailureJournal {
    /// `None` without a journal file.
    journal: Option<Journal>,
    /// Partitions with pending ranges.
    gaps: Mutex<HashMap<GapKey, Gap>>,
}

#[derive(Debug, Clone, Copy)]
struct Gap {
    /// When the file was last read for this gap (or the gap opened).
    checked: Instant,
    /// The journal line of the last range recorded for this gap (0 for ranges read at start):
    /// until it is written, the file cannot tell whether the gap is repaired.
    last_line: LineNumber,
}

impl FailureJournal {
    /// Opens (or creates) the journal; ranges still pending from an earlier run are gaps.
    pub fn open(path: &Path) -> std::io::Result<FailureJournal> {
        let now = Instant::now();
        let gaps = pending(path)?
            .into_iter()
            .map(|range| {
                let gap = Gap {
                    checked: now,
                    last_line: LineNumber::default(),
                };
                (gap_key(&range), gap)
            })
            .collect();
        Ok(FailureJournal {
            journal: Some(Journal::open(path, JOURNAL_NAME)?),
            gaps: Mutex::new(gaps),
        })
    }

    /// Queues `range` for the journal (a no-op without a journal file; the log line is still
    /// written by the caller) and opens a gap for its partition.
    pub fn record(&self, range: &FailedRange) {
        let Some(journal) = &self.journal else { return };
        let last_line = match journal.append(range) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "cannot append to the mirror failure file");
                return;
            }
        };
        let gap = Gap {
            checked: Instant::now(),
            last_line,
        };
        if lock(&self.gaps).insert(gap_key(range), gap).is_none() {
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
        let Some(journal) = &self.journal else {
            return false;
        };
        let key = (mirror_cluster.to_string(), topic.to_string(), partition);
        let read_through = match lock(&self.gaps).get(&key) {
            None => return false,
            Some(gap) if gap.checked.elapsed() < GAP_RECHECK => return true,
            // Its last range is still on its way to the file, so it is not repaired.
            Some(gap) if !journal.has_written(gap.last_line) => return true,
            Some(gap) => gap.last_line,
        };
        // Read outside the lock; a range recorded meanwhile has a later line.
        let still_pending = match pending(journal.path()) {
            Ok(ranges) => ranges.iter().any(|range| gap_key(range) == key),
            Err(error) => {
                tracing::error!(%error, "cannot read the mirror failure file");
                true
            }
        };
        let mut gaps = lock(&self.gaps);
        let recorded_meanwhile = gaps
            .get(&key)
            .is_some_and(|gap| gap.last_line > read_through);
        if still_pending || recorded_meanwhile {
            let gap = gaps.entry(key).or_insert(Gap {
                checked: Instant::now(),
                last_line: read_through,
            });
            gap.checked = Instant::now();
            true
        } else {
            gaps.remove(&key);
            tracing::info!(
                mirror_cluster,
                topic,
                partition,
                "mirror gap repaired: mirroring this partition again"
            );
            false
        }
    }

    /// Waits until every range recorded so far is in the file.
    #[cfg(test)]
    fn flush(&self) {
        if let Some(journal) = &self.journal {
            journal.flush();
        }
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

/// The ranges in the journal at `path` not yet repaired, in journal order.
pub fn pending(path: &Path) -> std::io::Result<Vec<FailedRange>> {
    let repaired: std::collections::HashSet<String> = journal::read_lines(&repaired_path(path))?
        .into_iter()
        .collect();
    Ok(journal::replay::<FailedRange>(path)?
        .entries
        .into_iter()
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

    /// Makes every gap due for a re-read of the file.
    fn recheck_now(journal: &FailureJournal) {
        for gap in lock(&journal.gaps).values_mut() {
            gap.checked = Instant::now().checked_sub(GAP_RECHECK).unwrap();
        }
    }

    #[test]
    fn a_gap_is_not_closed_by_a_file_that_does_not_hold_its_range_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.jsonl");
        let journal = FailureJournal::open(&path).unwrap();
        // Hold the journal's thread (as a slow disk would) with a compaction to the empty
        // state this journal is in anyway.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        journal
            .journal
            .as_ref()
            .unwrap()
            .compact(std::iter::once(()).filter_map(move |()| {
                let _ = hold.recv();
                None::<FailedRange>
            }));
        journal.record(&range(0));
        recheck_now(&journal);
        assert!(
            journal.has_gap("new", "orders", 2),
            "the range is queued, not in the file: the gap stays open"
        );
        release.send(()).unwrap();
        journal.flush();
        recheck_now(&journal);
        assert!(
            journal.has_gap("new", "orders", 2),
            "now read from the file"
        );
        mark_repaired(&path, &range(0)).unwrap();
        recheck_now(&journal);
        assert!(!journal.has_gap("new", "orders", 2), "repaired");
    }
}
