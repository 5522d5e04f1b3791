//! Keep-alive HTTP/1.1 connections between requests: parked once idle
//! (their buffers freed), and served on the same connection when the
//! client speaks again, whatever it had sent by then.

use crate::support::client::{response_on, status_of};
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;
use crate::support::wait_until;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARK_AFTER: Duration = Duration::from_millis(50);

fn parked(mirror: &Mirror) -> f64 {
    mirror.metric("pullthrough_connections_parked", &[])
}

fn blob_request(digest: &str) -> String {
    format!("GET /v2/library/app/blobs/{digest} HTTP/1.1\r\nHost: mirror\r\n\r\n")
}

/// One response off the connection: status, whether it announced its
/// close, and its body (read to its Content-Length).
async fn response(stream: &mut TcpStream) -> (u16, bool, Vec<u8>) {
    let (head, body) = response_on(stream, false).await;
    let closes = head.lines().any(|l| l == "connection: close");
    (status_of(&head), closes, body)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_is_parked_and_serves_its_next_requests() {
    let hub = Hub::start().await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = hub.put_blob("library/app", blob);
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.park_after = PARK_AFTER)
        .start();

    let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
    for round in 0..3 {
        stream
            .write_all(blob_request(&digest).as_bytes())
            .await
            .expect("send");
        let (status, closes, body) = response(&mut stream).await;
        assert_eq!(status, 200, "round {round}");
        assert!(!closes, "round {round}: the connection is kept alive");
        assert_eq!(sha256(&body), digest, "round {round}: the blob, byte-exact");
        // (Each scrape is a connection of its own, closed after it.)
        wait_until(
            "the idle connection parked",
            Duration::from_secs(10),
            || (parked(&mirror) == 1.0).then_some(()),
        );
    }
    assert_eq!(hub.count(Kind::BlobGet), 1, "one upstream GET");
    drop(stream);
    wait_until(
        "the parked connection gone",
        Duration::from_secs(10),
        || (parked(&mirror) == 0.0).then_some(()),
    );
    // Only the scrape asking is left (earlier scrapes' may still be closing).
    wait_until(
        "only the scrape's connection open",
        Duration::from_secs(10),
        || (mirror.metric("pullthrough_connections_open", &[]) == 1.0).then_some(()),
    );
}

/// A head half sent before a pause, or a second request sent with the
/// first, is not lost when the connection is parked in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_sent_before_a_park_are_part_of_the_next_request() {
    let hub = Hub::start().await;
    let blob = b"a small layer".to_vec();
    let digest = hub.put_blob("library/app", blob.clone());
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.park_after = PARK_AFTER)
        .start();
    let request = blob_request(&digest);

    let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    assert_eq!(response(&mut stream).await.2, blob);
    wait_until(
        "the idle connection parked",
        Duration::from_secs(10),
        || (parked(&mirror) == 1.0).then_some(()),
    );
    // Half a head, then a pause many times the park delay.
    let (first, rest) = request.split_at(20);
    stream.write_all(first.as_bytes()).await.expect("send");
    tokio::time::sleep(PARK_AFTER * 8).await;
    stream.write_all(rest.as_bytes()).await.expect("send");
    let (status, _, body) = response(&mut stream).await;
    assert_eq!((status, body), (200, blob.clone()), "the split request");

    // Two requests in one write, on a fresh connection, then a pause.
    let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
    stream
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .expect("send");
    for n in 0..2 {
        let (status, _, body) = response(&mut stream).await;
        assert_eq!((status, &body), (200, &blob), "pipelined request {n}");
    }
    wait_until(
        "the pipelining connection parked",
        Duration::from_secs(10),
        || (parked(&mirror) >= 1.0).then_some(()),
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    assert_eq!(response(&mut stream).await.2, blob, "after the park");
}

/// Parking restarts no clock a client could use: a head that stops
/// arriving is cut off within header_read_timeout, parks or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_stalled_across_parks_is_cut_off_after_header_read_timeout() {
    let hub = Hub::start().await;
    let mirror = Mirror::builder(&hub.url())
        .config("header_read_timeout = \"1s\"\n")
        .timings(|t| t.park_after = PARK_AFTER)
        .start();
    let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(response(&mut stream).await.0, 200);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .expect("send");
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a half-sent head kept its connection for 10 s (header_read_timeout = 1s)"
    );
}

/// A response the client asked to end the connection with (HTTP/1.0 style
/// `Connection: close`) is sent whole before the close, even when the
/// client is slow to read and hyper still holds its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closing_response_is_sent_whole_to_a_slow_reader() {
    let hub = Hub::start().await;
    let blob: Vec<u8> = (0..12_000_000u32).map(|i| (i % 253) as u8).collect();
    let digest = hub.put_blob("library/app", blob);
    let mirror = Mirror::builder(&hub.url())
        .timings(|t| t.park_after = PARK_AFTER)
        .start();
    // Cached first, so the second GET streams from disk at full speed.
    let mut warm = TcpStream::connect(mirror.addr).await.expect("connect");
    warm.write_all(blob_request(&digest).as_bytes())
        .await
        .expect("send");
    assert_eq!(sha256(&response(&mut warm).await.2), digest);

    for _ in 0..3 {
        let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
        let request = format!(
            "GET /v2/library/app/blobs/{digest} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        // Let the socket buffers fill while nobody reads.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut all))
            .await
            .expect("the response and the close within 20 s")
            .expect("read");
        let head_end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        assert_eq!(
            all.len() - head_end,
            12_000_000,
            "the whole body before the close"
        );
        assert_eq!(sha256(&all[head_end..]), digest);
    }
}
