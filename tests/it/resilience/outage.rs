//! Upstream outages: a hub that goes away, answers 5xx or stalls. Cached
//! tags and blobs keep serving (tags stale), uncached content fails with a
//! 5xx, retries stay bounded, and the circuit breaker stops the mirror from
//! asking a dead upstream at all for a while.

use super::Series;
use super::{
    assert_no_manifest_get_by_tag, blob, failure, get, manifest, metric, mirror_builder, mirror_on,
    mirror_with, pull, pull_blobs, recorded, registry_requests, request_lines, wait_until,
    PAST_TTL, REPO,
};
use crate::support::block_on;
use crate::support::hub::{Fault, Hub, Kind, Site, Target, TestImage};
use crate::support::mirror::Mirror;
use http::StatusCode;
use std::time::Duration;

const TTL: &str = "tag_ttl = \"1s\"";
const STALE: Series = (
    "pullthrough_cache_lookups_total",
    &[("kind", "tag"), ("result", "stale")],
);
const CIRCUIT_OPEN: Series = (
    "pullthrough_upstream_circuit_open",
    &[("upstream", "docker.io")],
);

/// An uncached request the mirror must refuse with a gateway-ish 5xx.
fn assert_gateway_failure((status, code): (StatusCode, Option<String>), what: &str) {
    assert!(
        matches!(status.as_u16(), 502..=504),
        "{what}: expected 502/503/504, got {status}"
    );
    assert_eq!(code.as_deref(), Some("UNAVAILABLE"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_content_keeps_serving_after_the_upstream_goes_away() {
    let hub = Hub::start().await;
    let cached = hub.push_image(REPO, "v1", &[64 * 1024, 4096]);
    let uncached = hub.push_image(REPO, "v2", &[4096]);
    let mirror = mirror_with(&hub.url(), TTL);
    pull(&mirror, "v1", &cached).await;
    assert_no_manifest_get_by_tag(&hub);
    assert_eq!(hub.count(Kind::ManifestHeadByTag), 1);
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
    assert_eq!(hub.count(Kind::CdnGet), 3, "config and two layers");
    hub.stop().await;

    // Connections are refused from here on.
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "v1", &cached).await;
    let (status, bytes) = manifest(&mirror, &cached.manifest_digest).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, cached.manifest_bytes.clone())
    );
    assert!(metric(&mirror, STALE) >= 1.0, "the stale answer is counted");

    assert_gateway_failure(
        failure(get(&mirror, &format!("/v2/{REPO}/manifests/v2")).await).await,
        "uncached tag",
    );
    let path = format!("/v2/{REPO}/manifests/{}", uncached.manifest_digest);
    assert_gateway_failure(
        failure(get(&mirror, &path).await).await,
        "uncached manifest",
    );
    let path = format!("/v2/{REPO}/blobs/{}", uncached.layers[0].0);
    assert_gateway_failure(failure(get(&mirror, &path).await).await, "uncached blob");

    // The cache still answers after all those failures.
    pull(&mirror, "v1", &cached).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_503_outage_opens_the_breaker_while_the_cache_answers() {
    let hub = Hub::start().await;
    let cached = hub.push_image(REPO, "v1", &[32 * 1024]);
    let uncached = hub.push_image(REPO, "v2", &[4096]);
    // The breaker must stay open through a PAST_TTL pause, not 5 s.
    let mirror = mirror_builder(&hub.url(), TTL)
        .timings(|t| t.breaker_open = Duration::from_secs(2))
        .start();
    pull(&mirror, "v1", &cached).await;
    hub.reset_counts();
    hub.set_fault(Target::All, Fault::Status(503));

    // Outage 1: the tag's HEAD gets 503, retried twice, then the stale
    // mapping answers.
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "v1", &cached).await;
    assert_eq!(
        request_lines(&hub),
        vec![format!("HEAD /v2/{REPO}/manifests/v1"); 3],
        "one HEAD and two retries; cached blobs cost nothing"
    );
    assert!(metric(&mirror, STALE) >= 1.0);

    // Outages 2 and 3: uncached content fails, each after three tries.
    let blob_path = format!("/v2/{REPO}/blobs/{}", uncached.layers[0].0);
    assert_gateway_failure(
        failure(get(&mirror, &blob_path).await).await,
        "uncached blob",
    );
    assert_eq!(recorded(&hub, "GET", &blob_path), 3);
    let manifest_path = format!("/v2/{REPO}/manifests/{}", uncached.manifest_digest);
    assert_gateway_failure(
        failure(get(&mirror, &manifest_path).await).await,
        "uncached manifest",
    );
    assert_eq!(recorded(&hub, "GET", &manifest_path), 3);
    assert_eq!(
        metric(&mirror, CIRCUIT_OPEN),
        1.0,
        "three outages open the circuit"
    );

    // Open circuit: nothing reaches the hub, uncached requests fail at
    // once, cached ones (the tag past its stale reuse too) still answer.
    hub.reset_counts();
    assert_gateway_failure(
        failure(get(&mirror, &blob_path).await).await,
        "blob, circuit open",
    );
    assert_gateway_failure(
        failure(get(&mirror, &manifest_path).await).await,
        "manifest, circuit open",
    );
    let tag_path = format!("/v2/{REPO}/manifests/v2");
    assert_gateway_failure(
        failure(get(&mirror, &tag_path).await).await,
        "tag, circuit open",
    );
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "v1", &cached).await;
    assert_eq!(registry_requests(&hub), 0, "{:?}", request_lines(&hub));

    // The upstream recovers: within the breaker's open period plus a
    // margin, a probe goes through and everything works again.
    hub.clear_faults();
    wait_until("the circuit to close", Duration::from_secs(10), || {
        let response = block_on(get(&mirror, &manifest_path));
        (response.status() == StatusCode::OK).then_some(())
    });
    assert_eq!(metric(&mirror, CIRCUIT_OPEN), 0.0);
    pull(&mirror, "v2", &uncached).await;
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_serve_stale_and_only_gateway_errors_are_retried() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[4096]);
    let mirror = mirror_with(&hub.url(), TTL);
    pull(&mirror, "v1", &image).await;
    hub.reset_counts();

    hub.set_fault(Target::All, Fault::Status(500));
    served_from_cache_past_ttl(&mirror, "v1", &image).await;
    assert_eq!(
        recorded(&hub, "HEAD", "/manifests/v1"),
        1,
        "a 500 is not retried"
    );

    hub.clear_faults();
    hub.set_fault(Target::All, Fault::Status(502));
    served_from_cache_past_ttl(&mirror, "v1", &image).await;
    assert_eq!(
        recorded(&hub, "HEAD", "/manifests/v1"),
        1 + 3,
        "a 502 is retried twice"
    );

    // Two outages do not open the circuit; the next HEAD revalidates.
    hub.clear_faults();
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "v1", &image).await;
    assert_eq!(recorded(&hub, "HEAD", "/manifests/v1"), 1 + 3 + 1);
    assert_eq!(
        registry_requests(&hub),
        5,
        "same digest: nothing downloaded: {:?}",
        request_lines(&hub)
    );
    assert_eq!(hub.count(Kind::CdnGet), 0);
    assert_eq!(metric(&mirror, CIRCUIT_OPEN), 0.0);
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_upstream_trips_the_breaker_and_the_cache_answers() {
    let hub = Hub::start().await;
    let cached = hub.push_image(REPO, "v1", &[32 * 1024]);
    let uncached = hub.push_image(REPO, "v2", &[4096, 4096]);
    let extra = "tag_ttl = \"1s\"\nconnect_timeout = \"1s\"\nread_timeout = \"1s\"";
    let mirror = mirror_with(&hub.url(), extra);
    pull(&mirror, "v1", &cached).await;
    hub.reset_counts();
    hub.set_fault(Target::All, Fault::Stall);

    // Timeout 1: the HEAD stalls until the read timeout; the stale tag
    // answers. Timeouts are not retried.
    served_from_cache_past_ttl(&mirror, "v1", &cached).await;
    assert_eq!(registry_requests(&hub), 1, "{:?}", request_lines(&hub));

    // Timeouts 2 and 3: uncached content fails with 504.
    let (status, code) = failure(
        get(
            &mirror,
            &format!("/v2/{REPO}/blobs/{}", uncached.layers[0].0),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::GATEWAY_TIMEOUT, Some("UNAVAILABLE"))
    );
    let (status, _) = failure(
        get(
            &mirror,
            &format!("/v2/{REPO}/manifests/{}", uncached.manifest_digest),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        registry_requests(&hub),
        3,
        "one try each: {:?}",
        request_lines(&hub)
    );
    assert_eq!(metric(&mirror, CIRCUIT_OPEN), 1.0);

    // Open circuit: the dead upstream is not asked; failures and cache
    // answers come without waiting for a timeout.
    hub.reset_counts();
    let (status, _) = failure(
        get(
            &mirror,
            &format!("/v2/{REPO}/blobs/{}", uncached.layers[1].0),
        )
        .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "fail fast, not 504 after a timeout"
    );
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "v1", &cached).await;
    let (status, bytes) = manifest(&mirror, &cached.manifest_digest).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, cached.manifest_bytes.clone())
    );
    assert_eq!(registry_requests(&hub), 0, "{:?}", request_lines(&hub));
    assert!(metric(&mirror, STALE) >= 2.0);
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_while_the_upstream_is_down_serves_the_cache() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[64 * 1024, 8192]);
    let uncached = hub.push_image(REPO, "v2", &[4096]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");

    let mut first = mirror_on(&hub.url(), &cache, TTL);
    pull(&first, "v1", &image).await;
    first.terminate();

    // Upstream answering 503: start-up asks it nothing, the cache serves.
    hub.set_fault(Target::All, Fault::Status(503));
    hub.reset_counts();
    let mut second = mirror_on(&hub.url(), &cache, TTL);
    tokio::time::sleep(PAST_TTL).await;
    assert!(
        hub.requests().is_empty(),
        "start-up went upstream: {:?}",
        hub.requests()
    );
    pull(&second, "v1", &image).await;
    assert!(metric(&second, STALE) >= 1.0);
    let lines = request_lines(&hub);
    assert!(!lines.is_empty(), "the stale tag was revalidated first");
    assert!(
        lines
            .iter()
            .all(|l| *l == format!("HEAD /v2/{REPO}/manifests/v1")),
        "only tag revalidations went upstream, the cache answered the rest: {lines:?}"
    );
    assert_eq!(hub.count(Kind::CdnGet), 0);
    assert_no_manifest_get_by_tag(&hub);
    second.kill();

    // Upstream gone altogether (connections refused): same.
    let hub_url = hub.url();
    hub.stop().await;
    let third = mirror_on(&hub_url, &cache, TTL);
    pull(&third, "v1", &image).await;
    pull_blobs(&third, &image).await;
    let path = format!("/v2/{REPO}/manifests/{}", uncached.manifest_digest);
    assert_gateway_failure(failure(get(&third, &path).await).await, "uncached manifest");
    assert!(blob(&third, &uncached.layers[0].0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_answers_stop_after_max_stale() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[4096]);
    let mirror = mirror_with(&hub.url(), "tag_ttl = \"1s\"\nmax_stale = \"2s\"");
    pull(&mirror, "v1", &image).await;
    hub.reset_counts();
    hub.set_fault(Target::All, Fault::Status(500));

    served_from_cache_past_ttl(&mirror, "v1", &image).await;

    // More than max_stale since the upstream last confirmed the tag (the
    // index keeps whole seconds, so wait past 3 s).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_gateway_failure(
        failure(get(&mirror, &format!("/v2/{REPO}/manifests/v1")).await).await,
        "a tag older than max_stale",
    );
    let (status, _) = manifest(&mirror, &image.manifest_digest).await;
    assert_eq!(status, StatusCode::OK, "content by digest never goes stale");
    assert_eq!(recorded(&hub, "HEAD", "/manifests/v1"), 2);

    hub.clear_faults();
    pull(&mirror, "v1", &image).await;
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_body_that_stops_flowing_fails_the_transfer_and_caches_nothing() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[256 * 1024]);
    let (digest, bytes) = image.layers[0].clone();
    // Headers at once, then the first 64 KiB frame after about a minute.
    hub.set_fault(Target::Digest(digest.clone()), Fault::Throttle(1024));
    let extra = "read_timeout = \"300ms\"";
    let mirror = mirror_with(&hub.url(), extra);

    let response = get(&mirror, &format!("/v2/{REPO}/blobs/{digest}")).await;
    let transfer = tokio::time::timeout(
        Duration::from_secs(20),
        crate::support::client::read_transfer(response),
    )
    .await
    .expect("the mirror left the client hanging on a stalled upstream body");
    assert!(
        transfer.is_failed(),
        "a stalled body must not complete: {transfer:?}"
    );
    assert!(!super::cached(&mirror.cache_dir, &digest));
    // The first connection and five resumes, each as stalled.
    assert_eq!(hub.count(Kind::CdnGet), 6);

    hub.clear_faults();
    assert_eq!(blob(&mirror, &digest).await.as_ref(), Ok(&bytes));
    assert_eq!(hub.count(Kind::CdnGet), 7);
}

/// Docker Hub's tokens live for minutes: an auth service that fails while
/// a token has expired is an outage like any other, so the cached tag is
/// served (not a 403 for "refused credentials").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_token_service_serves_the_cached_tag() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[4096]);
    let mirror = mirror_builder(&hub.url(), TTL)
        .timings(|t| t.breaker_open = BREAKER_OPEN_TIMING)
        .start();
    pull(&mirror, "v1", &image).await;

    for status in [503, 429] {
        hub.revoke_tokens();
        hub.clear_faults();
        hub.set_fault(Target::All, Fault::TokenStatus(status));
        hub.reset_counts();
        // Past the tag's TTL and past any breaker the last round opened
        // (both started before this pause).
        tokio::time::sleep(PAST_TTL.max(BREAKER_OPEN)).await;
        let (got, bytes) = manifest(&mirror, "v1").await;
        assert_eq!(
            (got, bytes),
            (StatusCode::OK, image.manifest_bytes.clone()),
            "token service answering {status}"
        );
        let token_requests = hub
            .requests()
            .iter()
            .filter(|r| r.site == Site::Token)
            .count();
        assert!(
            token_requests > 0,
            "{status}: the mirror asked for a new token"
        );
    }
    hub.clear_faults();
    tokio::time::sleep(PAST_TTL.max(BREAKER_OPEN)).await;
    pull(&mirror, "v1", &image).await;
}

/// How long the circuit breaker stays open where a test shortens it.
const BREAKER_OPEN_TIMING: Duration = Duration::from_millis(200);

/// [`BREAKER_OPEN_TIMING`] with a margin.
const BREAKER_OPEN: Duration = Duration::from_millis(400);

/// Once the tag's TTL has run out, asks for it and checks that the cached
/// manifest answers, byte for byte.
async fn served_from_cache_past_ttl(mirror: &Mirror, tag: &str, image: &TestImage) {
    tokio::time::sleep(PAST_TTL).await;
    let (status, bytes) = manifest(mirror, tag).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, image.manifest_bytes.clone()),
        "{tag} past its TTL"
    );
}
