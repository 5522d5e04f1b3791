//! Repairing a cache whose files and index disagree: orphan files, corrupt
//! files, stray names, index entries without files and leftover temp files,
//! fixed by the start-up reconciliation and by `pullthrough gc` offline
//! (with `--dry-run` changing nothing), and `gc --max-size` evicting in LRU
//! order.

use crate::support::cache::{blob_bytes, blob_path, cached, files_under, SETTLE};
use crate::support::cli::{pullthrough, pullthrough_json};
use crate::support::client::hex_of;
use crate::support::mirror::Mirror;
use crate::support::oci_layout::Image;
use crate::support::registry::{get_blob, seed, tools_present, upstream_gets, Registry};
use crate::support::{next_second, wait_until};
use std::path::PathBuf;

/// A registry with three images and a stopped mirror's cache holding p's
/// config and both its layers.
struct Populated {
    tmp: tempfile::TempDir,
    registry: Registry,
    cache: PathBuf,
    p: Image,
    q: Image,
    r: Image,
}

fn populated() -> Populated {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let p = seed(&registry, tmp.path(), "repair-p", 500, &[300_000, 200_000]);
    let q = seed(&registry, tmp.path(), "repair-q", 501, &[150_000]);
    let r = seed(&registry, tmp.path(), "repair-r", 502, &[100_000]);
    let cache = tmp.path().join("cache");
    let mut mirror = Mirror::builder(&registry.url()).cache_dir(&cache).start();
    for digest in std::iter::once(&p.config_digest).chain(&p.layer_digests) {
        get_blob(mirror.addr, "repair-p", digest);
    }
    // A clean stop flushes the index.
    mirror.stop();
    Populated {
        tmp,
        registry,
        cache,
        p,
        q,
        r,
    }
}

/// What [`break_cache`] did, to check the repairs.
struct Damage {
    /// q's layer, copied in from its layout with no index entry.
    orphan: PathBuf,
    /// r's layer name holding other bytes (no index entry).
    corrupt_unindexed: PathBuf,
    /// p's second layer, truncated (its index entry names the old size).
    corrupt_indexed: PathBuf,
    /// p's first layer, deleted (its index entry dangles).
    dangling: PathBuf,
    /// A name that is no digest, and a digest in the wrong shard directory.
    strays: Vec<PathBuf>,
    temp: PathBuf,
}

fn break_cache(s: &Populated) -> Damage {
    let layout_blob = |name: &str, digest: &str| {
        s.tmp
            .path()
            .join(format!("layout-{name}/blobs/sha256"))
            .join(hex_of(digest))
    };
    let orphan = blob_path(&s.cache, &s.q.layer_digests[0]);
    std::fs::create_dir_all(orphan.parent().expect("shard")).expect("shard dir");
    std::fs::copy(layout_blob("repair-q", &s.q.layer_digests[0]), &orphan).expect("orphan");

    let corrupt_unindexed = blob_path(&s.cache, &s.r.layer_digests[0]);
    std::fs::create_dir_all(corrupt_unindexed.parent().expect("shard")).expect("shard dir");
    std::fs::write(&corrupt_unindexed, vec![0x5a; 100_000]).expect("corrupt file");

    let corrupt_indexed = blob_path(&s.cache, &s.p.layer_digests[1]);
    let bytes = std::fs::read(&corrupt_indexed).expect("p's second layer cached");
    std::fs::write(&corrupt_indexed, &bytes[..bytes.len() / 2]).expect("truncate");

    let dangling = blob_path(&s.cache, &s.p.layer_digests[0]);
    std::fs::remove_file(&dangling).expect("p's first layer cached");

    let blobs = s.cache.join("blobs/sha256");
    let not_a_digest = blobs.join("ab/not-a-digest");
    let q_config = hex_of(&s.q.config_digest);
    let wrong_shard_dir = if q_config.starts_with("00") {
        "ff"
    } else {
        "00"
    };
    let wrong_shard = blobs.join(wrong_shard_dir).join(q_config);
    for stray in [&not_a_digest, &wrong_shard] {
        std::fs::create_dir_all(stray.parent().expect("shard")).expect("shard dir");
    }
    std::fs::write(&not_a_digest, b"left here by someone").expect("stray");
    std::fs::copy(layout_blob("repair-q", &s.q.config_digest), &wrong_shard).expect("stray");

    let temp = s.cache.join("tmp/leftover.partial");
    std::fs::write(&temp, vec![1u8; 4096]).expect("temp file");
    Damage {
        orphan,
        corrupt_unindexed,
        corrupt_indexed,
        dangling,
        strays: vec![not_a_digest, wrong_shard],
        temp,
    }
}

/// The counts a repair of [`break_cache`]'s damage reports.
fn assert_repair_counts(report: &serde_json::Value) {
    let r = &report["reconcile"];
    assert_eq!(r["adopted"], 1, "adopted: {report}");
    assert_eq!(r["removed_corrupt"], 2, "removed_corrupt: {report}");
    assert_eq!(r["removed_stray"], 2, "removed_stray: {report}");
    assert_eq!(r["dropped_entries"], 1, "dropped_entries: {report}");
}

/// A restarted mirror repairs the cache in the background: corrupt, stray
/// and temp files go, the orphan is adopted and served without the
/// upstream, content whose file vanished or broke is fetched again.
#[test]
fn startup_reconciliation_repairs_a_damaged_cache() {
    if !tools_present() {
        return;
    }
    let s = populated();
    let damage = break_cache(&s);
    let mirror = Mirror::builder(&s.registry.url())
        .cache_dir(&s.cache)
        .start();

    assert!(!damage.temp.exists(), "tmp/ is emptied at start-up");
    wait_until("corrupt and stray files removed", SETTLE, || {
        let gone = [&damage.corrupt_unindexed, &damage.corrupt_indexed]
            .into_iter()
            .chain(&damage.strays)
            .all(|f| !f.exists());
        gone.then_some(())
    });
    assert!(damage.orphan.is_file(), "the valid orphan is kept");

    let q_layer = &s.q.layer_digests[0];
    get_blob(mirror.addr, "repair-q", q_layer);
    assert_eq!(
        upstream_gets(&s.registry, "repair-q", q_layer),
        0,
        "the adopted orphan is served from cache"
    );
    get_blob(mirror.addr, "repair-r", &s.r.layer_digests[0]);
    assert_eq!(
        upstream_gets(&s.registry, "repair-r", &s.r.layer_digests[0]),
        1
    );
    for layer in &s.p.layer_digests {
        get_blob(mirror.addr, "repair-p", layer);
        assert_eq!(
            upstream_gets(&s.registry, "repair-p", layer),
            2,
            "{layer}: fetched again after its file was lost or broken"
        );
        assert!(cached(&s.cache, layer));
    }
    assert!(damage.dangling.is_file());
    get_blob(mirror.addr, "repair-p", &s.p.config_digest);
    assert_eq!(
        upstream_gets(&s.registry, "repair-p", &s.p.config_digest),
        1
    );

    // The index now agrees with the files: offline, nothing left to repair.
    let mut mirror = mirror;
    mirror.stop();
    let dir = s.cache.to_string_lossy().into_owned();
    let stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    assert_eq!(
        stats["blobs"], 5,
        "p's config and layers, q's and r's layers: {stats}"
    );
    assert_eq!(stats["bytes"], blob_bytes(&s.cache), "{stats}");
    let report = pullthrough_json(&["gc", "--cache-dir", &dir]);
    let r = &report["reconcile"];
    for field in [
        "adopted",
        "removed_corrupt",
        "removed_stray",
        "dropped_entries",
    ] {
        assert_eq!(r[field], 0, "{field} after the start-up repair: {report}");
    }
    assert_eq!(r["entries"], 5, "{report}");
}

/// `gc --dry-run` reports the repairs and touches no blob file; `gc`
/// makes them, with the same counts; a second `gc` finds nothing to do.
#[test]
fn gc_repairs_a_damaged_cache_offline_and_dry_run_changes_nothing() {
    if !tools_present() {
        return;
    }
    let s = populated();
    let damage = break_cache(&s);
    let dir = s.cache.to_string_lossy().into_owned();
    let before = files_under(&s.cache.join("blobs"));

    let dry = pullthrough_json(&["gc", "--cache-dir", &dir, "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["eviction"].is_null(), "no max_size, no eviction: {dry}");
    assert_repair_counts(&dry);
    assert_eq!(
        files_under(&s.cache.join("blobs")),
        before,
        "gc --dry-run changed blobs/"
    );
    // Nothing was written to the index either: the same dry run again.
    let again = pullthrough_json(&["gc", "--cache-dir", &dir, "--dry-run"]);
    assert_eq!(again, dry, "a second dry run");

    let output = pullthrough(&["gc", "--cache-dir", &dir, "--dry-run"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("would remove"),
        "{text}"
    );

    let report = pullthrough_json(&["gc", "--cache-dir", &dir]);
    assert_eq!(report["dry_run"], false, "{report}");
    assert_repair_counts(&report);
    let q_layer_len = std::fs::metadata(&damage.orphan)
        .expect("orphan kept")
        .len();
    let p_config_len = std::fs::metadata(blob_path(&s.cache, &s.p.config_digest))
        .expect("p's config kept")
        .len();
    assert_eq!(report["reconcile"]["entries"], 2, "{report}");
    assert_eq!(
        report["reconcile"]["bytes"],
        q_layer_len + p_config_len,
        "{report}"
    );
    for gone in [
        &damage.corrupt_unindexed,
        &damage.corrupt_indexed,
        &damage.temp,
    ]
    .into_iter()
    .chain(&damage.strays)
    {
        assert!(!gone.exists(), "gc left {}", gone.display());
    }
    assert!(!damage.dangling.exists());
    assert_eq!(
        files_under(&s.cache.join("blobs")).len(),
        2,
        "{:?}",
        files_under(&s.cache.join("blobs"))
    );

    let clean = pullthrough_json(&["gc", "--cache-dir", &dir]);
    let r = &clean["reconcile"];
    for field in [
        "adopted",
        "removed_corrupt",
        "removed_stray",
        "dropped_entries",
    ] {
        assert_eq!(r[field], 0, "{field} on a repaired cache: {clean}");
    }
    assert_eq!(r["entries"], 2, "{clean}");
    let stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    assert_eq!(stats["blobs"], 2, "{stats}");
    assert_eq!(stats["bytes"], blob_bytes(&s.cache), "{stats}");

    // The repaired cache serves: the orphan from disk, the rest refetched.
    let mirror = Mirror::builder(&s.registry.url())
        .cache_dir(&s.cache)
        .start();
    get_blob(mirror.addr, "repair-q", &s.q.layer_digests[0]);
    assert_eq!(
        upstream_gets(&s.registry, "repair-q", &s.q.layer_digests[0]),
        0
    );
    get_blob(mirror.addr, "repair-p", &s.p.layer_digests[0]);
    assert_eq!(
        upstream_gets(&s.registry, "repair-p", &s.p.layer_digests[0]),
        2
    );
}

/// A dry run must not delete anything, leftover temp files included, and
/// neither must the read-only `cache stats` / `cache ls`.
#[test]
fn gc_dry_run_and_inspection_keep_leftover_temp_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(cache.join("tmp")).expect("tmp dir");
    let temp = cache.join("tmp/leftover.partial");
    std::fs::write(&temp, b"half a download").expect("temp file");
    let dir = cache.to_string_lossy().into_owned();
    for args in [
        vec!["gc", "--cache-dir", &dir, "--dry-run"],
        vec!["cache", "stats", "--cache-dir", &dir],
        vec!["cache", "ls", "--cache-dir", &dir],
    ] {
        let output = pullthrough(&args);
        assert!(output.status.success(), "{args:?}");
        assert!(
            temp.exists(),
            "`pullthrough {}` deleted tmp/leftover.partial",
            args.join(" ")
        );
    }
}

/// `gc --max-size` evicts least recently used blobs first, down to the
/// low-water mark (90%), and `--dry-run` only lists them.
#[test]
fn gc_max_size_evicts_least_recently_used_first() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let image = seed(
        &registry,
        tmp.path(),
        "gc-lru",
        600,
        &[1_000_000, 1_000_000, 1_000_000],
    );
    let cache = tmp.path().join("cache");
    let mut mirror = Mirror::builder(&registry.url()).cache_dir(&cache).start();
    // Used in the order 2, 0, 1 (a second apart): 2 is the least recent.
    let order = [2, 0, 1];
    for (n, &i) in order.iter().enumerate() {
        if n > 0 {
            next_second();
        }
        get_blob(mirror.addr, "gc-lru", &image.layer_digests[i]);
    }
    mirror.stop();
    let dir = cache.to_string_lossy().into_owned();
    let usage = blob_bytes(&cache);
    let max_size: u64 = 2 * 1024 * 1024;
    let expected: Vec<&str> = order[..2]
        .iter()
        .map(|&i| image.layer_digests[i].as_str())
        .collect();
    let removed = |report: &serde_json::Value| -> Vec<String> {
        report["eviction"]["removed"]
            .as_array()
            .expect("eviction.removed")
            .iter()
            .map(|pair| pair[0].as_str().expect("digest").to_string())
            .collect()
    };

    let before = files_under(&cache.join("blobs"));
    let dry = pullthrough_json(&["gc", "--cache-dir", &dir, "--max-size", "2MiB", "--dry-run"]);
    assert_eq!(dry["eviction"]["usage_before"], usage, "{dry}");
    assert_eq!(removed(&dry), expected, "LRU order: {dry}");
    assert_eq!(
        files_under(&cache.join("blobs")),
        before,
        "a dry run evicted"
    );

    let report = pullthrough_json(&["gc", "--cache-dir", &dir, "--max-size", "2MiB"]);
    assert_eq!(removed(&report), expected, "{report}");
    let freed = report["eviction"]["freed_bytes"]
        .as_u64()
        .expect("freed_bytes");
    assert_eq!(freed, usage - blob_bytes(&cache), "{report}");
    for digest in &expected {
        assert!(!cached(&cache, digest), "{digest} still cached");
    }
    assert!(cached(&cache, &image.layer_digests[1]));
    assert!(
        blob_bytes(&cache) <= max_size / 100 * 90,
        "under the low-water mark"
    );
    let stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    assert_eq!(stats["bytes"], blob_bytes(&cache), "{stats}");
}

/// Access times batched in memory reach the index when the server stops
/// cleanly: a blob used just before a SIGTERM counts as recently used.
#[test]
fn access_times_survive_a_clean_shutdown() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let image = seed(&registry, tmp.path(), "touch", 700, &[1_000_000, 1_000_000]);
    let (first, second) = (&image.layer_digests[0], &image.layer_digests[1]);
    let cache = tmp.path().join("cache");
    let mut mirror = Mirror::builder(&registry.url()).cache_dir(&cache).start();
    get_blob(mirror.addr, "touch", first);
    next_second();
    get_blob(mirror.addr, "touch", second);
    next_second();
    // Used again: first is now the most recently used...
    get_blob(mirror.addr, "touch", first);
    // ...and the server stops before its next 5 s flush.
    mirror.stop();
    assert_eq!(upstream_gets(&registry, "touch", first), 1);

    let dir = cache.to_string_lossy().into_owned();
    let dry = pullthrough_json(&["gc", "--cache-dir", &dir, "--max-size", "2MiB", "--dry-run"]);
    let removed = dry["eviction"]["removed"].as_array().expect("removed");
    assert_eq!(removed.len(), 1, "{dry}");
    assert_eq!(
        removed[0][0],
        second.as_str(),
        "the access just before shutdown was lost: gc would evict the blob used last"
    );
}

/// Every file under `blobs/sha256/` that is not `<shard>/<digest>` is a
/// stray, including one lying next to the shard directories.
#[test]
fn gc_removes_stray_files_beside_the_shard_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let blobs = cache.join("blobs/sha256");
    std::fs::create_dir_all(blobs.join("ab")).expect("shard dir");
    let in_shard = blobs.join("ab/junk");
    let beside = blobs.join("junk");
    std::fs::write(&in_shard, b"stray").expect("stray");
    std::fs::write(&beside, b"stray").expect("stray");
    let dir = cache.to_string_lossy().into_owned();
    let report = pullthrough_json(&["gc", "--cache-dir", &dir]);
    assert!(!in_shard.exists(), "{report}");
    assert!(!beside.exists(), "gc left blobs/sha256/junk: {report}");
    assert_eq!(report["reconcile"]["removed_stray"], 2, "{report}");
}
