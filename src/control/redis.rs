//! Redis as the fleet-wide routing source (`[routing] redis = "redis://…"`).
//!
//! The table lives in the key `K` (JSON `{"routes": …, "groups": …}`) with its version in
//! `K:version`; a change is announced by publishing the version on channel `K`. Every
//! instance subscribes, and on each announcement (and on every (re)connect) reads the key
//! and applies it if its version is newer than the table in force.
//!
//! Invariants:
//! - A table is validated locally before it is written to Redis, so Redis never holds a
//!   table an instance would reject.
//! - Versions come from one Lua script (increment, never below the publisher's own
//!   version, write, publish) so concurrent writers get distinct, increasing versions,
//!   even after Redis restarted empty.
//! - Redis being down never changes the table in force: updates are refused (the admin API
//!   answers 503) and `/ready` reports it until the subscription is back, which re-reads
//!   the key (or re-seeds an empty Redis with the table in force).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;

use crate::control::cutover::{self, Policy, Switched};
use crate::control::Control;
use crate::routing::{RoutingSpec, UpdateError};

/// Pause before reconnecting to Redis.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// Bound on any single Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

const PUBLISH_SCRIPT: &str = r#"
if ARGV[3] == "seed" and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local version = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[2])
if version <= floor then
  version = floor + 1
  redis.call('SET', KEYS[2], version)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[1], version)
return version
"#;

#[derive(Debug, thiserror::Error)]
pub enum RedisSourceError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Update(#[from] UpdateError),
}

/// The Redis side of routing for one instance.
pub struct RedisSource {
    client: redis::Client,
    key: String,
    /// True while the pub/sub subscription is up (shown by `/ready` and metrics).
    connected: AtomicBool,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> RedisSourceError {
    RedisSourceError::Unavailable(error.to_string())
}

async fn bounded<T, E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, RedisSourceError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(error)),
        Err(_) => Err(unavailable("no answer within 2 s")),
    }
}

impl RedisSource {
    pub fn new(url: &str, key: &str) -> Result<RedisSource, redis::RedisError> {
        Ok(RedisSource {
            client: redis::Client::open(url)?,
            key: key.to_string(),
            connected: AtomicBool::new(false),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn version_key(&self) -> String {
        format!("{}:version", self.key)
    }

    /// Validates `spec`, writes it to Redis under a new version, announces it, and applies
    /// it here at once (the other instances apply it from the announcement).
    pub async fn publish(
        &self,
        state: &Control,
        spec: &RoutingSpec,
        source: &str,
        policy: Policy,
    ) -> Result<Switched, RedisSourceError> {
        // Validated, and consumer groups moved, before anything reaches Redis.
        cutover::switch(state, spec, policy, async {
            let floor = state.routing.load().version;
            let version = self.run_script(spec, floor, false).await?;
            Ok(state.routing.apply(spec, source, Some(version as u64))?)
        })
        .await
    }

    async fn run_script(
        &self,
        spec: &RoutingSpec,
        floor: u64,
        seed: bool,
    ) -> Result<i64, RedisSourceError> {
        let document = serde_json::to_string(spec).map_err(unavailable)?;
        let mut connection = bounded(self.client.get_multiplexed_async_connection()).await?;
        let script = redis::Script::new(PUBLISH_SCRIPT);
        bounded(
            script
                .key(&self.key)
                .key(self.version_key())
                .arg(document)
                .arg(floor)
                .arg(if seed { "seed" } else { "publish" })
                .invoke_async::<i64>(&mut connection),
        )
        .await
    }

    /// Reads the table in Redis and applies it if it is newer than the one in force. An
    /// empty Redis (first start, or restarted without persistence) is seeded with the
    /// table in force.
    async fn sync(&self, state: &Control) -> Result<(), RedisSourceError> {
        let mut connection = bounded(self.client.get_multiplexed_async_connection()).await?;
        let (document, version): (Option<String>, Option<u64>) =
            bounded(connection.mget(&[self.key.clone(), self.version_key()])).await?;
        let current = state.routing.load();
        let (Some(document), Some(version)) = (document, version) else {
            let seeded = self
                .run_script(&current.spec, current.version.saturating_sub(1), true)
                .await?;
            if seeded >= 0 {
                tracing::info!(
                    version = seeded,
                    "seeded Redis with the routing table in force"
                );
            }
            return Ok(());
        };
        if version <= current.version {
            return Ok(());
        }
        let spec: RoutingSpec = match serde_json::from_str(&document) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "routing table in Redis is not valid JSON; ignored");
                state.metrics.routing_update("rejected", "redis");
                return Ok(());
            }
        };
        // The fleet has this table already: follow it even where this instance could not
        // move its groups (the publishing instance moved their offsets).
        let result = cutover::switch(state, &spec, Policy::Force, async {
            state.routing.apply(&spec, "redis", Some(version))
        })
        .await
        .map(|switched| switched.applied);
        match result {
            Ok(_) => state.metrics.routing_update("applied", "redis"),
            Err(_) => state.metrics.routing_update("rejected", "redis"),
        }
        Ok(())
    }

    /// Keeps this instance subscribed and in sync until the task is aborted (at shutdown).
    pub async fn follow_forever(self: Arc<Self>, state: Arc<Control>) {
        loop {
            if let Err(error) = self.follow(&state).await {
                if self.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "lost Redis; keeping the routing table in force and reconnecting");
                }
            }
            self.connected.store(false, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }

    async fn follow(&self, state: &Control) -> Result<(), RedisSourceError> {
        let mut pubsub = bounded(self.client.get_async_pubsub()).await?;
        bounded(pubsub.subscribe(&self.key)).await?;
        // Subscribed before reading, so no announcement falls in between.
        self.sync(state).await?;
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(key = %self.key, "following the routing table in Redis");
        }
        let mut announcements = pubsub.on_message();
        while announcements.next().await.is_some() {
            self.sync(state).await?;
        }
        Err(unavailable("subscription closed"))
    }
}
