//! What warming asks of the core: manifests and blobs fetched into the
//! cache through the same coalesced, verified paths a client pull takes,
//! without being counted as client lookups, plus the offline question
//! "is this already here?" and the pins eviction must respect.

use super::accept::AcceptList;
use super::manifest::Manifest;
use super::{CacheOutcome, FetchError, PullThrough, Target};
use crate::cache::{self, TagKey};
use crate::oci::{Digest, Tag};
use std::collections::HashSet;
use std::sync::Arc;

/// A blob made present: its size, and whether it was already cached.
pub struct Prefetched {
    pub size: u64,
    pub outcome: CacheOutcome,
}

impl PullThrough {
    /// A tag's manifest for a warm: with `revalidate`, the in-memory
    /// freshness is skipped and the upstream asked with a HEAD (a GET only
    /// if the tag moved); otherwise answered like a pull. Recorded under
    /// the class of a client that takes every manifest kind, which an
    /// offline client of any kind falls back on.
    pub async fn prefetch_tag(
        &self,
        at: &Target,
        tag: &Tag,
        revalidate: bool,
    ) -> Result<(Arc<Manifest>, CacheOutcome), FetchError> {
        self.tags
            .resolve_with(&self.manifests, at, tag, AcceptList::all(), revalidate)
            .await
    }

    /// A manifest by digest, from the cache or the upstream.
    pub async fn prefetch_manifest(
        &self,
        at: &Target,
        digest: &Digest,
    ) -> Result<(Arc<Manifest>, CacheOutcome), FetchError> {
        self.manifests
            .by_digest(at, digest, &AcceptList::all().header())
            .await
    }

    /// A blob downloaded into the cache (or joined, or already there);
    /// returns once it is complete and verified.
    pub async fn prefetch_blob(
        &self,
        at: &Target,
        digest: &Digest,
    ) -> Result<Prefetched, FetchError> {
        let source = self.blobs.open(at, digest).await?;
        let outcome = source.outcome;
        let Some(mut progress) = source.progress else {
            return Ok(Prefetched {
                size: source.total.unwrap_or(0),
                outcome,
            });
        };
        // Holding the receiver makes us a reader: the download is not
        // abandoned while we wait for it.
        let done = progress
            .wait_for(|p| {
                matches!(
                    p,
                    super::download::Progress::Complete { .. }
                        | super::download::Progress::Failed(_)
                )
            })
            .await
            .map_err(|_| FetchError::Abandoned)?
            .clone();
        match done {
            super::download::Progress::Complete { total, .. } => Ok(Prefetched {
                size: total,
                outcome,
            }),
            super::download::Progress::Failed(e) => Err(e),
            _ => Err(FetchError::Abandoned),
        }
    }

    /// The referrers index of `subject` (kept like a client's ask).
    pub async fn prefetch_referrers(
        &self,
        at: &Target,
        subject: &Digest,
    ) -> Result<bytes::Bytes, FetchError> {
        let answer = self
            .referrers
            .list(&self.manifests, at, subject, None)
            .await?;
        Ok(answer.bytes)
    }

    /// The manifest the cache holds for a tag (any client kind's mapping,
    /// the warm's first), without asking the upstream.
    pub async fn cached_tag(
        &self,
        at: &Target,
        tag: &Tag,
    ) -> Result<Option<Arc<Manifest>>, FetchError> {
        let upstream = at.upstream.name().to_owned();
        let repo = at.upstream.upstream_name(&at.repo);
        let (index, tag) = (self.index.clone(), tag.clone());
        let digest = cache::blocking(move || {
            let key = TagKey {
                upstream,
                repo,
                tag,
                accept: AcceptList::all().class(),
            };
            if let Some(record) = index.tag(&key)? {
                return Ok(Some(record.digest));
            }
            Ok(index
                .tags()
                .find(|(k, _)| k.upstream == key.upstream && k.repo == key.repo && k.tag == key.tag)
                .map(|(_, r)| r.digest))
        })
        .await?;
        match digest {
            Some(d) => self.manifests.cached(&d).await,
            None => Ok(None),
        }
    }

    /// A manifest by digest if the cache holds it.
    pub async fn cached_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, FetchError> {
        self.manifests.cached(digest).await
    }

    /// The size of a blob the local cache holds, `None` if it does not.
    pub async fn cached_blob_size(&self, digest: &Digest) -> Result<Option<u64>, FetchError> {
        let (store, d) = (Arc::clone(&self.store), digest.clone());
        let stored = cache::blocking(move || store.open(&d)).await?;
        Ok(stored.map(|s| s.len))
    }

    /// Replaces the digests that eviction must keep (pinned warm sets).
    pub fn set_pinned(&self, digests: HashSet<String>) {
        self.store.usage().set_pinned(digests);
    }
}
