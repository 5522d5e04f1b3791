//! What an image is made of (index → manifests → config and layers) as
//! far as a content store holds it, and the OCI image layout's own files.

use crate::cache::ContentStore;
use crate::oci::{Digest, MAX_MANIFEST_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The tag, as `skopeo`, `podman load` and `ctr import` read it.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name with its registry, as containerd writes and reads it.
pub const IMAGE_NAME: &str = "io.containerd.image.name";

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// The top-level `index.json` of an image layout.
#[derive(Debug, Deserialize, Serialize)]
pub struct LayoutIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// Any manifest kind, read for the digests it names.
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Schema 1.
    #[serde(rename = "fsLayers", default)]
    fs_layers: Vec<FsLayer>,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// Everything one image needs that the store holds, each digest once.
#[derive(Default)]
pub struct Closure {
    /// Manifests with their media type and length, the top one first.
    pub manifests: Vec<(Digest, String, u64)>,
    pub blobs: Vec<(Digest, u64)>,
    /// Index entries left out because the store lacks them or their
    /// blobs (e.g. the platforms nobody pulled).
    pub omitted: Vec<String>,
}

impl Closure {
    pub fn bytes(&self) -> u64 {
        self.manifests.iter().map(|m| m.2).sum::<u64>()
            + self.blobs.iter().map(|b| b.1).sum::<u64>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("manifest {0} is not in the cache")]
    Manifest(Digest),
    #[error("manifest {0} is not valid JSON of a known kind")]
    Unreadable(Digest),
    #[error("blob {blob} of manifest {manifest} is not in the cache")]
    Blob { manifest: Digest, blob: Digest },
    #[error("{0:?} is not a digest")]
    BadDigest(String),
    #[error("none of the {0} platforms of index {1} is complete in the cache")]
    NoPlatform(usize, Digest),
    #[error("cannot read the cache: {0}")]
    Store(String),
}

/// Walks an image from its top manifest. An index keeps the entries the
/// store holds completely and names the others in `omitted`; a manifest
/// lacking a blob is an error naming it.
pub fn closure(store: &dyn ContentStore, top: &Digest) -> Result<Closure, Missing> {
    let mut out = Closure::default();
    let mut seen = HashSet::new();
    walk(store, top, None, &mut out, &mut seen)?;
    Ok(out)
}

fn walk(
    store: &dyn ContentStore,
    digest: &Digest,
    declared: Option<&str>,
    out: &mut Closure,
    seen: &mut HashSet<Digest>,
) -> Result<(), Missing> {
    if !seen.insert(digest.clone()) {
        return Ok(());
    }
    let bytes = store
        .read_small(digest, MAX_MANIFEST_BYTES as u64)
        .map_err(|e| Missing::Store(e.to_string()))?
        .ok_or_else(|| Missing::Manifest(digest.clone()))?;
    let doc: Document =
        serde_json::from_slice(&bytes).map_err(|_| Missing::Unreadable(digest.clone()))?;
    let media_type = declared
        .map(str::to_owned)
        .or(doc.media_type.clone())
        .unwrap_or_else(|| {
            if doc.manifests.is_some() {
                INDEX_MEDIA_TYPE
            } else {
                OCI_MANIFEST
            }
            .to_owned()
        });
    out.manifests
        .push((digest.clone(), media_type, bytes.len() as u64));
    if let Some(children) = &doc.manifests {
        let mut complete = 0;
        for child in children {
            let child_digest = parse_digest(&child.digest)?;
            // Each entry is tried on a copy, so a half-held platform
            // leaves nothing behind.
            let (mut trial, mut trial_seen) = (Closure::default(), seen.clone());
            match walk(
                store,
                &child_digest,
                child.media_type.as_deref(),
                &mut trial,
                &mut trial_seen,
            ) {
                Ok(()) => {
                    complete += 1;
                    out.manifests.append(&mut trial.manifests);
                    out.blobs.append(&mut trial.blobs);
                    out.omitted.append(&mut trial.omitted);
                    *seen = trial_seen;
                }
                Err(Missing::Store(e)) => return Err(Missing::Store(e)),
                Err(_) => out.omitted.push(match &child.platform {
                    Some(p) => p.to_string(),
                    None => child_digest.to_string(),
                }),
            }
        }
        if complete == 0 && !children.is_empty() {
            return Err(Missing::NoPlatform(children.len(), digest.clone()));
        }
        return Ok(());
    }
    let named = doc
        .config
        .iter()
        .chain(&doc.layers)
        .map(|d| (d.digest.as_str(), !d.urls.is_empty()))
        .chain(doc.fs_layers.iter().map(|l| (l.blob_sum.as_str(), false)));
    for (blob, foreign) in named {
        let blob = parse_digest(blob)?;
        if !seen.insert(blob.clone()) {
            continue;
        }
        let opened = store
            .open(&blob)
            .map_err(|e| Missing::Store(e.to_string()))?;
        match opened {
            Some(stored) => out.blobs.push((blob, stored.len)),
            // Foreign layers (Windows base images) come from their URLs,
            // never from a registry.
            None if foreign => {}
            None => {
                return Err(Missing::Blob {
                    manifest: digest.clone(),
                    blob,
                })
            }
        }
    }
    Ok(())
}

pub fn parse_digest(s: &str) -> Result<Digest, Missing> {
    s.parse()
        .map_err(|_| Missing::BadDigest(s.chars().take(80).collect()))
}

/// `blobs/<alg>/<hex>`, the only place content lives in a layout.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}
