//! Cached blobs sent with sendfile(2) on plain HTTP/1.1 connections (issue
//! 16): byte-exact whole, in ranges, back to back on one keep-alive
//! connection, HEAD without a body; over TLS and HTTP/2 the same bytes
//! without sendfile; a client gone mid-transfer leaves the mirror serving.
//! A marker byte (the zeros a sendfile frame points at) reaching a client
//! would fail a digest here.

use crate::support::client::{client, read_transfer, response_on, status_of};
use crate::support::hub::{Hub, Kind};
use crate::support::metrics::{sample_sum, scrape};
use crate::support::mirror::Mirror;
use crate::support::{require_tool, sha256_digest, wait_until};
use crate::tls_auth::{tls_connect, tls_connector, TestCa};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const SENT: &str = "pullthrough_served_sendfile_bytes_total";
const MIB: usize = 1 << 20;

/// Bytes that never repeat in a way a wrong offset could hide.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn blob_path(digest: &str) -> String {
    format!("/v2/library/app/blobs/{digest}")
}

/// Fetches the blob once through the mirror, so that it is cached.
async fn warm(base: &str, http: &reqwest::Client, digest: &str, want: &[u8]) {
    let response = http
        .get(format!("{base}{}", blob_path(digest)))
        .send()
        .await
        .expect("warming GET");
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_transfer(response).await.bytes(),
        want,
        "the warming GET"
    );
}

/// One request on a keep-alive connection: (status, head, body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    path: &str,
    range: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: mirror\r\n{range}\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let (head, body) = response_on(stream, method == "HEAD").await;
    (status_of(&head), head, body)
}

/// The requests a Docker or containerd client sends for cached blobs, on
/// one connection, each checked byte for byte: two whole blobs back to
/// back, a range inside one, a resume to its end, a HEAD, the blob again.
/// Returns the body bytes received.
async fn pull_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    (a_digest, a): (&str, &[u8]),
    (b_digest, b): (&str, &[u8]),
) -> usize {
    let (a_path, b_path) = (blob_path(a_digest), blob_path(b_digest));
    let (status, _, body) = exchange(stream, "GET", &a_path, None).await;
    assert_eq!(
        (status, sha256_digest(&body)),
        (200, a_digest.to_owned()),
        "blob a"
    );
    let (status, _, body) = exchange(stream, "GET", &b_path, None).await;
    assert_eq!(
        (status, sha256_digest(&body)),
        (200, b_digest.to_owned()),
        "blob b"
    );

    let (from, to) = (1_000_001, 3 * MIB + 7);
    let range = format!("bytes={from}-{to}");
    let (status, head, body) = exchange(stream, "GET", &a_path, Some(&range)).await;
    assert_eq!(status, 206);
    assert!(head.contains(&format!("content-range: bytes {from}-{to}/{}", a.len())));
    assert!(body == a[from..=to], "the range, byte for byte");
    let resume = a.len() - MIB - 3;
    let range = format!("bytes={resume}-");
    let (status, _, body) = exchange(stream, "GET", &a_path, Some(&range)).await;
    assert_eq!(status, 206);
    assert!(body == a[resume..], "the resumed tail, byte for byte");

    let (status, head, body) = exchange(stream, "HEAD", &a_path, None).await;
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-length: {}", a.len())),
        "{head}"
    );
    assert!(head.contains(&format!("docker-content-digest: {a_digest}")));
    assert!(body.is_empty());
    let (status, _, body) = exchange(stream, "GET", &a_path, None).await;
    assert_eq!(
        (status, sha256_digest(&body)),
        (200, a_digest.to_owned()),
        "a again"
    );
    2 * a.len() + b.len() + (to - from + 1) + (a.len() - resume)
}

/// Two blobs of odd sizes (one more than the largest sendfile span).
fn two_blobs(hub: &Hub) -> ((String, Vec<u8>), (String, Vec<u8>)) {
    let a = noise(6 * MIB + 12_345, 1);
    let b = noise(MIB + 1, 2);
    (
        (hub.put_blob("library/app", a.clone()), a),
        (hub.put_blob("library/app", b.clone()), b),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_blobs_go_out_byte_exact_with_sendfile_on_plain_http1_and_without_on_h2() {
    let hub = Hub::start().await;
    let ((a_digest, a), (b_digest, b)) = two_blobs(&hub);
    let mirror = Mirror::start(&hub.url());
    let base = mirror.url();
    let http = client();
    warm(&base, &http, &a_digest, &a).await;
    warm(&base, &http, &b_digest, &b).await;
    let before = mirror.metric(SENT, &[]);

    let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
    let received = pull_on(&mut stream, (&a_digest, &a), (&b_digest, &b)).await;
    let sent = mirror.metric(SENT, &[]) - before;
    // Spans whose pages were not cached are read instead, so not every
    // byte need be; but these were just written.
    assert!(
        sent >= MIB as f64 && sent <= received as f64,
        "{sent} of {received} bytes sent with sendfile"
    );
    drop(stream);

    // HTTP/2 frames every byte itself: same bytes, no sendfile.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("h2 client");
    let before = mirror.metric(SENT, &[]);
    let response = h2
        .get(format!("{base}{}", blob_path(&a_digest)))
        .send()
        .await
        .expect("h2 GET");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(read_transfer(response).await.bytes(), a, "over h2");
    let response = h2
        .get(format!("{base}{}", blob_path(&a_digest)))
        .header("range", "bytes=5-2097151")
        .send()
        .await
        .expect("h2 range GET");
    assert_eq!(response.status(), 206);
    assert!(
        read_transfer(response).await.bytes() == a[5..2 * MIB],
        "a range over h2"
    );
    assert_eq!(
        mirror.metric(SENT, &[]),
        before,
        "nothing sent with sendfile on h2"
    );
    assert_eq!(hub.count(Kind::BlobGet), 2, "one upstream GET per blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_blobs_over_tls_are_byte_exact_and_never_sent_with_sendfile() {
    if !require_tool("openssl") {
        return;
    }
    let hub = Hub::start().await;
    let ((a_digest, a), (b_digest, b)) = two_blobs(&hub);
    let ca = TestCa::new();
    let (cert, key) = ca.issue("sendfile", "2001");
    let mirror = Mirror::builder(&hub.url())
        .arg("--tls-cert", cert.to_str().expect("path"))
        .arg("--tls-key", key.to_str().expect("path"))
        .metrics_listener()
        .start();
    let sent = || {
        let addr = mirror.metrics_addr.expect("metrics listener");
        sample_sum(&scrape(addr), SENT, &[])
    };
    let port = mirror.addr.port();
    let base = format!("https://127.0.0.1:{port}");
    let pem = std::fs::read(ca.ca_file()).expect("CA");
    // h2 by ALPN.
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("TLS client");
    warm(&base, &http, &a_digest, &a).await;
    warm(&base, &http, &b_digest, &b).await;
    let response = http
        .get(format!("{base}{}", blob_path(&a_digest)))
        .send()
        .await
        .expect("GET over TLS");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        read_transfer(response).await.bytes(),
        a,
        "cached, over h2 and TLS"
    );

    // HTTP/1.1 over TLS, the same requests as on plain HTTP/1.1.
    let mut stream = tls_connect(&tls_connector(&ca.ca_file()), port).await;
    pull_on(&mut stream, (&a_digest, &a), (&b_digest, &b)).await;
    assert_eq!(sent(), 0.0, "TLS sees every byte it sends");
    assert_eq!(hub.count(Kind::BlobGet), 2, "one upstream GET per blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_mid_sendfile_leaves_the_mirror_serving_others() {
    let hub = Hub::start().await;
    let blob = noise(16 * MIB, 3);
    let digest = hub.put_blob("library/app", blob.clone());
    let mirror = Mirror::start(&hub.url());
    warm(&mirror.url(), &client(), &digest, &blob).await;
    let path = blob_path(&digest);

    for round in 0..3 {
        // Reads the head and a little of the body, then hangs up while
        // the mirror is mid-blob (the socket buffers hold far less).
        let mut gone = TcpStream::connect(mirror.addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n");
        gone.write_all(request.as_bytes()).await.expect("send");
        let mut some = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), gone.read(&mut some))
            .await
            .expect("the response starts")
            .expect("read");
        assert!(n > 0, "round {round}: a response");
        // Meanwhile and after, others get the blob whole.
        let mut other = TcpStream::connect(mirror.addr).await.expect("connect");
        let (status, _, body) = exchange(&mut other, "GET", &path, None).await;
        assert_eq!(
            (status, sha256_digest(&body)),
            (200, digest.clone()),
            "round {round}"
        );
        drop(gone);
        let (status, _, body) = exchange(&mut other, "GET", &path, None).await;
        assert_eq!(
            (status, sha256_digest(&body)),
            (200, digest.clone()),
            "round {round}"
        );
    }
    // The abandoned connections were ended, not left hanging.
    wait_until(
        "only the scrape's connection open",
        Duration::from_secs(10),
        || (mirror.metric("pullthrough_connections_open", &[]) == 1.0).then_some(()),
    );
    assert!(mirror.metric(SENT, &[]) > 0.0, "sendfile was used");
    assert_eq!(hub.count(Kind::BlobGet), 1);
}
