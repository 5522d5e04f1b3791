//! End to end with real components: the Debian `docker-registry` as upstream,
//! seeded by skopeo, and `skopeo copy` through pullthrough into a `dir:`,
//! every byte checked against the seeded digests.

use crate::support::mirror::Mirror;
use crate::support::oci_layout::{self, Image};
use crate::support::process::run_bounded;
use crate::support::registry::Registry;
use crate::support::{require_tool, sha256_digest};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tools_present() -> bool {
    require_tool("docker-registry") && require_tool("skopeo")
}

/// `skopeo copy [--all] docker://HOST/REFERENCE dir:OUT`, asserting success.
fn copy_to_dir(host: &str, reference: &str, out: &Path, all: bool) {
    let started = Instant::now();
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet", "--src-tls-verify=false"]);
    if all {
        command.arg("--all");
    }
    command
        .arg(format!("docker://{host}/{reference}"))
        .arg(format!("dir:{}", out.display()));
    let output = run_bounded(command, Duration::from_secs(120));
    eprintln!(
        "skopeo copy {reference} from {host} took {:?}",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "skopeo copy {reference} from {host} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `dir:` file named by a digest's hex holds exactly those bytes.
fn assert_blob(out: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = std::fs::read(out.join(hex))
        .unwrap_or_else(|e| panic!("{digest} missing from dir: copy: {e}"));
    assert_eq!(sha256_digest(&bytes), digest, "content of {hex}");
}

/// The `dir:` copy holds the image byte for byte: manifest, config, layers.
fn assert_image_in_dir(out: &Path, manifest_file: &str, image: &Image) {
    let manifest = std::fs::read(out.join(manifest_file)).expect("read copied manifest");
    assert!(
        manifest == image.manifest,
        "{manifest_file} is not byte-identical to the seeded manifest"
    );
    assert_blob(out, &image.config_digest);
    for digest in &image.layer_digests {
        assert_blob(out, digest);
    }
}

/// The `--all` copy holds the index and every platform's image, byte for byte.
fn assert_index_in_dir(out: &Path, multi: &oci_layout::MultiImage) {
    let index = std::fs::read(out.join("manifest.json")).expect("read copied index");
    assert!(
        index == multi.index,
        "manifest.json is not byte-identical to the seeded index"
    );
    for image in &multi.platforms {
        let hex = image
            .manifest_digest
            .strip_prefix("sha256:")
            .expect("sha256 digest");
        assert_image_in_dir(out, &format!("{hex}.manifest.json"), image);
    }
}

/// Checks the harness alone: layout, seeding and registry serve skopeo
/// directly. If this fails, the fault is in the test setup, not pullthrough.
#[test]
fn harness_registry_serves_seeded_images_to_skopeo() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = oci_layout::write_image(&tmp.path().join("single"), "v1", 1, &[20_000, 70_000]);
    let multi = oci_layout::write_multi_platform(&tmp.path().join("multi"), "v1", 2, &[10_000]);
    let registry = Registry::start(&tmp.path().join("registry"));
    registry.seed(&tmp.path().join("single"), "v1", "library/harness:v1");
    registry.seed(&tmp.path().join("multi"), "v1", "library/harness-multi:v1");

    copy_to_dir(
        &registry.host(),
        "library/harness:v1",
        &tmp.path().join("out"),
        false,
    );
    assert_image_in_dir(&tmp.path().join("out"), "manifest.json", &image);
    copy_to_dir(
        &registry.host(),
        "library/harness-multi:v1",
        &tmp.path().join("out-multi"),
        true,
    );
    assert_index_in_dir(&tmp.path().join("out-multi"), &multi);
}

#[test]
fn skopeo_copies_an_image_through_the_mirror_and_again_from_cache() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tmp.path().join("layout");
    let image = oci_layout::write_image(&layout, "v1", 11, &[300_000, 2_000_000, 5_000]);
    let registry = Registry::start(&tmp.path().join("registry"));
    registry.seed(&layout, "v1", "library/e2e-skopeo:v1");
    let mirror = Mirror::start(&registry.url());
    let host = mirror.addr.to_string();

    copy_to_dir(
        &host,
        "library/e2e-skopeo:v1",
        &tmp.path().join("first"),
        false,
    );
    assert_image_in_dir(&tmp.path().join("first"), "manifest.json", &image);
    let requests = registry.requests();
    for digest in &image.layer_digests {
        let path = format!("/v2/library/e2e-skopeo/blobs/{digest}");
        let fetched = requests
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count();
        assert_eq!(
            fetched, 1,
            "upstream GETs of layer {digest} on the first copy"
        );
    }

    let blob_gets = registry.count_requests("GET", "/blobs/");
    copy_to_dir(
        &host,
        "library/e2e-skopeo:v1",
        &tmp.path().join("second"),
        false,
    );
    assert_image_in_dir(&tmp.path().join("second"), "manifest.json", &image);
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        blob_gets,
        "upstream blob GETs on the second copy"
    );
}

#[test]
fn skopeo_copies_a_multi_platform_index_through_the_mirror() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tmp.path().join("layout");
    let multi = oci_layout::write_multi_platform(&layout, "v1", 21, &[400_000, 30_000]);
    let registry = Registry::start(&tmp.path().join("registry"));
    registry.seed(&layout, "v1", "library/e2e-skopeo-multi:v1");
    let mirror = Mirror::start(&registry.url());
    let host = mirror.addr.to_string();

    copy_to_dir(
        &host,
        "library/e2e-skopeo-multi:v1",
        &tmp.path().join("first"),
        true,
    );
    assert_index_in_dir(&tmp.path().join("first"), &multi);

    let blob_gets = registry.count_requests("GET", "/blobs/");
    copy_to_dir(
        &host,
        "library/e2e-skopeo-multi:v1",
        &tmp.path().join("second"),
        true,
    );
    assert_index_in_dir(&tmp.path().join("second"), &multi);
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        blob_gets,
        "upstream blob GETs on the second copy"
    );
}
