//! `kshift health --admin URL`: exit 0 when a running kshift's admin API answers `/health`
//! (for container health checks), printing what it answered.

use anyhow::bail;

use super::admin_client::request;

/// `kshift health`'s flags.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// The admin API.
    #[arg(long, default_value = "http://127.0.0.1:9644")]
    admin: String,
}

/// Asks the admin API for `/health`; fails unless it answers 200.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let (status, body) = request(&args.admin, "GET", "/health", "").await?;
    if status != 200 {
        bail!("/health answered {status}: {body}");
    }
    println!("{}", body.trim());
    Ok(())
}
