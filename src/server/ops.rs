//! Operational endpoints: liveness, readiness and Prometheus metrics.

use super::body::{self, Body};
use super::App;
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::atomic::Ordering;

pub fn healthz() -> Response<Body> {
    text(StatusCode::OK, "ok\n")
}

pub fn metrics_response(app: &App) -> Response<Body> {
    let m = &app.metrics;
    for u in app.upstreams().iter() {
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

pub fn readiness(app: &App) -> Response<Body> {
    if app.shutting_down.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    // A full disk does not fail this, and should not: the cache still
    // serves, and downloads stream past it.
    if !app.core.is_writable() {
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
