//! `kshift health --admin URL`: exit 0 when a running kshift's admin API answers `/health`
//! (for container health checks), printing what it answered.

use anyhow::bail;

use super::admin_client::request;

pub async fn run(admin: &str) -> anyhow::Result<()> {
    let (status, body) = request(admin, "GET", "/health", "").await?;
    if status != 200 {
        bail!("/health answered {status}: {body}");
    }
    println!("{}", body.trim());
    Ok(())
}
