//! Blobs: one fetch through the CDN redirect, then the cache; HEAD without
//! download; ranges; corrupt upstream bytes never served or cached.

use super::{assert_not_cached, get, head, mirror_of, pull, send, wait_cached};
use crate::support::client::{client, header, read_transfer};
use crate::support::hub::{Fault, Hub, Kind, Target};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_is_fetched_once_then_served_from_cache() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[300_000]);
    let (digest, layer) = &image.layers[0];
    let mirror = mirror_of(&hub);
    let path = format!("/v2/library/app/blobs/{digest}");

    let first = get(&mirror, &path).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        header(&first, "content-length"),
        Some(layer.len().to_string())
    );
    assert!(header(&first, "content-type").is_some());
    assert!(header(&first, "etag").is_some());
    assert_eq!(
        header(&first, "content-encoding"),
        None,
        "blobs are never encoded"
    );
    assert_eq!(&read_transfer(first).await.bytes(), layer);
    assert_eq!(hub.count(Kind::BlobGet), 1);
    assert_eq!(hub.count(Kind::CdnGet), 1);
    assert_eq!(
        hub.count(Kind::CdnRejected),
        0,
        "no Authorization to the CDN"
    );

    hub.reset_counts();
    let second = get(&mirror, &path).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(&read_transfer(second).await.bytes(), layer);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_pull_asks_the_upstream_for_no_blob() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000, 200_000, 50]);
    let mirror = mirror_of(&hub);
    pull(&mirror, "library/app", "v1", &image).await;
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
    assert_eq!(hub.count(Kind::CdnGet), 4, "config and three layers");
    hub.reset_counts();
    pull(&mirror, "library/app", "v1", &image).await;
    for kind in [
        Kind::BlobGet,
        Kind::BlobHead,
        Kind::CdnGet,
        Kind::ManifestGetByTag,
    ] {
        assert_eq!(hub.count(kind), 0, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_of_an_uncached_blob_asks_upstream_with_head_only() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[123_456]);
    let (digest, layer) = &image.layers[0];
    let mirror = mirror_of(&hub);
    let response = head(&mirror, &format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-length"),
        Some(layer.len().to_string())
    );
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert!(header(&response, "etag").is_some());
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(hub.count(Kind::BlobHead), 1);
    assert_eq!(hub.count(Kind::BlobGet), 0);
    assert_eq!(hub.count(Kind::CdnGet), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_on_a_cached_blob() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[100_000]);
    let (digest, layer) = &image.layers[0];
    let mirror = mirror_of(&hub);
    let url = format!("{}/v2/library/app/blobs/{digest}", mirror.url());
    read_transfer(send(client().get(&url)).await).await.bytes();
    hub.reset_counts();

    let cases = [
        ("bytes=1000-", 1000, 99_999),
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=99990-200000", 99_990, 99_999),
    ];
    for (range, first, last) in cases {
        let response = send(client().get(&url).header("range", range)).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&response, "content-range"),
            Some(format!("bytes {first}-{last}/100000")),
            "{range}"
        );
        assert_eq!(
            header(&response, "content-length"),
            Some((last - first + 1).to_string()),
            "{range}"
        );
        let body = read_transfer(response).await.bytes();
        assert_eq!(&body[..], &layer[first..=last], "{range}");
    }
    for range in ["bytes=100000-", "bytes=200000-300000"] {
        let response = send(client().get(&url).header("range", range)).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
    }
    assert!(hub.requests().is_empty(), "ranges come from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_upstream_blob_is_never_served_or_cached() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[300_000]);
    let (digest, layer) = &image.layers[0];
    let mirror = mirror_of(&hub);
    let path = format!("/v2/library/app/blobs/{digest}");

    hub.set_fault(Target::Digest(digest.clone()), Fault::CorruptBytes);
    let response = get(&mirror, &path).await;
    if response.status() == StatusCode::OK {
        let transfer = read_transfer(response).await;
        assert!(transfer.is_failed(), "wrong bytes served as complete");
    } else {
        assert!(response.status().is_server_error(), "{}", response.status());
    }
    assert_not_cached(&mirror, digest);

    hub.clear_faults();
    let retry = get(&mirror, &path).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(&read_transfer(retry).await.bytes(), layer);
    wait_cached(&mirror, digest);
}

/// A blob large enough that its download is flushed to disk while it runs
/// (every 8 MiB): served byte for byte, committed with the same bytes, and,
/// corrupted, neither served as complete nor cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_blob_flushed_while_it_downloads_is_cached_byte_for_byte() {
    const MIB: usize = 1024 * 1024;
    let hub = Hub::start().await;
    let image = hub.push_image("library/big", "v1", &[20 * MIB + 17, 18 * MIB]);
    let mirror = mirror_of(&hub);
    let (good, good_bytes) = &image.layers[0];
    let (bad, _) = &image.layers[1];

    let response = get(&mirror, &format!("/v2/library/big/blobs/{good}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&read_transfer(response).await.bytes(), good_bytes);
    assert_eq!(hub.count(Kind::CdnGet), 1);
    let stored = crate::support::cache::blob_path(&mirror.cache_dir, good);
    let on_disk = std::fs::read(&stored).expect("the blob is cached when its GET ends");
    assert!(
        on_disk == *good_bytes,
        "the cached copy differs from the upstream's"
    );

    hub.set_fault(Target::Digest(bad.clone()), Fault::CorruptBytes);
    let response = get(&mirror, &format!("/v2/library/big/blobs/{bad}")).await;
    if response.status() == StatusCode::OK {
        assert!(
            read_transfer(response).await.is_failed(),
            "wrong bytes served as complete"
        );
    } else {
        assert!(response.status().is_server_error(), "{}", response.status());
    }
    assert_not_cached(&mirror, bad);
}
