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
//! Content a shared tier (the bucket) supplied counts as of unknown origin:
//! another replica may have fetched it with credentials, for another
//! repository, so even a download that just came from there is confirmed.

use crate::cache::{self, Index};
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
    /// `upstream`. `confirm` asks the upstream (HEAD) and fails, e.g. with
    /// a 404, if the repository does not hold the content.
    pub async fn admit<F, Fut>(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        confirm: F,
    ) -> Result<(), UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), UpstreamError>>,
    {
        if !self.enabled {
            return Ok(());
        }
        // A miss fetched upstream for this very repository was recorded
        // before its first byte, so the check below is one index read; a
        // miss a shared tier answered (another replica fetched it, maybe
        // for another repository, maybe with credentials) is confirmed.
        if !self.is_known(upstream, repo, digest).await {
            confirm().await?;
            self.record(upstream, repo, digest).await;
        }
        Ok(())
    }

    async fn is_known(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) -> bool {
        let (index, name) = (self.index.clone(), upstream.name().to_owned());
        let (repo, digest) = (upstream.upstream_name(repo), digest.clone());
        let known = cache::blocking(move || {
            if index.is_linked(&name, repo.as_str(), &digest)? {
                return Ok(true);
            }
            // Public content (fetched without credentials) is anyone's; a
            // file of unknown origin (index lost) is not.
            Ok(matches!(index.content(&digest)?, Some(r) if !r.private))
        });
        known.await.unwrap_or(false)
    }

    /// Notes that the upstream has just answered for `digest` in `repo` (a
    /// fetch there succeeded, or a tag there resolved to it), so requests
    /// joining that fetch, or asking for the digest later, need no
    /// confirmation of their own.
    pub async fn record(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) {
        if !self.enabled {
            return;
        }
        let (index, name) = (self.index.clone(), upstream.name().to_owned());
        let (repo, digest) = (upstream.upstream_name(repo), digest.clone());
        let linked = cache::blocking(move || index.link(&name, repo.as_str(), &digest));
        if let Err(e) = linked.await {
            tracing::warn!(error = %e, "cannot record which repository holds content");
        }
    }
}
