//! The disk budget, end to end: LRU eviction while images are pulled through
//! the mirror (skopeo, upstream `docker-registry`), eviction racing a slow
//! reader, blobs larger than the budget, and the offline inspection commands
//! (`cache stats`, `cache ls`, `gc` refusing a cache in use).

use crate::support::cache::{blob_bytes, blob_path, cached, files_under, SETTLE};
use crate::support::cli::{pullthrough, pullthrough_json};
use crate::support::client::{files_named, hex_of};
use crate::support::metrics::sample_sum;
use crate::support::mirror::Mirror;
use crate::support::oci_layout::{self, Image};
use crate::support::process::run_bounded;
use crate::support::registry::{get_blob, pull, seed, tools_present, upstream_gets, Registry};
use crate::support::{next_second, wait_until};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// Four ~2.9 MiB images through an 8 MiB cache: after every pull the blobs
/// fit the budget, the least recently *used* image goes first, a recently
/// used image costs no upstream blob GET, an evicted one is refetched whole.
#[test]
fn pulls_past_max_size_evict_least_recently_used_images() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let names = ["lru-a", "lru-b", "lru-c", "lru-d"];
    let images: Vec<Image> = names
        .iter()
        .enumerate()
        .map(|(i, name)| seed(&registry, tmp.path(), name, 100 + i as u64, &[3_000_000]))
        .collect();
    let layer = |i: usize| images[i].layer_digests[0].as_str();
    let max_size = 8 * MIB;
    let mirror = Mirror::builder(&registry.url())
        .arg("--max-size", "8MiB")
        .start();
    let cache = mirror.cache_dir.clone();
    let mut copies = 0;
    let mut pull_ = |i: usize| {
        copies += 1;
        let out = tmp.path().join(format!("out-{copies}"));
        pull(&mirror, names[i], &images[i], &out);
        let started = Instant::now();
        let bytes = wait_until("blobs/ within max_size", SETTLE, || {
            let bytes = blob_bytes(&cache);
            (bytes <= max_size).then_some(bytes)
        });
        eprintln!(
            "after copy {copies} ({}): {bytes} bytes under blobs/ (settled in {:?})",
            names[i],
            started.elapsed()
        );
    };

    // a and b fit; c pushes usage over the high-water mark and a goes.
    pull_(0);
    next_second();
    pull_(1);
    next_second();
    pull_(2);
    wait_until("a's layer evicted after pulling c", SETTLE, || {
        (!cached(&cache, layer(0))).then_some(())
    });
    assert!(cached(&cache, layer(1)), "b is more recent than a: kept");
    assert!(cached(&cache, layer(2)), "c was just pulled: kept");
    next_second();
    pull_(3);
    wait_until("b's layer evicted after pulling d", SETTLE, || {
        (!cached(&cache, layer(1))).then_some(())
    });
    assert!(cached(&cache, layer(2)) && cached(&cache, layer(3)));

    // Pull d, then c, again: both from cache. c is now the most recently
    // used although d was stored later.
    let blob_gets = registry.count_requests("GET", "/blobs/");
    next_second();
    pull_(3);
    next_second();
    pull_(2);
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        blob_gets,
        "upstream blob GETs when pulling cached images d and c again"
    );

    // a again: refetched (and verified by pull), and d, least recently
    // used, makes room for it.
    next_second();
    pull_(0);
    assert_eq!(upstream_gets(&registry, names[0], layer(0)), 2, "a's layer");
    wait_until("d's layer evicted after pulling a again", SETTLE, || {
        (!cached(&cache, layer(3))).then_some(())
    });
    assert!(
        cached(&cache, layer(2)),
        "c was used after d: LRU goes by last use, not by when content was stored"
    );
    assert!(cached(&cache, layer(0)), "a was just pulled again");
    let blob_gets = registry.count_requests("GET", "/blobs/");
    pull_(2);
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        blob_gets,
        "upstream blob GETs when pulling c, kept in cache, once more"
    );

    // The metrics agree with the disk.
    let (disk, files) = wait_until("metrics to match the disk", SETTLE, || {
        let text = mirror.metrics();
        let files = files_under(&cache.join("blobs"));
        let disk: u64 = files.iter().map(|f| f.1).sum();
        let size = sample_sum(&text, "pullthrough_cache_size_bytes", &[]) as u64;
        let entries = sample_sum(&text, "pullthrough_cache_entries", &[]) as usize;
        (size == disk && entries == files.len()).then_some((disk, files.len()))
    });
    let text = mirror.metrics();
    let evictions = sample_sum(&text, "pullthrough_cache_evictions_total", &[]);
    let evicted = sample_sum(&text, "pullthrough_cache_evicted_bytes_total", &[]);
    assert!(evictions >= 3.0, "evictions_total {evictions}");
    let three_layers: u64 = [0, 1, 3].iter().map(|&i| images[i].layer_sizes[0]).sum();
    assert!(
        evicted >= three_layers as f64,
        "evicted_bytes_total {evicted} < {three_layers}"
    );
    eprintln!("final: {disk} bytes in {files} files; {evictions} evictions, {evicted} bytes");
}

/// Reads an HTTP/1.1 response slowly through a socket with a tiny receive
/// buffer, so the server really is mid-transfer while the test does other
/// things (with default buffers the kernel would swallow megabytes).
struct SlowReader {
    runtime: tokio::runtime::Runtime,
    stream: tokio::net::TcpStream,
    content_length: u64,
    received: u64,
    hasher: sha2::Sha256,
}

impl SlowReader {
    fn start(addr: SocketAddr, path: &str) -> SlowReader {
        use sha2::Digest as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (stream, content_length, first) = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            let mut stream = socket.connect(addr).await.expect("connect");
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end;
                }
                let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
                    .await
                    .expect("response head in time")
                    .expect("read");
                assert!(n > 0, "connection closed before the response head");
                raw.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "slow GET: {head}");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length");
            (stream, length, raw[head_end + 4..].to_vec())
        });
        let mut hasher = sha2::Sha256::new();
        hasher.update(&first);
        SlowReader {
            runtime,
            stream,
            content_length,
            received: first.len() as u64,
            hasher,
        }
    }

    /// Reads at most `limit` more bytes (or to the end).
    fn read(&mut self, limit: u64) {
        use sha2::Digest as _;
        use tokio::io::AsyncReadExt as _;
        let (stream, hasher) = (&mut self.stream, &mut self.hasher);
        let (received, total) = (&mut self.received, self.content_length);
        self.runtime.block_on(async {
            let stop = received.saturating_add(limit).min(total);
            let mut buf = vec![0u8; 64 * 1024];
            while *received < stop {
                let want = ((stop - *received) as usize).min(buf.len());
                let n =
                    tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf[..want]))
                        .await
                        .expect("body bytes in time")
                        .expect("read body");
                assert!(n > 0, "body ended at {} of {total} bytes", *received);
                hasher.update(&buf[..n]);
                *received += n as u64;
            }
        });
    }

    fn finish(mut self) -> String {
        use sha2::Digest as _;
        self.read(u64::MAX);
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

/// A client is mid-way through a cached blob when new downloads push the
/// cache over budget: the blob it reads is not evicted under it, it gets
/// every right byte, and once it is done the blob is evictable (and then
/// refetched correctly).
#[test]
fn eviction_racing_a_slow_reader_keeps_its_blob() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let big = seed(&registry, tmp.path(), "race-big", 200, &[5_000_000]);
    let small: Vec<Image> = (0..3)
        .map(|i| {
            let name = format!("race-small-{i}");
            seed(&registry, tmp.path(), &name, 210 + i, &[1_800_000])
        })
        .collect();
    let x = big.layer_digests[0].as_str();
    // The budget from a config file this time.
    let mirror = Mirror::builder(&registry.url())
        .config(&format!(
            "max_size = \"8MiB\"\n[[upstream]]\nurl = \"{}\"\n",
            registry.url()
        ))
        .start();
    let cache = mirror.cache_dir.clone();

    get_blob(mirror.addr, "race-big", x);
    assert!(cached(&cache, x));
    next_second();

    let mut reader = SlowReader::start(mirror.addr, &format!("/v2/library/race-big/blobs/{x}"));
    assert_eq!(reader.content_length, big.layer_sizes[0]);
    reader.read(100_000);
    next_second();

    // 4.8 + 1.7 + 1.7 MiB > 7.6 MiB (95% of 8 MiB): the evictor must free
    // about 1 MiB, and x, least recently used, is leased.
    for (i, image) in small.iter().take(2).enumerate() {
        get_blob(
            mirror.addr,
            &format!("race-small-{i}"),
            &image.layer_digests[0],
        );
    }
    wait_until("an eviction", SETTLE, || {
        let text = mirror.metrics();
        (sample_sum(&text, "pullthrough_cache_evictions_total", &[]) >= 1.0).then_some(())
    });
    assert!(
        cached(&cache, x),
        "x was evicted while a client was reading it (it should be leased)"
    );
    assert!(blob_bytes(&cache) <= 8 * MIB);
    assert!(
        reader.received < reader.content_length / 2,
        "the reader is really mid-transfer ({} of {} bytes)",
        reader.received,
        reader.content_length
    );
    assert_eq!(
        reader.finish(),
        x,
        "bytes of the blob read across an eviction"
    );

    // Done reading: x is the least recently used and free to go.
    get_blob(mirror.addr, "race-small-2", &small[2].layer_digests[0]);
    wait_until("x evicted once nobody reads it", SETTLE, || {
        (!cached(&cache, x)).then_some(())
    });
    assert_eq!(upstream_gets(&registry, "race-big", x), 1);
    get_blob(mirror.addr, "race-big", x);
    assert_eq!(
        upstream_gets(&registry, "race-big", x),
        2,
        "x refetched after eviction"
    );
}

/// A blob larger than the whole budget is relayed, verified, but never
/// stored: nothing under the cache for it, and every GET goes upstream.
#[test]
fn blob_larger_than_max_size_streams_through_uncached() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let image = seed(&registry, tmp.path(), "huge", 300, &[1_500_000, 10_000]);
    let (huge, small) = (&image.layer_digests[0], &image.layer_digests[1]);
    let mirror = Mirror::builder(&registry.url())
        .arg("--max-size", "1MiB")
        .start();

    get_blob(mirror.addr, "huge", huge);
    assert!(
        files_named(&mirror.cache_dir, hex_of(huge)).is_empty(),
        "a blob larger than max_size left files behind: {:?}",
        files_named(&mirror.cache_dir, hex_of(huge))
    );
    assert!(files_under(&mirror.cache_dir.join("tmp")).is_empty());
    get_blob(mirror.addr, "huge", huge);
    assert!(files_named(&mirror.cache_dir, hex_of(huge)).is_empty());

    // The rest of the image still caches.
    get_blob(mirror.addr, "huge", small);
    get_blob(mirror.addr, "huge", small);
    assert_eq!(
        upstream_gets(&registry, "huge", small),
        1,
        "GETs of the small blob"
    );
    assert!(cached(&mirror.cache_dir, small));

    // Each client GET of the big blob costs one upstream GET, not two.
    assert_eq!(
        upstream_gets(&registry, "huge", huge),
        2,
        "upstream GETs of the big blob for two client GETs"
    );
}

/// After pulls, `cache stats` and `cache ls` (offline) count what the
/// cache holds; while the server runs, `gc` and `cache stats` refuse.
#[test]
fn cache_stats_and_ls_describe_pulled_images_and_gc_refuses_a_running_server() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let alpha = seed(&registry, tmp.path(), "stats-alpha", 400, &[50_000, 20_000]);
    let beta = seed(&registry, tmp.path(), "stats-beta", 401, &[30_000]);
    // A second tag of beta's repository, naming another image.
    let beta2_layout = tmp.path().join("layout-beta2");
    let beta2 = oci_layout::write_image(&beta2_layout, "v2", 402, &[40_000]);
    registry.seed(&beta2_layout, "v2", "library/stats-beta:v2");

    let mut mirror = Mirror::start(&registry.url());
    let cache = mirror.cache_dir.clone();
    let dir = cache.to_string_lossy().into_owned();
    pull(
        &mirror,
        "stats-alpha",
        &alpha,
        &tmp.path().join("out-alpha"),
    );
    pull(&mirror, "stats-beta", &beta, &tmp.path().join("out-beta"));
    let mut command = Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/stats-beta:v2", mirror.addr))
        .arg(format!("dir:{}", tmp.path().join("out-beta2").display()));
    assert!(run_bounded(command, Duration::from_secs(60))
        .status
        .success());

    // `cache stats|ls` ask the running mirror (tested in admin_api); gc
    // needs the cache to itself.
    for args in [
        vec!["gc", "--cache-dir", &dir],
        vec!["gc", "--cache-dir", &dir, "--dry-run"],
    ] {
        let output = pullthrough(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?} on a cache in use: {stderr}"
        );
        assert!(stderr.contains("in use"), "{args:?}: {stderr}");
    }
    // The refusals disturbed nothing: the mirror still serves from cache.
    let blob_gets = registry.count_requests("GET", "/blobs/");
    pull(
        &mirror,
        "stats-alpha",
        &alpha,
        &tmp.path().join("out-alpha-2"),
    );
    assert_eq!(registry.count_requests("GET", "/blobs/"), blob_gets);
    mirror.stop();

    let images = [&alpha, &beta, &beta2];
    let blobs: usize = images.iter().map(|i| 1 + i.layer_digests.len()).sum();
    let stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    assert_eq!(stats["blobs"], blobs, "{stats}");
    assert_eq!(stats["manifests"], 3, "{stats}");
    assert_eq!(stats["tags"], 3, "{stats}");
    assert_eq!(stats["repositories"], 2, "{stats}");
    assert_eq!(stats["bytes"], blob_bytes(&cache), "{stats}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let oldest = stats["oldest_access"].as_u64().expect("oldest_access");
    assert!(
        oldest <= now && now - oldest < 300,
        "oldest_access {oldest}, now {now}"
    );

    let image_size = |i: &Image| -> u64 {
        let config = std::fs::metadata(blob_path(&cache, &i.config_digest))
            .expect("config cached")
            .len();
        i.manifest.len() as u64 + config + i.layer_sizes.iter().sum::<u64>()
    };
    let rows = pullthrough_json(&["cache", "ls", "--cache-dir", &dir]);
    let rows = rows.as_array().expect("ls --json is a list");
    let row_of = |repo: &str, tag: &str| {
        rows.iter()
            .find(|r| r["repository"] == repo && r["tag"] == tag)
            .unwrap_or_else(|| panic!("{repo}:{tag} not listed: {rows:?}"))
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (repo, tag, image) in [
        ("library/stats-alpha", "v1", &alpha),
        ("library/stats-beta", "v1", &beta),
        ("library/stats-beta", "v2", &beta2),
    ] {
        let row = row_of(repo, tag);
        assert_eq!(row["digest"], image.manifest_digest.as_str(), "{row}");
        assert_eq!(row["size"], image_size(image), "{row}");
        assert!(row["last_used"].as_u64().is_some_and(|t| t <= now), "{row}");
        assert!(
            row["upstream"].as_str().is_some_and(|u| !u.is_empty()),
            "{row}"
        );
    }
    // Filtering by repository, with or without `library/`.
    for filter in ["stats-beta", "library/stats-beta"] {
        let rows = pullthrough_json(&["cache", "ls", filter, "--cache-dir", &dir]);
        let tags: Vec<&str> = rows
            .as_array()
            .expect("list")
            .iter()
            .map(|r| r["tag"].as_str().expect("tag"))
            .collect();
        assert_eq!(tags, ["v1", "v2"], "cache ls {filter}");
    }
    // The table: a header, then one aligned row per tag.
    let output = pullthrough(&["cache", "ls", "--cache-dir", &dir]);
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    let header: Vec<&str> = header.iter().map(|c| c.trim()).collect();
    assert_eq!(
        header,
        [
            "UPSTREAM",
            "REPOSITORY",
            "TAG",
            "DIGEST",
            "SIZE",
            "LAST USED"
        ],
        "{table}"
    );
    let tag_column = lines[0].find("TAG").expect("TAG column");
    for line in &lines[1..] {
        assert!(
            line[tag_column..].starts_with('v'),
            "columns not aligned:\n{table}"
        );
    }
    assert!(table.contains("library/stats-alpha"), "{table}");
    let output = pullthrough(&["cache", "stats", "--cache-dir", &dir]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("manifests") && text.contains("oldest access"),
        "{text}"
    );
}

/// Concurrent cold downloads reserve their announced length, so together
/// they never push the cache past `max_size` (the old behaviour: cache
/// everything, evict afterwards, overshoot by every download in flight).
/// Every client still gets its bytes: what cannot fit streams past the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_downloads_never_push_the_cache_past_max_size() {
    use crate::support::client::{client, read_transfer};
    use crate::support::hub::{Fault, Hub, Target};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const LAYER: usize = 4 * 1024 * 1024;
    const MAX: u64 = 10 * MIB;
    let hub = Hub::start().await;
    let image = hub.push_image("library/big", "v1", &[LAYER, LAYER, LAYER]);
    // Each layer takes about 2 s, so all three downloads overlap.
    hub.set_fault(Target::All, Fault::Throttle(2 * MIB));
    let mirror = Mirror::builder(&hub.url())
        .arg("--max-size", "10MiB")
        .start();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, cache) = (Arc::clone(&stop), mirror.cache_dir.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let used = bytes_under(&cache.join("blobs")) + bytes_under(&cache.join("tmp"));
                peak = peak.max(used);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let fetches = image.layers.iter().map(|(digest, bytes)| {
        let url = format!("{}/v2/library/big/blobs/{digest}", mirror.url());
        async move {
            let response = client().get(url).send().await.expect("mirror answers");
            assert_eq!(response.status(), 200, "{digest}");
            assert!(
                read_transfer(response).await.bytes() == *bytes,
                "{digest}: wrong bytes"
            );
        }
    });
    futures_util::future::join_all(fetches).await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    assert!(
        peak <= MAX,
        "the cache held {peak} bytes at its peak, over max_size {MAX}"
    );
    assert!(
        peak >= 2 * LAYER as u64,
        "two layers fit and were cached ({peak} bytes)"
    );
}

/// Bytes of the files below `dir` (their lengths; preallocated temp files
/// count at their full reservation).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
