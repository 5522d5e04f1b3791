//! The storage seams: [`ContentStore`] for the local tier readers tail, and
//! [`Tier`] for further tiers looked up after it (see the module tour).

use super::{BlobStore, CacheError, CacheUsage, TagKey, TagRecord, TempBlob};
use crate::oci::Digest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// A complete, verified blob opened for reading.
pub struct StoredBlob {
    pub file: File,
    pub len: u64,
}

/// A file found in the store by [`ContentStore::list`]. One lying beside
/// the shard directories comes with an empty shard name, so it can never
/// pass for content.
pub struct StoredFile {
    pub shard: String,
    pub name: String,
    pub path: PathBuf,
    pub len: u64,
}

/// The local tier: complete blobs by digest, and new ones written to a
/// temp file (which readers may tail), verified by the caller, committed.
pub trait ContentStore: Send + Sync {
    /// A complete blob, or `None` if it is not here.
    fn open(&self, digest: &Digest) -> Result<Option<StoredBlob>, CacheError>;
    /// Small content (a manifest) read whole, if present and at most
    /// `max` bytes long.
    fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, CacheError>;
    /// A temp file for a new blob, with `len` bytes reserved within the
    /// budget when the length is known.
    fn begin(&self, len: Option<u64>) -> Result<TempBlob, CacheError>;
    /// Reserves `by` more bytes for a temp file begun without a length.
    fn grow(&self, temp: &mut TempBlob, by: u64) -> Result<(), CacheError>;
    /// Makes a verified temp file durable and visible under `digest`.
    fn commit(&self, temp: TempBlob, digest: &Digest) -> Result<(), CacheError>;
    /// Stores small content held in memory, verifying it first.
    fn put_small(&self, bytes: &[u8], digest: &Digest) -> Result<(), CacheError>;
    /// Deletes a blob; returns the bytes freed. Readers that have it open
    /// keep reading the same inode.
    fn remove(&self, digest: &Digest) -> Result<u64, CacheError>;
    /// Whether a complete blob is here.
    fn contains(&self, digest: &Digest) -> bool;
    /// Every stored file, for reconciliation with the index.
    fn list(&self) -> Box<dyn Iterator<Item = StoredFile> + '_>;
    /// Where a complete blob lives, for uploading it to another tier.
    fn path(&self, digest: &Digest) -> PathBuf;
    /// Sizes, access times and read leases of what is stored.
    fn usage(&self) -> &Arc<CacheUsage>;
    /// Proves the store writable by creating (and dropping) a temp file.
    fn check_writable(&self) -> Result<(), CacheError>;
}

impl ContentStore for BlobStore {
    fn open(&self, digest: &Digest) -> Result<Option<StoredBlob>, CacheError> {
        Ok(self
            .open_blob(digest)?
            .map(|(file, len)| StoredBlob { file, len }))
    }

    fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, CacheError> {
        match std::fs::metadata(BlobStore::path(self, digest)) {
            Ok(m) if m.len() <= max => Ok(self.read(digest)?),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn begin(&self, len: Option<u64>) -> Result<TempBlob, CacheError> {
        self.create_temp_reserved(len)
    }

    fn grow(&self, temp: &mut TempBlob, by: u64) -> Result<(), CacheError> {
        self.grow_reservation(temp, by)
    }

    fn commit(&self, temp: TempBlob, digest: &Digest) -> Result<(), CacheError> {
        Ok(BlobStore::commit(self, temp, digest)?)
    }

    fn put_small(&self, bytes: &[u8], digest: &Digest) -> Result<(), CacheError> {
        Ok(self.write_verified(bytes, digest)?)
    }

    fn remove(&self, digest: &Digest) -> Result<u64, CacheError> {
        Ok(BlobStore::remove(self, digest.hex())?)
    }

    fn contains(&self, digest: &Digest) -> bool {
        BlobStore::contains(self, digest)
    }

    fn list(&self) -> Box<dyn Iterator<Item = StoredFile> + '_> {
        Box::new(self.walk().map(|(shard, name, path, len)| StoredFile {
            shard,
            name,
            path,
            len,
        }))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        BlobStore::path(self, digest)
    }

    fn usage(&self) -> &Arc<CacheUsage> {
        BlobStore::usage(self)
    }

    fn check_writable(&self) -> Result<(), CacheError> {
        self.create_temp().map(drop).map_err(CacheError::from)
    }
}

/// Bytes a tier answered with, to be verified as they are written locally.
pub struct TierBody {
    pub len: Option<u64>,
    /// The media type stored with the object (a manifest's, as its
    /// upstream served it); `None` for plain bytes.
    pub media_type: Option<String>,
    pub stream: BoxStream<'static, Result<Bytes, CacheError>>,
}

/// How a further tier has been doing, for `/readyz`: a failing tier
/// never makes the replica unready, but an operator should see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierHealth {
    /// Failing now: calls skip it for a few seconds at a time.
    pub failing: bool,
    /// Failed calls since start.
    pub errors: u64,
    /// When the last call failed (Unix seconds), and which operation.
    pub last_error: Option<(u64, &'static str)>,
}

/// A further tier below the local one (an object store shared by
/// replicas). Lookups that fail are logged and treated as misses: a tier
/// is an optimisation, never a reason to fail a pull.
pub trait Tier: Send + Sync {
    /// For logs and metric labels.
    fn name(&self) -> &'static str;
    /// Errors so far, and whether the tier is failing now.
    fn health(&self) -> TierHealth;
    /// The blob's bytes, or `None` if this tier does not have it.
    fn get<'a>(&'a self, digest: &'a Digest)
        -> BoxFuture<'a, Result<Option<TierBody>, CacheError>>;
    /// Stores a verified local blob (called in the background after a
    /// download from the upstream), with its media type for manifests.
    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        path: PathBuf,
        media_type: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), CacheError>>;
    /// Deletes a blob that failed verification when read from this tier.
    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), CacheError>>;
    /// The last mapping of a tag that any replica recorded here, so a
    /// replica that lacks it answers the tag as the one that has it would.
    fn get_tag<'a>(&'a self, key: &'a TagKey) -> BoxFuture<'a, Option<TagRecord>>;
    /// Records a tag's mapping for the other replicas (in the background).
    fn put_tag<'a>(&'a self, key: &'a TagKey, record: &'a TagRecord) -> BoxFuture<'a, ()>;
    /// Whether clients are sent to this tier for blobs it holds.
    fn redirects(&self) -> bool;
    /// A short-lived URL a client may GET the blob from directly, if this
    /// tier redirects and holds the blob.
    fn presign<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<url::Url>>;
}
