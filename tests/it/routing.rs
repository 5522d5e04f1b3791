//! One mirror for several registries (issue 7): containerd's `?ns=` and the
//! Podman/CRI-O path prefix pick the upstream, two registries' `app:latest`
//! never mix, unknown registries and denied repositories are refused
//! without an upstream request, upstream credentials come from a file or
//! the environment and never show in logs, metrics or error bodies; then
//! containerd (`ctr content fetch --hosts-dir`) and skopeo (prefix form)
//! pulling from two real registries through one mirror.

use crate::support::client::{assert_manifest, client, config_file, header, read_transfer};
use crate::support::containerd::Containerd;
use crate::support::hub::{Hub, Kind, Site, TestImage};
use crate::support::mirror::Mirror;
use crate::support::process::run_bounded;
use crate::support::two_registries::{assert_blob_in, upstreams_toml, TwoRegistries};
use crate::support::{require_tool, ACCEPT};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET base+path`, with the manifest Accept list.
async fn get(base: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Status, `errors[0].code` and the raw body of an error response.
async fn error_of(response: reqwest::Response) -> (u16, Option<String>, String) {
    let error = crate::support::client::error_of(response).await;
    (error.status.as_u16(), error.code, error.body)
}

/// A mirror started with a config holding `toml`; the first upstream's url
/// is also passed as `--upstream`, as the harness always does.
fn mirror_with(first_url: &str, toml: &str) -> Mirror {
    Mirror::builder(first_url).config(toml).start()
}

/// Registry-side paths (with query) the hub was asked for.
fn registry_paths(hub: &Hub) -> Vec<String> {
    hub.requests()
        .into_iter()
        .filter(|r| r.site == Site::Registry)
        .map(|r| r.path)
        .collect()
}

/// Every digest an image is made of.
fn digests_of(image: &TestImage) -> Vec<String> {
    let mut all = vec![image.manifest_digest.clone(), image.config.0.clone()];
    all.extend(image.layers.iter().map(|(d, _)| d.clone()));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ns_and_path_prefix_pick_each_registry_and_never_mix_their_tags() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    // A throwaway push first, so the two hubs' seeds differ.
    ghcr.push_image("scratch", "x", &[1]);
    let on_hub = hub.push_image("library/app", "latest", &[1000, 3000]);
    let on_ghcr = ghcr.push_image("app", "latest", &[2000]);
    assert_ne!(on_hub.manifest_digest, on_ghcr.manifest_digest);
    let toml = upstreams_toml(&[("docker.io", &hub.url(), ""), ("ghcr.io", &ghcr.url(), "")]);
    let mirror = mirror_with(&hub.url(), &toml);
    let base = mirror.url();

    // (path, image it must serve, OCI-Namespace it must echo)
    let cases: [(&str, &TestImage, Option<&str>); 9] = [
        (
            "/v2/app/manifests/latest?ns=docker.io",
            &on_hub,
            Some("docker.io"),
        ),
        (
            "/v2/app/manifests/latest?ns=ghcr.io",
            &on_ghcr,
            Some("ghcr.io"),
        ),
        ("/v2/ghcr.io/app/manifests/latest", &on_ghcr, None),
        ("/v2/docker.io/app/manifests/latest", &on_hub, None),
        ("/v2/docker.io/library/app/manifests/latest", &on_hub, None),
        ("/v2/app/manifests/latest", &on_hub, None),
        ("/v2/library/app/manifests/latest", &on_hub, None),
        (
            "/v2/library/app/manifests/latest?ns=registry-1.docker.io",
            &on_hub,
            Some("registry-1.docker.io"),
        ),
        (
            "/v2/app/manifests/latest?ns=index.docker.io",
            &on_hub,
            Some("index.docker.io"),
        ),
    ];
    // Twice: the second round is answered from the cache and must still
    // keep the two registries apart.
    for round in 0..2 {
        for (path, image, ns) in &cases {
            let response = get(&base, path).await;
            assert_eq!(
                header(&response, "oci-namespace").as_deref(),
                *ns,
                "round {round}: OCI-Namespace of {path}"
            );
            assert_manifest(response, image, &format!("round {round}: {path}")).await;
        }
    }
    // Blobs through both forms, every byte checked.
    for (image, ns, prefix) in [
        (&on_hub, "docker.io", "docker.io"),
        (&on_ghcr, "ghcr.io", "ghcr.io"),
    ] {
        for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
            for path in [
                format!("/v2/app/blobs/{digest}?ns={ns}"),
                format!("/v2/{prefix}/app/blobs/{digest}"),
            ] {
                let response = get(&base, &path).await;
                assert_eq!(response.status(), 200, "{path}");
                assert_eq!(&read_transfer(response).await.bytes(), bytes, "{path}");
            }
        }
    }
    // An error from the registry named says which one answered, too.
    let response = get(&base, "/v2/app/manifests/missing?ns=ghcr.io").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        header(&response, "oci-namespace").as_deref(),
        Some("ghcr.io")
    );

    // Tag lists go to the registry named, with ns stripped.
    let response = get(&base, "/v2/app/tags/list?ns=ghcr.io").await;
    assert_eq!(response.status(), 200);
    let list: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["latest"]), "{list}");

    // Each hub saw only its own repository (Docker Hub with `library/`,
    // the other without), never an `ns` parameter, never the other's content.
    let hub_paths = registry_paths(&hub);
    let ghcr_paths = registry_paths(&ghcr);
    assert!(!hub_paths.is_empty() && !ghcr_paths.is_empty());
    for path in &hub_paths {
        assert!(
            path == "/v2/" || path.starts_with("/v2/library/app/"),
            "docker.io hub asked for {path}"
        );
    }
    for path in &ghcr_paths {
        assert!(
            path == "/v2/" || path.starts_with("/v2/app/"),
            "ghcr.io hub asked for {path} (library/ applies to docker.io only)"
        );
    }
    for path in hub_paths.iter().chain(&ghcr_paths) {
        assert!(!path.contains("ns="), "ns passed upstream: {path}");
    }
    for digest in digests_of(&on_ghcr) {
        assert!(
            !hub_paths.iter().any(|p| p.contains(&digest)),
            "docker.io hub asked for ghcr.io's {digest}"
        );
    }
    for digest in digests_of(&on_hub) {
        assert!(
            !ghcr_paths.iter().any(|p| p.contains(&digest)),
            "ghcr.io hub asked for docker.io's {digest}"
        );
    }
    assert_eq!(
        hub.count(Kind::CdnRejected) + ghcr.count(Kind::CdnRejected),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_registries_get_a_404_naming_them_and_no_upstream_request() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    hub.push_image("library/app", "latest", &[100]);
    ghcr.push_image("app", "latest", &[100]);
    let toml = upstreams_toml(&[("docker.io", &hub.url(), ""), ("ghcr.io", &ghcr.url(), "")]);
    let mirror = mirror_with(&hub.url(), &toml);
    let zero = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, &str)> = vec![
        ("/v2/app/manifests/latest?ns=quay.io".into(), "quay.io"),
        ("/v2/quay.io/app/manifests/latest".into(), "quay.io"),
        ("/v2/example.com/app/manifests/latest".into(), "example.com"),
        (
            format!("/v2/app/blobs/{zero}?ns=evil.example"),
            "evil.example",
        ),
        (
            format!("/v2/registry.k8s.io/pause/blobs/{zero}"),
            "registry.k8s.io",
        ),
        ("/v2/app/tags/list?ns=127.0.0.1:1".into(), "127.0.0.1:1"),
        (
            "/v2/app/manifests/latest?ns=ghcr.io.evil.example".into(),
            "ghcr.io.evil.example",
        ),
        ("/v2/app/manifests/latest?ns=GHCR.IO.".into(), "GHCR.IO."),
    ];
    for (path, registry) in &cases {
        let (status, code, body) = error_of(get(&mirror.url(), path).await).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(code.as_deref(), Some("NAME_UNKNOWN"), "{path}: {body}");
        assert!(
            body.contains(registry),
            "{path}: the error should name {registry}: {body}"
        );
    }
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert!(ghcr.requests().is_empty(), "{:?}", ghcr.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_upstream_a_dotted_name_is_a_repository_unless_it_is_a_known_registry() {
    let hub = Hub::start().await;
    let dotted = hub.push_image("my.team/app", "v1", &[100]);
    let official = hub.push_image("library/app", "v1", &[200]);
    let mirror = Mirror::start(&hub.url());

    assert_manifest(
        get(&mirror.url(), "/v2/my.team/app/manifests/v1").await,
        &dotted,
        "dotted",
    )
    .await;
    // The one upstream is named docker.io by default: its prefix works.
    assert_manifest(
        get(&mirror.url(), "/v2/docker.io/app/manifests/v1").await,
        &official,
        "docker.io prefix",
    )
    .await;
    hub.reset_counts();
    for path in [
        "/v2/ghcr.io/app/manifests/v1",
        "/v2/quay.io/app/manifests/v1",
    ] {
        let (status, code, body) = error_of(get(&mirror.url(), path).await).await;
        assert_eq!(
            (status, code.as_deref()),
            (404, Some("NAME_UNKNOWN")),
            "{path}: {body}"
        );
    }
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_and_deny_lists_answer_403_denied_without_asking_upstream() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    let good = hub.push_image("library/good", "v1", &[100]);
    let bad = hub.push_image("library/bad", "v1", &[100]);
    let tool = hub.push_image("myorg/tool", "v1", &[100]);
    let other = hub.push_image("other/app", "v1", &[100]);
    let open = ghcr.push_image("open/x", "v1", &[100]);
    let secret = ghcr.push_image("secret/x", "v1", &[100]);
    let toml = upstreams_toml(&[
        (
            "docker.io",
            &hub.url(),
            "allow = [\"library/*\", \"myorg/*\"]\ndeny = [\"library/bad\"]",
        ),
        ("ghcr.io", &ghcr.url(), "deny = [\"secret/*\"]"),
    ]);
    let mirror = mirror_with(&hub.url(), &toml);
    let base = mirror.url();

    // Allowed repositories are served, so the good layer is now cached.
    assert_manifest(get(&base, "/v2/good/manifests/v1").await, &good, "good").await;
    let good_layer = &good.layers[0].0;
    let response = get(&base, &format!("/v2/library/good/blobs/{good_layer}")).await;
    assert_eq!(response.status(), 200);
    read_transfer(response).await.bytes();
    assert_manifest(
        get(&base, "/v2/myorg/tool/manifests/v1").await,
        &tool,
        "myorg",
    )
    .await;
    assert_manifest(
        get(&base, "/v2/open/x/manifests/v1?ns=ghcr.io").await,
        &open,
        "open",
    )
    .await;
    hub.reset_counts();
    ghcr.reset_counts();

    let denied = [
        "/v2/bad/manifests/v1".to_string(),
        "/v2/library/bad/manifests/v1".into(),
        "/v2/docker.io/library/bad/manifests/v1".into(),
        "/v2/library/bad/manifests/v1?ns=docker.io".into(),
        format!("/v2/library/bad/manifests/{}", bad.manifest_digest),
        format!("/v2/library/bad/blobs/{}", bad.layers[0].0),
        // Denied even when the content is already cached for an allowed one.
        format!("/v2/library/bad/blobs/{good_layer}"),
        "/v2/library/bad/tags/list".into(),
        "/v2/other/app/manifests/v1".into(),
        format!("/v2/other/app/blobs/{}", other.layers[0].0),
        "/v2/secret/x/manifests/v1?ns=ghcr.io".into(),
        "/v2/ghcr.io/secret/x/manifests/v1".into(),
        format!("/v2/ghcr.io/secret/x/blobs/{}", secret.layers[0].0),
    ];
    for path in &denied {
        let (status, code, body) = error_of(get(&base, path).await).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(code.as_deref(), Some("DENIED"), "{path}: {body}");
        let head = client()
            .head(format!("{base}{path}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(head.status(), 403, "HEAD {path}");
    }
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert!(ghcr.requests().is_empty(), "{:?}", ghcr.requests());
}

/// Passwords the credentials test configures: distinctive, so a search of
/// the logs cannot miss them or match them by accident.
const FILE_PASSWORD: &str = "pw-from-file-Qx7Zr2mK9";
const ENV_PASSWORD: &str = "pw-from-env-Lp4Wn8vT3";
const ENV_VAR: &str = "PULLTHROUGH_TEST_GHCR_PASSWORD";

/// base64 (standard alphabet, padded), to look for encoded credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The forms a leaked secret could take: as is, and as Basic credentials.
fn leaked_forms() -> Vec<String> {
    vec![
        FILE_PASSWORD.to_string(),
        ENV_PASSWORD.to_string(),
        base64(format!("alice:{FILE_PASSWORD}").as_bytes()),
        base64(format!("bob:{ENV_PASSWORD}").as_bytes()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_from_a_file_and_the_environment_open_private_repositories_and_never_leak() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    let secret = hub.push_image("corp/secret", "v1", &[3000]);
    hub.make_private("corp/secret", "alice", FILE_PASSWORD);
    let other = hub.push_image("corp/other", "v1", &[3000]);
    hub.make_private("corp/other", "alice", "a-password-the-mirror-does-not-have");
    let private = ghcr.push_image("team/private", "v1", &[4000]);
    ghcr.make_private("team/private", "bob", ENV_PASSWORD);

    let secrets_dir = tempfile::tempdir().expect("tempdir");
    let password_file = secrets_dir.path().join("hub-password");
    std::fs::write(&password_file, format!("{FILE_PASSWORD}\n")).expect("write password file");
    let toml = upstreams_toml(&[
        (
            "docker.io",
            &hub.url(),
            &format!(
                "username = \"alice\"\npassword_file = \"{}\"",
                password_file.display()
            ),
        ),
        (
            "ghcr.io",
            &ghcr.url(),
            &format!("username = \"bob\"\npassword_env = \"{ENV_VAR}\""),
        ),
    ]);
    let (_config_dir, config_path) = config_file(&toml);
    let config_path = config_path.to_str().expect("utf-8").to_string();
    // Debug logging everywhere: the most a deployment could log.
    // A process: the test reads everything it logs.
    let mut mirror = Mirror::from_config_only()
        .config_file(Path::new(&config_path))
        .env(ENV_VAR, ENV_PASSWORD)
        .log("debug")
        .process()
        .start();
    let base = mirror.url();

    let pulls: [(&str, &TestImage); 3] = [
        ("/v2/corp/secret/{}?ns=docker.io", &secret),
        ("/v2/team/private/{}?ns=ghcr.io", &private),
        ("/v2/ghcr.io/team/private/{}", &private),
    ];
    for (pattern, image) in pulls {
        let manifest_path = pattern.replace("{}", "manifests/v1");
        assert_manifest(get(&base, &manifest_path).await, image, &manifest_path).await;
        for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
            let path = pattern.replace("{}", &format!("blobs/{digest}"));
            let response = get(&base, &path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(&read_transfer(response).await.bytes(), bytes, "{path}");
        }
    }
    // Each hub got its own user's Basic credentials at its token endpoint,
    // never the other's.
    for (hub, user) in [(&hub, "alice"), (&ghcr, "bob")] {
        let with_user: Vec<_> = hub
            .token_requests()
            .into_iter()
            .filter(|t| t.basic_user.is_some())
            .collect();
        assert!(
            !with_user.is_empty(),
            "{user}'s credentials were never sent"
        );
        for request in with_user {
            assert_eq!(request.basic_user.as_deref(), Some(user));
        }
    }
    assert!(hub
        .token_requests()
        .iter()
        .filter(|t| t.scopes.iter().any(|s| s == "repository:corp/secret:pull"))
        .all(|t| t.password_matched));
    // Basic credentials go to token endpoints only, never to the registry
    // or a redirect target.
    for hub in [&hub, &ghcr] {
        for request in hub.requests() {
            let auth = request
                .headers
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
            if request.site != Site::Token {
                assert!(
                    !auth
                        .as_deref()
                        .unwrap_or("")
                        .to_ascii_lowercase()
                        .starts_with("basic"),
                    "Basic credentials sent to {:?} {}",
                    request.site,
                    request.path
                );
            }
        }
        assert_eq!(hub.count(Kind::CdnRejected), 0);
    }

    // A private repository the configured password does not open: a clean
    // error that does not carry the password.
    let mut bodies = String::new();
    for path in [
        "/v2/corp/other/manifests/v1".to_string(),
        format!("/v2/corp/other/blobs/{}", other.layers[0].0),
        "/v2/corp/other/tags/list".into(),
    ] {
        let (status, code, body) = error_of(get(&base, &path).await).await;
        assert!([401, 403, 404].contains(&status), "{path}: {status} {body}");
        assert!(code.is_some(), "{path}: OCI error body: {body}");
        bodies.push_str(&body);
    }
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    mirror.stop();
    let stderr = mirror.stderr();
    assert!(
        stderr.lines().count() > 10,
        "debug logging produced almost nothing, so the leak check below proves little:\n{stderr}"
    );
    for form in leaked_forms() {
        assert!(
            !stderr.contains(&form),
            "stderr carries the secret {form:?}"
        );
        assert!(
            !metrics.contains(&form),
            "/metrics carries the secret {form:?}"
        );
        assert!(
            !bodies.contains(&form),
            "an error body carries {form:?}: {bodies}"
        );
    }
}

#[test]
fn containerd_fetches_from_two_registries_through_one_mirror_by_ns() {
    if !(require_tool("docker-registry")
        && require_tool("skopeo")
        && require_tool("containerd")
        && require_tool("ctr"))
    {
        return;
    }
    let setup = TwoRegistries::start();
    let containerd = Containerd::start();
    let hosts = tempfile::tempdir().expect("tempdir");
    for (name, registry) in [("docker.io", &setup.hub), ("ghcr.io", &setup.ghcr)] {
        let dir = hosts.path().join(name);
        std::fs::create_dir_all(&dir).expect("hosts dir");
        let toml = format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.url(),
            setup.mirror.url()
        );
        std::fs::write(dir.join("hosts.toml"), toml).expect("write hosts.toml");
    }
    let hosts_dir = hosts.path().to_str().expect("utf-8").to_string();
    for (reference, image) in [
        ("docker.io/library/demo:v1", &setup.hub_image),
        ("ghcr.io/library/demo:v1", &setup.ghcr_image),
    ] {
        let started = Instant::now();
        let output = containerd.ctr(&["content", "fetch", "--hosts-dir", &hosts_dir, reference]);
        eprintln!("ctr content fetch {reference} took {:?}", started.elapsed());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ctr content fetch {reference} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&image.manifest_digest),
            "{reference} resolved to the wrong manifest: {stdout}"
        );
    }
    let listed = containerd.ctr(&["content", "ls", "-q"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for image in [&setup.hub_image, &setup.ghcr_image] {
        for digest in std::iter::once(&image.manifest_digest)
            .chain(std::iter::once(&image.config_digest))
            .chain(&image.layer_digests)
        {
            assert!(
                listed.contains(digest.as_str()),
                "{digest} not in containerd: {listed}"
            );
        }
    }
    let (hub_log, ghcr_log) = setup.assert_only_the_mirror_asked();
    // Each registry served its own image's layers to the mirror.
    for digest in &setup.hub_image.layer_digests {
        assert!(
            hub_log.contains(digest.as_str()),
            "docker.io registry never asked for {digest}"
        );
    }
    for digest in &setup.ghcr_image.layer_digests {
        assert!(
            ghcr_log.contains(digest.as_str()),
            "ghcr.io registry never asked for {digest}"
        );
    }
}

#[test]
fn skopeo_pulls_from_two_registries_through_the_path_prefix() {
    if !(require_tool("docker-registry") && require_tool("skopeo")) {
        return;
    }
    let setup = TwoRegistries::start();
    let out = tempfile::tempdir().expect("tempdir");
    let host = setup.mirror.addr.to_string();
    for (i, (reference, image)) in [
        ("ghcr.io/library/demo:v1", &setup.ghcr_image),
        ("docker.io/library/demo:v1", &setup.hub_image),
        ("library/demo:v1", &setup.hub_image),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = out.path().join(format!("copy-{i}"));
        let mut command = Command::new("skopeo");
        command
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/{reference}"))
            .arg(format!("dir:{}", dir.display()));
        let output = run_bounded(command, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "skopeo copy {reference} through {host} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let manifest = std::fs::read(dir.join("manifest.json")).expect("copied manifest");
        assert!(manifest == image.manifest, "{reference}: wrong manifest");
        assert_blob_in(&dir, &image.config_digest);
        for digest in &image.layer_digests {
            assert_blob_in(&dir, digest);
        }
    }
    setup.assert_only_the_mirror_asked();
}
