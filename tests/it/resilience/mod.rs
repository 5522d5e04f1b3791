//! Fault injection (issue 4): tag freshness without manifest GETs by tag,
//! stale answers through outages, 429s and stalls, the circuit breaker,
//! restarts, kill -9 mid-download and a cache disk that fills up. Every
//! test checks what the client received and what the stand-in hub saw.

mod crash;
mod freshness;
mod full_disk;
mod outage;
mod rate_limit;

use crate::support::client::{client, config_file, files_named, hex_of, read_transfer};
use crate::support::hub::{Hub, Kind, Site, TestImage};
use crate::support::mirror::Mirror;
use crate::support::sha256_digest;
use http::StatusCode;
use std::path::Path;
use std::time::{Duration, Instant};

/// What Docker and containerd send when asking for a manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, \
    application/vnd.docker.distribution.manifest.v2+json;q=0.8";

/// The repository every test here pulls from.
const REPO: &str = "library/app";

/// Longer than a 1 s `tag_ttl` (and than the stale answer reuse it caps):
/// the next tag request goes to the upstream, or to the breaker.
const PAST_TTL: Duration = Duration::from_millis(1150);

/// A mirror of `upstream` whose `[[upstream]]` table holds `extra`, on a
/// fresh cache. Keep the `TempDir` (the config file) alive with the mirror.
fn mirror_with(upstream: &str, extra: &str) -> (Mirror, tempfile::TempDir) {
    let (dir, path) = upstream_config(upstream, extra);
    let path = path.to_str().expect("utf-8 path").to_string();
    let mirror =
        tokio::task::block_in_place(|| Mirror::legacy_start(upstream, &["--config", &path]));
    (mirror, dir)
}

/// Like [`mirror_with`] on an existing cache directory (restarts).
fn mirror_on(upstream: &str, cache: &Path, extra: &str) -> (Mirror, tempfile::TempDir) {
    let (dir, path) = upstream_config(upstream, extra);
    let path = path.to_str().expect("utf-8 path").to_string();
    let mirror = tokio::task::block_in_place(|| {
        Mirror::legacy_start_with_cache(upstream, cache, &["--config", &path])
    });
    (mirror, dir)
}

fn upstream_config(upstream: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    config_file(&format!("[[upstream]]\nurl = \"{upstream}\"\n{extra}\n"))
}

async fn get(mirror: &Mirror, path: &str) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", mirror.url()));
    if path.contains("/manifests/") {
        request = request.header("accept", ACCEPT);
    }
    request.send().await.expect("the mirror answers")
}

async fn head(mirror: &Mirror, path: &str) -> reqwest::Response {
    client()
        .head(format!("{}{path}", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("the mirror answers")
}

/// GETs a manifest by tag or digest and returns its status and bytes.
async fn manifest(mirror: &Mirror, reference: &str) -> (StatusCode, bytes::Bytes) {
    let response = get(mirror, &format!("/v2/{REPO}/manifests/{reference}")).await;
    let status = response.status();
    (status, response.bytes().await.expect("manifest body"))
}

/// GETs a blob; `Ok(bytes)` only for a 200 whose body arrived complete.
async fn blob(mirror: &Mirror, digest: &str) -> Result<bytes::Bytes, String> {
    let response = get(mirror, &format!("/v2/{REPO}/blobs/{digest}")).await;
    let status = response.status();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    match read_transfer(response).await {
        crate::support::client::Transfer::Complete(bytes) => Ok(bytes),
        crate::support::client::Transfer::Failed { received, reason } => {
            Err(format!("broke after {received} bytes: {reason}"))
        }
    }
}

/// Pulls `image` by `tag` (manifest, config, layers) and checks every byte.
async fn pull(mirror: &Mirror, tag: &str, image: &TestImage) {
    let (status, bytes) = manifest(mirror, tag).await;
    assert_eq!(status, StatusCode::OK, "manifest {REPO}:{tag}");
    assert_eq!(bytes, image.manifest_bytes, "manifest {REPO}:{tag}");
    pull_blobs(mirror, image).await;
}

/// Fetches the config and layers of `image` and checks every byte.
async fn pull_blobs(mirror: &Mirror, image: &TestImage) {
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let got = blob(mirror, digest).await;
        assert_eq!(got.as_ref(), Ok(bytes), "blob {digest}");
    }
}

/// The status of a request that must fail, and its OCI error code.
async fn failure(response: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    (status, crate::support::client::oci_error_code(&body))
}

/// Registry-side requests the hub received (tokens and CDN excluded),
/// counting those a fault left unanswered.
fn registry_requests(hub: &Hub) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.site == Site::Registry)
        .count()
}

/// The rule of the whole issue: tags are revalidated with HEAD, never a GET.
fn assert_no_manifest_get_by_tag(hub: &Hub) {
    assert_eq!(
        hub.count(Kind::ManifestGetByTag),
        0,
        "the mirror GET a manifest by tag: {:?}",
        hub.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

/// One series of the mirror's `/metrics`, e.g.
/// `pullthrough_cache_bypasses_total` or
/// `pullthrough_cache_lookups_total{kind="tag",result="stale"}`; 0 if absent.
async fn metric(mirror: &Mirror, series: &str) -> f64 {
    let text = get(mirror, "/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("metric value"))
        })
        .unwrap_or(0.0)
}

/// Waits (bounded) until `condition` holds.
async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cached(cache: &Path, digest: &str) -> bool {
    !files_named(&cache.join("blobs"), hex_of(digest)).is_empty()
}

/// Files in the cache's `tmp/` directory.
fn temp_files(cache: &Path) -> Vec<std::path::PathBuf> {
    files_named(&cache.join("tmp"), "")
}

/// Every file under `blobs/` hashes to its name: nothing partial, nothing
/// wrong. Returns how many there are.
fn assert_blobs_verified(cache: &Path) -> usize {
    let files = files_named(&cache.join("blobs"), "");
    for file in &files {
        let bytes = std::fs::read(file).expect("read cached file");
        let name = file.file_name().expect("name").to_string_lossy();
        assert_eq!(
            hex_of(&sha256_digest(&bytes)),
            name,
            "{} does not hash to its name ({} bytes): a partial or wrong file under blobs/",
            file.display(),
            bytes.len()
        );
    }
    files.len()
}

/// Registry-side requests the hub received with `method` and a path ending
/// in `suffix`, whether or not a fault answered them (the hub's `Kind`
/// counters skip requests that a `Status` or `Stall` fault answered).
fn recorded(hub: &Hub, method: &str, suffix: &str) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.site == Site::Registry && r.method == method && r.path.ends_with(suffix))
        .count()
}

/// The registry-side requests the hub received, as `METHOD path` lines.
fn request_lines(hub: &Hub) -> Vec<String> {
    hub.requests()
        .iter()
        .filter(|r| r.site == Site::Registry)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}
