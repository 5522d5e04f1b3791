//! Every way a client names the registry it means (issue 12): one host
//! name per upstream (`ghcr.mirror.example.com`, `ghcr.*`) with the path as
//! is, before `?ns=`, before a path prefix, before the default; and Docker
//! Hub's `library/` rule after a prefix is stripped. In-process against two
//! Hub stand-ins, with the host named in `Host` (HTTP/1.1) or in the
//! HTTP/2 authority; then skopeo pulling from a host name of its own, and
//! deploy/subdomains.toml served on one TLS listener with one wildcard
//! certificate.

use crate::support::client::{
    assert_manifest, client, error_of, header, read_transfer, REQUEST_TIMEOUT,
};
use crate::support::hosts::HostsLine;
use crate::support::hub::{Hub, Site, TestImage};
use crate::support::mirror::Mirror;
use crate::support::process::run_bounded;
use crate::support::{require_tool, sha256_digest, ACCEPT};
use std::process::Command;
use std::time::Duration;

/// Two Hub stand-ins (Docker Hub, and one standing for ghcr.io) behind one
/// mirror whose upstreams are also selected by host name.
struct TwoHubs {
    hub: Hub,
    ghcr: Hub,
    on_hub: TestImage,
    on_ghcr: TestImage,
    mirror: Mirror,
}

impl TwoHubs {
    async fn start() -> TwoHubs {
        let hub = Hub::start().await;
        let ghcr = Hub::start().await;
        // A throwaway push, so the two hubs' content differs.
        ghcr.push_image("scratch", "x", &[1]);
        let on_hub = hub.push_image("library/app", "latest", &[1500, 700]);
        let on_ghcr = ghcr.push_image("app", "latest", &[2500]);
        assert_ne!(on_hub.manifest_digest, on_ghcr.manifest_digest);
        let toml = format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nhosts = [\"docker.*\", \"hub.mirror.test\"]\n\
             [[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\nhosts = [\"ghcr.mirror.test\", \"ghcr.*\"]\n",
            hub.url(),
            ghcr.url()
        );
        let mirror = Mirror::builder(&hub.url()).config(&toml).start();
        TwoHubs {
            hub,
            ghcr,
            on_hub,
            on_ghcr,
            mirror,
        }
    }

    /// `GET path` on the mirror with `Host: host` (HTTP/1.1).
    async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.mirror.url()))
            .header("host", host)
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} (Host: {host}): {e}"))
    }

    fn registry_paths(hub: &Hub) -> Vec<String> {
        hub.requests()
            .into_iter()
            .filter(|r| r.site == Site::Registry)
            .map(|r| r.path)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_name_makes_the_mirror_that_registry_before_ns_prefix_and_default() {
    let t = TwoHubs::start().await;
    let port = t.mirror.addr.port();
    let numeric = format!("127.0.0.1:{port}");
    let ghcr_host = format!("ghcr.mirror.test:{port}");
    // (Host, path, image it must serve)
    let cases: Vec<(&str, &str, &TestImage)> = vec![
        // Exact name, with and without a port, any case.
        (&ghcr_host, "/v2/app/manifests/latest", &t.on_ghcr),
        ("GHCR.Mirror.Test", "/v2/app/manifests/latest", &t.on_ghcr),
        // Leading-label wildcard.
        (
            "ghcr.localhost:5000",
            "/v2/app/manifests/latest",
            &t.on_ghcr,
        ),
        ("ghcr.example.com", "/v2/app/manifests/latest", &t.on_ghcr),
        // Docker Hub by host: the library/ rule still applies.
        ("docker.localhost", "/v2/app/manifests/latest", &t.on_hub),
        (
            "docker.localhost",
            "/v2/library/app/manifests/latest",
            &t.on_hub,
        ),
        ("hub.mirror.test", "/v2/app/manifests/latest", &t.on_hub),
        // The host wins over the default a bare name would get.
        (
            "ghcr.localhost",
            "/v2/app/manifests/latest?ns=ghcr.io",
            &t.on_ghcr,
        ),
        // No host matches: prefix, ns, then the default, as before.
        (&numeric, "/v2/ghcr.io/app/manifests/latest", &t.on_ghcr),
        (
            "mirror.localhost",
            "/v2/app/manifests/latest?ns=ghcr.io",
            &t.on_ghcr,
        ),
        ("mirror.localhost", "/v2/app/manifests/latest", &t.on_hub),
        // Prefix stripped, then library/: both mean library/app.
        (
            "mirror.localhost",
            "/v2/docker.io/app/manifests/latest",
            &t.on_hub,
        ),
        (
            "ghcrx.localhost",
            "/v2/docker.io/library/app/manifests/latest",
            &t.on_hub,
        ),
    ];
    for round in 0..2 {
        for (host, path, image) in &cases {
            let what = format!("round {round}: Host {host} {path}");
            assert_manifest(t.get(host, path).await, image, &what).await;
        }
    }
    // Blobs by host name, every byte checked.
    for (host, image) in [
        ("ghcr.localhost", &t.on_ghcr),
        ("docker.localhost", &t.on_hub),
    ] {
        for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
            let response = t.get(host, &format!("/v2/app/blobs/{digest}")).await;
            assert_eq!(response.status(), 200, "{host} blob {digest}");
            assert_eq!(&read_transfer(response).await.bytes(), bytes, "{host}");
        }
    }
    // The ghcr stand-in was asked for `app` as is (no library/, no
    // registry prefix); Docker Hub's for library/app only.
    for path in TwoHubs::registry_paths(&t.ghcr) {
        assert!(
            path == "/v2/" || path.starts_with("/v2/app/"),
            "ghcr asked for {path}"
        );
    }
    for path in TwoHubs::registry_paths(&t.hub) {
        assert!(
            path == "/v2/" || path.starts_with("/v2/library/app/"),
            "hub asked for {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_name_refuses_an_ns_naming_another_registry_without_asking_either() {
    let t = TwoHubs::start().await;
    t.hub.reset_counts();
    t.ghcr.reset_counts();
    // containerd's `_default` pointed at a per-registry host would ask
    // ghcr.localhost for Docker Hub's `app`: serving ghcr's would be a
    // different image under the same name.
    let response = t
        .get("ghcr.localhost", "/v2/app/manifests/latest?ns=docker.io")
        .await;
    let error = error_of(response).await;
    assert_eq!(error.status, 404, "{}", error.body);
    assert_eq!(
        error.code.as_deref(),
        Some("NAME_UNKNOWN"),
        "{}",
        error.body
    );
    assert!(
        error.body.contains("ghcr.io") && error.body.contains("docker.io"),
        "the error says which registry the host serves and which was asked: {}",
        error.body
    );
    assert!(t.hub.requests().is_empty(), "{:?}", t.hub.requests());
    assert!(t.ghcr.requests().is_empty(), "{:?}", t.ghcr.requests());
    // The same ns by one of Docker Hub's names, on a Docker Hub host, is fine
    // and echoed.
    let response = t
        .get(
            "docker.localhost",
            "/v2/app/manifests/latest?ns=index.docker.io",
        )
        .await;
    assert_eq!(
        header(&response, "oci-namespace").as_deref(),
        Some("index.docker.io")
    );
    assert_manifest(response, &t.on_hub, "ns alias on the hub host").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http2_authority_selects_the_upstream_as_host_does() {
    let t = TwoHubs::start().await;
    for (name, image) in [
        ("ghcr.localhost", &t.on_ghcr),
        ("docker.localhost", &t.on_hub),
    ] {
        // The client connects to the mirror but addresses `name`, as a
        // resolver pointing the name at the mirror would have it.
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .resolve(name, t.mirror.addr)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("h2 client");
        let url = format!(
            "http://{name}:{}/v2/app/manifests/latest",
            t.mirror.addr.port()
        );
        let response = h2
            .get(&url)
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{url}");
        assert_manifest(response, image, &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pulls_from_a_registry_host_name_as_if_the_mirror_were_that_registry() {
    if !require_tool("skopeo") {
        return;
    }
    let t = TwoHubs::start().await;
    let name = format!("ghcr.pt{}.localhost", std::process::id());
    let Some(_hosts) = HostsLine::add_or_skip(&[&name]) else {
        return;
    };
    let out = tempfile::tempdir().expect("tempdir");
    let mut copy = Command::new("skopeo");
    copy.args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{name}:{}/app:latest",
            t.mirror.addr.port()
        ))
        .arg(format!("dir:{}", out.path().display()));
    let output = tokio::task::block_in_place(|| run_bounded(copy, Duration::from_secs(120)));
    assert!(
        output.status.success(),
        "skopeo copy from {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = std::fs::read(out.path().join("manifest.json")).expect("copied manifest");
    assert!(
        manifest == t.on_ghcr.manifest_bytes,
        "manifest is ghcr's, byte for byte"
    );
    for (digest, bytes) in std::iter::once(&t.on_ghcr.config).chain(&t.on_ghcr.layers) {
        let copied = std::fs::read(out.path().join(&digest["sha256:".len()..]))
            .unwrap_or_else(|e| panic!("{digest} missing: {e}"));
        assert_eq!(sha256_digest(&copied), *digest);
        assert_eq!(copied.len(), bytes.len());
    }
    // It all came from the ghcr stand-in; Docker Hub's was never asked.
    assert!(TwoHubs::registry_paths(&t.hub).is_empty());
}

/// The example subdomain config loads as shipped, and each usual subdomain
/// selects the registry it is named for.
#[test]
fn the_example_subdomain_config_names_the_usual_registries() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/subdomains.toml");
    let config = pullthrough::config::Config::load(Some(&path), &Default::default())
        .unwrap_or_else(|e| panic!("deploy/subdomains.toml: {e}"));
    let select = |host: &str| {
        let host = pullthrough::config::normalise_host(host).expect("host");
        config
            .upstreams
            .iter()
            .find(|u| u.hosts.matches_exactly(&host))
            .or_else(|| {
                config
                    .upstreams
                    .iter()
                    .find(|u| u.hosts.matches_leading_label(&host))
            })
            .map(|u| u.name.as_str())
    };
    for (host, registry) in [
        ("docker.mirror.example.com", "docker.io"),
        ("ghcr.mirror.example.com:443", "ghcr.io"),
        ("quay.mirror.example.com", "quay.io"),
        ("gcr.mirror.example.com", "gcr.io"),
        ("k8s.mirror.example.com", "registry.k8s.io"),
        ("k8s-gcr.mirror.example.com", "registry.k8s.io"),
        ("mcr.mirror.example.com", "mcr.microsoft.com"),
        ("nvcr.mirror.example.com", "nvcr.io"),
        ("ecr.mirror.example.com", "public.ecr.aws"),
        ("elastic.mirror.example.com", "docker.elastic.co"),
    ] {
        assert_eq!(select(host), Some(registry), "{host}");
    }
    // The bare name selects none: it takes prefixes, ns and the default.
    assert_eq!(select("mirror.example.com"), None);
    assert_eq!(config.upstreams[0].name, "docker.io");
}

/// deploy/subdomains.toml as shipped, its TLS files and upstream URLs
/// pointed at a wildcard certificate from a test CA and the two stand-ins:
/// one listener, one certificate, verified under every name, each
/// subdomain serving its registry and the bare name taking prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_subdomain_example_serves_every_registry_on_one_listener_with_a_wildcard_certificate() {
    if !require_tool("openssl") {
        return;
    }
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    ghcr.push_image("scratch", "x", &[1]);
    let on_hub = hub.push_image("library/app", "latest", &[1200]);
    let on_ghcr = ghcr.push_image("owner/app", "1", &[2200]);
    let ca = tokio::task::block_in_place(crate::tls_auth::TestCa::new);
    let (cert, key) = tokio::task::block_in_place(|| {
        ca.issue_for(
            "wildcard",
            "2001",
            "DNS:mirror.example.com,DNS:*.mirror.example.com",
        )
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/subdomains.toml");
    let shipped = std::fs::read_to_string(&path).expect("deploy/subdomains.toml");
    let edits = [
        (
            "/etc/pullthrough/tls/fullchain.pem",
            cert.display().to_string(),
        ),
        (
            "/etc/pullthrough/tls/privkey.pem",
            key.display().to_string(),
        ),
        ("https://registry-1.docker.io", hub.url()),
        ("https://ghcr.io\"", format!("{}\"", ghcr.url())),
    ];
    let mut toml = shipped.clone();
    for (from, to) in &edits {
        assert_eq!(
            shipped.matches(from).count(),
            1,
            "{from} in subdomains.toml"
        );
        toml = toml.replace(from, to);
    }
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();
    let port = mirror.addr.port();
    let names = [
        "docker.mirror.example.com",
        "ghcr.mirror.example.com",
        "mirror.example.com",
    ];
    let ca_pem = std::fs::read(ca.ca_file()).expect("CA file");
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA"))
        .timeout(REQUEST_TIMEOUT);
    for name in names {
        builder = builder.resolve(name, mirror.addr);
    }
    let tls = builder.build().expect("TLS client");
    for (name, path, image) in [
        (
            "docker.mirror.example.com",
            "/v2/library/app/manifests/latest",
            &on_hub,
        ),
        (
            "ghcr.mirror.example.com",
            "/v2/owner/app/manifests/1",
            &on_ghcr,
        ),
        (
            "mirror.example.com",
            "/v2/ghcr.io/owner/app/manifests/1",
            &on_ghcr,
        ),
        ("mirror.example.com", "/v2/app/manifests/latest", &on_hub),
    ] {
        let url = format!("https://{name}:{port}{path}");
        let response = tls
            .get(&url)
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} (verified against the wildcard): {e}"));
        assert_manifest(response, image, &url).await;
    }
    // A name the certificate does not cover fails the handshake.
    let other = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA"))
        .resolve("mirror.example.org", mirror.addr)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("TLS client");
    let refused = other
        .get(format!("https://mirror.example.org:{port}/v2/"))
        .send()
        .await;
    assert!(refused.is_err(), "a name outside the wildcard was accepted");
    for path in TwoHubs::registry_paths(&ghcr) {
        assert!(
            path == "/v2/" || path.starts_with("/v2/owner/app/"),
            "ghcr asked for {path}"
        );
    }
}
