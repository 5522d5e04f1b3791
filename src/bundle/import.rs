//! `pullthrough import`: a bundle read as it streams in, every blob
//! hashed against its name before the cache keeps it, and the tags added
//! only once the whole bundle proved complete; any failure takes back
//! every blob this import added.

use super::layout::{self, Closure, LayoutIndex, IMAGE_NAME, REF_NAME};
use super::tar::TarReader;
use super::BundleError;
use crate::cache::{unix_now, ContentRecord, ContentStore, Index, TagKey, TagRecord};
use crate::fetch::accept::classes_taking;
use crate::oci::{Digest, DigestWriter, ImageName, Reference, MAX_MANIFEST_BYTES};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

#[derive(Serialize, Deserialize, Debug)]
pub struct ImportedImage {
    /// The name the bundle gave it, if any.
    pub image: Option<String>,
    pub digest: String,
    /// Platforms of an index the bundle does not hold.
    pub omitted: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    /// Blobs (manifests included) the cache did not have.
    pub added: u64,
    pub added_bytes: u64,
    /// Blobs the cache had already (their bundle copies were verified all
    /// the same).
    pub present: u64,
    pub warnings: Vec<String>,
}

/// Adds the bundle read from `input` to an open cache. `upstreams` names
/// the registries the mirror serves, to warn about images no client could
/// reach.
pub fn import_into(
    store: &dyn ContentStore,
    index: &Index,
    input: impl Read,
    upstreams: &[String],
) -> Result<ImportReport, BundleError> {
    let mut report = ImportReport::default();
    let mut added = Vec::new();
    let result = import_checked(store, index, input, upstreams, &mut report, &mut added);
    if result.is_err() {
        for digest in &added {
            if let Err(e) = store.remove(digest) {
                tracing::warn!(%digest, error = %e, "cannot take back a blob of a rejected bundle");
            }
        }
    }
    result.map(|()| report)
}

fn import_checked(
    store: &dyn ContentStore,
    index: &Index,
    input: impl Read,
    upstreams: &[String],
    report: &mut ImportReport,
    added: &mut Vec<Digest>,
) -> Result<(), BundleError> {
    let mut tar = TarReader::new(input);
    let mut layout_index = None;
    let mut saw_layout = false;
    while let Some(entry) = tar.next_entry()? {
        match entry.path.as_str() {
            "oci-layout" => {
                let bytes = read_small(&mut tar, &entry.path, entry.len, 4096)?;
                let version = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_owned));
                if version.is_none() {
                    return Err(BundleError::BadIndex(
                        "oci-layout names no imageLayoutVersion".into(),
                    ));
                }
                saw_layout = true;
            }
            "index.json" => {
                let bytes =
                    read_small(&mut tar, &entry.path, entry.len, MAX_MANIFEST_BYTES as u64)?;
                let parsed: LayoutIndex = serde_json::from_slice(&bytes)
                    .map_err(|e| BundleError::BadIndex(e.to_string()))?;
                layout_index = Some(parsed);
            }
            path if path.starts_with("blobs/") => {
                let digest = entry_digest(path)?;
                let new = store_blob(store, &mut tar, path, entry.len, &digest)?;
                if new {
                    added.push(digest);
                    report.added += 1;
                    report.added_bytes += entry.len;
                } else {
                    report.present += 1;
                }
            }
            _ => {}
        }
    }
    if !saw_layout {
        report
            .warnings
            .push("the bundle has no oci-layout file".to_owned());
    }
    let layout_index = layout_index.ok_or(BundleError::NoIndex)?;
    // Every image proves complete before any tag is written.
    let mut images: Vec<(Option<ImageName>, Digest, Closure)> = Vec::new();
    for entry in &layout_index.manifests {
        let digest = layout::parse_digest(&entry.digest)
            .map_err(|e| BundleError::BadIndex(e.to_string()))?;
        let name = name_of(&entry.annotations);
        let shown = name
            .as_ref()
            .map_or_else(|| digest.to_string(), ToString::to_string);
        let closure =
            layout::closure(store, &digest).map_err(|missing| BundleError::BundleIncomplete {
                image: shown.clone(),
                missing: missing.to_string(),
            })?;
        match &name {
            None => report.warnings.push(format!(
                "{digest} has no image name ({IMAGE_NAME}): its content was added, no tag"
            )),
            Some(n) if !upstreams.is_empty() && !upstreams.contains(&n.registry) => report.warnings.push(format!(
                "{n}: no upstream named {} is configured; its tag is kept but no client can reach it until one is",
                n.registry
            )),
            Some(_) => {}
        }
        images.push((name, digest, closure));
    }
    let now = unix_now();
    for (name, digest, closure) in images {
        record(index, name.as_ref(), &closure, now)?;
        report.images.push(ImportedImage {
            image: name.map(|n| n.to_string()),
            digest: digest.to_string(),
            omitted: closure.omitted,
        });
    }
    index.flush().map_err(|e| BundleError::Cache(e.into()))?;
    Ok(())
}

fn read_small<R: Read>(
    tar: &mut TarReader<R>,
    path: &str,
    len: u64,
    max: u64,
) -> Result<Vec<u8>, BundleError> {
    if len > max {
        return Err(BundleError::BadEntry(format!(
            "{path} is larger than {max} bytes"
        )));
    }
    let mut bytes = Vec::new();
    tar.body()
        .read_to_end(&mut bytes)
        .map_err(BundleError::Read)?;
    Ok(bytes)
}

/// `blobs/<alg>/<hex>`: the name is the only thing taken from the entry's
/// path, and only once it parses as a digest.
fn entry_digest(path: &str) -> Result<Digest, BundleError> {
    let bad = || BundleError::BadEntry(path.chars().take(120).collect());
    let (alg, hex) = path["blobs/".len()..].split_once('/').ok_or_else(bad)?;
    format!("{alg}:{hex}").parse().map_err(|_| bad())
}

/// Hashes one blob entry; a blob new to the cache goes through a temp file
/// committed only if the hash matches. Returns whether it was new.
fn store_blob<R: Read>(
    store: &dyn ContentStore,
    tar: &mut TarReader<R>,
    path: &str,
    len: u64,
    digest: &Digest,
) -> Result<bool, BundleError> {
    let mut hasher = DigestWriter::default();
    let mut buf = vec![0u8; 1 << 20];
    let present = store.contains(digest);
    let temp = if present {
        None
    } else {
        Some(store.begin(Some(len))?)
    };
    let mut body = tar.body();
    loop {
        let n = body.read(&mut buf).map_err(BundleError::Read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(temp) = &temp {
            (&**temp.file())
                .write_all(&buf[..n])
                .map_err(|e| BundleError::Cache(e.into()))?;
        }
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(BundleError::Mismatch {
            path: path.to_owned(),
            actual: actual.to_string(),
        });
    }
    match temp {
        Some(temp) => {
            store.commit(temp, digest)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

fn name_of(annotations: &std::collections::BTreeMap<String, String>) -> Option<ImageName> {
    if let Some(name) = annotations.get(IMAGE_NAME) {
        return name.parse().ok();
    }
    // Some tools put the full name in ref.name; a bare tag names nothing.
    annotations
        .get(REF_NAME)
        .filter(|n| n.contains('/'))
        .and_then(|n| n.parse().ok())
}

/// Index records for one image: content, the links that say its
/// repository holds it, and its tag for every kind of client that takes
/// its top manifest.
fn record(
    index: &Index,
    name: Option<&ImageName>,
    closure: &Closure,
    now: u64,
) -> Result<(), BundleError> {
    let manifests = closure
        .manifests
        .iter()
        .map(|(d, m, len)| (d, Some(m.clone()), *len));
    let blobs = closure.blobs.iter().map(|(d, len)| (d, None, *len));
    for (digest, media_type, size) in manifests.chain(blobs) {
        // What the cache knew already (and how it got it) stays.
        if index.content(digest)?.is_none() {
            let record = ContentRecord {
                media_type,
                size,
                last_access: now,
                private: false,
            };
            index.put_content(digest, &record)?;
        }
        if let Some(name) = name {
            index.link(&name.registry, name.repo.as_str(), digest)?;
        }
    }
    let (Some(name), Some((top, media_type, _))) = (name, closure.manifests.first()) else {
        return Ok(());
    };
    if let Reference::Tag(tag) = &name.reference {
        for class in classes_taking(media_type) {
            let key = TagKey {
                upstream: name.registry.clone(),
                repo: name.repo.clone(),
                tag: tag.clone(),
                accept: class,
            };
            let record = TagRecord {
                digest: top.clone(),
                media_type: media_type.clone(),
                checked_at: now,
            };
            index.put_tag(&key, &record)?;
        }
    }
    Ok(())
}
