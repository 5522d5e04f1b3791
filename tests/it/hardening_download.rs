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
