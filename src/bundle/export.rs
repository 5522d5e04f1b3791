//! `pullthrough export`: the cached images named, written as an OCI image
//! layout in a tar, one blob at a time straight from the cache files.

use super::layout::{self, Closure, Descriptor, LayoutIndex, IMAGE_NAME, REF_NAME};
use super::tar::TarWriter;
use super::BundleError;
use crate::cache::{ContentStore, Index, TagRecord};
use crate::oci::{Digest, ImageName, Reference};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

#[derive(Serialize, Debug)]
pub struct ExportedImage {
    pub image: String,
    pub digest: String,
    pub media_type: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Platforms of an index the cache does not hold completely.
    pub omitted: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct ExportReport {
    pub output: String,
    pub images: Vec<ExportedImage>,
    /// Bytes of content written (each blob once, however many images
    /// share it).
    pub bytes: u64,
}

/// Writes `images` from the cache in `dir` to `output` (`-` for stdout).
/// A file appears only complete: it is written beside and renamed.
pub fn export(
    dir: &Path,
    images: &[ImageName],
    output: &Path,
) -> Result<ExportReport, BundleError> {
    let (store, index) = crate::admin::open_cache(dir, None)?;
    let mut found = Vec::new();
    for image in images {
        let digest = resolve(&index, image)?;
        let closure =
            layout::closure(&store, &digest).map_err(|missing| BundleError::Incomplete {
                image: image.to_string(),
                missing: missing.to_string(),
            })?;
        let media_type = closure
            .manifests
            .first()
            .map(|m| m.1.clone())
            .unwrap_or_default();
        found.push((image, digest, media_type, closure));
    }
    let to_stdout = output.as_os_str() == "-";
    let partial = output.with_extension("partial");
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&partial).map_err(|e| BundleError::io(&partial, e))?)
    };
    let written = write(
        &store,
        &found,
        std::io::BufWriter::with_capacity(1 << 20, sink),
    );
    if !to_stdout {
        match &written {
            Ok(_) => std::fs::rename(&partial, output).map_err(|e| BundleError::io(output, e))?,
            Err(_) => {
                let _ = std::fs::remove_file(&partial);
            }
        }
    }
    let bytes = written?;
    Ok(ExportReport {
        output: output.display().to_string(),
        bytes,
        images: found
            .into_iter()
            .map(|(image, digest, media_type, c)| ExportedImage {
                image: image.to_string(),
                digest: digest.to_string(),
                media_type,
                manifests: c.manifests.len(),
                blobs: c.blobs.len(),
                bytes: c.bytes(),
                omitted: c.omitted,
            })
            .collect(),
    })
}

type Found<'a> = (&'a ImageName, Digest, String, Closure);

fn write(
    store: &dyn ContentStore,
    found: &[Found<'_>],
    out: impl Write,
) -> Result<u64, BundleError> {
    let mut tar = TarWriter::new(out);
    let layout = layout::OCI_LAYOUT.as_bytes();
    tar.append("oci-layout", layout.len() as u64, &mut &layout[..])
        .map_err(BundleError::Write)?;
    let mut written = HashSet::new();
    let mut bytes = 0;
    let all = found.iter().flat_map(|(_, _, _, c)| {
        c.manifests
            .iter()
            .map(|(d, _, len)| (d, *len))
            .chain(c.blobs.iter().map(|(d, len)| (d, *len)))
    });
    for (digest, len) in all {
        if !written.insert(digest.clone()) {
            continue;
        }
        let Some(mut stored) = store.open(digest)? else {
            return Err(BundleError::Vanished(digest.to_string()));
        };
        if stored.len != len {
            return Err(BundleError::Vanished(digest.to_string()));
        }
        tar.append(&layout::blob_path(digest), len, &mut stored.file)
            .map_err(BundleError::Write)?;
        bytes += len;
    }
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(layout::INDEX_MEDIA_TYPE.to_owned()),
        manifests: found
            .iter()
            .map(|(image, digest, media_type, c)| top_descriptor(image, digest, media_type, c))
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&index).map_err(|e| BundleError::Write(e.into()))?;
    tar.append("index.json", json.len() as u64, &mut &json[..])
        .map_err(BundleError::Write)?;
    tar.finish().map_err(BundleError::Write)?;
    Ok(bytes)
}

fn top_descriptor(image: &ImageName, digest: &Digest, media_type: &str, c: &Closure) -> Descriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(IMAGE_NAME.to_owned(), image.to_string());
    if let Reference::Tag(tag) = &image.reference {
        annotations.insert(REF_NAME.to_owned(), tag.to_string());
    }
    Descriptor {
        media_type: Some(media_type.to_owned()),
        digest: digest.to_string(),
        size: c.manifests.first().map_or(0, |m| m.2),
        platform: None,
        annotations,
        urls: Vec::new(),
    }
}

/// The manifest a reference names in the cache. A tag cached for several
/// kinds of client (an index for one, a single manifest for another)
/// gives the index: it carries every platform the cache holds.
fn resolve(index: &Index, image: &ImageName) -> Result<Digest, BundleError> {
    let tag = match &image.reference {
        Reference::Digest(d) => return Ok(d.clone()),
        Reference::Tag(tag) => tag,
    };
    let is_list = |r: &TagRecord| r.media_type.contains("index") || r.media_type.contains("list");
    index
        .tags()
        .filter(|(key, _)| {
            key.upstream == image.registry && key.repo == image.repo && key.tag == *tag
        })
        .map(|(_, record)| record)
        .max_by_key(|r| (is_list(r), r.checked_at))
        .map(|r| r.digest)
        .ok_or_else(|| BundleError::NotCached(image.to_string()))
}
