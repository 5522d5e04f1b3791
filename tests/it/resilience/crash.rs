//! kill -9 of the mirror: in the middle of a download, at arbitrary moments
//! of a pull, and right after content landed. After a restart tmp/ is
//! empty, every file under blobs/ hashes to its name, clients get the right
//! bytes, and what was cached is not fetched again.

use super::{
    assert_blobs_verified, assert_no_manifest_get_by_tag, blob, cached, get, mirror_on, pull,
    request_lines, temp_files, wait_until, REPO,
};
use crate::support::client::read_transfer;
use crate::support::hub::{Fault, Hub, Kind, Target};
use http::StatusCode;
use std::time::Duration;
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_download_leaves_nothing_partial_and_restart_serves_right_bytes() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[6 * MIB]);
    let (digest, bytes) = image.layers[0].clone();
    hub.set_fault(Target::Digest(digest.clone()), Fault::Throttle(MIB as u64));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let mut mirror = mirror_on(&hub.url(), &cache, "");

    let mut response = get(&mirror, &format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0;
    while received < 256 * 1024 {
        let chunk = response.chunk().await.expect("body").expect("more bytes");
        received += chunk.len();
    }
    assert_eq!(temp_files(&cache).len(), 1, "the download is under tmp/");
    mirror.kill();

    let rest = read_transfer(response).await;
    assert!(
        rest.is_failed(),
        "the client must see a broken transfer, got {rest:?}"
    );
    assert!(
        !cached(&cache, &digest),
        "a partial download reached blobs/"
    );
    assert_blobs_verified(&cache);
    assert_eq!(hub.count(Kind::CdnGet), 1);

    hub.clear_faults();
    let mirror = mirror_on(&hub.url(), &cache, "");
    assert!(
        temp_files(&cache).is_empty(),
        "tmp/ not emptied at start: {:?}",
        temp_files(&cache)
    );
    assert_eq!(blob(&mirror, &digest).await.as_ref(), Ok(&bytes));
    assert_eq!(
        hub.count(Kind::CdnGet),
        2,
        "downloaded afresh after the crash"
    );
    wait_until("the blob in the cache", Duration::from_secs(10), || {
        (cached(&cache, &digest)).then_some(())
    });
    assert_blobs_verified(&cache);

    hub.reset_counts();
    assert_eq!(blob(&mirror, &digest).await.as_ref(), Ok(&bytes));
    assert!(hub.requests().is_empty(), "{:?}", request_lines(&hub));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_of_a_pull_keeps_the_cache_consistent() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    // Kill after these delays into a pull of a fresh image; 0 is right at
    // the first requests, later ones land among downloads, commits and
    // index writes.
    for (round, delay_ms) in [0u64, 40, 120, 300].into_iter().enumerate() {
        let tag = format!("r{round}");
        let image = hub.push_image(REPO, &tag, &[512 * 1024, 256 * 1024, 64 * 1024, 4096]);
        for (digest, _) in &image.layers {
            hub.set_fault(
                Target::Digest(digest.clone()),
                Fault::Throttle(4 * MIB as u64),
            );
        }
        let mut mirror = mirror_on(&hub.url(), &cache, "");
        let mut pulls = JoinSet::new();
        for (digest, _) in std::iter::once(&image.config).chain(&image.layers) {
            let url = format!("{}/v2/{REPO}/blobs/{digest}", mirror.url());
            pulls.spawn(async move {
                if let Ok(response) = crate::support::client::client().get(url).send().await {
                    let _ = read_transfer(response).await;
                }
            });
        }
        let url = format!("{}/v2/{REPO}/manifests/{tag}", mirror.url());
        pulls.spawn(async move {
            let _ = crate::support::client::client().get(url).send().await;
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        mirror.kill();
        pulls.join_all().await;
        assert_blobs_verified(&cache);

        // Restart: tmp/ is empty and the whole image pulls right.
        let mirror = mirror_on(&hub.url(), &cache, "");
        assert!(
            temp_files(&cache).is_empty(),
            "round {round}: tmp/ not emptied"
        );
        pull(&mirror, &tag, &image).await;
        assert_blobs_verified(&cache);
    }
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_right_after_a_pull_keeps_what_was_cached() {
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[MIB, 64 * 1024]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let mut mirror = mirror_on(&hub.url(), &cache, "");
    pull(&mirror, "v1", &image).await;
    for (digest, _) in std::iter::once(&image.config).chain(&image.layers) {
        wait_until("the blob in the cache", Duration::from_secs(10), || {
            (cached(&cache, digest)).then_some(())
        });
    }
    // No pause: whatever the index had not flushed yet is lost.
    mirror.kill();
    assert_blobs_verified(&cache);

    hub.reset_counts();
    let mirror = mirror_on(&hub.url(), &cache, "");
    pull(&mirror, "v1", &image).await;
    // A lost tag mapping costs at most one revalidation (HEAD); content
    // is never fetched again.
    assert!(
        hub.count(Kind::ManifestHeadByTag) <= 1,
        "{:?}",
        request_lines(&hub)
    );
    for kind in [
        Kind::ManifestGetByDigest,
        Kind::ManifestHeadByDigest,
        Kind::BlobGet,
        Kind::BlobHead,
        Kind::CdnGet,
    ] {
        assert_eq!(
            hub.count(kind),
            0,
            "{kind:?} after the crash: {:?}",
            request_lines(&hub)
        );
    }
    assert_no_manifest_get_by_tag(&hub);
}
