//! Fault injection (issue 4): tag freshness without manifest GETs by tag,
//! stale answers through outages, 429s and stalls, the circuit breaker,
//! restarts, kill -9 mid-download and a cache disk that fills up. Every
//! test checks what the client received and what the stand-in hub saw.

mod crash;
mod freshness;
mod full_disk;
mod outage;
mod rate_limit;

use crate::support::client::{client, files_named, hex_of, read_transfer};
use crate::support::hub::{Hub, Kind, Site, TestImage};
use crate::support::mirror::{Mirror, MirrorBuilder};
use crate::support::{sha256_digest, wait_until, ACCEPT};
use http::StatusCode;
use std::path::Path;
use std::time::Duration;

/// The repository every test here pulls from.
const REPO: &str = "library/app";

/// Longer than a 1 s `tag_ttl` (and than the stale answer reuse it caps):
/// the next tag request goes to the upstream, or to the breaker.
const PAST_TTL: Duration = Duration::from_millis(1150);

/// A mirror of `upstream` whose `[[upstream]]` table holds `extra`, on a
/// fresh cache, in-process; retries pause briefly (the tests count tries,
/// not pauses).
fn mirror_builder(upstream: &str, extra: &str) -> MirrorBuilder {
    Mirror::builder(upstream)
        .config(&format!("[[upstream]]\nurl = \"{upstream}\"\n{extra}\n"))
        .timings(|t| t.retry_backoff = Duration::from_millis(10))
}

fn mirror_with(upstream: &str, extra: &str) -> Mirror {
    mirror_builder(upstream, extra).start()
}

/// Like [`mirror_with`], as a process: for tests that kill it or restart
/// it on `cache`.
fn mirror_process(upstream: &str, extra: &str) -> MirrorBuilder {
    Mirror::builder(upstream)
        .config(&format!("[[upstream]]\nurl = \"{upstream}\"\n{extra}\n"))
        .process()
}

/// [`mirror_process`] on an existing cache directory (restarts, crashes).
fn mirror_on(upstream: &str, cache: &Path, extra: &str) -> Mirror {
    mirror_process(upstream, extra).cache_dir(cache).start()
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
    let error = crate::support::client::error_of(response).await;
    (error.status, error.code)
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

/// A series of the mirror's metrics: name and labels.
type Series = (&'static str, &'static [(&'static str, &'static str)]);

/// The value of `series` in the mirror's `/metrics`; 0 if absent.
fn metric(mirror: &Mirror, (name, labels): Series) -> f64 {
    mirror.metric(name, labels)
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
