//! What an operator relies on: graceful shutdown on SIGTERM, the separate
//! metrics listener, request ids, the access log (text and JSON), trusted
//! X-Forwarded-For, the connection limit and the request-head timeout.

use crate::support::client::{client, files_named, header, hex_of, read_digest};
use crate::support::hub::{Fault, Hub, Kind, Target};
use crate::support::mirror::{Mirror, MirrorBuilder};
use crate::support::{require_tool, wait_until};
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// The mirror as an operator runs it: the binary with `RUST_LOG=info`, its
/// stderr kept so a test can read the access log.
fn operated(upstream: &str) -> MirrorBuilder {
    Mirror::builder(upstream).process().log("info")
}

/// The text-format access line of the request with this id.
fn access_line(server: &Mirror, request_id: &str) -> String {
    let token = format!("request_id={request_id}");
    let is_it = |l: &&str| l.contains(" access: ") && l.split_whitespace().any(|t| t == token);
    let log = server.wait_log(&token, |log| log.lines().any(|l| is_it(&l)));
    let line = log.lines().find(is_it).expect("found above");
    line.to_string()
}

/// `name=value` of a text-format log line, quotes removed.
fn text_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

async fn get(url: String) -> reqwest::Response {
    client().get(url).send().await.expect("mirror answers")
}

/// Sends `GET /healthz` on a kept-alive connection.
async fn send_healthz(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n\r\n")
        .await
        .expect("write request");
}

/// Reads one HTTP/1.1 response (head and Content-Length body), leaving
/// the connection open; returns its status.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return status.ok_or_else(|| std::io::Error::other(format!("bad head: {head}")));
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_transfer_refuses_new_connections_and_keeps_the_blob() {
    if !require_tool("kill") {
        return;
    }
    let size = 8 * MIB;
    let hub = Hub::start().await;
    let image = hub.push_image("library/big", "v1", &[size]);
    let digest = image.layers[0].0.clone();
    // ~2.7 s upstream: long enough to be mid-way when SIGTERM lands.
    hub.set_fault(
        Target::Digest(digest.clone()),
        Fault::Throttle(3 * MIB as u64),
    );
    let grace = Duration::from_secs(20);
    let cache_tmp = tempfile::tempdir().expect("tempdir");
    let cache = cache_tmp.path().join("cache");
    let mut server = operated(&hub.url())
        .config("shutdown_grace = \"20s\"\n")
        .cache_dir(&cache)
        .start();
    let blob_url = format!("{}/v2/library/big/blobs/{digest}", server.url());

    // The client hashes the body and reports its progress as it reads.
    let response = get(blob_url.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = Arc::new(AtomicU64::new(0));
    let transfer = tokio::spawn({
        let received = Arc::clone(&received);
        let mut response = response;
        async move {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            let mut total = 0u64;
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("{e:?}"))? {
                hasher.update(&chunk);
                total += chunk.len() as u64;
                received.store(total, Ordering::SeqCst);
            }
            Ok::<_, String>((total, format!("sha256:{}", hex::encode(hasher.finalize()))))
        }
    });
    wait_until("the first MiB", Duration::from_secs(20), || {
        (received.load(Ordering::SeqCst) >= MIB as u64).then_some(())
    });
    let at_signal = received.load(Ordering::SeqCst);
    assert!(
        at_signal < size as u64,
        "transfer already over before SIGTERM"
    );

    server.sigterm();
    let signalled = Instant::now();

    // The listener closes at once, so a load balancer moves on.
    wait_until(
        "new connections to be refused after SIGTERM",
        Duration::from_secs(5),
        || match std::net::TcpStream::connect(server.addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );

    let (total, got) = tokio::time::timeout(Duration::from_secs(30), transfer)
        .await
        .expect("transfer finishes within 30 s")
        .expect("transfer task")
        .unwrap_or_else(|e| panic!("transfer broke after SIGTERM ({at_signal} bytes then): {e}"));
    assert_eq!(total, size as u64, "bytes received");
    assert_eq!(got, digest, "the client got the wrong bytes");

    let status = server.wait_exit(grace + Duration::from_secs(5));
    assert!(
        signalled.elapsed() <= grace,
        "exit took {:?}, beyond the {grace:?} grace period",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0), "exit status\n{}", server.stderr());

    // The download was finished into the cache: a restarted mirror serves
    // the blob without asking the hub for it.
    let (blob_gets, cdn_gets) = (hub.count(Kind::BlobGet), hub.count(Kind::CdnGet));
    let restarted = Mirror::builder(&hub.url()).cache_dir(&cache).start();
    let again = get(format!("{}/v2/library/big/blobs/{digest}", restarted.url())).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(read_digest(again).await.as_deref(), Ok(digest.as_str()));
    assert_eq!(
        hub.count(Kind::BlobGet),
        blob_gets,
        "registry blob GETs after restart"
    );
    assert_eq!(hub.count(Kind::CdnGet), cdn_gets, "CDN GETs after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_listener_serves_only_operational_endpoints() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[1000]);
    let server = Mirror::builder(&hub.url()).metrics_listener().start();
    let ops = server.metrics_url();

    let metrics = get(format!("{ops}/metrics")).await;
    assert_eq!(metrics.status(), StatusCode::OK, "/metrics");
    let text = metrics.text().await.expect("metrics body");
    assert!(text.contains("pullthrough_build_info"), "{text}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(format!("{ops}{path}")).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Whoever can reach the metrics port must not get a registry.
    for path in ["/v2/", "/v2/library/app/manifests/v1"] {
        let status = get(format!("{ops}{path}")).await.status();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{path} on the metrics listener"
        );
    }
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0, "the hub was asked");

    assert_eq!(
        get(format!("{}/v2/", server.url())).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_ids_are_echoed_and_logged() {
    let hub = Hub::start().await;
    let server = operated(&hub.url()).start();
    let url = format!("{}/v2/", server.url());

    let given = client()
        .get(&url)
        .header("x-request-id", "test-id-123")
        .send()
        .await
        .expect("mirror answers");
    assert_eq!(
        header(&given, "x-request-id").as_deref(),
        Some("test-id-123")
    );
    let line = access_line(&server, "test-id-123");
    assert_eq!(text_field(&line, "path"), Some("/v2/"), "{line}");

    // Without one, each request gets its own, logged too.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = get(url.clone()).await;
        let id = header(&response, "x-request-id").expect("generated x-request-id");
        assert!(!id.is_empty());
        access_line(&server, &id);
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two requests, one id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_access_lines_carry_the_request_fields() {
    let size = 300_000;
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[size]);
    let digest = image.layers[0].0.clone();
    let server = operated(&hub.url()).arg("--log-format", "json").start();
    let cache = server.cache_dir.clone();
    let path = format!("/v2/library/app/blobs/{digest}");
    let url = format!("{}{path}", server.url());

    let first = get(url.clone()).await;
    assert_eq!(read_digest(first).await.as_deref(), Ok(digest.as_str()));
    // A hit needs the download renamed into the store first.
    wait_until("the blob in the cache", Duration::from_secs(10), || {
        (!files_named(&cache.join("blobs"), hex_of(&digest)).is_empty()).then_some(())
    });
    let second = get(url).await;
    assert_eq!(read_digest(second).await.as_deref(), Ok(digest.as_str()));

    // The JSON formatter (not flattened) nests event fields under "fields".
    let is_access = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["target"] == "access" && v["fields"]["path"] == path.as_str()
    };
    let log = server.wait_log("two blob access lines", |log| {
        log.lines().filter(|l| is_access(l)).count() >= 2
    });
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
    }
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| is_access(l))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (entry, cache) in access.iter().zip(["miss", "hit"]) {
        let fields = &entry["fields"];
        assert_eq!(fields["method"], "GET", "{entry}");
        assert_eq!(fields["status"], 200, "{entry}");
        assert_eq!(fields["bytes"], size as u64, "{entry}");
        assert_eq!(fields["cache"], cache, "{entry}");
        assert_eq!(fields["complete"], true, "{entry}");
        assert_eq!(fields["client"], "127.0.0.1", "{entry}");
        assert!(
            fields["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{entry}"
        );
    }
}

/// A transfer the client abandons is logged as such, with the bytes that
/// really went out, not the length its headers promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_transfer_is_logged_incomplete_with_the_bytes_sent() {
    let size = 4 * 1024 * 1024;
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[size]);
    let digest = image.layers[0].0.clone();
    hub.set_fault(Target::All, Fault::Throttle(1024 * 1024));
    let server = operated(&hub.url()).arg("--log-format", "json").start();
    let path = format!("/v2/library/app/blobs/{digest}");
    let mut response = get(format!("{}{path}", server.url())).await;
    let first = response.chunk().await.expect("body").expect("first bytes");
    assert!(!first.is_empty());
    drop(response);

    let is_access = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["target"] == "access" && v["fields"]["path"] == path.as_str()
    };
    let log = server.wait_log("the abandoned transfer's access line", |log| {
        log.lines().any(&is_access)
    });
    let line = log.lines().find(|l| is_access(l)).expect("access line");
    let entry: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let fields = &entry["fields"];
    assert_eq!(fields["status"], 200, "{entry}");
    assert_eq!(fields["complete"], false, "{entry}");
    let sent = fields["bytes"].as_u64().expect("bytes");
    assert!(sent > 0 && sent < size as u64, "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let hub = Hub::start().await;
    let cases = [
        (
            "trusted_proxies = [\"127.0.0.1/32\"]\n",
            "xff-trusted",
            "203.0.113.7",
        ),
        // Anyone may send the header; untrusted, it must not reach the log.
        ("", "xff-untrusted", "127.0.0.1"),
    ];
    for (toml, id, expected) in cases {
        let server = operated(&hub.url()).config(toml).start();
        let response = client()
            .get(format!("{}/v2/", server.url()))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-request-id", id)
            .send()
            .await
            .expect("mirror answers");
        assert_eq!(response.status(), StatusCode::OK);
        let line = access_line(&server, id);
        assert_eq!(text_field(&line, "client"), Some(expected), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_beyond_max_connections_waits_for_a_free_slot() {
    let hub = Hub::start().await;
    let server = Mirror::builder(&hub.url())
        .config("max_connections = 2\n")
        .start();

    // Two kept-alive connections, each answered once, so each holds a slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        send_healthz(&mut stream).await;
        let status = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
            .await
            .expect("answered within 5 s")
            .expect("response");
        assert_eq!(status, 200);
        held.push(stream);
    }

    // The kernel completes the handshake; the mirror must not serve it.
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    send_healthz(&mut third).await;
    let early = tokio::time::timeout(Duration::from_secs(1), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "third connection served over the limit: {early:?}"
    );

    drop(held.remove(0));
    let status = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third))
        .await
        .expect("third connection served within 5 s of a slot freeing")
        .expect("response");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_request_head_is_cut_off_after_header_read_timeout() {
    let hub = Hub::start().await;
    let server = Mirror::builder(&hub.url())
        .config("header_read_timeout = \"1s\"\n")
        .start();

    // A head that never ends (slowloris).
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write partial head");
    let url = format!("{}/v2/", server.url());
    assert_eq!(
        get(url.clone()).await.status(),
        StatusCode::OK,
        "others meanwhile"
    );

    // Closed (EOF or reset; a 408 first is fine too), not held open.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request head kept its connection for 10 s (header_read_timeout = 1s)"
    );

    assert_eq!(get(url).await.status(), StatusCode::OK, "others afterwards");
}
