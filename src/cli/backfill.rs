//! `kshift backfill --admin URL --topics GLOB`: asks the running kshift to copy to each
//! mirror what exists only on the write cluster (history from before mirroring started,
//! batches that failed to mirror), then shows its progress until every partition is done.
//!
//! The copy runs inside kshift, in the mirror writer of each mirror cluster, so history and
//! live batches reach the mirror in one ordered stream per partition (see
//! `src/produce/mirror/backfill.rs`); this command only starts and watches it.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::admin_client::{get, refused, request};
use super::progress::Progress;

/// `kshift backfill`'s flags.
#[derive(clap::Args)]
pub struct BackfillArgs {
    /// The admin API of the kshift that mirrors these topics.
    #[arg(long, default_value = "http://127.0.0.1:9644")]
    admin: String,
    /// Glob of topic names.
    #[arg(long)]
    topics: String,
    /// Copy pace in MB/s (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    rate_mb_per_sec: f64,
    /// Seconds to watch the progress before returning (the copy goes on in kshift).
    #[arg(long, default_value_t = 3600)]
    wait_secs: u64,
}

/// Asks kshift to copy the topics and shows the progress for at most `--wait-secs`.
pub async fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let admin = args.admin.as_str();
    let topics = args.topics.as_str();
    let bytes_per_sec = (args.rate_mb_per_sec.max(0.0) * 1_000_000.0) as u64;
    let wait = Duration::from_secs(args.wait_secs);
    let body = json!({ "topics": topics, "bytes_per_sec": bytes_per_sec }).to_string();
    let (status, answer) = request(admin, "POST", "/backfill", &body).await?;
    if status != 200 {
        return Err(refused(status, &answer));
    }
    let answer: Value = serde_json::from_str(&answer)?;
    let queued: Vec<(String, i64, String)> = answer["queued"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            (
                q["topic"].as_str().unwrap_or_default().to_string(),
                q["partition"].as_i64().unwrap_or(-1),
                q["mirror"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    println!("backfilling {} partition copies", queued.len());
    let deadline = Instant::now() + wait;
    let mut bar: Option<Progress> = None;
    loop {
        let answer: Value = serde_json::from_str(&get(admin, "/backfill").await?)?;
        let states: Vec<&Value> = answer["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                queued.iter().any(|(topic, partition, mirror)| {
                    p["topic"] == topic.as_str()
                        && p["partition"] == *partition
                        && p["mirror"] == mirror.as_str()
                })
            })
            .collect();
        let done = states.iter().filter(|p| p["done"] == true).count();
        let remaining: i64 = states
            .iter()
            .map(|p| {
                (p["target"].as_i64().unwrap_or(0) - p["copied_until"].as_i64().unwrap_or(0)).max(0)
            })
            .sum();
        let progress =
            bar.get_or_insert_with(|| Progress::new("backfill", remaining.max(0) as u64));
        let copied = progress.total().saturating_sub(remaining.max(0) as u64);
        if done == states.len() {
            progress.finish(copied);
            for p in &states {
                println!(
                    "  {}[{}] -> {}: copied up to offset {}",
                    p["topic"].as_str().unwrap_or("?"),
                    p["partition"],
                    p["mirror"].as_str().unwrap_or("?"),
                    p["copied_until"]
                );
            }
            return Ok(());
        }
        progress.update(copied);
        if Instant::now() >= deadline {
            eprintln!();
            for p in states.iter().filter(|p| p["done"] != true) {
                eprintln!(
                    "  {}[{}] -> {}: copied up to offset {} of {}",
                    p["topic"].as_str().unwrap_or("?"),
                    p["partition"],
                    p["mirror"].as_str().unwrap_or("?"),
                    p["copied_until"],
                    p["target"]
                );
            }
            bail!("backfill not finished after {wait:?} ({remaining} offsets to go); it continues inside kshift");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
