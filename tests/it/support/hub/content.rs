//! What the stand-in hub stores (blobs, manifests, tags, per repository) and
//! how test images are made: seeded random layers and valid OCI manifests.

use crate::support::sha256_digest;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Platforms given, in order, to the images of `Hub::push_index`.
const PLATFORMS: [(&str, &str); 4] = [
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("linux", "ppc64le"),
    ("linux", "s390x"),
];

/// An image pushed by `Hub::push_image`, with everything a test checks.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub manifest_digest: String,
    pub manifest_bytes: Bytes,
    pub media_type: String,
    /// (digest, bytes) of the config blob.
    pub config: (String, Bytes),
    /// (digest, bytes) of each layer, in manifest order.
    pub layers: Vec<(String, Bytes)>,
}

/// A stored manifest: its media type and its exact bytes.
#[derive(Clone)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// The hub's content. Blob bytes are shared across repositories (the CDN
/// serves them by digest), but a repository only serves what was pushed to it.
#[derive(Default)]
pub struct Store {
    blobs: HashMap<String, Bytes>,
    repo_blobs: HashSet<(String, String)>,
    manifests: HashMap<(String, String), StoredManifest>,
    tags: HashMap<String, BTreeMap<String, String>>,
}

impl Store {
    pub fn put_blob(&mut self, repo: &str, bytes: Bytes) -> String {
        let digest = sha256_digest(&bytes);
        self.blobs.insert(digest.clone(), bytes);
        self.repo_blobs.insert((repo.to_string(), digest.clone()));
        digest
    }

    pub fn put_manifest(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = sha256_digest(&bytes);
        let stored = StoredManifest {
            media_type: media_type.to_string(),
            bytes,
        };
        self.manifests
            .insert((repo.to_string(), digest.clone()), stored);
        if let Some(tag) = tag {
            self.tags
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string(), digest.clone());
        }
        digest
    }

    /// The blob `digest` as served by `repo`'s registry endpoint.
    pub fn blob_in_repo(&self, repo: &str, digest: &str) -> Option<Bytes> {
        if !self
            .repo_blobs
            .contains(&(repo.to_string(), digest.to_string()))
        {
            return None;
        }
        self.blobs.get(digest).cloned()
    }

    /// The blob `digest` as served by the CDN (any repository).
    pub fn blob(&self, digest: &str) -> Option<Bytes> {
        self.blobs.get(digest).cloned()
    }

    /// The digest a tag or digest reference names in `repo`, if known.
    pub fn resolve(&self, repo: &str, reference: &str) -> Option<String> {
        if reference.contains(':') {
            return Some(reference.to_string());
        }
        self.tags.get(repo)?.get(reference).cloned()
    }

    /// Descriptors of the manifests in `repo` whose `subject` is `subject`,
    /// as a registry's referrers API lists them.
    pub fn referrers(&self, repo: &str, subject: &str) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .manifests
            .iter()
            .filter(|((r, _), _)| r == repo)
            .filter_map(|((_, digest), stored)| {
                let doc: serde_json::Value = serde_json::from_slice(&stored.bytes).ok()?;
                (doc["subject"]["digest"].as_str()? == subject).then(|| {
                    let mut d = serde_json::json!({
                        "mediaType": stored.media_type,
                        "digest": digest,
                        "size": stored.bytes.len(),
                    });
                    if let Some(t) = doc.get("artifactType") {
                        d["artifactType"] = t.clone();
                    }
                    d
                })
            })
            .collect();
        out.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        out
    }

    pub fn manifest(&self, repo: &str, digest: &str) -> Option<StoredManifest> {
        self.manifests
            .get(&(repo.to_string(), digest.to_string()))
            .cloned()
    }

    /// Sorted tags of `repo`, or `None` if nothing was ever tagged there.
    /// Repositories with at least one tag, sorted.
    pub fn repositories(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tags.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        self.tags.get(repo).map(|t| t.keys().cloned().collect())
    }
}

/// xorshift64*: deterministic bytes without the rand crate.
pub fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Pretty JSON plus a trailing newline: a mirror that re-serialises a
/// manifest instead of keeping its bytes changes its digest and is caught.
fn to_manifest_bytes(value: &serde_json::Value) -> Bytes {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serialise json");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// The config blob of a test image; `seed` makes each one unique.
pub fn config_bytes(seed: u64, layers: &[(String, Bytes)]) -> Bytes {
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    to_manifest_bytes(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "comment": format!("pullthrough test image {seed:016x}") }],
    }))
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// An OCI image manifest naming `config` and `layers`.
pub fn image_manifest(config: &(String, Bytes), layers: &[(String, Bytes)]) -> Bytes {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, b)| descriptor(OCI_LAYER, d, b.len()))
        .collect();
    to_manifest_bytes(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config.0, config.1.len()),
        "layers": layers,
    }))
}

/// An OCI image index over `images`: linux/amd64, linux/arm64, then more.
pub fn image_index(images: &[&TestImage]) -> Bytes {
    assert!(
        images.len() <= PLATFORMS.len(),
        "push_index takes at most {} images",
        PLATFORMS.len()
    );
    let manifests: Vec<_> = images
        .iter()
        .zip(PLATFORMS)
        .map(|(image, (os, arch))| {
            let mut d = descriptor(
                &image.media_type,
                &image.manifest_digest,
                image.manifest_bytes.len(),
            );
            d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
            d
        })
        .collect();
    to_manifest_bytes(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
}
