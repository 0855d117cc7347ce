//! `kshift cutover --admin URL --topics GLOB --to CLUSTER` (and `--rollback`): the read
//! cutover as one command. It checks what can be checked before the switch — the target
//! cluster receives every record of these topics, the mirror has no lag, and (with
//! `--config`) `verify` finds both clusters equal — then moves the route's reads and the
//! groups' coordinator in one routing change, which kshift carries out (translating each
//! group's committed offsets; see `src/cutover.rs`), and prints what moved.
//!
//! `--dry-run` makes every check and asks kshift to plan the change (`PUT /routes?dry_run`),
//! printing each group and position it would move; nothing changes. The switch is one
//! routing change, all or nothing: a cutover interrupted before it (while waiting for the
//! mirror, verifying) changed nothing, and one interrupted after it finds the routes already
//! reading from the target; either way running it again finishes it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use super::admin_client::{get, refused, request, routing_table};
use kshift::config::Config;
use kshift::routing::diff;

/// `kshift cutover`'s flags: a switch ([`Cutover`]) or `--rollback`.
#[derive(clap::Args)]
pub struct CutoverArgs {
    /// The admin API, e.g. http://127.0.0.1:9644.
    #[arg(long, default_value = "http://127.0.0.1:9644")]
    admin: String,
    /// The `topics` glob of the routes to switch, exactly as in the table.
    #[arg(long, required_unless_present = "rollback")]
    topics: Option<String>,
    /// The cluster to read from.
    #[arg(long, required_unless_present = "rollback")]
    to: Option<String>,
    /// The `groups` glob of the [[groups]] rules to move (default: every rule on the
    /// routes' current read cluster).
    #[arg(long)]
    groups: Option<String>,
    /// kshift's config: also run `verify` on these topics before switching.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seconds to wait for the mirror lag of these routes to reach --max-lag-records.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Records the mirror may still have to copy for these routes when switching (the
    /// switch itself waits for what a group has committed to be copied).
    #[arg(long, default_value_t = 0)]
    max_lag_records: u64,
    /// Print every check and every group and position the switch would move, and change
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse while records written around kshift (straight to the old cluster) were
    /// found within this many minutes (--force overrides).
    #[arg(long, default_value_t = 10)]
    unrouted_window_minutes: u64,
    /// Put the previous routing table back (moving groups back).
    #[arg(long, conflicts_with_all = ["topics", "to", "groups", "config", "dry_run"])]
    rollback: bool,
    /// Switch even where consumer groups cannot be moved or the mirror lags (an
    /// emergency: a cluster is down); such groups keep untranslated offsets.
    #[arg(long)]
    force: bool,
}

/// Switches as the flags say, or rolls back with `--rollback`.
pub async fn run(args: CutoverArgs) -> anyhow::Result<()> {
    if args.rollback {
        return rollback(&args.admin, args.force).await;
    }
    let cutover = Cutover {
        admin: args.admin,
        topics: args.topics.unwrap_or_default(),
        to: args.to.unwrap_or_default(),
        groups: args.groups,
        config: args.config,
        wait: Duration::from_secs(args.wait_secs),
        max_lag_records: args.max_lag_records,
        dry_run: args.dry_run,
        unrouted_window: Duration::from_secs(args.unrouted_window_minutes.saturating_mul(60)),
        force: args.force,
    };
    switch(&cutover).await
}

/// What to switch.
#[derive(Debug, Clone)]
struct Cutover {
    admin: String,
    /// The routes whose `topics` is exactly this glob.
    topics: String,
    /// The cluster reads (and groups) move to.
    to: String,
    /// The `[[groups]]` rules to move: those whose glob is this one; by default every rule
    /// hosting groups on the routes' current read cluster.
    groups: Option<String>,
    /// Also compare both clusters' records (`kshift verify`) before switching.
    config: Option<PathBuf>,
    /// How long to wait for the mirror lag of these routes to reach `max_lag_records`.
    wait: Duration,
    /// Records the mirror may still have to copy for these routes when switching.
    max_lag_records: u64,
    /// Check and plan only: change nothing.
    dry_run: bool,
    /// Refuse while records written around kshift were found within this long.
    unrouted_window: Duration,
    /// Switch even where groups cannot be moved or the mirror lags (an emergency: the old
    /// cluster is down); groups that cannot be moved keep untranslated offsets.
    force: bool,
}

/// Checks, then switches the reads and groups in one routing change (or, with `dry_run`, plans
/// it).
async fn switch(cutover: &Cutover) -> anyhow::Result<()> {
    let document = routing_table(&cutover.admin).await?;
    let before = document.spec;
    let mut after = before.clone();
    let matching: Vec<usize> = after
        .routes
        .iter()
        .enumerate()
        .filter(|(_, route)| route.topics == cutover.topics)
        .map(|(index, _)| index)
        .collect();
    if matching.is_empty() {
        let globs: Vec<&str> = before.routes.iter().map(|r| r.topics.as_str()).collect();
        bail!(
            "no route has topics = {:?} (the routes' topics are {globs:?})",
            cutover.topics
        );
    }
    let mut from_clusters = Vec::new();
    for &index in &matching {
        let route = &mut after.routes[index];
        let read = route.read.clone().unwrap_or_else(|| route.write.clone());
        if read == cutover.to {
            println!(
                "routes[{index}] ({}) already reads from {}",
                route.topics, cutover.to
            );
            continue;
        }
        if route.write != cutover.to {
            if !route.mirror.contains(&cutover.to) {
                bail!(
                    "routes[{index}] ({}) does not mirror to {}: its consumers would miss every record written since; add {:?} to its mirror list first",
                    route.topics, cutover.to, cutover.to
                );
            }
            if route.mirror_percent < 100 {
                bail!(
                    "routes[{index}] ({}) mirrors only {}% of its records to {}: ramp mirror_percent to 100 first",
                    route.topics, route.mirror_percent, cutover.to
                );
            }
        }
        from_clusters.push(read);
        route.read = Some(cutover.to.clone());
    }
    for rule in &mut after.groups {
        let selected = match &cutover.groups {
            Some(glob) => rule.groups == *glob,
            None => from_clusters.contains(&rule.cluster),
        };
        if selected {
            rule.cluster = cutover.to.clone();
        }
    }
    if after == before {
        println!("nothing to switch");
        return Ok(());
    }
    let check = |what: &str| {
        if cutover.dry_run {
            println!("check: {what}");
        }
    };
    check(&format!(
        "routes {matching:?} ({}) mirror every record to {}",
        cutover.topics, cutover.to
    ));
    check(&format!(
        "no record was written to a mirrored partition around kshift in the last {:?}",
        cutover.unrouted_window
    ));
    if let Err(error) = unrouted_writes(cutover).await {
        if !cutover.force {
            return Err(error);
        }
        eprintln!("kshift: {error:#} — switching anyway (--force): those records are lost to the new cluster unless copied (`kshift backfill` on a backfill route)");
    }
    check(&format!(
        "the mirror lag of these routes reaches {} record(s) within {:?}",
        cutover.max_lag_records, cutover.wait
    ));
    if let Err(error) = wait_for_mirror(cutover, &matching).await {
        if !cutover.force {
            return Err(error);
        }
        eprintln!("kshift: {error:#} — switching anyway (--force)");
    }
    if let Some(path) = &cutover.config {
        check("`kshift verify` finds both clusters equal on these topics");
        let config = Config::load(path).map_err(|e| anyhow!("{e}"))?;
        let topics = cutover.topics.clone();
        println!("verifying {topics} on both clusters ...");
        let options = super::verify::Options {
            topics,
            since: None,
            order: None,
            quiet: false,
            report_to: Some(cutover.admin.clone()),
        };
        let equal = super::verify::run(&config, &options).await?;
        if !equal {
            bail!("the clusters differ (see the table above): not switching; `kshift repair` or `kshift backfill` first");
        }
    }

    let body = toml::to_string(&after)?;
    if cutover.dry_run {
        return dry_run(cutover, &body).await;
    }
    let path = if cutover.force {
        "/routes?force=true"
    } else {
        "/routes"
    };
    let (status, answer) = request(&cutover.admin, "PUT", path, &body).await?;
    if status != 200 {
        return Err(refused(status, &answer));
    }
    let answer: Value = serde_json::from_str(&answer)?;
    println!(
        "switched: version {} -> {}",
        document.version,
        answer["version"].as_u64().unwrap_or(0)
    );
    for line in diff(&before, &after) {
        println!("  {line}");
    }
    print_moved(&answer);
    Ok(())
}

/// `kshift cutover --rollback`: the previous table back, groups moved back.
async fn rollback(admin: &str, force: bool) -> anyhow::Result<()> {
    let (before, after, answer) = super::routes::roll_back(admin, force).await?;
    for line in diff(&before, &after) {
        println!("  {line}");
    }
    print_moved(&serde_json::from_str(&answer)?);
    Ok(())
}

fn print_moved(answer: &Value) {
    print_groups(answer, "moved");
}

/// Each group of `answer["moved_groups"]` and its positions, `verb` ("moved", "would move").
fn print_groups(answer: &Value, verb: &str) {
    let moved = answer["moved_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if moved.is_empty() {
        println!(
            "no consumer group {}",
            if verb == "moved" {
                "had to move"
            } else {
                "would have to move"
            }
        );
    }
    for group in moved {
        println!(
            "group {} {verb} from {} to {}:",
            group["group"].as_str().unwrap_or("?"),
            group["from"].as_str().unwrap_or("?"),
            group["to"].as_str().unwrap_or("?")
        );
        for offset in group["offsets"].as_array().into_iter().flatten() {
            println!(
                "  {}[{}] committed {} -> {}",
                offset["topic"].as_str().unwrap_or("?"),
                offset["partition"],
                offset["from"],
                offset["to"]
            );
        }
    }
}

/// Fails when kshift found records written around it (to a mirrored partition, without
/// going through kshift) within `unrouted_window`: the mirror does not have them.
async fn unrouted_writes(cutover: &Cutover) -> anyhow::Result<()> {
    let status: Value = serde_json::from_str(&get(&cutover.admin, "/status").await?)?;
    let unrouted = &status["unrouted"];
    let recent = unrouted["last_seen_seconds_ago"]
        .as_f64()
        .is_some_and(|ago| ago <= cutover.unrouted_window.as_secs_f64());
    if !recent {
        if cutover.dry_run {
            println!("  none found ({} check passes)", unrouted["passes"]);
        }
        return Ok(());
    }
    let mut lines = Vec::new();
    for finding in unrouted["findings"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {}[{}] on {}: offsets {}..={} ({} records)",
            finding["topic"].as_str().unwrap_or("?"),
            finding["partition"],
            finding["cluster"].as_str().unwrap_or("?"),
            finding["first_offset"],
            finding["last_offset"],
            finding["records"]
        ));
    }
    bail!(
        "records were written to mirrored partitions without going through kshift (the mirror does not have them; point those writers at kshift first):\n{}",
        lines.join("\n")
    )
}

/// Asks kshift to plan the change in `body` and prints what it would do.
async fn dry_run(cutover: &Cutover, body: &str) -> anyhow::Result<()> {
    let (status, answer) = request(&cutover.admin, "PUT", "/routes?dry_run=true", body).await?;
    let report: Value = serde_json::from_str(&answer)
        .with_context(|| format!("PUT /routes?dry_run answered {status}: {answer}"))?;
    let report = &report["dry_run"];
    if report.is_null() {
        return Err(refused(status, &answer));
    }
    println!("dry run: the switch would change");
    for change in report["changes"].as_array().into_iter().flatten() {
        println!("  {}", change.as_str().unwrap_or_default());
    }
    print_groups(
        &json!({ "moved_groups": report["would_move"] }),
        "would move",
    );
    let refusals: Vec<&str> = report["refusals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for refusal in &refusals {
        println!("refused: {refusal}");
    }
    println!("dry run: nothing was changed");
    if refusals.is_empty() || cutover.force {
        Ok(())
    } else {
        bail!("kshift would refuse this switch (see above)")
    }
}

/// Waits until kshift reports at most `max_lag_records` records waiting for a mirror on the
/// routes at `indexes`.
async fn wait_for_mirror(cutover: &Cutover, indexes: &[usize]) -> anyhow::Result<()> {
    let deadline = Instant::now() + cutover.wait;
    loop {
        let status: Value = serde_json::from_str(&get(&cutover.admin, "/status").await?)?;
        let lag: u64 = status["mirror_lag_by_route"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| {
                entry["route"]
                    .as_u64()
                    .is_some_and(|route| indexes.contains(&(route as usize)))
            })
            .filter_map(|entry| entry["lag_records"].as_u64())
            .sum();
        if lag <= cutover.max_lag_records {
            if cutover.dry_run {
                println!("  the mirror lag is {lag} record(s)");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the mirror still has {lag} records to copy for these routes after {:?}: not switching",
                cutover.wait
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
