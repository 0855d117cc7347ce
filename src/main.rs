//! The `kshift` command: parses arguments, loads the configuration, sets up logging and
//! runs the chosen subcommand. Exit codes: 0 success, 1 runtime failure, 64 bad config.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kshift::config::Config;

/// Exit code for a configuration error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "kshift",
    version,
    about = "Kafka-protocol proxy for zero-downtime cluster migration"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print its routing table.
    Check {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Exit 0 when a running kshift's admin API answers /health (for container health checks).
    Health {
        /// The admin API.
        #[arg(long, default_value = "http://127.0.0.1:9644")]
        admin: String,
    },
    /// Compare each mirrored topic's records on its write cluster and its mirrors, per
    /// partition: records missing, extra or changed, and order; exit 1 on any difference.
    Verify {
        /// The kshift configuration (clusters and routes).
        #[arg(long)]
        config: PathBuf,
        /// Glob of client-visible topic names to verify.
        #[arg(long, default_value = "*")]
        topics: String,
        /// Only records from this time on (milliseconds since the epoch).
        #[arg(long)]
        since: Option<i64>,
        /// strict: the mirror must keep each partition's write order (one kshift writes it);
        /// fleet: order may differ between instances' batches. Default: fleet when the
        /// config uses Redis, strict otherwise.
        #[arg(long, value_enum)]
        order: Option<cli::verify::OrderMode>,
        /// A kshift admin API (http://host:port) to report the result to: its status page
        /// shows the last verify.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Replay the write-offset ranges the mirror failure journal lists (mirror_failures_file)
    /// from the write cluster to the mirror; ranges done are not replayed again.
    Repair {
        /// The kshift configuration (clusters, routes, mirror_failures_file).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create on the mirror clusters the topics the routes will mirror there: same partition
    /// count, topic configs set on the write topic copied (retention, cleanup policy,
    /// compression, …). Existing topics are compared, not altered. Exit 1 when a target
    /// cannot work (identity partitioning with another partition count) or a create failed;
    /// differing configs are warnings only (exit 0). Exit 2 on errors.
    Prepare {
        /// The kshift configuration (clusters and routes).
        #[arg(long)]
        config: PathBuf,
        /// Glob of client-visible topic names to prepare.
        #[arg(long)]
        topics: String,
        /// Only this mirror cluster (default: every route's mirrors).
        #[arg(long)]
        to: Option<String>,
        /// Replication factor of created topics; -1: the broker's default.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        replication_factor: i32,
        /// Print what would be created and compare what exists; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure produce latency and throughput of several targets side by side.
    Bench(cli::bench::BenchOptions),
    /// Add or remove a client user in a SASL credentials file (`[proxy.sasl]
    /// credentials_file`). The password is read from stdin; only hashes are written.
    #[command(subcommand)]
    User(cli::users::UserAction),
    /// Copy to the mirrors what exists only on the write cluster, for the topics matching
    /// GLOB (routes with `backfill = true`), and show the progress.
    Backfill {
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
    },
    /// Move the reads of the routes whose `topics` is GLOB, and their consumer groups, to
    /// CLUSTER (after checking mirror lag, and parity with --config); or roll back.
    Cutover {
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
    },
    /// A live migration on this machine: two Tansu brokers, kshift with its status page, a
    /// producer and a consumer group, walked through the runbook step by step.
    Demo(cli::demo::DemoOptions),
    /// Read or change the routing table of a running kshift through its admin API.
    Routes {
        /// The admin API, e.g. http://127.0.0.1:9644.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9644")]
        admin: String,
        #[command(subcommand)]
        action: RoutesAction,
    },
}

#[derive(Subcommand)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own lines; kshift's info lines would drown them.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    cli::init_tracing(cli.log_json, default_level);
    match cli.command {
        Command::Demo(options) => match cli::block_on(cli::demo::run(options)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("kshift demo: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => with_config(&config, |config| {
            cli::check::print_routing(&config);
            ExitCode::SUCCESS
        }),
        Command::Bench(options) => exit_code(cli::block_on(cli::bench::run(options))),
        Command::Verify {
            config,
            topics,
            since,
            order,
            admin,
        } => with_config(&config, |config| {
            let options = cli::verify::Options {
                topics,
                since,
                order,
                quiet: false,
                report_to: admin,
            };
            check_exit_code(cli::block_on(cli::verify::run(&config, &options)))
        }),
        Command::Repair { config } => with_config(&config, |config| {
            exit_code(cli::block_on(cli::repair::run(&config)).map(drop))
        }),
        Command::Prepare {
            config,
            topics,
            to,
            replication_factor,
            dry_run,
        } => with_config(&config, |config| {
            let options = cli::prepare::Options {
                topics,
                to,
                replication_factor,
                dry_run,
            };
            check_exit_code(cli::block_on(cli::prepare::run(&config, &options)))
        }),
        Command::User(action) => exit_code(cli::users::run(action)),
        Command::Health { admin } => exit_code(cli::block_on_one_thread(cli::health::run(&admin))),
        Command::Cutover {
            admin,
            topics,
            to,
            groups,
            config,
            wait_secs,
            max_lag_records,
            dry_run,
            unrouted_window_minutes,
            rollback,
            force,
        } => exit_code(cli::block_on_one_thread(async {
            if rollback {
                return cli::cutover::rollback(&admin, force).await;
            }
            let cutover = cli::cutover::Cutover {
                admin,
                topics: topics.unwrap_or_default(),
                to: to.unwrap_or_default(),
                groups,
                config,
                wait: std::time::Duration::from_secs(wait_secs),
                max_lag_records,
                dry_run,
                unrouted_window: std::time::Duration::from_secs(
                    unrouted_window_minutes.saturating_mul(60),
                ),
                force,
            };
            cli::cutover::run(&cutover).await
        })),
        Command::Backfill {
            admin,
            topics,
            rate_mb_per_sec,
            wait_secs,
        } => exit_code(cli::block_on_one_thread(cli::backfill::run(
            &admin,
            &topics,
            (rate_mb_per_sec.max(0.0) * 1_000_000.0) as u64,
            std::time::Duration::from_secs(wait_secs),
        ))),
        Command::Routes { admin, action } => exit_code(cli::block_on_one_thread(async {
            match action {
                RoutesAction::Get => cli::routes::get(&admin).await,
                RoutesAction::Set { file } => cli::routes::set(&admin, &file).await,
                RoutesAction::Rollback => cli::routes::rollback(&admin).await,
                RoutesAction::Diff { file } => cli::routes::diff_file(&admin, &file).await,
            }
        })),
        Command::Serve { config: path } => with_config(&path, |config| {
            exit_code(cli::block_on(cli::serve::run(config, path.clone())))
        }),
    }
}

/// Loads the configuration at `path` and runs `command` with it; or prints why it is invalid
/// and gives the exit code for a bad configuration.
fn with_config(path: &Path, command: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(config) => command(config),
        Err(error) => {
            eprintln!("kshift: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The exit code of a command: 0 when it did its work, 1 when it failed (printing why).
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kshift: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a command that checks something (verify, prepare): 0 when it passes, 1
/// when it found a problem (which it printed), 2 when it could not run.
fn check_exit_code(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("kshift: {error:#}");
            ExitCode::from(2)
        }
    }
}
