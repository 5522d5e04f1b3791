//! The mirror's own egress (issue 12): real proxies from Debian packages
//! (tinyproxy for HTTP forward and CONNECT, microsocks for SOCKS5) started
//! by the tests, each needing the user and password from the proxy URL.
//! What went through is read from the proxy's own log: tokens, manifests,
//! and blobs from the CDN host the registry redirects to. Also the
//! `*_PROXY` environment with `NO_PROXY`, the source address, and the
//! address family.

use crate::support::client::{client, read_transfer};
use crate::support::hub::{Hub, Site, TestImage};
use crate::support::mirror::Mirror;
use crate::support::proxies::{Proxy, PASSWORD};
use crate::support::{require_tool, wait_until, ACCEPT};
use crate::tls_auth::TestCa;
use std::time::Duration;

/// Pulls `image` (`library/app:latest`) through the mirror: manifest and
/// every blob, byte for byte.
async fn pull(mirror: &Mirror, repo: &str, image: &TestImage) {
    let base = mirror.url();
    let response = client()
        .get(format!("{base}/v2/{repo}/manifests/latest"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    let status = response.status();
    let body = response.bytes().await.unwrap();
    assert_eq!(
        status,
        200,
        "manifest of {repo}: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(body == image.manifest_bytes);
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let response = client()
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(response.status(), 200, "blob {digest}");
        assert_eq!(&read_transfer(response).await.bytes(), bytes, "{digest}");
    }
}

/// The status of a manifest GET for `repo:latest`.
async fn manifest_status(mirror: &Mirror, repo: &str) -> u16 {
    client()
        .get(format!("{}/v2/{repo}/manifests/latest", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest")
        .status()
        .as_u16()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().expect("port")
}

/// How many onward connections tinyproxy opened.
fn established(log: &str) -> usize {
    log.matches("Established connection to host").count()
}

fn proxied_config(proxy_url: &str, extra: &str) -> String {
    format!("[[upstream]]\nproxy = \"{proxy_url}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_proxy_carries_tokens_manifests_and_cdn_blobs_and_needs_its_password() {
    if !require_tool("tinyproxy") {
        return;
    }
    let proxy = Proxy::tinyproxy();
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[40_000, 900]);
    // From 127.0.0.2, over IPv4 only: the proxy's log shows the source.
    let extra = "source_address = \"127.0.0.2\"\nconnect_address_family = \"ipv4\"";
    let mirror = Mirror::builder(&hub.url())
        .config(&proxied_config(&proxy.url("http", PASSWORD), extra))
        .start();
    pull(&mirror, "app", &image).await;

    let log = proxy.log();
    let (registry, cdn) = (port_of(&hub.url()), port_of(&hub.cdn_url()));
    for (what, needle) in [
        (
            "the token",
            format!("GET http://127.0.0.1:{registry}/token?"),
        ),
        (
            "the manifest",
            format!(" http://127.0.0.1:{registry}/v2/library/app/manifests/latest"),
        ),
        (
            "a blob's redirect",
            format!("GET http://127.0.0.1:{registry}/v2/library/app/blobs/"),
        ),
        (
            "the CDN's blob",
            format!("GET http://127.0.0.1:{cdn}/sha256:"),
        ),
    ] {
        assert!(
            log.contains(&needle),
            "{what} did not go through the proxy ({needle}):\n{log}"
        );
    }
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Connect (file descriptor"))
        .collect();
    assert!(!connects.is_empty(), "{log}");
    for line in &connects {
        assert!(
            line.ends_with(": 127.0.0.2"),
            "not from source_address: {line}"
        );
    }
    // Every request the hub saw came through the proxy: tinyproxy adds no
    // header with DisableViaHeader, so count instead.
    let registry_gets = hub
        .requests()
        .iter()
        .filter(|r| r.site == Site::Registry)
        .count();
    let proxied = log
        .matches(&format!("http://127.0.0.1:{registry}/v2/"))
        .count();
    assert_eq!(proxied, registry_gets, "{log}");

    // The same mirror with a wrong password gets nowhere: the proxy
    // refuses it and the hub is never asked. Its log never shows either
    // password.
    let before = established(&log);
    hub.reset_counts();
    let wrong = Mirror::builder(&hub.url())
        .config(&proxied_config(&proxy.url("http", "wrong-pass"), ""))
        .process()
        .log("info")
        .start();
    let status = manifest_status(&wrong, "app").await;
    assert!(
        status >= 400,
        "a wrong proxy password must fail, got {status}"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert_eq!(
        established(&proxy.log()),
        before,
        "the proxy let a wrong password through"
    );
    let stderr = wrong.wait_log("the proxy line", |l| l.contains("through a proxy"));
    assert!(
        stderr.contains("http://<credentials>@127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-pass") && !stderr.contains(PASSWORD),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_upstream_is_reached_through_http_connect() {
    if !require_tool("tinyproxy") || !require_tool("openssl") {
        return;
    }
    let proxy = Proxy::tinyproxy();
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[30_000]);
    // The TLS upstream: a first mirror serving HTTPS with a test CA.
    let ca = TestCa::new();
    let (cert, key) = ca.issue("upstream", "2001");
    let tls_upstream = Mirror::builder(&hub.url())
        .arg("--tls-cert", cert.to_str().unwrap())
        .arg("--tls-key", key.to_str().unwrap())
        .start();
    let upstream_url = format!("https://127.0.0.1:{}", tls_upstream.addr.port());
    let extra = format!("ca_file = \"{}\"", ca.ca_file().display());
    let mirror = Mirror::builder(&upstream_url)
        .config(&proxied_config(&proxy.url("http", PASSWORD), &extra))
        .start();
    pull(&mirror, "app", &image).await;
    let log = proxy.log();
    let tunnel = format!("CONNECT 127.0.0.1:{} HTTP/1.1", tls_upstream.addr.port());
    assert!(
        log.contains(&tunnel),
        "no CONNECT tunnel to the TLS upstream:\n{log}"
    );
    assert!(!log.contains("GET https://"), "{log}");

    // A wrong password: the proxy opens no connection onwards (its log
    // shows the request but no new "Established connection"), and nothing
    // reaches the upstream.
    let before = established(&proxy.log());
    hub.reset_counts();
    let wrong = Mirror::builder(&upstream_url)
        .config(&proxied_config(&proxy.url("http", "wrong-pass"), &extra))
        .start();
    assert!(manifest_status(&wrong, "other").await >= 400);
    let log = proxy.log();
    assert!(
        log.matches(&tunnel).count() > 1,
        "the CONNECT with the wrong password is logged:\n{log}"
    );
    assert_eq!(
        established(&log),
        before,
        "a tunnel opened without the password:\n{log}"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socks5_proxy_carries_everything_and_needs_its_password() {
    if !require_tool("microsocks") {
        return;
    }
    let proxy = Proxy::microsocks();
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[25_000, 500]);
    let mirror = Mirror::builder(&hub.url())
        .config(&proxied_config(&proxy.url("socks5h", PASSWORD), ""))
        .start();
    pull(&mirror, "app", &image).await;
    let (registry, cdn) = (port_of(&hub.url()), port_of(&hub.cdn_url()));
    let log = wait_until(
        "microsocks to log both hosts",
        Duration::from_secs(5),
        || {
            let log = proxy.log();
            (log.contains(&format!("connected to 127.0.0.1:{registry}"))
                && log.contains(&format!("connected to 127.0.0.1:{cdn}")))
            .then_some(log)
        },
    );
    assert!(log.contains("client["), "{log}");

    // Without the right password the proxy refuses; the hub is never asked.
    hub.reset_counts();
    let wrong = Mirror::builder(&hub.url())
        .config(&proxied_config(&proxy.url("socks5h", "wrong-pass"), ""))
        .start();
    let status = manifest_status(&wrong, "app").await;
    assert!(
        status >= 500,
        "a wrong SOCKS password must fail, got {status}"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_environment_is_honoured_with_no_proxy_exceptions() {
    if !require_tool("tinyproxy") {
        return;
    }
    let proxy = Proxy::tinyproxy();
    let hub = Hub::start().await;
    let local = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[10_000]);
    let local_image = local.push_image("team/app", "latest", &[12_000]);
    let local_port = port_of(&local.url());
    // The second upstream is named `localhost`, which NO_PROXY exempts.
    let toml = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n\
         [[upstream]]\nname = \"local.test\"\nurl = \"http://localhost:{local_port}\"\n",
        hub.url()
    );
    let mirror = Mirror::from_config_only()
        .config(&toml)
        .process()
        .env("http_proxy", &proxy.url("http", PASSWORD))
        .env("NO_PROXY", "localhost")
        .start();
    pull(&mirror, "app", &image).await;
    pull(&mirror, "local.test/team/app", &local_image).await;
    let log = proxy.log();
    let registry = port_of(&hub.url());
    assert!(
        log.contains(&format!(
            " http://127.0.0.1:{registry}/v2/library/app/manifests/latest"
        )),
        "http_proxy was not used:\n{log}"
    );
    assert!(
        !log.contains(&format!(":{local_port}/v2/")),
        "NO_PROXY=localhost was not honoured:\n{log}"
    );
    assert!(!local.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_address_family_decides_which_addresses_a_name_may_use() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[3_000]);
    // The hub listens on 127.0.0.1 only; `localhost` has that IPv4 address.
    let url = format!("http://localhost:{}", port_of(&hub.url()));
    let v6 = Mirror::builder(&url)
        .config("[[upstream]]\nconnect_address_family = \"ipv6\"\n")
        .start();
    let status = manifest_status(&v6, "app").await;
    assert_eq!(status, 502, "IPv6 only cannot reach an IPv4-only upstream");
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    let v4 = Mirror::builder(&url)
        .config("[[upstream]]\nconnect_address_family = \"ipv4\"\n")
        .start();
    pull(&v4, "app", &image).await;
}
