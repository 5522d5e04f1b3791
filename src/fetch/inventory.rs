//! Read-only views of what the running mirror's cache holds, for the admin
//! API and the page. The offline `cache stats` / `cache ls` compute the
//! same rows (`admin::stats_of`, `admin::list_of`) from a stopped cache;
//! here they come from the index this process owns, so they work while the
//! mirror runs (the index lock keeps the offline commands out).

use super::PullThrough;
use crate::admin::{self, Stats, TagRow};
use crate::cache::{self, CacheError};
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
}
