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

/// One entry eviction may remove. Ordered least recently used first
/// (ties by digest, so a pass is deterministic).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Victim {
    last_access: u64,
    hex: String,
    size: u64,
}

/// Evicts down to the low-water mark if usage is over the high-water mark.
/// Usage is summed from the index, which is authoritative after
/// reconciliation.
///
/// Two streaming passes over the index, so memory stays bounded by what
/// is evicted, not by what is cached: one sums usage, the other keeps the
/// least recently used entries that cover what must go. Those are then
/// removed in digest order, the index's key order, so each of its pages
/// is rewritten once rather than once per entry (with a million entries,
/// removing in access order made a pass take minutes).
pub fn evict(
    store: &dyn ContentStore,
    index: &Index,
    budget: &Budget,
    dry_run: bool,
) -> EvictionReport {
    let started = std::time::Instant::now();
    store.usage().flush_access_times(index);
    // Downloads in progress will land too, and one refused for want of
    // room should fit next time: make room for them now.
    let pending = store.usage().reserved() + store.usage().take_demand();
    let usage: u64 = index.contents().map(|(_, r)| r.size).sum::<u64>() + pending;
    let mut report = EvictionReport {
        usage_before: usage,
        ..EvictionReport::default()
    };
    if usage <= budget.high_water() {
        return report;
    }
    let target = usage - budget.low_water();
    let victims = least_recently_used(store, index, budget, target);
    if dry_run {
        for v in victims {
            report.freed_bytes += v.size;
            report.removed.push((format!("sha256:{}", v.hex), v.size));
        }
        return report;
    }
    let mut by_key: Vec<usize> = (0..victims.len()).collect();
    by_key.sort_by(|&a, &b| victims[a].hex.cmp(&victims[b].hex));
    let mut freed: Vec<Option<u64>> = vec![None; victims.len()];
    for i in by_key {
        let hex = &victims[i].hex;
        // Leased since it was picked: it is being served; the next pass
        // makes up for it.
        if store.usage().is_leased(hex) {
            continue;
        }
        let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
            continue;
        };
        match store.remove(&digest) {
            Ok(bytes) => {
                if let Err(e) = index.remove_content(hex) {
                    tracing::warn!(error = %e, "cannot drop evicted entry from the index");
                }
                freed[i] = Some(bytes);
                store.usage().metrics().evictions.inc();
                store.usage().metrics().evicted_bytes.inc_by(bytes);
            }
            Err(e) => tracing::warn!(error = %e, digest = %hex, "cannot evict"),
        }
    }
    // Reported least recently used first, as picked.
    for (v, bytes) in victims.into_iter().zip(freed) {
        if let Some(bytes) = bytes {
            report.freed_bytes += bytes;
            report.removed.push((format!("sha256:{}", v.hex), bytes));
        }
    }
    if !report.removed.is_empty() {
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

/// The least recently used entries that may go (not being served, not
/// pinned, not a manifest in use) whose sizes add up to `target`, least
/// recently used first. Holds only those, never the whole index: a
/// max-heap of the newest kept, dropped once the older ones cover the
/// target without it.
fn least_recently_used(
    store: &dyn ContentStore,
    index: &Index,
    budget: &Budget,
    target: u64,
) -> Vec<Victim> {
    let now = unix_now();
    let mut kept = std::collections::BinaryHeap::new();
    let mut held = 0u64;
    for (hex, r) in index.contents() {
        if store.usage().is_leased(&hex) || store.usage().is_pinned(&hex) {
            continue;
        }
        let is_manifest = r.media_type.is_some();
        if is_manifest && now.saturating_sub(r.last_access) < budget.protect_recent.as_secs() {
            continue;
        }
        let victim = Victim {
            last_access: r.last_access,
            hex,
            size: r.size,
        };
        if held >= target && kept.peek().is_some_and(|newest: &Victim| victim > *newest) {
            continue;
        }
        held += victim.size;
        kept.push(victim);
        while let Some(newest) = kept.peek() {
            if held - newest.size < target {
                break;
            }
            held -= newest.size;
            kept.pop();
        }
    }
    kept.into_sorted_vec()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ContentRecord;

    /// Entries `0..n` of `size` bytes each, entry `i` last used at `i`.
    fn cache_of(n: u64, size: usize) -> (tempfile::TempDir, BlobStore, Index, Vec<Digest>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, index) = crate::cache::open(dir.path(), None, Default::default()).unwrap();
        let mut digests = Vec::new();
        for i in 0..n {
            let mut bytes = format!("entry {i}").into_bytes();
            bytes.resize(size, b'.');
            let digest = Digest::of(&bytes);
            store.write_verified(&bytes, &digest).unwrap();
            let record = ContentRecord {
                media_type: None,
                size: size as u64,
                last_access: 1_000 + i,
                private: false,
            };
            index.put_content(&digest, &record).unwrap();
            digests.push(digest);
        }
        (dir, store, index, digests)
    }

    #[test]
    fn a_pass_removes_exactly_the_least_recently_used_that_cover_the_excess() {
        let (_dir, store, index, digests) = cache_of(50, 100);
        // 5,000 bytes cached; low water 3,600: 1,400 must go, the 14 oldest.
        let budget = Budget {
            max_size: 4_000,
            protect_recent: Duration::ZERO,
        };
        store.usage().set_pinned([digests[3].to_string()].into());
        let report = evict(&store, &index, &budget, false);
        let expected: Vec<String> = (0..15)
            .filter(|&i| i != 3)
            .map(|i| digests[i].to_string())
            .collect();
        let removed: Vec<String> = report.removed.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(removed, expected, "oldest first, the pinned one kept");
        assert_eq!(report.freed_bytes, 1_400);
        for (i, d) in digests.iter().enumerate() {
            let gone = (0..15).contains(&i) && i != 3;
            assert_eq!(store.contains(d), !gone, "file of entry {i}");
            assert_eq!(
                index.content(d).unwrap().is_none(),
                gone,
                "record of entry {i}"
            );
        }
        // Under the high-water mark now: the next pass removes nothing.
        assert!(evict(&store, &index, &budget, false).removed.is_empty());
    }
}
