//! Read-only views of what the running mirror's cache holds, for the admin
//! API and the page. The offline `cache stats` / `cache ls` compute the
//! same rows (`admin::stats_of`, `admin::list_of`) from a stopped cache;
//! here they come from the index this process owns, so they work while the
//! mirror runs (the index lock keeps the offline commands out).

use super::PullThrough;
use crate::admin::{self, Stats, TagRow};
use crate::bundle::{self, BundleError, ImportReport};
use crate::cache::{self, CacheError};
use crate::oci::Digest;
use std::sync::Arc;

impl PullThrough {
    /// Totals of the cache: entries and bytes by the index, plus the
    /// store's live byte count (which includes what landed since the last
    /// reconciliation and is what the budget is enforced against).
    pub async fn cache_stats(&self) -> Result<(Stats, u64), CacheError> {
        let index = self.index.clone();
        let usage = Arc::clone(self.store.usage());
        // A walk over every index record: sled reads block, so off the
        // async threads.
        cache::blocking(move || Ok((admin::stats_of(&index), usage.bytes()))).await
    }

    /// The cached tags, all or of one repository, one row per
    /// (upstream, repository, tag).
    pub async fn cached_tags(&self, repo: Option<String>) -> Result<Vec<TagRow>, CacheError> {
        let index = self.index.clone();
        let store = Arc::clone(&self.store);
        cache::blocking(move || Ok(admin::list_of(store.as_ref(), &index, repo.as_deref()))).await
    }

    /// Forgets a tag (every client kind's mapping of it) on `upstream`, or
    /// on every upstream; returns how many (upstream, repository) pairs
    /// held it. The manifest and layers stay until evicted or purged by
    /// digest; the next pull of the tag asks the upstream.
    pub async fn purge_tag(
        &self,
        upstream: Option<String>,
        repo: String,
        tag: String,
    ) -> Result<u64, CacheError> {
        let index = self.index.clone();
        let removed = cache::blocking(move || {
            let hub_name = format!("library/{repo}");
            let doomed: Vec<_> = index
                .tags()
                .filter(|(k, _)| {
                    upstream.as_deref().is_none_or(|u| u == k.upstream)
                        && (k.repo.as_str() == repo || k.repo.as_str() == hub_name)
                        && k.tag.as_str() == tag
                })
                .map(|(k, _)| k)
                .collect();
            let mut pairs = std::collections::HashSet::new();
            for key in &doomed {
                index.remove_tag(key)?;
                pairs.insert((key.upstream.clone(), key.repo.clone()));
            }
            Ok(pairs.len() as u64)
        })
        .await?;
        if removed > 0 {
            // Coarse but safe: every in-memory tag answer revalidates once.
            self.tags.forget_all();
        }
        Ok(removed)
    }

    /// Removes content by digest from the local cache (file and index
    /// record); returns the bytes freed, `None` if it was not cached.
    /// Readers already streaming it finish from the open file.
    pub async fn purge_digest(&self, digest: &Digest) -> Result<Option<u64>, CacheError> {
        let (index, store, d) = (self.index.clone(), Arc::clone(&self.store), digest.clone());
        let freed = cache::blocking(move || {
            let known = index.content(&d)?.is_some() || store.contains(&d);
            if !known {
                return Ok(None);
            }
            let freed = store.remove(&d)?;
            index.remove_content(d.hex())?;
            Ok(Some(freed))
        })
        .await?;
        self.manifests.forget(digest).await;
        // A tag answered from memory may point at what is gone.
        self.tags.forget_all();
        Ok(freed)
    }

    /// Adds a bundle (`pullthrough import --server`) to the running cache:
    /// verified as it streams in from `input`, which is read on a blocking
    /// thread. Tags answered from memory are forgotten, so the imported
    /// mappings are what the next pull sees.
    pub async fn import_bundle(
        &self,
        input: impl std::io::Read + Send + 'static,
        upstreams: Vec<String>,
    ) -> Result<ImportReport, BundleError> {
        let (index, store) = (self.index.clone(), Arc::clone(&self.store));
        let imported = tokio::task::spawn_blocking(move || {
            bundle::import_into(store.as_ref(), &index, input, &upstreams)
        })
        .await
        .map_err(|e| BundleError::Cache(CacheError::Task(e.to_string())))?;
        self.tags.forget_all();
        imported
    }
}
