//! Everything a request handler can reach, built once from the config:
//! the upstreams, the pull-through core, client auth, and the background
//! maintenance of the cache.

use super::client_auth;
use super::limits::Limits;
use crate::cache::{self, BlobStore, Index};
use crate::config::{Config, ProxyNet};
use crate::fetch::PullThrough;
use crate::metrics::Metrics;
use crate::upstream::{Upstream, Upstreams};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub struct App {
    /// Swapped whole by a reload; requests take a snapshot.
    upstreams: RwLock<Arc<Upstreams>>,
    pub(super) core: PullThrough,
    pub(super) metrics: Arc<Metrics>,
    pub(super) trusted_proxies: Vec<ProxyNet>,
    limits: RwLock<Arc<Limits>>,
    /// Whether any upstream had credentials at start: the core's
    /// visibility rules were set up for that, so a reload may not change it.
    private: bool,
    /// `None` when clients need no credentials.
    pub(super) client_auth: Option<client_auth::ClientAuth>,
    pub(super) shutting_down: AtomicBool,
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) max_connections: usize,
    /// Slots for requests in flight (see `Config::max_requests`).
    pub(super) requests: Arc<tokio::sync::Semaphore>,
    pub(super) tls_poll: Duration,
    /// See `Timings::park_after`.
    pub(super) park_after: Duration,
    /// For the page and `/api/v1/status`.
    pub(super) started: Instant,
    pub(super) max_size: Option<u64>,
    /// Whether the main listener speaks TLS: the scheme of the mirror's own
    /// address in the page's snippets.
    pub(super) tls: bool,
    /// SHA-256 of the admin token (`admin_token_file`); `None`: actions
    /// are refused. Only the hash is kept, and compared.
    pub(super) admin_token: Option<[u8; 32]>,
    /// Who may read `/api/v1/` (see `Config::admin_read`).
    pub(super) admin_read: Option<crate::config::AdminRead>,
    /// Recent pulls, top repositories, hourly figures, upstream errors.
    pub(super) activity: Arc<super::activity::Activity>,
    /// Where the running mirror leaves its admin address for the CLI.
    pub(super) cache_dir: PathBuf,
    /// Opens API reads for `cache ls|stats` (see `admin::address`);
    /// `None` if no random bytes could be had.
    pub(super) cli_read_token: Option<String>,
    /// Docker Hub search answers, kept briefly.
    pub(super) searches: super::search::SearchCache,
    /// Upstream pulls a warm leaves to clients (`warm_reserve`).
    pub(super) warm_reserve: u64,
    /// The configured warm sets, for the page and `/api/v1/warm/sets`.
    pub(super) warm_sets: Vec<crate::config::WarmSet>,
    /// How often a warm paused at the reserve asks again.
    pub(super) warm_poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open cache directory {dir}: {source}")]
    Cache {
        dir: PathBuf,
        source: cache::CacheError,
    },
    #[error("cannot build the client for upstream {name}: {source}")]
    Upstream {
        name: String,
        source: crate::upstream::ClientError,
    },
    #[error("cannot build the object store client: {0}")]
    Storage(reqwest::Error),
    #[error("no upstream configured")]
    NoUpstream,
    #[error("cannot read the admin token from {path}: {reason}")]
    AdminToken { path: PathBuf, reason: String },
    #[error("cannot load client credentials: {0}")]
    ClientAuth(#[from] client_auth::ClientAuthError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] super::tls::TlsError),
    #[error(transparent)]
    Pins(#[from] crate::warm::PinError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Another process (a running mirror) holds the cache directory.
    pub fn is_cache_in_use(&self) -> bool {
        matches!(
            self,
            StartError::Cache {
                source: cache::CacheError::InUse,
                ..
            }
        )
    }
}

impl App {
    pub fn open(config: &Config) -> Result<Arc<App>, StartError> {
        let metrics = Metrics::new();
        let (store, index) = cache::open(&config.cache_dir, config.max_size, Arc::clone(&metrics))
            .map_err(|source| StartError::Cache {
                dir: config.cache_dir.clone(),
                source,
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
        let upstreams = build_upstreams(config, None, &metrics)?;
        let client_auth = client_auth::ClientAuth::load(
            config.htpasswd_file.as_deref(),
            config.bearer_tokens_file.as_deref(),
            config.client_auth_max_failures,
        )?;
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(load_admin_token(path)?),
            None => None,
        };
        // Known before serving only as far as the cache holds the pinned
        // images' manifests; the background warm checks the rest.
        let pins =
            crate::warm::known_pins(&store, &index, &config.warm, config.max_size, &|name| {
                super::warm::upstream_repo(&upstreams, name)
            })?;
        if pins.bytes() > 0 {
            tracing::info!(
                bytes = pins.bytes(),
                "pinned warm sets known from the cache"
            );
        }
        store.usage().set_pinned(pins.digests());
        spawn_maintenance(&store, &index, config);
        let private = config.upstreams.iter().any(|u| !u.credentials.is_empty());
        let mut tiers: Vec<Arc<dyn cache::Tier>> = Vec::new();
        if let Some(s3) = &config.storage {
            tracing::info!(
                bucket = %s3.bucket,
                prefix = %s3.prefix,
                endpoint = %s3.endpoint,
                "object-storage tier under the local disk"
            );
            let tier = cache::S3Tier::new(s3.clone(), Arc::clone(&metrics))
                .map_err(StartError::Storage)?;
            tiers.push(Arc::new(tier));
        }
        let core = PullThrough::new(
            store,
            index,
            tiers,
            private,
            &config.timings,
            Arc::clone(&metrics),
        );
        let limits = Limits::new(config.limits.clone(), Arc::clone(&metrics));
        let activity = Arc::new(super::activity::Activity::default());
        super::activity::spawn_sampler(Arc::clone(&activity), Arc::clone(&metrics));
        let app = Arc::new(App {
            limits: RwLock::new(Arc::new(limits)),
            private,
            upstreams: RwLock::new(Arc::new(upstreams)),
            core,
            metrics,
            trusted_proxies: config.trusted_proxies.clone(),
            client_auth,
            shutting_down: AtomicBool::new(false),
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_grace: config.shutdown_grace,
            max_connections: config.max_connections,
            requests: Arc::new(tokio::sync::Semaphore::new(config.max_requests)),
            tls_poll: config.timings.tls_poll,
            park_after: config.timings.park_after,
            started: Instant::now(),
            max_size: config.max_size,
            tls: config.tls.is_some(),
            admin_token,
            admin_read: config.admin_read,
            activity,
            cache_dir: config.cache_dir.clone(),
            cli_read_token: crate::admin::address::new_read_token()
                .inspect_err(|error| tracing::warn!(%error, "no read token for cache ls|stats"))
                .ok(),
            searches: Default::default(),
            warm_reserve: config.warm_reserve,
            warm_sets: config.warm.clone(),
            warm_poll: config.timings.warm_ratelimit_poll,
        });
        if !config.warm.is_empty() {
            crate::warm::spawn_sets(
                Arc::clone(&app),
                config.warm.clone(),
                crate::warm::SetOptions {
                    max_size: config.max_size,
                    reserve: config.warm_reserve,
                    poll: config.timings.warm_ratelimit_poll,
                },
                pins,
            );
        }
        Ok(app)
    }
}

/// The upstreams a config names; with `running`, an upstream whose
/// settings did not change is kept as it is (tokens, circuit state).
pub(super) fn build_upstreams(
    config: &Config,
    running: Option<&Upstreams>,
    metrics: &Arc<Metrics>,
) -> Result<Upstreams, StartError> {
    let mut upstreams = Vec::new();
    for settings in &config.upstreams {
        let kept = running.and_then(|r| r.iter().find(|u| u.settings() == settings));
        let upstream = match kept {
            Some(u) => Arc::clone(u),
            None => Arc::new(
                Upstream::new(settings.clone(), &config.timings, Arc::clone(metrics)).map_err(
                    |source| StartError::Upstream {
                        name: settings.name.clone(),
                        source,
                    },
                )?,
            ),
        };
        upstreams.push(upstream);
    }
    Upstreams::new(upstreams).ok_or(StartError::NoUpstream)
}

impl App {
    pub(super) fn upstreams(&self) -> Arc<Upstreams> {
        Arc::clone(&self.upstreams.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn limits(&self) -> Arc<Limits> {
        Arc::clone(&self.limits.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies what a config may change while running: upstreams (hosts,
    /// allow/deny, proxies, timeouts; unchanged ones kept as they are) and
    /// client limits. Requests and downloads under way keep the upstream
    /// they started with. Returns why not, changing nothing, if it cannot.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let private = config.upstreams.iter().any(|u| !u.credentials.is_empty());
        if private != self.private {
            return Err(
                "adding or removing all upstream credentials needs a restart (what the cache may show is set up at start)"
                    .into(),
            );
        }
        let running = self.upstreams();
        let upstreams =
            build_upstreams(config, Some(&running), &self.metrics).map_err(|e| e.to_string())?;
        let limits = Limits::new(config.limits.clone(), Arc::clone(&self.metrics));
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(upstreams);
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
        Ok(())
    }
}

/// The admin token: the file's content, trimmed; an empty file is an
/// error (it would make every request an admin).
fn load_admin_token(path: &std::path::Path) -> Result<[u8; 32], StartError> {
    use sha2::Digest as _;
    let fail = |reason: String| StartError::AdminToken {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(sha2::Sha256::digest(token.as_bytes()).into())
}

/// Reconciles the cache with its index in the background (the mirror
/// serves meanwhile), then keeps it within its budget.
fn spawn_maintenance(store: &BlobStore, index: &Index, config: &Config) {
    let (store, index) = (store.clone(), index.clone());
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

impl App {
    /// After the connections: lets downloads (which belong to no
    /// connection) land in the cache until `deadline`, then persists what
    /// is batched in memory.
    pub(super) async fn drain(&self, deadline: Instant) {
        while self.core.downloads_in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.core.persist();
        let left = self.core.downloads_in_flight();
        if left > 0 {
            tracing::warn!(downloads = left, "grace period over; abandoning downloads");
        } else {
            tracing::info!("drained; exiting");
        }
    }
}
