//! What the shared bucket holds, for the offline commands (`gc`, `cache
//! stats|ls`): every content object with its size and every tag object,
//! from ListObjectsV2 pages, so they can say what is local and what is
//! only in the bucket.

use super::shared_tags;
use super::{S3Tier, TagKey, TagRecord};
use crate::config::S3Settings;
use crate::metrics::Metrics;
use crate::oci::Digest;
use std::collections::HashMap;

/// Listing pages read at most (1,000 keys each).
const MAX_PAGES: usize = 10_000;

/// A tag object found in the bucket.
#[derive(Clone, Debug)]
pub struct SharedTagObject {
    pub key: TagKey,
    object: String,
}

/// The bucket's content and tags.
#[derive(Default, Debug)]
pub struct BucketInventory {
    /// Content (blobs and manifests) by digest, with its size.
    pub content: HashMap<Digest, u64>,
    pub tags: Vec<SharedTagObject>,
}

impl BucketInventory {
    pub fn bytes(&self) -> u64 {
        self.content.values().sum()
    }
}

/// Reads the bucket's listing, and tag objects when asked, from outside
/// any server: a runtime of its own, for the offline commands.
pub struct Bucket {
    tier: S3Tier,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn open(settings: &S3Settings) -> Result<Bucket, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let tier = S3Tier::new(settings.clone(), Metrics::new())
            .map_err(|e| format!("cannot build the object-store client: {e}"))?;
        Ok(Bucket { tier, runtime })
    }

    /// Every content and tag object under the prefix.
    pub fn inventory(&self) -> Result<BucketInventory, String> {
        self.runtime.block_on(async {
            let mut inventory = BucketInventory::default();
            let dir = self.tier.prefix_dir();
            for (key, size) in self.list("blobs/sha256/").await? {
                let hex = key.rsplit('/').next().unwrap_or_default();
                if let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() {
                    inventory.content.insert(digest, size);
                }
            }
            for (object, _) in self.list("tags/").await? {
                let name = object.strip_prefix(&dir).unwrap_or(&object);
                if let Some(key) = tag_key_of(name) {
                    inventory.tags.push(SharedTagObject { key, object });
                }
            }
            Ok(inventory)
        })
    }

    /// The mapping a tag object holds (one GET).
    pub fn tag(&self, tag: &SharedTagObject) -> Option<TagRecord> {
        self.runtime
            .block_on(self.tier.read_tag(&tag.object, &tag.key))
    }

    async fn list(&self, under: &str) -> Result<Vec<(String, u64)>, String> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.tier.list_page(under, token.as_deref()).await?;
            let page = String::from_utf8_lossy(&page);
            for contents in page.split("<Contents>").skip(1) {
                let key = between(contents, "Key").map(unescape);
                let size = between(contents, "Size").and_then(|s| s.parse().ok());
                if let (Some(key), Some(size)) = (key, size) {
                    found.push((key, size));
                }
            }
            let truncated = between(&page, "IsTruncated") == Some("true");
            token = between(&page, "NextContinuationToken").map(unescape);
            if !truncated || token.is_none() {
                return Ok(found);
            }
        }
        Err(format!("more than {MAX_PAGES} listing pages"))
    }
}

/// `tags/<upstream>/<repo>/_tags/<tag>/<class>` → its key.
fn tag_key_of(name: &str) -> Option<TagKey> {
    let rest = name.strip_prefix("tags/")?;
    let (path, class) = rest.rsplit_once('/')?;
    let (path, tag) = path.rsplit_once('/')?;
    let path = path.strip_suffix("/_tags")?;
    let (upstream, repo) = path.split_once('/')?;
    let key = TagKey {
        upstream: upstream.to_owned(),
        repo: repo.parse().ok()?,
        tag: tag.parse().ok()?,
        accept: class.to_owned(),
    };
    (shared_tags::object_name(&key) == name).then_some(key)
}

fn between<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_object_names_parse_back_to_their_keys() {
        let key = tag_key_of("tags/docker.io/library/app/_tags/v1.2/0f").unwrap();
        assert_eq!(key.upstream, "docker.io");
        assert_eq!(key.repo.as_str(), "library/app");
        assert_eq!(key.tag.as_str(), "v1.2");
        assert_eq!(key.accept, "0f");
        assert!(tag_key_of("tags/docker.io/library/app/v1/0f").is_none());
        assert!(tag_key_of("blobs/sha256/ab").is_none());
    }
}
