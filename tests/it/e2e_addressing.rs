//! Every way a real client reaches the mirror (issue 12), each against two
//! Debian `docker-registry` upstreams standing for Docker Hub and ghcr.io
//! that hold different images under the same name, so a wrong route shows
//! as a wrong digest: dockerd pulling from the mirror as a plain registry
//! by a host name per registry (`ghcr.<name>.localhost:PORT/owner/app:1`),
//! with Docker Hub's host name as its `registry-mirrors` entry, and as a
//! plain registry by path prefix (`127.0.0.1:PORT/ghcr.io/owner/app:1`,
//! `…/docker.io/library/demo`, `…/library/demo`); Podman with a
//! `registries.conf` mirror entry (the shipped
//! deploy/clients/podman-registries.conf) and with a plain pull from it;
//! containerd with one `_default/hosts.toml` (the shipped
//! deploy/clients/containerd-default-hosts.toml) sending every registry
//! through the mirror by `?ns=`. Each checks what the client stored and
//! what each registry was asked for.

use crate::support::containerd::Containerd;
use crate::support::docker::DockerDaemon;
use crate::support::hosts::HostsLine;
use crate::support::oci_layout::{host_architecture, Image};
use crate::support::podman::Podman;
use crate::support::registry::parse_access_line;
use crate::support::require_tool;
use crate::support::two_registries::TwoRegistries;
use std::path::Path;
use std::process::Output;

/// The mirror the files under deploy/clients/ name.
const SHIPPED_MIRROR: &str = "http://mirror.example.internal:5000";

/// deploy/clients/`name`, checked to name [`SHIPPED_MIRROR`].
fn shipped_client_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/clients")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains(SHIPPED_MIRROR.trim_start_matches("http://")),
        "{name} names the mirror as the tests expect"
    );
    text
}

fn docker_present() -> bool {
    require_tool("docker-registry")
        && require_tool("skopeo")
        && require_tool("dockerd")
        && require_tool("docker")
}

/// `docker pull REFERENCE` stored `image`: its config as the image ID, its
/// manifest digest under the name pulled.
fn assert_docker_pulled(docker: &DockerDaemon, reference: &str, image: &Image) {
    docker.pull(reference);
    let inspect = docker
        .inspect(reference)
        .unwrap_or_else(|| panic!("{reference} not present after docker pull"));
    assert_eq!(
        inspect["Id"],
        image.config_digest.as_str(),
        "image ID of {reference}"
    );
    assert_eq!(inspect["Architecture"], host_architecture(), "{reference}");
    let name = reference.rsplit_once(':').expect("a tag").0;
    let repo_digest = format!("{name}@{}", image.manifest_digest);
    let repo_digests = inspect["RepoDigests"].as_array().expect("RepoDigests");
    assert!(
        repo_digests.iter().any(|d| d == repo_digest.as_str()),
        "{repo_digest} not in {repo_digests:?}"
    );
}

/// The `/v2/…` paths in a registry's access-log lines.
fn v2_paths(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(parse_access_line)
        .map(|request| request.path)
        .filter(|path| path.starts_with("/v2"))
        .collect()
}

/// Each registry was asked for its own image's layers and never for the
/// other's, only by the mirror, without `ns`; ghcr.io's only for
/// `ghcr_repositories`, Docker Hub's only for `library/demo`.
fn assert_each_registry_served_its_own(setup: &TwoRegistries, ghcr_repositories: &[&str]) {
    let (hub_log, ghcr_log) = setup.assert_only_the_mirror_asked();
    let (hub_paths, ghcr_paths) = (v2_paths(&hub_log), v2_paths(&ghcr_log));
    for (paths, own, other, repositories, registry) in [
        (
            &hub_paths,
            &setup.hub_image,
            &setup.ghcr_image,
            &["library/demo"][..],
            "docker.io",
        ),
        (
            &ghcr_paths,
            &setup.ghcr_image,
            &setup.hub_image,
            ghcr_repositories,
            "ghcr.io",
        ),
    ] {
        for digest in &own.layer_digests {
            assert!(
                paths.iter().any(|p| p.contains(digest.as_str())),
                "{registry} registry never asked for its layer {digest}: {paths:?}"
            );
        }
        for digest in std::iter::once(&other.manifest_digest).chain(&other.layer_digests) {
            assert!(
                !paths.iter().any(|p| p.contains(digest.as_str())),
                "{registry} registry asked for the other's {digest}"
            );
        }
        for path in paths {
            assert!(
                path == "/v2/"
                    || repositories
                        .iter()
                        .any(|r| path.starts_with(&format!("/v2/{r}/"))),
                "{registry} registry asked for {path}"
            );
            assert!(!path.contains("ns="), "ns passed upstream: {path}");
        }
    }
}

#[test]
fn docker_reaches_the_mirror_by_registry_host_names_as_that_registry_and_as_its_mirror() {
    if !docker_present() {
        return;
    }
    let mut setup = TwoRegistries::start_with("hosts = [\"docker.*\"]", "hosts = [\"ghcr.*\"]");
    setup.seed_ghcr_as("owner/app:1");
    let port = setup.mirror.addr.port();
    let ghcr = format!("ghcr.reach{}.localhost", std::process::id());
    let hub = format!("docker.reach{}.localhost", std::process::id());
    let Some(_hosts) = HostsLine::add_or_skip(&[&ghcr, &hub]) else {
        return;
    };
    let (ghcr, hub) = (format!("{ghcr}:{port}"), format!("{hub}:{port}"));
    // Docker Hub's host name is also the daemon's registry mirror.
    let docker = DockerDaemon::start_with(&[&format!("http://{hub}")], &[&ghcr, &hub]);

    assert_docker_pulled(&docker, &format!("{ghcr}/owner/app:1"), &setup.ghcr_image);
    // On the bare address this name is Docker Hub's; on ghcr's host it is
    // ghcr's, path as is.
    assert_docker_pulled(
        &docker,
        &format!("{ghcr}/library/demo:v1"),
        &setup.ghcr_image,
    );
    let (hub_log, _) = setup.logs_since_seeding();
    assert!(
        v2_paths(&hub_log).is_empty(),
        "pulls from ghcr's host reached Docker Hub's registry: {hub_log}"
    );
    // Through `registry-mirrors` (Docker Hub itself is out of reach here:
    // a pull that did not go through the mirror fails), then by name.
    assert_docker_pulled(&docker, "demo:v1", &setup.hub_image);
    assert_docker_pulled(&docker, &format!("{hub}/library/demo:v1"), &setup.hub_image);
    assert_each_registry_served_its_own(&setup, &["owner/app", "library/demo"]);
}

#[test]
fn docker_pulls_from_the_mirror_as_a_plain_registry_by_path_prefix() {
    if !docker_present() {
        return;
    }
    let mut setup = TwoRegistries::start();
    setup.seed_ghcr_as("owner/app:1");
    let mirror = setup.mirror.addr.to_string();
    let docker = DockerDaemon::start_with(&[], &[&mirror]);

    assert_docker_pulled(
        &docker,
        &format!("{mirror}/ghcr.io/owner/app:1"),
        &setup.ghcr_image,
    );
    let (hub_log, _) = setup.logs_since_seeding();
    assert!(
        v2_paths(&hub_log).is_empty(),
        "a ghcr.io/ pull reached Docker Hub's registry: {hub_log}"
    );
    // Docker Hub's `library/` rule applies after the prefix is stripped,
    // and with no prefix at all.
    for reference in [
        "docker.io/library/demo:v1",
        "docker.io/demo:v1",
        "library/demo:v1",
    ] {
        assert_docker_pulled(&docker, &format!("{mirror}/{reference}"), &setup.hub_image);
    }
    assert_each_registry_served_its_own(&setup, &["owner/app"]);
}

fn assert_podman_pulled(
    podman: &Podman,
    storage: &str,
    output: Output,
    reference: &str,
    image: &Image,
) {
    assert!(
        output.status.success(),
        "podman pull {reference}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        podman.digest(storage, reference),
        image.manifest_digest,
        "manifest digest Podman stored for {reference}"
    );
}

#[test]
fn podman_pulls_through_a_registries_conf_mirror_and_from_the_mirror_itself() {
    if !(require_tool("docker-registry") && require_tool("skopeo") && require_tool("podman")) {
        return;
    }
    let mut setup = TwoRegistries::start();
    setup.seed_ghcr_as("owner/app:1");
    let mirror = setup.mirror.addr.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // The shipped registries.conf, pointed at this mirror: Docker Hub
    // through the mirror's root, ghcr.io through its path prefix.
    let shipped = shipped_client_file("podman-registries.conf");
    let podman = Podman::in_dir(
        dir.path(),
        &shipped.replace(SHIPPED_MIRROR.trim_start_matches("http://"), &mirror),
    );
    for (reference, image) in [
        ("docker.io/library/demo:v1", &setup.hub_image),
        ("ghcr.io/owner/app:1", &setup.ghcr_image),
    ] {
        let output = podman.pull("mirrored", reference);
        assert_podman_pulled(&podman, "mirrored", output, reference, image);
    }
    // The mirror named as the registry, in a store of its own.
    for (reference, image) in [
        (format!("{mirror}/library/demo:v1"), &setup.hub_image),
        (
            format!("{mirror}/ghcr.io/library/demo:v1"),
            &setup.ghcr_image,
        ),
    ] {
        let output = podman.pull_with("plain", &["--tls-verify=false"], &reference);
        assert_podman_pulled(&podman, "plain", output, &reference, image);
    }
    assert_each_registry_served_its_own(&setup, &["owner/app", "library/demo"]);
}

#[test]
fn containerd_fetches_every_registry_through_one_default_hosts_toml() {
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
    let default = hosts.path().join("_default");
    std::fs::create_dir_all(&default).expect("_default dir");
    // The shipped file, pointed at this mirror.
    let shipped = shipped_client_file("containerd-default-hosts.toml");
    std::fs::write(
        default.join("hosts.toml"),
        shipped.replace(SHIPPED_MIRROR, &setup.mirror.url()),
    )
    .expect("write hosts.toml");
    let hosts_dir = hosts.path().to_str().expect("utf-8");
    for (reference, image) in [
        ("docker.io/library/demo:v1", &setup.hub_image),
        ("ghcr.io/library/demo:v1", &setup.ghcr_image),
    ] {
        let output = containerd.ctr(&["content", "fetch", "--hosts-dir", hosts_dir, reference]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ctr content fetch {reference} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&image.manifest_digest),
            "{reference} resolved to the wrong manifest: {stdout}"
        );
    }
    // containerd verifies what it stores: present means the bytes match.
    let listed = containerd.ctr(&["content", "ls", "-q"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for image in [&setup.hub_image, &setup.ghcr_image] {
        for digest in [&image.manifest_digest, &image.config_digest]
            .into_iter()
            .chain(&image.layer_digests)
        {
            assert!(
                listed.contains(digest.as_str()),
                "{digest} not in containerd: {listed}"
            );
        }
    }
    assert_each_registry_served_its_own(&setup, &["library/demo"]);
}
