//! The admin API's warm action and `pullthrough warm --server`.

use super::{admin_token_line, blob_bytes, done, hub_config, warm_api, TOKEN};
use crate::support::cli::pullthrough;
use crate::support::client::oci_error_code;
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;

fn blob_fetches(hub: &Hub) -> u64 {
    hub.count(Kind::CdnGet)
}

fn manifest_gets(hub: &Hub) -> u64 {
    hub.count(Kind::ManifestGetByTag) + hub.count(Kind::ManifestGetByDigest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_needs_the_token_takes_the_platforms_asked_and_skips_what_is_cached() {
    let hub = Hub::start().await;
    let amd = hub.push_image("library/app", "amd", &[30_000, 2_000]);
    let arm = hub.push_image("library/app", "arm", &[40_000, 3_000]);
    let (index_digest, _) = hub.push_index("library/app", "multi", &[&amd, &arm]);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = hub_config(&hub.url(), &admin_token_line(dir.path()));
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();
    hub.reset_counts();

    let (status, _, body) = warm_api(&mirror, "image=app:multi", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = warm_api(&mirror, "image=app:multi", Some("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(manifest_gets(&hub) + hub.count(Kind::ManifestHeadByTag), 0);

    // One platform: the index, the amd64 manifest and its blobs only.
    let (status, lines, body) =
        warm_api(&mirror, "image=app:multi&platform=linux/amd64", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let reports = done(&lines);
    assert_eq!(reports.len(), 1, "{body}");
    let r = &reports[0];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["digest"], index_digest.as_str());
    assert_eq!(r["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(r["manifests"], 2);
    assert_eq!(r["blobs"], 3);
    assert_eq!(r["blobs_fetched"], 3);
    assert_eq!(r["bytes_fetched"], blob_bytes(&amd));
    assert_eq!(blob_fetches(&hub), 3);
    assert_eq!(
        hub.count(Kind::ManifestGetByDigest),
        2,
        "the index and the amd64 manifest, by digest"
    );
    for (digest, _) in std::iter::once(&arm.config).chain(&arm.layers) {
        assert!(
            !hub.requests()
                .iter()
                .any(|r| r.path.contains(digest.as_str())),
            "the arm64 blob {digest} was fetched"
        );
    }

    // Both platforms now, through the command line: only arm64 is new.
    let output = pullthrough(&[
        "warm",
        "app:multi",
        "--platform",
        "linux/amd64,linux/arm64",
        "--server",
        &mirror.url(),
        "--admin-token-file",
        &dir.path().join("admin-token").display().to_string(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(reports[0]["blobs"], 6);
    assert_eq!(reports[0]["blobs_fetched"], 3);
    assert_eq!(reports[0]["bytes_fetched"], blob_bytes(&arm));
    assert_eq!(blob_fetches(&hub), 6);

    // Again: everything is cached (and the tag still fresh): nothing to fetch.
    let gets = manifest_gets(&hub);
    let (_, lines, _) = warm_api(&mirror, "image=app:multi&platform=all", Some(TOKEN)).await;
    let r = &done(&lines)[0];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["blobs_fetched"], 0);
    assert_eq!(
        blob_fetches(&hub),
        6,
        "blob downloads on a warm of cached content"
    );
    assert_eq!(
        manifest_gets(&hub),
        gets,
        "manifest GETs on a warm of cached content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_warm_requests_get_oci_errors_and_missing_images_are_named() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[5_000]);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = hub_config(&hub.url(), &admin_token_line(dir.path()));
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();

    for query in [
        "",
        "image=UPPER:1",
        "image=app:-x",
        "image=app:v1&platform=linux",
    ] {
        let (status, _, body) = warm_api(&mirror, query, Some(TOKEN)).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert_eq!(
            oci_error_code(body.as_bytes()).as_deref(),
            Some("NAME_INVALID"),
            "{query:?}: {body}"
        );
        assert!(!body.contains(TOKEN));
    }
    let get = crate::support::client::client()
        .get(format!("{}/api/v1/warm?image=app:v1", mirror.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(get.status(), 405);

    let output = pullthrough(&[
        "warm",
        "app:v1",
        "app:nope",
        "--server",
        &mirror.url(),
        "--admin-token-file",
        &dir.path().join("admin-token").display().to_string(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("app:nope"), "{stderr}");
    assert!(!stderr.contains("app:v1 ("), "{stderr}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("IMAGE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app:v1 ") && l.ends_with("ok")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app:nope ") && l.ends_with("FAILED")),
        "{table}"
    );
    super::pull_exact(&mirror.url(), "library/app", "v1", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_referrers_a_warm_brings_the_signature_and_its_blobs() {
    use crate::support::hub::OCI_MANIFEST;
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[6_000]);
    let empty = hub.put_blob("library/app", b"{}".to_vec());
    let payload = b"a signature over the image".to_vec();
    let layer = hub.put_blob("library/app", payload.clone());
    let signature = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": image.manifest_bytes.len()},
    }))
    .expect("json");
    let sig_digest = hub.put_manifest("library/app", None, OCI_MANIFEST, signature.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = hub_config(&hub.url(), &admin_token_line(dir.path()));
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();

    let (status, lines, body) = warm_api(&mirror, "image=app:v1", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&lines)[0]["referrers"], 0, "{body}");
    assert_eq!(
        hub.count(Kind::Referrers),
        0,
        "referrers asked without --referrers"
    );

    let (_, lines, body) = warm_api(&mirror, "image=app:v1&referrers=true", Some(TOKEN)).await;
    let r = &done(&lines)[0];
    assert_eq!(r["ok"], true, "{body}");
    assert_eq!(r["referrers"], 1, "{body}");
    assert_eq!(
        r["blobs"], 4,
        "config, layer, the signature's config and payload"
    );
    assert_eq!(r["blobs_fetched"], 2);

    hub.stop().await;
    let c = crate::support::client::client();
    let base = format!("{}/v2/library/app", mirror.url());
    let listed = c
        .get(format!("{base}/referrers/{}", image.manifest_digest))
        .send()
        .await
        .expect("referrers");
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.expect("body");
    assert!(listed.contains(&sig_digest), "{listed}");
    let manifest = c
        .get(format!("{base}/manifests/{sig_digest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("signature manifest");
    assert_eq!(manifest.status(), 200);
    assert!(manifest.bytes().await.expect("body") == signature);
    let blob = c
        .get(format!("{base}/blobs/{layer}"))
        .send()
        .await
        .expect("signature blob");
    assert_eq!(blob.status(), 200);
    assert!(blob.bytes().await.expect("body") == payload);
}
