//! Writes a synthetic cache (BLOBS small blobs, TAGS tags with their
//! manifests) straight into a cache directory, through the crate's own
//! index, for `benches/bigcache.py`:
//!
//!     cargo bench --bench bigcache_gen -- DIR BLOBS TAGS [BLOB_SIZE] [ACCEPT]
//!
//! Prints one JSON line: what was written and how long it took.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = "usage: bigcache_gen DIR BLOBS TAGS [BLOB_SIZE] [ACCEPT]";
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
