//! The cache commands: `gc`, `cache stats` and `cache ls`. They open the
//! cache directly; while a running mirror holds it, `gc` refuses and
//! `cache stats|ls` ask that mirror's admin API instead (`remote`). With a
//! storage configured, `bucket` adds what the shared bucket holds.

pub mod address;
mod bucket;
pub mod remote;

pub use bucket::{
    gc as gc_with_bucket, list as list_with_bucket, stats as stats_with_bucket, BucketStats,
    GcBucket,
};

use crate::cache::{self, Budget, CacheError, ContentStore, Index};
use crate::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the cache at {0} is in use by a running pullthrough; stop it first (these commands need the index to themselves)")]
    InUse(String),
    #[error("cannot open the cache at {dir}: {source}")]
    Open { dir: String, source: CacheError },
    #[error("cannot read the bucket: {0}")]
    Bucket(String),
    #[error("the cache at {dir} is in use by a running pullthrough, whose admin API cannot be reached: {reason}")]
    Unreachable { dir: String, reason: String },
    #[error("the running pullthrough at {url} answered HTTP {status}{hint}")]
    Remote {
        url: String,
        status: u16,
        hint: &'static str,
    },
}

/// Opens a stopped mirror's cache for an offline command.
pub(crate) fn open_cache(
    dir: &Path,
    max_size: Option<u64>,
) -> Result<(cache::BlobStore, Index), AdminError> {
    cache::open(dir, max_size, Default::default()).map_err(|source| match &source {
        CacheError::InUse => AdminError::InUse(dir.display().to_string()),
        _ => AdminError::Open {
            dir: dir.display().to_string(),
            source,
        },
    })
}

#[derive(Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Entries under `tmp/`: downloads a previous process did not finish.
    pub removed_temp: u64,
    pub reconcile: cache::ReconcileReport,
    pub eviction: Option<cache::EvictionReport>,
    /// With a storage configured: the bucket beside what is left locally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<GcBucket>,
}

/// What eviction must keep, found from an open cache (pinned warm sets).
pub type PinnedDigests<'a> = &'a dyn Fn(&dyn ContentStore, &Index) -> HashSet<String>;

/// Reconciles, then evicts down to the budget when one is set, keeping
/// what `pinned` names.
pub fn gc(
    dir: &Path,
    max_size: Option<u64>,
    protect_recent: Duration,
    dry_run: bool,
    pinned: PinnedDigests<'_>,
) -> Result<GcReport, AdminError> {
    let (store, index) = open_cache(dir, max_size)?;
    store.usage().set_pinned(pinned(&store, &index));
    let removed_temp = store.clear_temp(dry_run).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot empty tmp/");
        0
    });
    let reconcile = cache::reconcile(&store, &index, dry_run);
    let eviction = max_size.map(|max_size| {
        let budget = Budget {
            max_size,
            protect_recent,
        };
        cache::evict(&store, &index, &budget, dry_run)
    });
    let _ = index.flush();
    Ok(GcReport {
        dry_run,
        removed_temp,
        reconcile,
        eviction,
        bucket: None,
    })
}

pub fn render_gc(r: &GcReport) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    let c = &r.reconcile;
    let _ = writeln!(
        out,
        "reconcile: {} entries, {}; adopted {}, {verb} {} corrupt and {} stray files, dropped {} index entries without files",
        c.entries,
        human_bytes(c.bytes),
        c.adopted,
        c.removed_corrupt,
        c.removed_stray,
        c.dropped_entries
    );
    let _ = writeln!(out, "temp: {verb} {} unfinished downloads", r.removed_temp);
    match &r.eviction {
        None => {
            let _ = writeln!(out, "eviction: no max_size set; nothing evicted");
        }
        Some(e) => {
            for (digest, size) in &e.removed {
                let _ = writeln!(out, "  {verb} {digest}  {}", human_bytes(*size));
            }
            let _ = writeln!(
                out,
                "eviction: {verb} {} entries, freed {} (usage was {})",
                e.removed.len(),
                human_bytes(e.freed_bytes),
                human_bytes(e.usage_before)
            );
        }
    }
    if let Some(b) = &r.bucket {
        for (k, v) in bucket::render(&b.stats) {
            let _ = writeln!(out, "{k}: {v}");
        }
        if r.eviction.is_some() {
            let _ = writeln!(
                out,
                "eviction removed local copies only: {} of them stay in the bucket",
                b.evicted_in_bucket
            );
        }
    }
    out
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Stats {
    pub bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub repositories: u64,
    /// Unix seconds of the least recently used entry.
    pub oldest_access: Option<u64>,
    /// With a storage configured (`cache stats` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketStats>,
}

/// `cache stats`: from the files, or from the running mirror that holds
/// them.
pub fn stats_here_or_running(dir: &Path) -> Result<Stats, AdminError> {
    match stats(dir) {
        Err(AdminError::InUse(_)) => remote::stats(dir),
        other => other,
    }
}

/// `cache ls`, the same way.
pub fn list_here_or_running(dir: &Path, repo: Option<&str>) -> Result<Vec<TagRow>, AdminError> {
    match list(dir, repo) {
        Err(AdminError::InUse(_)) => remote::list(dir, repo),
        other => other,
    }
}

pub fn stats(dir: &Path) -> Result<Stats, AdminError> {
    let (_store, index) = open_cache(dir, None)?;
    Ok(stats_of(&index))
}

/// The totals of an open index; shared with the running mirror's admin
/// API, so `cache stats` and `/api/v1/status` count the same way.
pub fn stats_of(index: &Index) -> Stats {
    let mut s = Stats::default();
    for (_, r) in index.contents() {
        s.bytes += r.size;
        if r.media_type.is_some() {
            s.manifests += 1;
        } else {
            s.blobs += 1;
        }
        s.oldest_access = Some(
            s.oldest_access
                .map_or(r.last_access, |o| o.min(r.last_access)),
        );
    }
    let mut repos = std::collections::HashSet::new();
    let mut tags = std::collections::HashSet::new();
    for (key, _) in index.tags() {
        repos.insert((key.upstream.clone(), key.repo.clone()));
        // One tag, whatever kinds of client asked for it.
        tags.insert((key.upstream, key.repo, key.tag));
    }
    s.tags = tags.len() as u64;
    s.repositories = repos.len() as u64;
    s
}

pub fn render_stats(s: &Stats) -> String {
    let mut rows = vec![
        ("bytes", format!("{} ({})", s.bytes, human_bytes(s.bytes))),
        ("blobs", s.blobs.to_string()),
        ("manifests", s.manifests.to_string()),
        ("tags", s.tags.to_string()),
        ("repositories", s.repositories.to_string()),
        (
            "oldest access",
            s.oldest_access.map_or_else(|| "-".to_owned(), ago),
        ),
    ];
    if let Some(b) = &s.bucket {
        rows.extend(bucket::render(b));
    }
    table(
        &["", ""],
        rows.iter()
            .map(|(k, v)| vec![k.to_string(), v.clone()])
            .collect(),
        false,
    )
}

/// The most of a manifest `image_size` reads to find what it references.
const MANIFEST_READ_LIMIT: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TagRow {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// Bytes of this image (manifests, config, layers) present in the cache.
    pub size: u64,
    /// Unix seconds when the tag's manifest was last served.
    pub last_used: Option<u64>,
    /// With a storage configured (`cache ls` only): `local`,
    /// `local+bucket` or `bucket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

pub fn list(dir: &Path, repo: Option<&str>) -> Result<Vec<TagRow>, AdminError> {
    let (store, index) = open_cache(dir, None)?;
    Ok(list_of(&store, &index, repo))
}

/// The cached tags of an open cache, optionally of one repository (a bare
/// Docker Hub name also matches its `library/` form); shared with the
/// running mirror's admin API.
pub fn list_of(store: &dyn ContentStore, index: &Index, repo: Option<&str>) -> Vec<TagRow> {
    let mut rows = Vec::new();
    for (key, record) in index.tags() {
        let name = key.repo.as_str();
        if repo.is_some_and(|r| r != name && format!("library/{r}") != name) {
            continue;
        }
        let d = &record.digest;
        let size = image_size(store, index, d, 2);
        let last_used = index.content(d).ok().flatten().map(|c| c.last_access);
        let row = TagRow {
            upstream: key.upstream,
            repository: key.repo.to_string(),
            tag: key.tag.to_string(),
            digest: record.digest.to_string(),
            size,
            last_used,
            location: None,
        };
        rows.push((row, record.checked_at));
    }
    // A tag asked for by different kinds of client has a mapping per kind;
    // list it once, as the upstream answered it last.
    rows.sort_by(|(a, a_checked), (b, b_checked)| {
        (&a.upstream, &a.repository, &a.tag, b_checked).cmp(&(
            &b.upstream,
            &b.repository,
            &b.tag,
            a_checked,
        ))
    });
    rows.dedup_by(|(a, _), (b, _)| {
        (&a.upstream, &a.repository, &a.tag) == (&b.upstream, &b.repository, &b.tag)
    });
    rows.into_iter().map(|(row, _)| row).collect()
}

/// Sums the cached bytes of a manifest and what it references (an index's
/// child manifests, `depth` levels down).
fn image_size(store: &dyn ContentStore, index: &Index, digest: &Digest, depth: u8) -> u64 {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Refs {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let size_of = |d: &Digest| index.content(d).ok().flatten().map_or(0, |c| c.size);
    let mut total = size_of(digest);
    // Manifests are small; a blob mistaken for one is not read whole.
    let Ok(Some(bytes)) = store.read_small(digest, MANIFEST_READ_LIMIT) else {
        return total;
    };
    let Ok(refs) = serde_json::from_slice::<Refs>(&bytes) else {
        return total;
    };
    let parse = |d: &Descriptor| d.digest.parse::<Digest>().ok();
    for d in refs.config.iter().chain(&refs.layers).filter_map(parse) {
        total += size_of(&d);
    }
    if depth > 0 {
        for d in refs.manifests.iter().filter_map(parse) {
            total += image_size(store, index, &d, depth - 1);
        }
    }
    total
}

pub fn render_list(rows: &[TagRow]) -> String {
    if rows.is_empty() {
        return "no cached tags\n".to_owned();
    }
    let located = rows.iter().any(|r| r.location.is_some());
    let body = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.upstream.clone(),
                r.repository.clone(),
                r.tag.clone(),
                r.digest.get(..19).unwrap_or(&r.digest).to_owned(),
                human_bytes(r.size),
                r.last_used.map_or_else(|| "-".to_owned(), ago),
            ];
            if located {
                row.push(r.location.clone().unwrap_or_else(|| "-".to_owned()));
            }
            row
        })
        .collect();
    let mut header = vec![
        "UPSTREAM",
        "REPOSITORY",
        "TAG",
        "DIGEST",
        "SIZE",
        "LAST USED",
    ];
    if located {
        header.push("WHERE");
    }
    table(&header, body, true)
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: Vec<Vec<String>>, with_header: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    if with_header {
        line(header.iter().map(|h| h.to_string()).collect());
    }
    for row in rows {
        line(row);
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn ago(at: u64) -> String {
    let secs = cache::unix_now().saturating_sub(at);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            vec![
                vec!["xxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
            true,
        );
        assert_eq!(t, "A    BB\nxxx  1\ny    22\n");
    }
}
