//! The config file as a routing source: re-read when it changes on disk (watched with
//! `notify`, through its directory so editors that replace the file are seen) and on
//! SIGHUP. Only `[[routes]]` and `[[groups]]` are applied live; a change elsewhere in the
//! file is reported as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::Control;

/// Quiet time after a change before the file is read (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(150);

/// Watches `path` and SIGHUP until the proxy stops. Returns once the watch is set up.
pub fn spawn_watch(
    state: Arc<Control>,
    path: PathBuf,
    running: Config,
) -> Result<(), notify::Error> {
    let (changes, mut changed) = mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let watch_changes = changes.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
            {
                let _ = watch_changes.send(());
            }
        }
    })?;
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    #[cfg(unix)]
    {
        let hangups = changes.clone();
        // Registered before returning, so a SIGHUP right after start reloads, not kills.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signal) => {
                tokio::spawn(async move {
                    while signal.recv().await.is_some() {
                        tracing::info!("SIGHUP: re-reading the config file");
                        if hangups.send(()).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(_) => {
                tracing::warn!("cannot listen for SIGHUP; the config file is still watched");
            }
        }
    }
    drop(changes);
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while changed.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while changed.try_recv().is_ok() {}
            reload(&state, &path, &running).await;
        }
    });
    Ok(())
}

async fn reload(state: &Control, path: &Path, running: &Config) {
    let config = match Config::load_unvalidated(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "config file unreadable; the routing table in force is unchanged");
            state.metrics.routing_update("rejected", "file");
            return;
        }
    };
    if config.proxy_and_clusters_differ(running) {
        tracing::warn!(path = %path.display(), "[proxy] or [clusters] changed in the config file: only routes and groups apply live; restart kshift for the rest");
    }
    let spec = config.routing_spec();
    if spec == state.routing.load().spec {
        tracing::debug!("config file changed; routing table unchanged");
        return;
    }
    let result = match &state.redis {
        Some(redis) => redis
            .publish(
                state,
                &spec,
                "file",
                crate::control::cutover::Policy::Refuse,
            )
            .await
            .map(|_| ()),
        None => crate::control::cutover::switch(
            state,
            &spec,
            crate::control::cutover::Policy::Refuse,
            async { state.routing.apply(&spec, "file", None) },
        )
        .await
        .map(|_| ())
        .map_err(Into::into),
    };
    match result {
        Ok(()) => state.metrics.routing_update("applied", "file"),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "routing table from the config file not applied");
            state.metrics.routing_update("rejected", "file");
        }
    }
}
