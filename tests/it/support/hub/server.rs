//! The hub's HTTP side: accept loops, the registry API (`/v2/…`), the token
//! endpoint (`/token`) and the CDN that blob GETs redirect to.

use super::faults::{corrupt, BodyPlan, Fault};
use super::{auth, lock, Kind, Recorded, Site, State};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest as _, Sha256};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Clone, Copy)]
pub enum Listener {
    Registry,
    Cdn,
}

/// Serves `listener` until the returned task is aborted; aborting it also
/// drops every open connection (they live in its `JoinSet`).
pub fn serve(listener: TcpListener, state: Arc<State>, which: Listener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let state = state.clone();
            conns.spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(state, which, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    })
}

async fn route(state: Arc<State>, which: Listener, req: Request<Incoming>) -> Response<Body> {
    let site = match which {
        Listener::Cdn => Site::Cdn,
        Listener::Registry if req.uri().path() == "/token" => Site::Token,
        Listener::Registry => Site::Registry,
    };
    lock(&state.requests).push(Recorded {
        site,
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        headers: req.headers().clone(),
    });
    match site {
        Site::Cdn => cdn(&state, &req).await,
        Site::Token => {
            let faults = state.faults_for(None);
            let delays: Vec<Fault> = faults
                .iter()
                .filter(|fault| matches!(fault, Fault::Delay(_)))
                .cloned()
                .collect();
            apply_faults(&delays).await;
            let failing = faults.iter().find_map(|fault| match fault {
                Fault::TokenStatus(status) => Some(*status),
                _ => None,
            });
            if let Some(status) = failing {
                return token_failure(status);
            }
            for fault in &faults {
                match fault {
                    Fault::HugeToken(len) => return huge_token(&state, *len),
                    Fault::TokenTrickle => return trickled_token(),
                    _ => {}
                }
            }
            auth::token(&state, &req)
        }
        Site::Registry => registry(&state, &req).await,
    }
}

/// A 200 token answer `{"expires_in":300,"token":"aaa…"}` with a
/// `len`-byte token, in 64 KiB frames made as the client reads, so a client
/// that stops reading stops the stream.
fn huge_token(state: &State, len: u64) -> Response<Body> {
    const FRAME: u64 = 64 * 1024;
    let filler = Bytes::from(vec![b'a'; FRAME as usize]);
    let counters = state.counters.clone();
    // (stage, token bytes left): 0 opens the JSON, 1 sends the token, 2 ends.
    let frames = futures_util::stream::unfold((0u8, len), move |(stage, left)| {
        let (filler, counters) = (filler.clone(), counters.clone());
        async move {
            let (piece, next) = match (stage, left) {
                (0, _) => (
                    Bytes::from_static(br#"{"expires_in":300,"token":""#),
                    (1, left),
                ),
                (1, 0) => (Bytes::from_static(br#""}"#), (2, 0)),
                (1, _) => {
                    let n = FRAME.min(left);
                    (filler.slice(..n as usize), (1, left - n))
                }
                _ => return None,
            };
            counters.add(Kind::TokenBytesSent, piece.len() as u64);
            Some((Ok::<_, std::io::Error>(Frame::data(piece)), next))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed())
        .expect("response")
}

/// A 200 token answer whose body never ends: a space every 500 ms (JSON
/// allows leading whitespace, so only a bound in time stops a reader).
fn trickled_token() -> Response<Body> {
    let frames = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b" "))),
            (),
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed())
        .expect("response")
}

/// What a failing token service answers.
fn token_failure(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).expect("fault status");
    json(
        status,
        br#"{"details":"token service fault injected"}"#.to_vec(),
    )
}

impl State {
    fn faults_for(&self, digest: Option<&str>) -> Vec<Fault> {
        lock(&self.faults).matching(digest)
    }
}

/// Applies `Delay`, `Stall` and `Status`; returns the response a `Status`
/// fault asks for.
pub(super) async fn apply_faults(faults: &[Fault]) -> Option<Response<Body>> {
    for fault in faults {
        if let Fault::Delay(d) = fault {
            tokio::time::sleep(*d).await;
        }
    }
    if faults.contains(&Fault::Stall) {
        std::future::pending::<()>().await;
    }
    faults.iter().find_map(|fault| match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(*code).expect("fault status");
            Some(oci_error(status, "UNAVAILABLE", "hub fault injected"))
        }
        _ => None,
    })
}

enum Route<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, subject: &'a str },
}

fn parse_route(rest: &str) -> Option<Route<'_>> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    if let Some((name, subject)) = rest.rsplit_once("/referrers/") {
        return Some(Route::Referrers { name, subject });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest { name, reference });
    }
    let (name, digest) = rest.rsplit_once("/blobs/")?;
    Some(Route::Blob { name, digest })
}

/// Docker Hub's search API (anonymous, on its index host): tagged
/// repositories whose name contains `q`, official images (`library/`)
/// named without their namespace, at most `n` of them.
fn search(state: &State, req: &Request<Incoming>) -> Response<Body> {
    state.counters.add(Kind::Search, 1);
    let (mut term, mut n) = (String::new(), 25usize);
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "q" => term = v.to_lowercase(),
            "n" => n = v.parse().unwrap_or(25),
            _ => {}
        }
    }
    let results: Vec<serde_json::Value> = lock(&state.store)
        .repositories()
        .into_iter()
        .filter(|name| !term.is_empty() && name.contains(&term))
        .take(n)
        .map(|name| {
            let official = name.strip_prefix("library/");
            serde_json::json!({
                "name": official.unwrap_or(&name),
                "description": format!("stand-in image {name}"),
                "star_count": 7,
                "is_official": official.is_some(),
                "is_automated": false,
            })
        })
        .collect();
    let body = serde_json::json!({
        "num_pages": 1,
        "num_results": results.len(),
        "page_size": n,
        "page": 1,
        "query": term,
        "results": results,
    });
    json(StatusCode::OK, body.to_string().into_bytes())
}

async fn registry(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "read-only hub",
        );
    }
    if path == "/v1/search" {
        return search(state, req);
    }
    if path == "/v2/" || path == "/v2" {
        if auth::authorized(state, req, None) {
            return json(StatusCode::OK, b"{}".to_vec());
        }
        return auth::challenge(state, None);
    }
    let route = path.strip_prefix("/v2/").and_then(parse_route);
    let Some(route) = route else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route");
    };
    let name = match &route {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Tags { name }
        | Route::Referrers { name, .. } => *name,
    };
    if !auth::authorized(state, req, Some(name)) {
        return auth::challenge(state, Some(name));
    }
    let digest = match &route {
        Route::Manifest { reference, .. } => lock(&state.store).resolve(name, reference),
        Route::Blob { digest, .. } => Some(digest.to_string()),
        Route::Tags { .. } | Route::Referrers { .. } => None,
    };
    let faults = state.faults_for(digest.as_deref());
    if let Some(response) = apply_faults(&faults).await {
        return response;
    }
    let redirect = faults.iter().find_map(|fault| match fault {
        Fault::Redirect(location) => Some(location.clone()),
        _ => None,
    });
    if let Some(location) = redirect {
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, location)
            .header(header::CONTENT_LENGTH, 0)
            .body(empty())
            .expect("response");
    }
    let head = req.method() == Method::HEAD;
    match route {
        Route::Manifest { reference, .. } => {
            let accept = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let by_tag = !reference.contains(':');
            let digest = digest.map(|d| {
                if by_tag {
                    negotiate(state, name, d, &accept)
                } else {
                    d
                }
            });
            let account = auth::account_of(state, req);
            manifest(state, name, reference, digest, head, &faults, account)
        }
        Route::Blob { digest, .. } => blob(state, name, digest, head),
        Route::Referrers { subject, .. } => {
            state.counters.add(Kind::Referrers, 1);
            if faults.contains(&Fault::NoReferrersApi) {
                return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route");
            }
            let listed = lock(&state.store).referrers(name, subject);
            let per_page = faults.iter().find_map(|fault| match fault {
                Fault::ReferrersPerPage(n) => Some(*n),
                _ => None,
            });
            referrers_page(name, subject, listed, per_page, req.uri().query())
        }
        Route::Tags { .. } => {
            let mut response = tags(state, name);
            let link = faults.iter().find_map(|fault| match fault {
                Fault::TagsLink(link) => Some(link.clone()),
                _ => None,
            });
            if let Some(link) = link {
                response.headers_mut().insert(
                    header::LINK,
                    HeaderValue::from_str(&link).expect("link header"),
                );
            }
            response
        }
    }
}

/// One page of a referrers answer: every descriptor, or with `per_page`
/// those after the query's `last` digest (they are sorted by digest), and
/// a `Link` to the next page while more remain.
fn referrers_page(
    name: &str,
    subject: &str,
    listed: Vec<serde_json::Value>,
    per_page: Option<usize>,
    query: Option<&str>,
) -> Response<Body> {
    let last = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("last="))
        .map(str::to_owned);
    let after: Vec<_> = listed
        .into_iter()
        .filter(|d| {
            last.as_deref()
                .is_none_or(|l| d["digest"].as_str() > Some(l))
        })
        .collect();
    let shown = per_page.map_or(after.len(), |n| n.min(after.len()));
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": after[..shown],
    });
    let mut response = json(StatusCode::OK, serde_json::to_vec(&body).expect("json"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if let (Some(n), Some(end)) = (per_page, after.get(shown.wrapping_sub(1))) {
        if shown < after.len() {
            let link = format!(
                "</v2/{name}/referrers/{subject}?n={n}&last={}>; rel=\"next\"",
                end["digest"].as_str().unwrap_or("")
            );
            response.headers_mut().insert(
                header::LINK,
                HeaderValue::from_str(&link).expect("link header"),
            );
        }
    }
    response
}

/// As Docker Hub does for clients that cannot take an index: a tag that
/// points at an index or manifest list is answered with its first image's
/// manifest when the Accept list names single-image manifests only.
fn negotiate(state: &State, name: &str, digest: String, accept: &str) -> String {
    const LISTS: [&str; 2] = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];
    let store = lock(&state.store);
    let Some(stored) = store.manifest(name, &digest) else {
        return digest;
    };
    let takes_lists =
        accept.is_empty() || accept.contains("*/*") || LISTS.iter().any(|l| accept.contains(l));
    if takes_lists || !LISTS.contains(&stored.media_type.as_str()) {
        return digest;
    }
    serde_json::from_slice::<serde_json::Value>(&stored.bytes)
        .ok()
        .and_then(|index| Some(index["manifests"][0]["digest"].as_str()?.to_owned()))
        .unwrap_or(digest)
}

fn manifest(
    state: &State,
    name: &str,
    reference: &str,
    digest: Option<String>,
    head: bool,
    faults: &[Fault],
    account: Option<String>,
) -> Response<Body> {
    let kind = match (head, reference.contains(':')) {
        (false, false) => Kind::ManifestGetByTag,
        (false, true) => Kind::ManifestGetByDigest,
        (true, false) => Kind::ManifestHeadByTag,
        (true, true) => Kind::ManifestHeadByDigest,
    };
    state.counters.add(kind, 1);
    if !head {
        let retry = faults.iter().find_map(|f| match f {
            Fault::TooManyRequests { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        });
        if let Some(secs) = retry {
            let mut response = oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit.",
            );
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            headers.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
            headers.insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
            return response;
        }
        if faults.contains(&Fault::PlainTooManyRequests) {
            return oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "Too Many Requests",
            );
        }
    }
    let stored = digest.and_then(|d| Some((lock(&state.store).manifest(name, &d)?, d)));
    let Some((stored, digest)) = stored else {
        return empty_if(
            head,
            oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            ),
        );
    };
    let content_type = faults
        .iter()
        .find_map(|fault| match fault {
            Fault::ContentType(value) => Some(value.clone()),
            _ => None,
        })
        .unwrap_or_else(|| stored.media_type.clone());
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header("docker-content-digest", &digest)
        .header(header::CONTENT_LENGTH, stored.bytes.len())
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-distribution-api-version", "registry/2.0");
    if head {
        // Docker Hub's HEADs carry the figures too, without costing a pull.
        let remaining = state.ratelimit_remaining.load(Ordering::Relaxed);
        return builder
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", format!("{remaining};w=21600"))
            .body(empty())
            .expect("response");
    }
    let remaining = match account.and_then(|user| {
        let mut accounts = lock(&state.accounts);
        let a = accounts.get_mut(&user)?;
        let left = a.remaining.checked_sub(1);
        if let Some(left) = left {
            a.remaining = left;
            a.pulls += 1;
        }
        Some(left)
    }) {
        Some(Some(left)) => left,
        // The account's window is used up.
        Some(None) => {
            let mut response = oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit as 'user'.",
            );
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
            headers.insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
            return response;
        }
        None => state
            .ratelimit_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_or(0, |n| n - 1),
    };
    builder = builder
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", format!("{remaining};w=21600"));
    let bytes = if faults.contains(&Fault::CorruptBytes) {
        corrupt(&stored.bytes)
    } else {
        stored.bytes
    };
    builder.body(full(bytes)).expect("response")
}

fn blob(state: &State, name: &str, digest: &str, head: bool) -> Response<Body> {
    state
        .counters
        .add(if head { Kind::BlobHead } else { Kind::BlobGet }, 1);
    let Some(bytes) = lock(&state.store).blob_in_repo(name, digest) else {
        return empty_if(
            head,
            oci_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            ),
        );
    };
    if head {
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, bytes.len())
            .header("docker-content-digest", digest)
            .header(header::ETAG, format!("\"{digest}\""))
            .body(empty())
            .expect("response");
    }
    let location = format!("{}/{digest}?sig={}", state.cdn_url, signature(digest));
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("response")
}

fn tags(state: &State, name: &str) -> Response<Body> {
    state.counters.add(Kind::TagsList, 1);
    match lock(&state.store).tags(name) {
        Some(tags) => {
            let body = serde_json::json!({ "name": name, "tags": tags });
            json(StatusCode::OK, serde_json::to_vec(&body).expect("json"))
        }
        None => oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known",
        ),
    }
}

/// The CDN: signed URLs by digest; any Authorization header is a 400, as
/// with the signed URLs Docker Hub redirects to.
async fn cdn(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let digest = req.uri().path().trim_start_matches('/');
    let sig = format!("sig={}", signature(digest));
    if req.uri().query() != Some(sig.as_str()) {
        return plain(StatusCode::FORBIDDEN, "bad signature");
    }
    if req.headers().contains_key(header::AUTHORIZATION) {
        state.counters.add(Kind::CdnRejected, 1);
        return plain(
            StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
        );
    }
    let faults = state.faults_for(Some(digest));
    if let Some(response) = apply_faults(&faults).await {
        return response;
    }
    let challenge = faults.iter().find_map(|fault| match fault {
        Fault::CdnChallenge(value) => Some(value.clone()),
        _ => None,
    });
    if let Some(value) = challenge {
        let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&value).expect("challenge header"),
        );
        return response;
    }
    let Some(bytes) = lock(&state.store).blob(digest) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    // `Range: bytes=N-`, as CDNs answer it (what a resumed download sends).
    let from = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n < bytes.len() && !faults.contains(&Fault::IgnoreRange));
    let total = bytes.len();
    let mut builder = Response::builder().header(header::CONTENT_TYPE, "application/octet-stream");
    let bytes = match from {
        Some(n) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {n}-{}/{total}", total - 1),
            );
            state.counters.add(Kind::CdnRangeGet, 1);
            bytes.slice(n..)
        }
        None => {
            builder = builder.status(StatusCode::OK);
            bytes
        }
    };
    let builder = if faults.contains(&Fault::NoLength) {
        builder
    } else {
        builder.header(header::CONTENT_LENGTH, bytes.len())
    };
    if req.method() != Method::GET {
        return builder.body(empty()).expect("response");
    }
    let nth = state.counters.get(Kind::CdnGet);
    state.counters.add(Kind::CdnGet, 1);
    let frames = BodyPlan::new(bytes, &faults, nth).into_stream(state.counters.clone());
    builder
        .body(StreamBody::new(frames).boxed())
        .expect("response")
}

/// The `sig` query of a CDN URL for `digest`.
pub(super) fn signature(digest: &str) -> String {
    hex::encode(Sha256::digest(format!("hub.test cdn {digest}")))[..32].to_string()
}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// For HEAD, the same status and headers without a body.
fn empty_if(head: bool, response: Response<Body>) -> Response<Body> {
    if !head {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, empty())
}

pub(super) fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header("docker-distribution-api-version", "registry/2.0")
        .body(full(body))
        .expect("response")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(text))
        .expect("response")
}

/// An OCI distribution error body.
pub(super) fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "errors": [{ "code": code, "message": message, "detail": null }]
    });
    json(status, serde_json::to_vec(&body).expect("json"))
}
