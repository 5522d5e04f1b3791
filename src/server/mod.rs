//! The HTTP front: listener, connection limits, routing to handlers, the
//! access log, and graceful shutdown.

mod access;
mod body;
mod client_auth;
mod dispatch;
mod error;
mod handlers;
mod ops;
mod range;
mod routes;
mod select;
mod tls;

pub use tls::TlsFiles;

pub use error::ApiError;
pub use range::{parse_range, ByteSpan, RangeRequest};
pub use routes::{parse as parse_route, Route, RouteError};

use crate::cache;
use crate::config::{Config, ProxyNet};
use crate::fetch::BlobFetcher;
use crate::manifests::ManifestService;
use crate::metrics::metrics;
use crate::upstream::{Upstream, Upstreams};
use crate::visibility::Visibility;
use dispatch::Scope;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long a client may take to send its request headers.
/// HTTP/2 pings on idle connections, so a peer that vanished (or holds a
/// connection open without a word) frees its slot.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Everything a request handler can reach.
pub struct App {
    pub upstreams: Upstreams,
    pub blobs: Arc<BlobFetcher>,
    pub manifests: ManifestService,
    pub index: cache::Index,
    pub cache_dir: PathBuf,
    pub trusted_proxies: Vec<ProxyNet>,
    /// `None` when clients need no credentials.
    pub client_auth: Option<client_auth::ClientAuth>,
    pub visibility: Visibility,
    pub shutting_down: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open cache directory {dir}: {source}")]
    Cache {
        dir: PathBuf,
        source: cache::CacheError,
    },
    #[error("cannot build the upstream client: {0}")]
    Upstream(String),
    #[error("cannot load client credentials: {0}")]
    ClientAuth(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl App {
    pub fn open(config: &Config) -> Result<Arc<App>, StartError> {
        let (store, index) = cache::open(&config.cache_dir, config.max_size).map_err(|source| {
            StartError::Cache {
                dir: config.cache_dir.clone(),
                source,
            }
        })?;
        // We own the cache now (the index lock says so): whatever is in
        // tmp/ is a download that a previous process did not finish.
        match store.clear_temp(false) {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "removed unfinished downloads from tmp/"),
            Err(source) => {
                return Err(StartError::Cache {
                    dir: config.cache_dir.clone(),
                    source: source.into(),
                })
            }
        }
        let visibility = Visibility::new(
            index.clone(),
            config.upstreams.iter().any(|u| u.credentials.is_some()),
        );
        let mut upstreams = Vec::new();
        for settings in &config.upstreams {
            let upstream = Upstream::new(settings.clone()).map_err(StartError::Upstream)?;
            upstreams.push(Arc::new(upstream));
        }
        let upstreams = Upstreams::new(upstreams)
            .ok_or_else(|| StartError::Upstream("no upstream configured".into()))?;
        Ok(Arc::new(App {
            upstreams,
            blobs: BlobFetcher::new(store.clone(), index.clone(), visibility.clone()),
            manifests: ManifestService::new(store, index.clone(), visibility.clone()),
            index,
            cache_dir: config.cache_dir.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            client_auth: client_auth::ClientAuth::load(
                config.htpasswd_file.as_deref(),
                config.bearer_tokens_file.as_deref(),
            )
            .map_err(StartError::ClientAuth)?,
            visibility,
            shutting_down: AtomicBool::new(false),
        }))
    }
}

/// Serves until SIGTERM or SIGINT, then drains within the grace period.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let app = App::open(&config)?;
    metrics();
    spawn_maintenance(&app, &config);
    let tls = match config.tls.clone() {
        Some(files) => Some(tls::acceptor(files).map_err(StartError::Tls)?),
        None => None,
    };
    let listener = bind(config.listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(config.listen),
        cache_dir = %config.cache_dir.display(),
        upstream = %config.upstreams[0].url,
        "pullthrough listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut accept_loops = Vec::new();
    // The metrics listener is for scrapers and probes: no registry API
    // there (it may be unencrypted and less guarded than the main port).
    let listeners = std::iter::once((listener, tls, Scope::Everything))
        .chain(metrics_listener.map(|l| (l, None, Scope::OperationsOnly)));
    for (listener, tls, scope) in listeners {
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            tls,
            scope,
            config.header_read_timeout,
            Arc::clone(&app),
            Arc::clone(&connections),
            Arc::clone(&graceful),
            stop_rx.clone(),
        )));
    }

    shutdown_signal().await;
    app.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for accept in accept_loops {
        let _ = accept.await;
    }
    let deadline = Instant::now() + config.shutdown_grace;
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down; draining connections and downloads"
    );
    // The accept loops are gone, so this is the last handle.
    if let Some(graceful) = Arc::into_inner(graceful) {
        tokio::select! {
            _ = graceful.shutdown() => {},
            _ = tokio::time::sleep_until(deadline.into()) => {},
        }
    }
    // Downloads belong to no connection; let them land in the cache too.
    while app.blobs.inflight_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Batched access times would otherwise die with the process, and the
    // next eviction would take the blobs used last for the oldest.
    app.blobs.store().usage().flush_access_times(&app.index);
    if let Err(e) = app.index.flush() {
        tracing::warn!(error = %e, "cannot flush the cache index");
    }
    let left = app.blobs.inflight_count();
    if left > 0 {
        tracing::warn!(downloads = left, "grace period over; abandoning downloads");
    } else {
        tracing::info!("drained; exiting");
    }
    Ok(())
}

/// Reconciles the cache with its index in the background (the mirror
/// serves meanwhile), then keeps it within its budget.
fn spawn_maintenance(app: &App, config: &Config) {
    let store = app.blobs.store().clone();
    let index = app.index.clone();
    let budget = config.max_size.map(|max_size| cache::Budget {
        max_size,
        protect_recent: config
            .upstreams
            .iter()
            .map(|u| u.tag_ttl)
            .max()
            .unwrap_or_default(),
    });
    tokio::spawn(async move {
        let started = Instant::now();
        let (s, i) = (store.clone(), index.clone());
        match tokio::task::spawn_blocking(move || cache::reconcile(&s, &i, false)).await {
            Ok(r) => tracing::info!(
                entries = r.entries,
                bytes = r.bytes,
                adopted = r.adopted,
                removed_corrupt = r.removed_corrupt,
                removed_stray = r.removed_stray,
                dropped_entries = r.dropped_entries,
                millis = started.elapsed().as_millis() as u64,
                "cache reconciled"
            ),
            Err(e) => tracing::error!(error = %e, "cache reconciliation failed"),
        }
        cache::spawn_evictor(store, index, budget);
    });
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// Accepts connections until told to stop; each is served on its own task
/// and counted against the connection limit.
#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scope: Scope,
    header_read_timeout: Duration,
    app: Arc<App>,
    connections: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Bounds what one connection can make us buffer (request heads).
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(Duration::from_secs(10));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(dispatch::dispatch(app, req, peer, scope).await) }
        });
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, graceful) =
                    (acceptor.clone(), builder.clone(), Arc::clone(&graceful));
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = graceful.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
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
