//! What the core answers with: small in-memory bodies, blob bodies that
//! read a file in bounded chunks while tailing a download that is still
//! being written (the readers of one download sharing its blocks, see
//! `blocks`), and verified pass-through of bytes the cache cannot hold.

use super::blocks::{SharedBlocks, BLOCK};
use super::download::{BlobSource, Progress, SourceBody};
use super::sendfile::{Sendfile, MAX_SPAN};
use super::FetchError;
use crate::cache::Lease;
use crate::metrics::Metrics;
use crate::oci::{Digest, DigestWriter};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Bytes read per chunk: large enough for few blocking-pool trips, small
/// enough that memory per connection stays bounded.
const READ_CHUNK: u64 = 256 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Waits for the download to publish something new. If its task is gone,
/// its last word must have been the end; anything else is a failure.
async fn wait_for_progress(rx: &mut watch::Receiver<Progress>) -> io::Result<()> {
    if rx.changed().await.is_err() {
        let last = rx.borrow().clone();
        if !matches!(last, Progress::Complete { .. } | Progress::Failed(_)) {
            return Err(io::Error::other("download ended without a result"));
        }
    }
    Ok(())
}

struct BlobReader {
    file: Arc<File>,
    pos: u64,
    /// Exclusive end; `None` while a download of unknown length runs.
    end: Option<u64>,
    progress: Option<watch::Receiver<Progress>>,
    /// The blocks this download's readers share; `None` for a cached blob.
    blocks: Option<Arc<SharedBlocks>>,
    /// Metric label: whether these bytes were already cached.
    source: &'static str,
    /// The whole blob's length, when the upstream announced it.
    blob_len: Option<u64>,
    /// Keeps eviction away from this blob until the body is dropped.
    _lease: Lease,
    buffers: ChunkBuffers,
    metrics: Arc<Metrics>,
    /// Set for a complete file on a connection that sends file spans
    /// itself: frames then stand for bytes instead of holding them.
    sendfile: Option<Sendfile>,
}

impl BlobReader {
    /// How far the file may be read now, waiting for the download if it
    /// has not reached `pos` yet. `Ok(None)` means the blob is finished.
    async fn readable_until(&mut self) -> io::Result<Option<u64>> {
        loop {
            let Some(rx) = self.progress.as_mut() else {
                return Ok(self.end.filter(|&end| end > self.pos));
            };
            let state = rx.borrow_and_update().clone();
            match state {
                Progress::Complete { total, .. } => {
                    self.end = Some(self.end.map_or(total, |e| e.min(total)));
                    self.progress = None;
                }
                Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
                Progress::Streaming { written, .. } => {
                    if self.end.is_some_and(|e| e <= self.pos) {
                        return Ok(None);
                    }
                    // Hold back the blob's last byte until the download is
                    // verified: a client must never receive a whole blob from
                    // a download that then fails its digest. (A range that
                    // stops short of the end is served as bytes land; the
                    // client can only verify what it assembles anyway.)
                    let limit = match self.end {
                        Some(end) if written >= end && Some(end) == self.blob_len => end - 1,
                        Some(end) => written.min(end),
                        None => written,
                    };
                    if limit > self.pos {
                        return Ok(Some(limit));
                    }
                    wait_for_progress(rx).await?;
                }
                Progress::Connecting => wait_for_progress(rx).await?,
            }
        }
    }

    async fn next_chunk(mut self) -> Option<(io::Result<Frame<Bytes>>, BlobReader)> {
        let until = match self.readable_until().await {
            Ok(Some(until)) => until,
            Ok(None) => return None,
            Err(e) => {
                // End the stream after the error: the client must see a
                // broken transfer, and nothing more.
                self.end = Some(self.pos);
                self.progress = None;
                return Some((Err(e), self));
            }
        };
        if let Some(sendfile) = &self.sendfile {
            let len = (until - self.pos).min(MAX_SPAN as u64) as usize;
            // A span the page cache does not hold would make sendfile
            // wait for the disk on an async thread: such chunks are read
            // below (off those threads) instead, which caches them.
            if is_resident(&self.file, self.pos, len) {
                let frame = sendfile.frame(&self.file, self.pos, len);
                return Some(self.sent(frame, len));
            }
        }
        let read = match self.shareable_block(until) {
            Some((blocks, index, span)) => self.read_shared(&blocks, index, span).await,
            None => self.read_own(until).await,
        };
        let n = read.as_ref().map_or(0, Bytes::len);
        Some(self.sent(read, n))
    }

    /// The frame for `len` bytes from `pos`, counted; or the error that
    /// ends the body.
    fn sent(mut self, frame: io::Result<Bytes>, len: usize) -> (io::Result<Frame<Bytes>>, Self) {
        match frame {
            Ok(bytes) => {
                self.pos += len as u64;
                self.metrics
                    .bytes_served
                    .with_label_values(&[self.source])
                    .inc_by(len as u64);
                (Ok(Frame::data(bytes)), self)
            }
            Err(e) => {
                self.end = Some(self.pos);
                self.progress = None;
                (Err(e), self)
            }
        }
    }

    /// The shared block `pos` is in, when this body may read all of it
    /// (a range ending inside a block, or the held-back last byte, is
    /// read privately).
    fn shareable_block(&self, until: u64) -> Option<(Arc<SharedBlocks>, u64, Range<u64>)> {
        let blocks = self.blocks.as_ref()?;
        let index = self.pos / BLOCK;
        let start = index * BLOCK;
        let end = match self.blob_len {
            Some(total) => (start + BLOCK).min(total),
            None => start + BLOCK,
        };
        (until >= end).then(|| (Arc::clone(blocks), index, start..end))
    }

    /// From `pos` to the end of its block, read by the first reader of
    /// the download who needed it.
    async fn read_shared(
        &mut self,
        blocks: &SharedBlocks,
        index: u64,
        span: Range<u64>,
    ) -> io::Result<Bytes> {
        let from = (self.pos - span.start) as usize;
        if let Some(block) = blocks.get(index) {
            self.metrics
                .shared_bytes
                .inc_by(block.len() as u64 - from as u64);
            return Ok(block.slice(from..));
        }
        let mut data = vec![0u8; (span.end - span.start) as usize];
        let got = read_from_page_cache(&self.file, &mut data, span.start).unwrap_or(0);
        if got < data.len() {
            let file = Arc::clone(&self.file);
            data = tokio::task::spawn_blocking(move || {
                file.read_exact_at(&mut data[got..], span.start + got as u64)?;
                Ok::<_, io::Error>(data)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        }
        Ok(blocks.share(index, data).slice(from..))
    }

    /// Up to `READ_CHUNK` bytes below `until` into this body's own buffer;
    /// for a download's reader, only to the end of the block `pos` is in,
    /// so that the next read can be of a shared block.
    async fn read_own(&mut self, until: u64) -> io::Result<Bytes> {
        let until = match self.blocks {
            Some(_) => until.min((self.pos / BLOCK + 1) * BLOCK),
            None => until,
        };
        let want = (until - self.pos).min(READ_CHUNK) as usize;
        let mut buf = self.buffers.take(want);
        let (mut buf, n) = match read_from_page_cache(&self.file, &mut buf[..want], self.pos) {
            Some(n) => (buf, n),
            None => {
                // Not in memory yet: a real disk read, off the async threads.
                let (file, pos) = (Arc::clone(&self.file), self.pos);
                tokio::task::spawn_blocking(move || {
                    file.read_exact_at(&mut buf[..want], pos)?;
                    Ok::<_, io::Error>((buf, want))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))?
            }
        };
        buf.truncate(n);
        let bytes = buf.freeze();
        // A download's reader reads its own only at the head of the
        // download, briefly: buffers kept for it would be held by every
        // one of a thousand readers for the rest of the blob.
        if self.blocks.is_none() {
            self.buffers.keep(&bytes);
        }
        Ok(bytes)
    }
}

/// Whether the page cache holds the first and last byte of a span, asked
/// without waiting for a disk. (A span read in sequence is cached as a
/// whole or not at all, bar memory pressure in between.)
fn is_resident(file: &File, pos: u64, len: usize) -> bool {
    let mut byte = [0u8; 1];
    let last = pos + len as u64 - 1;
    [pos, last]
        .into_iter()
        .all(|at| read_from_page_cache(file, &mut byte, at).is_some())
}

/// Reads what the page cache already holds, without blocking: a hot blob
/// is served straight from the async thread (no hand-off to the blocking
/// pool, which cost more than the copy itself). `None`: go to the disk.
fn read_from_page_cache(file: &File, buf: &mut [u8], pos: u64) -> Option<usize> {
    let mut slices = [io::IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut slices, pos, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(n) if n > 0 => Some(n),
        _ => None,
    }
}

/// The chunks a body sent recently, reclaimed once the connection has
/// written them: reading into an initialised buffer we already own saves
/// an allocation and a memset per chunk.
#[derive(Default)]
struct ChunkBuffers {
    sent: Vec<Bytes>,
}

impl ChunkBuffers {
    /// Chunks a connection may hold queued at once, before it asks for more.
    const KEPT: usize = 3;

    /// An initialised buffer of at least `len` bytes.
    fn take(&mut self, len: usize) -> BytesMut {
        for i in 0..self.sent.len() {
            let candidate = self.sent.swap_remove(i);
            match candidate.try_into_mut() {
                Ok(mut buf) => {
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    return buf;
                }
                Err(still_queued) => {
                    self.sent.push(still_queued);
                    let last = self.sent.len() - 1;
                    self.sent.swap(i, last);
                }
            }
        }
        BytesMut::zeroed(len)
    }

    fn keep(&mut self, chunk: &Bytes) {
        if self.sent.len() >= Self::KEPT {
            self.sent.remove(0);
        }
        self.sent.push(chunk.clone());
    }
}

/// The bytes `[start, end)` of a blob (to its end when `end` is `None`).
/// With `sendfile`, a complete file's bytes are left to the connection to
/// send (see `sendfile`); a download still running is read as it grows.
pub(super) fn blob(
    source: BlobSource,
    start: u64,
    end: Option<u64>,
    metrics: Arc<Metrics>,
    sendfile: Option<Sendfile>,
) -> Body {
    let sendfile = sendfile.filter(|_| source.is_cached());
    let reader = BlobReader {
        source: if source.is_cached() {
            "cache"
        } else {
            "upstream"
        },
        blob_len: source.total,
        file: source.file,
        pos: start,
        end: end.or(source.total),
        progress: source.progress,
        blocks: source.blocks,
        _lease: source.lease,
        buffers: ChunkBuffers::default(),
        metrics,
        sendfile,
    };
    let stream = futures_util::stream::unfold(reader, BlobReader::next_chunk);
    StreamBody::new(stream).boxed_unsync()
}

struct Passthrough {
    source: SourceBody,
    hasher: DigestWriter,
    digest: Digest,
    finished: bool,
    metrics: Arc<Metrics>,
}

/// Bytes relayed as they arrive, without caching (the cache cannot hold
/// them). They are still verified: a body that does not hash to `digest`
/// ends in an error, so the client never takes it for complete.
pub(super) fn verified_passthrough(
    source: SourceBody,
    digest: Digest,
    metrics: Arc<Metrics>,
) -> Body {
    let state = Passthrough {
        source,
        hasher: DigestWriter::default(),
        digest,
        finished: false,
        metrics,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        match st.source.stream.next().await {
            Some(Ok(chunk)) => {
                st.hasher.update(&chunk);
                st.metrics
                    .bytes_served
                    .with_label_values(&["upstream"])
                    .inc_by(chunk.len() as u64);
                Some((Ok(Frame::data(chunk)), st))
            }
            Some(Err(e)) => {
                st.finished = true;
                Some((Err(io::Error::other(e.to_string())), st))
            }
            None => {
                st.finished = true;
                let actual = std::mem::take(&mut st.hasher).finish();
                if actual == st.digest {
                    None
                } else {
                    st.metrics.digest_mismatches.inc();
                    let e = FetchError::DigestMismatch {
                        expected: st.digest.clone(),
                        actual,
                    };
                    Some((Err(io::Error::other(e.to_string())), st))
                }
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
