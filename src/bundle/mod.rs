//! Offline bundles: cached images carried across an air gap as an OCI
//! image layout in a tar (`pullthrough export` / `pullthrough import`).
//!
//! The tar is the layout itself (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), so `skopeo copy oci-archive:…`, `podman load` and
//! `ctr import` read it too. `index.json` names each image by its tag
//! (`org.opencontainers.image.ref.name`) and its full name with the
//! registry (`io.containerd.image.name`), which import turns back into
//! the tag mappings a pull asks for.

mod export;
mod import;
mod layout;
mod remote;
mod tar;

pub use export::{export, ExportReport, ExportedImage};
pub use import::{import_into, ImportReport, ImportedImage};
pub use remote::{import_remote, RemoteError};

use crate::admin::AdminError;
use crate::cache::CacheError;
use std::io;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Open(#[from] AdminError),
    #[error("{0} is not in the cache (pull it through the mirror first)")]
    NotCached(String),
    #[error("{image} is not complete in the cache: {missing}")]
    Incomplete { image: String, missing: String },
    #[error("the bundle is incomplete for {image}: {missing}; nothing from it was added")]
    BundleIncomplete { image: String, missing: String },
    #[error("{path} in the bundle does not match its digest (its bytes hash to {actual}); nothing from the bundle was added")]
    Mismatch { path: String, actual: String },
    #[error("bundle entry {0} is not named by a digest")]
    BadEntry(String),
    #[error("the bundle has no index.json; nothing from it was added")]
    NoIndex,
    #[error("the bundle's index is not an OCI image index: {0}")]
    BadIndex(String),
    #[error("not a bundle: {0}")]
    Tar(#[from] tar::TarError),
    #[error("cannot read the bundle: {0}")]
    Read(io::Error),
    #[error("cannot write the bundle: {0}")]
    Write(io::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} changed in the cache while it was exported; try again")]
    Vanished(String),
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
}

impl BundleError {
    fn io(path: &Path, source: io::Error) -> BundleError {
        BundleError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Imports a bundle into a stopped mirror's cache directory.
pub fn import(
    dir: &Path,
    max_size: Option<u64>,
    input: impl io::Read,
    upstreams: &[String],
) -> Result<ImportReport, BundleError> {
    let (store, index) = crate::admin::open_cache(dir, max_size)?;
    import_into(&store, &index, input, upstreams)
}

pub fn render_export(r: &ExportReport) -> String {
    let mut out = String::new();
    for i in &r.images {
        out += &format!(
            "{}  {}  {} manifests, {} blobs, {}\n",
            i.image,
            i.digest,
            i.manifests,
            i.blobs,
            crate::admin::human_bytes(i.bytes)
        );
        if !i.omitted.is_empty() {
            out += &format!("  not in the cache, left out: {}\n", i.omitted.join(", "));
        }
    }
    out += &format!(
        "wrote {} ({} of content)\n",
        r.output,
        crate::admin::human_bytes(r.bytes)
    );
    out
}

pub fn render_import(r: &ImportReport) -> String {
    let mut out = String::new();
    for i in &r.images {
        out += &format!(
            "{}  {}\n",
            i.image.as_deref().unwrap_or("(no name)"),
            i.digest
        );
        if !i.omitted.is_empty() {
            out += &format!("  not in the bundle: {}\n", i.omitted.join(", "));
        }
    }
    for w in &r.warnings {
        out += &format!("warning: {w}\n");
    }
    out += &format!(
        "added {} blobs ({}), {} already cached; every blob verified\n",
        r.added,
        crate::admin::human_bytes(r.added_bytes),
        r.present
    );
    out
}
