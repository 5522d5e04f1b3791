//! Synthetic caches for benchmarks: many small blobs and tags written
//! straight into a cache directory, laid out exactly as the mirror lays
//! out what it pulls (files under `blobs/`, records in the sled index), so
//! a bench can start a mirror on a million-blob cache in a minute.

use super::{ContentRecord, ContentStore, Index, TagKey, TagRecord};
use crate::fetch::accept::AcceptList;
use crate::oci::Digest;
use std::path::Path;

/// What to write.
pub struct Shape {
    /// Layer blobs, each `blob_size` bytes.
    pub blobs: u64,
    pub blob_size: usize,
    /// Tags, ten per repository (`bench/r<n>:t<m>`), each with its own
    /// image manifest referencing four of the blobs.
    pub tags: u64,
    /// The upstream name the tags are recorded under (`docker.io` for the
    /// first upstream of a config).
    pub upstream: String,
    /// The `Accept` value the bench's clients send: tag mappings are kept
    /// per kind of client.
    pub accept: Option<String>,
    /// Unix seconds the tags were last confirmed; access times are spread
    /// over the `blobs + tags` seconds before it.
    pub now: u64,
}

#[derive(Debug, Default)]
pub struct Written {
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub bytes: u64,
}

pub const TAGS_PER_REPO: u64 = 10;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The bytes of blob `i`: distinct per index, padded to `size`.
pub fn blob_bytes(i: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("bigcache blob {i}\n").into_bytes();
    bytes.resize(size.max(bytes.len()), b'.');
    bytes
}

/// The repository and tag of tag number `j`.
pub fn tag_name(j: u64) -> (String, String) {
    (
        format!("bench/r{}", j / TAGS_PER_REPO),
        format!("t{}", j % TAGS_PER_REPO),
    )
}

/// The image manifest of tag `j`: one config and three layers picked
/// from the blobs, and the tag's number, so that no two tags share one.
pub fn manifest_bytes(j: u64, blobs: &[(Digest, u64)]) -> Vec<u8> {
    let n = blobs.len() as u64;
    let descriptor = |k: u64, media_type: &str| {
        let (digest, size) = &blobs[(k % n) as usize];
        format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
    };
    let layers: Vec<String> = (1..4)
        .map(|l| descriptor(j * 4 + l, "application/vnd.oci.image.layer.v1.tar"))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{},"layers":[{}],"annotations":{{"bench.tag":"{j}"}}}}"#,
        descriptor(j * 4, "application/vnd.oci.image.config.v1+json"),
        layers.join(",")
    )
    .into_bytes()
}

/// Writes `shape` into the cache at `dir` (which a mirror must not hold).
/// Files are written without fsync: a bench cache, not a durable one.
pub fn write(dir: &Path, shape: &Shape) -> Result<Written, super::CacheError> {
    let (store, index) = super::open(dir, None, Default::default())?;
    let mut written = Written::default();
    let span = shape.blobs + shape.tags;
    // A deterministic shuffle of access times, so LRU order is not the
    // order of writing.
    let accessed = |k: u64| shape.now - span + (k.wrapping_mul(7919) % span);
    for shard in 0..=255u8 {
        std::fs::create_dir_all(dir.join("blobs/sha256").join(format!("{shard:02x}")))?;
    }
    let mut blobs = Vec::with_capacity(shape.blobs.min(1 << 24) as usize);
    for i in 0..shape.blobs {
        let bytes = blob_bytes(i, shape.blob_size);
        let digest = Digest::of(&bytes);
        let record = ContentRecord {
            media_type: None,
            size: bytes.len() as u64,
            last_access: accessed(i),
            private: false,
        };
        put(&store, &index, &digest, &bytes, &record)?;
        written.blobs += 1;
        written.bytes += record.size;
        blobs.push((digest, record.size));
    }
    let accept = AcceptList::from_client(shape.accept.as_deref()).class();
    // Manifests reference blobs: no blobs, no tags.
    let tags = if blobs.is_empty() { 0 } else { shape.tags };
    for j in 0..tags {
        let bytes = manifest_bytes(j, &blobs);
        let digest = Digest::of(&bytes);
        let record = ContentRecord {
            media_type: Some(MANIFEST_TYPE.to_owned()),
            size: bytes.len() as u64,
            last_access: accessed(shape.blobs + j),
            private: false,
        };
        put(&store, &index, &digest, &bytes, &record)?;
        written.manifests += 1;
        written.bytes += record.size;
        let (repo, tag) = tag_name(j);
        let key = TagKey {
            upstream: shape.upstream.clone(),
            repo: repo.parse().map_err(invalid)?,
            tag: tag.parse().map_err(invalid)?,
            accept: accept.clone(),
        };
        let mapping = TagRecord {
            digest,
            media_type: MANIFEST_TYPE.to_owned(),
            checked_at: shape.now,
        };
        index.put_tag(&key, &mapping)?;
        written.tags += 1;
    }
    index.flush()?;
    Ok(written)
}

fn put(
    store: &super::BlobStore,
    index: &Index,
    digest: &Digest,
    bytes: &[u8],
    record: &ContentRecord,
) -> Result<(), super::CacheError> {
    std::fs::write(ContentStore::path(store, digest), bytes)?;
    index.put_content(digest, record)
}

fn invalid(e: impl std::fmt::Display) -> super::CacheError {
    super::CacheError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        e.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_cache_reconciles_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape {
            blobs: 40,
            blob_size: 64,
            tags: 12,
            upstream: "docker.io".into(),
            accept: None,
            now: 1_000_000,
        };
        let written = write(dir.path(), &shape).unwrap();
        assert_eq!(
            (written.blobs, written.manifests, written.tags),
            (40, 12, 12)
        );
        let (store, index) = super::super::open(dir.path(), None, Default::default()).unwrap();
        let report = super::super::reconcile(&store, &index, false);
        // Every file hashes to its name and has its entry: nothing adopted,
        // nothing removed.
        assert_eq!(report.entries, 52);
        assert_eq!(report.bytes, written.bytes);
        assert_eq!(
            (
                report.adopted,
                report.removed_corrupt,
                report.dropped_entries
            ),
            (0, 0, 0)
        );
        assert_eq!(index.tags().count(), 12);
    }
}
