//! The sled index: which digest a tag pointed at and when we last checked,
//! and per-digest metadata (media type, size, last access). Everything here
//! can be rebuilt from `blobs/` or by asking the upstream again.

use super::CacheError;
use crate::oci::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Identifies a tag on one upstream: two registries' `app:latest` never mix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
    /// As the upstream knows it (`library/ubuntu` on Docker Hub).
    pub repo: RepoName,
    pub tag: Tag,
    /// Which manifest kinds the asking client takes: an upstream answers
    /// a multi-arch tag with the index for one client and with a single
    /// image's manifest for another, so each kind has its own mapping.
    pub accept: String,
}

impl TagKey {
    fn encode(&self) -> Vec<u8> {
        // NUL cannot occur in validated names or tags.
        format!(
            "{}\0{}\0{}\0{}",
            self.upstream, self.repo, self.tag, self.accept
        )
        .into_bytes()
    }
}

fn link_key(upstream: &str, repo: &str, digest: &Digest) -> Vec<u8> {
    format!("{upstream}\0{repo}\0{}", digest.hex()).into_bytes()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    /// When the upstream last confirmed this mapping (Unix seconds).
    pub checked_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    /// Set for manifests: the upstream's `Content-Type`, served byte-exact.
    pub media_type: Option<String>,
    pub size: u64,
    pub last_access: u64,
    /// Fetched with upstream credentials (or of unknown origin): served
    /// only under repositories known to hold it (see `visibility`).
    /// Records from before this field existed are of unknown origin.
    #[serde(default = "unknown_origin")]
    pub private: bool,
}

fn unknown_origin() -> bool {
    true
}

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    tags: sled::Tree,
    content: sled::Tree,
    /// (upstream, repository, digest) triples the upstream confirmed.
    links: sled::Tree,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Index, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()?;
        let tags = db.open_tree("tags")?;
        let content = db.open_tree("content")?;
        let links = db.open_tree("links")?;
        Ok(Index {
            db,
            tags,
            content,
            links,
        })
    }

    /// A tag's mapping; a record that no longer decodes (written by an
    /// older version, or damaged) reads as absent: it only costs one
    /// revalidation.
    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, CacheError> {
        Ok(self
            .tags
            .get(key.encode())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<(), CacheError> {
        let value = serde_json::to_vec(record)?;
        self.tags.insert(key.encode(), value)?;
        Ok(())
    }

    /// Drops a tag mapping (an admin purge); the content stays until
    /// evicted or purged by digest.
    pub fn remove_tag(&self, key: &TagKey) -> Result<(), CacheError> {
        self.tags.remove(key.encode())?;
        Ok(())
    }

    pub fn content(&self, digest: &Digest) -> Result<Option<ContentRecord>, CacheError> {
        Ok(self
            .content
            .get(digest.hex())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn put_content(&self, digest: &Digest, record: &ContentRecord) -> Result<(), CacheError> {
        let value = serde_json::to_vec(record)?;
        self.content.insert(digest.hex(), value)?;
        Ok(())
    }

    /// Updates a record's last access (from the batched tracker).
    pub fn touch_content(&self, hex: &str, at: u64) -> Result<(), sled::Error> {
        self.content.fetch_and_update(hex, |old| {
            let mut record: ContentRecord = serde_json::from_slice(old?).ok()?;
            record.last_access = record.last_access.max(at);
            serde_json::to_vec(&record).ok()
        })?;
        Ok(())
    }

    pub fn remove_content(&self, hex: &str) -> Result<(), sled::Error> {
        self.content.remove(hex)?;
        Ok(())
    }

    /// Records that the upstream holds `digest` in `repo`.
    pub fn link(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<(), CacheError> {
        self.links
            .insert(link_key(upstream, repo, digest), &[] as &[u8])?;
        Ok(())
    }

    pub fn is_linked(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, CacheError> {
        Ok(self.links.contains_key(link_key(upstream, repo, digest))?)
    }

    /// Every content record, by digest hex; unreadable entries are skipped.
    pub fn contents(&self) -> impl Iterator<Item = (String, ContentRecord)> + '_ {
        self.content.iter().filter_map(|kv| {
            let (k, v) = kv.ok()?;
            let hex = String::from_utf8(k.to_vec()).ok()?;
            Some((hex, serde_json::from_slice(&v).ok()?))
        })
    }

    /// Every tag mapping.
    pub fn tags(&self) -> impl Iterator<Item = (TagKey, TagRecord)> + '_ {
        self.tags.iter().filter_map(|kv| {
            let (k, v) = kv.ok()?;
            let key = String::from_utf8(k.to_vec()).ok()?;
            let mut parts = key.splitn(4, '\0');
            let key = TagKey {
                upstream: parts.next()?.to_owned(),
                repo: parts.next()?.parse().ok()?,
                tag: parts.next()?.parse().ok()?,
                accept: parts.next().unwrap_or_default().to_owned(),
            };
            Some((key, serde_json::from_slice(&v).ok()?))
        })
    }

    /// Writes everything buffered to disk (before an offline command exits).
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    /// Whether the index can still write (for readiness).
    pub fn is_healthy(&self) -> bool {
        self.db.was_recovered() || self.db.size_on_disk().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_keyed_by_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let hub = TagKey {
            upstream: "docker.io".into(),
            repo: "library/app".parse().unwrap(),
            tag: "latest".parse().unwrap(),
            accept: "1f".into(),
        };
        let ghcr = TagKey {
            upstream: "ghcr.io".into(),
            ..hub.clone()
        };
        let record = TagRecord {
            digest: Digest::of(b"x"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            checked_at: 1,
        };
        index.put_tag(&hub, &record).unwrap();
        assert_eq!(index.tag(&hub).unwrap(), Some(record));
        assert_eq!(index.tag(&ghcr).unwrap(), None);
    }

    #[test]
    fn records_from_before_the_private_flag_count_as_private() {
        let old: ContentRecord =
            serde_json::from_str(r#"{"media_type":null,"size":3,"last_access":7}"#).unwrap();
        assert!(old.private);
    }
}
