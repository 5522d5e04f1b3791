//! Writes OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`) of
//! deterministic test images: real uncompressed tar layers of pseudo-random
//! bytes that a Docker daemon can unpack, a config, a manifest, and optionally
//! a two-platform image index. Returns every digest so tests can assert.

use serde_json::json;
use std::path::Path;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// One single-platform image as written into a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub layer_sizes: Vec<u64>,
    /// `amd64`, `arm64`, …
    pub architecture: String,
}

/// A multi-platform image: an OCI index over one image per architecture.
#[derive(Clone, Debug)]
pub struct MultiImage {
    pub index_digest: String,
    pub index: Vec<u8>,
    pub platforms: Vec<Image>,
}

impl MultiImage {
    /// The image for `architecture` (`amd64`, `arm64`).
    pub fn platform(&self, architecture: &str) -> &Image {
        self.platforms
            .iter()
            .find(|image| image.architecture == architecture)
            .unwrap_or_else(|| panic!("no {architecture} image in the index"))
    }
}

/// Writes a linux/amd64 image with one layer per entry of `layer_sizes` (bytes
/// of file content; the tar adds headers) into the layout at `dir`, tagged `tag`.
/// The same `seed` gives the same bytes and digests every time.
pub fn write_image(dir: &Path, tag: &str, seed: u64, layer_sizes: &[usize]) -> Image {
    init_layout(dir);
    let image = write_platform_image(dir, seed, "amd64", layer_sizes);
    let descriptor = descriptor(MEDIA_MANIFEST, &image.manifest_digest, image.manifest.len());
    write_index_json(dir, descriptor, tag);
    image
}

/// Writes an OCI image index listing a linux/amd64 and a linux/arm64 image
/// (each with its own layers) into the layout at `dir`, tagged `tag`.
pub fn write_multi_platform(dir: &Path, tag: &str, seed: u64, layer_sizes: &[usize]) -> MultiImage {
    init_layout(dir);
    let platforms: Vec<Image> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            write_platform_image(
                dir,
                seed.wrapping_add(1000 * (i as u64 + 1)),
                arch,
                layer_sizes,
            )
        })
        .collect();
    let manifests: Vec<_> = platforms
        .iter()
        .map(|image| {
            let mut d = descriptor(MEDIA_MANIFEST, &image.manifest_digest, image.manifest.len());
            d["platform"] = json!({"architecture": image.architecture, "os": "linux"});
            d
        })
        .collect();
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": manifests,
    }));
    let index_digest = write_blob(dir, &index);
    write_index_json(
        dir,
        descriptor(MEDIA_INDEX, &index_digest, index.len()),
        tag,
    );
    MultiImage {
        index_digest,
        index,
        platforms,
    }
}

/// The architecture name registries use for the machine running the tests.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no test image for architecture {other}"),
    }
}

fn write_platform_image(dir: &Path, seed: u64, architecture: &str, layer_sizes: &[usize]) -> Image {
    let mut layer_digests = Vec::new();
    let mut layer_sizes_out = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let layer = layer_tar(seed.wrapping_mul(31).wrapping_add(i as u64 + 1), i, size);
        layer_sizes_out.push(layer.len() as u64);
        layer_digests.push(write_blob(dir, &layer));
    }
    // Uncompressed layers: each diff_id is the layer digest itself.
    let config = to_bytes(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/pt/layer-0/data"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "history": layer_digests.iter().map(|_| json!({"created_by": "pullthrough test"})).collect::<Vec<_>>(),
    }));
    let config_digest = write_blob(dir, &config);
    let layers: Vec<_> = layer_digests
        .iter()
        .zip(&layer_sizes_out)
        .map(|(digest, &size)| descriptor(MEDIA_LAYER_TAR, digest, size as usize))
        .collect();
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config_digest, config.len()),
        "layers": layers,
    }));
    let manifest_digest = write_blob(dir, &manifest);
    Image {
        manifest_digest,
        manifest,
        config_digest,
        layer_digests,
        layer_sizes: layer_sizes_out,
        architecture: architecture.to_string(),
    }
}

/// A layer: directories `pt/` and `pt/layer-<n>/`, a `data` file of `size`
/// random bytes and a small `id` file, so equal sizes still differ.
fn layer_tar(seed: u64, n: usize, size: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut data = vec![0u8; size];
    rng.fill(&mut data);
    let mut tar = Tar::default();
    tar.dir("pt/");
    tar.dir(&format!("pt/layer-{n}/"));
    tar.file(&format!("pt/layer-{n}/data"), &data);
    tar.file(
        &format!("pt/layer-{n}/id"),
        format!("seed={seed} layer={n}\n").as_bytes(),
    );
    tar.finish()
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
}

fn write_index_json(dir: &Path, mut descriptor: serde_json::Value, tag: &str) {
    descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [descriptor]});
    std::fs::write(dir.join("index.json"), to_bytes(&index)).expect("write index.json");
}

/// Stores `bytes` under `blobs/sha256/<hex>` and returns `sha256:<hex>`.
fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = super::sha256_digest(bytes);
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::write(dir.join("blobs/sha256").join(hex), bytes).expect("write blob");
    digest
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialise json")
}

/// xorshift64: deterministic bytes without a rand crate.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A minimal ustar writer: directories and regular files, root-owned, mtime 0.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn dir(&mut self, path: &str) {
        self.header(path, 0o755, 0, b'5');
    }

    fn file(&mut self, path: &str, content: &[u8]) {
        self.header(path, 0o755, content.len() as u64, b'0');
        self.0.extend_from_slice(content);
        self.pad();
    }

    /// Two zero blocks end the archive.
    fn finish(mut self) -> Vec<u8> {
        self.0.resize(self.0.len() + 1024, 0);
        self.0
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) {
        assert!(
            path.len() < 100,
            "tar path too long for this writer: {path}"
        );
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut h[100..108], mode as u64); // mode
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0); // mtime
        h[148..156].fill(b' '); // checksum counts as spaces while summing
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.0.extend_from_slice(&h);
    }

    fn pad(&mut self) {
        let rem = self.0.len() % 512;
        if rem != 0 {
            self.0.resize(self.0.len() + 512 - rem, 0);
        }
    }
}

/// Zero-padded octal filling `field` but its last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    assert!(
        text.len() == width,
        "{value} does not fit a {width}-digit tar field"
    );
    field[..width].copy_from_slice(text.as_bytes());
}
