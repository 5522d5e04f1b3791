//! End to end with a real Docker daemon whose daemon.json names pullthrough in
//! `registry-mirrors`, in front of the Debian `docker-registry` seeded by
//! skopeo: pulls, `docker rmi`, and a second pull that fetches no blob
//! upstream. Docker falls back to Docker Hub (unreachable here) when the
//! mirror fails, so a failed pull means the mirror failed. And a warmed
//! image pulled by dockerd after the upstream is gone.

use crate::support::docker::DockerDaemon;
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;
use crate::support::oci_layout::{self, host_architecture};
use crate::support::registry::Registry;
use crate::support::require_tool;
use std::path::Path;

fn tools_present() -> bool {
    require_tool("docker-registry")
        && require_tool("skopeo")
        && require_tool("dockerd")
        && require_tool("docker")
}

/// What `docker image inspect` must show after pulling `name:tag`.
struct Expected {
    name: &'static str,
    tag: &'static str,
    /// The digest the tag names upstream (manifest, or index).
    repo_digest: String,
    /// The image ID: the config digest of the host's platform.
    config_digest: String,
}

/// Pulls `name:tag`, checks it, removes it, and pulls it again. Returns the
/// registry's blob GETs made during the second pull.
fn pull_rmi_pull(docker: &DockerDaemon, registry: &Registry, expected: &Expected) -> usize {
    let image = format!("{}:{}", expected.name, expected.tag);
    docker.pull(&image);
    assert_pulled(docker, &image, expected);

    docker.rmi(&image);
    assert!(
        docker.inspect(&image).is_none(),
        "{image} still present after docker rmi"
    );
    let blob_gets = registry.count_requests("GET", "/blobs/");
    docker.pull(&image);
    assert_pulled(docker, &image, expected);
    registry.count_requests("GET", "/blobs/") - blob_gets
}

fn assert_pulled(docker: &DockerDaemon, image: &str, expected: &Expected) {
    let inspect = docker
        .inspect(image)
        .unwrap_or_else(|| panic!("{image} not present after docker pull"));
    assert_eq!(
        inspect["Id"],
        expected.config_digest.as_str(),
        "image ID of {image}"
    );
    assert_eq!(
        inspect["Architecture"],
        host_architecture(),
        "architecture of {image}"
    );
    let repo_digest = format!("{}@{}", expected.name, expected.repo_digest);
    let repo_digests = inspect["RepoDigests"].as_array().expect("RepoDigests");
    assert!(
        repo_digests.iter().any(|d| d == repo_digest.as_str()),
        "{repo_digest} not in {repo_digests:?}"
    );
}

/// Seeds a three-layer image and a two-platform image; returns what to expect.
fn seed_images(registry: &Registry, dir: &Path) -> [Expected; 2] {
    let single =
        oci_layout::write_image(&dir.join("single"), "v1", 31, &[1_500_000, 200_000, 4_000]);
    registry.seed(&dir.join("single"), "v1", "library/e2e-docker:v1");
    let multi = oci_layout::write_multi_platform(&dir.join("multi"), "v2", 41, &[600_000, 9_000]);
    registry.seed(&dir.join("multi"), "v2", "library/e2e-docker-multi:v2");
    [
        Expected {
            name: "e2e-docker",
            tag: "v1",
            repo_digest: single.manifest_digest.clone(),
            config_digest: single.config_digest.clone(),
        },
        Expected {
            name: "e2e-docker-multi",
            tag: "v2",
            repo_digest: multi.index_digest.clone(),
            config_digest: multi.platform(host_architecture()).config_digest.clone(),
        },
    ]
}

/// Checks the harness alone: the daemon uses the seeded registry itself as
/// its mirror (it serves `library/…`). If this fails, the fault is in the
/// test setup, not pullthrough.
#[test]
fn harness_docker_pulls_with_the_registry_as_mirror() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let expected = seed_images(&registry, tmp.path());
    let docker = DockerDaemon::start(&registry.url());
    for expected in &expected {
        let blob_gets = pull_rmi_pull(&docker, &registry, expected);
        assert!(
            blob_gets > 0,
            "the second pull of {} fetched no blob, so rmi left layers behind",
            expected.name
        );
    }
}

#[test]
fn docker_pulls_through_the_mirror_and_again_from_cache() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let expected = seed_images(&registry, tmp.path());
    let mirror = Mirror::start(&registry.url());
    let docker = DockerDaemon::start(&mirror.url());
    for expected in &expected {
        let blob_gets = pull_rmi_pull(&docker, &registry, expected);
        assert_eq!(
            blob_gets, 0,
            "upstream blob GETs while pulling {} again",
            expected.name
        );
    }
}

/// `docker search <mirror>/<term>`: the daemon pings the mirror's v1 API
/// and asks its `/v1/search`, which the mirror answers from Docker Hub's
/// search API (the stand-in's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_search_through_the_mirror_asks_the_hub_search_api() {
    if !(require_tool("dockerd") && require_tool("docker")) {
        return;
    }
    let hub = Hub::start().await;
    hub.push_image("library/app", "latest", &[100]);
    hub.push_image("team/apptool", "1.0", &[100]);
    hub.push_image("library/other", "latest", &[100]);
    let mirror = Mirror::start(&hub.url());
    let term = format!("{}/app", mirror.addr);
    let output = tokio::task::block_in_place(|| {
        let docker = DockerDaemon::start(&mirror.url());
        let output = docker.cli(&[
            "search",
            "--no-trunc",
            "--format",
            "{{.Name}} {{.StarCount}}",
            &term,
        ]);
        (output, docker.log_tail())
    });
    let (output, log) = output;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "docker search {term}: {}{}\n--- dockerd log ---\n{log}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().any(|l| l.ends_with("app 7")), "{stdout}");
    assert!(
        lines.iter().any(|l| l.ends_with("team/apptool 7")),
        "{stdout}"
    );
    assert_eq!(hub.count(Kind::Search), 1, "one search reached the hub");
}

/// `pullthrough warm --server` through the admin API, then the upstream
/// registry is killed: dockerd pulls the warmed image (every layer, from
/// the cache alone: nothing answers upstream), and the one not warmed fails.
#[test]
fn docker_pulls_a_warmed_image_after_the_upstream_is_gone() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let [single, multi] = seed_images(&registry, tmp.path());
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, "e2e-warm-token\n").expect("token file");
    let mirror = Mirror::builder(&registry.url())
        .config(&format!(
            "admin_token_file = \"{}\"\n",
            token_file.display()
        ))
        .start();
    let image = format!("{}:{}", multi.name, multi.tag);
    let output = crate::support::cli::pullthrough(&[
        "warm",
        &image,
        "--server",
        &mirror.url(),
        "--admin-token-file",
        &token_file.display().to_string(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "warm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(reports[0]["digest"], multi.repo_digest.as_str());
    assert_eq!(
        reports[0]["platforms"],
        serde_json::json!([format!("linux/{}", host_architecture())])
    );
    assert!(registry.count_requests("GET", "/blobs/") > 0);
    drop(registry);

    let docker = DockerDaemon::start(&mirror.url());
    docker.pull(&image);
    assert_pulled(&docker, &image, &multi);
    let not_warmed = format!("{}:{}", single.name, single.tag);
    let pulled = docker.cli(&["pull", "--quiet", &not_warmed]);
    assert!(
        !pulled.status.success(),
        "{not_warmed} was never warmed, yet pulled with the upstream gone"
    );
    assert!(docker.inspect(&not_warmed).is_none());
}
