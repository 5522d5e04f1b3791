//! Who may be served cached content that came through upstream credentials.
//!
//! The cache is shared by digest, so without a check a client could ask
//! for a private layer under any repository (or any upstream) and get it
//! from disk. When some upstream has credentials, content is served under
//! an (upstream, repository) only if that pair is known to hold it: the
//! upstream answered a fetch or a HEAD for it there (a "link"), or the
//! content came without credentials and is public anyway. Anything else
//! is confirmed with one HEAD first, with the mirror's credentials, which
//! is exactly what the client could have pulled through that repository.

use crate::cache::{CacheOutcome, Index};
use crate::oci::{Digest, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use std::future::Future;

#[derive(Clone)]
pub struct Visibility {
    index: Index,
    /// Off when no upstream has credentials: nothing cached can be private.
    enabled: bool,
}

impl Visibility {
    pub fn new(index: Index, enabled: bool) -> Visibility {
        Visibility { index, enabled }
    }

    /// Makes sure `digest` may be served to a request for `repo` on
    /// `upstream`, given how this request obtained it. `confirm` asks the
    /// upstream (HEAD) and fails, e.g. with a 404, if the repository does
    /// not hold the content.
    pub async fn admit<F, Fut>(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        outcome: CacheOutcome,
        confirm: F,
    ) -> Result<(), UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), UpstreamError>>,
    {
        if !self.enabled {
            return Ok(());
        }
        if fetched_here(outcome) {
            self.record(upstream, repo, digest);
            return Ok(());
        }
        if !self.is_known(upstream, repo, digest) {
            confirm().await?;
            self.record(upstream, repo, digest);
        }
        Ok(())
    }

    /// Notes what a tag resolved to when the upstream just answered for it
    /// (a tag is recorded per upstream and repository, so serving it from
    /// cache needs no check).
    pub fn resolved_tag(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        outcome: CacheOutcome,
    ) {
        if self.enabled && fetched_here(outcome) {
            self.record(upstream, repo, digest);
        }
    }

    fn is_known(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) -> bool {
        let repo = upstream.upstream_name(repo);
        if self
            .index
            .is_linked(upstream.name(), repo.as_str(), digest)
            .unwrap_or(false)
        {
            return true;
        }
        // Public content (fetched without credentials) is anyone's; a
        // file of unknown origin (index lost) is not.
        matches!(self.index.content(digest), Ok(Some(r)) if !r.private)
    }

    /// Notes that the upstream has just answered for `digest` in `repo`
    /// (a fetch there succeeded), so requests joining that fetch need no
    /// confirmation of their own.
    pub fn record(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) {
        if !self.enabled {
            return;
        }
        let repo = upstream.upstream_name(repo);
        if let Err(e) = self.index.link(upstream.name(), repo.as_str(), digest) {
            tracing::warn!(error = %e, "cannot record which repository holds content");
        }
    }
}

/// The upstream has just answered for this very repository.
fn fetched_here(outcome: CacheOutcome) -> bool {
    matches!(outcome, CacheOutcome::Miss | CacheOutcome::Revalidated)
}
