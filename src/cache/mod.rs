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
mod index;

pub use blobs::{BlobStore, TempBlob};
pub use index::{ContentRecord, Index, TagKey, TagRecord};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index error: {0}")]
    Index(#[from] sled::Error),
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
pub fn open(dir: &Path) -> Result<(BlobStore, Index), CacheError> {
    let store = BlobStore::open(dir)?;
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
    Ok((store, index))
}

/// Counts what is already in `blobs/` into the size metrics, off the
/// request path: a large cache must not delay start-up.
pub fn spawn_size_scan(dir: std::path::PathBuf) {
    tokio::task::spawn_blocking(move || {
        let (mut bytes, mut entries) = (0u64, 0u64);
        let shards = std::fs::read_dir(dir.join("blobs").join("sha256"))
            .into_iter()
            .flatten()
            .flatten();
        for shard in shards {
            for file in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(meta) = file.metadata() {
                    bytes += meta.len();
                    entries += 1;
                }
            }
        }
        let m = crate::metrics::metrics();
        m.cache_size_bytes.add(bytes as i64);
        m.cache_entries.add(entries as i64);
    });
}

/// Seconds since the Unix epoch; the index's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
