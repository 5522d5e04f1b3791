//! The client for one upstream registry: auth challenges and scoped tokens,
//! CDN redirects followed without credentials, timeouts, rate-limit headers.

pub(crate) mod auth;
mod breaker;
mod egress;
mod pool;
mod search;

use crate::config::Timings;
pub use crate::config::UpstreamSettings;

use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use auth::{Authenticator, Authorization};
use breaker::CircuitBreaker;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How far redirects are followed; registries use one hop to their CDN.
const MAX_REDIRECTS: usize = 5;
/// Extra attempts for a request that failed to connect or got a 502/503/504.
const RETRIES: u32 = 2;
/// Manifests, HEADs, tokens and tag lists are small: a whole exchange
/// that takes longer than this is a stalled upstream. Blob bodies have no
/// total limit, only the idle-read timeout.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Call<'_> {
    /// The metric label for this call.
    fn kind(&self) -> &'static str {
        if self.path.starts_with("manifests/") {
            "manifest"
        } else if self.path.starts_with("blobs/") {
            "blob"
        } else if self.path.starts_with("referrers/") {
            "referrers"
        } else {
            "tags"
        }
    }
}

/// One logical call to the upstream registry API.
struct Call<'a> {
    method: Method,
    /// After `/v2/<name>/`.
    path: String,
    accept: Option<&'a str>,
    /// Whether the whole exchange is bounded by [`SMALL_REQUEST_TIMEOUT`].
    small: bool,
    /// Ask for the bytes from this offset on (`Range: bytes=N-`).
    range_from: Option<u64>,
}

/// What went wrong talking to an upstream. Clone, so that one coalesced
/// failure can be handed to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream registry is unreachable: {0}")]
    Unreachable(String),
    #[error("upstream registry timed out")]
    Timeout,
    #[error("upstream registry answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    #[error("upstream authentication failed: {0}")]
    Auth(&'static str),
    #[error("upstream sent an invalid response: {0}")]
    Protocol(String),
    /// The token service answered 200 with something unusable (too large,
    /// not JSON, no token): it is broken, not refusing us, so this is an
    /// outage and the stale cache may answer.
    #[error("upstream token service sent an unusable answer: {0}")]
    TokenService(&'static str),
}

impl UpstreamError {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else if e.is_connect() {
            UpstreamError::Unreachable("connection failed".into())
        } else {
            // Drop the URL: CDN URLs carry signatures we should not echo.
            UpstreamError::Unreachable(e.without_url().to_string())
        }
    }

    /// Whether the upstream is out of service (as opposed to answering a
    /// definite "no" such as 404), so a stale cache entry may answer.
    /// An answer about one repository (not found, not allowed), not about
    /// the content or the upstream as a whole: another repository may
    /// well have what this one does not.
    pub fn is_about_repository(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => matches!(status, 401 | 403 | 404),
            UpstreamError::Auth(_) => true,
            _ => false,
        }
    }

    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Unreachable(_)
            | UpstreamError::Timeout
            | UpstreamError::TokenService(_) => true,
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            UpstreamError::Auth(_) | UpstreamError::Protocol(_) => false,
        }
    }
}

/// Why an upstream's client cannot be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {source}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    CaCertificates {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
    #[error("invalid proxy: {0}")]
    Proxy(String),
}

/// One page of a referrers answer.
#[derive(Clone, Debug)]
pub struct ReferrersPage {
    pub bytes: Bytes,
    /// The query of the next page, from `Link: <…?…>; rel="next"`.
    pub next: Option<String>,
}

/// A manifest as the upstream sent it, byte-exact.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
}

/// What a manifest HEAD told us.
#[derive(Clone, Debug)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
}

/// The upstream's most recent `ratelimit-*` headers (0 = not seen).
#[derive(Default)]
pub struct RateLimit {
    pub limit: AtomicU64,
    pub remaining: AtomicU64,
}

pub struct Upstream {
    settings: UpstreamSettings,
    http: reqwest::Client,
    auth: Authenticator,
    breaker: CircuitBreaker,
    /// Wait before the first retry of a transient failure (then × 4).
    first_backoff: Duration,
    pub rate_limit: RateLimit,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        settings: UpstreamSettings,
        timings: &Timings,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, ClientError> {
        let mut builder = reqwest::Client::builder();
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file).map_err(|source| ClientError::CaFile {
                path: ca_file.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaCertificates {
                    path: ca_file.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if settings.insecure {
            tracing::warn!(upstream = %settings.name, "TLS verification disabled for this upstream");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let builder = egress::configure(builder, &settings)?;
        let http = builder
            .user_agent(concat!("pullthrough/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // We follow redirects ourselves, to decide per hop whether the
            // Authorization header may go along.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ClientError::Build)?;
        let auth = Authenticator::new(
            http.clone(),
            settings.name.clone(),
            settings.url.clone(),
            settings.credentials.clone(),
            Arc::clone(&metrics),
            timings.token_timeout,
        );
        Ok(Upstream {
            settings,
            http,
            auth,
            breaker: CircuitBreaker::new(timings.breaker_open),
            metrics,
            first_backoff: timings.retry_backoff,
            rate_limit: RateLimit::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// What it was built from (a reload keeps an upstream whose settings
    /// did not change, with its tokens and circuit state).
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The request host names that select this upstream.
    pub fn hosts(&self) -> &crate::config::HostPatterns {
        &self.settings.hosts
    }

    /// Whether content fetched from here may be private.
    pub fn has_credentials(&self) -> bool {
        !self.settings.credentials.is_empty()
    }

    pub fn referrers_ttl(&self) -> Duration {
        self.settings.referrers_ttl
    }

    pub fn prefetch_referrers(&self) -> bool {
        self.settings.prefetch_referrers
    }

    /// How many blob downloads from here may run at once.
    pub fn max_downloads(&self) -> usize {
        self.settings.max_downloads
    }

    pub fn tag_ttl(&self) -> Duration {
        self.settings.tag_ttl
    }

    pub fn max_stale(&self) -> Duration {
        self.settings.max_stale
    }

    /// Whether a tag is configured as immutable once cached.
    pub fn is_immutable_tag(&self, tag: &str) -> bool {
        self.settings.immutable_tags.matches(tag)
    }

    /// Whether the policy lets a repository through (patterns match the
    /// name as the upstream knows it, e.g. `library/ubuntu`).
    pub fn allows(&self, repo: &RepoName) -> bool {
        let name = self.upstream_name(repo);
        let allowed = self.settings.allow.is_empty() || self.settings.allow.matches(name.as_str());
        allowed && !self.settings.deny.matches(name.as_str())
    }

    /// Whether calls currently fail fast because the upstream is down.
    pub fn is_circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The name the upstream knows the repository by (Docker Hub's
    /// `library/` rule applies to Docker Hub only).
    pub fn upstream_name(&self, repo: &RepoName) -> RepoName {
        if self.settings.name == "docker.io" {
            repo.with_library_prefix()
        } else {
            repo.clone()
        }
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<FetchedManifest, UpstreamError> {
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::GET,
                    path: format!("manifests/{reference}"),
                    accept: Some(accept),
                    small: true,
                    range_from: None,
                },
            )
            .await?;
        let resp = expect_success(resp)?;
        let declared = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(UpstreamError::Protocol(
                "manifest is larger than 4 MiB".into(),
            ));
        }
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES).await?;
        let media_type = manifest_media_type(declared.as_deref(), &bytes)?;
        Ok(FetchedManifest { bytes, media_type })
    }

    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<ManifestHead, UpstreamError> {
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::HEAD,
                    path: format!("manifests/{reference}"),
                    accept: Some(accept),
                    small: true,
                    range_from: None,
                },
            )
            .await?;
        let resp = expect_success(resp)?;
        let media_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // A HEAD has no body to look into: a type it names must be a
        // manifest's, and one it omits is settled by the GET.
        if let Some(declared) = &media_type {
            if !is_manifest_media_type(declared) {
                return Err(not_a_manifest());
            }
        }
        Ok(ManifestHead {
            digest: header_digest(resp.headers()),
        })
    }

    /// Starts a blob download; the caller streams the body.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.get_blob_from(repo, digest, None).await
    }

    /// Starts a blob download from byte `from` on (a resumed download): the
    /// answer is a 206 from there, or a 200 with the whole blob from an
    /// upstream that ignores ranges. Each call follows a fresh redirect, so
    /// an expired CDN URL is replaced.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::GET,
                    path: format!("blobs/{digest}"),
                    accept: None,
                    small: false,
                    range_from: from.filter(|&n| n > 0),
                },
            )
            .await?;
        expect_success(resp)
    }

    /// The blob's size, without downloading it.
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::HEAD,
                    path: format!("blobs/{digest}"),
                    accept: None,
                    small: true,
                    range_from: None,
                },
            )
            .await?;
        let resp = expect_success(resp)?;
        Ok(content_length(resp.headers()))
    }

    /// One page of the distribution-spec 1.1 referrers API for `digest`:
    /// `None` when the upstream has no such API (404, 405, 400, or an
    /// answer that is not an image index), else the index bytes and the
    /// next page's query (from a `Link: <…>; rel="next"`). Asked unfiltered:
    /// the mirror keeps the whole answer and filters it itself.
    pub async fn referrers_page(
        &self,
        repo: &RepoName,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<Option<ReferrersPage>, UpstreamError> {
        let path = match query {
            Some(q) => format!("referrers/{digest}?{q}"),
            None => format!("referrers/{digest}"),
        };
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::GET,
                    path,
                    accept: Some("application/vnd.oci.image.index.v1+json"),
                    small: true,
                    range_from: None,
                },
            )
            .await?;
        if matches!(resp.status().as_u16(), 400 | 404 | 405) {
            return Ok(None);
        }
        let resp = expect_success(resp)?;
        let is_index = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/vnd.oci.image.index.v1+json"));
        let next = resp
            .headers()
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES).await?;
        if !is_index {
            // An HTML error page or some other answer: no referrers API.
            return Ok(None);
        }
        Ok(Some(ReferrersPage { bytes, next }))
    }

    /// `tags/list`, passed through with its pagination query and headers.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: Option<&str>,
    ) -> Result<(Bytes, HeaderMap), UpstreamError> {
        let path = match query {
            Some(q) => format!("tags/list?{q}"),
            None => "tags/list".to_owned(),
        };
        let resp = self
            .send(
                repo,
                Call {
                    method: Method::GET,
                    path,
                    accept: None,
                    small: true,
                    range_from: None,
                },
            )
            .await?;
        let resp = expect_success(resp)?;
        let mut headers = resp.headers().clone();
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES).await?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(UpstreamError::Protocol("tag list is not JSON".into()));
        }
        // Pagination goes on through the mirror: a Link naming the
        // upstream's own host would send clients past it.
        let link = headers
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(relative_link);
        headers.remove(http::header::LINK);
        if let Some(Ok(value)) = link.map(|l| http::HeaderValue::from_str(&l)) {
            headers.insert(http::header::LINK, value);
        }
        Ok((bytes, headers))
    }

    /// One logical request, through the circuit breaker.
    async fn send(
        &self,
        repo: &RepoName,
        call: Call<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        if !self.breaker.allow() {
            return Err(UpstreamError::Unreachable(
                "upstream failed repeatedly; not retrying for a few seconds".into(),
            ));
        }
        let result = self.send_authenticated(repo, &call).await;
        match &result {
            Ok(resp) if resp.status().is_server_error() => self.breaker.record_outage(),
            Ok(_) => self.breaker.record_success(),
            Err(e) if e.is_outage() => self.breaker.record_outage(),
            Err(_) => {}
        }
        result
    }

    /// Authenticates (answering one 401 with a token for the repository's
    /// pull scope), follows redirects, and retries transient failures.
    async fn send_authenticated(
        &self,
        repo: &RepoName,
        call: &Call<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let name = self.upstream_name(repo);
        let url = self
            .settings
            .url
            .join(&format!("v2/{name}/{}", call.path))
            .map_err(|e| UpstreamError::Protocol(format!("cannot build upstream URL: {e}")))?;
        let scope = format!("repository:{name}:pull");
        let (authorization, mut credential) = self.auth.authorization(&scope).await?;
        let mut resp = self.send_with_retries(call, &url, &authorization).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let authorization;
            (authorization, credential) = self
                .auth
                .after_unauthorized(resp.url(), challenge.as_deref(), &scope)
                .await?;
            resp = self.send_with_retries(call, &url, &authorization).await?;
        }
        if !self.record_rate_limit(resp.headers(), resp.status(), credential) {
            return Ok(resp);
        }
        // This account's pulls ran out and another can take over: once
        // more, with the next account (and a token of its own).
        let (authorization, credential) = self.auth.authorization(&scope).await?;
        let resp = self.send_with_retries(call, &url, &authorization).await?;
        self.record_rate_limit(resp.headers(), resp.status(), credential);
        Ok(resp)
    }

    async fn send_with_retries(
        &self,
        call: &Call<'_>,
        url: &Url,
        authorization: &Authorization,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut backoff = self.first_backoff;
        let mut attempt = 0;
        loop {
            let result = self
                .send_following_redirects(call, url.clone(), authorization)
                .await;
            // Timeouts are not retried: a stalled upstream would multiply
            // the client's wait, and the breaker handles repeated stalls.
            let transient = match &result {
                Err(UpstreamError::Unreachable(_)) => true,
                Ok(resp) => matches!(resp.status().as_u16(), 502..=504),
                Err(_) => false,
            };
            if !transient || attempt >= RETRIES {
                return result;
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff *= 4;
        }
    }

    async fn send_following_redirects(
        &self,
        call: &Call<'_>,
        mut url: Url,
        authorization: &Authorization,
    ) -> Result<reqwest::Response, UpstreamError> {
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.http.request(call.method.clone(), url.clone());
            if let Some(accept) = call.accept {
                req = req.header(http::header::ACCEPT, accept);
            }
            if let Some(from) = call.range_from {
                req = req.header(http::header::RANGE, format!("bytes={from}-"));
            }
            if call.small {
                req = req.timeout(SMALL_REQUEST_TIMEOUT);
            }
            // Credentials go to the registry only: CDN hosts reject them
            // and must never see them.
            if url.origin() == self.settings.url.origin() {
                req = authorization.apply(req);
            }
            let started = std::time::Instant::now();
            let sent = req.send().await;
            let m = &self.metrics;
            let status = match &sent {
                Ok(resp) => resp.status().as_str().to_owned(),
                Err(_) => "error".to_owned(),
            };
            m.upstream_requests
                .with_label_values(&[self.name(), call.kind(), &status])
                .inc();
            m.upstream_duration
                .with_label_values(&[self.name(), call.kind()])
                .observe(started.elapsed().as_secs_f64());
            let resp = sent.map_err(UpstreamError::from_reqwest)?;
            // Only the registry may ask us to authenticate; a redirect target
            // that does is failing, whether or not we sent a token first.
            if resp.status() == StatusCode::UNAUTHORIZED
                && url.origin() != self.settings.url.origin()
            {
                tracing::warn!(
                    upstream = %self.name(),
                    host = url.host_str().unwrap_or(""),
                    "a redirect target answered 401; not treated as a challenge"
                );
                return Err(UpstreamError::Protocol(
                    "a redirect target answered 401 Unauthorized".into(),
                ));
            }
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::Protocol("redirect without Location".into()))?;
            let next = url
                .join(location)
                .map_err(|_| UpstreamError::Protocol("redirect to an invalid URL".into()))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(UpstreamError::Protocol("redirect to a non-HTTP URL".into()));
            }
            if let Some(why) = refuse_redirect(&self.settings.url, &url, &next) {
                // The host only: the rest of a redirect URL may be signed.
                tracing::warn!(
                    upstream = %self.name(),
                    host = next.host_str().unwrap_or(""),
                    reason = why,
                    "redirect refused"
                );
                return Err(UpstreamError::Protocol(format!("redirect refused: {why}")));
            }
            url = next;
        }
        Err(UpstreamError::Protocol("too many redirects".into()))
    }

    /// Keeps the upstream's `ratelimit-*` figures, for the upstream and
    /// the pool account that got them. Returns whether that account is
    /// spent (no pulls left, or a 429 saying so) and another one can take
    /// over: Docker Hub's plain 429, with no figures, is an abuse limit on
    /// the address and backs the whole upstream off instead.
    fn record_rate_limit(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        credential: Option<usize>,
    ) -> bool {
        let field = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let value = |v: &str| {
            v.split(';')
                .next()
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        let window = |v: &str| {
            v.split(';')
                .find_map(|p| p.trim().strip_prefix("w="))
                .and_then(|w| w.parse::<u64>().ok())
        };
        let limit = field("ratelimit-limit").and_then(value);
        let remaining_field = field("ratelimit-remaining");
        let remaining = remaining_field.and_then(value);
        if let Some(limit) = limit {
            self.rate_limit.limit.store(limit, Ordering::Relaxed);
        }
        if let Some(remaining) = remaining {
            self.rate_limit
                .remaining
                .store(remaining, Ordering::Relaxed);
        }
        let Some(i) = credential else {
            return false;
        };
        let pool = self.auth.pool();
        let labels = [self.name(), pool.name(i)];
        if let Some(limit) = limit {
            self.metrics
                .credential_ratelimit_limit
                .with_label_values(&labels)
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(remaining) = remaining {
            self.metrics
                .credential_ratelimit_remaining
                .with_label_values(&labels)
                .set(i64::try_from(remaining).unwrap_or(i64::MAX));
        }
        // The last pull of the window succeeds with `remaining: 0`; the
        // account is spent from the next one on.
        if remaining != Some(0) {
            return false;
        }
        let handed_over = pool.spent(i, remaining_field.and_then(window));
        if handed_over {
            self.metrics
                .credential_switches
                .with_label_values(&[self.name()])
                .inc();
        }
        handed_over && status == StatusCode::TOO_MANY_REQUESTS
    }
}

/// `*` matches any run of characters, `?` any one character.
fn expect_success(resp: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Err(UpstreamError::Status {
        status: status.as_u16(),
        retry_after,
    })
}

/// Media types a manifest may be served with: the known manifest kinds,
/// Docker's unsigned schema 1 and the OCI artifact manifest of the 1.1
/// drafts.
fn is_manifest_media_type(content_type: &str) -> bool {
    const ALSO: [&str; 2] = [
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.oci.artifact.manifest.v1+json",
    ];
    let essence = content_type.split(';').next().unwrap_or("").trim();
    MANIFEST_MEDIA_TYPES
        .iter()
        .chain(ALSO.iter())
        .any(|m| m.eq_ignore_ascii_case(essence))
}

fn not_a_manifest() -> UpstreamError {
    UpstreamError::Protocol("upstream answered a manifest request with a non-manifest type".into())
}

/// The media type to store a fetched manifest under. Whatever the
/// upstream (or a host it redirected us to) sends is served to clients
/// byte for byte under this type, so an HTML page or a blob must never
/// pass: the type must be a manifest's and the body must be JSON. With no
/// Content-Type at all, the manifest's own `mediaType` field decides.
fn manifest_media_type(declared: Option<&str>, bytes: &[u8]) -> Result<String, UpstreamError> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|_| UpstreamError::Protocol("manifest is not a JSON object".into()))?;
    let media_type = match declared {
        Some(declared) => declared.to_owned(),
        None => body.media_type.ok_or_else(not_a_manifest)?,
    };
    if is_manifest_media_type(&media_type) {
        Ok(media_type)
    } else {
        Err(not_a_manifest())
    }
}

/// A `Link` header with every absolute target reduced to its path and
/// query (`<https://host/v2/x/tags/list?n=1>; rel="next"` becomes
/// `</v2/x/tags/list?n=1>; rel="next"`); relative targets stay as they are.
/// The query of a `Link` header's `rel="next"` target (pages of the same
/// endpoint differ only in their query).
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let (_, query) = target.split_once('?')?;
        Some(query.to_owned())
    })
}

fn relative_link(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        let target = &rest[open + 1..open + close];
        out.push_str(&rest[..=open]);
        match Url::parse(target) {
            Ok(url) => {
                out.push_str(url.path());
                if let Some(query) = url.query() {
                    out.push('?');
                    out.push_str(query);
                }
            }
            Err(_) => out.push_str(target),
        }
        out.push('>');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where an IP literal (or `localhost`) points, for the redirect rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressClass {
    Loopback,
    LinkLocal,
    Private,
}

impl AddressClass {
    fn of(url: &Url) -> Option<AddressClass> {
        match url.host()? {
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                (name == "localhost" || name.ends_with(".localhost"))
                    .then_some(AddressClass::Loopback)
            }
            url::Host::Ipv4(ip) => Self::of_v4(ip),
            url::Host::Ipv6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Self::of_v4(v4),
                None if ip.is_loopback() || ip.is_unspecified() => Some(AddressClass::Loopback),
                None if ip.segments()[0] & 0xffc0 == 0xfe80 => Some(AddressClass::LinkLocal),
                None if ip.segments()[0] & 0xfe00 == 0xfc00 => Some(AddressClass::Private),
                None => None,
            },
        }
    }

    fn of_v4(ip: std::net::Ipv4Addr) -> Option<AddressClass> {
        let [a, b, ..] = ip.octets();
        if ip.is_loopback() || ip.is_unspecified() {
            // 0.0.0.0 reaches this host too.
            Some(AddressClass::Loopback)
        } else if ip.is_link_local() {
            Some(AddressClass::LinkLocal)
        } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
            // RFC 1918 and the carrier-grade NAT range.
            Some(AddressClass::Private)
        } else {
            None
        }
    }
}

/// Why the redirect from `from` to `to` must not be followed, if it must
/// not. A hostile or compromised upstream could otherwise make the mirror
/// fetch (and cache, and serve) what only it can reach: this host's
/// services, the cloud metadata address, the internal network. Names are
/// not resolved here, only IP literals and `localhost` are judged; and an
/// upstream that is itself on such an address (a lab registry, the tests on
/// 127.0.0.1) may redirect within its own class of address.
fn refuse_redirect(upstream: &Url, from: &Url, to: &Url) -> Option<&'static str> {
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some("https to http downgrade");
    }
    let target = AddressClass::of(to)?;
    if AddressClass::of(upstream) == Some(target) {
        return None;
    }
    Some(match target {
        AddressClass::Loopback => "target is a loopback address",
        AddressClass::LinkLocal => "target is a link-local address",
        AddressClass::Private => "target is a private address",
    })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::from_reqwest)? {
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::Protocol("response body is too large".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Every configured upstream; the first is the default (Docker Hub unless
/// configured otherwise).
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(all: Vec<Arc<Upstream>>) -> Option<Upstreams> {
        if all.is_empty() {
            None
        } else {
            Some(Upstreams { all })
        }
    }

    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.all[0]
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.all
            .iter()
            .find(|u| u.name().eq_ignore_ascii_case(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.all.iter()
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_off_internal_addresses_and_keep_https() {
        let url = |s: &str| Url::parse(s).expect("url");
        let hub = url("https://registry-1.docker.io/v2/");
        let refused = |to: &str| refuse_redirect(&hub, &hub, &url(to));
        assert_eq!(refused("https://cdn.example/blob?sig=x"), None);
        assert!(refused("http://cdn.example/blob").is_some(), "downgrade");
        for internal in [
            "https://127.0.0.1/",
            "https://127.1.2.3:8080/",
            "https://0.0.0.0/",
            "https://localhost/",
            "https://api.localhost/",
            "https://2130706433/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fe80::1]/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://[fd00::1]/",
        ] {
            assert!(refused(internal).is_some(), "{internal} followed");
        }
        // An upstream on an internal address may redirect within its class
        // (a lab registry and its storage), never to another class.
        let lab = url("http://127.0.0.1:5000/");
        assert_eq!(
            refuse_redirect(&lab, &lab, &url("http://127.0.0.1:9000/b")),
            None
        );
        assert!(refuse_redirect(&lab, &lab, &url("http://169.254.169.254/")).is_some());
        let lan = url("http://10.0.0.5:5000/");
        assert_eq!(
            refuse_redirect(&lan, &lan, &url("http://192.168.0.9/b")),
            None
        );
        assert!(refuse_redirect(&lan, &lan, &url("http://127.0.0.1/")).is_some());
    }

    #[test]
    fn manifests_need_a_manifest_type_and_a_json_body() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let body =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            manifest_media_type(Some(oci), body).ok().as_deref(),
            Some(oci)
        );
        assert!(manifest_media_type(Some(&format!("{oci}; charset=utf-8")), body).is_ok());
        assert_eq!(manifest_media_type(None, body).ok().as_deref(), Some(oci));
        assert!(manifest_media_type(Some("text/html"), body).is_err());
        assert!(manifest_media_type(Some("application/octet-stream"), body).is_err());
        assert!(manifest_media_type(Some("application/json"), body).is_err());
        assert!(manifest_media_type(Some(oci), b"<html><script>").is_err());
        assert!(manifest_media_type(None, b"{}").is_err());
    }

    #[test]
    fn tag_list_links_become_relative() {
        assert_eq!(
            relative_link(r#"<https://registry.example/v2/x/tags/list?n=2&last=b>; rel="next""#),
            r#"</v2/x/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(
            relative_link(r#"</v2/x/tags/list?n=2&last=b>; rel="next""#),
            r#"</v2/x/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(relative_link("garbage <unclosed"), "garbage <unclosed");
    }

    #[test]
    fn outages_are_distinguished_from_answers() {
        let status = |s| UpstreamError::Status {
            status: s,
            retry_after: None,
        };
        assert!(status(503).is_outage());
        assert!(status(429).is_outage());
        assert!(!status(404).is_outage());
        assert!(UpstreamError::Timeout.is_outage());
        assert!(!UpstreamError::Auth("x").is_outage());
        assert!(UpstreamError::TokenService("x").is_outage());
    }
}
