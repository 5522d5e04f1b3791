//! A blob's bytes as one stream, whatever happens to the connection under
//! it: when the source breaks off or stalls (slower than a minimum rate),
//! the download continues from the bytes it has with `Range: bytes=N-`,
//! through a fresh redirect; an upstream that ignores the range restarts
//! from zero and the bytes already written are skipped. The hash state
//! lives with the caller, so a resumed download is verified as a whole.

use super::download::SourceBody;
use super::{FetchError, Target};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

/// How often one download may resume before it fails its readers.
const MAX_RESUMES: u32 = 5;
/// Below this many bytes per second, averaged over the stall window, a
/// connection is as good as dead: resume on a fresh one.
pub const MIN_RATE: u64 = 16 * 1024;

pub(super) struct ResumingSource<'a> {
    at: &'a Target,
    digest: &'a Digest,
    stream: futures_util::stream::BoxStream<'static, Result<Bytes, FetchError>>,
    /// Bytes the caller has taken so far.
    taken: u64,
    /// Bytes still to discard from a restarted (200) answer.
    skip: u64,
    resumes: u32,
    window: Duration,
    /// First wait before resuming (doubles each time).
    first_backoff: Duration,
    window_start: Instant,
    window_bytes: u64,
    /// What the connection said while [`Self::ready_chunk`] looked: handled
    /// by the next [`Self::next`].
    stashed: Option<Result<(), FetchError>>,
    metrics: &'a Metrics,
}

impl<'a> ResumingSource<'a> {
    /// `window`: the span over which the rate is measured.
    pub fn new(
        at: &'a Target,
        digest: &'a Digest,
        source: SourceBody,
        (window, first_backoff): (Duration, Duration),
        metrics: &'a Metrics,
    ) -> Self {
        ResumingSource {
            at,
            digest,
            stream: source.stream,
            taken: 0,
            skip: 0,
            resumes: 0,
            window,
            first_backoff,
            window_start: Instant::now(),
            window_bytes: 0,
            stashed: None,
            metrics,
        }
    }

    /// The next bytes of the blob, `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            let got = match self.stashed.take() {
                Some(Ok(())) => Ok(None),
                Some(Err(e)) => Err(e),
                None => self.next_from_connection().await,
            };
            let failure = match got {
                Ok(Some(chunk)) => match self.after_skip(chunk) {
                    Some(chunk) => {
                        self.taken += chunk.len() as u64;
                        return Ok(Some(chunk));
                    }
                    None => continue,
                },
                Ok(None) if self.skip == 0 => return Ok(None),
                // A restarted answer that ended before catching up.
                Ok(None) => FetchError::Truncated {
                    expected: self.taken + self.skip,
                    got: self.taken,
                },
                Err(e) => e,
            };
            if !is_resumable(&failure) || self.resumes >= MAX_RESUMES {
                return Err(failure);
            }
            self.resume(&failure).await?;
        }
    }

    /// A chunk the connection already holds, without waiting (to batch
    /// writes); anything else it says waits for the next [`Self::next`].
    pub fn ready_chunk(&mut self) -> Option<Bytes> {
        if self.skip > 0 || self.stashed.is_some() {
            return None;
        }
        match self.stream.next().now_or_never()? {
            Some(Ok(chunk)) => {
                self.window_bytes += chunk.len() as u64;
                self.taken += chunk.len() as u64;
                Some(chunk)
            }
            Some(Err(e)) => {
                self.stashed = Some(Err(e));
                None
            }
            None => {
                self.stashed = Some(Ok(()));
                None
            }
        }
    }

    /// One chunk from the current connection, failing it when it delivers
    /// less than [`MIN_RATE`] over a window.
    async fn next_from_connection(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            let deadline = self.window_start + self.window;
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.window_bytes += chunk.len() as u64;
                    if Instant::now() >= deadline {
                        self.check_rate()?;
                    }
                    return Ok(Some(chunk));
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Ok(None),
                Err(_) => self.check_rate()?,
            }
        }
    }

    /// Closes a rate window: too few bytes in it is a stall.
    fn check_rate(&mut self) -> Result<(), FetchError> {
        let wanted = MIN_RATE * self.window.as_millis() as u64 / 1000;
        let moved = self.window_bytes;
        self.window_start = Instant::now();
        self.window_bytes = 0;
        if moved < wanted {
            return Err(FetchError::Upstream(UpstreamError::Timeout));
        }
        Ok(())
    }

    fn after_skip(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.skip == 0 {
            return Some(chunk);
        }
        let n = chunk.len() as u64;
        if n <= self.skip {
            self.skip -= n;
            return None;
        }
        let rest = chunk.slice(self.skip as usize..);
        self.skip = 0;
        Some(rest)
    }

    /// Opens a fresh connection from where the caller is.
    async fn resume(&mut self, failure: &FetchError) -> Result<(), FetchError> {
        let mut backoff = self.first_backoff;
        loop {
            self.resumes += 1;
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            tracing::info!(digest = %self.digest, at = self.taken, attempt = self.resumes, reason = %failure, "resuming blob download");
            let resp = match self
                .at
                .upstream
                .get_blob_from(&self.at.repo, self.digest, Some(self.taken))
                .await
            {
                Ok(resp) => resp,
                Err(e)
                    if is_resumable(&FetchError::Upstream(e.clone()))
                        && self.resumes < MAX_RESUMES =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let resumed_here = resp.status() == http::StatusCode::PARTIAL_CONTENT
                && content_range_start(resp.headers()) == Some(self.taken);
            if resumed_here {
                self.skip = 0;
                self.metrics.download_resumes.inc();
            } else {
                // The whole blob again: skip what we already have.
                self.skip = self.taken;
                self.metrics.download_restarts.inc();
            }
            self.stream = SourceBody::from_upstream(resp).stream;
            self.window_start = Instant::now();
            self.window_bytes = 0;
            return Ok(());
        }
    }
}

/// Failures of the connection (not answers about the content) that a new
/// connection may cure.
fn is_resumable(e: &FetchError) -> bool {
    match e {
        FetchError::Upstream(u) => {
            matches!(u, UpstreamError::Unreachable(_) | UpstreamError::Timeout)
                || matches!(u, UpstreamError::Status { status, .. } if *status >= 500)
        }
        // A tier's stream broke: continue from the upstream.
        FetchError::Cache(_) => true,
        _ => false,
    }
}

/// `Content-Range: bytes N-M/T` → N.
fn content_range_start(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes ")?;
    spec.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_starts() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(content_range_start(&h), Some(100));
        h.insert(http::header::CONTENT_RANGE, "bytes */200".parse().unwrap());
        assert_eq!(content_range_start(&h), None);
    }
}
