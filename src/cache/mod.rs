//! The disk cache: content-addressed files under `blobs/`, downloads in
//! progress under `tmp/`, and the sled index of tags and metadata.
//!
//! ```text
//! <cache dir>/
//!   blobs/sha256/ab/abcdef…   complete, verified content (layers and manifests)
//!   tmp/                      partial downloads; emptied at start-up
//!   index/                    sled: tags → digests, media types, sizes, access times
//! ```
//!
//! # Tiers
//!
//! Content by digest is looked up in the local tier first, then in any
//! further [`Tier`]s in order, then upstream. The local tier is a
//! [`ContentStore`] (today [`BlobStore`], a directory): downloads from any
//! source are written there, hashed as they go, and tailed by every
//! reader, so the local tier is where bytes become servable. A further
//! tier (an object store shared by replicas) implements [`Tier`]: the
//! fetch core asks it after a local miss and before the upstream, streams
//! what it answers through the same verified download as upstream bytes,
//! and uploads a verified upstream download to it in the background. A
//! tier never serves bytes the local tier has not verified.
//!
//! The one further tier today is [`S3Tier`] (`storage = "s3://…"`): a
//! bucket on an S3-compatible store, shared by replicas, signed with our
//! own SigV4 over the same reqwest client stack as the upstreams. Besides
//! content it keeps tag mappings (`shared_tags`), can presign redirects
//! (`s3_redirect`), and is listed by the offline commands (`bucket`).

mod blobs;
mod bucket;
mod eviction;
mod index;
mod reconcile;
mod s3;
mod shared_tags;
mod sigv4;
mod store;
pub mod synthetic;
mod usage;

pub use blobs::{BlobStore, TempBlob};
pub use bucket::{Bucket, BucketInventory};
pub use eviction::{evict, spawn_evictor, Budget, EvictionReport};
pub use index::{ContentRecord, Index, TagKey, TagRecord};
pub use reconcile::{reconcile, ReconcileReport};
pub use s3::S3Tier;
pub use store::{ContentStore, StoredFile, Tier, TierHealth};
pub use usage::{CacheUsage, Lease};

use crate::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;

/// Everything that can go wrong in the cache; `Io` keeps the
/// `io::ErrorKind` (a full disk is `StorageFull`).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index error: {0}")]
    Index(#[from] sled::Error),
    #[error("cache index record cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the cache directory is in use by another pullthrough process")]
    InUse,
    /// The blob would fit the budget, but not beside what is cached and
    /// downloading now: eviction can make room.
    #[error("the cache is at its budget until eviction makes room")]
    OverBudget,
    #[error("blob is larger than the cache budget")]
    LargerThanBudget,
    #[error("cache task failed: {0}")]
    Task(String),
}

impl CacheError {
    /// The cache cannot take this content now (disk full, budget too
    /// small): serve it past the cache instead of failing.
    pub fn is_no_space(&self) -> bool {
        match self {
            CacheError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            CacheError::OverBudget | CacheError::LargerThanBudget => true,
            _ => false,
        }
    }
}

/// Runs blocking cache work (sled, file metadata, fsync) on the blocking
/// pool, never on the async threads.
pub async fn blocking<T, F>(work: F) -> Result<T, CacheError>
where
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CacheError::Task(e.to_string()))?
}

/// Opens (creating if needed) the cache directory: the blob store and index.
pub fn open(
    dir: &Path,
    max_size: Option<u64>,
    metrics: Arc<Metrics>,
) -> Result<(BlobStore, Index), CacheError> {
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
    let store = BlobStore::open(dir, max_size, metrics)?;
    Ok((store, index))
}

/// Seconds since the Unix epoch; the index's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
