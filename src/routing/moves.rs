//! Consumer groups as a read cutover sees them: which groups this instance's clients use
//! (and with which topics), which are being moved right now (their coordinator requests
//! wait until the move is done), and the lock that lets one switch run at a time.
//! Shared by the data path (which records and waits) and the cutover (which fences).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// Longest a coordinator request waits on a group being moved.
const FENCE_LIMIT: Duration = Duration::from_secs(30);

/// Switch state shared by every connection.
#[derive(Debug)]
pub struct GroupMoves {
    /// One switch at a time.
    pub serial: tokio::sync::Mutex<()>,
    /// Groups being moved right now.
    fenced: tokio::sync::watch::Sender<HashSet<String>>,
    /// Groups this instance's clients have used: a switch considers them besides those the
    /// clusters list (some brokers, Tansu among them, list none).
    /// With the topics they committed or asked offsets for (for brokers that cannot list a
    /// group's offsets without being told the topics).
    seen: Mutex<HashMap<String, BTreeSet<String>>>,
}

/// At most this many groups are remembered as seen.
const SEEN_GROUPS_LIMIT: usize = 100_000;

impl Default for GroupMoves {
    fn default() -> GroupMoves {
        GroupMoves {
            serial: tokio::sync::Mutex::default(),
            fenced: tokio::sync::watch::Sender::new(HashSet::new()),
            seen: Mutex::default(),
        }
    }
}

impl GroupMoves {
    /// Remembers that a client used `group` (with `topics`, for offset requests).
    pub fn saw_group<'t>(&self, group: &str, topics: impl IntoIterator<Item = &'t str>) {
        let mut seen = lock(&self.seen);
        if group.is_empty() || (seen.len() >= SEEN_GROUPS_LIMIT && !seen.contains_key(group)) {
            return;
        }
        let known = match seen.get_mut(group) {
            Some(known) => known,
            None => seen.entry(group.to_string()).or_default(),
        };
        for topic in topics {
            if !known.contains(topic) {
                known.insert(topic.to_string());
            }
        }
    }

    /// Every group this instance's clients have used.
    pub fn seen_groups(&self) -> Vec<String> {
        lock(&self.seen).keys().cloned().collect()
    }

    pub fn seen_topics(&self, group: &str) -> BTreeSet<String> {
        lock(&self.seen).get(group).cloned().unwrap_or_default()
    }

    /// Waits while `group` is being moved. True if it waited: the routing table may have
    /// changed meanwhile.
    pub async fn wait_if_moving(&self, group: &str) -> bool {
        if !self.fenced.borrow().contains(group) {
            return false;
        }
        let mut fenced = self.fenced.subscribe();
        let released = fenced.wait_for(|groups| !groups.contains(group));
        if tokio::time::timeout(FENCE_LIMIT, released).await.is_err() {
            tracing::warn!(
                group,
                "group still being moved after {FENCE_LIMIT:?}; serving it"
            );
        }
        true
    }
}

/// Releases fenced groups when dropped (also when a switch fails or is cancelled).
pub struct Fence<'a> {
    moves: &'a GroupMoves,
    groups: Vec<String>,
}

impl<'a> Fence<'a> {
    pub fn new(moves: &'a GroupMoves, groups: Vec<String>) -> Fence<'a> {
        moves
            .fenced
            .send_modify(|fenced| fenced.extend(groups.iter().cloned()));
        Fence { moves, groups }
    }
}

impl Drop for Fence<'_> {
    fn drop(&mut self) {
        self.moves.fenced.send_modify(|fenced| {
            for group in &self.groups {
                fenced.remove(group);
            }
        });
    }
}
