//! Writes a synthetic cache (BLOBS small blobs, TAGS tags with their
//! manifests) straight into a cache directory, through the crate's own
//! index, for `benches/bigcache.py`:
//!
//!     cargo bench --bench bigcache_gen -- DIR BLOBS TAGS [BLOB_SIZE] [ACCEPT]
//!
//! Prints one JSON line: what was written and how long it took. With no
//! arguments (as `cargo test --all-targets` runs it) it writes a small
//! cache into a temporary directory and checks the counts.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = "usage: bigcache_gen DIR BLOBS TAGS [BLOB_SIZE] [ACCEPT]";
    if args.is_empty() {
        self_check();
        return;
    }
    let number = |i: usize, default: Option<u64>| -> u64 {
        match args.get(i) {
            Some(a) => a
                .parse()
                .unwrap_or_else(|_| panic!("{usage}: {a:?} is no number")),
            None => default.unwrap_or_else(|| panic!("{usage}")),
        }
    };
    let dir = std::path::PathBuf::from(args.first().expect(usage));
    let shape = pullthrough::synthetic::Shape {
        blobs: number(1, None),
        tags: number(2, None),
        blob_size: number(3, Some(128)) as usize,
        upstream: "docker.io".into(),
        accept: args.get(4).cloned(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs(),
    };
    let started = Instant::now();
    let written = pullthrough::synthetic::write(&dir, &shape).expect("cache written");
    println!(
        r#"{{"blobs":{},"manifests":{},"tags":{},"bytes":{},"seconds":{:.2}}}"#,
        written.blobs,
        written.manifests,
        written.tags,
        written.bytes,
        started.elapsed().as_secs_f64()
    );
}

/// A small cache written and counted, so the test run exercises the
/// generator the bench relies on.
fn self_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let shape = pullthrough::synthetic::Shape {
        blobs: 64,
        tags: 8,
        blob_size: 128,
        upstream: "docker.io".into(),
        accept: None,
        now: 1_700_000_000,
    };
    let written = pullthrough::synthetic::write(dir.path(), &shape).expect("cache written");
    assert_eq!((written.blobs, written.tags), (64, 8), "what was asked for");
    assert!(written.manifests >= 1 && written.bytes >= 64 * 128);
    println!("bigcache_gen self-check: 64 blobs, 8 tags written");
}
