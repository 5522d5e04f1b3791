//! Operational endpoints: liveness, readiness and Prometheus metrics.
//!
//! `/readyz` answers `ready` on its first line and, below it, one line per
//! further tier (the object store), which never makes the replica unready:
//!
//! ```text
//! ready
//! tier s3: failing errors=3 last_error=1764636001 (12s ago, put)
//! ```

use super::body::{self, Body};
use super::App;
use crate::cache::{unix_now, TierHealth};
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
    let mut answer = String::from("ready\n");
    for (name, health) in app.core.tier_health() {
        answer.push_str(&tier_line(name, &health, unix_now()));
    }
    text(StatusCode::OK, answer)
}

/// One tier's line under `ready`: what it is doing now, what it did last.
fn tier_line(name: &str, health: &TierHealth, now: u64) -> String {
    let state = if health.failing { "failing" } else { "ok" };
    let mut line = format!("tier {name}: {state} errors={}", health.errors);
    if let Some((at, op)) = health.last_error {
        let ago = now.saturating_sub(at);
        line.push_str(&format!(" last_error={at} ({ago}s ago, {op})"));
    }
    line.push('\n');
    line
}

fn text(status: StatusCode, s: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(s));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_lines() {
        let healthy = TierHealth::default();
        assert_eq!(tier_line("s3", &healthy, 100), "tier s3: ok errors=0\n");
        let failing = TierHealth {
            failing: true,
            errors: 3,
            last_error: Some((88, "put")),
        };
        assert_eq!(
            tier_line("s3", &failing, 100),
            "tier s3: failing errors=3 last_error=88 (12s ago, put)\n"
        );
    }
}
