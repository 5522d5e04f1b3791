//! Manifests by tag and digest: byte-exact bodies and headers, Accept
//! passed through, tag freshness and revalidation with HEAD.

use super::{assert_not_cached, get, head, manifest_requests, mirror_of, mirror_with_config, pull};
use crate::support::client::{client, header, read_transfer, Transfer};
use crate::support::hub::{Fault, Hub, Kind, Target, OCI_INDEX, OCI_MANIFEST};
use crate::support::ACCEPT;
use http::StatusCode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_by_tag_and_digest_keep_upstream_bytes_and_headers() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let mirror = mirror_of(&hub);
    for reference in ["v1", image.manifest_digest.as_str()] {
        let path = format!("/v2/library/app/manifests/{reference}");
        for method in ["HEAD", "GET"] {
            let response = match method {
                "HEAD" => head(&mirror, &path).await,
                _ => get(&mirror, &path).await,
            };
            let what = format!("{method} {path}");
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            assert_eq!(
                header(&response, "docker-content-digest").as_deref(),
                Some(image.manifest_digest.as_str()),
                "{what}"
            );
            assert_eq!(
                header(&response, "content-type").as_deref(),
                Some(OCI_MANIFEST),
                "{what}"
            );
            assert_eq!(
                header(&response, "content-length"),
                Some(image.manifest_bytes.len().to_string()),
                "{what}"
            );
            assert!(
                header(&response, "etag").is_some_and(|e| !e.is_empty()),
                "{what}: ETag"
            );
            let body = response.bytes().await.unwrap();
            match method {
                "HEAD" => assert!(body.is_empty(), "{what}: HEAD has no body"),
                _ => assert_eq!(body, image.manifest_bytes, "{what}: byte-exact"),
            }
        }
    }
    assert_eq!(
        hub.count(Kind::ManifestGetByTag),
        0,
        "tags are resolved with HEAD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_clients_accept_list_reaches_the_hub_unchanged() {
    let hub = Hub::start().await;
    let amd = hub.push_image("multi/arch", "amd64", &[10]);
    let arm = hub.push_image("multi/arch", "arm64", &[10]);
    let (digest, bytes) = hub.push_index("multi/arch", "latest", &[&amd, &arm]);
    let mirror = mirror_of(&hub);
    let response = get(&mirror, "/v2/multi/arch/manifests/latest").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    assert_eq!(header(&response, "docker-content-digest"), Some(digest));
    assert_eq!(response.bytes().await.unwrap(), bytes);

    let wanted: Vec<&str> = ACCEPT.split(',').map(str::trim).collect();
    let manifest_requests: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/manifests/"))
        .collect();
    assert!(!manifest_requests.is_empty());
    for request in manifest_requests {
        let sent: Vec<String> = request
            .headers
            .get_all("accept")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|s| s.trim().to_string())
            .collect();
        assert_eq!(
            sent, wanted,
            "Accept of {} {}",
            request.method, request.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_tag_is_answered_without_asking_upstream() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10]);
    let mirror = mirror_of(&hub);
    let first = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(first.bytes().await.unwrap(), image.manifest_bytes);
    hub.reset_counts();
    let second = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.bytes().await.unwrap(), image.manifest_bytes);
    assert_eq!(
        manifest_requests(&hub),
        0,
        "within tag_ttl the cache answers"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_tag_is_revalidated_with_head_and_never_gotten_by_tag() {
    let hub = Hub::start().await;
    let old = hub.push_image("library/app", "v1", &[10]);
    let mirror = mirror_with_config(&hub, "tag_ttl = \"1s\"");
    pull(&mirror, "library/app", "v1", &old).await;
    assert_eq!(
        hub.count(Kind::ManifestGetByTag),
        0,
        "a pull never GETs by tag"
    );

    // Stale, same digest upstream: one HEAD, nothing fetched.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.reset_counts();
    let same = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(same.bytes().await.unwrap(), old.manifest_bytes);
    assert_eq!(hub.count(Kind::ManifestHeadByTag), 1);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 0);

    // Stale, tag moved upstream: HEAD, then GET by the new digest.
    let new = hub.push_image("library/app", "v1", &[10]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.reset_counts();
    let moved = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(
        header(&moved, "docker-content-digest"),
        Some(new.manifest_digest.clone())
    );
    assert_eq!(moved.bytes().await.unwrap(), new.manifest_bytes);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
    let gets_by_digest: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/sha256:"))
        .map(|r| r.path)
        .collect();
    assert!(
        gets_by_digest
            .iter()
            .all(|p| p.ends_with(&new.manifest_digest)),
        "{gets_by_digest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_tag_is_served_when_the_upstream_fails() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10]);
    let mirror = mirror_with_config(&hub, "tag_ttl = \"1s\"");
    pull(&mirror, "library/app", "v1", &image).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.set_fault(Target::All, Fault::Status(503));
    let response = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::OK, "stale beats failing");
    assert_eq!(response.bytes().await.unwrap(), image.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_upstream_manifest_is_never_served_or_cached() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10]);
    let mirror = mirror_of(&hub);
    let path = format!("/v2/library/app/manifests/{}", image.manifest_digest);

    hub.set_fault(
        Target::Digest(image.manifest_digest.clone()),
        Fault::CorruptBytes,
    );
    let response = get(&mirror, &path).await;
    if response.status() == StatusCode::OK {
        let transfer = read_transfer(response).await;
        assert!(
            matches!(transfer, Transfer::Failed { .. }),
            "wrong manifest served as complete"
        );
    }
    assert_not_cached(&mirror, &image.manifest_digest);

    hub.clear_faults();
    let retry = get(&mirror, &path).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.bytes().await.unwrap(), image.manifest_bytes);
}

/// One tag, two kinds of client: an old one that takes single-image
/// manifests only (the hub answers it with the first image's manifest) and
/// one that takes indexes. Each must keep getting what it asked for, in
/// either order, within the tag's TTL: a multi-arch tag must never be
/// served as one platform's manifest to a client that asked for the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_with_different_accept_lists_each_get_their_own_answer() {
    let hub = Hub::start().await;
    let amd = hub.push_image("multi/arch", "amd", &[1000]);
    let arm = hub.push_image("multi/arch", "arm", &[2000]);
    let (_, index_bytes) = hub.push_index("multi/arch", "latest", &[&amd, &arm]);
    let mirror = mirror_of(&hub);
    let url = format!("{}/v2/multi/arch/manifests/latest", mirror.url());
    let single = "application/vnd.oci.image.manifest.v1+json";
    let ask = |accept: &'static str| {
        let url = url.clone();
        async move {
            let response = client()
                .get(&url)
                .header("accept", accept)
                .send()
                .await
                .expect("mirror answers");
            assert_eq!(response.status(), StatusCode::OK, "{accept}");
            response.bytes().await.expect("body")
        }
    };
    for round in 0..2 {
        assert_eq!(
            ask(single).await,
            amd.manifest_bytes,
            "round {round}: single-image client"
        );
        assert_eq!(
            ask(ACCEPT).await,
            index_bytes,
            "round {round}: index client"
        );
    }
    assert_eq!(
        ask(single).await,
        amd.manifest_bytes,
        "single-image client again"
    );
}
