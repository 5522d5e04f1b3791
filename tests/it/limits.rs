//! Limits that keep a shared mirror fair (issue 12): per client address
//! (its own, or the one a trusted proxy names), a request rate and a
//! number of requests in flight, over which the client gets `429
//! TOOMANYREQUESTS` with `Retry-After` while others are served; response
//! bandwidth per client and in total, shaped and measured here within
//! ±20 %. Clients are real loopback addresses (127.0.0.2, 127.0.0.3, …) the
//! test binds its connections to.

use crate::support::client::{error_of, header, read_transfer, REQUEST_TIMEOUT};
use crate::support::hub::{Hub, TestImage};
use crate::support::mirror::Mirror;
use crate::support::ACCEPT;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A client whose connections come from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

async fn manifest(
    client: &reqwest::Client,
    mirror: &Mirror,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .get(format!("{}/v2/app/manifests/latest", mirror.url()))
        .header("accept", ACCEPT);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.expect("manifest request")
}

/// Asserts a 429 TOOMANYREQUESTS with a Retry-After of 1..=max seconds and
/// a message naming `limit`.
async fn assert_limited(response: reqwest::Response, limit: &str, max_retry: u64, what: &str) {
    let retry: Option<u64> = header(&response, "retry-after").and_then(|v| v.parse().ok());
    let error = error_of(response).await;
    assert_eq!(error.status, 429, "{what}: {}", error.body);
    assert_eq!(error.code.as_deref(), Some("TOOMANYREQUESTS"), "{what}");
    assert!(
        error.body.contains(limit),
        "{what}: the message names the {limit} limit: {}",
        error.body
    );
    let retry = retry.unwrap_or_else(|| panic!("{what}: no numeric Retry-After"));
    assert!(
        (1..=max_retry).contains(&retry),
        "{what}: Retry-After {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_rate_gets_429_while_others_are_served() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[1000]);
    // Three requests, then one a minute: nothing refills during the test.
    let mirror = Mirror::builder(&hub.url())
        .config(
            "client_rate = \"1/m\"\nclient_burst = 3\n\
             trusted_proxies = [\"127.0.0.5\"]\nunlimited_clients = [\"127.0.0.4/32\"]\n",
        )
        .start();
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for i in 0..3 {
        let response = manifest(&a, &mirror, None).await;
        assert_eq!(response.status(), 200, "request {i} of client A");
    }
    assert_limited(
        manifest(&a, &mirror, None).await,
        "rate",
        60,
        "client A's 4th",
    )
    .await;
    // Another address is served meanwhile, and A's probes still answer.
    let response = manifest(&b, &mirror, None).await;
    assert_eq!(response.status(), 200, "client B");
    assert!(response.bytes().await.unwrap() == image.manifest_bytes);
    let health = a
        .get(format!("{}/healthz", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health checks are never limited");
    // An unlimited address is not counted at all.
    let c = client_from("127.0.0.4");
    for i in 0..6 {
        assert_eq!(
            manifest(&c, &mirror, None).await.status(),
            200,
            "unlimited request {i}"
        );
    }
    // Behind a trusted proxy, the client is the address it forwards for.
    let proxy = client_from("127.0.0.5");
    for i in 0..3 {
        let response = manifest(&proxy, &mirror, Some("198.51.100.7")).await;
        assert_eq!(response.status(), 200, "forwarded request {i}");
    }
    assert_limited(
        manifest(&proxy, &mirror, Some("198.51.100.7")).await,
        "rate",
        60,
        "forwarded client's 4th",
    )
    .await;
    let response = manifest(&proxy, &mirror, Some("198.51.100.8")).await;
    assert_eq!(
        response.status(),
        200,
        "another client behind the same proxy"
    );
    // Counted per reason, never per address.
    let metrics = mirror.metrics();
    assert_eq!(
        mirror.metric("pullthrough_client_limited_total", &[("reason", "rate")]),
        2.0
    );
    for ip in ["127.0.0.2", "198.51.100.7"] {
        assert!(
            !metrics.contains(ip),
            "a client address in the metrics: {ip}"
        );
    }
}

/// A mirror serving `image` (a layer of `layer` bytes) with the given
/// limits, its cache already warm (filled by an unlimited client).
async fn warm_mirror(limits: &str, layer: usize) -> (Hub, TestImage, Mirror) {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[layer]);
    let mirror = Mirror::builder(&hub.url())
        .config(&format!("{limits}\nunlimited_clients = [\"127.0.0.9\"]\n"))
        .start();
    let warm = client_from("127.0.0.9");
    let (digest, bytes) = &image.layers[0];
    let response = warm
        .get(format!("{}/v2/app/blobs/{digest}", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(&read_transfer(response).await.bytes(), bytes);
    (hub, image, mirror)
}

/// Downloads the image's layer as `client`; returns the bytes received
/// and how long the whole exchange took.
async fn download(
    client: &reqwest::Client,
    mirror: &Mirror,
    image: &TestImage,
) -> (usize, Duration) {
    let started = Instant::now();
    let (digest, bytes) = &image.layers[0];
    let response = client
        .get(format!("{}/v2/app/blobs/{digest}", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = read_transfer(response).await.bytes();
    assert_eq!(&got, bytes, "shaped, never altered");
    (got.len(), started.elapsed())
}

/// Bytes per second of `bytes` over `elapsed`, as a fraction of `cap`.
fn share_of(bytes: usize, elapsed: Duration, cap: f64) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / cap
}

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bandwidth_is_shaped_per_client_and_in_total_within_20_percent() {
    let layer = 3 << 20;
    let (_hub, image, mirror) = warm_mirror("client_bandwidth = \"2MiB/s\"", layer).await;
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));

    // One download: about 1.5 s at 2 MiB/s.
    let (got, took) = download(&a, &mirror, &image).await;
    let one = share_of(got, took, 2.0 * MIB);
    // Two at once from the same client share its 2 MiB/s, while another
    // client gets 2 MiB/s of its own.
    let ((x, tx), (y, ty), (z, tz)) = tokio::join!(
        download(&a, &mirror, &image),
        download(&a, &mirror, &image),
        download(&b, &mirror, &image),
    );
    let shared = share_of(x + y, tx.max(ty), 2.0 * MIB);
    let other = share_of(z, tz, 2.0 * MIB);
    eprintln!(
        "client_bandwidth 2MiB/s: one download at {one:.2} of the cap, two of one client \
         together {shared:.2}, another client alongside {other:.2}"
    );
    assert!(
        (0.8..=1.2).contains(&one),
        "one download ran at {one:.2} of the cap"
    );
    assert!(
        (0.8..=1.2).contains(&shared),
        "two downloads together ran at {shared:.2} of the cap"
    );
    assert!(
        (0.8..=1.2).contains(&other),
        "the other client ran at {other:.2} of its cap"
    );
    assert!(
        mirror.metric(
            "pullthrough_client_limited_total",
            &[("reason", "bandwidth")]
        ) >= 3.0,
        "slowed responses are counted"
    );
    assert_eq!(
        mirror.metric("pullthrough_served_sendfile_bytes_total", &[]),
        0.0,
        "paced bodies are sent as read frames, not with sendfile"
    );
    drop(mirror);

    // A total cap: two clients together get 2 MiB/s.
    let (_hub, image, mirror) = warm_mirror("total_bandwidth = \"2MiB/s\"", layer).await;
    let ((x, tx), (y, ty)) =
        tokio::join!(download(&a, &mirror, &image), download(&b, &mirror, &image));
    let total = share_of(x + y, tx.max(ty), 2.0 * MIB);
    eprintln!("total_bandwidth 2MiB/s: two clients together {total:.2} of the cap");
    assert!(
        (0.8..=1.2).contains(&total),
        "two clients together ran at {total:.2} of the total cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_at_its_concurrency_gets_429_until_its_transfer_ends() {
    // A slow transfer (about a second at 1 MiB/s) holds the client's one slot.
    let (_hub, image, mirror) = warm_mirror(
        "client_concurrency = 1\nclient_bandwidth = \"1MiB/s\"",
        1 << 20,
    )
    .await;
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let (digest, _) = &image.layers[0];
    let slow = a
        .get(format!("{}/v2/app/blobs/{digest}", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    // Headers are in, the body is still flowing: the slot is taken.
    assert_limited(
        manifest(&a, &mirror, None).await,
        "concurrency",
        1,
        "A's second request",
    )
    .await;
    assert_eq!(
        manifest(&b, &mirror, None).await.status(),
        200,
        "client B meanwhile"
    );
    assert_eq!(&read_transfer(slow).await.bytes(), &image.layers[0].1);
    // The body has ended: the slot is free again (bounded wait for the
    // server to see the end).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = manifest(&a, &mirror, None).await.status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A stays limited after its transfer: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mirror.metric(
            "pullthrough_client_limited_total",
            &[("reason", "concurrency")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_429_reaches_the_client_as_429_with_its_reason_in_words() {
    use crate::support::hub::{Fault, Target};
    let hub = Hub::start().await;
    hub.push_image("library/app", "latest", &[1000]);
    let client = client_from("127.0.0.2");

    // Docker Hub's pull limit: 429 with ratelimit-remaining 0.
    hub.set_fault(
        Target::All,
        Fault::TooManyRequests {
            retry_after_secs: 600,
        },
    );
    let mirror = Mirror::start(&hub.url());
    let response = manifest(&client, &mirror, None).await;
    assert_eq!(header(&response, "retry-after").as_deref(), Some("600"));
    let error = error_of(response).await;
    assert_eq!(error.status, 429, "{}", error.body);
    assert_eq!(error.code.as_deref(), Some("TOOMANYREQUESTS"));
    assert!(
        error
            .body
            .contains("Docker Hub's pull limit for this mirror is used up; retry after 10 minutes"),
        "{}",
        error.body
    );
    drop(mirror);

    // The abuse limit: a plain 429, no rate-limit headers.
    hub.clear_faults();
    hub.set_fault(Target::All, Fault::PlainTooManyRequests);
    let mirror = Mirror::start(&hub.url());
    let error = error_of(manifest(&client, &mirror, None).await).await;
    assert_eq!(error.status, 429, "{}", error.body);
    assert!(
        error
            .body
            .contains("Docker Hub is refusing this mirror's requests for now"),
        "{}",
        error.body
    );
}
