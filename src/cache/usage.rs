//! What the cache holds and who is using it: byte and entry totals, access
//! times batched in memory (not a disk write per request), and read leases
//! that keep eviction away from blobs being served right now.

use super::index::Index;
use super::unix_now;
use crate::metrics::Metrics;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct CacheUsage {
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Disk promised to downloads in progress (their announced lengths).
    reserved: AtomicU64,
    /// The largest download refused for want of room since the last
    /// eviction: the evictor frees that much more, so it fits next time.
    demand: AtomicU64,
    /// Access times not yet written to the index, by digest hex.
    accessed: Mutex<HashMap<String, u64>>,
    /// Open readers per digest hex.
    leases: Mutex<HashMap<String, usize>>,
    /// Digest hexes of pinned warm sets: never evicted.
    pinned: Mutex<HashSet<String>>,
    /// Usage above which a new blob wakes the evictor (0: no budget).
    high_water: AtomicU64,
    over_budget: tokio::sync::Notify,
    /// Told after each pass of the evictor.
    eviction_passed: tokio::sync::Notify,
    /// While a reconciliation walks the files: content added meanwhile, so
    /// its totals do not erase what landed behind its back.
    added_during_scan: Mutex<Option<HashMap<String, u64>>>,
    metrics: Arc<Metrics>,
}

/// Disk space held for one download until it is committed or abandoned.
pub struct Reservation {
    usage: Arc<CacheUsage>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes over `more`'s bytes: one reservation that grows, however many
    /// times a download of unknown length asks for more.
    pub fn absorb(&mut self, mut more: Reservation) {
        self.bytes += std::mem::take(&mut more.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = self
            .usage
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some(r.saturating_sub(self.bytes))
            });
    }
}

/// Held while a blob is being served; eviction skips leased blobs.
pub struct Lease {
    usage: Arc<CacheUsage>,
    hex: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut leases) = self.usage.leases.lock() {
            if let Some(n) = leases.get_mut(&self.hex) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(&self.hex);
                }
            }
        }
    }
}

impl CacheUsage {
    pub fn new(metrics: Arc<Metrics>) -> CacheUsage {
        CacheUsage {
            metrics,
            ..CacheUsage::default()
        }
    }

    /// Replaces the pinned set (digest hexes, or `sha256:`-prefixed).
    pub fn set_pinned(&self, digests: HashSet<String>) {
        let hexes = digests
            .into_iter()
            .map(|d| d.strip_prefix("sha256:").map(str::to_owned).unwrap_or(d))
            .collect();
        if let Ok(mut pinned) = self.pinned.lock() {
            *pinned = hexes;
        }
    }

    pub fn is_pinned(&self, hex: &str) -> bool {
        self.pinned.lock().is_ok_and(|p| p.contains(hex))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Starts recording additions for [`CacheUsage::finish_scan`].
    pub fn begin_scan(&self) {
        if let Ok(mut scan) = self.added_during_scan.lock() {
            *scan = Some(HashMap::new());
        }
    }

    /// Replaces the totals with a full scan's, plus whatever was added
    /// during the scan that the scan did not see.
    pub fn finish_scan(&self, seen: impl Fn(&str) -> bool, bytes: u64, entries: u64) {
        let missed = self
            .added_during_scan
            .lock()
            .ok()
            .and_then(|mut scan| scan.take())
            .unwrap_or_default();
        let (mut bytes, mut entries) = (bytes, entries);
        for (hex, len) in missed {
            if !seen(&hex) {
                bytes += len;
                entries += 1;
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.entries.store(entries, Ordering::Relaxed);
        self.publish();
    }

    pub fn added(&self, hex: &str, bytes: u64) {
        if let Ok(mut scan) = self.added_during_scan.lock() {
            if let Some(scan) = scan.as_mut() {
                scan.insert(hex.to_owned(), bytes);
            }
        }
        let total = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.publish();
        let high = self.high_water.load(Ordering::Relaxed);
        if high > 0 && total > high {
            self.over_budget.notify_one();
        }
    }

    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Holds `bytes` for a download if cached content, other downloads and
    /// this one fit in `max`; wakes the evictor once past the high-water
    /// mark, so room is made while the download runs.
    pub fn reserve_within(self: &Arc<Self>, bytes: u64, max: Option<u64>) -> Option<Reservation> {
        // Stored bytes are read inside the update: a commit adds its bytes
        // before it releases its reservation, so a retry after that
        // release sees them (never neither).
        let reserved = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                let total = self.bytes().saturating_add(r).saturating_add(bytes);
                (max.is_none_or(|m| total <= m)).then_some(r + bytes)
            });
        let stored = self.bytes();
        if reserved.is_err() {
            self.demand.fetch_max(bytes, Ordering::Relaxed);
        }
        let high = self.high_water.load(Ordering::Relaxed);
        let wanted = stored
            .saturating_add(reserved.unwrap_or_else(|r| r))
            .saturating_add(bytes);
        if high > 0 && wanted > high {
            self.over_budget.notify_one();
        }
        reserved.ok().map(|_| Reservation {
            usage: Arc::clone(self),
            bytes,
        })
    }

    /// Room wanted beyond what is stored and reserved (see `demand`).
    pub fn demand(&self) -> u64 {
        self.demand.load(Ordering::Relaxed)
    }

    pub fn take_demand(&self) -> u64 {
        self.demand.swap(0, Ordering::Relaxed)
    }

    pub fn set_high_water(&self, bytes: u64) {
        self.high_water.store(bytes, Ordering::Relaxed);
    }

    /// Completes when a new blob has pushed usage over the high-water mark.
    pub async fn over_budget(&self) {
        self.over_budget.notified().await;
    }

    /// Wakes the evictor and waits (at most `limit`) for a pass to end.
    pub async fn make_room(&self, limit: std::time::Duration) {
        let passed = self.eviction_passed.notified();
        tokio::pin!(passed);
        passed.as_mut().enable();
        self.over_budget.notify_one();
        let _ = tokio::time::timeout(limit, passed).await;
    }

    pub fn eviction_pass_done(&self) {
        self.eviction_passed.notify_waiters();
    }

    pub fn removed(&self, bytes: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        let _ = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some(e.saturating_sub(1))
            });
        self.publish();
    }

    fn publish(&self) {
        let m = &self.metrics;
        m.cache_size_bytes.set(self.bytes() as i64);
        m.cache_entries.set(self.entries() as i64);
    }

    /// Notes that content was used now; written to the index in batches.
    pub fn touch(&self, hex: &str) {
        if let Ok(mut accessed) = self.accessed.lock() {
            accessed.insert(hex.to_owned(), unix_now());
        }
    }

    pub fn lease(self: &Arc<Self>, hex: &str) -> Lease {
        if let Ok(mut leases) = self.leases.lock() {
            *leases.entry(hex.to_owned()).or_insert(0) += 1;
        }
        Lease {
            usage: Arc::clone(self),
            hex: hex.to_owned(),
        }
    }

    pub fn is_leased(&self, hex: &str) -> bool {
        self.leases
            .lock()
            .map(|l| l.contains_key(hex))
            .unwrap_or(true)
    }

    /// Writes the batched access times into the index.
    pub fn flush_access_times(&self, index: &Index) {
        let batch = match self.accessed.lock() {
            Ok(mut accessed) => std::mem::take(&mut *accessed),
            Err(_) => return,
        };
        for (hex, at) in batch {
            if let Err(e) = index.touch_content(&hex, at) {
                tracing::warn!(error = %e, "cannot record access time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_readers() {
        let usage = Arc::new(CacheUsage::default());
        let a = usage.lease("ab");
        let b = usage.lease("ab");
        assert!(usage.is_leased("ab"));
        drop(a);
        assert!(usage.is_leased("ab"));
        drop(b);
        assert!(!usage.is_leased("ab"));
    }

    #[test]
    fn a_scan_keeps_what_landed_behind_its_back() {
        let usage = CacheUsage::default();
        usage.begin_scan();
        usage.added("seen", 5);
        usage.added("missed", 7);
        let seen = HashSet::from(["seen".to_owned()]);
        usage.finish_scan(|hex| seen.contains(hex), 105, 3);
        assert_eq!((usage.bytes(), usage.entries()), (112, 4));
    }

    #[test]
    fn reservations_keep_downloads_within_the_budget() {
        let usage = Arc::new(CacheUsage::default());
        usage.added("a", 60);
        let first = usage.reserve_within(30, Some(100)).expect("fits");
        assert!(
            usage.reserve_within(20, Some(100)).is_none(),
            "60 + 30 + 20 > 100"
        );
        assert_eq!(
            usage.take_demand(),
            20,
            "the evictor is told what did not fit"
        );
        drop(first);
        assert_eq!(usage.reserved(), 0);
        assert!(usage.reserve_within(20, Some(100)).is_some());
        assert!(usage.reserve_within(1 << 40, None).is_some(), "no budget");
    }

    #[test]
    fn totals_never_go_negative() {
        let usage = CacheUsage::default();
        usage.added("ab", 10);
        usage.removed(25);
        assert_eq!((usage.bytes(), usage.entries()), (0, 0));
    }
}
