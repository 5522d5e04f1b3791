//! The registry endpoints: `/v2/`, manifests, blobs and tags, answered by
//! the pull-through core; a handler only turns its answer into HTTP.

use super::body::{self, Body};
use super::error::{ApiError, Origin, Subject};
use super::App;
use crate::fetch::{CacheOutcome, FetchError, Sendfile, Served, Target};
use crate::oci::{Digest, Reference};
use http::{header, HeaderMap, Method, Response, StatusCode};
use std::sync::atomic::Ordering;

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

impl From<Served> for Handled {
    fn from(served: Served) -> Self {
        let mut response = Response::new(served.body);
        *response.status_mut() = served.status;
        *response.headers_mut() = served.headers;
        Handled {
            response,
            outcome: served.outcome,
        }
    }
}

pub fn base() -> Response<Body> {
    body::json_response(StatusCode::OK, "{}".to_owned())
}

pub async fn manifest(
    app: &App,
    at: &Target,
    method: &Method,
    headers: &HeaderMap,
    reference: &Reference,
) -> Result<Handled, ApiError> {
    let accept = header_list(headers, header::ACCEPT);
    let head = method == Method::HEAD;
    app.core
        .manifest(at, reference, accept.as_deref(), head)
        .await
        .map(Handled::from)
        .map_err(|e| fetch_error(at, e, Subject::Manifest))
}

pub async fn blob(
    app: &App,
    at: &Target,
    method: &Method,
    headers: &HeaderMap,
    digest: &Digest,
    sendfile: Option<Sendfile>,
) -> Result<Handled, ApiError> {
    let served = if method == Method::HEAD {
        app.core.blob_head(at, digest).await
    } else {
        let range = header_list(headers, header::RANGE);
        app.core.blob(at, digest, range.as_deref(), sendfile).await
    };
    served
        .map(Handled::from)
        .map_err(|e| fetch_error(at, e, Subject::Blob))
}

pub async fn tags_list(app: &App, at: &Target, query: Option<&str>) -> Result<Handled, ApiError> {
    app.core
        .tags_list(at, query)
        .await
        .map(Handled::from)
        .map_err(|e| fetch_error(at, e, Subject::Repository))
}

pub async fn referrers(
    app: &App,
    at: &Target,
    subject: &Digest,
    query: Option<&str>,
) -> Result<Handled, ApiError> {
    let artifact_type = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v.into_owned())
    });
    app.core
        .referrers(at, subject, artifact_type.as_deref())
        .await
        .map(Handled::from)
        .map_err(|e| fetch_error(at, e, Subject::Manifest))
}

fn fetch_error(at: &Target, source: FetchError, subject: Subject) -> ApiError {
    let limits = &at.upstream.rate_limit;
    // Seen headers (a limit) and nothing left: the pull limit, not a
    // plain refusal.
    let pull_limit_used_up =
        limits.limit.load(Ordering::Relaxed) > 0 && limits.remaining.load(Ordering::Relaxed) == 0;
    ApiError::Fetch {
        source,
        subject,
        origin: Some(Origin {
            registry: at.upstream.name().to_owned(),
            pull_limit_used_up,
        }),
    }
}

/// A header's values as one list (several `Accept` headers are one list).
fn header_list(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
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
