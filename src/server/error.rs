//! The one place where errors from every layer become HTTP statuses and
//! OCI error codes. Messages name the fault (ours, the upstream's, the
//! request's) and never carry secrets.

use super::body::{self, Body};
use super::routes::RouteError;
use crate::fetch::FetchError;
use crate::oci::{ErrorBody, ErrorCode};
use crate::upstream::UpstreamError;
use http::{header, HeaderValue, Response, StatusCode};

/// What kind of object a request was about, to pick `*_UNKNOWN` codes.
#[derive(Clone, Copy, Debug)]
pub enum Subject {
    Manifest,
    Blob,
    Repository,
}

/// Which upstream a failed fetch went to, and what its rate-limit headers
/// last said, so an upstream 429 can be told in words.
#[derive(Debug, Clone)]
pub struct Origin {
    pub registry: String,
    /// The upstream announced a limit and none is left.
    pub pull_limit_used_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("this is a read-only mirror")]
    ReadOnly,
    #[error("authentication required")]
    Unauthorized,
    /// The admin API without (or with a wrong) admin token.
    #[error("this needs the mirror's admin token (Authorization: Bearer <admin token>)")]
    AdminTokenRequired,
    #[error("a search needs q=<term> (1 to 255 characters), and numbers for n and page")]
    SearchQuery,
    /// `/v1/search` with no upstream that has a search API.
    #[error("no configured registry has a search API (Docker Hub's is used when docker.io is configured)")]
    SearchUnsupported,
    #[error("the mirror is serving as many requests as it may; retry shortly")]
    Busy,
    #[error("too many failed authentication attempts from this address; retry later")]
    TooManyAuthFailures,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("registry {0:?} is not configured on this mirror")]
    UnknownRegistry(String),
    #[error("this host name serves {serves}; ns={ns} asks for another registry")]
    HostServesAnotherRegistry { serves: String, ns: String },
    #[error("too many requests from this address ({} limit of this mirror); retry after {} s", .0.limit.as_str(), .0.retry_after)]
    ClientLimited(super::limits::Refused),
    #[error("repository {0:?} is not allowed on this mirror")]
    Denied(String),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// A warm request naming no image, or one that does not parse.
    #[error("{0}")]
    InvalidImage(String),
    #[error("{source}")]
    Fetch {
        source: FetchError,
        subject: Subject,
        origin: Option<Origin>,
    },
}

impl ApiError {
    #[cfg(test)]
    fn upstream(source: UpstreamError, subject: Subject) -> ApiError {
        ApiError::Fetch {
            source: FetchError::Upstream(source),
            subject,
            origin: None,
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Route(RouteError::NotFound) => {
                (StatusCode::NOT_FOUND, ErrorCode::Unsupported)
            }
            ApiError::Route(RouteError::Name(_)) => {
                (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid)
            }
            // As the reference registry and the conformance suite have it:
            // a reference that is no valid tag names no manifest.
            ApiError::Route(RouteError::Reference(_)) => {
                (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
            }
            ApiError::Route(RouteError::Digest(_)) => {
                (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
            }
            ApiError::ReadOnly | ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            ApiError::UnknownRegistry(_) | ApiError::HostServesAnotherRegistry { .. } => {
                (StatusCode::NOT_FOUND, ErrorCode::NameUnknown)
            }
            ApiError::Unauthorized | ApiError::AdminTokenRequired => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
            }
            ApiError::SearchUnsupported => (StatusCode::NOT_FOUND, ErrorCode::Unsupported),
            ApiError::SearchQuery => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::TooManyAuthFailures => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            ApiError::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            ApiError::InvalidImage(_) => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            ApiError::ClientLimited(_) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            ApiError::Bundle(e) => bundle_status(e),
            ApiError::Fetch {
                source, subject, ..
            } => fetch_status(source, *subject),
        }
    }

    fn upstream_error(&self) -> Option<&UpstreamError> {
        match self {
            ApiError::Fetch {
                source: FetchError::Upstream(source),
                ..
            } => Some(source),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let message = match (code, status) {
            (ErrorCode::ManifestUnknown, _) => "manifest unknown".to_owned(),
            (ErrorCode::BlobUnknown, _) => "blob unknown to registry".to_owned(),
            (ErrorCode::NameUnknown, StatusCode::NOT_FOUND) if self.upstream_error().is_some() => {
                "repository name not known to registry".to_owned()
            }
            (ErrorCode::TooManyRequests, _) if self.upstream_error().is_some() => {
                self.upstream_429_message()
            }
            _ => self.to_string(),
        };
        let detail = match &self {
            ApiError::Fetch { .. } => "",
            other => match other {
                ApiError::Route(e) => route_detail(e),
                _ => "",
            },
        };
        let json = ErrorBody::new(code, &message, detail).to_json();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut resp = body::json_response(status, json);
        let headers = resp.headers_mut();
        if let ApiError::Fetch {
            source: FetchError::RangeNotSatisfiable { total },
            ..
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        if let Some(UpstreamError::Status {
            retry_after: Some(retry),
            ..
        }) = self.upstream_error()
        {
            if let Ok(v) = HeaderValue::from_str(retry) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(self, ApiError::Busy) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::TooManyAuthFailures) {
            let wait = super::client_auth::FAILURE_WINDOW.as_secs().to_string();
            if let Ok(v) = HeaderValue::from_str(&wait) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        if let ApiError::ClientLimited(refused) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(refused.retry_after));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pullthrough\""),
            );
        }
        if matches!(self, ApiError::AdminTokenRequired) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pullthrough-admin\""),
            );
        }
        if matches!(self, ApiError::ReadOnly | ApiError::MethodNotAllowed) {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

impl ApiError {
    /// An upstream 429 in words a person acts on: whose limit, and when to
    /// come back.
    fn upstream_429_message(&self) -> String {
        let (origin, retry_after) = match self {
            ApiError::Fetch {
                source: FetchError::Upstream(UpstreamError::Status { retry_after, .. }),
                origin,
                ..
            } => (origin.as_ref(), retry_after.as_deref()),
            _ => (None, None),
        };
        let who = match origin.map(|o| o.registry.as_str()) {
            Some("docker.io") => "Docker Hub".to_owned(),
            Some(name) => name.to_owned(),
            None => "the upstream registry".to_owned(),
        };
        let when = retry_after.map_or_else(|| "a while".to_owned(), describe_retry_after);
        if origin.is_some_and(|o| o.pull_limit_used_up) {
            format!("{who}'s pull limit for this mirror is used up; retry after {when}")
        } else {
            format!("{who} is refusing this mirror's requests for now (too many requests); retry after {when}")
        }
    }
}

/// `Retry-After` as a person reads it: seconds in the largest whole unit,
/// an HTTP date as given.
fn describe_retry_after(value: &str) -> String {
    let Ok(secs) = value.trim().parse::<u64>() else {
        return value.to_owned();
    };
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        0..=119 => plural(secs, "second"),
        120..=7199 => plural(secs.div_ceil(60), "minute"),
        _ => plural(secs.div_ceil(3600), "hour"),
    }
}

fn route_detail(e: &RouteError) -> &'static str {
    match e {
        RouteError::NotFound => "",
        RouteError::Name(_) => {
            "names follow [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*"
        }
        RouteError::Reference(_) => "tags follow [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}",
        RouteError::Digest(_) => "digests look like sha256:<64 lowercase hex characters>",
    }
}

/// Where a fetch failed decides the answer: the upstream's own answer
/// (mapped per subject), content that failed verification, or the cache.
fn fetch_status(e: &FetchError, subject: Subject) -> (StatusCode, ErrorCode) {
    match e {
        FetchError::Upstream(source) => upstream_status(source, subject),
        FetchError::DigestMismatch { .. } => (
            StatusCode::BAD_GATEWAY,
            match subject {
                Subject::Manifest => ErrorCode::ManifestInvalid,
                Subject::Blob | Subject::Repository => ErrorCode::Unavailable,
            },
        ),
        FetchError::Truncated { .. } | FetchError::Abandoned => {
            (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
        }
        FetchError::NoSpace(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        FetchError::Cache(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable),
        FetchError::RangeNotSatisfiable { .. } => {
            (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        }
    }
}

fn upstream_status(e: &UpstreamError, subject: Subject) -> (StatusCode, ErrorCode) {
    match e {
        UpstreamError::Status { status: 404, .. } => (
            StatusCode::NOT_FOUND,
            match subject {
                Subject::Manifest => ErrorCode::ManifestUnknown,
                Subject::Blob => ErrorCode::BlobUnknown,
                Subject::Repository => ErrorCode::NameUnknown,
            },
        ),
        // The upstream would not let us read it: to our client that is a
        // denial, not a request to authenticate to the mirror.
        UpstreamError::Status {
            status: 401 | 403, ..
        }
        | UpstreamError::Auth(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
        UpstreamError::Status { status: 429, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
        }
        UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable),
        UpstreamError::Unreachable(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
        UpstreamError::Status { .. }
        | UpstreamError::Protocol(_)
        | UpstreamError::TokenService(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
    }
}

/// A bundle the client sent is at fault unless the cache is.
fn bundle_status(e: &crate::bundle::BundleError) -> (StatusCode, ErrorCode) {
    use crate::bundle::BundleError as B;
    match e {
        B::Mismatch { .. } => (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
        B::Cache(c) if c.is_no_space() => {
            (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::Unavailable)
        }
        B::Cache(_) | B::Open(_) | B::Io { .. } | B::Write(_) | B::Vanished(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable)
        }
        _ => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(source: UpstreamError, subject: Subject) -> (u16, &'static str) {
        let (s, c) = ApiError::upstream(source, subject).status_and_code();
        (s.as_u16(), c.as_str())
    }

    fn upstream(status: u16) -> UpstreamError {
        UpstreamError::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn upstream_errors_map_to_client_statuses() {
        assert_eq!(
            status(upstream(404), Subject::Manifest),
            (404, "MANIFEST_UNKNOWN")
        );
        assert_eq!(status(upstream(404), Subject::Blob), (404, "BLOB_UNKNOWN"));
        assert_eq!(
            status(upstream(404), Subject::Repository),
            (404, "NAME_UNKNOWN")
        );
        assert_eq!(status(upstream(401), Subject::Blob), (403, "DENIED"));
        assert_eq!(
            status(upstream(429), Subject::Manifest),
            (429, "TOOMANYREQUESTS")
        );
        assert_eq!(
            status(upstream(503), Subject::Manifest),
            (502, "UNAVAILABLE")
        );
        assert_eq!(
            status(UpstreamError::Timeout, Subject::Blob),
            (504, "UNAVAILABLE")
        );
        assert_eq!(
            status(UpstreamError::Unreachable("x".into()), Subject::Blob),
            (502, "UNAVAILABLE")
        );
    }

    #[test]
    fn request_errors_are_4xx() {
        use crate::oci::NameError;
        let (s, c) = ApiError::Route(RouteError::Name(NameError::Grammar)).status_and_code();
        assert_eq!((s.as_u16(), c.as_str()), (400, "NAME_INVALID"));
        let (s, c) = ApiError::Route(RouteError::Reference(NameError::Tag)).status_and_code();
        assert_eq!((s.as_u16(), c.as_str()), (404, "MANIFEST_UNKNOWN"));
        let (s, c) = ApiError::ReadOnly.status_and_code();
        assert_eq!((s.as_u16(), c.as_str()), (405, "UNSUPPORTED"));
    }

    #[test]
    fn upstream_429s_are_told_in_words() {
        let limited = |registry: &str, used_up: bool, retry: Option<&str>| {
            let e = ApiError::Fetch {
                source: FetchError::Upstream(UpstreamError::Status {
                    status: 429,
                    retry_after: retry.map(str::to_owned),
                }),
                subject: Subject::Manifest,
                origin: Some(Origin {
                    registry: registry.to_owned(),
                    pull_limit_used_up: used_up,
                }),
            };
            e.upstream_429_message()
        };
        assert_eq!(
            limited("docker.io", true, Some("21600")),
            "Docker Hub's pull limit for this mirror is used up; retry after 6 hours"
        );
        assert_eq!(
            limited("ghcr.io", false, Some("30")),
            "ghcr.io is refusing this mirror's requests for now (too many requests); retry after 30 seconds"
        );
        assert!(limited("docker.io", true, None).ends_with("retry after a while"));
        assert_eq!(describe_retry_after("600"), "10 minutes");
        assert_eq!(describe_retry_after("1"), "1 second");
        assert_eq!(
            describe_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"),
            "Wed, 21 Oct 2026 07:28:00 GMT"
        );
    }

    #[test]
    fn retry_after_is_passed_on() {
        let e = UpstreamError::Status {
            status: 429,
            retry_after: Some("30".into()),
        };
        let resp = ApiError::upstream(e, Subject::Manifest).into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
    }
}
