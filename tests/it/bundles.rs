//! Offline bundles across an air gap: images pulled through one mirror,
//! exported from its cache, imported into an empty cache, and served by a
//! mirror with no reachable upstream to skopeo and a real Docker daemon;
//! a bundle with one flipped byte is refused and leaves nothing behind.

use crate::support::cli::{pullthrough, pullthrough_json};
use crate::support::client::{admin_token_file, client, pull_exact};
use crate::support::docker::DockerDaemon;
use crate::support::hub::Hub;
use crate::support::mirror::Mirror;
use crate::support::oci_layout::{self, host_architecture};
use crate::support::process::run_bounded;
use crate::support::registry::{self, Registry};
use crate::support::require_tool;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn tools_present() -> bool {
    registry::tools_present() && require_tool("dockerd") && require_tool("docker")
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let mut command = Command::new("skopeo");
    command.args(args);
    run_bounded(command, Duration::from_secs(60))
}

/// Files under `dir/blobs`, the cache's content.
fn blob_files(cache: &Path) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        count(&path)
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    count(&cache.join("blobs"))
}

#[test]
fn a_bundle_carries_pulled_images_to_a_mirror_without_upstream() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let registry = Registry::start(&root.join("registry"));
    let single = registry::seed(&registry, root, "bundle-one", 71, &[700_000, 90_000, 3_000]);
    let multi = oci_layout::write_multi_platform(&root.join("multi"), "v2", 72, &[400_000, 8_000]);
    registry.seed(&root.join("multi"), "v2", "library/bundle-multi:v2");
    let host = multi.platform(host_architecture());

    // Connected side: pull through a mirror (the multi-platform image for
    // this host's platform only), then stop it so its cache is free.
    let source = root.join("source-cache");
    let mut connected = Mirror::builder(&registry.url())
        .cache_dir(&source)
        .process()
        .start();
    registry::pull(&connected, "bundle-one", &single, &root.join("pulled-one"));
    let pulled = skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/library/bundle-multi:v2", connected.addr),
        &format!("oci:{}:v2", root.join("pulled-multi").display()),
    ]);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    connected.stop();

    let bundle = root.join("bundle.tar");
    let (source_dir, bundle_path) = (
        source.to_str().expect("utf-8"),
        bundle.to_str().expect("utf-8"),
    );
    let report = pullthrough_json(&[
        "export",
        "bundle-one:v1",
        "docker.io/library/bundle-multi:v2",
        "--output",
        bundle_path,
        "--cache-dir",
        source_dir,
    ]);
    let images = report["images"].as_array().expect("images");
    assert_eq!(images.len(), 2, "{report}");
    assert_eq!(images[0]["digest"], single.manifest_digest.as_str());
    assert_eq!(images[1]["digest"], multi.index_digest.as_str());
    let other = multi
        .platforms
        .iter()
        .find(|p| p.architecture != host_architecture())
        .expect("second platform");
    assert_eq!(
        images[1]["omitted"],
        serde_json::json!([format!("linux/{}", other.architecture)]),
        "the platform nobody pulled is named, not silently dropped"
    );

    // The bundle is a plain OCI layout archive: skopeo reads it by tag.
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{bundle_path}:v1")]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(
        raw.stdout == single.manifest,
        "the bundled manifest is byte-exact"
    );

    // One flipped byte in a layer: refused, naming it, nothing added.
    let layer = &single.layer_digests[0];
    let (flipped_path, name) = flip_blob_byte(&bundle, layer, 1000);
    let refused_cache = root.join("refused-cache");
    let refused = pullthrough(&[
        "import",
        flipped_path.to_str().expect("utf-8"),
        "--cache-dir",
        refused_cache.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a damaged bundle was accepted");
    assert!(stderr.contains(&name), "the error names the blob: {stderr}");
    assert_eq!(
        blob_files(&refused_cache),
        0,
        "blobs of a refused bundle stayed"
    );
    let stats = pullthrough_json(&[
        "cache",
        "stats",
        "--cache-dir",
        refused_cache.to_str().expect("utf-8"),
    ]);
    assert_eq!(stats["tags"], 0, "{stats}");

    // Air-gapped side: import, then serve with an upstream nobody answers.
    let target = root.join("target-cache");
    let imported = pullthrough_json(&[
        "import",
        bundle_path,
        "--cache-dir",
        target.to_str().expect("utf-8"),
    ]);
    let expected_blobs = 2 + single.layer_digests.len() + 2 + 1 + host.layer_digests.len();
    assert_eq!(imported["added"], expected_blobs, "{imported}");
    let upstream_requests = registry.requests().len();
    let offline = Mirror::builder("http://127.0.0.1:9")
        .cache_dir(&target)
        .process()
        .start();
    registry::pull(&offline, "bundle-one", &single, &root.join("offline-one"));
    let docker = DockerDaemon::start(&offline.url());
    docker.pull("bundle-multi:v2");
    let inspect = docker.inspect("bundle-multi:v2").expect("pulled image");
    assert_eq!(inspect["Id"], host.config_digest.as_str(), "image ID");
    let repo_digest = format!("bundle-multi@{}", multi.index_digest);
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d == repo_digest.as_str())),
        "{inspect}"
    );
    docker.pull("bundle-one:v1");
    assert_eq!(
        docker.inspect("bundle-one:v1").expect("pulled")["Id"],
        single.config_digest.as_str()
    );
    assert_eq!(
        registry.requests().len(),
        upstream_requests,
        "the offline side asked the registry"
    );
}

const TOKEN: &str = "bundle-admin-token";

/// `import --server`: a running mirror takes a bundle through its admin
/// API, with the token only; a damaged one is refused and adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_mirror_takes_a_bundle_through_its_admin_api() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/carried", "v1", &[300_000, 5_000]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let source = root.join("source");
    let mut connected = Mirror::builder(&hub.url()).cache_dir(&source).start();
    pull_exact(&connected.url(), "library/carried", "v1", &image).await;
    connected.stop();
    let bundle = root.join("carried.tar");
    let export = [
        "export",
        "carried:v1",
        "-o",
        bundle.to_str().expect("utf-8"),
        "--cache-dir",
        source.to_str().expect("utf-8"),
    ];
    tokio::task::block_in_place(|| pullthrough_json(&export));

    let token_file = admin_token_file(root, TOKEN);
    let toml = format!("admin_token_file = \"{}\"\n", token_file.display());
    let offline = Mirror::builder("http://127.0.0.1:9").config(&toml).start();
    let import = |bundle: &Path, token: Option<&Path>| {
        let mut args = vec![
            "import".to_owned(),
            bundle.display().to_string(),
            "--server".to_owned(),
            offline.url(),
        ];
        if let Some(t) = token {
            args.extend(["--admin-token-file".to_owned(), t.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| pullthrough(&args))
    };
    let wrong = root.join("wrong-token");
    std::fs::write(&wrong, "not-it").expect("token file");
    let refused = import(&bundle, Some(&wrong));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "no secret in the error: {stderr}");

    let (layer, _) = &image.layers[0];
    let (flipped_path, name) = flip_blob_byte(&bundle, layer, 4096);
    let refused = import(&flipped_path, Some(&token_file));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains(&name),
        "{stderr}"
    );
    let blob_url = format!("{}/v2/library/carried/blobs/{layer}", offline.url());
    let gone = client().get(&blob_url).send().await.expect("answer");
    assert_ne!(gone.status(), 200, "a blob of the refused bundle is served");

    let accepted = import(&bundle, Some(&token_file));
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    pull_exact(&offline.url(), "library/carried", "v1", &image).await;
}

/// A copy of `bundle` (as `flipped.tar` beside it) with one byte flipped
/// `at` bytes into the blob `digest`, and the blob's entry name the
/// refusal must give.
fn flip_blob_byte(bundle: &Path, digest: &str, at: usize) -> (std::path::PathBuf, String) {
    let mut flipped = std::fs::read(bundle).expect("read bundle");
    let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let header = flipped
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("blob entry in the bundle");
    // The entry's 512-byte tar header comes before its content.
    flipped[header + 512 + at] ^= 0x20;
    let path = bundle.with_file_name("flipped.tar");
    std::fs::write(&path, flipped).expect("write flipped bundle");
    (path, name)
}
