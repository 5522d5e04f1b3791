//! The registry endpoints: `/v2/`, manifests, blobs, tags, and health.

use super::body::{self, Body};
use super::error::{ApiError, Subject};
use super::range::{parse_range, RangeRequest};
use super::App;
use crate::cache::CacheOutcome;
use crate::fetch::FetchError;
use crate::manifests::{accept_or_default, Manifest};
use crate::metrics::metrics;
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::Upstream;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use std::sync::Arc;

/// What a handler reports for the access log besides the response.
pub struct Handled {
    pub response: Response<Body>,
    pub outcome: Option<CacheOutcome>,
}

impl From<Response<Body>> for Handled {
    fn from(response: Response<Body>) -> Self {
        Handled {
            response,
            outcome: None,
        }
    }
}

pub fn base() -> Response<Body> {
    body::json_response(StatusCode::OK, "{}".to_owned())
}

pub async fn manifest(
    app: &App,
    upstream: &Arc<Upstream>,
    method: &Method,
    headers: &HeaderMap,
    name: &RepoName,
    reference: &Reference,
) -> Result<Handled, ApiError> {
    let accept = accept_or_default(header_str(headers, header::ACCEPT).as_deref());
    let (kind, (manifest, outcome)) = match reference {
        Reference::Digest(digest) => (
            "manifest",
            app.manifests
                .by_digest(upstream, name, digest, &accept)
                .await?,
        ),
        Reference::Tag(tag) => (
            "tag",
            app.manifests.by_tag(upstream, name, tag, &accept).await?,
        ),
    };
    // A tag is recorded per upstream and repository, so what it resolved
    // to needs no check; a digest may have been cached through another.
    if let Reference::Digest(digest) = reference {
        app.visibility
            .admit(upstream, name, digest, outcome, || async {
                upstream
                    .head_manifest(name, reference, &accept)
                    .await
                    .map(|_| ())
            })
            .await
            .map_err(|e| ApiError::upstream(e, Subject::Manifest))?;
    }
    app.blobs.store().usage().touch(manifest.digest.hex());
    let m = metrics();
    m.cache_lookups
        .with_label_values(&[kind, outcome.as_str()])
        .inc();
    if method != Method::HEAD {
        let source = if outcome == CacheOutcome::Miss {
            "upstream"
        } else {
            "cache"
        };
        m.bytes_served
            .with_label_values(&[source])
            .inc_by(manifest.bytes.len() as u64);
    }
    Ok(Handled {
        response: manifest_response(&manifest, method == Method::HEAD),
        outcome: Some(outcome),
    })
}

fn manifest_response(m: &Manifest, head: bool) -> Response<Body> {
    let body = if head {
        body::empty()
    } else {
        body::full(m.bytes.clone())
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, &m.media_type);
    set(h, header::CONTENT_LENGTH, &m.bytes.len().to_string());
    set_digest(h, &m.digest);
    resp
}

pub async fn blob(
    app: &App,
    upstream: &Arc<Upstream>,
    method: &Method,
    headers: &HeaderMap,
    name: &RepoName,
    digest: &Digest,
) -> Result<Handled, ApiError> {
    if method == Method::HEAD {
        return blob_head(app, upstream, name, digest).await;
    }
    let source = match app.blobs.open(upstream, name, digest).await {
        Ok(source) => source,
        Err(FetchError::NoSpace(unclaimed)) => {
            return blob_passthrough(upstream, name, digest, unclaimed.claim()).await
        }
        Err(e) => return Err(e.into()),
    };
    let outcome = source.outcome;
    admit_blob(app, upstream, name, digest, outcome).await?;
    metrics()
        .cache_lookups
        .with_label_values(&["blob", outcome.as_str()])
        .inc();
    let range = header_str(headers, header::RANGE);
    let mut resp = match source.total {
        Some(total) => match parse_range(range.as_deref(), total) {
            RangeRequest::Full => {
                let mut resp = Response::new(body::blob(source, 0, None));
                set(
                    resp.headers_mut(),
                    header::CONTENT_LENGTH,
                    &total.to_string(),
                );
                resp
            }
            RangeRequest::Partial(span) => {
                let mut resp = Response::new(body::blob(source, span.start, Some(span.end + 1)));
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = resp.headers_mut();
                set(h, header::CONTENT_LENGTH, &span.len().to_string());
                set(
                    h,
                    header::CONTENT_RANGE,
                    &format!("bytes {}-{}/{total}", span.start, span.end),
                );
                resp
            }
            RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { total }),
        },
        // The upstream did not say how long the blob is: stream it chunked.
        None => Response::new(body::blob(source, 0, None)),
    };
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    set_digest(h, digest);
    Ok(Handled {
        response: resp,
        outcome: Some(outcome),
    })
}

/// Streams the blob from the upstream straight to this client, for when the
/// cache cannot hold it.
async fn blob_passthrough(
    upstream: &Arc<Upstream>,
    name: &RepoName,
    digest: &Digest,
    fetched: Option<reqwest::Response>,
) -> Result<Handled, ApiError> {
    let resp = match fetched {
        Some(resp) => resp,
        None => upstream
            .get_blob(name, digest)
            .await
            .map_err(|e| ApiError::upstream(e, Subject::Blob))?,
    };
    let total = resp.content_length();
    metrics().cache_bypasses.inc();
    metrics()
        .cache_lookups
        .with_label_values(&["blob", "bypass"])
        .inc();
    let mut response = Response::new(body::verified_passthrough(
        resp.bytes_stream(),
        digest.clone(),
    ));
    let h = response.headers_mut();
    if let Some(total) = total {
        set(h, header::CONTENT_LENGTH, &total.to_string());
    }
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set_digest(h, digest);
    Ok(Handled {
        response,
        outcome: Some(CacheOutcome::Bypass),
    })
}

/// Checks that a blob obtained as `outcome` may be served under `name`
/// (see `visibility`), confirming with a blob HEAD when it is not known.
async fn admit_blob(
    app: &App,
    upstream: &Upstream,
    name: &RepoName,
    digest: &Digest,
    outcome: CacheOutcome,
) -> Result<(), ApiError> {
    app.visibility
        .admit(upstream, name, digest, outcome, || async {
            upstream.head_blob(name, digest).await.map(|_| ())
        })
        .await
        .map_err(|e| ApiError::upstream(e, Subject::Blob))
}

/// HEAD answers from the cache, or asks the upstream with HEAD; it never
/// starts a download.
async fn blob_head(
    app: &App,
    upstream: &Arc<Upstream>,
    name: &RepoName,
    digest: &Digest,
) -> Result<Handled, ApiError> {
    let cached = app
        .blobs
        .store()
        .open_blob(digest)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (size, outcome) = match cached {
        Some((_, len)) => {
            admit_blob(app, upstream, name, digest, CacheOutcome::Hit).await?;
            (Some(len), CacheOutcome::Hit)
        }
        None => (
            upstream
                .head_blob(name, digest)
                .await
                .map_err(|e| ApiError::upstream(e, Subject::Blob))?,
            CacheOutcome::Miss,
        ),
    };
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    if let Some(size) = size {
        set(h, header::CONTENT_LENGTH, &size.to_string());
    }
    set_digest(h, digest);
    Ok(Handled {
        response: resp,
        outcome: Some(outcome),
    })
}

pub async fn tags_list(
    upstream: &Arc<Upstream>,
    name: &RepoName,
    query: Option<&str>,
) -> Result<Handled, ApiError> {
    let (bytes, upstream_headers) = upstream
        .tags_list(name, query)
        .await
        .map_err(|e| ApiError::upstream(e, Subject::Repository))?;
    let mut resp = Response::new(body::full(bytes));
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/json");
    if let Some(link) = upstream_headers.get(header::LINK) {
        h.insert(header::LINK, link.clone());
    }
    Ok(resp.into())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    // Several Accept headers are one list.
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join(", "))
    }
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn set_digest(h: &mut HeaderMap, digest: &Digest) {
    let d = digest.to_string();
    set(
        h,
        header::HeaderName::from_static("docker-content-digest"),
        &d,
    );
    set(h, header::ETAG, &format!("\"{d}\""));
}
