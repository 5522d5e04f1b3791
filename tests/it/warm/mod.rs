//! Warming (issue 15): `pullthrough warm` into a running mirror (admin
//! API) or a stopped cache, `cache check`, and `[[warm]]` sets: start-up
//! warm, refresh after a tag moves, the rate-limit reserve, pins against
//! eviction and over the budget. What the upstream saw is counted on the
//! Hub stand-in. The real-dockerd case is in `e2e_docker`.

mod api;
mod offline;
mod pins;
mod sets;

use crate::support::client::client;
use crate::support::hub::TestImage;
use crate::support::mirror::Mirror;
use crate::support::ACCEPT;
use serde_json::Value;

const TOKEN: &str = "warm-admin-token-for-tests";

/// A config naming the Hub stand-in as `docker.io`, plus `extra`.
fn hub_config(hub_url: &str, extra: &str) -> String {
    format!("{extra}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{hub_url}\"\n")
}

/// Writes the admin token into `dir`; returns the config line naming it.
fn admin_token_line(dir: &std::path::Path) -> String {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    format!("admin_token_file = \"{}\"", path.display())
}

/// `POST /api/v1/warm?query` with the token (or none): status and the
/// lines of the answer as JSON.
async fn warm_api(mirror: &Mirror, query: &str, token: Option<&str>) -> (u16, Vec<Value>, String) {
    let mut request = client().post(format!("{}/api/v1/warm?{query}", mirror.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("mirror answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let lines = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (status, lines, text)
}

/// The `done` reports of a warm answer.
fn done(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "done")
        .map(|l| l["image"].clone())
        .collect()
}

/// Pulls `repo:tag` through the mirror as Docker would and checks every
/// byte against `image`.
async fn pull_exact(base: &str, repo: &str, tag: &str, image: &TestImage) {
    let c = client();
    let manifest = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    crate::support::client::assert_manifest(manifest, image, &format!("{repo}:{tag}")).await;
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let blob = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(blob.status(), 200, "blob {digest} of {repo}:{tag}");
        assert!(
            blob.bytes().await.expect("blob body") == *bytes,
            "bytes of blob {digest} of {repo}:{tag}"
        );
    }
}

/// Sum of the blob bytes an image is made of (config and layers).
fn blob_bytes(image: &TestImage) -> u64 {
    std::iter::once(&image.config)
        .chain(&image.layers)
        .map(|(_, b)| b.len() as u64)
        .sum()
}
