//! Making the index and `blobs/` agree, at start-up (in the background,
//! while the mirror serves) and in `gc`: files without entries are
//! verified and adopted or removed, entries without files are dropped.

use super::{ContentRecord, ContentStore, Index, StoredFile};
use crate::oci::{Digest, DigestWriter};
use serde::Serialize;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    /// Files that had no index entry and hashed to their name.
    pub adopted: u64,
    /// Files whose bytes do not hash to their name.
    pub removed_corrupt: u64,
    /// Files whose names are not digests where they lie.
    pub removed_stray: u64,
    /// Index entries whose file is gone.
    pub dropped_entries: u64,
    pub bytes: u64,
    pub entries: u64,
}

/// The digests a scan found, by their first 64 bits: 8 bytes each rather
/// than a 64-character string in a hash set (which held over 100 MiB for
/// a million-blob cache). Two cached digests sharing their first 64 bits
/// (odds about 1 in 30 million with a million blobs) would keep an index
/// entry whose file is gone; the next lookup of it misses all the same.
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    fn insert(&mut self, hex: &str) {
        if let Some(p) = prefix(hex) {
            self.0.push(p);
        }
    }

    /// Sorts, for [`Seen::contains`]; call once the walk is done.
    fn seal(&mut self) {
        self.0.sort_unstable();
        self.0.dedup();
        self.0.shrink_to_fit();
    }

    fn contains(&self, hex: &str) -> bool {
        prefix(hex).is_some_and(|p| self.0.binary_search(&p).is_ok())
    }
}

fn prefix(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex.get(..16)?, 16).ok()
}

fn is_digest_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = DigestWriter::default();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

fn mtime_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Repairs the cache. Files whose size matches their entry are trusted
/// (they were verified when written); everything else is hashed.
pub fn reconcile(store: &dyn ContentStore, index: &Index, dry_run: bool) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let mut seen = Seen::default();
    if !dry_run {
        store.usage().begin_scan();
    }
    for StoredFile {
        shard,
        name,
        path,
        len,
    } in store.list()
    {
        if shard.len() != 2 || !is_digest_hex(&name) || !name.starts_with(&shard) {
            report.removed_stray += 1;
            if !dry_run {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
            continue;
        };
        let record = index.content(&digest).ok().flatten();
        if record.as_ref().is_some_and(|r| r.size == len) {
            seen.insert(&name);
            report.bytes += len;
            report.entries += 1;
            continue;
        }
        match hash_file(&path) {
            Ok(actual) if actual == digest => {
                report.adopted += 1;
                if !dry_run {
                    // Unknown origin: treat as private until confirmed.
                    let private = record.as_ref().is_none_or(|r| r.private);
                    let adopted = ContentRecord {
                        media_type: record.and_then(|r| r.media_type),
                        size: len,
                        last_access: mtime_secs(&path),
                        private,
                    };
                    let _ = index.put_content(&digest, &adopted);
                }
                seen.insert(&name);
                report.bytes += len;
                report.entries += 1;
            }
            Ok(_) => {
                tracing::warn!(%digest, "cached file fails verification; removing");
                report.removed_corrupt += 1;
                if !dry_run {
                    let _ = std::fs::remove_file(&path);
                    let _ = index.remove_content(&name);
                }
            }
            Err(e) => tracing::warn!(%digest, error = %e, "cannot read cached file"),
        }
    }
    seen.seal();
    let orphaned: Vec<String> = index
        .contents()
        .map(|(hex, _)| hex)
        .filter(|hex| !seen.contains(hex))
        .collect();
    for hex in orphaned {
        // A download may have landed since the walk passed its shard.
        let landed = format!("sha256:{hex}")
            .parse::<Digest>()
            .map(|d| store.contains(&d))
            .unwrap_or(false);
        if landed {
            continue;
        }
        report.dropped_entries += 1;
        if !dry_run {
            let _ = index.remove_content(&hex);
        }
    }
    if !dry_run {
        store
            .usage()
            .finish_scan(|hex| seen.contains(hex), report.bytes, report.entries);
    }
    report
}
