//! The disk cache: content-addressed files under `blobs/`, downloads in
//! progress under `tmp/`, and the sled index of tags and metadata.
//!
//! ```text
//! <cache dir>/
//!   blobs/sha256/ab/abcdef…   complete, verified content (layers and manifests)
//!   tmp/                      partial downloads; emptied at start-up
//!   index/                    sled: tags → digests, media types, sizes, access times
//! ```

mod blobs;
mod eviction;
mod index;
mod reconcile;
mod usage;

pub use blobs::{is_over_budget, BlobStore, TempBlob};
pub use eviction::{evict, spawn_evictor, Budget, EvictionReport};
pub use index::{ContentRecord, Index, TagKey, TagRecord};
pub use reconcile::{reconcile, ReconcileReport};
pub use usage::{CacheUsage, Lease};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index error: {0}")]
    Index(#[from] sled::Error),
    #[error("the cache directory is in use by another pullthrough process")]
    InUse,
}

/// How a request was answered, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// A stale tag that the upstream confirmed (HEAD) without a download.
    Revalidated,
    /// Served from cache because the upstream is failing.
    Stale,
    /// Joined a fetch another request started.
    Coalesced,
    /// Relayed from the upstream without caching (cache disk full).
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// Opens (creating if needed) the cache directory: the blob store and index.
pub fn open(dir: &Path, max_size: Option<u64>) -> Result<(BlobStore, Index), CacheError> {
    // The index first: its lock tells us whether another process owns this
    // cache, before anything (emptying tmp/) could disturb that process.
    std::fs::create_dir_all(dir)?;
    let index_dir = dir.join("index");
    let opened = std::panic::catch_unwind(|| Index::open(&index_dir)).unwrap_or_else(|_| {
        Err(sled::Error::Unsupported(
            "the index panicked while opening".into(),
        ))
    });
    let index = match opened {
        Ok(index) => index,
        // I/O errors (another process holding the lock, permissions) are
        // not corruption: refuse to start rather than discard the index.
        Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
            return Err(CacheError::InUse)
        }
        Err(e @ sled::Error::Io(_)) => return Err(CacheError::Index(e)),
        Err(e) => {
            // The index is only metadata: set the broken one aside and start
            // afresh; blobs stay servable and tags are revalidated.
            let aside = dir.join(format!("index.broken-{}", unix_now()));
            tracing::error!(error = %e, aside = %aside.display(), "cache index unreadable; starting a new one");
            std::fs::rename(&index_dir, &aside)?;
            Index::open(&index_dir)?
        }
    };
    let store = BlobStore::open(dir, max_size)?;
    Ok((store, index))
}

/// Seconds since the Unix epoch; the index's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
