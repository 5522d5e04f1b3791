//! What a hostile or broken client can do to the listener: connections
//! that never speak, or that stop reading, must not hold their slots.

use crate::support::hub::Hub;
use crate::support::mirror::Mirror;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn healthz_status(stream: &mut TcpStream) -> Option<u16> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

/// Reads until the mirror closes the connection (EOF or reset), within
/// `limit`; `false` if it was still open by then.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_are_closed_and_free_their_slots() {
    let hub = Hub::start().await;
    let mirror = Mirror::builder(&hub.url())
        .config("max_connections = 2\nheader_read_timeout = \"1s\"\n")
        .start();

    // Two connections that never send a byte take both slots.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(mirror.addr).await.expect("connect"));
    }
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "a connection that never spoke was still open after 10 s (header_read_timeout = 1s)"
        );
    }
    let mut fresh = TcpStream::connect(mirror.addr).await.expect("connect");
    let status = tokio::time::timeout(Duration::from_secs(5), healthz_status(&mut fresh)).await;
    assert_eq!(
        status,
        Ok(Some(200)),
        "a real client is served once the silent ones are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let hub = Hub::start().await;
    // Larger than what socket buffers on loopback absorb.
    let blob = vec![7u8; 48 << 20];
    let digest = hub.put_blob("library/big", blob);
    let mirror = Mirror::builder(&hub.url())
        .config("max_connections = 2\nidle_timeout = \"1s\"\n")
        .start();

    let request = format!("GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(mirror.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        stalled.push(stream);
    }
    // They never read; once no byte has moved for idle_timeout, the mirror
    // closes them (reading now drains what the buffers held, then ends).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for stream in &mut stalled {
        assert!(
            closed_within(stream, Duration::from_secs(20)).await,
            "a connection that stopped reading was kept open"
        );
    }
    let mut fresh = TcpStream::connect(mirror.addr).await.expect("connect");
    let status = tokio::time::timeout(Duration::from_secs(5), healthz_status(&mut fresh)).await;
    assert_eq!(status, Ok(Some(200)), "a real client is served afterwards");
}

/// Wrong passwords from one client address are turned away unheard after
/// a few tries (429 with Retry-After), while other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_guessing_is_throttled_per_client() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = bcrypt::hash("right", 4).expect("bcrypt");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{hash}\n")).expect("htpasswd");
    let mirror = Mirror::builder(&hub.url())
        .config(&format!(
            "htpasswd_file = \"{}\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
            htpasswd.display()
        ))
        .start();
    let url = format!("{}/v2/", mirror.url());
    let ask = |from: &'static str, password: &'static str| {
        let url = url.clone();
        async move {
            crate::support::client::client()
                .get(url)
                .header("x-forwarded-for", from)
                .basic_auth("ci", Some(password))
                .send()
                .await
                .expect("mirror answers")
        }
    };
    for _ in 0..10 {
        assert_eq!(ask("10.0.0.1", "guess").await.status(), 401);
    }
    let throttled = ask("10.0.0.1", "right").await;
    assert_eq!(
        throttled.status(),
        429,
        "the guesser is turned away, even when right"
    );
    assert!(throttled.headers().contains_key("retry-after"));
    assert_eq!(
        ask("10.0.0.2", "right").await.status(),
        200,
        "others are served"
    );
    // An unknown user is refused like a wrong password.
    let unknown = crate::support::client::client()
        .get(&url)
        .header("x-forwarded-for", "10.0.0.3")
        .basic_auth("nobody", Some("right"))
        .send()
        .await
        .expect("mirror answers");
    assert_eq!(unknown.status(), 401);
}

/// One HTTP/2 connection may not drive unbounded work: the mirror
/// advertises a stream limit, so 100 concurrent pulls of distinct blobs
/// over one connection never run more than that many downloads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_http2_connection_runs_a_bounded_number_of_downloads() {
    use crate::support::hub::{Fault, Target};
    let hub = Hub::start().await;
    let digests: Vec<String> = (0..100u8)
        .map(|i| hub.put_blob("library/many", vec![i; 256 * 1024]))
        .collect();
    // Slow enough that the streams overlap.
    hub.set_fault(Target::All, Fault::Throttle(512 * 1024));
    let mirror = Mirror::start(&hub.url());
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let sampler = crate::support::metrics::GaugeSampler::start(
        mirror.addr,
        "pullthrough_downloads_in_flight",
    );
    let pulls = digests.iter().map(|digest| {
        let url = format!("{}/v2/library/many/blobs/{digest}", mirror.url());
        let h2 = h2.clone();
        async move {
            let response = h2.get(url).send().await.map_err(|e| e.to_string())?;
            crate::support::client::read_digest(response).await
        }
    });
    let results = futures_util::future::join_all(pulls).await;
    for (result, digest) in results.iter().zip(&digests) {
        assert_eq!(result.as_deref(), Ok(digest.as_str()));
    }
    let most = sampler.finish().await;
    assert!(most > 0.0, "the sampler saw the downloads");
    assert!(
        most <= 32.0,
        "{most} downloads ran at once for one connection"
    );
}
