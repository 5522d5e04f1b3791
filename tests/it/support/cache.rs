//! Looks into a cache directory: where a blob lives, what is there, how
//! many bytes.

use super::client::hex_of;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest wait for the evictor or the start-up reconciliation to act.
pub const SETTLE: Duration = Duration::from_secs(15);

/// Where the cache keeps a complete blob.
pub fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    cache.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn cached(cache: &Path, digest: &str) -> bool {
    blob_path(cache, digest).is_file()
}

/// Every regular file under `dir`, recursively, with its length.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                found.push((entry.path(), meta.len()));
            }
        }
    }
    found.sort();
    found
}

/// Bytes of all files under `<cache>/blobs`, as `du` would count content.
pub fn blob_bytes(cache: &Path) -> u64 {
    files_under(&cache.join("blobs")).iter().map(|f| f.1).sum()
}

/// Every path under `dir` (files and directories), relative to it, except
/// what lies under `skip` (a relative path).
pub fn paths_under(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: a test directory never holds this many entries.
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
            if relative.starts_with(skip) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
            found.push(relative);
            assert!(
                found.len() < 100_000,
                "runaway directory tree under {dir:?}"
            );
        }
    }
    found.sort();
    found
}
