//! Keeping the cache within its byte budget: when usage crosses the
//! high-water mark, least-recently-used content goes until usage is under
//! the low-water mark. Blobs being served, manifests of recently served
//! tags and pinned warm sets stay.

use super::{unix_now, BlobStore, ContentStore, Index};
use crate::oci::Digest;
use serde::Serialize;
use std::time::Duration;

/// How often batched access times reach the index, and how often usage is
/// checked even without a new download.
const TICK: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_size: u64,
    /// Manifests used more recently than this are kept (the longest
    /// `tag_ttl`: a tag being served must not lose its manifest).
    pub protect_recent: Duration,
}

impl Budget {
    pub fn high_water(&self) -> u64 {
        self.max_size / 100 * 95
    }

    pub fn low_water(&self) -> u64 {
        self.max_size / 100 * 90
    }
}

#[derive(Debug, Default, Serialize)]
pub struct EvictionReport {
    /// `(digest, bytes)` of each entry removed (or that would be, dry run).
    pub removed: Vec<(String, u64)>,
    pub freed_bytes: u64,
    pub usage_before: u64,
}

/// Evicts down to the low-water mark if usage is over the high-water mark.
/// Usage is summed from the index, which is authoritative after
/// reconciliation.
pub fn evict(
    store: &dyn ContentStore,
    index: &Index,
    budget: &Budget,
    dry_run: bool,
) -> EvictionReport {
    let started = std::time::Instant::now();
    store.usage().flush_access_times(index);
    let mut candidates: Vec<(u64, String, u64, bool)> = index
        .contents()
        .map(|(hex, r)| (r.last_access, hex, r.size, r.media_type.is_some()))
        .collect();
    // Downloads in progress will land too, and one refused for want of
    // room should fit next time: make room for them now.
    let pending = store.usage().reserved() + store.usage().take_demand();
    let usage: u64 = candidates.iter().map(|c| c.2).sum::<u64>() + pending;
    let mut report = EvictionReport {
        usage_before: usage,
        ..EvictionReport::default()
    };
    if usage <= budget.high_water() {
        return report;
    }
    let target = usage - budget.low_water();
    let now = unix_now();
    candidates.sort();
    for (last_access, hex, size, is_manifest) in candidates {
        if report.freed_bytes >= target {
            break;
        }
        if store.usage().is_leased(&hex) || store.usage().is_pinned(&hex) {
            continue;
        }
        if is_manifest && now.saturating_sub(last_access) < budget.protect_recent.as_secs() {
            continue;
        }
        if dry_run {
            report.freed_bytes += size;
            report.removed.push((format!("sha256:{hex}"), size));
            continue;
        }
        let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
            continue;
        };
        match store.remove(&digest) {
            Ok(freed) => {
                if let Err(e) = index.remove_content(&hex) {
                    tracing::warn!(error = %e, "cannot drop evicted entry from the index");
                }
                report.freed_bytes += freed;
                report.removed.push((format!("sha256:{hex}"), freed));
                store.usage().metrics().evictions.inc();
                store.usage().metrics().evicted_bytes.inc_by(freed);
            }
            Err(e) => tracing::warn!(error = %e, digest = %hex, "cannot evict"),
        }
    }
    if !dry_run && !report.removed.is_empty() {
        tracing::info!(
            entries = report.removed.len(),
            freed_bytes = report.freed_bytes,
            usage_before = usage,
            millis = started.elapsed().as_millis() as u64,
            "evicted least recently used content"
        );
    }
    report
}

/// Runs eviction in the background: on a timer, and whenever a new blob
/// pushes usage over the high-water mark.
pub fn spawn_evictor(store: BlobStore, index: Index, budget: Option<Budget>) {
    if let Some(b) = budget {
        store.usage().set_high_water(b.high_water());
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = store.usage().over_budget() => {},
            }
            let (pass, index) = (store.clone(), index.clone());
            let work = tokio::task::spawn_blocking(move || {
                let usage = pass.usage();
                let wanted = usage.bytes() + usage.reserved() + usage.demand();
                match budget {
                    Some(budget) if wanted > budget.high_water() => {
                        evict(&pass, &index, &budget, false);
                    }
                    _ => usage.flush_access_times(&index),
                }
            });
            if let Err(e) = work.await {
                tracing::error!(error = %e, "eviction task failed");
            }
            store.usage().eviction_pass_done();
        }
    });
}
