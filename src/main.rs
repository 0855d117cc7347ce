//! The `kshift` command: parses arguments, loads the configuration, sets up logging and
//! runs the chosen subcommand. Exit codes: 0 success, 1 runtime failure, 64 bad config.

mod cli;

use std::path::Path;
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
    Serve(cli::ConfigFile),
    /// Validate a configuration file and print its routing table.
    Check(cli::ConfigFile),
    /// Exit 0 when a running kshift's admin API answers /health (for container health checks).
    Health(cli::health::HealthArgs),
    /// Compare each mirrored topic's records on its write cluster and its mirrors, per
    /// partition: records missing, extra or changed, and order; exit 1 on any difference.
    Verify(cli::WithConfig<cli::verify::Options>),
    /// Replay the write-offset ranges the mirror failure journal lists (mirror_failures_file)
    /// from the write cluster to the mirror; ranges done are not replayed again.
    Repair(cli::repair::RepairArgs),
    /// Create on the mirror clusters the topics the routes will mirror there: same partition
    /// count, topic configs set on the write topic copied (retention, cleanup policy,
    /// compression, …). Existing topics are compared, not altered. Exit 1 when a target
    /// cannot work (identity partitioning with another partition count) or a create failed;
    /// differing configs are warnings only (exit 0). Exit 2 on errors.
    Prepare(cli::WithConfig<cli::prepare::Options>),
    /// Measure produce latency and throughput of several targets side by side.
    Bench(cli::bench::BenchOptions),
    /// Add or remove a client user in a SASL credentials file (`[proxy.sasl]
    /// credentials_file`). The password is read from stdin; only hashes are written.
    #[command(subcommand)]
    User(cli::users::UserAction),
    /// Copy to the mirrors what exists only on the write cluster, for the topics matching
    /// GLOB (routes with `backfill = true`), and show the progress.
    Backfill(cli::backfill::BackfillArgs),
    /// Move the reads of the routes whose `topics` is GLOB, and their consumer groups, to
    /// CLUSTER (after checking mirror lag, and parity with --config); or roll back.
    Cutover(cli::cutover::CutoverArgs),
    /// A live migration on this machine: two Tansu brokers, kshift with its status page, a
    /// producer and a consumer group, walked through the runbook step by step.
    Demo(cli::demo::DemoOptions),
    /// Read or change the routing table of a running kshift through its admin API.
    Routes(cli::routes::RoutesArgs),
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
        Command::Serve(cli::ConfigFile { config: path }) => with_config(&path, |config| {
            exit_code(cli::block_on(cli::serve::run(config, path.clone())))
        }),
        Command::Check(args) => with_config(&args.config, |config| {
            cli::check::print_routing(&config);
            ExitCode::SUCCESS
        }),
        Command::Health(args) => exit_code(cli::block_on_one_thread(cli::health::run(args))),
        Command::Verify(args) => with_config(&args.config, |config| {
            check_exit_code(cli::block_on(cli::verify::run(&config, &args.options)))
        }),
        Command::Repair(args) => with_config(&args.config, |config| {
            exit_code(cli::block_on(cli::repair::run(&config)).map(drop))
        }),
        Command::Prepare(args) => with_config(&args.config, |config| {
            check_exit_code(cli::block_on(cli::prepare::run(&config, &args.options)))
        }),
        Command::Bench(options) => exit_code(cli::block_on(cli::bench::run(options))),
        Command::User(action) => exit_code(cli::users::run(action)),
        Command::Backfill(args) => exit_code(cli::block_on_one_thread(cli::backfill::run(args))),
        Command::Cutover(args) => exit_code(cli::block_on_one_thread(cli::cutover::run(args))),
        Command::Demo(options) => match cli::block_on(cli::demo::run(options)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("kshift demo: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Routes(args) => exit_code(cli::block_on_one_thread(cli::routes::run(args))),
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
