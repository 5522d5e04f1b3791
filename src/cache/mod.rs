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

/// Opens (creating if needed) the cache directory: the blob store and index.
pub fn open(dir: &Path) -> Result<(BlobStore, Index), CacheError> {
    let store = BlobStore::open(dir)?;
    let index = Index::open(&dir.join("index"))?;
    Ok((store, index))
}

/// Seconds since the Unix epoch; the index's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
