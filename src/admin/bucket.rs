//! What `gc` and `cache stats|ls` add when the config names a storage:
//! what the bucket holds, what is only there, and what is only local.

use super::{open_cache, AdminError, GcReport, PinnedDigests, Stats, TagRow};
use crate::cache::{Bucket, BucketInventory, Index};
use crate::config::S3Settings;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where a tag's manifest is.
pub const LOCAL: &str = "local";
pub const BOTH: &str = "local+bucket";
pub const BUCKET: &str = "bucket";

/// The bucket beside the local tier.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct BucketStats {
    /// Content objects (blobs and manifests) and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// In the bucket, not on this disk: one bucket GET away. The three
    /// comparisons need the index, so they are left out while a running
    /// mirror holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_in_bucket: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_in_bucket_bytes: Option<u64>,
    /// On this disk, not in the bucket (not uploaded, or expired there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_local: Option<u64>,
    /// Tag mappings shared through the bucket.
    pub tags: u64,
}

fn inventory(settings: &S3Settings) -> Result<BucketInventory, AdminError> {
    let bucket = Bucket::open(settings).map_err(AdminError::Bucket)?;
    bucket.inventory().map_err(AdminError::Bucket)
}

fn totals(inventory: &BucketInventory) -> BucketStats {
    BucketStats {
        objects: inventory.content.len() as u64,
        bytes: inventory.bytes(),
        tags: inventory.tags.len() as u64,
        ..BucketStats::default()
    }
}

fn compare(index: &Index, inventory: &BucketInventory) -> BucketStats {
    // The index names content by hex.
    let local: std::collections::HashSet<String> = index.contents().map(|(hex, _)| hex).collect();
    let (mut only, mut only_bytes) = (0, 0);
    for (digest, size) in &inventory.content {
        if !local.contains(digest.hex()) {
            only += 1;
            only_bytes += size;
        }
    }
    let shared: std::collections::HashSet<&str> =
        inventory.content.keys().map(|d| d.hex()).collect();
    let only_local = local
        .iter()
        .filter(|hex| !shared.contains(hex.as_str()))
        .count() as u64;
    BucketStats {
        only_in_bucket: Some(only),
        only_in_bucket_bytes: Some(only_bytes),
        only_local: Some(only_local),
        ..totals(inventory)
    }
}

/// `cache stats` (from the files, or from the running mirror that holds
/// them), with the bucket when `storage` is set.
pub fn stats(dir: &Path, storage: Option<&S3Settings>) -> Result<Stats, AdminError> {
    let Some(settings) = storage else {
        return super::stats_here_or_running(dir);
    };
    match open_cache(dir, None) {
        Ok((_store, index)) => {
            let mut stats = super::stats_of(&index);
            stats.bucket = Some(compare(&index, &inventory(settings)?));
            Ok(stats)
        }
        Err(AdminError::InUse(_)) => {
            let mut stats = super::remote::stats(dir)?;
            stats.bucket = Some(totals(&inventory(settings)?));
            Ok(stats)
        }
        Err(e) => Err(e),
    }
}

/// `cache ls`: local tags marked `local` or `local+bucket` (the manifest
/// is in the bucket too), then the bucket's tags no local one names,
/// marked `bucket`.
pub fn list(
    dir: &Path,
    repo: Option<&str>,
    storage: Option<&S3Settings>,
) -> Result<Vec<TagRow>, AdminError> {
    let mut rows = super::list_here_or_running(dir, repo)?;
    let Some(settings) = storage else {
        return Ok(rows);
    };
    let bucket = Bucket::open(settings).map_err(AdminError::Bucket)?;
    let inventory = bucket.inventory().map_err(AdminError::Bucket)?;
    for row in &mut rows {
        let shared = row
            .digest
            .parse()
            .is_ok_and(|d| inventory.content.contains_key(&d));
        row.location = Some(if shared { BOTH } else { LOCAL }.to_owned());
    }
    let mut seen: std::collections::HashSet<(String, String, String)> = rows
        .iter()
        .map(|r| (r.upstream.clone(), r.repository.clone(), r.tag.clone()))
        .collect();
    for tag in &inventory.tags {
        let k = &tag.key;
        let name = k.repo.as_str();
        if repo.is_some_and(|r| r != name && format!("library/{r}") != name) {
            continue;
        }
        let id = (k.upstream.clone(), name.to_owned(), k.tag.to_string());
        if seen.contains(&id) {
            continue;
        }
        let Some(record) = bucket.tag(tag) else {
            continue;
        };
        seen.insert(id);
        rows.push(TagRow {
            upstream: k.upstream.clone(),
            repository: name.to_owned(),
            tag: k.tag.to_string(),
            size: inventory.content.get(&record.digest).copied().unwrap_or(0),
            digest: record.digest.to_string(),
            last_used: None,
            location: Some(BUCKET.to_owned()),
        });
    }
    Ok(rows)
}

/// What `gc` says of the bucket: eviction removed local copies only.
#[derive(Serialize, Default, Clone, Debug)]
pub struct GcBucket {
    #[serde(flatten)]
    pub stats: BucketStats,
    /// Of the entries evicted here, those the bucket still holds.
    pub evicted_in_bucket: u64,
}

/// `gc`, then the bucket compared with what is left locally.
pub fn gc(
    dir: &Path,
    max_size: Option<u64>,
    protect_recent: std::time::Duration,
    dry_run: bool,
    pinned: PinnedDigests<'_>,
    storage: Option<&S3Settings>,
) -> Result<GcReport, AdminError> {
    let mut report = super::gc(dir, max_size, protect_recent, dry_run, pinned)?;
    let Some(settings) = storage else {
        return Ok(report);
    };
    let inventory = inventory(settings)?;
    let (_store, index) = open_cache(dir, None)?;
    let evicted_in_bucket = report.eviction.as_ref().map_or(0, |e| {
        e.removed
            .iter()
            .filter(|(d, _)| d.parse().is_ok_and(|d| inventory.content.contains_key(&d)))
            .count() as u64
    });
    report.bucket = Some(GcBucket {
        stats: compare(&index, &inventory),
        evicted_in_bucket,
    });
    Ok(report)
}

/// The bucket's lines under `gc`'s and `cache stats`' own.
pub fn render(s: &BucketStats) -> Vec<(&'static str, String)> {
    let size = super::human_bytes;
    vec![
        (
            "bucket",
            format!("{} objects, {}", s.objects, size(s.bytes)),
        ),
        (
            "only in bucket",
            match (s.only_in_bucket, s.only_in_bucket_bytes) {
                (Some(n), Some(b)) => format!("{n} ({})", size(b)),
                _ => "- (a running mirror holds the index)".to_owned(),
            },
        ),
        (
            "only local",
            s.only_local
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ),
        ("bucket tags", s.tags.to_string()),
    ]
}
