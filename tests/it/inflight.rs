//! One upstream fetch per digest (issue 3): concurrent cold requests share
//! one download, every waiter streams it as it lands, a client hanging up
//! does not cancel it, and a failed download fails every waiter and caches
//! nothing. Asserted on the hub's counts and on hashes of what clients got.

use crate::support::client::{client, files_named, header, hex_of, read_digest, read_transfer};
use crate::support::hub::{Fault, Hub, Kind, Target};
use crate::support::metrics::{sample_sum, scrape};
use crate::support::mirror::Mirror;
use crate::support::wait_until;
use http::StatusCode;
use std::time::Duration;

/// Longest wait for a download's progress.
const WAIT: Duration = Duration::from_secs(20);
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

/// A hub holding one random blob of `size` bytes in `library/app`, the
/// CDN sending it at `rate` bytes/s, and a mirror of it.
async fn setup(size: usize, rate: u64) -> (Hub, Mirror, String, bytes::Bytes) {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[size]);
    let (digest, bytes) = image.layers[0].clone();
    hub.set_fault(Target::Digest(digest.clone()), Fault::Throttle(rate));
    // Resumes of broken downloads wait little.
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.retry_backoff = Duration::from_millis(10))
        .start();
    (hub, mirror, digest, bytes)
}

fn blob_url(mirror: &Mirror, digest: &str) -> String {
    format!("{}/v2/library/app/blobs/{digest}", mirror.url())
}

/// GETs `url` and hashes the body; `Err` if the request or transfer broke.
async fn fetch_digest(client: reqwest::Client, url: String) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    read_digest(response).await
}

/// Starts `n` concurrent GETs of `url` and collects their outcomes.
async fn fan_out(n: usize, url: &str) -> Vec<Result<String, String>> {
    let client = client();
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        tasks.spawn(fetch_digest(client.clone(), url.to_string()));
    }
    tasks.join_all().await
}

fn cached(mirror: &Mirror, digest: &str) -> bool {
    !files_named(&mirror.cache_dir.join("blobs"), hex_of(digest)).is_empty()
}

/// After a download that must have landed: a GET costs the hub nothing.
async fn assert_served_from_cache(hub: &Hub, mirror: &Mirror, digest: &str) {
    wait_until("the blob in the cache", WAIT, || {
        (cached(mirror, digest)).then_some(())
    });
    hub.reset_counts();
    let again = fetch_digest(client(), blob_url(mirror, digest)).await;
    assert_eq!(again.as_deref(), Ok(digest));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_gets_share_one_upstream_fetch() {
    let size = 8 * MIB;
    let (hub, mirror, digest, _) = setup(size, 6 * MIB as u64).await;
    let outcomes = fan_out(24, &blob_url(&mirror, &digest)).await;
    for outcome in &outcomes {
        assert_eq!(outcome.as_deref(), Ok(digest.as_str()));
    }
    assert_eq!(
        hub.count(Kind::BlobGet),
        1,
        "one registry GET for 24 clients"
    );
    assert_eq!(
        hub.count(Kind::CdnGet),
        1,
        "one CDN download for 24 clients"
    );
    assert_eq!(hub.count(Kind::CdnBytesSent), size as u64, "the blob, once");
    assert_served_from_cache(&hub, &mirror, &digest).await;
}

/// A fleet joining a download late: what the download has written is read
/// from disk once and its blocks shared by every reader in memory (issue
/// 16: a thousand readers each holding their own copies held ~300 KiB of
/// RSS per client), every reader still getting the exact blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiners_share_the_blocks_already_written() {
    let size = 4 * MIB;
    let (hub, mirror, digest, _) = setup(size, 2 * MIB as u64).await;
    let url = blob_url(&mirror, &digest);
    let mut first = client().get(&url).send().await.expect("first client");
    assert_eq!(first.status(), StatusCode::OK);
    let mut received = 0;
    while received < MIB {
        let chunk = first.chunk().await.expect("first body");
        received += chunk.expect("more bytes").len();
    }
    let joiners = 16;
    let outcomes = fan_out(joiners, &url).await;
    for outcome in &outcomes {
        assert_eq!(outcome.as_deref(), Ok(digest.as_str()));
    }
    drop(first);
    assert_eq!(hub.count(Kind::CdnGet), 1, "one download for all");
    // Each joiner started with at least 1 MiB on disk; the first to need
    // a block reads it, the others mostly get it from memory.
    let shared = sample_sum(
        &scrape(mirror.addr),
        "pullthrough_served_shared_bytes_total",
        &[],
    );
    assert!(
        shared >= (joiners / 2 * MIB) as f64,
        "{shared} bytes sent from shared blocks"
    );
    assert_served_from_cache(&hub, &mirror, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_client_hanging_up_disturbs_nobody() {
    let (hub, mirror, digest, _) = setup(8 * MIB, 6 * MIB as u64).await;
    let url = blob_url(&mirror, &digest);

    let mut first = client().get(&url).send().await.expect("first client");
    assert_eq!(first.status(), StatusCode::OK);
    let mut received = 0;
    while received < 256 * 1024 {
        let chunk = first
            .chunk()
            .await
            .expect("first body")
            .expect("more bytes");
        received += chunk.len();
    }
    let others = tokio::spawn({
        let url = url.clone();
        async move { fan_out(8, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);

    for outcome in others.await.expect("others") {
        assert_eq!(outcome.as_deref(), Ok(digest.as_str()));
    }
    assert_eq!(
        hub.count(Kind::CdnGet),
        1,
        "the hang-up did not restart the download"
    );
    assert_served_from_cache(&hub, &mirror, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_completes_into_the_cache_after_its_only_client_left() {
    let (hub, mirror, digest, _) = setup(4 * MIB, 4 * MIB as u64).await;
    let mut only = client()
        .get(blob_url(&mirror, &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(only.status(), StatusCode::OK);
    only.chunk().await.expect("body").expect("first bytes");
    drop(only);

    wait_until("the blob in the cache", WAIT, || {
        (cached(&mirror, &digest)).then_some(())
    });
    assert_eq!(hub.count(Kind::CdnGet), 1);
    assert_served_from_cache(&hub, &mirror, &digest).await;
}

/// Every waiter of a download that `fault` breaks for good (resumes
/// included) sees a failed transfer, nothing is cached, and a retry once
/// the hub behaves gets the blob.
async fn a_broken_download_fails_every_waiter(fault: Fault) {
    let size = 4 * MIB;
    let (hub, mirror, digest, _) = setup(size, 4 * MIB as u64).await;
    hub.set_fault(Target::Digest(digest.clone()), fault.clone());
    // Every resume starts from zero and breaks again.
    hub.set_fault(Target::Digest(digest.clone()), Fault::IgnoreRange);
    let url = blob_url(&mirror, &digest);

    let outcomes = fan_out(8, &url).await;
    for outcome in &outcomes {
        assert!(outcome.is_err(), "{fault:?}: a waiter got {outcome:?}");
    }
    assert!(!cached(&mirror, &digest), "{fault:?}: bad download cached");

    hub.clear_faults();
    hub.reset_counts();
    let retry = fetch_digest(client(), url).await;
    assert_eq!(retry.as_deref(), Ok(digest.as_str()), "{fault:?}: retry");
    assert_eq!(
        hub.count(Kind::CdnGet),
        1,
        "{fault:?}: the retry downloads afresh"
    );
    assert_served_from_cache(&hub, &mirror, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_dropping_halfway_every_time_fails_every_waiter() {
    a_broken_download_fails_every_waiter(Fault::DropAfter(2 * MIB as u64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_upstream_bytes_fail_every_waiter() {
    a_broken_download_fails_every_waiter(Fault::CorruptBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_is_served_while_the_blob_downloads() {
    let size = 8 * MIB;
    let (hub, mirror, digest, bytes) = setup(size, 4 * MIB as u64).await;
    let url = blob_url(&mirror, &digest);
    let full = tokio::spawn(fetch_digest(client(), url.clone()));
    wait_until("1 MiB from the CDN", WAIT, || {
        (hub.count(Kind::CdnBytesSent) >= MIB as u64).then_some(())
    });

    // One range already on disk, one not yet downloaded; both asked for
    // while the hub is still sending the blob.
    let ranges = [(512 * 1024, 612 * 1024 - 1), (7 * MIB, size - 1)];
    for (first, last) in ranges {
        let range = format!("bytes={first}-{last}");
        let sent_before = hub.count(Kind::CdnBytesSent);
        assert!(
            sent_before < size as u64,
            "{range}: the download already ended"
        );
        let response = client()
            .get(&url)
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&response, "content-range"),
            Some(format!("bytes {first}-{last}/{size}")),
            "{range}"
        );
        let body = read_transfer(response).await.bytes();
        assert!(body[..] == bytes[first..=last], "{range}: wrong bytes");
    }
    assert_eq!(full.await.unwrap().as_deref(), Ok(digest.as_str()));
    assert_eq!(hub.count(Kind::CdnGet), 1, "ranges joined the download");
    assert_eq!(hub.count(Kind::BlobGet), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_byte_arrives_before_the_download_ends() {
    let size = 8 * MIB;
    let (hub, mirror, digest, _) = setup(size, 4 * MIB as u64).await;
    let mut response = client()
        .get(blob_url(&mirror, &digest))
        .send()
        .await
        .unwrap();
    let sent_at_headers = hub.count(Kind::CdnBytesSent);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), Some(size.to_string()));
    assert!(
        sent_at_headers < size as u64,
        "headers waited for the whole blob ({sent_at_headers} bytes sent)"
    );
    let first = response.chunk().await.expect("body").expect("first bytes");
    let sent_at_first_byte = hub.count(Kind::CdnBytesSent);
    assert!(!first.is_empty());
    assert!(
        sent_at_first_byte < size as u64,
        "the first byte waited for the whole blob"
    );
    assert_eq!(read_digest(response).await.map(|_| ()), Ok(()));
    assert_eq!(hub.count(Kind::CdnBytesSent), size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_manifest_misses_share_one_upstream_get() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10]);
    let slow = Duration::from_millis(400);
    hub.set_fault(Target::All, Fault::Delay(slow));
    let mirror = Mirror::start(&hub.url());
    let url = format!(
        "{}/v2/library/app/manifests/{}",
        mirror.url(),
        image.manifest_digest
    );
    let client = client();
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let request = client.get(&url).header("accept", &image.media_type);
        tasks.spawn(async move {
            let response = request.send().await.expect("mirror answers");
            (response.status(), response.bytes().await.expect("body"))
        });
    }
    for (status, body) in tasks.join_all().await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, image.manifest_bytes);
    }
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_in_one_repository_share_one_token() {
    let hub = Hub::start().await;
    let images: Vec<_> = (0..12)
        .map(|i| hub.push_image("library/app", &format!("v{i}"), &[10]))
        .collect();
    hub.set_fault(Target::All, Fault::Delay(Duration::from_millis(300)));
    let mirror = Mirror::start(&hub.url());
    let client = client();
    let mut tasks = JoinSet::new();
    for image in &images {
        let url = format!(
            "{}/v2/library/app/manifests/{}",
            mirror.url(),
            image.manifest_digest
        );
        let request = client.get(url).header("accept", &image.media_type);
        let wanted = image.manifest_bytes.clone();
        tasks.spawn(async move {
            let response = request.send().await.expect("mirror answers");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.bytes().await.expect("body"), wanted);
        });
    }
    tasks.join_all().await;
    let scoped = hub
        .token_requests()
        .into_iter()
        .filter(|t| t.scopes.iter().any(|s| s == "repository:library/app:pull"))
        .count();
    assert_eq!(scoped, 1, "12 concurrent misses, one token");
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 12);
}

/// Coalescing is by digest, but an upstream's "not here" is about one
/// repository: a request for a repository that holds the content must not
/// inherit the 404 of a concurrent request for one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_404_for_one_repository_is_not_shared_with_another() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[64 * 1024]);
    let mirror = Mirror::start(&hub.url());
    // Every registry answer takes a moment, so the two requests overlap.
    hub.set_fault(Target::All, Fault::Delay(Duration::from_millis(500)));
    let (layer, layer_bytes) = &image.layers[0];
    let cases = [
        (format!("blobs/{layer}"), layer_bytes.clone()),
        (
            format!("manifests/{}", image.manifest_digest),
            image.manifest_bytes.clone(),
        ),
    ];
    for (path, bytes) in cases {
        let absent = format!("{}/v2/library/other/{path}", mirror.url());
        let present = format!("{}/v2/library/app/{path}", mirror.url());
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let first = tokio::spawn(client().get(absent).header("accept", accept).send());
        // This very path: the blob case already left a request for
        // library/other at the hub, and matching it would let the second
        // request lead, cache public content and serve it to the first.
        let first_path = format!("/v2/library/other/{path}");
        wait_until("the first request at the hub", WAIT, || {
            hub.requests()
                .iter()
                .any(|r| r.path == first_path)
                .then_some(())
        });
        let second = client()
            .get(present)
            .header("accept", accept)
            .send()
            .await
            .expect("mirror answers");
        assert_eq!(second.status(), StatusCode::OK, "{path} in library/app");
        assert!(
            read_transfer(second).await.bytes() == bytes,
            "{path}: wrong bytes"
        );
        let first = first.await.expect("task").expect("mirror answers");
        assert_eq!(
            first.status(),
            StatusCode::NOT_FOUND,
            "{path} in library/other"
        );
    }
}
