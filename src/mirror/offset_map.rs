//! The offset map: for each mirrored batch, where it landed on the mirror relative to
//! where it landed on the write cluster. Consumer cutover translates committed offsets
//! with it.
//!
//! Invariants:
//! - Only identity-partitioned batches mirrored whole (`mirror_percent = 100`) are recorded:
//!   nothing else maps offset for offset.
//! - Entries of one (topic, write partition, mirror cluster) are kept sorted by write
//!   offset (batches of producers on different connections can reach the mirror in another
//!   order, see the mirror's ordering invariant), contiguous ones merged into one segment;
//!   lookups binary-search them. At most [`MAX_SEGMENTS`] segments are kept per partition,
//!   the oldest dropped first: a position older than what is kept is refused at cutover
//!   (before the first mapped record), never translated wrongly.
//! - With a journal file (`[proxy] offset_map_file`), every entry is queued as one JSON
//!   line on the [`super::journal`]'s thread before it is visible, and the file is read back
//!   at start, so a restarted kshift translates as before (what a crash may lose: see that
//!   module). Mirror clusters are journalled by name, not id. The journal is rewritten as
//!   its segments at start and whenever it holds [`COMPACT_AFTER_LINES`] lines more than
//!   segments, so it stays proportional to the map, not to the traffic; that rewrite runs
//!   on the journal's thread, not on the mirror producer's task that records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::journal::{self, Journal, JournalName};
use crate::routing::ClusterId;
use crate::sync::lock;

pub mod fleet;

/// One mirrored batch: `record_count` records at `write_base_offset` on the write cluster
/// are at `mirror_base_offset` of `mirror_partition` on `mirror_cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMapping {
    pub topic: Arc<str>,
    pub write_partition: i32,
    pub write_base_offset: i64,
    pub mirror_cluster: ClusterId,
    pub mirror_partition: i32,
    pub mirror_base_offset: i64,
    pub record_count: i64,
}

type Key = (Arc<str>, i32, ClusterId);

/// Segments kept per (topic, write partition, mirror cluster).
pub const MAX_SEGMENTS: usize = 10_000;
/// Journal lines appended beyond the map's segments before the journal is rewritten.
pub const COMPACT_AFTER_LINES: usize = 100_000;

#[derive(Debug, Default)]
pub struct OffsetMap {
    entries: Mutex<HashMap<Key, Vec<OffsetMapping>>>,
    journal: Option<Journalled>,
    /// The fleet's shared copy, with `[routing] redis`.
    fleet: Option<Arc<fleet::FleetOffsets>>,
}

#[derive(Debug)]
struct Journalled {
    journal: Journal,
    /// Held while an entry's line is queued and the entry put in the map, and while a
    /// compaction is queued with a copy of the map: so the compaction holds every entry
    /// whose line was queued before it, and later lines are queued after it.
    lines: Mutex<LineCount>,
    /// Cluster names by id, as the journal names them.
    clusters: Arc<[String]>,
}

const JOURNAL_NAME: JournalName = JournalName {
    what: "the offset map file",
    if_lost: "cutover translation will miss these batches",
};

#[derive(Debug)]
struct LineCount {
    /// Lines in the file (once the queue is written), and when to next compare them with
    /// the map's segments.
    lines: usize,
    next_check: usize,
    /// Lines beyond the segments that trigger a rewrite ([`COMPACT_AFTER_LINES`]).
    compact_after: usize,
}

impl LineCount {
    fn new(lines: usize, compact_after: usize) -> LineCount {
        LineCount {
            lines,
            next_check: lines + compact_after,
            compact_after,
        }
    }
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    topic: String,
    write_partition: i32,
    write_base_offset: i64,
    mirror_cluster: String,
    mirror_partition: i32,
    mirror_base_offset: i64,
    record_count: i64,
}

impl JournalEntry {
    fn of(mapping: &OffsetMapping, clusters: &[String]) -> JournalEntry {
        JournalEntry {
            topic: mapping.topic.to_string(),
            write_partition: mapping.write_partition,
            write_base_offset: mapping.write_base_offset,
            mirror_cluster: clusters
                .get(mapping.mirror_cluster)
                .cloned()
                .unwrap_or_default(),
            mirror_partition: mapping.mirror_partition,
            mirror_base_offset: mapping.mirror_base_offset,
            record_count: mapping.record_count,
        }
    }
}

impl OffsetMap {
    /// An offset map journalled to `path` (created if missing), loaded with what the
    /// file already holds. Lines naming clusters not configured any more are skipped.
    pub fn open(path: &Path, clusters: &[String]) -> std::io::Result<OffsetMap> {
        let mut entries: HashMap<Key, Vec<OffsetMapping>> = HashMap::new();
        let mut loaded = 0usize;
        let replay = journal::replay::<JournalEntry>(path)?;
        for (line, error) in &replay.unreadable {
            // A torn last line after a crash: keep what came before it.
            tracing::warn!(path = %path.display(), line, %error, "skipping unreadable offset map line");
        }
        for entry in replay.entries {
            let Some(mirror_cluster) = clusters.iter().position(|c| *c == entry.mirror_cluster)
            else {
                continue;
            };
            let mapping = OffsetMapping {
                topic: entry.topic.into(),
                write_partition: entry.write_partition,
                write_base_offset: entry.write_base_offset,
                mirror_cluster,
                mirror_partition: entry.mirror_partition,
                mirror_base_offset: entry.mirror_base_offset,
                record_count: entry.record_count,
            };
            let key = (
                mapping.topic.clone(),
                mapping.write_partition,
                mirror_cluster,
            );
            entries.entry(key).or_default().push(mapping);
            loaded += 1;
        }
        let mut segments = 0usize;
        for list in entries.values_mut() {
            list.sort_by_key(|m| m.write_base_offset);
            *list = coalesce(std::mem::take(list));
            segments += list.len();
        }
        tracing::info!(path = %path.display(), entries = loaded, segments, "offset map loaded");
        let mut lines = loaded;
        if segments * 2 < loaded {
            // Mostly contiguous batches: rewrite the journal as its segments.
            journal::rewrite(
                path,
                entries
                    .values()
                    .flatten()
                    .map(|mapping| JournalEntry::of(mapping, clusters)),
            )?;
            lines = segments;
        }
        Ok(OffsetMap {
            entries: Mutex::new(entries),
            journal: Some(Journalled {
                journal: Journal::open(path, JOURNAL_NAME)?,
                lines: Mutex::new(LineCount::new(lines, COMPACT_AFTER_LINES)),
                clusters: clusters.into(),
            }),
            fleet: None,
        })
    }

    /// Shares every entry through Redis too, and reads the fleet's before translating.
    /// The fleet's shared map, when `[routing] redis` is set.
    pub fn fleet(&self) -> Option<Arc<fleet::FleetOffsets>> {
        self.fleet.clone()
    }

    pub fn with_fleet(mut self, fleet: Arc<fleet::FleetOffsets>) -> OffsetMap {
        self.fleet = Some(fleet);
        self
    }

    /// Merges what the fleet recorded for `topic`/`write_partition` toward `mirror_cluster`
    /// (no-op without Redis).
    pub async fn refresh(
        &self,
        topic: &str,
        write_partition: i32,
        mirror_cluster: ClusterId,
    ) -> Result<(), String> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let shared = fleet.load(topic, write_partition, mirror_cluster).await?;
        let mut entries = self.lock();
        let list = entries
            .entry((Arc::from(topic), write_partition, mirror_cluster))
            .or_default();
        if !shared.is_empty() {
            list.extend(shared);
            list.sort_by_key(|m| m.write_base_offset);
            *list = coalesce(std::mem::take(list));
        }
        Ok(())
    }

    pub fn record(&self, mapping: OffsetMapping) {
        if let Some(fleet) = &self.fleet {
            fleet.push(&mapping);
        }
        let key = (
            mapping.topic.clone(),
            mapping.write_partition,
            mapping.mirror_cluster,
        );
        let Some(journalled) = &self.journal else {
            insert(self.lock().entry(key).or_default(), mapping);
            return;
        };
        let mut count = lock(&journalled.lines);
        match journalled
            .journal
            .append(&JournalEntry::of(&mapping, &journalled.clusters))
        {
            Ok(_) => count.lines += 1,
            Err(error) => {
                tracing::error!(%error, "cannot append to the offset map file; cutover translation will miss this batch");
            }
        }
        let check = count.lines >= count.next_check;
        let segments = {
            let mut entries = self.lock();
            insert(entries.entry(key).or_default(), mapping);
            check.then(|| entries.values().map(Vec::len).sum::<usize>())
        };
        let Some(segments) = segments else { return };
        if count.lines > segments + count.compact_after {
            // A copy of the map, taken here (under `lines`); its lines are made and written
            // on the journal's thread.
            let snapshot = self.lock().clone();
            let clusters = journalled.clusters.clone();
            journalled.journal.compact(
                snapshot
                    .into_values()
                    .flatten()
                    .map(move |mapping| JournalEntry::of(&mapping, &clusters)),
            );
            tracing::debug!(
                lines = count.lines,
                segments,
                "offset map journal compaction queued"
            );
            *count = LineCount::new(segments, count.compact_after);
            return;
        }
        count.next_check = count.lines + count.compact_after / 10;
    }

    #[cfg(test)]
    fn compact_after(&self, lines: usize) {
        if let Some(journalled) = &self.journal {
            let mut count = lock(&journalled.lines);
            *count = LineCount::new(count.lines, lines);
        }
    }

    /// Every mapping of `topic`/`write_partition` toward `mirror_cluster`, in order.
    pub fn mappings(
        &self,
        topic: &str,
        write_partition: i32,
        mirror_cluster: ClusterId,
    ) -> Vec<OffsetMapping> {
        self.lock()
            .get(&(Arc::from(topic), write_partition, mirror_cluster))
            .cloned()
            .unwrap_or_default()
    }

    /// The mirror position of write offset `offset`: `(mirror partition, mirror offset)`,
    /// for identity-partitioned batches. `None` when no mirrored batch covers it.
    pub fn translate(
        &self,
        topic: &str,
        write_partition: i32,
        mirror_cluster: ClusterId,
        offset: i64,
    ) -> Option<(i32, i64)> {
        let entries = self.lock();
        let list = entries.get(&(Arc::from(topic), write_partition, mirror_cluster))?;
        let index = list
            .partition_point(|m| m.write_base_offset <= offset)
            .checked_sub(1)?;
        let mapping = list.get(index)?;
        let delta = offset - mapping.write_base_offset;
        (delta < mapping.record_count)
            .then_some((mapping.mirror_partition, mapping.mirror_base_offset + delta))
    }

    /// The write offset after the last batch mirrored from `topic`/`write_partition` to
    /// `mirror_cluster`, if any was.
    pub fn end(&self, topic: &str, write_partition: i32, mirror_cluster: ClusterId) -> Option<i64> {
        self.lock()
            .get(&(Arc::from(topic), write_partition, mirror_cluster))?
            .last()
            .map(|m| m.write_base_offset + m.record_count)
    }

    /// Where a consumer positioned at `offset` (the next record it will read) of
    /// `topic`/`partition` on `from` continues on `to`, by the batches mirrored between the
    /// two (either direction: `from` wrote and `to` mirrored, or the reverse).
    pub fn position(
        &self,
        topic: &str,
        partition: i32,
        from: ClusterId,
        to: ClusterId,
        offset: i64,
    ) -> Position {
        let entries = self.lock();
        let key = |mirror| (Arc::from(topic), partition, mirror);
        // (from offset, to offset, count) per mirrored batch, in `from` offset order.
        let segments: Vec<(i64, i64, i64)> = match entries.get(&key(to)) {
            Some(list) => list
                .iter()
                .filter(|m| m.mirror_partition == partition)
                .map(|m| (m.write_base_offset, m.mirror_base_offset, m.record_count))
                .collect(),
            None => {
                let mut reverse: Vec<(i64, i64, i64)> = entries
                    .get(&key(from))
                    .into_iter()
                    .flatten()
                    .filter(|m| m.mirror_partition == partition)
                    .map(|m| (m.mirror_base_offset, m.write_base_offset, m.record_count))
                    .collect();
                reverse.sort_unstable();
                reverse
            }
        };
        position_in(&segments, offset)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<OffsetMapping>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Appends `mapping`, extending the last segment when it continues it on both sides (the
/// steady state of one partition mirrored in order): the map then holds a handful of
/// segments per partition instead of one entry per batch, and translates the same.
/// Puts `mapping` in its place in `list` (sorted by write offset), merged with contiguous
/// neighbours, keeping at most [`MAX_SEGMENTS`] (the newest).
fn insert(list: &mut Vec<OffsetMapping>, mapping: OffsetMapping) {
    let at = list.partition_point(|m| m.write_base_offset <= mapping.write_base_offset);
    if at == list.len() {
        push_coalesced(list, mapping);
    } else {
        // Arrived after a batch written later: merge with what it continues and what
        // continues it, if contiguous on both sides.
        list.insert(at, mapping);
        let from = at.saturating_sub(1);
        let to = (at + 2).min(list.len());
        let merged = coalesce(list.drain(from..to).collect());
        list.splice(from..from, merged);
    }
    if list.len() > MAX_SEGMENTS {
        // Dropped in chunks, so the shift is paid once per tenth of the cap.
        list.drain(..list.len() - MAX_SEGMENTS * 9 / 10);
    }
}

fn push_coalesced(list: &mut Vec<OffsetMapping>, mapping: OffsetMapping) {
    if let Some(last) = list.last_mut() {
        if last.mirror_partition == mapping.mirror_partition
            && last.write_base_offset + last.record_count == mapping.write_base_offset
            && last.mirror_base_offset + last.record_count == mapping.mirror_base_offset
        {
            last.record_count += mapping.record_count;
            return;
        }
    }
    list.push(mapping);
}

/// Segments of `list` (sorted by write offset): contiguous entries merged, entries inside
/// an earlier segment (the same batch known twice: locally and from the fleet) dropped.
fn coalesce(list: Vec<OffsetMapping>) -> Vec<OffsetMapping> {
    let mut merged: Vec<OffsetMapping> = Vec::with_capacity(list.len());
    for mapping in list {
        let covered = merged.last().is_some_and(|last| {
            mapping.write_base_offset + mapping.record_count
                <= last.write_base_offset + last.record_count
        });
        if !covered {
            push_coalesced(&mut merged, mapping);
        }
    }
    merged
}

/// Where a consumer position lands on the other cluster; see [`OffsetMap::position`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The record at the position was mirrored: it is at this offset there. Also when the
    /// position falls between two mirrored batches (records that were never meant for the
    /// mirror, such as transaction markers): the next mirrored record's offset.
    Mapped(i64),
    /// At or past the end of everything mirrored: continues after the last mirrored batch,
    /// `end` (exclusive) on this side and `to_end` there. Right only if nothing after `end`
    /// is still to be mirrored.
    AfterLast { end: i64, to_end: i64 },
    /// Before the first mirrored record (`first`): what precedes it exists only here.
    BeforeFirst { first: i64 },
    /// Nothing of this partition was mirrored (or recorded).
    Unmapped,
}

fn position_in(segments: &[(i64, i64, i64)], offset: i64) -> Position {
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Position::Unmapped;
    };
    if offset < first.0 {
        return Position::BeforeFirst { first: first.0 };
    }
    // The first batch that ends after `offset`: it holds the position or comes next.
    let index = segments.partition_point(|(base, _, count)| base + count <= offset);
    match segments.get(index) {
        Some((base, to_base, _)) if offset >= *base => Position::Mapped(to_base + (offset - base)),
        Some((_, to_base, _)) => Position::Mapped(*to_base),
        None => Position::AfterLast {
            end: last.0 + last.2,
            to_end: last.1 + last.2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapping(write: i64, mirror: i64, count: i64) -> OffsetMapping {
        OffsetMapping {
            topic: "orders".into(),
            write_partition: 0,
            write_base_offset: write,
            mirror_cluster: 1,
            mirror_partition: 0,
            mirror_base_offset: mirror,
            record_count: count,
        }
    }

    #[test]
    fn batches_recorded_out_of_write_order_are_kept_sorted_and_merged() {
        let map = OffsetMap::default();
        // Two producers: the batch written at 10 reaches the mirror after the one at 20.
        map.record(mapping(0, 100, 10));
        map.record(mapping(20, 110, 10));
        map.record(mapping(10, 120, 10));
        map.record(mapping(30, 130, 10));
        let list = map.mappings("orders", 0, 1);
        let writes: Vec<i64> = list.iter().map(|m| m.write_base_offset).collect();
        assert_eq!(writes, [0, 10, 20, 30], "{list:?}");
        assert_eq!(map.translate("orders", 0, 1, 15), Some((0, 125)));
        assert_eq!(map.translate("orders", 0, 1, 25), Some((0, 115)));
        assert_eq!(map.translate("orders", 0, 1, 35), Some((0, 135)));
        // A batch filling the gap between two segments joins them when contiguous.
        let map = OffsetMap::default();
        map.record(mapping(0, 100, 10));
        map.record(mapping(20, 120, 10));
        map.record(mapping(10, 110, 10));
        assert_eq!(map.mappings("orders", 0, 1), vec![mapping(0, 100, 30)]);
    }

    #[test]
    fn segments_per_partition_are_capped_oldest_first() {
        let map = OffsetMap::default();
        // Every batch its own segment (a gap of one offset between them).
        for i in 0..(MAX_SEGMENTS as i64 + 1) {
            map.record(mapping(i * 3, i * 2, 2));
        }
        let list = map.mappings("orders", 0, 1);
        assert!(list.len() <= MAX_SEGMENTS, "{}", list.len());
        assert_eq!(
            list.last().unwrap().write_base_offset,
            MAX_SEGMENTS as i64 * 3
        );
        assert_eq!(
            map.translate("orders", 0, 1, 0),
            None,
            "the oldest were dropped"
        );
    }

    #[test]
    fn the_journal_is_compacted_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.jsonl");
        let clusters = vec!["old".to_string(), "new".to_string()];
        let map = OffsetMap::open(&path, &clusters).unwrap();
        map.compact_after(100);
        for i in 0..1000 {
            map.record(mapping(i * 10, 5 + i * 10, 10));
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 250, "{lines} lines for one segment");
        // What it holds still loads as the same map.
        drop(map);
        let reopened = OffsetMap::open(&path, &clusters).unwrap();
        assert_eq!(
            reopened.mappings("orders", 0, 1),
            vec![mapping(0, 5, 10_000)]
        );
    }

    #[test]
    fn translates_inside_batches_and_not_in_gaps() {
        let map = OffsetMap::default();
        map.record(mapping(100, 0, 10));
        map.record(mapping(112, 10, 5)); // 110..111 were not mirrored (e.g. a txn marker)
        assert_eq!(map.translate("orders", 0, 1, 100), Some((0, 0)));
        assert_eq!(map.translate("orders", 0, 1, 109), Some((0, 9)));
        assert_eq!(map.translate("orders", 0, 1, 110), None);
        assert_eq!(map.translate("orders", 0, 1, 114), Some((0, 12)));
        assert_eq!(map.translate("orders", 0, 1, 99), None);
        assert_eq!(map.translate("orders", 0, 1, 117), None);
        assert_eq!(map.translate("orders", 1, 1, 100), None);
        assert_eq!(map.mappings("orders", 0, 1).len(), 2);
    }

    #[test]
    fn positions_translate_both_ways() {
        let map = OffsetMap::default();
        // Mirroring started at write offset 100; 110..111 (a marker) was not mirrored.
        map.record(mapping(100, 0, 10));
        map.record(mapping(112, 10, 5));
        let forward = |offset| map.position("orders", 0, 0, 1, offset);
        assert_eq!(forward(99), Position::BeforeFirst { first: 100 });
        assert_eq!(forward(100), Position::Mapped(0));
        assert_eq!(forward(105), Position::Mapped(5));
        assert_eq!(forward(110), Position::Mapped(10));
        assert_eq!(forward(111), Position::Mapped(10));
        assert_eq!(forward(116), Position::Mapped(14));
        assert_eq!(
            forward(117),
            Position::AfterLast {
                end: 117,
                to_end: 15
            }
        );
        assert_eq!(
            forward(130),
            Position::AfterLast {
                end: 117,
                to_end: 15
            }
        );
        // From the mirror back to the write cluster (a rollback of a read switch).
        let back = |offset| map.position("orders", 0, 1, 0, offset);
        assert_eq!(back(0), Position::Mapped(100));
        assert_eq!(back(10), Position::Mapped(112));
        assert_eq!(
            back(15),
            Position::AfterLast {
                end: 15,
                to_end: 117
            }
        );
        assert_eq!(map.position("orders", 1, 0, 1, 5), Position::Unmapped);
    }

    #[test]
    fn contiguous_batches_become_one_segment_and_translate_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.jsonl");
        let clusters = vec!["new".to_string(), "old".to_string()];
        let map = OffsetMap::open(&path, &clusters).unwrap();
        for batch in 0..100 {
            map.record(mapping(1000 + batch * 10, batch * 10, 10));
        }
        map.record(mapping(2001, 1000, 5)); // after a marker at 2000: a new segment
        assert_eq!(map.mappings("orders", 0, 1).len(), 2);
        assert_eq!(map.position("orders", 0, 0, 1, 1555), Position::Mapped(555));
        assert_eq!(
            map.position("orders", 0, 0, 1, 2000),
            Position::Mapped(1000)
        );
        assert_eq!(
            map.position("orders", 0, 0, 1, 2003),
            Position::Mapped(1002)
        );
        drop(map);
        // The journal (101 lines) is rewritten as its 2 segments at the next start.
        let reopened = OffsetMap::open(&path, &clusters).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(
            reopened.position("orders", 0, 0, 1, 1555),
            Position::Mapped(555)
        );
        assert_eq!(reopened.mappings("orders", 0, 1).len(), 2);
    }

    #[test]
    fn journal_survives_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.jsonl");
        let clusters = vec!["new".to_string(), "old".to_string()];
        {
            let map = OffsetMap::open(&path, &clusters).unwrap();
            map.record(mapping(100, 0, 10));
            map.record(mapping(112, 10, 5));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"topic\": \"orders\", \"write_par")
            .unwrap();
        let reopened = OffsetMap::open(&path, &clusters).unwrap();
        assert_eq!(reopened.translate("orders", 0, 1, 114), Some((0, 12)));
        assert_eq!(reopened.mappings("orders", 0, 1).len(), 2);
        // Entries recorded after the torn line are read back too.
        reopened.record(mapping(117, 15, 3));
        drop(reopened);
        let again = OffsetMap::open(&path, &clusters).unwrap();
        assert_eq!(again.translate("orders", 0, 1, 119), Some((0, 17)));
        // Clusters are journalled by name: a different cluster list maps by name.
        let renumbered = OffsetMap::open(&path, &["old".to_string()]).unwrap();
        assert_eq!(renumbered.translate("orders", 0, 0, 114), Some((0, 12)));
    }
}
