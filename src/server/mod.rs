//! The HTTP front: listeners, connection limits, routing to handlers, the
//! access log, and graceful shutdown.
//!
//! [`run`] serves already-bound listeners until a shutdown future resolves,
//! so tests start it in-process on port 0; [`serve`] is the binary's way
//! in (bind from the config, stop on SIGTERM or SIGINT).

mod access;
mod activity;
mod api;
mod app;
mod body;
mod client_auth;
mod connection;
mod dispatch;
mod error;
mod handlers;
mod idle;
mod limits;
mod listener;
mod ops;
mod page;
mod routes;
mod search;
mod select;
mod sendfile;
mod tls;
mod upload;
mod warm;

pub use crate::oci::{parse_range, ByteSpan, RangeRequest};
pub use app::{App, StartError};
pub use error::ApiError;
pub use routes::{parse as parse_route, Route, RouteError};
pub use tls::TlsFiles;
pub use warm::{check_offline, offline_pins, warm_offline, WarmRequest};

use crate::config::Config;
use dispatch::Scope;
use listener::{Listener, Shared};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The sockets a server answers on, bound before it runs.
pub struct Listeners {
    /// The registry API (and operations endpoints).
    pub main: TcpListener,
    /// `/metrics`, `/healthz` and `/readyz` only.
    pub metrics: Option<TcpListener>,
    /// Serve the main listener over TLS.
    pub tls: Option<TlsFiles>,
}

impl Listeners {
    /// Binds the addresses the config names.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let main = bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners {
            main,
            metrics,
            tls: config.tls.clone(),
        })
    }
}

/// How a running mirror gets a new configuration.
pub struct Reload {
    /// Reads the configuration again.
    pub load: Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>,
    /// The config file: a change to it reloads as SIGHUP does.
    pub file: Option<std::path::PathBuf>,
}

/// How often the config file is looked at: a `stat`, cheap enough to do
/// often, so an edit applies within seconds.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// How long a changed config file must stay as it is before it is read.
const CONFIG_SETTLE: Duration = Duration::from_millis(500);

/// Opens the cache, binds the config's addresses and serves until SIGTERM
/// or SIGINT, then drains within the grace period. With `reload`, SIGHUP
/// applies a new configuration (see [`App::reload`]); one that does not
/// load or apply is logged in one line and the running one kept.
pub async fn serve(config: Config, reload: Option<Reload>) -> Result<(), StartError> {
    let app = App::open(&config)?;
    let listeners = Listeners::bind(&config).await?;
    if let Some(reload) = reload {
        spawn_reload_on_sighup(Arc::clone(&app), reload);
    }
    tracing::info!(
        addr = %listeners.main.local_addr().unwrap_or(config.listen),
        cache_dir = %config.cache_dir.display(),
        upstream = %config.upstreams[0].url,
        "pullthrough listening"
    );
    run(listeners, app, shutdown_signal()).await
}

/// Serves `listeners` until `shutdown` resolves; then stops accepting,
/// lets running responses and downloads finish within the app's grace
/// period, and flushes the index.
pub async fn run(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let admin_address = leave_admin_address(&app, &listeners);
    let tls = match listeners.tls {
        Some(files) => Some(tls::acceptor(files, app.tls_poll)?),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(app.max_connections));
    let shared = Shared {
        app: Arc::clone(&app),
        connections: Arc::clone(&connections),
        stop: stop_rx,
    };
    // The metrics listener is for scrapers and probes: no registry API
    // there (it may be unencrypted and less guarded than the main port).
    let all = std::iter::once((listeners.main, tls, Scope::Everything))
        .chain(listeners.metrics.map(|l| (l, None, Scope::OperationsOnly)));
    let mut accept_loops = Vec::new();
    for (tcp, tls, scope) in all {
        let listener = Listener {
            tcp,
            tls,
            scope,
            shared: shared.clone(),
        };
        accept_loops.push(tokio::spawn(listener.run()));
    }
    drop(shared);

    shutdown.await;
    app.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for accept in accept_loops {
        let _ = accept.await;
    }
    let deadline = Instant::now() + app.shutdown_grace;
    tracing::info!(
        grace_secs = app.shutdown_grace.as_secs(),
        "shutting down; draining connections and downloads"
    );
    // Every connection holds a permit to its end and the accept loops
    // are gone: all permits back means all connections closed.
    let all = u32::try_from(app.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => {},
        _ = tokio::time::sleep_until(deadline.into()) => {},
    }
    app.drain(deadline).await;
    if let Some(address) = admin_address {
        crate::admin::address::remove(&app.cache_dir, &address);
    }
    Ok(())
}

/// What a file looks like from outside: a change of either means it was
/// written (an editor's rename gives a new mtime too).
fn fingerprint(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The next SIGHUP; `false` when no more can come.
async fn hangup(signals: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match signals.as_mut() {
        Some(s) => s.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

/// Tells `pullthrough cache ls|stats` where and how to ask: the metrics
/// listener when there is one (plain HTTP), else the main one.
fn leave_admin_address(
    app: &App,
    listeners: &Listeners,
) -> Option<crate::admin::address::AdminAddress> {
    let (addr, tls) = match &listeners.metrics {
        Some(metrics) => (metrics.local_addr().ok()?, false),
        None => (listeners.main.local_addr().ok()?, listeners.tls.is_some()),
    };
    let url = crate::admin::address::local_url(addr, tls);
    let token = app.cli_read_token.as_deref()?;
    match crate::admin::address::write(&app.cache_dir, &url, token) {
        Ok(address) => Some(address),
        Err(error) => {
            tracing::warn!(%error, "cannot leave the admin address in the cache directory; cache ls|stats will not reach this mirror");
            None
        }
    }
}

fn spawn_reload_on_sighup(app: Arc<App>, reload: Reload) {
    let mut signals = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(_) => {
            tracing::warn!("cannot listen for SIGHUP; only a changed config file reloads");
            None
        }
    };
    tokio::spawn(async move {
        let mut seen = reload.file.as_deref().and_then(fingerprint);
        loop {
            let why = tokio::select! {
                received = hangup(&mut signals) => {
                    if !received {
                        return;
                    }
                    "SIGHUP"
                }
                _ = tokio::time::sleep(CONFIG_POLL), if reload.file.is_some() => {
                    let now = reload.file.as_deref().and_then(fingerprint);
                    // A file that vanished (mid-rename) is no new config.
                    if now == seen || now.is_none() {
                        continue;
                    }
                    // Let the writer finish (editors write in steps); a
                    // SIGHUP sent after the edit meanwhile is this reload.
                    tokio::select! {
                        received = hangup(&mut signals) => {
                            if !received {
                                return;
                            }
                        }
                        _ = tokio::time::sleep(CONFIG_SETTLE) => {}
                    }
                    "config file changed"
                }
            };
            // What this reload reads is what was seen: a SIGHUP after an
            // edit must not be followed by a second reload of the same file.
            seen = reload.file.as_deref().and_then(fingerprint);
            // Reading the files is quick and rare; the runtime can spare it.
            let applied = (reload.load)()
                .map_err(|e| e.to_string())
                .and_then(|config| app.reload(&config));
            match applied {
                Ok(()) => tracing::info!(trigger = why, "config reloaded"),
                Err(error) => {
                    tracing::warn!(trigger = why, %error, "config not reloaded; the running config stays")
                }
            }
        }
    });
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
