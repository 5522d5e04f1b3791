//! One download per digest: a blob miss starts a single spawned task that
//! writes `tmp/…partial` through the local tier, hashes as it goes and
//! publishes its progress; every request for the digest tails that file.
//!
//! The download belongs to no request: a client hanging up cancels nothing.
//! It ends either verified and committed (readers keep the same inode
//! open) or failed, in which case every reader's body ends in an error so
//! no client ever mistakes a broken transfer for a complete one.

use super::blocks::SharedBlocks;
use super::misses::Misses;
use super::resume::ResumingSource;
use super::visibility::Visibility;
use super::{CacheOutcome, FetchError, Target};
use crate::cache::{
    self, unix_now, CacheError, ContentRecord, ContentStore, Index, Lease, TempBlob, Tier,
};
use crate::coalesce::{Flights, Joined};
use crate::config::Timings;
use crate::metrics::Metrics;
use crate::oci::{Digest, DigestWriter};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Downloads are written in batches of up to this many bytes, so a fast
/// upstream costs few blocking-pool round trips and a slow one is still
/// published as soon as its bytes arrive.
const WRITE_BATCH: usize = 512 * 1024;

/// Written bytes after which a download starts their write-back to disk.
const WRITE_BEHIND: u64 = 8 * 1024 * 1024;

/// How long a request that joined a download waits for its first bytes
/// before it gives up (the download's own timeouts and retries come first).
const FOLLOW_WAIT: Duration = Duration::from_secs(120);

/// Bytes of a blob from wherever they come (a tier or the upstream),
/// before verification.
pub struct SourceBody {
    pub len: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, FetchError>>,
}

impl SourceBody {
    pub(super) fn from_upstream(resp: reqwest::Response) -> SourceBody {
        SourceBody {
            len: resp.content_length(),
            stream: resp
                .bytes_stream()
                .map_err(|e| FetchError::Upstream(UpstreamError::from_reqwest(e)))
                .boxed(),
        }
    }
}

/// A source the download could not cache (no room), handed to the request
/// that started it so the blob is still fetched once for that request.
#[derive(Clone, Default)]
pub struct UnclaimedBody(Arc<Mutex<Option<SourceBody>>>);

impl UnclaimedBody {
    fn new(body: SourceBody) -> Self {
        UnclaimedBody(Arc::new(Mutex::new(Some(body))))
    }

    pub fn claim(&self) -> Option<SourceBody> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl std::fmt::Debug for UnclaimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnclaimedBody")
    }
}

/// What readers see of a download.
#[derive(Clone)]
pub enum Progress {
    /// Waiting for the source's first answer.
    Connecting,
    /// Bytes `[0, written)` of `file` are on disk and may be read.
    Streaming {
        file: Arc<File>,
        blocks: Arc<SharedBlocks>,
        total: Option<u64>,
        written: u64,
    },
    /// Verified and committed to the local tier.
    Complete {
        file: Arc<File>,
        blocks: Arc<SharedBlocks>,
        total: u64,
    },
    Failed(FetchError),
}

/// A blob to serve: already complete, or still being written.
pub struct BlobSource {
    pub file: Arc<File>,
    /// Known up front for cached blobs and for downloads whose source
    /// announced a length.
    pub total: Option<u64>,
    /// `None` for a complete file; otherwise the download's progress.
    pub progress: Option<watch::Receiver<Progress>>,
    /// What the readers of one download share; `None` for a cached blob.
    pub blocks: Option<Arc<SharedBlocks>>,
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
pub struct BlobDownloads {
    store: Arc<dyn ContentStore>,
    index: Index,
    tiers: Vec<Arc<dyn Tier>>,
    visibility: Visibility,
    misses: Arc<Misses>,
    flights: Flights<Digest, Progress>,
    /// What each running download is for, for the status view.
    running: Mutex<HashMap<Digest, Running>>,
    /// Download slots per upstream (by name).
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// How long a download goes on with nobody reading it.
    abandon_after: Duration,
    /// Blobs of unannounced length that outgrew the cache: streamed past it.
    too_big: moka::future::Cache<Digest, ()>,
    metrics: Arc<Metrics>,
    make_room_wait: Duration,
    /// The span over which a source must keep a minimum rate, and the
    /// first wait before a resume.
    resume_timings: (Duration, Duration),
}

impl BlobDownloads {
    pub fn new(
        store: Arc<dyn ContentStore>,
        index: Index,
        tiers: Vec<Arc<dyn Tier>>,
        visibility: Visibility,
        misses: Arc<Misses>,
        metrics: Arc<Metrics>,
        timings: &Timings,
    ) -> Arc<BlobDownloads> {
        Arc::new(BlobDownloads {
            misses,
            slots: Mutex::default(),
            abandon_after: timings.abandon_after,
            too_big: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            store,
            index,
            tiers,
            visibility,
            flights: Flights::default(),
            running: Mutex::default(),
            metrics,
            make_room_wait: timings.make_room_wait,
            resume_timings: (timings.stall_window, timings.retry_backoff),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// The downloads in flight with their progress, oldest first.
    pub fn in_flight_detail(&self) -> Vec<DownloadView> {
        let running = match self.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<DownloadView> = self
            .flights
            .snapshot()
            .into_iter()
            .map(|(digest, progress)| {
                let (written, total) = match progress {
                    Progress::Streaming { total, written, .. } => (written, total),
                    Progress::Complete { total, .. } => (total, Some(total)),
                    Progress::Connecting | Progress::Failed(_) => (0, None),
                };
                let of = running.get(&digest);
                DownloadView {
                    upstream: of.map(|r| r.upstream.clone()),
                    repository: of.map(|r| r.repository.clone()),
                    started: of.map(|r| r.started),
                    digest,
                    written,
                    total,
                }
            })
            .collect();
        out.sort_by_key(|d| d.started);
        out
    }

    /// The cached blob, or the (possibly just started) download of it,
    /// once its source has answered.
    pub async fn open(
        self: &Arc<Self>,
        at: &Target,
        digest: &Digest,
    ) -> Result<BlobSource, FetchError> {
        let result = match self.open_once(at, digest).await {
            // A download another request started answers for *its*
            // repository (and upstream): a 404 or a refusal there says
            // nothing about ours, so ask for ours.
            Err((FetchError::Upstream(e), CacheOutcome::Coalesced)) if e.is_about_repository() => {
                self.open_once(at, digest).await
            }
            // The leader vanished without a word: compete again.
            Err((FetchError::Abandoned, CacheOutcome::Coalesced)) => {
                self.open_once(at, digest).await
            }
            other => other,
        };
        if let Err((e, _)) = &result {
            self.misses.note(at, &digest.to_string(), e).await;
        }
        match result {
            // The body a full cache hands over was fetched for the request
            // that started the download; others fetch their own.
            Err((FetchError::NoSpace(_), CacheOutcome::Coalesced)) => {
                Err(FetchError::NoSpace(UnclaimedBody::default()))
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// The cached blob, if the local tier has it.
    pub async fn open_cached(&self, digest: &Digest) -> Result<Option<BlobSource>, FetchError> {
        let (store, d) = (Arc::clone(&self.store), digest.clone());
        let Some(stored) = cache::blocking(move || store.open(&d)).await? else {
            return Ok(None);
        };
        let usage = self.store.usage();
        usage.touch(digest.hex());
        Ok(Some(BlobSource {
            file: Arc::new(stored.file),
            total: Some(stored.len),
            progress: None,
            blocks: None,
            lease: usage.lease(digest.hex()),
            outcome: CacheOutcome::Hit,
        }))
    }

    /// One attempt; a failure says whether this request started the
    /// download or joined one.
    async fn open_once(
        self: &Arc<Self>,
        at: &Target,
        digest: &Digest,
    ) -> Result<BlobSource, (FetchError, CacheOutcome)> {
        let miss = |e| (e, CacheOutcome::Miss);
        if let Some(source) = self.open_cached(digest).await.map_err(miss)? {
            return Ok(source);
        }
        self.misses
            .check(at, &digest.to_string())
            .await
            .map_err(miss)?;
        if self.too_big.contains_key(digest) {
            return Err(miss(FetchError::NoSpace(UnclaimedBody::default())));
        }
        let (mut rx, outcome) = match self.flights.join(digest, || Progress::Connecting) {
            Joined::Follow(rx) => {
                self.metrics.coalesced_waiters.inc();
                (rx, CacheOutcome::Coalesced)
            }
            Joined::Lead(flight) => {
                // A download may have finished between our first look and
                // taking the lead.
                if let Some(source) = self.open_cached(digest).await.map_err(miss)? {
                    return Ok(source);
                }
                let rx = flight.subscribe();
                let (downloads, at, digest) = (Arc::clone(self), at.clone(), digest.clone());
                tokio::spawn(async move { downloads.run(at, digest, flight).await });
                (rx, CacheOutcome::Miss)
            }
        };
        let waited = tokio::time::timeout(
            FOLLOW_WAIT,
            rx.wait_for(|p| !matches!(p, Progress::Connecting)),
        );
        let progress = match waited.await {
            Ok(Ok(p)) => p.clone(),
            Ok(Err(_)) => return Err((FetchError::Abandoned, outcome)),
            Err(_) => return Err((FetchError::Upstream(UpstreamError::Timeout), outcome)),
        };
        let lease = || self.store.usage().lease(digest.hex());
        match progress {
            Progress::Connecting => Err((FetchError::Abandoned, outcome)),
            Progress::Failed(e) => Err((e, outcome)),
            Progress::Streaming {
                file,
                blocks,
                total,
                ..
            } => Ok(BlobSource {
                file,
                total,
                progress: Some(rx),
                blocks: Some(blocks),
                lease: lease(),
                outcome,
            }),
            Progress::Complete {
                file,
                blocks,
                total,
            } => Ok(BlobSource {
                file,
                total: Some(total),
                progress: None,
                blocks: Some(blocks),
                lease: lease(),
                outcome,
            }),
        }
    }

    async fn run(
        self: Arc<Self>,
        at: Target,
        digest: Digest,
        flight: crate::coalesce::Flight<Digest, Progress>,
    ) {
        let name = at.upstream.name().to_owned();
        // Wait for a slot: one upstream gets a bounded number of downloads
        // however many clients ask for different blobs at once.
        let slots = self.slots_of(&at);
        let Ok(_slot) = slots.acquire_owned().await else {
            flight.finish(Progress::Failed(FetchError::Abandoned));
            return;
        };
        self.metrics.downloads_in_flight.inc();
        let shown = RunningEntry::new(&self.running, &at, &digest);
        let result = self.download(&at, &digest, &flight).await;
        drop(shown);
        self.metrics.downloads_in_flight.dec();
        match result {
            Ok((file, blocks, total, from_upstream)) => {
                tracing::info!(%digest, bytes = total, upstream = %name, "blob cached");
                flight.finish(Progress::Complete {
                    file,
                    blocks,
                    total,
                });
                if from_upstream {
                    self.upload_to_tiers(&digest);
                }
            }
            // Already logged as a bypass; the requests stream it themselves.
            Err(e @ FetchError::NoSpace(_)) => flight.finish(Progress::Failed(e)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, upstream = %name, "blob download failed");
                flight.finish(Progress::Failed(e));
            }
        }
    }

    /// Grows the disk promised to a download of unknown length; one that
    /// cannot grow fails its readers, and the blob is streamed past the
    /// cache from then on.
    async fn grow(&self, temp: &mut TempBlob, digest: &Digest, by: u64) -> Result<(), FetchError> {
        let mut grown = self.store.grow(temp, by);
        if matches!(grown, Err(CacheError::OverBudget)) {
            self.store.usage().make_room(self.make_room_wait).await;
            grown = self.store.grow(temp, by);
        }
        if let Err(e) = grown {
            tracing::warn!(%digest, reason = %e, "a blob of unannounced length outgrew the cache; it is streamed past the cache from now on");
            self.too_big.insert(digest.clone(), ()).await;
            return Err(e.into());
        }
        Ok(())
    }

    fn slots_of(&self, at: &Target) -> Arc<Semaphore> {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let limit = at.upstream.max_downloads();
        Arc::clone(
            slots
                .entry(at.upstream.name().to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }

    /// The blob's bytes from the first tier that has them, else from the
    /// upstream; says which.
    async fn open_source(
        &self,
        at: &Target,
        digest: &Digest,
    ) -> Result<(SourceBody, bool), FetchError> {
        for tier in &self.tiers {
            match tier.get(digest).await {
                Ok(Some(body)) => {
                    let stream = body.stream.map_err(FetchError::from).boxed();
                    return Ok((
                        SourceBody {
                            len: body.len,
                            stream,
                        },
                        false,
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%digest, tier = tier.name(), error = %e, "tier lookup failed; trying the next")
                }
            }
        }
        let resp = at.upstream.get_blob(&at.repo, digest).await?;
        self.visibility.record(&at.upstream, &at.repo, digest).await;
        Ok((SourceBody::from_upstream(resp), true))
    }

    /// Puts a verified upstream download into every further tier, in the
    /// background: no client waits for it.
    fn upload_to_tiers(&self, digest: &Digest) {
        for tier in &self.tiers {
            let (tier, digest) = (Arc::clone(tier), digest.clone());
            let path = self.store.path(&digest);
            tokio::spawn(async move {
                if let Err(e) = tier.put(&digest, path, None).await {
                    tracing::warn!(%digest, tier = tier.name(), error = %e, "tier upload failed");
                }
            });
        }
    }

    async fn download(
        &self,
        at: &Target,
        digest: &Digest,
        flight: &crate::coalesce::Flight<Digest, Progress>,
    ) -> Result<(Arc<File>, Arc<SharedBlocks>, u64, bool), FetchError> {
        let (source, from_upstream) = self.open_source(at, digest).await?;
        let total = source.len;
        let mut reserved = self.store.begin(total);
        if matches!(reserved, Err(CacheError::OverBudget)) {
            // Evicting old content is quicker than the download: make room
            // now rather than stream this one past the cache.
            self.store.usage().make_room(self.make_room_wait).await;
            reserved = self.store.begin(total);
        }
        let mut temp = match reserved {
            Ok(temp) => temp,
            Err(e) if e.is_no_space() => {
                tracing::warn!(%digest, bytes = total, reason = %e, "cannot cache this blob; streaming it without caching");
                return Err(FetchError::NoSpace(UnclaimedBody::new(source)));
            }
            Err(e) => return Err(e.into()),
        };
        let file = Arc::clone(temp.file());
        let blocks = Arc::new(SharedBlocks::default());
        flight.publish(Progress::Streaming {
            file: Arc::clone(&file),
            blocks: Arc::clone(&blocks),
            total,
            written: 0,
        });

        let mut unread_since: Option<tokio::time::Instant> = None;
        let mut body = ResumingSource::new(at, digest, source, self.resume_timings, &self.metrics);
        let mut hasher = DigestWriter::default();
        let mut write_behind = WriteBehind::new(&file);
        let upstream_bytes = self
            .metrics
            .upstream_bytes
            .with_label_values(&[at.upstream.name()]);
        while let Some(first) = body.next().await? {
            // The chunks as they came: no copy into one buffer first.
            let mut batch = vec![first];
            let mut batch_len = batch[0].len();
            // Take whatever else is already buffered, without waiting.
            while batch_len < WRITE_BATCH {
                match body.ready_chunk() {
                    Some(chunk) => {
                        batch_len += chunk.len();
                        batch.push(chunk);
                    }
                    None => break,
                }
            }
            let got = hasher.len() + batch_len as u64;
            if let Some(expected) = total.filter(|&t| got > t) {
                return Err(FetchError::Truncated { expected, got });
            }
            if from_upstream {
                upstream_bytes.inc_by(batch_len as u64);
            }
            if total.is_none() {
                self.grow(&mut temp, digest, batch_len as u64).await?;
            }
            hasher = match write_batch(Arc::clone(&file), hasher, batch).await {
                Ok(hasher) => hasher,
                Err(e) => {
                    if matches!(&e, FetchError::Cache(c) if c.is_no_space()) {
                        self.too_big.insert(digest.clone(), ()).await;
                    }
                    return Err(e);
                }
            };
            let written = hasher.len();
            write_behind.wrote(written);
            flight.update(|p| {
                if let Progress::Streaming { written: w, .. } = p {
                    *w = written;
                }
            });
            // The table keeps one receiver; any other is a reader.
            if flight.readers() == 0 {
                let since = *unread_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= self.abandon_after {
                    tracing::info!(%digest, bytes = written, "nobody reads this download any more; abandoning it");
                    return Err(FetchError::Abandoned);
                }
            } else {
                unread_since = None;
            }
        }

        let got = hasher.len();
        if let Some(expected) = total.filter(|&t| t != got) {
            return Err(FetchError::Truncated { expected, got });
        }
        let actual = hasher.finish();
        if actual != *digest {
            self.metrics.digest_mismatches.inc();
            if !from_upstream {
                self.discard_from_tiers(digest).await;
            }
            return Err(FetchError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let (store, index, digest) = (Arc::clone(&self.store), self.index.clone(), digest.clone());
        // Bytes from a shared tier are of unknown origin: another replica
        // may have fetched them with credentials.
        let private = !from_upstream || at.upstream.has_credentials();
        cache::blocking(move || {
            store.commit(temp, &digest)?;
            let record = ContentRecord {
                media_type: None,
                size: got,
                last_access: unix_now(),
                private,
            };
            index.put_content(&digest, &record)
        })
        .await?;
        Ok((file, blocks, got, from_upstream))
    }

    /// A tier answered with bytes that are not the blob: never again.
    async fn discard_from_tiers(&self, digest: &Digest) {
        for tier in &self.tiers {
            if let Err(e) = tier.remove(digest).await {
                tracing::warn!(%digest, tier = tier.name(), error = %e, "cannot remove a corrupt tier copy");
            }
        }
    }
}

/// Appends and hashes one batch off the async threads.
async fn write_batch(
    file: Arc<File>,
    mut hasher: DigestWriter,
    batch: Vec<Bytes>,
) -> Result<DigestWriter, FetchError> {
    Ok(cache::blocking(move || {
        write_all_vectored(&file, &batch)?;
        for chunk in &batch {
            hasher.update(chunk);
        }
        Ok(hasher)
    })
    .await?)
}

/// Writes every chunk, in order, in as few `writev` calls as the kernel
/// allows.
fn write_all_vectored(file: &File, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match (&*file).write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Flushes a download to disk while it runs, one flush at a time, so the
/// fsync of its commit finds little left to write. Readers wait for that
/// commit before the blob's last byte; a whole blob flushed at the end
/// (a quarter of a second for 140 MB here) would be added to every cold
/// pull, and would compete for the disk with the client's own fsync of
/// its copy (skopeo, containerd).
struct WriteBehind {
    file: Arc<File>,
    flushed_to: u64,
    flushing: Option<tokio::task::JoinHandle<()>>,
}

impl WriteBehind {
    fn new(file: &Arc<File>) -> Self {
        WriteBehind {
            file: Arc::clone(file),
            flushed_to: 0,
            flushing: None,
        }
    }

    /// `written` bytes are in the file.
    fn wrote(&mut self, written: u64) {
        let busy = self.flushing.as_ref().is_some_and(|f| !f.is_finished());
        if busy || written - self.flushed_to < WRITE_BEHIND {
            return;
        }
        self.flushed_to = written;
        let file = Arc::clone(&self.file);
        // A failed flush is met again, and reported, by the commit's fsync.
        self.flushing = Some(tokio::task::spawn_blocking(move || {
            let _ = file.sync_data();
        }));
    }
}

/// A download as the status view shows it.
pub struct DownloadView {
    pub digest: Digest,
    /// `None` while it waits for a download slot.
    pub upstream: Option<String>,
    pub repository: Option<String>,
    /// Unix seconds when it started.
    pub started: Option<u64>,
    pub written: u64,
    /// The length the source announced, if it did.
    pub total: Option<u64>,
}

struct Running {
    upstream: String,
    repository: String,
    started: u64,
}

/// A running download's entry in the status view, removed however the
/// download ends.
struct RunningEntry<'a> {
    table: &'a Mutex<HashMap<Digest, Running>>,
    digest: Digest,
}

impl<'a> RunningEntry<'a> {
    fn new(table: &'a Mutex<HashMap<Digest, Running>>, at: &Target, digest: &Digest) -> Self {
        if let Ok(mut t) = table.lock() {
            t.insert(
                digest.clone(),
                Running {
                    upstream: at.upstream.name().to_owned(),
                    repository: at.upstream.upstream_name(&at.repo).as_str().to_owned(),
                    started: unix_now(),
                },
            );
        }
        RunningEntry {
            table,
            digest: digest.clone(),
        }
    }
}

impl Drop for RunningEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_batch_is_written_whole_and_in_order() {
        let chunks: Vec<Bytes> = [&b""[..], b"abc", b"", b"defg", &[7u8; 70_000][..], b""]
            .iter()
            .map(|c| Bytes::copy_from_slice(c))
            .collect();
        let mut file = tempfile::tempfile().expect("temp file");
        write_all_vectored(&file, &chunks).expect("write");
        write_all_vectored(&file, &[Bytes::from_static(b"end")]).expect("write");
        let mut back = Vec::new();
        std::io::Seek::rewind(&mut file).expect("rewind");
        file.read_to_end(&mut back).expect("read");
        let want: Vec<u8> = chunks.concat().into_iter().chain(*b"end").collect();
        assert_eq!(back, want);
    }
}
