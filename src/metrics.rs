//! Prometheus metrics: one registry per running mirror (so mirrors started
//! in-process by tests count apart) and the handles the rest of the code
//! bumps. Labels never carry repositories, digests or
//! anything secret, so cardinality stays fixed.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub cache_lookups: IntCounterVec,
    pub bytes_served: IntCounterVec,
    pub shared_bytes: IntCounter,
    pub bytes_sendfile: IntCounter,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_bytes: IntCounterVec,
    pub downloads_in_flight: IntGauge,
    pub coalesced_waiters: IntCounter,
    pub token_fetches: IntCounterVec,
    pub digest_mismatches: IntCounter,
    pub download_resumes: IntCounter,
    pub requests_queued: IntCounter,
    pub connections_open: IntGauge,
    pub connections_parked: IntGauge,
    pub download_restarts: IntCounter,
    pub cache_bypasses: IntCounter,
    pub cache_size_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub evictions: IntCounter,
    pub evicted_bytes: IntCounter,
    pub ratelimit_limit: IntGaugeVec,
    pub ratelimit_remaining: IntGaugeVec,
    pub credential_ratelimit_limit: IntGaugeVec,
    pub credential_ratelimit_remaining: IntGaugeVec,
    pub credential_switches: IntCounterVec,
    pub upstream_circuit_open: IntGaugeVec,
    pub tier_lookups: IntCounterVec,
    pub tier_uploads: IntCounterVec,
    pub tier_errors: IntCounterVec,
    pub tier_corrupt: IntCounterVec,
    pub tier_bytes: IntCounterVec,
    pub tier_failing: IntGaugeVec,
    pub tier_last_error: IntGaugeVec,
    pub tier_redirects: IntCounterVec,
    pub client_limited: IntCounterVec,
    pub warm_images: IntGaugeVec,
    pub warm_images_ready: IntGaugeVec,
    pub warm_last_refresh: IntGaugeVec,
    pub warm_pinned_bytes: IntGaugeVec,
    /// Caught up with `log_queue::dropped_lines` when rendered: the log
    /// queue is the process's, this registry the mirror's.
    log_lines_dropped: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::registered())
    }

    fn registered() -> Metrics {
        // Every name and label set below is a constant, so registration
        // cannot fail at run time; a mistake fails the first unit test.
        let r = Registry::new_custom(Some("pullthrough".into()), None).expect("valid prefix");
        let build_info = gauge_vec(
            &r,
            "build_info",
            "Build information; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            http: HttpMetrics::new(
                counter_vec(
                    &r,
                    "http_requests_total",
                    "HTTP requests answered, by route, method and status class.",
                    &["route", "method", "status"],
                ),
                histogram_vec(
                    &r,
                    "http_request_duration_seconds",
                    "Time to answer a request's headers, by route.",
                    &["route"],
                ),
            ),
            cache_lookups: counter_vec(
                &r,
                "cache_lookups_total",
                "Cache lookups by kind (blob, manifest, tag) and result (hit, miss, stale, revalidated, coalesced, bypass).",
                &["kind", "result"],
            ),
            bytes_served: counter_vec(
                &r,
                "served_bytes_total",
                "Body bytes sent to clients, by source (cache, upstream).",
                &["source"],
            ),
            shared_bytes: counter(
                &r,
                "served_shared_bytes_total",
                "Body bytes of downloads in flight sent from a block another reader of the same download had read (its readers share its blocks in memory).",
            ),
            bytes_sendfile: counter(
                &r,
                "served_sendfile_bytes_total",
                "Of the cached body bytes served, those sent with sendfile(2), straight from the page cache (plain HTTP/1.1 only).",
            ),
            upstream_requests: counter_vec(
                &r,
                "upstream_requests_total",
                "Requests sent to upstream registries, by upstream, kind and status.",
                &["upstream", "kind", "status"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "upstream_request_duration_seconds",
                "Time to the upstream's response headers, by upstream and kind.",
                &["upstream", "kind"],
            ),
            upstream_bytes: counter_vec(
                &r,
                "upstream_fetched_bytes_total",
                "Blob bytes downloaded from upstreams.",
                &["upstream"],
            ),
            downloads_in_flight: gauge(&r, "downloads_in_flight", "Blob downloads running now."),
            coalesced_waiters: counter(
                &r,
                "coalesced_waiters_total",
                "Blob requests that joined a download another request started.",
            ),
            token_fetches: counter_vec(
                &r,
                "upstream_token_fetches_total",
                "Bearer token requests to upstream token services, by result.",
                &["upstream", "result"],
            ),
            digest_mismatches: counter(
                &r,
                "digest_mismatches_total",
                "Upstream content that did not hash to its digest (discarded).",
            ),
            requests_queued: counter(
                &r,
                "requests_queued_total",
                "Requests that waited for a slot because max_requests were in flight.",
            ),
            connections_open: gauge(
                &r,
                "connections_open",
                "Client connections open, on every listener.",
            ),
            connections_parked: gauge(
                &r,
                "connections_parked",
                "HTTP/1.1 keep-alive connections idle between requests, holding no buffers.",
            ),
            download_resumes: counter(
                &r,
                "download_resumes_total",
                "Blob downloads continued with a Range request after the connection broke or stalled.",
            ),
            download_restarts: counter(
                &r,
                "download_restarts_total",
                "Blob downloads restarted from zero (the upstream ignored the Range).",
            ),
            cache_bypasses: counter(
                &r,
                "cache_bypasses_total",
                "Blobs streamed past the cache because its disk was full.",
            ),
            cache_size_bytes: gauge(&r, "cache_size_bytes", "Bytes of complete content in the cache."),
            cache_entries: gauge(&r, "cache_entries", "Blobs and manifests in the cache."),
            evictions: counter(&r, "cache_evictions_total", "Cache entries evicted."),
            evicted_bytes: counter(&r, "cache_evicted_bytes_total", "Bytes freed by eviction."),
            warm_images: gauge_vec(
                &r,
                "warm_set_images",
                "Images in each configured warm set.",
                &["set"],
            ),
            warm_images_ready: gauge_vec(
                &r,
                "warm_set_images_ready",
                "Images of each warm set fully cached at its last refresh.",
                &["set"],
            ),
            warm_last_refresh: gauge_vec(
                &r,
                "warm_set_last_refresh_timestamp_seconds",
                "Unix time each warm set last finished a refresh.",
                &["set"],
            ),
            warm_pinned_bytes: gauge_vec(
                &r,
                "warm_pinned_bytes",
                "Bytes each pinned warm set keeps from eviction.",
                &["set"],
            ),
            ratelimit_limit: gauge_vec(
                &r,
                "upstream_ratelimit_limit",
                "The upstream's announced pull limit (ratelimit-limit).",
                &["upstream"],
            ),
            ratelimit_remaining: gauge_vec(
                &r,
                "upstream_ratelimit_remaining",
                "Pulls left in the upstream's window (ratelimit-remaining).",
                &["upstream"],
            ),
            credential_ratelimit_limit: gauge_vec(
                &r,
                "upstream_credential_ratelimit_limit",
                "The pull limit announced to one account of the upstream's credential pool.",
                &["upstream", "credential"],
            ),
            credential_ratelimit_remaining: gauge_vec(
                &r,
                "upstream_credential_ratelimit_remaining",
                "Pulls left in the window of one account of the upstream's credential pool.",
                &["upstream", "credential"],
            ),
            credential_switches: counter_vec(
                &r,
                "upstream_credential_switches_total",
                "Times an account's pull limit ran out and the next account took over.",
                &["upstream"],
            ),
            upstream_circuit_open: gauge_vec(
                &r,
                "upstream_circuit_open",
                "1 while calls to the upstream fail fast after repeated outages.",
                &["upstream"],
            ),
            tier_lookups: counter_vec(
                &r,
                "tier_lookups_total",
                "Content lookups (blobs and manifests) in a further tier (the object store) after a local miss, by result (hit, miss, error, skipped while failing).",
                &["tier", "result"],
            ),
            tier_uploads: counter_vec(
                &r,
                "tier_uploads_total",
                "Verified upstream downloads put into a further tier, by result (stored, present, error, skipped while failing).",
                &["tier", "result"],
            ),
            tier_errors: counter_vec(
                &r,
                "tier_errors_total",
                "Failed or timed-out calls to a further tier, by operation; pulls fall back to the upstream.",
                &["tier", "op"],
            ),
            tier_corrupt: counter_vec(
                &r,
                "tier_corrupt_total",
                "Tier copies that failed their digest when read (deleted from the tier).",
                &["tier"],
            ),
            tier_bytes: counter_vec(
                &r,
                "tier_bytes_total",
                "Blob bytes moved to and from a further tier, by direction (read, written).",
                &["tier", "direction"],
            ),
            tier_failing: gauge_vec(
                &r,
                "tier_failing",
                "1 while a further tier is failing (lookups skip it for a few seconds at a time).",
                &["tier"],
            ),
            tier_redirects: counter_vec(
                &r,
                "tier_redirects_total",
                "Blob GETs answered with a 307 to a presigned URL of a further tier (s3_redirect).",
                &["tier"],
            ),
            tier_last_error: gauge_vec(
                &r,
                "tier_last_error_timestamp_seconds",
                "When a further tier last failed a call (Unix seconds; 0 if never).",
                &["tier"],
            ),
            client_limited: counter_vec(
                &r,
                "client_limited_total",
                "Requests limited per client: refused with 429 (rate, concurrency) or slowed (bandwidth, total_bandwidth).",
                &["reason"],
            ),
            log_lines_dropped: counter_vec(
                &r,
                "log_lines_dropped_total",
                "Log lines dropped because stderr fell behind: access lines past 1 MiB queued, other lines past 4 MiB (the process's log, not this mirror's alone).",
                &["kind"],
            ),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let (access, other) = crate::log_queue::dropped_lines();
        for (kind, dropped) in [("access", access), ("other", other)] {
            let counter = self.log_lines_dropped.with_label_values(&[kind]);
            if dropped > counter.get() {
                counter.inc_by(dropped - counter.get());
            }
        }
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::registered()
    }
}

/// `2xx`, `4xx`, …: status classes keep label sets small.
/// The `route` label values of the HTTP metrics (see `server::dispatch`).
pub const ROUTES: [&str; 13] = [
    "base",
    "healthz",
    "readyz",
    "metrics",
    "page",
    "asset",
    "search",
    "api",
    "manifest",
    "blob",
    "tags",
    "referrers",
    "other",
];
/// The `method` label values: any other method is `other`, so a client
/// inventing methods cannot make new series.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The per-request HTTP metrics with their label lookups done once: a
/// lookup hashes the labels and takes a lock, on every request otherwise.
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    counters: Vec<OnceLock<IntCounter>>,
    histograms: Vec<OnceLock<Histogram>>,
}

impl HttpMetrics {
    fn new(requests: IntCounterVec, duration: HistogramVec) -> HttpMetrics {
        HttpMetrics {
            requests,
            duration,
            counters: (0..ROUTES.len() * METHODS.len() * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            histograms: (0..ROUTES.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one answered request and the time to its headers.
    pub fn answered(&self, route: &str, method: &http::Method, status: u16, took: Duration) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let m = METHODS
            .iter()
            .position(|x| *x == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let c = CLASSES
            .iter()
            .position(|x| *x == status_class(status))
            .unwrap_or(4);
        let counter =
            self.counters[(r * METHODS.len() + m) * CLASSES.len() + c].get_or_init(|| {
                self.requests
                    .with_label_values(&[ROUTES[r], METHODS[m], CLASSES[c]])
            });
        counter.inc();
        self.histograms[r]
            .get_or_init(|| self.duration.with_label_values(&[ROUTES[r]]))
            .observe(took.as_secs_f64());
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.cache_lookups.with_label_values(&["blob", "hit"]).inc();
        let text = m.render();
        assert!(text.contains("pullthrough_build_info{version="));
        assert!(text.contains("pullthrough_cache_lookups_total{kind=\"blob\",result=\"hit\"}"));
        assert!(text.contains("pullthrough_log_lines_dropped_total{kind=\"access\"} 0"));
        assert_eq!(status_class(404), "4xx");
    }

    #[test]
    fn answered_requests_land_in_their_series_and_made_up_methods_are_other() {
        let m = Metrics::new();
        let brew = http::Method::from_bytes(b"BREW").expect("a token");
        for _ in 0..3 {
            m.http
                .answered("blob", &http::Method::GET, 206, Duration::ZERO);
        }
        m.http.answered("manifest", &brew, 404, Duration::ZERO);
        m.http
            .answered("nonsense", &http::Method::HEAD, 503, Duration::ZERO);
        let text = m.render();
        for line in [
            "pullthrough_http_requests_total{method=\"GET\",route=\"blob\",status=\"2xx\"} 3",
            "pullthrough_http_requests_total{method=\"other\",route=\"manifest\",status=\"4xx\"} 1",
            "pullthrough_http_requests_total{method=\"HEAD\",route=\"other\",status=\"5xx\"} 1",
            "pullthrough_http_request_duration_seconds_count{route=\"blob\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("BREW"));
    }
}
