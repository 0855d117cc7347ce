//! `kshift routes get|set|rollback|diff --admin URL`: the operator's client for the admin
//! API's routing endpoints, with a readable before/after diff.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use super::admin_client::{refused, request, routing_table};
use kshift::routing::{diff, RoutingSpec};

/// `kshift routes`'s flags.
#[derive(clap::Args)]
pub struct RoutesArgs {
    /// The admin API, e.g. http://127.0.0.1:9644.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9644")]
    admin: String,
    #[command(subcommand)]
    action: RoutesAction,
}

#[derive(clap::Subcommand)]
enum RoutesAction {
    /// Print the table in force (TOML) with its version.
    Get,
    /// Put the table in FILE in force (a table alone, or a whole kshift config) and print
    /// what changed.
    Set { file: PathBuf },
    /// Put the previous table back in force and print what changed.
    Rollback,
    /// Print what putting FILE in force would change, without changing anything.
    Diff { file: PathBuf },
}

/// Runs the `kshift routes` subcommand chosen.
pub async fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let admin = &args.admin;
    match args.action {
        RoutesAction::Get => get(admin).await,
        RoutesAction::Set { file } => set(admin, &file).await,
        RoutesAction::Rollback => rollback(admin).await,
        RoutesAction::Diff { file } => diff_file(admin, &file).await,
    }
}

/// Reads a routing table from a file: a table alone (`[[routes]]`, `[[groups]]`) or a whole
/// kshift config, whose `[[routes]]` and `[[groups]]` are taken.
fn read_table(path: &Path) -> anyhow::Result<RoutingSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let mut table = toml::Table::new();
    for key in ["routes", "groups"] {
        if let Some(rules) = value.get(key) {
            table.insert(key.to_string(), rules.clone());
        }
    }
    RoutingSpec::deserialize(toml::Value::Table(table))
        .with_context(|| format!("{}: invalid routing table", path.display()))
}

fn print_changes(lines: &[String]) {
    if lines.is_empty() {
        println!("no changes");
    }
    for line in lines {
        println!("  {line}");
    }
}

async fn get(admin: &str) -> anyhow::Result<()> {
    let document = routing_table(admin).await?;
    println!("# routing table version {}", document.version);
    print!("{}", toml::to_string(&document.spec)?);
    Ok(())
}

async fn diff_file(admin: &str, file: &Path) -> anyhow::Result<()> {
    let proposed = read_table(file)?;
    let document = routing_table(admin).await?;
    println!(
        "changes from version {} to {}:",
        document.version,
        file.display()
    );
    print_changes(&diff(&document.spec, &proposed));
    Ok(())
}

async fn set(admin: &str, file: &Path) -> anyhow::Result<()> {
    let proposed = read_table(file)?;
    let before = routing_table(admin).await?;
    let (status, body) = request(admin, "PUT", "/routes", &toml::to_string(&proposed)?).await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    let after: serde_json::Value = serde_json::from_str(&body)?;
    println!(
        "applied: version {} -> {}",
        before.version,
        after.get("version").and_then(|v| v.as_u64()).unwrap_or(0)
    );
    print_changes(&diff(&before.spec, &proposed));
    Ok(())
}

async fn rollback(admin: &str) -> anyhow::Result<()> {
    let (before, after, _) = roll_back(admin, false).await?;
    print_changes(&diff(&before, &after));
    Ok(())
}

/// Puts the previous table back in force (`POST /routes/rollback`, `?force=true` with
/// `force`) and prints the versions before and after. Returns the tables before and after,
/// and kshift's answer (the groups it moved back).
pub async fn roll_back(
    admin: &str,
    force: bool,
) -> anyhow::Result<(RoutingSpec, RoutingSpec, String)> {
    let before = routing_table(admin).await?;
    let path = if force {
        "/routes/rollback?force=true"
    } else {
        "/routes/rollback"
    };
    let (status, answer) = request(admin, "POST", path, "").await?;
    if status != 200 {
        return Err(refused(status, &answer));
    }
    let after = routing_table(admin).await?;
    println!(
        "rolled back: version {} -> {}",
        before.version, after.version
    );
    Ok((before.spec, after.spec, answer))
}
