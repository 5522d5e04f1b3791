//! Artifacts with real clients: ORAS (the Python client) pushes artifacts
//! to a Debian `docker-registry` (distribution 2.8) and pulls them back
//! through the mirror byte-exact; the same artifacts referring to one
//! image are listed alike through the mirror whether the upstream has the
//! referrers API (the Hub stand-in) or only the referrers tag schema
//! (distribution 2.8).

use crate::support::client::{client, header};
use crate::support::hub::{random_bytes, Hub, OCI_INDEX, OCI_MANIFEST};
use crate::support::mirror::Mirror;
use crate::support::oras::{self, Artifact};
use crate::support::registry::{self, Registry};
use crate::support::{require_tool, sha256_digest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/spdx+json";

/// docker-registry and a Python with oras, or `None` (a failure under CI).
fn tools() -> Option<PathBuf> {
    if !require_tool("docker-registry") {
        return None;
    }
    oras::python()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write artifact file");
    path
}

/// GET of a manifest through the mirror with no `Accept` header at all
/// (reqwest, like curl, would send `*/*`): (status, Content-Type,
/// Docker-Content-Digest, bytes).
fn manifest_without_accept(
    mirror: &Mirror,
    name: &str,
    reference: &str,
) -> (u16, Option<String>, Option<String>, Vec<u8>) {
    let path = format!("/v2/{name}/manifests/{reference}");
    let response = registry::http(mirror.addr, "GET", &path, &[]).expect("mirror answers");
    let content_type = response.header("content-type").map(str::to_owned);
    let digest = response.header("docker-content-digest").map(str::to_owned);
    (response.status, content_type, digest, response.body)
}

/// Pulls `name:tag` through the mirror twice, with no Accept and with
/// oras, and checks every byte against what the upstream holds.
async fn assert_pulled_byte_exact(
    mirror: &Mirror,
    upstream: &Registry,
    name: &str,
    tag: &str,
    pushed: &str,
    out: &Path,
) {
    let upstream_bytes = upstream.manifest_bytes(name, tag);
    assert_eq!(sha256_digest(&upstream_bytes), pushed);
    let (status, content_type, digest, bytes) = manifest_without_accept(mirror, name, tag);
    assert_eq!(status, 200, "{name}:{tag} with no Accept");
    assert_eq!(content_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(digest.as_deref(), Some(pushed));
    assert!(
        bytes == upstream_bytes,
        "{name}:{tag}: manifest not byte-exact"
    );
    // A client that asks for the (withdrawn) OCI artifact manifest type
    // only still gets the manifest there is.
    let path = format!("/v2/{name}/manifests/{tag}");
    let artifact_accept = [("Accept", "application/vnd.oci.artifact.manifest.v1+json")];
    let answer = registry::http(mirror.addr, "GET", &path, &artifact_accept).expect("answer");
    assert_eq!(
        answer.status, 200,
        "{name}:{tag} for an artifact-manifest Accept"
    );
    assert!(answer.body == upstream_bytes);

    let manifest: Value = serde_json::from_slice(&bytes).expect("manifest json");
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let blob = client()
        .get(format!("{}/v2/{name}/blobs/{config}", mirror.url()))
        .send()
        .await
        .expect("config through the mirror");
    assert_eq!(blob.status().as_u16(), 200);
    assert_eq!(sha256_digest(&blob.bytes().await.expect("config")), config);

    let python = oras::python().expect("checked by the caller");
    let files = oras::pull(&python, &format!("{}/{name}:{tag}", mirror.addr), out);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(files.len(), layers.len(), "one file per layer");
    for layer in layers {
        let title = layer["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .expect("oras names each layer");
        let pulled = std::fs::read(out.join(title)).expect("pulled file");
        assert_eq!(
            Some(sha256_digest(&pulled).as_str()),
            layer["digest"].as_str(),
            "{title} pulled through the mirror"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn artifacts_with_an_empty_config_and_a_helm_chart_pass_through_byte_exact() {
    let Some(python) = tools() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    let registry = Registry::start(&tmp.path().join("registry"));

    let empty = write(&files, "empty.json", b"{}");
    let module = write(&files, "module.wasm", &random_bytes(71, 300_000));
    let notes = write(&files, "notes.txt", b"an artifact of no image type\n");
    let thing = oras::push(
        &python,
        &format!("{}/demo/thing:v1", registry.host()),
        &Artifact {
            artifact_type: Some("application/vnd.example.thing.v1"),
            config: (&empty, EMPTY_CONFIG),
            layers: vec![
                (&module, "application/vnd.wasm.content.layer.v1+wasm"),
                (&notes, "text/plain"),
            ],
            subject: None,
        },
    );
    let chart_config = write(
        &files,
        "Chart.json",
        br#"{"apiVersion":"v2","name":"demo","version":"0.1.0"}"#,
    );
    let chart = write(&files, "demo-0.1.0.tgz", &random_bytes(72, 40_000));
    let helm = oras::push(
        &python,
        &format!("{}/charts/demo:0.1.0", registry.host()),
        &Artifact {
            artifact_type: None,
            config: (&chart_config, HELM_CONFIG),
            layers: vec![(&chart, HELM_CHART)],
            subject: None,
        },
    );

    let mirror = Mirror::start(&registry.url());
    assert_pulled_byte_exact(
        &mirror,
        &registry,
        "demo/thing",
        "v1",
        &thing,
        &tmp.path().join("out-thing"),
    )
    .await;
    assert_pulled_byte_exact(
        &mirror,
        &registry,
        "charts/demo",
        "0.1.0",
        &helm,
        &tmp.path().join("out-chart"),
    )
    .await;
    let upstream_gets = registry.count_requests("GET", "/v2/demo/thing/blobs/");
    assert_eq!(
        upstream_gets, 3,
        "config and two layers fetched from the upstream once each"
    );
}

/// The descriptors an index lists, sorted by digest.
fn descriptors(index: &Value) -> Vec<Value> {
    let mut all = index["manifests"].as_array().cloned().unwrap_or_default();
    all.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    all
}

async fn referrers(mirror: &Mirror, name: &str, subject: &str, query: &str) -> Value {
    let response = client()
        .get(format!(
            "{}/v2/{name}/referrers/{subject}{query}",
            mirror.url()
        ))
        .send()
        .await
        .expect("mirror answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tag_schema_of_distribution_and_the_referrers_api_give_the_same_index() {
    let Some(python) = tools() else {
        return;
    };
    if !require_tool("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let image = registry::seed(&registry, tmp.path(), "signed", 81, &[20_000]);
    let name = "library/signed";

    // A signature and an SBOM naming the image, pushed by ORAS; then, as a
    // client must where the registry has no referrers API, the index under
    // the referrers tag schema (sha256-<hex>) that lists them.
    let empty = write(&files, "empty.json", b"{}");
    let bundle = write(&files, "bundle.json", br#"{"signature":"c2ln"}"#);
    let spdx = write(&files, "sbom.spdx.json", &random_bytes(82, 5_000));
    let subject = (
        OCI_MANIFEST,
        image.manifest_digest.as_str(),
        image.manifest.len(),
    );
    let mut expected = Vec::new();
    for (tag, artifact_type, layer) in [("sig", SIG, &bundle), ("sbom", SBOM, &spdx)] {
        let digest = oras::push(
            &python,
            &format!("{}/{name}:{tag}", registry.host()),
            &Artifact {
                artifact_type: Some(artifact_type),
                config: (&empty, "application/vnd.oci.empty.v1+json"),
                layers: vec![(layer, "application/octet-stream")],
                subject: Some(subject),
            },
        );
        let size = registry.manifest_bytes(name, &digest).len();
        expected.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "artifactType": artifact_type,
        }));
    }
    expected.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    let schema_tag = image.manifest_digest.replace(':', "-");
    let schema_index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": expected});
    registry
        .put_manifest(
            name,
            &schema_tag,
            OCI_INDEX,
            serde_json::to_vec(&schema_index).expect("json"),
        )
        .await;

    // The Hub stand-in holds the same manifests and blobs, byte for byte,
    // and answers the referrers API from their subject fields.
    let hub = Hub::start().await;
    hub.put_manifest(name, Some("v1"), OCI_MANIFEST, image.manifest.clone());
    for entry in &expected {
        let digest = entry["digest"].as_str().expect("digest");
        let bytes = registry.manifest_bytes(name, digest);
        let manifest: Value = serde_json::from_slice(&bytes).expect("manifest");
        for blob in std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().expect("layers"))
        {
            let blob_digest = blob["digest"].as_str().expect("blob digest");
            let path = format!("/v2/{name}/blobs/{blob_digest}");
            let fetched = registry::http(registry.addr, "GET", &path, &[]).expect("GET blob");
            assert_eq!(hub.put_blob(name, fetched.body), blob_digest);
        }
        assert_eq!(hub.put_manifest(name, None, OCI_MANIFEST, bytes), digest);
    }

    let through_schema = Mirror::start(&registry.url());
    let through_api = Mirror::start(&hub.url());
    let subject = &image.manifest_digest;
    let from_schema = descriptors(&referrers(&through_schema, name, subject, "").await);
    let from_api = descriptors(&referrers(&through_api, name, subject, "").await);
    assert_eq!(
        from_schema, expected,
        "distribution 2.8, through the tag schema"
    );
    assert_eq!(from_api, expected, "the referrers API");
    let only_sboms = format!("?artifactType={}", SBOM.replace('+', "%2B"));
    let sboms_schema = descriptors(&referrers(&through_schema, name, subject, &only_sboms).await);
    let sboms_api = descriptors(&referrers(&through_api, name, subject, &only_sboms).await);
    assert_eq!(sboms_schema, sboms_api);
    assert_eq!(sboms_schema.len(), 1);
    assert_eq!(sboms_schema[0]["artifactType"], SBOM);

    let asked = registry.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.path.contains("/referrers/") && r.status == 404),
        "the mirror asked distribution's (missing) referrers API first"
    );
    assert!(
        asked
            .iter()
            .any(|r| r.path == format!("/v2/{name}/manifests/{schema_tag}") && r.status == 200),
        "then read the tag schema"
    );
}
