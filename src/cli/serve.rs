//! `kshift serve --config FILE`: runs the proxy until SIGTERM or SIGINT (Ctrl-C elsewhere),
//! re-applying the file's routing table whenever it changes and on SIGHUP. The first signal
//! drains (connections answer what they have read, mirror queues empty, within
//! `drain_timeout_ms`); a second one exits at once with code 130.

use std::path::PathBuf;

use kshift::config::Config;

/// Runs the proxy with `config`, read from `path` (watched for routing changes).
pub async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives as soon as the port is open must drain,
    // not kill.
    let mut stop = StopSignals::install()?;
    let proxy = kshift::Proxy::start(config.clone()).await?;
    proxy.watch_config_file(path, config)?;
    stop.next().await;
    tracing::info!(
        "shutting down: draining connections and mirror queues (a second signal stops at once)"
    );
    tokio::select! {
        _ = proxy.shutdown() => Ok(()),
        _ = stop.next() => {
            tracing::warn!("second signal: exiting without finishing the drain");
            std::process::exit(130)
        }
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct StopSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    #[cfg(unix)]
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
