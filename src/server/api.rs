//! The admin API's reads (`/api/v1/…`): what the page shows, as JSON.
//! Counters come from the same metric handles `/metrics` renders, so the
//! two always agree; cache contents come from the core's inventory.

use super::activity::{Pull, TopRepository, Totals, UpstreamFailure, TOP_REPOSITORIES};
use super::body::{self, Body};
use super::error::{ApiError, Subject};
use super::routes::ApiRoute;
use super::App;
use crate::admin::TagRow;
use crate::fetch::FetchError;
use crate::oci::RepoName;
use http::{Response, StatusCode};
use prometheus::core::Collector;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub cache: CacheStatus,
    pub lookups: Lookups,
    pub bytes_served: BytesServed,
    /// The same counters' growth over the last hour (to within a minute).
    pub last_hour: Totals,
    pub downloads_in_flight: u64,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Serialize)]
pub struct CacheStatus {
    /// Bytes of complete content now, as the budget counts them.
    pub bytes: u64,
    /// The budget; `None` when unbounded.
    pub max_size: Option<u64>,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub repositories: u64,
    /// Unix seconds of the least recently used entry.
    pub oldest_access: Option<u64>,
}

/// `pullthrough_cache_lookups_total` summed over kinds: `hits` and
/// `misses` are its `hit` and `miss` results, `by_result` every result.
#[derive(Serialize)]
pub struct Lookups {
    pub hits: u64,
    pub misses: u64,
    pub by_result: BTreeMap<String, u64>,
}

/// `pullthrough_served_bytes_total` by source.
#[derive(Serialize)]
pub struct BytesServed {
    pub cache: u64,
    pub upstream: u64,
}

#[derive(Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// Whether calls fail fast after repeated outages (the breaker).
    pub circuit_open: bool,
    /// The upstream's last `ratelimit-*` figures; `None` until it sent any.
    pub ratelimit_limit: Option<u64>,
    pub ratelimit_remaining: Option<u64>,
    pub last_error: Option<UpstreamFailure>,
}

#[derive(Serialize)]
struct Repository {
    upstream: String,
    repository: String,
    tags: u64,
    /// Bytes of the repository's cached images (shared layers counted once
    /// per tag, as `cache ls` does).
    size: u64,
    last_used: Option<u64>,
}

pub async fn answer(
    app: &App,
    route: ApiRoute,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    match route {
        ApiRoute::Check => super::warm::check_answer(app, query).await,
        ApiRoute::Status => json(&status(app).await?),
        ApiRoute::Upstreams => json(&upstreams(app)),
        ApiRoute::Repositories => json(&repositories(&tags(app, None).await?)),
        ApiRoute::Downloads => json(&downloads(app)),
        ApiRoute::AllTags => json(&tags(app, None).await?),
        ApiRoute::Pulls => json(&pulls(app)),
        ApiRoute::WarmSets => json(&warm_sets(app)),
        ApiRoute::Tag { .. }
        | ApiRoute::Digest { .. }
        | ApiRoute::Repository { .. }
        | ApiRoute::Import
        | ApiRoute::Warm => Err(ApiError::MethodNotAllowed),
        ApiRoute::RepositoryTags { name } => {
            let rows = tags(app, Some(&name)).await?;
            if rows.is_empty() {
                return Err(ApiError::Route(super::routes::RouteError::NotFound));
            }
            json(&rows)
        }
    }
}

/// `Authorization: Bearer <admin token>`, compared by hash in constant
/// time. No token configured: nobody is an admin.
pub fn is_admin(app: &App, headers: &http::HeaderMap) -> bool {
    app.admin_token
        .as_ref()
        .is_some_and(|want| bearer_matches(headers, want))
}

/// The admin token, or the read token the mirror left for `cache ls|stats`:
/// either opens the reads.
pub fn may_read(app: &App, headers: &http::HeaderMap) -> bool {
    use sha2::Digest as _;
    is_admin(app, headers)
        || app.cli_read_token.as_ref().is_some_and(|token| {
            let want: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            bearer_matches(headers, &want)
        })
}

fn bearer_matches(headers: &http::HeaderMap, want: &[u8; 32]) -> bool {
    use sha2::Digest as _;
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got: [u8; 32] = sha2::Sha256::digest(given.trim().as_bytes()).into();
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[derive(Serialize)]
struct Purged {
    /// (upstream, repository) pairs that held the tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_tags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    freed_bytes: Option<u64>,
}

/// The admin actions (the caller checked the token). `?upstream=` limits
/// a tag purge to one registry.
pub async fn act(
    app: &App,
    route: ApiRoute,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::Route(super::routes::RouteError::NotFound);
    match route {
        ApiRoute::Tag { name, tag } => {
            let upstream = query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "upstream")
                    .map(|(_, v)| v.into_owned())
            });
            let removed = app
                .core
                .purge_tag(upstream, name.as_str().to_owned(), tag.as_str().to_owned())
                .await
                .map_err(cache_error)?;
            if removed == 0 {
                return Err(not_found());
            }
            tracing::info!(repository = %name, tag = %tag.as_str(), "admin: purged tag");
            json(&Purged {
                removed_tags: Some(removed),
                freed_bytes: None,
            })
        }
        ApiRoute::Digest { digest } => {
            let freed = app.core.purge_digest(&digest).await.map_err(cache_error)?;
            let freed = freed.ok_or_else(not_found)?;
            tracing::info!(digest = %digest, bytes = freed, "admin: purged content");
            json(&Purged {
                removed_tags: None,
                freed_bytes: Some(freed),
            })
        }
        ApiRoute::Repository { name } => {
            let upstream = query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "upstream")
                    .map(|(_, v)| v.into_owned())
            });
            purge_repository(app, &name, upstream).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Forgets every cached tag of a repository (of one upstream with
/// `upstream`); its content goes with eviction or by digest.
async fn purge_repository(
    app: &App,
    name: &RepoName,
    upstream: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let rows = tags(app, Some(name)).await?;
    let mut removed = 0;
    for row in rows
        .into_iter()
        .filter(|r| upstream.as_ref().is_none_or(|u| *u == r.upstream))
    {
        removed += app
            .core
            .purge_tag(Some(row.upstream), row.repository, row.tag)
            .await
            .map_err(cache_error)?;
    }
    if removed == 0 {
        return Err(ApiError::Route(super::routes::RouteError::NotFound));
    }
    tracing::info!(repository = %name, tags = removed, "admin: purged repository");
    json(&Purged {
        removed_tags: Some(removed),
        freed_bytes: None,
    })
}

#[derive(Serialize)]
struct Download {
    digest: String,
    upstream: Option<String>,
    repository: Option<String>,
    started: Option<u64>,
    bytes: u64,
    total: Option<u64>,
}

/// `/api/v1/downloads`: blob downloads in flight, oldest first.
pub fn downloads(app: &App) -> Vec<impl Serialize> {
    app.core
        .downloads()
        .into_iter()
        .map(|d| Download {
            digest: d.digest.to_string(),
            upstream: d.upstream,
            repository: d.repository,
            started: d.started,
            bytes: d.written,
            total: d.total,
        })
        .collect()
}

#[derive(Serialize)]
pub struct Pulls {
    pub recent: Vec<Pull>,
    pub top_repositories: Vec<TopRepository>,
}

/// One `[[warm]]` set as the page shows it: the figures are the ones its
/// metrics carry (`pullthrough_warm_set_*`).
#[derive(Serialize)]
pub struct WarmSetStatus {
    pub name: String,
    pub images: Vec<String>,
    pub platforms: String,
    pub every_seconds: u64,
    pub pin: bool,
    /// Images fully cached at the last refresh.
    pub ready: u64,
    /// Unix seconds of the last refresh; `None` before the first ends.
    pub last_refresh: Option<u64>,
    pub pinned_bytes: u64,
}

/// `/api/v1/warm/sets`.
pub fn warm_sets(app: &App) -> Vec<WarmSetStatus> {
    let m = &app.metrics;
    let get = |g: &prometheus::IntGaugeVec, set: &str| {
        u64::try_from(g.with_label_values(&[set]).get()).unwrap_or(0)
    };
    app.warm_sets
        .iter()
        .map(|set| WarmSetStatus {
            name: set.name.clone(),
            images: set.images.iter().map(ToString::to_string).collect(),
            platforms: set.platforms.to_string(),
            every_seconds: set.every.as_secs(),
            pin: set.pin,
            ready: get(&m.warm_images_ready, &set.name),
            last_refresh: Some(get(&m.warm_last_refresh, &set.name)).filter(|&t| t > 0),
            pinned_bytes: get(&m.warm_pinned_bytes, &set.name),
        })
        .collect()
}

/// `/api/v1/pulls`: the latest manifest requests by tag, newest first,
/// and the repositories pulled most since start.
pub fn pulls(app: &App) -> Pulls {
    Pulls {
        recent: app.activity.recent_pulls(),
        top_repositories: app.activity.top_repositories(TOP_REPOSITORIES),
    }
}

pub async fn status(app: &App) -> Result<Status, ApiError> {
    let (stats, bytes) = app.core.cache_stats().await.map_err(cache_error)?;
    let m = &app.metrics;
    let by_result = sum_by_label(m.cache_lookups.collect(), "result");
    let served = sum_by_label(m.bytes_served.collect(), "source");
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.started.elapsed().as_secs(),
        cache: CacheStatus {
            bytes,
            max_size: app.max_size,
            blobs: stats.blobs,
            manifests: stats.manifests,
            tags: stats.tags,
            repositories: stats.repositories,
            oldest_access: stats.oldest_access,
        },
        lookups: Lookups {
            hits: by_result.get("hit").copied().unwrap_or(0),
            misses: by_result.get("miss").copied().unwrap_or(0),
            by_result,
        },
        bytes_served: BytesServed {
            cache: served.get("cache").copied().unwrap_or(0),
            upstream: served.get("upstream").copied().unwrap_or(0),
        },
        last_hour: app
            .activity
            .last_hour(std::time::Instant::now(), Totals::of(m)),
        downloads_in_flight: app.core.downloads_in_flight() as u64,
        upstreams: upstreams(app),
    })
}

pub fn upstreams(app: &App) -> Vec<UpstreamStatus> {
    let seen = |v: u64| (v > 0).then_some(v);
    app.upstreams()
        .iter()
        .map(|u| UpstreamStatus {
            name: u.name().to_owned(),
            circuit_open: u.is_circuit_open(),
            ratelimit_limit: seen(u.rate_limit.limit.load(Ordering::Relaxed)),
            // Remaining 0 with a known limit is real: the limit is spent.
            ratelimit_remaining: seen(u.rate_limit.limit.load(Ordering::Relaxed))
                .map(|_| u.rate_limit.remaining.load(Ordering::Relaxed)),
            last_error: app.activity.last_failure(u.name()),
        })
        .collect()
}

pub async fn tags(app: &App, name: Option<&RepoName>) -> Result<Vec<TagRow>, ApiError> {
    let repo = name.map(|n| n.as_str().to_owned());
    app.core.cached_tags(repo).await.map_err(cache_error)
}

/// One row per (upstream, repository), from the tag rows (sorted by them).
fn repositories(rows: &[TagRow]) -> Vec<Repository> {
    let mut out: Vec<Repository> = Vec::new();
    for row in rows {
        match out.last_mut() {
            Some(r) if r.upstream == row.upstream && r.repository == row.repository => {
                r.tags += 1;
                r.size += row.size;
                r.last_used = r.last_used.max(row.last_used);
            }
            _ => out.push(Repository {
                upstream: row.upstream.clone(),
                repository: row.repository.clone(),
                tags: 1,
                size: row.size,
                last_used: row.last_used,
            }),
        }
    }
    out
}

/// A counter vector's values summed by one label, read from the same
/// collectors `/metrics` gathers.
pub(super) fn sum_by_label(
    families: Vec<prometheus::proto::MetricFamily>,
    label: &str,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for family in families {
        for metric in family.get_metric() {
            let Some(value) = metric
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_owned())
            else {
                continue;
            };
            *sums.entry(value).or_insert(0) += metric.get_counter().get_value() as u64;
        }
    }
    sums
}

fn cache_error(e: crate::cache::CacheError) -> ApiError {
    ApiError::Fetch {
        source: FetchError::from(e),
        subject: Subject::Repository,
        origin: None,
    }
}

fn json<T: Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    let text = serde_json::to_string(value).map_err(|e| cache_error(e.into()))?;
    let mut resp = body::json_response(StatusCode::OK, text);
    // Live figures: a cached copy would disagree with `/metrics`.
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// `POST /api/v1/import` (the caller checked the token): the bundle in the
/// body is verified as it streams in and added to the running cache; the
/// answer is the import report `pullthrough import` prints.
pub async fn import(app: &App, body: hyper::body::Incoming) -> Result<Response<Body>, ApiError> {
    let upstreams = app
        .upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect();
    let report = app
        .core
        .import_bundle(super::upload::reader(body), upstreams)
        .await?;
    json(&report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_sum_over_kinds() {
        let m = crate::metrics::Metrics::new();
        m.cache_lookups
            .with_label_values(&["blob", "hit"])
            .inc_by(2);
        m.cache_lookups.with_label_values(&["tag", "hit"]).inc();
        m.cache_lookups.with_label_values(&["tag", "miss"]).inc();
        let sums = sum_by_label(m.cache_lookups.collect(), "result");
        assert_eq!(sums.get("hit"), Some(&3));
        assert_eq!(sums.get("miss"), Some(&1));
    }
}
