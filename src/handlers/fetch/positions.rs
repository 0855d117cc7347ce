//! Which cluster a client connection's read positions belong to, across a read cutover.
//!
//! Until a member has rejoined its group after a read switch, its fetches still carry
//! positions on the old cluster. [`ReadPositions`] (one per client connection) remembers
//! which cluster each partition's position belongs to and holds such fetches (empty
//! answers) instead of reading the new cluster at an offset that means something else there.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::routing::ClusterId;
use crate::sync::lock;

/// Longest a fetch at a position of the previous read cluster is held. A member notices the
/// move at its next heartbeat (3 s by default) and rejoins; past this, the position is taken
/// to belong to the new read cluster.
const STALE_POSITION_HOLD: Duration = Duration::from_secs(30);

/// Which cluster each partition's position belongs to, for one client connection: a
/// consumer's position survives a read switch until the consumer rejoins its group.
#[derive(Debug, Default)]
pub struct ReadPositions {
    topics: Mutex<HashMap<Arc<str>, HashMap<i32, ReadPosition>>>,
}

#[derive(Debug)]
struct ReadPosition {
    /// The cluster whose offsets this connection's position means.
    cluster: ClusterId,
    /// Offset of the last fetch, and the offset after the last record served.
    fetched: i64,
    next: i64,
    /// When a fetch at this position was first held after a read switch.
    held_since: Option<Instant>,
}

/// What to do with one partition of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDecision {
    Serve,
    /// The position belongs to the previous read cluster: answer with no records.
    Hold,
}

impl ReadPositions {
    /// Decides on a fetch of `topic`/`partition` at `offset` to be served by `cluster`.
    pub fn check(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        cluster: ClusterId,
    ) -> ReadDecision {
        let mut topics = lock(&self.topics);
        let partitions = match topics.get_mut(topic) {
            Some(partitions) => partitions,
            None => topics.entry(Arc::from(topic)).or_default(),
        };
        let position = partitions.entry(partition).or_insert(ReadPosition {
            cluster,
            fetched: offset,
            next: offset,
            held_since: None,
        });
        if position.cluster != cluster
            && (offset == position.fetched || offset == position.next)
            && position
                .held_since
                .is_none_or(|since| since.elapsed() < STALE_POSITION_HOLD)
        {
            position.held_since.get_or_insert_with(Instant::now);
            return ReadDecision::Hold;
        }
        // Same cluster, or a position the consumer was given since (it rejoined).
        let next = if position.cluster == cluster {
            position.next.max(offset)
        } else {
            offset
        };
        *position = ReadPosition {
            cluster,
            fetched: offset,
            next,
            held_since: None,
        };
        ReadDecision::Serve
    }

    /// Records that a fetch served records up to (excluding) `next`.
    pub fn served(&self, topic: &str, partition: i32, cluster: ClusterId, next: i64) {
        if let Some(position) = lock(&self.topics)
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
        {
            if position.cluster == cluster {
                position.next = position.next.max(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_of_the_previous_cluster_is_held_until_the_consumer_moves() {
        let positions = ReadPositions::default();
        assert_eq!(positions.check("t", 0, 100, 0), ReadDecision::Serve);
        positions.served("t", 0, 0, 120);
        assert_eq!(positions.check("t", 0, 120, 0), ReadDecision::Serve);
        // Read switch to cluster 1: the same positions are old-cluster positions.
        assert_eq!(positions.check("t", 0, 120, 1), ReadDecision::Hold);
        assert_eq!(positions.check("t", 0, 120, 1), ReadDecision::Hold);
        // The consumer rejoined and fetches its translated position.
        assert_eq!(positions.check("t", 0, 20, 1), ReadDecision::Serve);
        positions.served("t", 0, 1, 25);
        assert_eq!(positions.check("t", 0, 25, 1), ReadDecision::Serve);
        // Another partition is unaffected.
        assert_eq!(positions.check("t", 1, 120, 1), ReadDecision::Serve);
    }
}
