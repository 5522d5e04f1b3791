//! Docker Hub's pull limit: manifest GETs answer 429 while HEADs (free)
//! still work. Cached tags, and tags that moved to a digest the cache
//! holds, keep pulling; a 429 with nothing to serve reaches the client with
//! its Retry-After; 429s never open the circuit; the rate-limit headers are
//! exported.

use super::Series;
use super::{
    assert_no_manifest_get_by_tag, failure, get, manifest, metric, mirror_with, pull, pull_blobs,
    PAST_TTL, REPO,
};
use crate::support::client::header;
use crate::support::hub::{Fault, Hub, Kind, Target, OCI_MANIFEST};
use http::StatusCode;

const TTL: &str = "tag_ttl = \"1s\"";
const LIMIT: Series = (
    "pullthrough_upstream_ratelimit_limit",
    &[("upstream", "docker.io")],
);
const REMAINING: Series = (
    "pullthrough_upstream_ratelimit_remaining",
    &[("upstream", "docker.io")],
);
const CIRCUIT_OPEN: Series = (
    "pullthrough_upstream_circuit_open",
    &[("upstream", "docker.io")],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_manifest_gets_do_not_break_cached_or_moved_tags() {
    let hub = Hub::start().await;
    let first = hub.push_image(REPO, "latest", &[16 * 1024]);
    let second = hub.push_image(REPO, "next", &[16 * 1024]);
    let third = hub.push_image(REPO, "third", &[4096]);
    let mirror = mirror_with(&hub.url(), TTL);
    pull(&mirror, "latest", &first).await;
    pull(&mirror, "next", &second).await;
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 2);
    assert_eq!(
        metric(&mirror, LIMIT),
        100.0,
        "ratelimit-limit: 100;w=21600"
    );
    assert_eq!(metric(&mirror, REMAINING), 98.0, "two GETs spent");

    hub.set_fault(
        Target::All,
        Fault::TooManyRequests {
            retry_after_secs: 37,
        },
    );
    hub.reset_counts();
    // `latest` moves to the image `next` names, whose manifest is cached.
    hub.put_manifest(
        REPO,
        Some("latest"),
        OCI_MANIFEST,
        second.manifest_bytes.clone(),
    );
    tokio::time::sleep(PAST_TTL).await;

    pull(&mirror, "latest", &second).await;
    pull(&mirror, "next", &second).await;
    let (status, bytes) = manifest(&mirror, &first.manifest_digest).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, first.manifest_bytes.clone())
    );
    pull_blobs(&mirror, &first).await;
    assert_eq!(
        hub.count(Kind::ManifestHeadByTag),
        2,
        "one HEAD per stale tag"
    );
    assert_eq!(
        hub.count(Kind::ManifestGetByDigest),
        0,
        "both digests were cached"
    );
    assert_eq!(hub.count(Kind::BlobGet), 0);

    // Nothing cached for `third`: the 429 reaches the client, Retry-After
    // included, and the HEAD that found its digest was not wasted on a GET
    // by tag.
    for _ in 0..4 {
        let response = get(&mirror, &format!("/v2/{REPO}/manifests/third")).await;
        let retry_after = header(&response, "retry-after");
        let (status, code) = failure(response).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code.as_deref(), Some("TOOMANYREQUESTS"));
        assert_eq!(retry_after.as_deref(), Some("37"));
    }
    assert_eq!(
        hub.count(Kind::ManifestGetByDigest),
        4,
        "one GET (no retry) per request"
    );
    assert_eq!(metric(&mirror, CIRCUIT_OPEN), 0.0, "a 429 is not an outage");

    // The limit lifts: `third` pulls at once.
    hub.clear_faults();
    pull(&mirror, "third", &third).await;
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_that_moved_while_rate_limited_serves_its_cached_mapping() {
    let hub = Hub::start().await;
    let old = hub.push_image(REPO, "latest", &[4096]);
    let mirror = mirror_with(&hub.url(), TTL);
    pull(&mirror, "latest", &old).await;

    hub.set_fault(
        Target::All,
        Fault::TooManyRequests {
            retry_after_secs: 30,
        },
    );
    // `latest` moves to content the mirror has never seen; fetching it
    // would cost a GET the upstream refuses.
    let new = hub.push_image(REPO, "latest", &[4096]);
    hub.reset_counts();
    tokio::time::sleep(PAST_TTL).await;

    // The design: "upstream failing or 429 → serve the stale mapping".
    let (status, bytes) = manifest(&mirror, "latest").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a rate-limited upstream broke the pull of a cached tag"
    );
    assert_eq!(bytes, old.manifest_bytes);
    assert_eq!(hub.count(Kind::ManifestHeadByTag), 1);
    assert_no_manifest_get_by_tag(&hub);

    // Once the limit lifts, the tag moves.
    hub.clear_faults();
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "latest", &new).await;
    assert_no_manifest_get_by_tag(&hub);
}
