//! Tag freshness without spending the pull limit: across a whole sequence
//! of pulls (fresh, within the TTL, stale with the same digest, moved,
//! immutable, an index, Docker's HEAD and Podman's GET by tag) the upstream
//! never sees a manifest GET by tag, and GETs by digest only for new
//! content.

use super::{
    assert_no_manifest_get_by_tag, head, manifest, metric, mirror_with, pull, pull_blobs, PAST_TTL,
    REPO,
};
use crate::support::client::header;
use crate::support::hub::{Hub, Kind};
use http::StatusCode;

/// (HEADs by tag, GETs by digest) the hub has seen.
fn manifest_traffic(hub: &Hub) -> (u64, u64) {
    (
        hub.count(Kind::ManifestHeadByTag),
        hub.count(Kind::ManifestGetByDigest),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequence_of_pulls_never_gets_a_manifest_by_tag() {
    let hub = Hub::start().await;
    let latest = hub.push_image(REPO, "latest", &[8192]);
    let pinned = hub.push_image(REPO, "v1.0", &[8192]);
    let extra = "tag_ttl = \"1s\"\nimmutable_tags = [\"v*\"]";
    let mirror = mirror_with(&hub.url(), extra);

    // Fresh: Podman GETs by tag; the mirror HEADs and GETs by digest.
    pull(&mirror, "latest", &latest).await;
    pull(&mirror, "v1.0", &pinned).await;
    assert_eq!(manifest_traffic(&hub), (2, 2));

    // Within the TTL: Docker's HEAD by tag and a GET cost nothing.
    let response = head(&mirror, &format!("/v2/{REPO}/manifests/latest")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(latest.manifest_digest.as_str())
    );
    pull(&mirror, "latest", &latest).await;
    assert_eq!(manifest_traffic(&hub), (2, 2));

    // Stale, same digest: one HEAD, nothing downloaded. The immutable tag
    // is not asked about at all, even after it moved upstream.
    let moved_pin = hub.push_image(REPO, "v1.0", &[8192]);
    tokio::time::sleep(PAST_TTL).await;
    pull(&mirror, "latest", &latest).await;
    pull(&mirror, "v1.0", &pinned).await;
    assert_eq!(manifest_traffic(&hub), (3, 2));
    let revalidated: super::Series = (
        "pullthrough_cache_lookups_total",
        &[("kind", "tag"), ("result", "revalidated")],
    );
    assert!(metric(&mirror, revalidated) >= 1.0);

    // Moved: one HEAD and one GET by digest for the new manifest.
    let moved = hub.push_image(REPO, "latest", &[8192]);
    tokio::time::sleep(PAST_TTL).await;
    let response = head(&mirror, &format!("/v2/{REPO}/manifests/latest")).await;
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(moved.manifest_digest.as_str()),
        "a HEAD by tag sees the move"
    );
    pull(&mirror, "latest", &moved).await;
    assert_eq!(manifest_traffic(&hub), (4, 3));

    // An index and its children: by tag once, children by digest.
    let (index_digest, index_bytes) = hub.push_index(REPO, "multi", &[&latest, &moved]);
    let (status, bytes) = manifest(&mirror, "multi").await;
    assert_eq!((status, bytes), (StatusCode::OK, index_bytes));
    for child in [&latest, &moved] {
        let (status, bytes) = manifest(&mirror, &child.manifest_digest).await;
        assert_eq!(
            (status, bytes),
            (StatusCode::OK, child.manifest_bytes.clone())
        );
    }
    let (status, _) = manifest(&mirror, &index_digest).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(manifest_traffic(&hub), (5, 4), "only the index was new");

    // The pinned tag's new content is reachable by digest only.
    let (status, bytes) = manifest(&mirror, &moved_pin.manifest_digest).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, moved_pin.manifest_bytes.clone())
    );
    pull_blobs(&mirror, &moved_pin).await;
    assert_eq!(manifest_traffic(&hub), (5, 5));
    assert_no_manifest_get_by_tag(&hub);
}
