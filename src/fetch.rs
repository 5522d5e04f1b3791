//! One upstream fetch per digest: a blob miss starts a single spawned
//! download that writes `tmp/…partial`, hashes as it goes and publishes its
//! progress on a watch; every request for the digest tails that file.
//!
//! The download belongs to no request: a client hanging up cancels nothing.
//! It ends either verified and renamed into `blobs/` (readers keep the same
//! inode open) or failed, in which case every reader's body ends in an error
//! so no client ever mistakes a broken transfer for a complete one.

use crate::cache::{
    is_over_budget, unix_now, BlobStore, CacheOutcome, ContentRecord, Index, Lease, TempBlob,
};
use crate::metrics::metrics;
use crate::oci::{Digest, DigestWriter, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use crate::visibility::Visibility;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Downloads are written in batches of up to this many bytes, so a fast
/// upstream costs few blocking-pool round trips and a slow one is still
/// published as soon as its bytes arrive.
const WRITE_BATCH: usize = 512 * 1024;

/// How long a download waits for eviction to make room before it streams
/// past the cache instead.
const MAKE_ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream sent content whose digest is {actual}, not the requested one")]
    DigestMismatch { actual: Digest },
    #[error("upstream sent {got} bytes of a blob it announced as {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("cache disk error: {0}")]
    Disk(String),
    /// The cache cannot hold the blob now; callers stream it past the
    /// cache, starting with the upstream response the download already has.
    #[error("no space left in the cache for this blob")]
    NoSpace(UnclaimedResponse),
}

/// An upstream response that the request which started the download
/// relays, so a blob that cannot be cached is still fetched once for that
/// request, not twice.
#[derive(Clone, Debug, Default)]
pub struct UnclaimedResponse(Arc<Mutex<Option<reqwest::Response>>>);

impl UnclaimedResponse {
    fn new(resp: reqwest::Response) -> Self {
        UnclaimedResponse(Arc::new(Mutex::new(Some(resp))))
    }

    pub fn claim(&self) -> Option<reqwest::Response> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// What readers see of a download.
#[derive(Clone)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `[0, written)` of `file` are on disk and may be read.
    Streaming {
        file: Arc<File>,
        total: Option<u64>,
        written: u64,
    },
    /// Verified and moved into the store.
    Complete {
        file: Arc<File>,
        total: u64,
    },
    Failed(FetchError),
}

/// A blob to serve: already complete, or still being written.
pub struct BlobSource {
    pub file: Arc<File>,
    /// Known up front for cached blobs and for downloads whose upstream
    /// sent a `Content-Length`.
    pub total: Option<u64>,
    /// `None` for a complete file; otherwise the download's progress.
    pub progress: Option<watch::Receiver<Progress>>,
    /// Keeps eviction off this blob while it is being served.
    pub lease: Lease,
    /// Hit (on disk), Miss (this request started the download) or
    /// Coalesced (it joined one already running).
    pub outcome: CacheOutcome,
}

impl BlobSource {
    pub fn is_cached(&self) -> bool {
        self.progress.is_none()
    }
}

/// The downloads in flight, one per digest.
pub struct BlobFetcher {
    store: BlobStore,
    index: Index,
    visibility: Visibility,
    inflight: Mutex<HashMap<Digest, watch::Receiver<Progress>>>,
}

impl BlobFetcher {
    pub fn new(store: BlobStore, index: Index, visibility: Visibility) -> Arc<BlobFetcher> {
        Arc::new(BlobFetcher {
            store,
            index,
            visibility,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Number of downloads running now.
    pub fn inflight_count(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The cached blob, or the (possibly just started) download of it,
    /// once the upstream has answered with headers.
    pub async fn open(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSource, FetchError> {
        let result = match self.open_once(upstream, repo, digest).await {
            // A download another request started answers for *its*
            // repository (and upstream): a 404 or a refusal there says
            // nothing about ours, so ask for ours.
            Err((FetchError::Upstream(e), CacheOutcome::Coalesced)) if e.is_about_repository() => {
                self.open_once(upstream, repo, digest).await
            }
            other => other,
        };
        match result {
            // The response a full cache hands over was fetched for the
            // request that started the download; others fetch their own.
            Err((FetchError::NoSpace(_), CacheOutcome::Coalesced)) => {
                Err(FetchError::NoSpace(UnclaimedResponse::default()))
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One attempt; a failure says whether this request started the
    /// download or joined one.
    async fn open_once(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSource, (FetchError, CacheOutcome)> {
        let miss = |e| (e, CacheOutcome::Miss);
        if let Some(source) = self.open_cached(digest).map_err(miss)? {
            return Ok(source);
        }
        let mut outcome = CacheOutcome::Coalesced;
        let mut rx = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| miss(FetchError::Disk("in-flight table poisoned".into())))?;
            match inflight.get(digest) {
                Some(rx) => {
                    metrics().coalesced_waiters.inc();
                    rx.clone()
                }
                None => {
                    // A download may have finished between our first look
                    // and taking the lock.
                    if let Some(source) = self.open_cached(digest).map_err(miss)? {
                        return Ok(source);
                    }
                    outcome = CacheOutcome::Miss;
                    let (tx, rx) = watch::channel(Progress::Connecting);
                    inflight.insert(digest.clone(), rx.clone());
                    let fetcher = Arc::clone(self);
                    let (upstream, repo, digest) =
                        (Arc::clone(upstream), repo.clone(), digest.clone());
                    tokio::spawn(async move { fetcher.run(upstream, repo, digest, tx).await });
                    rx
                }
            }
        };
        let progress = rx
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
            .map(|p| p.clone())
            .map_err(|_| {
                (
                    FetchError::Disk("download task ended without a result".into()),
                    outcome,
                )
            })?;
        match progress {
            Progress::Connecting => Err((
                FetchError::Disk("download still connecting".into()),
                outcome,
            )),
            Progress::Failed(e) => Err((e, outcome)),
            Progress::Streaming { file, total, .. } => Ok(BlobSource {
                file,
                total,
                progress: Some(rx),
                lease: self.store.usage().lease(digest.hex()),
                outcome,
            }),
            Progress::Complete { file, total } => Ok(BlobSource {
                file,
                total: Some(total),
                progress: None,
                lease: self.store.usage().lease(digest.hex()),
                outcome,
            }),
        }
    }

    fn open_cached(&self, digest: &Digest) -> Result<Option<BlobSource>, FetchError> {
        match self.store.open_blob(digest) {
            Ok(Some((file, len))) => {
                let usage = self.store.usage();
                usage.touch(digest.hex());
                Ok(Some(BlobSource {
                    file: Arc::new(file),
                    total: Some(len),
                    progress: None,
                    lease: usage.lease(digest.hex()),
                    outcome: CacheOutcome::Hit,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(FetchError::Disk(e.to_string())),
        }
    }

    async fn run(
        self: Arc<Self>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
        tx: watch::Sender<Progress>,
    ) {
        let entry = InflightEntry {
            fetcher: &self,
            digest: &digest,
        };
        metrics().downloads_in_flight.inc();
        let result = self.download(&upstream, &repo, &digest, &tx).await;
        metrics().downloads_in_flight.dec();
        // Leave the table before announcing the end: a request that comes
        // after a failure starts afresh, one after success finds the file.
        drop(entry);
        match result {
            Ok((file, total)) => {
                tracing::info!(%digest, bytes = total, upstream = upstream.name(), "blob cached");
                let _ = tx.send(Progress::Complete { file, total });
            }
            // Already logged as a bypass; the requests stream it themselves.
            Err(e @ FetchError::NoSpace(_)) => {
                let _ = tx.send(Progress::Failed(e));
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, upstream = upstream.name(), "blob download failed");
                let _ = tx.send(Progress::Failed(e));
            }
        }
    }

    async fn download(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        tx: &watch::Sender<Progress>,
    ) -> Result<(Arc<File>, u64), FetchError> {
        let resp = upstream.get_blob(repo, digest).await?;
        self.visibility.record(upstream, repo, digest);
        let total = resp.content_length();
        let mut reserved = self.store.create_temp_reserved(total);
        if reserved.as_ref().is_err_and(is_over_budget) {
            // Evicting old content is quicker than the download: make room
            // now rather than stream this one past the cache.
            self.store.usage().make_room(MAKE_ROOM_WAIT).await;
            reserved = self.store.create_temp_reserved(total);
        }
        let temp = match reserved {
            Ok(temp) => temp,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                tracing::warn!(%digest, bytes = total, reason = %e, "cannot cache this blob; streaming it without caching");
                return Err(FetchError::NoSpace(UnclaimedResponse::new(resp)));
            }
            Err(e) => return Err(FetchError::Disk(e.to_string())),
        };
        let file = Arc::clone(temp.file());
        tx.send_replace(Progress::Streaming {
            file: Arc::clone(&file),
            total,
            written: 0,
        });

        let mut body = resp.bytes_stream();
        let mut hasher = DigestWriter::default();
        let mut ended = false;
        while !ended {
            let mut batch = match body.next().await {
                Some(chunk) => chunk
                    .map_err(|e| FetchError::Upstream(UpstreamError::from_reqwest(e)))?
                    .to_vec(),
                None => break,
            };
            // Take whatever else is already buffered, without waiting.
            while batch.len() < WRITE_BATCH {
                match body.next().now_or_never() {
                    Some(Some(chunk)) => batch.extend_from_slice(
                        &chunk.map_err(|e| FetchError::Upstream(UpstreamError::from_reqwest(e)))?,
                    ),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if total.is_some_and(|t| hasher.len() + batch.len() as u64 > t) {
                return Err(FetchError::Truncated {
                    expected: total.unwrap_or(0),
                    got: hasher.len() + batch.len() as u64,
                });
            }
            metrics()
                .upstream_bytes
                .with_label_values(&[upstream.name()])
                .inc_by(batch.len() as u64);
            hasher = write_batch(Arc::clone(&file), hasher, batch).await?;
            let written = hasher.len();
            tx.send_modify(|p| {
                if let Progress::Streaming { written: w, .. } = p {
                    *w = written;
                }
            });
        }

        let got = hasher.len();
        if let Some(expected) = total {
            if got != expected {
                return Err(FetchError::Truncated { expected, got });
            }
        }
        let actual = hasher.finish();
        if actual != *digest {
            metrics().digest_mismatches.inc();
            return Err(FetchError::DigestMismatch { actual });
        }
        self.commit(temp, digest, got, upstream.has_credentials())
            .await?;
        Ok((file, got))
    }

    async fn commit(
        &self,
        temp: TempBlob,
        digest: &Digest,
        size: u64,
        private: bool,
    ) -> Result<(), FetchError> {
        let store = self.store.clone();
        let index = self.index.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            store.commit(temp, &digest)?;
            let record = ContentRecord {
                media_type: None,
                size,
                last_access: unix_now(),
                private,
            };
            index
                .put_content(&digest, &record)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| FetchError::Disk(e.to_string()))?
        .map_err(|e| FetchError::Disk(e.to_string()))
    }
}

/// Removes a download from the in-flight table when dropped, so that even
/// a panicking download cannot leave its digest blocked.
struct InflightEntry<'a> {
    fetcher: &'a BlobFetcher,
    digest: &'a Digest,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.fetcher.inflight.lock() {
            inflight.remove(self.digest);
        }
    }
}

/// Appends and hashes one batch off the async threads.
async fn write_batch(
    file: Arc<File>,
    mut hasher: DigestWriter,
    batch: Vec<u8>,
) -> Result<DigestWriter, FetchError> {
    tokio::task::spawn_blocking(move || {
        (&*file).write_all(&batch)?;
        hasher.update(&batch);
        Ok::<_, std::io::Error>(hasher)
    })
    .await
    .map_err(|e| FetchError::Disk(e.to_string()))?
    .map_err(|e| FetchError::Disk(e.to_string()))
}
