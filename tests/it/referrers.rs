//! Signatures, SBOMs and attestations through the mirror: the referrers
//! API (distribution-spec 1.1) proxied, read through the referrers tag
//! schema where the upstream has no API, filtered by artifactType, cached
//! and served through an outage; artifacts served byte-exact.

use crate::support::client::{client, ok_body};
use crate::support::hub::{Fault, Hub, Kind, Target, OCI_MANIFEST};
use crate::support::mirror::Mirror;
use http::StatusCode;
use serde_json::{json, Value};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/spdx+json";

/// An artifact manifest (empty config, one layer) naming `subject`.
fn artifact(hub: &Hub, subject: &str, artifact_type: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let empty = hub.put_blob("library/app", b"{}".to_vec());
    let layer = hub.put_blob("library/app", payload.to_vec());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = hub.put_manifest("library/app", None, OCI_MANIFEST, bytes.clone());
    (digest, bytes)
}

async fn referrers(
    mirror: &Mirror,
    subject: &str,
    query: &str,
) -> (StatusCode, Option<String>, Value) {
    let response = client()
        .get(format!(
            "{}/v2/library/app/referrers/{subject}{query}",
            mirror.url()
        ))
        .send()
        .await
        .expect("mirror answers");
    let status = response.status();
    let filtered = response
        .headers()
        .get("oci-filters-applied")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some(INDEX)
    );
    let body: Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("index");
    (status, filtered, body)
}

fn listed(index: &Value) -> Vec<String> {
    let mut digests: Vec<String> = index["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    digests.sort();
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referrers_are_proxied_filtered_cached_and_served_through_an_outage() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (sig, sig_bytes) = artifact(&hub, &image.manifest_digest, SIG, b"signature");
    let (sbom, _) = artifact(&hub, &image.manifest_digest, SBOM, b"sbom");
    let mirror = Mirror::builder(&hub.url())
        .config(&format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nreferrers_ttl = \"1s\"\n",
            hub.url()
        ))
        .start();

    let (status, filtered, all) = referrers(&mirror, &image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(filtered, None);
    assert_eq!(all["mediaType"], INDEX);
    let mut both = vec![sig.clone(), sbom.clone()];
    both.sort();
    assert_eq!(listed(&all), both);

    let (_, filtered, sigs) = referrers(
        &mirror,
        &image.manifest_digest,
        &format!("?artifactType={}", SIG.replace('+', "%2B")),
    )
    .await;
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert_eq!(listed(&sigs), vec![sig.clone()]);
    assert_eq!(
        hub.count(Kind::Referrers),
        1,
        "asked once, within referrers_ttl"
    );

    // The signature manifest itself, byte-exact, through the mirror.
    let manifest = client()
        .get(format!("{}/v2/library/app/manifests/{sig}", mirror.url()))
        .header("accept", OCI_MANIFEST);
    let manifest = ok_body(manifest, "signature manifest").await;
    assert_eq!(manifest.as_ref(), sig_bytes.as_slice());

    // Past the TTL with the upstream down: the last answer still serves.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    hub.set_fault(Target::All, Fault::Status(503));
    let (status, _, stale) = referrers(&mirror, &image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&stale), both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_referrers_api_the_tag_schema_answers() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (sig, _) = artifact(&hub, &image.manifest_digest, SIG, b"signature");
    // As cosign stores it on registries without the API: an index under
    // the tag sha256-<hex>.
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    let schema = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sig, "size": 100, "artifactType": SIG}],
    });
    hub.put_manifest(
        "library/app",
        Some(&format!("sha256-{hex}")),
        INDEX,
        serde_json::to_vec(&schema).expect("json"),
    );
    hub.set_fault(Target::All, Fault::NoReferrersApi);
    let mirror = Mirror::start(&hub.url());

    let (status, _, index) = referrers(&mirror, &image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&index), vec![sig]);
    let (_, filtered, none) = referrers(
        &mirror,
        &image.manifest_digest,
        &format!("?artifactType={}", SBOM.replace('+', "%2B")),
    )
    .await;
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert!(listed(&none).is_empty());

    // A subject nobody signed: an empty index, not an error.
    let (status, _, empty) = referrers(&mirror, &crate::support::sha256_digest(b"x"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(&empty).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_page_of_the_upstream_answer_is_followed_and_merged() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let mut expected: Vec<String> = (0..5u8)
        .map(|i| {
            let kind = if i % 2 == 0 { SIG } else { SBOM };
            artifact(&hub, &image.manifest_digest, kind, &[b'p', i]).0
        })
        .collect();
    expected.sort();
    hub.set_fault(Target::All, Fault::ReferrersPerPage(2));
    let mirror = Mirror::start(&hub.url());

    let (status, _, all) = referrers(&mirror, &image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&all), expected, "all five, from three pages");
    assert_eq!(hub.count(Kind::Referrers), 3, "pages of 2, 2 and 1");

    // Filtering applies to the merged answer, served from the cache.
    let (_, filtered, sboms) = referrers(
        &mirror,
        &image.manifest_digest,
        &format!("?artifactType={}", SBOM.replace('+', "%2B")),
    )
    .await;
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert_eq!(listed(&sboms).len(), 2);
    assert_eq!(hub.count(Kind::Referrers), 3);
}

/// GET of `library/app:v1` through the mirror, as a client pulling it.
async fn pull_tag(mirror: &Mirror) {
    let response = client()
        .get(format!("{}/v2/library/app/manifests/v1", mirror.url()))
        .header("accept", crate::support::ACCEPT)
        .send()
        .await
        .expect("mirror answers");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetched_referrers_answer_a_signature_check_during_an_outage() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (sig, sig_bytes) = artifact(&hub, &image.manifest_digest, SIG, b"signature");
    let warmed = Mirror::builder(&hub.url())
        .config(&format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nprefetch_referrers = true\n",
            hub.url()
        ))
        .start();
    let cold = Mirror::start(&hub.url());

    pull_tag(&cold).await;
    assert_eq!(hub.count(Kind::Referrers), 0, "off by default: not asked");
    pull_tag(&warmed).await;
    // The tag's answer did not wait for it; the referrers list, the
    // signature manifest and its payload follow in the background.
    let sig_path = format!("/v2/library/app/manifests/{sig}");
    let payload = crate::support::sha256_digest(b"signature");
    crate::support::wait_until("the prefetch", std::time::Duration::from_secs(10), || {
        let kept = crate::support::cache::cached(&warmed.cache_dir, &payload);
        (hub.count(Kind::Referrers) == 1 && kept).then_some(())
    });
    assert!(hub.requests().iter().any(|r| r.path == sig_path));

    hub.set_fault(Target::All, Fault::Status(503));
    let before = hub.requests().len();
    let (status, _, listed_now) = referrers(&warmed, &image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&listed_now), vec![sig.clone()]);
    let manifest = client()
        .get(format!("{}{sig_path}", warmed.url()))
        .header("accept", OCI_MANIFEST);
    let manifest = ok_body(manifest, "signature manifest").await;
    assert_eq!(manifest.as_ref(), sig_bytes.as_slice());
    let blob = client().get(format!("{}/v2/library/app/blobs/{payload}", warmed.url()));
    let blob = ok_body(blob, "signature payload").await;
    assert_eq!(blob.as_ref(), b"signature");
    assert_eq!(
        hub.requests().len(),
        before,
        "all three answered from the cache, the upstream not asked"
    );
    assert_eq!(hub.count(Kind::Referrers), 1);

    // Without the prefetch the same check has nothing to fall back on.
    let response = client()
        .get(format!(
            "{}/v2/library/app/referrers/{}",
            cold.url(),
            image.manifest_digest
        ))
        .send()
        .await
        .expect("mirror answers");
    assert!(
        response.status().is_server_error(),
        "no cached referrers on the mirror without the prefetch: {}",
        response.status()
    );
}
