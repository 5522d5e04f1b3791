//! The object-storage tier: blobs in an S3-compatible bucket, shared by
//! replicas, under `PREFIX/blobs/sha256/<hex>`.
//!
//! Requests are signed with SigV4 ([`super::sigv4`]) and sent with the
//! same reqwest/rustls stack as the upstreams. The fetch core verifies
//! whatever this tier answers; this tier only moves bytes:
//!
//! - `get`: one GET; a 404 is a miss.
//! - `put` (in the background, after a verified upstream download): a HEAD
//!   first (another replica may have stored it), then one PUT streamed
//!   from the local file whose `x-amz-content-sha256` is the blob's own
//!   digest (so the store checks the upload too), or a multipart upload
//!   for blobs over [`MULTIPART_THRESHOLD`].
//! - `remove`: a DELETE of a copy that failed its digest.
//! - `get_tag`, `put_tag`: tag mappings as small JSON objects under
//!   `PREFIX/tags/…` ([`super::shared_tags`]), so a replica with an empty
//!   disk answers a tag (stale, through an outage) as the others would.
//!
//! Manifests are stored like blobs, with their upstream media type as the
//! object's `Content-Type`, which a GET hands back.
//!
//! The store failing never fails a pull: an error or timeout is counted
//! (`tier_errors_total`), logged once when the store starts failing (and
//! once when it recovers), and answered as a miss; for [`COOLDOWN`] after
//! a failure, lookups and uploads skip the store rather than wait on it.

use super::sigv4::{self, Signer};
use super::{shared_tags, CacheError, TagKey, TagRecord};
use crate::config::S3Settings;
use crate::metrics::Metrics;
use crate::oci::Digest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use url::Url;

use super::store::{Tier, TierBody, TierHealth};

const NAME: &str = "s3";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a response's headers (GET, HEAD, DELETE, multipart
/// bookkeeping).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while a body streams, either way.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one PUT (a whole small blob, or one part) may take.
const PUT_TIMEOUT: Duration = Duration::from_secs(600);
/// Blobs larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Part size of multipart uploads (S3 allows 10,000 parts: 160 GiB).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
/// Uploads at once; more wait (parts are held in memory one at a time).
const MAX_UPLOADS: usize = 4;
/// After a failure, the store is left alone this long.
const COOLDOWN: Duration = Duration::from_secs(5);
/// Error bodies are read this far for their `<Code>`.
const ERROR_BODY_MAX: usize = 4096;
/// How long a presigned redirect stays valid: long enough for a client
/// to follow it at once, short enough that a leaked URL soon dies. S3
/// checks it when the GET starts, so a slow download is not cut off.
pub const REDIRECT_EXPIRY: Duration = Duration::from_secs(300);
/// Read size when streaming a local file to the store.
const FILE_CHUNK: usize = 256 * 1024;

/// The S3 tier; see the module documentation.
pub struct S3Tier {
    client: reqwest::Client,
    signer: Signer,
    settings: S3Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    uploads: Semaphore,
}

/// Whether the store is failing, so that failures are logged once.
struct Health {
    state: Mutex<HealthState>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct HealthState {
    failing: bool,
    skip_until: Option<Instant>,
    errors: u64,
    last_error: Option<(u64, &'static str)>,
}

impl Health {
    fn ok(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.failing {
            tracing::info!(tier = NAME, "object store answering again");
            self.metrics.tier_failing.with_label_values(&[NAME]).set(0);
        }
        s.failing = false;
        s.skip_until = None;
    }

    fn fail(&self, op: &'static str, error: &str) {
        self.metrics
            .tier_errors
            .with_label_values(&[NAME, op])
            .inc();
        let Ok(mut s) = self.state.lock() else { return };
        if !s.failing {
            tracing::warn!(
                tier = NAME,
                op,
                error,
                "object store failing; using the local disk and the upstream"
            );
            self.metrics.tier_failing.with_label_values(&[NAME]).set(1);
        } else {
            tracing::debug!(tier = NAME, op, error, "object store still failing");
        }
        s.failing = true;
        s.skip_until = Some(Instant::now() + COOLDOWN);
        s.errors += 1;
        let now = super::unix_now();
        s.last_error = Some((now, op));
        self.metrics
            .tier_last_error
            .with_label_values(&[NAME])
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    fn report(&self) -> TierHealth {
        self.state
            .lock()
            .map(|s| TierHealth {
                failing: s.failing,
                errors: s.errors,
                last_error: s.last_error,
            })
            .unwrap_or_default()
    }

    fn skipping(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.skip_until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }
}

/// A failed call: what to count and log (never a secret: URLs carry no
/// signature, and error bodies are reduced to their `<Code>`).
#[derive(Debug)]
struct Failure(String);

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Self {
        // The URL names the bucket and key only.
        Failure(if e.is_timeout() {
            format!("timed out: {e}")
        } else {
            e.to_string()
        })
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(format!("local file: {e}"))
    }
}

impl S3Tier {
    pub fn new(settings: S3Settings, metrics: Arc<Metrics>) -> Result<S3Tier, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        metrics.tier_failing.with_label_values(&[NAME]).set(0);
        metrics.tier_last_error.with_label_values(&[NAME]).set(0);
        Ok(S3Tier {
            client,
            signer: Signer {
                access_key_id: settings.access_key_id.clone(),
                secret_access_key: settings.secret_access_key.clone(),
                session_token: settings.session_token.clone(),
                region: settings.region.clone(),
            },
            health: Arc::new(Health {
                state: Mutex::new(HealthState::default()),
                metrics: Arc::clone(&metrics),
            }),
            settings,
            metrics,
            uploads: Semaphore::new(MAX_UPLOADS),
        })
    }

    /// `PREFIX/blobs/sha256/<hex>`.
    pub fn key(&self, digest: &Digest) -> String {
        self.prefixed(format!("blobs/{}/{}", digest.algorithm(), digest.hex()))
    }

    fn prefixed(&self, name: String) -> String {
        if self.settings.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.settings.prefix)
        }
    }

    /// The object's URL, path-style or virtual-hosted, with `query`
    /// (already encoded) appended.
    fn url(&self, key: &str, query: &str) -> Result<Url, Failure> {
        let e = &self.settings.endpoint;
        let base = e.path().trim_end_matches('/');
        let key = sigv4::uri_encode(key, true);
        let (host, path) = if self.settings.path_style {
            (
                e.host_str().unwrap_or_default().to_owned(),
                format!("{base}/{}/{key}", self.settings.bucket),
            )
        } else {
            (
                format!(
                    "{}.{}",
                    self.settings.bucket,
                    e.host_str().unwrap_or_default()
                ),
                format!("{base}/{key}"),
            )
        };
        let port = e.port().map(|p| format!(":{p}")).unwrap_or_default();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        Url::parse(&format!("{}://{host}{port}{path}{query}", e.scheme()))
            .map_err(|err| Failure(format!("bad object URL: {err}")))
    }

    /// A signed request; `extra` headers are signed and sent.
    fn request(
        &self,
        method: reqwest::Method,
        url: Url,
        extra: &[(&str, &str)],
        payload_hash: &str,
    ) -> reqwest::RequestBuilder {
        let signed = self.signer.sign(
            method.as_str(),
            &url,
            extra,
            payload_hash,
            SystemTime::now(),
        );
        let mut req = self.client.request(method, url);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        for (k, v) in signed {
            req = req.header(k, v);
        }
        req
    }

    /// Sends `req`, waiting at most `limit` for the answer's headers.
    async fn send(
        req: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<reqwest::Response, Failure> {
        match tokio::time::timeout(limit, req.send()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure(format!("no answer within {limit:?}"))),
        }
    }

    /// A non-success answer as a failure naming the S3 error code.
    async fn refused(resp: reqwest::Response) -> Failure {
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while body.len() < ERROR_BODY_MAX {
            match tokio::time::timeout(ANSWER_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        Failure(format!(
            "HTTP {status} {}",
            xml_value(&body, "Code").unwrap_or_default()
        ))
    }

    /// A GET of `key` that answered with the object, or `None` on 404.
    async fn get_found(&self, key: &str) -> Result<Option<reqwest::Response>, Failure> {
        let url = self.url(key, "")?;
        let req = self.request(reqwest::Method::GET, url, &[], sigv4::EMPTY_SHA256);
        let resp = Self::send(req, ANSWER_TIMEOUT).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::refused(resp).await),
        }
    }

    async fn lookup(&self, digest: &Digest) -> Result<Option<TierBody>, Failure> {
        let Some(resp) = self.get_found(&self.key(digest)).await? else {
            return Ok(None);
        };
        let len = resp.content_length();
        // What the store says of objects stored without a type.
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !matches!(*t, "binary/octet-stream" | "application/octet-stream"))
            .map(str::to_owned);
        let (health, bytes) = (
            Arc::clone(&self.health),
            self.metrics.tier_bytes.with_label_values(&[NAME, "read"]),
        );
        let stream = resp
            .bytes_stream()
            .map(move |chunk| match chunk {
                Ok(chunk) => {
                    bytes.inc_by(chunk.len() as u64);
                    Ok(chunk)
                }
                Err(e) => {
                    let failure = Failure::from(e);
                    health.fail("get", &failure.0);
                    Err(CacheError::Io(std::io::Error::other(format!(
                        "object store read failed: {}",
                        failure.0
                    ))))
                }
            })
            .boxed();
        Ok(Some(TierBody {
            len,
            media_type,
            stream,
        }))
    }

    /// Whether the object is stored, with its length.
    async fn head(&self, key: &str) -> Result<Option<u64>, Failure> {
        let url = self.url(key, "")?;
        let req = self.request(reqwest::Method::HEAD, url, &[], sigv4::EMPTY_SHA256);
        let resp = Self::send(req, ANSWER_TIMEOUT).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(Failure(format!("HEAD: HTTP {s}"))),
        }
    }

    async fn upload(
        &self,
        digest: &Digest,
        path: PathBuf,
        media_type: Option<&str>,
    ) -> Result<&'static str, Failure> {
        let key = self.key(digest);
        let file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        if self.head(&key).await? == Some(len) {
            return Ok("present");
        }
        if len > MULTIPART_THRESHOLD {
            self.upload_parts(&key, file, len).await?;
        } else {
            self.upload_whole(&key, file, len, digest, media_type)
                .await?;
        }
        self.metrics
            .tier_bytes
            .with_label_values(&[NAME, "written"])
            .inc_by(len);
        Ok("stored")
    }

    /// One PUT streamed from the file; the store checks the body against
    /// the digest, which is its SHA-256.
    async fn upload_whole(
        &self,
        key: &str,
        file: tokio::fs::File,
        len: u64,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<(), Failure> {
        let url = self.url(key, "")?;
        let length = len.to_string();
        let mut headers = vec![("content-length", length.as_str())];
        if let Some(media_type) = media_type {
            headers.push(("content-type", media_type));
        }
        let req = self
            .request(reqwest::Method::PUT, url, &headers, digest.hex())
            .body(reqwest::Body::wrap_stream(file_stream(file, len)));
        let resp = Self::send(req, PUT_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        Ok(())
    }

    /// A multipart upload, one part in memory at a time; aborted on any
    /// failure so no parts linger.
    async fn upload_parts(
        &self,
        key: &str,
        mut file: tokio::fs::File,
        len: u64,
    ) -> Result<(), Failure> {
        let url = self.url(key, "uploads=")?;
        let req = self.request(reqwest::Method::POST, url, &[], sigv4::EMPTY_SHA256);
        let resp = Self::send(req, ANSWER_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        let body = read_small(resp).await?;
        let upload_id = xml_value(&body, "UploadId")
            .ok_or_else(|| Failure("no UploadId in the answer".into()))?;
        let result = self.send_parts(key, &upload_id, &mut file, len).await;
        if result.is_err() {
            let query = format!("uploadId={}", sigv4::uri_encode(&upload_id, false));
            if let Ok(url) = self.url(key, &query) {
                let req = self.request(reqwest::Method::DELETE, url, &[], sigv4::EMPTY_SHA256);
                let _ = Self::send(req, ANSWER_TIMEOUT).await;
            }
        }
        result
    }

    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &mut tokio::fs::File,
        len: u64,
    ) -> Result<(), Failure> {
        let id = sigv4::uri_encode(upload_id, false);
        let parts = len.div_ceil(PART_SIZE as u64);
        let mut etags = Vec::new();
        for number in 1..=parts {
            let size = (len - (number - 1) * PART_SIZE as u64).min(PART_SIZE as u64) as usize;
            let mut part = vec![0u8; size];
            file.read_exact(&mut part).await?;
            let hash = hex::encode(Sha256::digest(&part));
            let url = self.url(key, &format!("partNumber={number}&uploadId={id}"))?;
            let length = size.to_string();
            let req = self
                .request(
                    reqwest::Method::PUT,
                    url,
                    &[("content-length", &length)],
                    &hash,
                )
                .body(part);
            let resp = Self::send(req, PUT_TIMEOUT).await?;
            if !resp.status().is_success() {
                return Err(Self::refused(resp).await);
            }
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Failure(format!("no ETag for part {number}")))?
                .to_owned();
            etags.push(etag);
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let hash = hex::encode(Sha256::digest(xml.as_bytes()));
        let url = self.url(key, &format!("uploadId={id}"))?;
        let req = self
            .request(reqwest::Method::POST, url, &[], &hash)
            .body(xml);
        // Completing a large upload may take the store a while.
        let resp = Self::send(req, PUT_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        // A 200 may still carry an error.
        let body = read_small(resp).await?;
        if let Some(code) = xml_value(&body, "Code") {
            return Err(Failure(format!("completing the upload: {code}")));
        }
        Ok(())
    }

    /// A small object whole, or `None` on 404.
    async fn get_small(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, Failure> {
        let Some(resp) = self.get_found(key).await? else {
            return Ok(None);
        };
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(Failure(format!("{key} is larger than {max} bytes")));
        }
        read_small(resp).await.map(Some)
    }

    /// A small object from memory, checked by the store against its hash.
    async fn put_small(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), Failure> {
        let url = self.url(key, "")?;
        let (length, hash) = (body.len().to_string(), hex::encode(Sha256::digest(&body)));
        let headers = [
            ("content-length", length.as_str()),
            ("content-type", content_type),
        ];
        let req = self
            .request(reqwest::Method::PUT, url, &headers, &hash)
            .body(body);
        let resp = Self::send(req, ANSWER_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        Ok(())
    }

    /// One page of a ListObjectsV2 of the keys under `PREFIX/<under>`,
    /// after `token`: the raw XML (see [`super::bucket`]).
    pub(super) async fn list_page(
        &self,
        under: &str,
        token: Option<&str>,
    ) -> Result<Vec<u8>, String> {
        let prefix = self.prefixed(under.to_owned());
        let mut query = format!("list-type=2&prefix={}", sigv4::uri_encode(&prefix, false));
        if let Some(token) = token {
            query.push_str(&format!(
                "&continuation-token={}",
                sigv4::uri_encode(token, false)
            ));
        }
        let url = self.url("", &query).map_err(|f| f.0)?;
        let req = self.request(reqwest::Method::GET, url, &[], sigv4::EMPTY_SHA256);
        let resp = Self::send(req, ANSWER_TIMEOUT).await.map_err(|f| f.0)?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await.0);
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = tokio::time::timeout(READ_TIMEOUT, stream.next())
            .await
            .map_err(|_| "the listing stalled".to_owned())?
        {
            body.extend_from_slice(&chunk.map_err(|e| Failure::from(e).0)?);
            // 1,000 keys a page, a few hundred bytes each.
            if body.len() > 8 * 1024 * 1024 {
                return Err("the listing page is too long".into());
            }
        }
        Ok(body)
    }

    /// A tag object's mapping, read directly (for the offline commands).
    pub(super) async fn read_tag(&self, object: &str, key: &TagKey) -> Option<TagRecord> {
        let body = self
            .get_small(object, shared_tags::MAX_TAG_OBJECT)
            .await
            .ok()??;
        shared_tags::decode(key, &body)
    }

    /// The tier's prefix, with a trailing `/` unless empty.
    pub(super) fn prefix_dir(&self) -> String {
        self.prefixed(String::new())
    }

    async fn delete(&self, digest: &Digest) -> Result<(), Failure> {
        let url = self.url(&self.key(digest), "")?;
        let req = self.request(reqwest::Method::DELETE, url, &[], sigv4::EMPTY_SHA256);
        let resp = Self::send(req, ANSWER_TIMEOUT).await?;
        if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(Self::refused(resp).await)
        }
    }
}

impl Tier for S3Tier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn health(&self) -> TierHealth {
        self.health.report()
    }

    fn get<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<TierBody>, CacheError>> {
        async move {
            let lookups = |result: &str| {
                self.metrics
                    .tier_lookups
                    .with_label_values(&[NAME, result])
                    .inc()
            };
            if self.health.skipping() {
                lookups("skipped");
                return Ok(None);
            }
            match self.lookup(digest).await {
                Ok(found) => {
                    self.health.ok();
                    lookups(if found.is_some() { "hit" } else { "miss" });
                    Ok(found)
                }
                Err(Failure(e)) => {
                    self.health.fail("get", &e);
                    lookups("error");
                    Ok(None)
                }
            }
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        path: PathBuf,
        media_type: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        async move {
            let uploads = |result: &str| {
                self.metrics
                    .tier_uploads
                    .with_label_values(&[NAME, result])
                    .inc()
            };
            let Ok(_permit) = self.uploads.acquire().await else {
                return Ok(());
            };
            if self.health.skipping() {
                uploads("skipped");
                return Ok(());
            }
            match self.upload(digest, path, media_type).await {
                Ok(result) => {
                    self.health.ok();
                    uploads(result);
                }
                Err(Failure(e)) => {
                    self.health.fail("put", &e);
                    uploads("error");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), CacheError>> {
        async move {
            self.metrics.tier_corrupt.with_label_values(&[NAME]).inc();
            tracing::warn!(%digest, tier = NAME, "object store copy failed its digest; deleting it");
            match self.delete(digest).await {
                Ok(()) => self.health.ok(),
                Err(Failure(e)) => self.health.fail("delete", &e),
            }
            Ok(())
        }
        .boxed()
    }

    fn get_tag<'a>(&'a self, key: &'a TagKey) -> BoxFuture<'a, Option<TagRecord>> {
        async move {
            if self.health.skipping() {
                return None;
            }
            let object = self.prefixed(shared_tags::object_name(key));
            match self.get_small(&object, shared_tags::MAX_TAG_OBJECT).await {
                Ok(body) => {
                    self.health.ok();
                    let record = shared_tags::decode(key, &body?);
                    if record.is_none() {
                        tracing::warn!(
                            object,
                            "tag object in the store is not this tag's; ignoring it"
                        );
                    }
                    record
                }
                Err(Failure(e)) => {
                    self.health.fail("get_tag", &e);
                    None
                }
            }
        }
        .boxed()
    }

    fn redirects(&self) -> bool {
        self.settings.redirect
    }

    fn presign<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<Url>> {
        async move {
            if !self.settings.redirect || self.health.skipping() {
                return None;
            }
            let key = self.key(digest);
            // Only what is really there: a redirect to a 404 fails the pull.
            let stored = match self.head(&key).await {
                Ok(stored) => {
                    self.health.ok();
                    stored
                }
                Err(Failure(e)) => {
                    self.health.fail("head", &e);
                    None
                }
            };
            stored?;
            let url = self.url(&key, "").ok()?;
            Some(
                self.signer
                    .presign("GET", &url, REDIRECT_EXPIRY, SystemTime::now()),
            )
        }
        .boxed()
    }

    fn put_tag<'a>(&'a self, key: &'a TagKey, record: &'a TagRecord) -> BoxFuture<'a, ()> {
        async move {
            if self.health.skipping() {
                return;
            }
            let object = self.prefixed(shared_tags::object_name(key));
            let body = shared_tags::encode(key, record);
            match self.put_small(&object, body, "application/json").await {
                Ok(()) => self.health.ok(),
                Err(Failure(e)) => self.health.fail("put_tag", &e),
            }
        }
        .boxed()
    }
}

/// The file's first `len` bytes as a body stream; ends after an error.
fn file_stream(
    file: tokio::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((Some(file), len), |(file, left)| async move {
        let mut file = file?;
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; FILE_CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the local blob is shorter than it was",
                )),
                (None, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (Some(file), left - n as u64)))
            }
            Err(e) => Some((Err(e), (None, 0))),
        }
    })
}

/// A small answer body (multipart bookkeeping), bounded.
async fn read_small(resp: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    loop {
        match tokio::time::timeout(ANSWER_TIMEOUT, stream.next()).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk?),
            Ok(None) => return Ok(body),
            Err(_) => return Err(Failure("the answer stalled".into())),
        }
        if body.len() > 64 * 1024 {
            return Err(Failure("the answer is too long".into()));
        }
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_value(xml: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].to_owned())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn tier(path_style: bool, prefix: &str, endpoint: &str) -> S3Tier {
        let settings = S3Settings {
            bucket: "bkt".into(),
            prefix: prefix.into(),
            endpoint: Url::parse(endpoint).unwrap(),
            region: "us-east-1".into(),
            path_style,
            access_key_id: "AK".into(),
            secret_access_key: Secret::new("SK".into()),
            session_token: None,
            redirect: false,
        };
        S3Tier::new(settings, Metrics::new()).unwrap()
    }

    #[test]
    fn keys_and_urls() {
        let d = Digest::of(b"x");
        let t = tier(true, "team/cache", "http://127.0.0.1:7480");
        assert_eq!(t.key(&d), format!("team/cache/blobs/sha256/{}", d.hex()));
        assert_eq!(
            t.url(&t.key(&d), "").unwrap().as_str(),
            format!(
                "http://127.0.0.1:7480/bkt/team/cache/blobs/sha256/{}",
                d.hex()
            )
        );
        let t = tier(false, "", "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(
            t.url(&t.key(&d), "uploads=").unwrap().as_str(),
            format!(
                "https://bkt.s3.eu-west-1.amazonaws.com/blobs/sha256/{}?uploads=",
                d.hex()
            )
        );
    }

    #[test]
    fn xml_fields() {
        let xml = b"<InitiateMultipartUploadResult><UploadId>2~abc</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_value(xml, "UploadId").as_deref(), Some("2~abc"));
        assert_eq!(xml_value(xml, "Code"), None);
        assert_eq!(xml_escape("\"e\""), "&quot;e&quot;");
    }
}
