//! Per-request plumbing: request ids, the client's address, routing to a
//! handler, picking the upstream, and one access-log line per request.

use super::access::{self, AccessLine};
use super::activity::Pull;
use super::body::Body;
use super::client_auth::Verdict;
use super::error::ApiError;
use super::handlers::{self, Handled};
use super::idle::InFlight;
use super::limits;
use super::ops;
use super::routes::{self, ApiRoute, Route};
use super::select::select;
use super::App;
use super::{api, page, search, warm};
use crate::config::AdminRead;
use crate::fetch::{FetchError, Sendfile};
use crate::oci::Reference;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

const REQUEST_ID: &str = "x-request-id";

/// How long a request waits for a free slot when `max_requests` are in
/// flight.
const REQUEST_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everything,
    /// `/metrics`, `/healthz` and `/readyz` only.
    OperationsOnly,
}

pub async fn dispatch(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    scope: Scope,
    request: Option<InFlight>,
    sendfile: Option<Sendfile>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route_label = route_label(&path);
    let request_id = request_id(req.headers());
    let client = client_addr(&app, peer.ip(), req.headers());
    let via_proxy = is_trusted_proxy(&app, peer.ip());
    // Probes and scrapers are never limited or queued; everything else
    // is limited per client, before any work is done for it, then waits
    // for one of the bounded request slots.
    let operational = matches!(route_label, "healthz" | "readyz" | "metrics");
    let admitted = if operational {
        Ok(None)
    } else {
        app.limits().admit(client).map(Some)
    };
    let (handled, slot) = match admitted {
        Err(refused) => (
            ApiError::ClientLimited(refused).into_response().into(),
            None,
        ),
        Ok(ref admitted) => {
            // A paced body keeps its frames of read bytes: the pacing
            // holds each frame for its bytes' time, so their size is its
            // grain (and what keeps a slow client's connection moving).
            let sendfile = sendfile.filter(|_| !admitted.as_ref().is_some_and(|a| a.is_shaped()));
            let slot = if operational {
                Ok(None)
            } else {
                request_slot(&app).await.map(Some)
            };
            match slot {
                Ok(slot) => match route(&app, req, scope, client, via_proxy, sendfile).await {
                    Ok(h) => (h, slot),
                    Err(e) => (e.into_response().into(), slot),
                },
                Err(e) => (e.into_response().into(), None),
            }
        }
    };
    let mut response = handled.response;
    if let Ok(Some(admitted)) = admitted {
        response = response.map(|body| limits::limited(body, admitted));
    }
    let headers = response.headers_mut();
    if path.starts_with("/v2") {
        headers.insert(
            header::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    // Bodies come from upstreams we do not control: a browser must take
    // the Content-Type as sent, never sniff HTML or script out of a blob.
    // (The page and its assets rely on this too.)
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let status = response.status().as_u16();
    let promised = if method == Method::HEAD {
        Some(0)
    } else {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    app.metrics
        .http
        .answered(route_label, &method, status, started.elapsed());
    let line = AccessLine {
        request_id,
        client,
        method,
        path,
        status,
        cache: handled.outcome.map(|o| o.as_str()).unwrap_or("-"),
        started,
        promised,
    };
    response.map(|body| access::logged(body, line, slot, request))
}

/// One of the bounded number of requests in flight (each may hold body
/// buffers and an upstream fetch); waits a little for one to end, then
/// answers 503 so the client retries.
async fn request_slot(app: &App) -> Result<OwnedSemaphorePermit, ApiError> {
    let requests = Arc::clone(&app.requests);
    if let Ok(permit) = Arc::clone(&requests).try_acquire_owned() {
        return Ok(permit);
    }
    app.metrics.requests_queued.inc();
    match tokio::time::timeout(REQUEST_QUEUE_WAIT, requests.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::Busy),
    }
}

/// The client's own id if it sent a sane one (so logs join up across a
/// load balancer), else a fresh one.
fn request_id(headers: &http::HeaderMap) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => id.to_owned(),
        None => {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            fresh_request_id(*START_NANOS, n)
        }
    }
}

/// `{start:012x}{n:08x}` without the formatting machinery: one id per
/// request, so it is on every request's path.
fn fresh_request_id(start: u64, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // `{n:08x}` widens past 8 digits rather than truncating.
    let n_digits = (16 - (n.leading_zeros() as usize) / 4).max(8);
    let mut id = String::with_capacity(12 + n_digits);
    for shift in (0..12).rev() {
        id.push(HEX[((start >> (shift * 4)) & 0xf) as usize] as char);
    }
    for shift in (0..n_digits).rev() {
        id.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

static START_NANOS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 & 0xffff_ffff_ffff)
        .unwrap_or(0)
});

/// `X-Forwarded-For` names the client only when the peer is a proxy we
/// trust; otherwise anyone could forge their logged address.
fn client_addr(app: &App, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    if !is_trusted_proxy(app, peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // Walk from the nearest hop back past our own proxies.
    forwarded
        .iter()
        .rev()
        .find(|ip| !app.trusted_proxies.iter().any(|p| p.contains(**ip)))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

/// Whether `/api/v1/` reads need no token on this listener: `admin_read`
/// says, and unset it is open on the metrics listener only (the one for
/// scrapers and dashboards, usually not exposed).
fn api_reads_open(app: &App, scope: Scope) -> bool {
    match app.admin_read {
        Some(AdminRead::Open) => true,
        Some(AdminRead::Token) => false,
        None => scope == Scope::OperationsOnly,
    }
}

fn is_trusted_proxy(app: &App, peer: IpAddr) -> bool {
    app.trusted_proxies.iter().any(|p| p.contains(peer))
}

pub(super) async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    scope: Scope,
    client: IpAddr,
    via_proxy: bool,
    sendfile: Option<Sendfile>,
) -> Result<Handled, ApiError> {
    let method = req.method();
    let readable = method == Method::GET || method == Method::HEAD;
    let parsed = routes::parse(req.uri().path());
    // The API's reads are for dashboards and scripts beside the scraper,
    // so the operations listener answers them too; the page stays on the
    // main listener, whose address its snippets print.
    let operational = matches!(
        parsed,
        Ok(Route::Healthz | Route::Readyz | Route::Metrics | Route::Api(_))
    );
    if scope == Scope::OperationsOnly && !operational {
        return Err(routes::RouteError::NotFound.into());
    }
    let route = match parsed {
        Ok(route) => route,
        // A write to any registry path is refused as such, even one we
        // do not route (uploads).
        Err(_) if !readable && req.uri().path().starts_with("/v2") => {
            return Err(ApiError::ReadOnly)
        }
        Err(e) => return Err(e.into()),
    };
    // Actions carry the admin token, not a client's credentials: checked
    // here, in place of client auth, on either listener.
    let route = match route {
        Route::Api(api) if api.is_action() => {
            if method != api.action_method() {
                return Err(ApiError::MethodNotAllowed);
            }
            if !api::is_admin(app, req.headers()) {
                return Err(ApiError::AdminTokenRequired);
            }
            if matches!(api, ApiRoute::Import) {
                return Ok(api::import(app, req.into_body()).await?.into());
            }
            if api == ApiRoute::Warm {
                return Ok(warm::warm_action(Arc::clone(app), req.uri().query())?.into());
            }
            return Ok(api::act(app, api, req.uri().query()).await?.into());
        }
        // A read with a token is the admin's (or `cache ls`'s), like an
        // action: no client credentials besides.
        Route::Api(api) if api::may_read(app, req.headers()) => {
            if !readable {
                return Err(ApiError::MethodNotAllowed);
            }
            return Ok(api::answer(app, api, req.uri().query()).await?.into());
        }
        Route::Api(_) if !api_reads_open(app, scope) => return Err(ApiError::AdminTokenRequired),
        route => route,
    };
    if let Some(auth) = &app.client_auth {
        let protected = !matches!(route, Route::Healthz | Route::Readyz | Route::Metrics);
        if protected {
            match auth.check(req.headers(), client).await {
                Verdict::Allowed => {}
                Verdict::Denied => return Err(ApiError::Unauthorized),
                Verdict::Throttled => return Err(ApiError::TooManyAuthFailures),
            }
        }
    }
    if !readable {
        // Only the registry API has writes to refuse as a read-only mirror.
        return Err(match route.repository() {
            Some(_) => ApiError::ReadOnly,
            None if matches!(route, Route::Base) => ApiError::ReadOnly,
            None => ApiError::MethodNotAllowed,
        });
    }
    let name = route.repository();
    // Neither the page nor the API names an upstream: answered here, before
    // `select` (whose `?ns=` means nothing to them).
    match route {
        Route::Page => {
            let at = page::address(app, req.headers(), via_proxy);
            return Ok(page::page(app, &at, req.headers(), req.uri().query())
                .await
                .into());
        }
        Route::Live => {
            return Ok(page::live(app, req.headers(), req.uri().query())
                .await
                .into())
        }
        Route::Search => return Ok(search::answer(app, req.uri().query()).await?.into()),
        Route::SearchPing => return Ok(search::ping().into()),
        Route::Asset(asset) => return Ok(page::asset(asset).into()),
        Route::Api(api) => return Ok(api::answer(app, api, req.uri().query()).await?.into()),
        _ => {}
    }
    let pulled_tag = match &route {
        Route::Manifest {
            reference: Reference::Tag(tag),
            ..
        } => Some(tag.as_str().to_owned()),
        _ => None,
    };
    // One snapshot for the whole request: a reload meanwhile does not
    // change the upstream under it.
    let upstreams = app.upstreams();
    let selected = select(&upstreams, request_host(&req), req.uri().query(), name)?;
    let target = selected.target();
    let handled = match (route, &target) {
        (Route::Manifest { reference, .. }, Some(at)) => {
            handlers::manifest(app, at, method, req.headers(), &reference).await
        }
        (Route::Blob { digest, .. }, Some(at)) => {
            handlers::blob(app, at, method, req.headers(), &digest, sendfile).await
        }
        (Route::Referrers { digest, .. }, Some(at)) => {
            handlers::referrers(app, at, &digest, req.uri().query()).await
        }
        (Route::TagsList { .. }, Some(at)) => {
            let query = strip_ns(req.uri().query());
            handlers::tags_list(app, at, query.as_deref()).await
        }
        (Route::Healthz, _) => Ok(ops::healthz().into()),
        (Route::Readyz, _) => Ok(ops::readiness(app).into()),
        (Route::Metrics, _) => Ok(ops::metrics_response(app).into()),
        _ => Ok(handlers::base().into()),
    };
    if let Err(ApiError::Fetch {
        source: FetchError::Upstream(e),
        origin: Some(origin),
        ..
    }) = &handled
    {
        if !e.is_about_repository() {
            app.activity.record_failure(&origin.registry, e.to_string());
        }
    }
    // Errors from the chosen upstream name it too.
    let mut handled = handled.unwrap_or_else(|e| e.into_response().into());
    if let (Some(tag), Some(at)) = (pulled_tag, &target) {
        app.activity.record_pull(Pull {
            upstream: at.upstream.name().to_owned(),
            repository: at.upstream.upstream_name(&at.repo).as_str().to_owned(),
            tag,
            client,
            result: match handled.outcome {
                Some(outcome) if handled.response.status().is_success() => outcome.as_str(),
                _ if handled.response.status().is_success() => "hit",
                _ => "error",
            },
            status: handled.response.status().as_u16(),
            time: crate::cache::unix_now(),
        });
    }
    // The distribution spec asks a proxy to say which namespace answered.
    if let Some(ns) = selected
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        handled.response.headers_mut().insert("oci-namespace", ns);
    }
    Ok(handled)
}

/// The host name the client addressed: the request target's authority
/// (HTTP/2 `:authority`, or an absolute-form HTTP/1 target), else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
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
        "/" => "page",
        "/ui/app.js" | "/ui/app.css" => "asset",
        "/ui/live" => "page",
        "/v1/search" | "/v1/_ping" => "search",
        p if p.starts_with("/api/") => "api",
        p if p.starts_with("/v2/") && p.contains("/manifests/") => "manifest",
        p if p.starts_with("/v2/") && p.contains("/blobs/") => "blob",
        p if p.starts_with("/v2/") && p.ends_with("/tags/list") => "tags",
        p if p.starts_with("/v2/") && p.contains("/referrers/") => "referrers",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::fresh_request_id;

    #[test]
    fn fresh_request_ids_read_as_the_hex_they_always_were() {
        for (start, n) in [
            (0, 0),
            (0xffff_ffff_ffff, 0xffff_ffff),
            (0x0123_4567_89ab, 42),
            (7, 0x1_0000_0000),
            (0xabc, u64::MAX),
        ] {
            assert_eq!(fresh_request_id(start, n), format!("{start:012x}{n:08x}"));
        }
    }
}
