//! Splitting a request by the broker that must serve each of its partitions: Produce,
//! Fetch and ListOffsets each group their partitions into one sub-request per
//! (cluster, broker), remembering each topic's client-visible name to map answers back.

use kafka_protocol::protocol::StrBytes;

use crate::routing::ClusterId;

/// Where one partition of a request goes: a broker of a cluster, under the topic's name
/// there.
pub struct Target {
    pub cluster: ClusterId,
    pub node: i32,
    pub backend_topic: StrBytes,
}

/// The topic's name on its cluster, `on_cluster`, sharing the client's bytes when it is the
/// same name (the usual case: no allocation per request).
pub fn backend_name(client_topic: &StrBytes, on_cluster: &str) -> StrBytes {
    if client_topic.as_str() == on_cluster {
        client_topic.clone()
    } else {
        StrBytes::from_string(on_cluster.to_string())
    }
}

/// Partitions of one request grouped by (cluster, broker), with the name mapping.
pub struct Split<P> {
    pub parts: Vec<SplitPart<P>>,
    /// Partitions kshift answers itself: (client topic, partition, error code).
    pub errors: Vec<(StrBytes, i32, i16)>,
}

pub struct SplitPart<P> {
    pub cluster: ClusterId,
    pub node: i32,
    /// (name on the cluster, client-visible name, partitions).
    pub topics: Vec<(StrBytes, StrBytes, Vec<P>)>,
}

impl<P> SplitPart<P> {
    /// The client-visible name of the topic this part calls `backend_topic`.
    pub fn client_topic(&self, backend_topic: &str) -> Option<&StrBytes> {
        self.topics
            .iter()
            .find(|(name, _, _)| name.as_str() == backend_topic)
            .map(|(_, client, _)| client)
    }
}

impl<P> Default for Split<P> {
    fn default() -> Self {
        Split {
            parts: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl<P> Split<P> {
    pub fn add(&mut self, target: Target, client_topic: &StrBytes, partition: P) {
        let part = match self
            .parts
            .iter()
            .position(|p| p.cluster == target.cluster && p.node == target.node)
        {
            Some(i) => &mut self.parts[i],
            None => {
                self.parts.push(SplitPart {
                    cluster: target.cluster,
                    node: target.node,
                    topics: Vec::new(),
                });
                let last = self.parts.len() - 1;
                &mut self.parts[last]
            }
        };
        match part
            .topics
            .iter_mut()
            .find(|(name, _, _)| *name == target.backend_topic)
        {
            Some((_, _, partitions)) => partitions.push(partition),
            None => part
                .topics
                .push((target.backend_topic, client_topic.clone(), vec![partition])),
        }
    }
}
