//! A flaky upstream stays invisible to clients: a blob download whose
//! connection breaks, stalls, or comes back without range support goes on
//! from the bytes it has, while every waiting client keeps streaming.

use crate::support::client::{client, read_digest};
use crate::support::hub::{Fault, Hub, Kind, Target};
use crate::support::mirror::Mirror;
use crate::support::sha256_digest;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Deterministic, incompressible-enough bytes.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

async fn fetch(mirror: &Mirror, digest: &str) -> Result<String, String> {
    let url = format!("{}/v2/library/flaky/blobs/{digest}", mirror.url());
    let response = client().get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    read_digest(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_download_resumes_with_a_range_and_every_waiter_completes() {
    let hub = Hub::start().await;
    let bytes = blob(4 * MIB, 1);
    let expected = sha256_digest(&bytes);
    let digest = hub.put_blob("library/flaky", bytes);
    hub.set_fault(
        Target::All,
        Fault::DropAfterFirst {
            after: MIB as u64,
            connections: 2,
        },
    );
    let mirror = Mirror::start(&hub.url());

    let clients = (0..4).map(|_| fetch(&mirror, &digest));
    let results = futures_util::future::join_all(clients).await;
    for result in &results {
        assert_eq!(
            result.as_deref(),
            Ok(expected.as_str()),
            "every waiter completes right"
        );
    }
    assert_eq!(hub.count(Kind::CdnGet), 3, "one download, resumed twice");
    assert_eq!(
        hub.count(Kind::CdnRangeGet),
        2,
        "the resumes asked for the rest only"
    );
    assert_eq!(
        mirror.metric("pullthrough_download_resumes_total", &[]),
        2.0
    );
    // Cached whole: one more client costs the upstream nothing.
    assert_eq!(
        fetch(&mirror, &digest).await.as_deref(),
        Ok(expected.as_str())
    );
    assert_eq!(hub.count(Kind::CdnGet), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_ignores_the_range_restarts_from_zero() {
    let hub = Hub::start().await;
    let bytes = blob(3 * MIB, 2);
    let expected = sha256_digest(&bytes);
    let digest = hub.put_blob("library/flaky", bytes);
    hub.set_fault(
        Target::All,
        Fault::DropAfterFirst {
            after: MIB as u64,
            connections: 1,
        },
    );
    hub.set_fault(Target::All, Fault::IgnoreRange);
    let mirror = Mirror::start(&hub.url());

    assert_eq!(
        fetch(&mirror, &digest).await.as_deref(),
        Ok(expected.as_str())
    );
    assert_eq!(hub.count(Kind::CdnGet), 2);
    assert_eq!(hub.count(Kind::CdnRangeGet), 0);
    assert_eq!(
        mirror.metric("pullthrough_download_restarts_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_connection_is_resumed_instead_of_waiting_for_the_read_timeout() {
    let hub = Hub::start().await;
    let bytes = blob(2 * MIB, 3);
    let expected = sha256_digest(&bytes);
    let digest = hub.put_blob("library/flaky", bytes);
    hub.set_fault(Target::All, Fault::StallAfterFirst(512 * 1024));
    // The read timeout (30 s by default) would fail the transfer; the
    // minimum-rate window (shortened here) resumes it first.
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.stall_window = Duration::from_millis(300))
        .start();

    assert_eq!(
        fetch(&mirror, &digest).await.as_deref(),
        Ok(expected.as_str())
    );
    assert_eq!(hub.count(Kind::CdnRangeGet), 1);
    assert_eq!(
        mirror.metric("pullthrough_download_resumes_total", &[]),
        1.0
    );
}

/// Asking again and again for what the upstream does not have costs the
/// upstream one request, not one per ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_digests_and_tags_are_remembered_briefly() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[1000]);
    let mirror = Mirror::start(&hub.url());
    let ghost = sha256_digest(b"nothing like this exists");
    for _ in 0..20 {
        let blob = client()
            .get(format!("{}/v2/library/app/blobs/{ghost}", mirror.url()))
            .send()
            .await
            .expect("answer");
        assert_eq!(blob.status(), 404);
        let manifest = client()
            .get(format!("{}/v2/library/app/manifests/nope", mirror.url()))
            .header("accept", crate::support::ACCEPT)
            .send()
            .await
            .expect("answer");
        assert_eq!(manifest.status(), 404);
    }
    assert_eq!(
        hub.count(Kind::BlobGet),
        1,
        "one upstream blob GET for 20 asks"
    );
    assert_eq!(
        hub.count(Kind::ManifestHeadByTag),
        1,
        "one upstream HEAD for 20 asks"
    );
}

/// Clients that gave up leave no download behind that nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_nobody_reads_any_more_is_abandoned() {
    let hub = Hub::start().await;
    let bytes = blob(4 * MIB, 4);
    let digest = hub.put_blob("library/flaky", bytes.clone());
    // About a minute for the whole blob.
    hub.set_fault(Target::All, Fault::Throttle(64 * 1024));
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.abandon_after = Duration::from_millis(300))
        .start();
    let mut response = client()
        .get(format!("{}/v2/library/flaky/blobs/{digest}", mirror.url()))
        .send()
        .await
        .expect("answer");
    response.chunk().await.expect("body").expect("first bytes");
    drop(response);
    crate::support::wait_until("the download abandoned", Duration::from_secs(10), || {
        (mirror.metric("pullthrough_downloads_in_flight", &[]) == 0.0).then_some(())
    });
    let tmp = std::fs::read_dir(mirror.cache_dir.join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "the partial file is gone");
    assert!(
        hub.count(Kind::CdnBytesSent) < bytes.len() as u64,
        "the upstream was not drained for nobody"
    );
}

/// One upstream gets a bounded number of downloads at once, however many
/// different blobs clients ask for; the rest wait their turn and complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_per_upstream_are_bounded() {
    let hub = Hub::start().await;
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| blob(256 * 1024, 10 + i)).collect();
    let digests: Vec<String> = blobs
        .iter()
        .map(|b| hub.put_blob("library/flaky", b.clone()))
        .collect();
    hub.set_fault(Target::All, Fault::Throttle(1024 * 1024));
    let mirror = Mirror::builder(&hub.url())
        .config(&format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nmax_downloads = 2\n",
            hub.url()
        ))
        .start();
    let sampler = crate::support::metrics::GaugeSampler::start(
        mirror.addr,
        "pullthrough_downloads_in_flight",
    );
    let pulls = digests.iter().map(|d| fetch(&mirror, d));
    let results = futures_util::future::join_all(pulls).await;
    for (result, digest) in results.iter().zip(&digests) {
        assert_eq!(result.as_deref(), Ok(digest.as_str()));
    }
    let most = sampler.finish().await;
    assert!(
        most > 0.0 && most <= 2.0,
        "{most} downloads at once with max_downloads = 2"
    );
}

/// A blob sent without a Content-Length cannot sneak past the budget: its
/// reservation grows with its bytes, and once it cannot grow the blob is
/// streamed past the cache (the first transfer fails, the next is relayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_without_length_never_outgrows_the_budget() {
    let hub = Hub::start().await;
    let bytes = blob(3 * MIB, 5);
    let expected = sha256_digest(&bytes);
    let digest = hub.put_blob("library/flaky", bytes);
    hub.set_fault(Target::All, Fault::NoLength);
    let mirror = Mirror::builder(&hub.url())
        .arg("--max-size", "1MiB")
        .timings(|t| t.make_room_wait = Duration::from_millis(50))
        .start();

    let first = fetch(&mirror, &digest).await;
    assert!(
        first.is_err(),
        "the first transfer cannot complete: {first:?}"
    );
    assert_eq!(
        fetch(&mirror, &digest).await.as_deref(),
        Ok(expected.as_str())
    );
    assert_eq!(mirror.metric("pullthrough_cache_bypasses_total", &[]), 1.0);
    let cached = crate::support::client::files_named(&mirror.cache_dir.join("blobs"), &digest[7..]);
    assert!(cached.is_empty(), "nothing over the budget was kept");
}
