//! The core mirror against the Docker Hub stand-in (issue 2): the registry
//! API as clients use it, upstream auth and redirects, the verified cache,
//! tag revalidation, validation and error mapping, asserted on bytes,
//! headers and what the hub was asked.

mod auth;
mod blobs;
mod errors;
mod manifests;

use crate::support::client::{client, files_named, header, hex_of, read_transfer};
use crate::support::hub::{Hub, Kind, TestImage};
use crate::support::mirror::Mirror;
use crate::support::{wait_until, ACCEPT};
use http::StatusCode;
use std::time::Duration;

/// A mirror of `hub` with default settings.
fn mirror_of(hub: &Hub) -> Mirror {
    Mirror::start(&hub.url())
}

/// A mirror of `hub` started with a config file holding `upstream_extra`
/// under its `[[upstream]]` table.
fn mirror_with_config(hub: &Hub, upstream_extra: &str) -> Mirror {
    Mirror::builder(&hub.url())
        .config(&format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n{upstream_extra}\n",
            hub.url()
        ))
        .start()
}

async fn get(mirror: &Mirror, path: &str) -> reqwest::Response {
    send(as_client(
        client().get(format!("{}{path}", mirror.url())),
        path,
    ))
    .await
}

async fn head(mirror: &Mirror, path: &str) -> reqwest::Response {
    send(as_client(
        client().head(format!("{}{path}", mirror.url())),
        path,
    ))
    .await
}

/// Manifest requests carry the Accept list, as every real client sends.
fn as_client(request: reqwest::RequestBuilder, path: &str) -> reqwest::RequestBuilder {
    if path.contains("/manifests/") {
        request.header("accept", ACCEPT)
    } else {
        request
    }
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("mirror answers")
}

/// Status and `errors[0].code` of an error response.
async fn error_of(response: reqwest::Response) -> (StatusCode, Option<String>) {
    let error = crate::support::client::error_of(response).await;
    (error.status, error.code)
}

/// Pulls `image` through the mirror as a client does (manifest by tag, then
/// config and layers) and checks every byte.
async fn pull(mirror: &Mirror, repo: &str, tag: &str, image: &TestImage) {
    let manifest = get(mirror, &format!("/v2/{repo}/manifests/{tag}")).await;
    assert_eq!(manifest.status(), StatusCode::OK, "manifest {repo}:{tag}");
    assert_eq!(manifest.bytes().await.unwrap(), image.manifest_bytes);
    let blobs = std::iter::once(&image.config).chain(&image.layers);
    for (digest, bytes) in blobs {
        let response = get(mirror, &format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(response.status(), StatusCode::OK, "blob {digest}");
        assert_eq!(
            &read_transfer(response).await.bytes(),
            bytes,
            "blob {digest}"
        );
    }
}

/// Upstream manifest requests of every kind.
fn manifest_requests(hub: &Hub) -> u64 {
    [
        Kind::ManifestGetByTag,
        Kind::ManifestGetByDigest,
        Kind::ManifestHeadByTag,
        Kind::ManifestHeadByDigest,
    ]
    .into_iter()
    .map(|kind| hub.count(kind))
    .sum()
}

/// Waits (bounded) until the cache holds a file named after `digest`.
fn wait_cached(mirror: &Mirror, digest: &str) {
    let blobs = mirror.cache_dir.join("blobs");
    wait_until(
        &format!("{digest} under {}", blobs.display()),
        Duration::from_secs(10),
        || (!files_named(&blobs, hex_of(digest)).is_empty()).then_some(()),
    );
}

fn assert_not_cached(mirror: &Mirror, digest: &str) {
    let found = files_named(&mirror.cache_dir.join("blobs"), hex_of(digest));
    assert!(found.is_empty(), "bad content cached: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_root_answers_ok() {
    let hub = Hub::start().await;
    let mirror = mirror_of(&hub);
    let response = get(&mirror, "/v2/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("json body");
    assert_eq!(body, serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_lists_pass_through() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[10]);
    hub.push_image("library/app", "v2", &[10]);
    let mirror = mirror_of(&hub);
    let response = get(&mirror, "/v2/library/app/tags/list").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("json");
    assert_eq!(body["name"], "library/app");
    assert_eq!(body["tags"], serde_json::json!(["v1", "v2"]));
    assert!(hub.count(Kind::TagsList) >= 1);

    let (status, code) = error_of(get(&mirror, "/v2/library/ghost/tags/list").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code.as_deref(), Some("NAME_UNKNOWN"));
}
