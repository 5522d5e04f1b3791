//! The HTTP front: listener, connection limits, routing to handlers, the
//! access log, and graceful shutdown.

mod body;
mod error;
mod handlers;
mod range;
mod routes;

pub use error::ApiError;
pub use routes::{parse as parse_route, Route, RouteError};

use crate::cache;
use crate::config::Config;
use crate::fetch::BlobFetcher;
use crate::manifests::ManifestService;
use crate::metrics::{metrics, status_class};
use crate::upstream::{Upstream, Upstreams};
use body::Body;
use handlers::Handled;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
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
use tokio::sync::Semaphore;

/// Everything a request handler can reach.
pub struct App {
    pub upstreams: Upstreams,
    pub blobs: Arc<BlobFetcher>,
    pub manifests: ManifestService,
    pub index: cache::Index,
    pub cache_dir: PathBuf,
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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl App {
    pub fn open(config: &Config) -> Result<Arc<App>, StartError> {
        let (store, index) =
            cache::open(&config.cache_dir).map_err(|source| StartError::Cache {
                dir: config.cache_dir.clone(),
                source,
            })?;
        let mut upstreams = Vec::new();
        for settings in &config.upstreams {
            let upstream =
                Upstream::new(settings.clone()).map_err(|e| StartError::Upstream(e.to_string()))?;
            upstreams.push(Arc::new(upstream));
        }
        let upstreams = Upstreams::new(upstreams)
            .ok_or_else(|| StartError::Upstream("no upstream configured".into()))?;
        Ok(Arc::new(App {
            upstreams,
            blobs: BlobFetcher::new(store.clone(), index.clone()),
            manifests: ManifestService::new(store, index.clone()),
            index,
            cache_dir: config.cache_dir.clone(),
            shutting_down: AtomicBool::new(false),
        }))
    }
}

/// Serves until SIGTERM or SIGINT, then drains within the grace period.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let app = App::open(&config)?;
    metrics();
    cache::spawn_size_scan(config.cache_dir.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(addr = %local, cache_dir = %config.cache_dir.display(),
        upstream = %config.upstreams[0].url, "pullthrough listening");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut shutdown = std::pin::pin!(shutdown_signal());

    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
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
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(dispatch(app, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }

    app.shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down; draining connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(config.shutdown_grace) => tracing::warn!("grace period over; exiting with connections open"),
    }
    Ok(())
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

async fn dispatch(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route_label = route_label(&path);
    let handled = match route(&app, &req).await {
        Ok(h) => h,
        Err(e) => e.into_response().into(),
    };
    let mut response = handled.response;
    if path.starts_with("/v2") {
        response.headers_mut().insert(
            header::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
    }
    let status = response.status().as_u16();
    let m = metrics();
    m.http_requests
        .with_label_values(&[route_label, method.as_str(), status_class(status)])
        .inc();
    m.http_duration
        .with_label_values(&[route_label])
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        target: "access",
        %peer,
        method = %method,
        path = %path,
        status,
        cache = handled.outcome.map(|o| o.as_str()).unwrap_or("-"),
        micros = started.elapsed().as_micros() as u64,
    );
    response
}

async fn route(app: &App, req: &Request<Incoming>) -> Result<Handled, ApiError> {
    let method = req.method();
    let readable = method == Method::GET || method == Method::HEAD;
    let route = match routes::parse(req.uri().path()) {
        Ok(route) => route,
        // A write to any registry path is refused as such, even one we
        // do not route (uploads).
        Err(_) if !readable && req.uri().path().starts_with("/v2") => {
            return Err(ApiError::ReadOnly)
        }
        Err(e) => return Err(e.into()),
    };
    if !readable {
        return Err(match route {
            Route::Healthz | Route::Readyz | Route::Metrics => ApiError::MethodNotAllowed,
            _ => ApiError::ReadOnly,
        });
    }
    let upstream = pick_upstream(app, req.uri().query())?;
    match route {
        Route::Base => Ok(handlers::base().into()),
        Route::Manifest { name, reference } => {
            handlers::manifest(app, upstream, method, req.headers(), &name, &reference).await
        }
        Route::Blob { name, digest } => {
            handlers::blob(app, upstream, method, req.headers(), &name, &digest).await
        }
        Route::TagsList { name } => {
            let query = strip_ns(req.uri().query());
            handlers::tags_list(upstream, &name, query.as_deref()).await
        }
        Route::Healthz => Ok(text(StatusCode::OK, "ok\n").into()),
        Route::Readyz => Ok(readiness(app).into()),
        Route::Metrics => Ok(metrics_response(app).into()),
    }
}

/// containerd names the registry it means in `?ns=`; without it, the
/// default upstream answers.
fn pick_upstream<'a>(app: &'a App, query: Option<&str>) -> Result<&'a Arc<Upstream>, ApiError> {
    let ns = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    });
    match ns {
        None => Ok(app.upstreams.default_upstream()),
        Some(ns) => match app.upstreams.by_name(&ns) {
            Some(u) => Ok(u),
            // Docker Hub goes by several names.
            None if is_docker_hub_alias(&ns) => app
                .upstreams
                .by_name("docker.io")
                .ok_or(ApiError::UnknownRegistry(ns.chars().take(64).collect())),
            None => Err(ApiError::UnknownRegistry(ns.chars().take(64).collect())),
        },
    }
}

fn is_docker_hub_alias(ns: &str) -> bool {
    matches!(ns, "docker.io" | "registry-1.docker.io" | "index.docker.io")
}

fn strip_ns(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == "n" || k == "last")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// A fixed label per endpoint (never the path itself: that would put
/// repository names into metric labels).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v2" | "/v2/" => "base",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        p if p.starts_with("/v2/") && p.contains("/manifests/") => "manifest",
        p if p.starts_with("/v2/") && p.contains("/blobs/") => "blob",
        p if p.starts_with("/v2/") && p.ends_with("/tags/list") => "tags",
        _ => "other",
    }
}

fn metrics_response(app: &App) -> Response<Body> {
    let m = metrics();
    m.downloads_in_flight.set(app.blobs.inflight_count() as i64);
    for u in app.upstreams.iter() {
        let name = [u.name()];
        m.ratelimit_limit
            .with_label_values(&name)
            .set(u.rate_limit.limit.load(Ordering::Relaxed) as i64);
        m.ratelimit_remaining
            .with_label_values(&name)
            .set(u.rate_limit.remaining.load(Ordering::Relaxed) as i64);
        m.upstream_circuit_open
            .with_label_values(&name)
            .set(i64::from(u.is_circuit_open()));
    }
    let mut resp = Response::new(body::full(m.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn readiness(app: &App) -> Response<Body> {
    if app.shutting_down.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let writable = std::fs::metadata(app.cache_dir.join("tmp"))
        .map(|m| m.is_dir() && !m.permissions().readonly())
        .unwrap_or(false);
    if !writable || !app.index.is_healthy() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "cache not writable\n");
    }
    text(StatusCode::OK, "ready\n")
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(s));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}
