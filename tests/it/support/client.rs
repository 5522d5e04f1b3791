//! The client side of the suites: an HTTP client for the mirror, bodies
//! that may break mid-transfer, OCI error codes, raw requests whose paths
//! must reach the server as written, and looks into the cache directory.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest any single request (body included) may take in a suite.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that shows what the server answered: no proxy from the
/// environment, no redirects followed, no decompression, bounded in time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// How a body transfer ended.
#[derive(Debug)]
pub enum Transfer {
    /// Every promised byte arrived and the stream ended cleanly.
    Complete(Bytes),
    /// The stream broke, or ended short of its Content-Length.
    Failed { received: usize, reason: String },
}

impl Transfer {
    /// The bytes of a complete transfer; panics, saying why, otherwise.
    pub fn bytes(self) -> Bytes {
        match self {
            Transfer::Complete(bytes) => bytes,
            Transfer::Failed { received, reason } => {
                panic!("transfer failed after {received} bytes: {reason}")
            }
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Transfer::Failed { .. })
    }
}

/// Reads the whole body, telling a clean end from a broken one.
pub async fn read_transfer(mut response: reqwest::Response) -> Transfer {
    let expected = response.content_length();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(err) => {
                return Transfer::Failed {
                    received: body.len(),
                    reason: format!("{err:?}"),
                }
            }
        }
    }
    match expected {
        Some(len) if len != body.len() as u64 => Transfer::Failed {
            received: body.len(),
            reason: format!("ended at {} of {len} promised bytes", body.len()),
        },
        _ => Transfer::Complete(Bytes::from(body)),
    }
}

/// Reads the whole body without keeping it: `Ok(sha256:<hex>)` of a clean,
/// complete transfer, `Err(why)` for a broken or short one.
pub async fn read_digest(mut response: reqwest::Response) -> Result<String, String> {
    let expected = response.content_length();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok(None) => break,
            Err(err) => return Err(format!("broke after {received} bytes: {err:?}")),
        }
    }
    match expected {
        Some(len) if len != received => Err(format!("ended at {received} of {len} bytes")),
        _ => Ok(format!("sha256:{}", hex::encode(hasher.finalize()))),
    }
}

/// `errors[0].code` of an OCI error body.
pub fn oci_error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value["errors"][0]["code"].as_str()?.to_string())
}

/// A response header as a string (`None` if absent or not ASCII).
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    Some(response.headers().get(name)?.to_str().ok()?.to_string())
}

/// Sends `METHOD path` byte for byte over HTTP/1.1 (reqwest would normalise
/// `..` and `%2e%2e`) and returns (status, decoded body).
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("raw request timed out");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = &raw[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        (status, dechunk(body))
    } else {
        (status, body.to_vec())
    }
}

/// One response read off a keep-alive HTTP/1.1 connection (plain or TLS):
/// its head, lower-cased, and its body read to its Content-Length (none
/// after a HEAD). Bytes past the body are left unread.
pub async fn response_on<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    head_only: bool,
) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = if head_only {
        0
    } else {
        head.lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length")
    };
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the body within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "no bytes past the body");
    (head, body)
}

/// The status code of a response head read by [`response_on`].
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}

/// Decodes a chunked HTTP/1.1 body (no trailers expected).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).expect("chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// Files anywhere under `dir` whose name contains `needle` (for instance the
/// hex of a digest), to check what the cache holds.
pub fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().contains(needle) {
                found.push(path);
            }
        }
    }
    found
}

/// The hex part of `sha256:<hex>`.
pub fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, hex)| hex)
}

/// Writes a mirror config file; keep the returned directory alive while the
/// mirror runs.
pub fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pullthrough.toml");
    std::fs::write(&path, toml).expect("write config");
    (dir, path)
}

/// An error response as the suites look at it.
#[derive(Debug)]
pub struct OciError {
    pub status: http::StatusCode,
    /// `errors[0].code`, if the body is an OCI error.
    pub code: Option<String>,
    pub body: String,
}

/// Reads an error response: status, `errors[0].code` and the raw body.
pub async fn error_of(response: reqwest::Response) -> OciError {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    OciError {
        status,
        code: oci_error_code(&body),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Asserts a manifest response serves `image`, byte for byte.
pub async fn assert_manifest(
    response: reqwest::Response,
    image: &super::hub::TestImage,
    what: &str,
) {
    assert_eq!(response.status(), 200, "{what}");
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(image.manifest_digest.as_str()),
        "{what}"
    );
    let body = response.bytes().await.expect("manifest body");
    assert!(body == image.manifest_bytes, "{what}: wrong manifest bytes");
}

/// Pulls `repo:reference` through the mirror at `base` as Docker would
/// (manifest, then config and layers) and checks every byte against
/// `image`.
pub async fn pull_exact(base: &str, repo: &str, reference: &str, image: &super::hub::TestImage) {
    let c = client();
    let manifest = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", super::ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_manifest(manifest, image, &format!("{repo}:{reference}")).await;
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let blob = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(blob.status(), 200, "blob {digest} of {repo}:{reference}");
        assert!(
            blob.bytes().await.expect("blob body") == *bytes,
            "bytes of blob {digest} of {repo}:{reference}"
        );
    }
}

/// Sends `request`, with `token` as a bearer if given: the status and the
/// body as text.
pub async fn answer(request: reqwest::RequestBuilder, token: Option<&str>) -> (u16, String) {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.expect("mirror answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `GET url` with `token` as a bearer if given: the status and the body.
pub async fn get_text(url: &str, token: Option<&str>) -> (u16, String) {
    answer(client().get(url), token).await
}

/// `GET url`, which must answer 200 with JSON: the parsed body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let response = client().get(url).send().await.expect("mirror answers");
    assert_eq!(response.status(), 200, "GET {url}");
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json"),
        "GET {url}"
    );
    let body = response.bytes().await.expect("body");
    serde_json::from_slice(&body).expect("JSON body")
}

/// The page (or any text) at `url`, asked for in `language` if given.
pub async fn page_text(url: &str, language: Option<&str>) -> String {
    let mut request = client().get(url);
    if let Some(language) = language {
        request = request.header("accept-language", language);
    }
    let response = request.send().await.expect("page");
    response.text().await.expect("page body")
}

/// Writes `token` (with the newline an editor leaves) to `dir/admin-token`
/// and returns the file, for a mirror's `admin_token_file` or
/// `--admin-token-file`.
pub fn admin_token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    path
}

/// Sends `request`, which must answer 200: the whole body (`what` names it
/// in a failure).
pub async fn ok_body(request: reqwest::RequestBuilder, what: &str) -> Bytes {
    let response = request.send().await.expect(what);
    assert_eq!(response.status(), 200, "{what}");
    response.bytes().await.expect(what)
}
