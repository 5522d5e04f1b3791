//! Self-tests of the Docker Hub stand-in (support/hub), with reqwest and no
//! mirror: if these fail, the mirror suites' verdicts mean nothing.

use crate::support::client::{client, header, hex_of, oci_error_code, read_transfer, Transfer};
use crate::support::hub::{Fault, Hub, Kind, Target, OCI_INDEX, OCI_MANIFEST};
use crate::support::{require_tool, sha256_digest};
use http::StatusCode;
use std::time::{Duration, Instant};

/// Fetches an anonymous token for `repo` the way a registry client does.
async fn token(hub: &Hub, repo: &str) -> String {
    let url = format!(
        "{}/token?service=hub.test&scope=repository:{repo}:pull",
        hub.url()
    );
    let response = client().get(url).send().await.expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("token body")).expect("json");
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(body["token"], body["access_token"]);
    body["token"].as_str().expect("token").to_string()
}

/// GET `url` with a bearer token.
async fn get(url: &str, token: &str) -> reqwest::Response {
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn challenges_requests_without_a_token() {
    let hub = Hub::start().await;
    let root = client()
        .get(format!("{}/v2/", hub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&root, "www-authenticate").as_deref(),
        Some(format!("Bearer realm=\"{}/token\",service=\"hub.test\"", hub.url()).as_str())
    );
    let body = root.bytes().await.unwrap();
    assert_eq!(oci_error_code(&body).as_deref(), Some("UNAUTHORIZED"));

    let url = format!("{}/v2/library/x/manifests/latest", hub.url());
    let manifest = client().get(url).send().await.unwrap();
    assert_eq!(manifest.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&manifest, "www-authenticate").unwrap();
    assert!(
        challenge.ends_with(",scope=\"repository:library/x:pull\""),
        "{challenge}"
    );
    assert_eq!(hub.count(Kind::Unauthorized), 2);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_flow_serves_manifests_and_redirects_blobs_to_the_cdn() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000, 70_000]);
    let token = token(&hub, "library/app").await;
    let base = format!("{}/v2/library/app", hub.url());

    let root = get(&format!("{}/v2/", hub.url()), &token).await;
    assert_eq!(root.status(), StatusCode::OK);

    let mut remaining = Vec::new();
    for reference in ["v1", image.manifest_digest.as_str()] {
        let response = get(&format!("{base}/manifests/{reference}"), &token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(
            header(&response, "docker-content-digest").as_deref(),
            Some(image.manifest_digest.as_str())
        );
        assert_eq!(
            header(&response, "ratelimit-limit").as_deref(),
            Some("100;w=21600")
        );
        remaining.push(header(&response, "ratelimit-remaining").unwrap());
        assert_eq!(response.bytes().await.unwrap(), image.manifest_bytes);
    }
    assert_eq!(remaining, ["99;w=21600", "98;w=21600"]);

    let head = client()
        .head(format!("{base}/manifests/v1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header(&head, "content-length"),
        Some(image.manifest_bytes.len().to_string())
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let (layer_digest, layer) = &image.layers[1];
    let blob_head = client()
        .head(format!("{base}/blobs/{layer_digest}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob_head.status(), StatusCode::OK);
    assert_eq!(
        header(&blob_head, "content-length"),
        Some(layer.len().to_string())
    );
    assert_eq!(
        header(&blob_head, "docker-content-digest").as_deref(),
        Some(layer_digest.as_str())
    );

    let redirect = get(&format!("{base}/blobs/{layer_digest}"), &token).await;
    assert_eq!(redirect.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&redirect, "location").unwrap();
    assert!(location.starts_with(&hub.cdn_url()), "{location}");

    let with_auth = get(&location, &token).await;
    assert_eq!(with_auth.status(), StatusCode::BAD_REQUEST);
    let cdn = client().get(&location).send().await.unwrap();
    assert_eq!(cdn.status(), StatusCode::OK);
    assert_eq!(
        header(&cdn, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(&read_transfer(cdn).await.bytes(), layer);

    let unknown = get(&format!("{base}/blobs/{}", sha256_digest(b"nope")), &token).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        oci_error_code(&unknown.bytes().await.unwrap()).as_deref(),
        Some("BLOB_UNKNOWN")
    );
    let unknown = get(&format!("{base}/manifests/nope"), &token).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        oci_error_code(&unknown.bytes().await.unwrap()).as_deref(),
        Some("MANIFEST_UNKNOWN")
    );

    assert_eq!(hub.count(Kind::TokenFetch), 1);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 2);
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
    assert_eq!(hub.count(Kind::ManifestHeadByTag), 1);
    assert_eq!(hub.count(Kind::BlobHead), 1);
    assert_eq!(hub.count(Kind::BlobGet), 2);
    assert_eq!(hub.count(Kind::CdnGet), 1);
    assert_eq!(hub.count(Kind::CdnRejected), 1);
    assert_eq!(hub.count(Kind::CdnBytesSent), layer.len() as u64);

    hub.reset_counts();
    assert_eq!(hub.count(Kind::BlobGet), 0);
    assert!(hub.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_for_one_repository_is_refused_on_another() {
    let hub = Hub::start().await;
    let a = hub.push_image("team/a", "latest", &[10]);
    hub.push_image("team/b", "latest", &[10]);
    let token_a = token(&hub, "team/a").await;
    let on_a = get(
        &format!("{}/v2/team/a/manifests/latest", hub.url()),
        &token_a,
    )
    .await;
    assert_eq!(on_a.status(), StatusCode::OK);
    let on_b = get(
        &format!("{}/v2/team/b/manifests/latest", hub.url()),
        &token_a,
    )
    .await;
    assert_eq!(on_b.status(), StatusCode::UNAUTHORIZED);
    let blob_on_b = get(
        &format!("{}/v2/team/b/blobs/{}", hub.url(), a.layers[0].0),
        &token_a,
    )
    .await;
    assert_eq!(blob_on_b.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hub.count(Kind::Unauthorized), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_repositories_need_basic_credentials_for_a_token() {
    let hub = Hub::start().await;
    hub.push_image("corp/secret", "v1", &[10]);
    hub.make_private("corp/secret", "alice", "s3cret");
    let url = format!(
        "{}/token?service=hub.test&scope=repository:corp/secret:pull",
        hub.url()
    );
    let anonymous = client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client()
        .get(&url)
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client()
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&right.bytes().await.unwrap()).unwrap();
    let pulled = get(
        &format!("{}/v2/corp/secret/manifests/v1", hub.url()),
        body["token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(pulled.status(), StatusCode::OK);

    let seen: Vec<_> = hub
        .token_requests()
        .into_iter()
        .map(|t| (t.basic_user, t.password_matched))
        .collect();
    assert_eq!(
        seen,
        [
            (None, false),
            (Some("alice".to_string()), false),
            (Some("alice".to_string()), true)
        ]
    );
    assert_eq!(hub.count(Kind::TokenRefused), 2);
    assert_eq!(hub.count(Kind::TokenFetch), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_indexes_and_tag_lists() {
    let hub = Hub::start().await;
    let amd = hub.push_image("multi/arch", "amd64", &[10]);
    let arm = hub.push_image("multi/arch", "arm64", &[10]);
    let (digest, bytes) = hub.push_index("multi/arch", "latest", &[&amd, &arm]);
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
    assert_eq!(
        index["manifests"][0]["digest"],
        amd.manifest_digest.as_str()
    );

    let token = token(&hub, "multi/arch").await;
    let response = get(
        &format!("{}/v2/multi/arch/manifests/latest", hub.url()),
        &token,
    )
    .await;
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    assert_eq!(header(&response, "docker-content-digest"), Some(digest));
    assert_eq!(response.bytes().await.unwrap(), bytes);

    let tags = get(&format!("{}/v2/multi/arch/tags/list", hub.url()), &token).await;
    let tags: serde_json::Value = serde_json::from_slice(&tags.bytes().await.unwrap()).unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"name": "multi/arch", "tags": ["amd64", "arm64", "latest"]})
    );
    assert_eq!(hub.count(Kind::TagsList), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_apply_and_clear() {
    let hub = Hub::start().await;
    let image = hub.push_image("f/x", "v1", &[256 * 1024]);
    let (digest, layer) = image.layers[0].clone();
    let token = token(&hub, "f/x").await;
    let blob_url = format!("{}/v2/f/x/blobs/{digest}", hub.url());
    let cdn_url = header(&get(&blob_url, &token).await, "location").unwrap();
    let target = || Target::Digest(digest.clone());

    hub.set_fault(target(), Fault::CorruptBytes);
    let corrupt = read_transfer(client().get(&cdn_url).send().await.unwrap())
        .await
        .bytes();
    assert_eq!(corrupt.len(), layer.len());
    assert_ne!(sha256_digest(&corrupt), digest);
    hub.clear_faults();

    hub.set_fault(target(), Fault::DropAfter(100_000));
    let dropped = read_transfer(client().get(&cdn_url).send().await.unwrap()).await;
    assert!(
        matches!(
            dropped,
            Transfer::Failed {
                received: 100_000,
                ..
            }
        ),
        "{dropped:?}"
    );
    hub.clear_faults();

    hub.set_fault(target(), Fault::Throttle(1024 * 1024));
    let started = Instant::now();
    let slow = read_transfer(client().get(&cdn_url).send().await.unwrap())
        .await
        .bytes();
    assert_eq!(slow, layer);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    hub.clear_faults();

    hub.set_fault(Target::All, Fault::Status(503));
    assert_eq!(
        get(&blob_url, &token).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    hub.clear_faults();

    hub.set_fault(
        Target::All,
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
    );
    let manifest_url = format!("{}/v2/f/x/manifests/v1", hub.url());
    let limited = get(&manifest_url, &token).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&limited, "retry-after").as_deref(), Some("7"));
    let head = client()
        .head(&manifest_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK, "HEAD is not rate limited");
    hub.clear_faults();

    hub.set_fault(Target::All, Fault::Stall);
    let stalled =
        tokio::time::timeout(Duration::from_millis(300), get(&manifest_url, &token)).await;
    assert!(stalled.is_err(), "a stalled request must not be answered");
    hub.clear_faults();

    assert_eq!(
        read_transfer(client().get(&cdn_url).send().await.unwrap())
            .await
            .bytes(),
        layer
    );
    assert_eq!(get(&manifest_url, &token).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_hub_refuses_connections() {
    let hub = Hub::start().await;
    let url = format!("{}/v2/", hub.url());
    hub.stop().await;
    let error = client().get(url).send().await.expect_err("hub is stopped");
    assert!(error.is_connect(), "{error:?}");
}

/// A real registry client (skopeo, from containers/image) pulls from the
/// stand-in: its challenges, tokens, redirects and manifests are faithful.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pulls_an_image_from_the_stand_in() {
    if !require_tool("skopeo") {
        return;
    }
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000, 300_000]);
    let out = tempfile::tempdir().expect("tempdir");
    let source = format!(
        "docker://{}/library/app:v1",
        hub.url().trim_start_matches("http://")
    );
    let dest = format!("dir:{}", out.path().join("image").display());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .args([source, dest])
            .status()
            .expect("run skopeo")
    })
    .await
    .expect("skopeo task");
    assert!(status.success(), "skopeo copy failed: {status}");
    for (digest, bytes) in &image.layers {
        let path = out.path().join("image").join(hex_of(digest));
        assert_eq!(&std::fs::read(&path).expect("layer file")[..], &bytes[..]);
    }
    assert_eq!(hub.count(Kind::CdnRejected), 0);
    assert_eq!(hub.count(Kind::CdnGet), 3, "config and two layers");
}
