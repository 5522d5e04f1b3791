//! Tag mappings as small objects in a shared tier, so replicas know the
//! last mapping any of them served: the object's name, taken from the
//! tag's key, and its JSON body, which names the key again so that a body
//! read under one name is never taken for another tag's.
//!
//! ```text
//! tags/<upstream>/<repository>/_tags/<tag>/<accept class>
//! {"upstream":"docker.io","repo":"library/app","tag":"v1","accept":"0f",
//!  "digest":"sha256:…","media_type":"application/vnd.oci.image.index.v1+json",
//!  "checked_at":1764633600}
//! ```
//!
//! A repository's path components start with a letter or digit, so the
//! `_tags` component cannot be mistaken for part of its name.

use super::{TagKey, TagRecord};
use serde::{Deserialize, Serialize};

/// Longest tag object read back; a real one is a few hundred bytes.
pub const MAX_TAG_OBJECT: usize = 8 * 1024;

#[derive(Serialize, Deserialize)]
struct SharedTag {
    upstream: String,
    repo: String,
    tag: String,
    accept: String,
    #[serde(flatten)]
    record: TagRecord,
}

/// The object's name under the tier's prefix.
pub fn object_name(key: &TagKey) -> String {
    format!(
        "tags/{}/{}/_tags/{}/{}",
        key.upstream, key.repo, key.tag, key.accept
    )
}

pub fn encode(key: &TagKey, record: &TagRecord) -> Vec<u8> {
    let shared = SharedTag {
        upstream: key.upstream.clone(),
        repo: key.repo.to_string(),
        tag: key.tag.to_string(),
        accept: key.accept.clone(),
        record: record.clone(),
    };
    // Plain strings, a digest and a number: this cannot fail.
    serde_json::to_vec(&shared).unwrap_or_default()
}

/// The mapping in `body`, if it is one and is about `key`.
pub fn decode(key: &TagKey, body: &[u8]) -> Option<TagRecord> {
    let shared: SharedTag = serde_json::from_slice(body).ok()?;
    let same = shared.upstream == key.upstream
        && shared.repo == key.repo.as_str()
        && shared.tag == key.tag.as_str()
        && shared.accept == key.accept;
    same.then_some(shared.record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, RepoName, Tag};

    fn key(tag: &str) -> TagKey {
        TagKey {
            upstream: "docker.io".into(),
            repo: "library/app".parse::<RepoName>().unwrap(),
            tag: tag.parse::<Tag>().unwrap(),
            accept: "0f".into(),
        }
    }

    #[test]
    fn a_mapping_reads_back_only_under_its_own_key() {
        let record = TagRecord {
            digest: Digest::of(b"manifest"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            checked_at: 1_764_633_600,
        };
        let body = encode(&key("v1"), &record);
        assert_eq!(decode(&key("v1"), &body), Some(record));
        assert_eq!(decode(&key("v2"), &body), None);
        assert_eq!(decode(&key("v1"), b"{\"not\":\"a tag\"}"), None);
        assert_eq!(
            object_name(&key("v1")),
            "tags/docker.io/library/app/_tags/v1/0f"
        );
    }
}
