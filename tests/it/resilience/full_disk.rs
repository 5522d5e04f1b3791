//! A cache on a tiny filesystem (an 8 MiB tmpfs the test mounts; the suites
//! run as root) that fills up: blobs that do not fit stream from the
//! upstream to the client, verified, without caching; nothing partial is
//! left under blobs/ or tmp/; caching resumes once space returns.

use super::Series;
use super::{
    assert_blobs_verified, assert_no_manifest_get_by_tag, blob, cached, manifest, metric,
    mirror_on, pull, request_lines, temp_files, wait_until, REPO,
};
use crate::support::hub::{Hub, Kind};
use http::StatusCode;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const BYPASSES: Series = ("pullthrough_cache_bypasses_total", &[]);

/// A size-limited tmpfs, unmounted when dropped. Declare it before the
/// mirror that uses it, so the mirror is gone first.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`); `None` (a skip) if mounting is
    /// not possible here, a panic if it is not possible under `CI=true`.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        let failure = match output {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot mount a tmpfs (CI=true; the suites run as root): {why}");
            }
            eprintln!("skipping: cannot mount a tmpfs (run as root): {why}");
            return None;
        }
        Some(Tmpfs { path, _dir: dir })
    }

    /// Bytes an unprivileged writer can still use.
    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Writes `path` until it holds `len` bytes or the disk is full; returns
/// the bytes written.
fn fill(path: &Path, len: u64) -> u64 {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    while written < len {
        let n = chunk
            .len()
            .min(usize::try_from(len - written).unwrap_or(chunk.len()));
        match file.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_streams_past_the_cache_and_caching_resumes() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let cache = disk.path.join("cache");
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[3 * MIB]);
    let big = hub.push_image(REPO, "big", &[12 * MIB]);
    let (layer, layer_bytes) = image.layers[0].clone();
    let (big_layer, big_bytes) = big.layers[0].clone();
    let mirror = mirror_on(&hub.url(), &cache, "");

    // Manifest and config fit; then the disk fills to within 1 MiB.
    let (status, bytes) = manifest(&mirror, "v1").await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, image.manifest_bytes.clone())
    );
    assert_eq!(
        blob(&mirror, &image.config.0).await.as_ref(),
        Ok(&image.config.1)
    );
    let filler = disk.path.join("filler");
    fill(&filler, disk.free().saturating_sub(MIB as u64));
    assert!(disk.free() < 2 * MIB as u64, "free: {}", disk.free());
    hub.reset_counts();

    // A blob larger than the free space, and one larger than the disk:
    // right bytes, nothing cached, nothing partial, counted.
    let before = metric(&mirror, BYPASSES);
    assert_eq!(blob(&mirror, &layer).await.as_ref(), Ok(&layer_bytes));
    assert_eq!(blob(&mirror, &big_layer).await.as_ref(), Ok(&big_bytes));
    assert_eq!(metric(&mirror, BYPASSES), before + 2.0);
    assert!(!cached(&cache, &layer) && !cached(&cache, &big_layer));
    wait_until("tmp/ to empty", Duration::from_secs(5), || {
        (temp_files(&cache).is_empty()).then_some(())
    });
    assert_blobs_verified(&cache);
    // Each bypass costs the hub two downloads today: the cache's own,
    // dropped when the reservation fails, and the relay's.
    assert!(hub.count(Kind::CdnGet) >= 2, "the hub served both blobs");

    // Space returns: the next pull caches, the one after costs nothing.
    std::fs::remove_file(&filler).expect("free the disk");
    assert_eq!(blob(&mirror, &layer).await.as_ref(), Ok(&layer_bytes));
    wait_until("the blob in the cache", Duration::from_secs(10), || {
        (cached(&cache, &layer)).then_some(())
    });
    hub.reset_counts();
    pull(&mirror, "v1", &image).await;
    assert!(hub.requests().is_empty(), "{:?}", request_lines(&hub));
    assert_eq!(metric(&mirror, BYPASSES), before + 2.0);
    assert_blobs_verified(&cache);
    assert!(temp_files(&cache).is_empty());
    assert_no_manifest_get_by_tag(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_with_no_room_left_still_serves_a_fresh_pull() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let cache = disk.path.join("cache");
    let hub = Hub::start().await;
    let image = hub.push_image(REPO, "v1", &[MIB, 4096]);
    let mirror = mirror_on(&hub.url(), &cache, "");

    let filler = disk.path.join("filler");
    fill(&filler, u64::MAX);
    assert!(disk.free() < 64 * 1024, "free: {}", disk.free());

    // Manifest, config and layers of an image never seen: the disk is
    // full, the pull must not fail. Every step is tried, then checked.
    let mut problems = Vec::new();
    attempt_pull(&mirror, &image, "full disk", &mut problems).await;
    for (digest, _) in std::iter::once(&image.config).chain(&image.layers) {
        assert!(!cached(&cache, digest));
    }
    assert_blobs_verified(&cache);
    let bypasses = metric(&mirror, BYPASSES);
    if bypasses < 2.0 {
        problems.push(format!("full disk: {bypasses} bypasses counted"));
    }

    std::fs::remove_file(&filler).expect("free the disk");
    attempt_pull(&mirror, &image, "space back", &mut problems).await;
    let layer = &image.layers[0].0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cached(&cache, layer) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !cached(&cache, layer) {
        problems.push("space back: the layer was not cached".into());
    }
    assert_blobs_verified(&cache);
    assert_no_manifest_get_by_tag(&hub);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Pulls `image` by tag `v1`, noting every step that fails in `problems`.
async fn attempt_pull(
    mirror: &crate::support::mirror::Mirror,
    image: &crate::support::hub::TestImage,
    phase: &str,
    problems: &mut Vec<String>,
) {
    let (status, bytes) = manifest(mirror, "v1").await;
    if status != StatusCode::OK || bytes != image.manifest_bytes {
        let body = String::from_utf8_lossy(&bytes).into_owned();
        problems.push(format!("{phase}: manifest by tag: {status} {body}"));
    }
    let (status, bytes) = manifest(mirror, &image.manifest_digest).await;
    if status != StatusCode::OK || bytes != image.manifest_bytes {
        let body = String::from_utf8_lossy(&bytes).into_owned();
        problems.push(format!("{phase}: manifest by digest: {status} {body}"));
    }
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        match blob(mirror, digest).await {
            Ok(got) if got == *bytes => {}
            Ok(_) => problems.push(format!("{phase}: blob {digest}: wrong bytes")),
            Err(e) => problems.push(format!("{phase}: blob {digest}: {e}")),
        }
    }
}
