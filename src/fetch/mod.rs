//! The pull-through core: the server asks it for a blob (digest, range) or
//! a manifest (reference, Accept) in a resolved (upstream, repository) and
//! gets back what to send plus what happened (hit, miss, coalesced,
//! revalidated, stale, bypass). Everything between — lookup, coalescing,
//! download, verification, storage, tailing, admission of private content —
//! happens in here.
//!
//! - `download`: one spawned download per blob digest, tailed by readers.
//! - `body`: the bodies sent: in memory, tailing a file, verified relay.
//! - `sendfile`: cached bytes left to the connection to send from the
//!   file (marker frames and their queue of file spans).
//! - `manifest`, `tags`: manifests by digest; tags and their freshness.
//! - `visibility`: which repositories may see content fetched with
//!   upstream credentials.
//! - `accept`: Accept lists and their classes.
//! - `prefetch`: what warming asks: manifests and blobs made present,
//!   cached-only lookups, pins.

pub(crate) mod accept;
mod blocks;
mod body;
mod download;
pub use download::DownloadView;
mod inventory;
mod manifest;
mod misses;
mod prefetch;
mod referrers;
mod resume;
mod sendfile;
pub use sendfile::{is_marker, Sendfile};
mod tags;
mod visibility;

use accept::AcceptList;
pub use body::{full, Body};
pub use manifest::Manifest;

use crate::cache::{BlobStore, CacheError, ContentStore, Index, Tier, TierHealth};
use crate::config::Timings;
use crate::metrics::Metrics;
use crate::oci::{parse_range, Digest, RangeRequest, Reference, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use download::{BlobDownloads, SourceBody, UnclaimedBody};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use manifest::Manifests;
use misses::Misses;
use referrers::Referrers;
use std::sync::Arc;
use tags::Tags;
use visibility::Visibility;

/// How a request was answered, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// A stale tag that the upstream confirmed (HEAD) without a download.
    Revalidated,
    /// Served from cache because the upstream is failing.
    Stale,
    /// Joined a fetch another request started.
    Coalesced,
    /// Relayed from the upstream without caching (cache disk full).
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// A resolved request target: the upstream, and the repository as the
/// client named it (the upstream applies its own naming rules).
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
}

/// What went wrong fetching content. Clone, so one failed fetch can be
/// handed to every request that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("content whose digest is {actual}, not the requested {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream sent {got} bytes of a blob it announced as {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error(transparent)]
    Cache(Arc<CacheError>),
    /// The cache cannot hold the blob now; the request that started the
    /// download relays its source past the cache.
    #[error("no space left in the cache for this blob")]
    NoSpace(UnclaimedBody),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { total: u64 },
    /// The fetch this request waited on ended without a result.
    #[error("the fetch this request joined ended without a result")]
    Abandoned,
}

impl From<CacheError> for FetchError {
    fn from(e: CacheError) -> Self {
        FetchError::Cache(Arc::new(e))
    }
}

impl FetchError {
    /// An answer about one repository (not found, not allowed): a request
    /// for another repository that joined this fetch must ask for itself.
    pub fn is_about_repository(&self) -> bool {
        matches!(self, FetchError::Upstream(e) if e.is_about_repository())
    }
}

/// What to send: status, the content headers, the body, and how the core
/// came by it.
pub struct Served {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// `None` for pass-through answers that never touch the cache.
    pub outcome: Option<CacheOutcome>,
}

impl Served {
    fn new(body: Body, outcome: CacheOutcome) -> Served {
        Served {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            outcome: Some(outcome),
        }
    }

    fn set(&mut self, name: header::HeaderName, value: &str) {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
    }

    fn set_digest(&mut self, digest: &Digest) {
        let d = digest.to_string();
        self.set(header::HeaderName::from_static("docker-content-digest"), &d);
        self.set(header::ETAG, &format!("\"{d}\""));
    }

    fn blob_headers(&mut self, digest: &Digest, len: Option<u64>) {
        self.set(header::CONTENT_TYPE, "application/octet-stream");
        self.set(header::ACCEPT_RANGES, "bytes");
        if let Some(len) = len {
            self.set(header::CONTENT_LENGTH, &len.to_string());
        }
        self.set_digest(digest);
    }
}

/// The facade the handlers call.
pub struct PullThrough {
    store: Arc<dyn ContentStore>,
    index: Index,
    blobs: Arc<BlobDownloads>,
    manifests: Arc<Manifests>,
    tags: Tags,
    referrers: Arc<Referrers>,
    visibility: Visibility,
    misses: Arc<Misses>,
    tiers: Vec<Arc<dyn Tier>>,
    metrics: Arc<Metrics>,
}

impl PullThrough {
    /// `private`: some upstream has credentials, so cached content may be
    /// private to the repositories that hold it. `tiers` are looked up
    /// after the local store, in order.
    pub fn new(
        store: BlobStore,
        index: Index,
        tiers: Vec<Arc<dyn Tier>>,
        private: bool,
        timings: &Timings,
        metrics: Arc<Metrics>,
    ) -> PullThrough {
        let store: Arc<dyn ContentStore> = Arc::new(store);
        let visibility = Visibility::new(index.clone(), private);
        let misses = Arc::new(Misses::new());
        PullThrough {
            blobs: BlobDownloads::new(
                Arc::clone(&store),
                index.clone(),
                tiers.clone(),
                visibility.clone(),
                Arc::clone(&misses),
                Arc::clone(&metrics),
                timings,
            ),
            manifests: Arc::new(Manifests::new(
                Arc::clone(&store),
                index.clone(),
                tiers.clone(),
                visibility.clone(),
                Arc::clone(&misses),
                Arc::clone(&metrics),
            )),
            tags: Tags::new(
                index.clone(),
                tiers.clone(),
                visibility.clone(),
                Arc::clone(&misses),
            ),
            referrers: Arc::new(Referrers::new(index.clone())),
            misses,
            tiers,
            index,
            store,
            visibility,
            metrics,
        }
    }

    /// Blob downloads running now.
    pub fn downloads_in_flight(&self) -> usize {
        self.blobs.in_flight()
    }

    /// Blob downloads running now, with their progress.
    pub fn downloads(&self) -> Vec<DownloadView> {
        self.blobs.in_flight_detail()
    }

    /// Whether new content could be written now (for readiness): a file
    /// really created (a read-only mount or a wrong owner shows here, mode
    /// bits do not), and an index that still writes.
    pub fn is_writable(&self) -> bool {
        self.store.check_writable().is_ok() && self.index.is_healthy()
    }

    /// How each further tier has been doing (for `/readyz`).
    pub fn tier_health(&self) -> Vec<(&'static str, TierHealth)> {
        self.tiers.iter().map(|t| (t.name(), t.health())).collect()
    }

    /// Persists what is batched in memory (access times, the index), before
    /// the process exits.
    pub fn persist(&self) {
        // Batched access times would otherwise die with the process, and
        // the next eviction would take the blobs used last for the oldest.
        self.store.usage().flush_access_times(&self.index);
        if let Err(e) = self.index.flush() {
            tracing::warn!(error = %e, "cannot flush the cache index");
        }
    }

    /// A blob's bytes, whole or the `range` asked for; a cached one's left
    /// to the connection to send when it offers `sendfile`.
    pub async fn blob(
        &self,
        at: &Target,
        digest: &Digest,
        range: Option<&str>,
        sendfile: Option<Sendfile>,
    ) -> Result<Served, FetchError> {
        if let Some(redirect) = self.blob_redirect(at, digest).await? {
            return Ok(redirect);
        }
        let source = match self.blobs.open(at, digest).await {
            Ok(source) => source,
            Err(FetchError::NoSpace(unclaimed)) => {
                return self.blob_passthrough(at, digest, unclaimed.claim()).await
            }
            Err(e) => return Err(e),
        };
        let outcome = source.outcome;
        self.admit_blob(at, digest).await?;
        self.count("blob", outcome);
        let metrics = Arc::clone(&self.metrics);
        let served = match source.total {
            Some(total) => match parse_range(range, total) {
                RangeRequest::Full => {
                    let mut s =
                        Served::new(body::blob(source, 0, None, metrics, sendfile), outcome);
                    s.blob_headers(digest, Some(total));
                    s
                }
                RangeRequest::Partial(span) => {
                    let body =
                        body::blob(source, span.start, Some(span.end + 1), metrics, sendfile);
                    let mut s = Served::new(body, outcome);
                    s.status = StatusCode::PARTIAL_CONTENT;
                    s.blob_headers(digest, Some(span.len()));
                    s.set(
                        header::CONTENT_RANGE,
                        &format!("bytes {}-{}/{total}", span.start, span.end),
                    );
                    s
                }
                RangeRequest::Unsatisfiable => {
                    return Err(FetchError::RangeNotSatisfiable { total })
                }
            },
            // The source did not say how long the blob is: stream it chunked.
            None => {
                let mut s = Served::new(body::blob(source, 0, None, metrics, sendfile), outcome);
                s.blob_headers(digest, None);
                s
            }
        };
        Ok(served)
    }

    /// A 307 to a presigned URL of a tier that redirects and holds the
    /// blob; only once the blob may be served under this repository (see
    /// `visibility`: content that came through upstream credentials is
    /// confirmed with the upstream first, and an error is the answer).
    async fn blob_redirect(
        &self,
        at: &Target,
        digest: &Digest,
    ) -> Result<Option<Served>, FetchError> {
        for tier in self.tiers.iter().filter(|t| t.redirects()) {
            let Some(url) = tier.presign(digest).await else {
                continue;
            };
            self.admit_blob(at, digest).await?;
            self.metrics
                .tier_redirects
                .with_label_values(&[tier.name()])
                .inc();
            self.count("blob", CacheOutcome::Hit);
            let mut s = Served::new(body::empty(), CacheOutcome::Hit);
            s.status = StatusCode::TEMPORARY_REDIRECT;
            s.set(header::LOCATION, url.as_str());
            s.set(header::CONTENT_LENGTH, "0");
            s.set_digest(digest);
            return Ok(Some(s));
        }
        Ok(None)
    }

    /// A blob's headers: from the cache, or from an upstream HEAD; never
    /// starts a download.
    pub async fn blob_head(&self, at: &Target, digest: &Digest) -> Result<Served, FetchError> {
        let (len, outcome) = match self.blobs.open_cached(digest).await? {
            Some(source) => {
                self.admit_blob(at, digest).await?;
                (source.total, CacheOutcome::Hit)
            }
            None => {
                let reference = digest.to_string();
                self.misses.check(at, &reference).await?;
                let head = at
                    .upstream
                    .head_blob(&at.repo, digest)
                    .await
                    .map_err(FetchError::from);
                if let Err(e) = &head {
                    self.misses.note(at, &reference, e).await;
                }
                (head?, CacheOutcome::Miss)
            }
        };
        let mut s = Served::new(body::empty(), outcome);
        s.blob_headers(digest, len);
        Ok(s)
    }

    /// A manifest by tag or digest, byte-exact with its media type.
    pub async fn manifest(
        &self,
        at: &Target,
        reference: &Reference,
        client_accept: Option<&str>,
        head: bool,
    ) -> Result<Served, FetchError> {
        let list = AcceptList::from_client(client_accept);
        let accept = list.header();
        let (kind, (manifest, outcome)) = match reference {
            Reference::Digest(digest) => {
                let found = self.manifests.by_digest(at, digest, &accept).await?;
                // A tag is recorded per upstream and repository, so what it
                // resolved to needs no check; a digest may have been cached
                // through another.
                self.visibility
                    .admit(&at.upstream, &at.repo, digest, || async {
                        at.upstream
                            .head_manifest(&at.repo, reference, &accept)
                            .await
                            .map(|_| ())
                    })
                    .await?;
                ("manifest", found)
            }
            Reference::Tag(tag) => {
                let resolved = self.tags.resolve(&self.manifests, at, tag, list).await?;
                // The upstream just answered for this tag: the moment to
                // warm its signatures too, while it is reachable.
                let asked_upstream =
                    matches!(resolved.1, CacheOutcome::Miss | CacheOutcome::Revalidated);
                if at.upstream.prefetch_referrers() && asked_upstream {
                    Referrers::prefetch(
                        &self.referrers,
                        &self.manifests,
                        &self.blobs,
                        at,
                        &resolved.0.digest,
                    );
                }
                ("tag", resolved)
            }
        };
        self.store.usage().touch(manifest.digest.hex());
        self.count(kind, outcome);
        let body = if head {
            body::empty()
        } else {
            let source = if outcome == CacheOutcome::Miss {
                "upstream"
            } else {
                "cache"
            };
            self.metrics
                .bytes_served
                .with_label_values(&[source])
                .inc_by(manifest.bytes.len() as u64);
            body::full(manifest.bytes.clone())
        };
        let mut s = Served::new(body, outcome);
        s.set(header::CONTENT_TYPE, &manifest.media_type);
        s.set(header::CONTENT_LENGTH, &manifest.bytes.len().to_string());
        s.set_digest(&manifest.digest);
        Ok(s)
    }

    /// The referrers of `subject`: an image index of the manifests that name
    /// it as their subject, filtered by `artifact_type` when asked.
    pub async fn referrers(
        &self,
        at: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Served, FetchError> {
        let answer = self
            .referrers
            .list(&self.manifests, at, subject, artifact_type)
            .await?;
        self.count("referrers", answer.outcome);
        let mut s = Served::new(body::full(answer.bytes.clone()), answer.outcome);
        s.set(header::CONTENT_TYPE, referrers::INDEX);
        s.set(header::CONTENT_LENGTH, &answer.bytes.len().to_string());
        if answer.filtered {
            s.set(
                header::HeaderName::from_static("oci-filters-applied"),
                "artifactType",
            );
        }
        Ok(s)
    }

    /// `tags/list`, passed through with its pagination query and `Link`.
    pub async fn tags_list(&self, at: &Target, query: Option<&str>) -> Result<Served, FetchError> {
        let (bytes, upstream_headers) = at.upstream.tags_list(&at.repo, query).await?;
        let mut s = Served::new(body::full(bytes), CacheOutcome::Miss);
        s.outcome = None;
        s.set(header::CONTENT_TYPE, "application/json");
        if let Some(link) = upstream_headers.get(header::LINK) {
            s.headers.insert(header::LINK, link.clone());
        }
        Ok(s)
    }

    fn count(&self, kind: &str, outcome: CacheOutcome) {
        self.metrics
            .cache_lookups
            .with_label_values(&[kind, outcome.as_str()])
            .inc();
    }

    /// Checks that a blob, however obtained, may be served under the
    /// target (see `visibility`), confirming with a blob HEAD when unknown.
    async fn admit_blob(&self, at: &Target, digest: &Digest) -> Result<(), FetchError> {
        Ok(self
            .visibility
            .admit(&at.upstream, &at.repo, digest, || async {
                at.upstream.head_blob(&at.repo, digest).await.map(|_| ())
            })
            .await?)
    }

    /// Streams the blob from its source straight to this client, for when
    /// the cache cannot hold it.
    async fn blob_passthrough(
        &self,
        at: &Target,
        digest: &Digest,
        claimed: Option<SourceBody>,
    ) -> Result<Served, FetchError> {
        let source = match claimed {
            Some(source) => source,
            None => SourceBody::from_upstream(at.upstream.get_blob(&at.repo, digest).await?),
        };
        self.metrics.cache_bypasses.inc();
        self.count("blob", CacheOutcome::Bypass);
        let len = source.len;
        let body = body::verified_passthrough(source, digest.clone(), Arc::clone(&self.metrics));
        let mut s = Served::new(body, CacheOutcome::Bypass);
        s.set(header::CONTENT_TYPE, "application/octet-stream");
        if let Some(len) = len {
            s.set(header::CONTENT_LENGTH, &len.to_string());
        }
        s.set_digest(digest);
        Ok(s)
    }
}
