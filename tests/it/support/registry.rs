//! Runs the Debian `docker-registry` (distribution 2.8) as a child process:
//! a plain registry to act as the upstream, seeded with `skopeo`, or a proxy
//! mode registry as the reference peer. Its access log tells tests which
//! requests it served.

use super::client::hex_of;
use super::mirror::Mirror;
use super::oci_layout::{self, Image};
use super::process::run_bounded;
use super::{require_tool, sha256_digest};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

pub struct Registry {
    child: Option<Child>,
    pub addr: SocketAddr,
    log_path: PathBuf,
    /// Config, log, and storage when the registry owns it.
    _tmp: tempfile::TempDir,
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Registry {
    /// A plain registry storing its content under `storage`.
    pub fn start(storage: &Path) -> Registry {
        Registry::start_with(Some(storage), "")
    }

    /// distribution in proxy mode mirroring `remote_url`, storing in a temp dir.
    pub fn start_proxy(remote_url: &str) -> Registry {
        Registry::start_with(None, &format!("proxy:\n  remoteurl: {remote_url}\n"))
    }

    fn start_with(storage: Option<&Path>, extra_yaml: &str) -> Registry {
        let tmp = tempfile::tempdir().expect("tempdir");
        let storage = storage.map_or_else(|| tmp.path().join("storage"), Path::to_path_buf);
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port())
            .parse()
            .expect("addr");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{extra_yaml}",
            storage.display()
        );
        let config_path = tmp.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        // The access log ("GET /v2/… HTTP/1.1" 200 …) goes to stdout, the
        // rest to stderr: one file keeps them in order.
        let log_path = tmp.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("create registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry {
            child: Some(child),
            addr,
            log_path,
            _tmp: tmp,
        };
        registry.wait_ready();
        registry
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as image references name the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http(self.addr, "GET", "/v2/", &[]).is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "docker-registry exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "docker-registry did not answer GET /v2/ within 20 s:\n{}",
            self.log()
        );
    }

    /// Pushes tag `tag` of the OCI layout at `oci_dir` as `dest` (e.g.
    /// `library/alpine:3`), byte for byte, and checks (with one manifest
    /// HEAD, which the access log shows) that the registry now names the tag
    /// by the layout's digest.
    pub fn seed(&self, oci_dir: &Path, tag: &str, dest: &str) {
        self.seed_with(oci_dir, tag, dest, |_| {});
    }

    /// [`Registry::seed`] with more of skopeo's options (signing, a
    /// `--registries.d`, environment) set by `configure`.
    pub fn seed_with(
        &self,
        oci_dir: &Path,
        tag: &str,
        dest: &str,
        configure: impl FnOnce(&mut Command),
    ) {
        // Without --preserve-digests skopeo gzips the uncompressed layers on
        // the way to a docker:// destination, which changes every digest.
        // --all keeps an index and every platform's image.
        let mut command = Command::new("skopeo");
        command.args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        configure(&mut command);
        command
            .arg(format!("oci:{}:{tag}", oci_dir.display()))
            .arg(format!("docker://{}/{dest}", self.host()));
        let output = super::process::run_bounded(command, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "skopeo copy into the registry failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (name, reference) = dest.rsplit_once(':').expect("dest is NAME:TAG");
        let expected = layout_digest(oci_dir, tag);
        assert_eq!(
            self.manifest_digest(name, reference).as_deref(),
            Some(expected.as_str()),
            "seeded digest"
        );
    }

    /// PUTs a manifest as a client pushing it would (the registry checks
    /// that what it names is there); returns the digest it answered.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let response = super::client::client()
            .put(format!("{}/v2/{name}/manifests/{reference}", self.url()))
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .expect("registry answers a manifest PUT");
        assert_eq!(response.status().as_u16(), 201, "PUT {name}:{reference}");
        super::client::header(&response, "docker-content-digest").expect("digest of the PUT")
    }

    /// Uploads a blob (one POST, one PUT, as a pushing client does);
    /// returns its digest.
    pub async fn push_blob(&self, name: &str, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        let client = super::client::client();
        let started = client
            .post(format!("{}/v2/{name}/blobs/uploads/", self.url()))
            .send()
            .await
            .expect("registry answers an upload POST");
        assert_eq!(started.status().as_u16(), 202, "POST upload to {name}");
        let location = super::client::header(&started, "location").expect("upload location");
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finished = client
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("registry answers an upload PUT");
        assert_eq!(finished.status().as_u16(), 201, "PUT blob {digest}");
        digest
    }

    /// A manifest's bytes as the registry serves them (OCI media types).
    pub fn manifest_bytes(&self, name: &str, reference: &str) -> Vec<u8> {
        let path = format!("/v2/{name}/manifests/{reference}");
        let response =
            http(self.addr, "GET", &path, &[("Accept", ACCEPT_ALL)]).expect("GET manifest");
        assert_eq!(response.status, 200, "GET {path}");
        response.body
    }

    /// The `Docker-Content-Digest` of a manifest HEAD, or None on a non-200.
    pub fn manifest_digest(&self, name: &str, reference: &str) -> Option<String> {
        let path = format!("/v2/{name}/manifests/{reference}");
        let response = http(self.addr, "HEAD", &path, &[("Accept", ACCEPT_ALL)]).ok()?;
        (response.status == 200).then_some(())?;
        response.header("docker-content-digest").map(str::to_string)
    }

    /// Every request in the access log so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.settle();
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// How many `method` requests with `path_contains` in their path were served,
    /// e.g. `count_requests("GET", "/blobs/")`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// The whole log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access line is written as the response completes, so a client may
    /// exit a moment before it lands: wait until the log stops growing.
    fn settle(&self) {
        let size = || {
            std::fs::metadata(&self.log_path)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            if now == last {
                return;
            }
            last = now;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The digest that tag `tag` names in the layout's `index.json`.
pub fn layout_digest(oci_dir: &Path, tag: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(oci_dir.join("index.json")).expect("read index.json"),
    )
    .expect("parse index.json");
    let manifests = index["manifests"].as_array().expect("manifests array");
    let entry = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}", oci_dir.display()));
    entry["digest"].as_str().expect("digest").to_string()
}

/// Parses `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:… HTTP/1.1" 200 123 "" "agent"`.
/// One access-log line (`… "GET /v2/… HTTP/1.1" 200 …`), if it is one.
pub fn parse_access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut parts = request.split(' ');
    let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
    proto.starts_with("HTTP/").then_some(())?;
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        status,
    })
}

/// What [`http`] read: enough of a response for probes and HEADs.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny blocking HTTP/1.0 client, enough for readiness probes and HEADs
/// without an async runtime.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = response[end + 4..].to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Whether docker-registry and skopeo are here (a failure under CI if not).
pub fn tools_present() -> bool {
    require_tool("docker-registry") && require_tool("skopeo")
}

/// Writes an image with one layer per size into its own layout under `root`
/// and seeds it into the registry as `library/<name>:v1`.
pub fn seed(registry: &Registry, root: &Path, name: &str, seed: u64, sizes: &[usize]) -> Image {
    let layout = root.join(format!("layout-{name}"));
    let image = oci_layout::write_image(&layout, "v1", seed, sizes);
    registry.seed(&layout, "v1", &format!("library/{name}:v1"));
    image
}

/// `skopeo copy docker://MIRROR/library/<name>:v1 dir:OUT` and checks every
/// byte of the copy against the seeded image.
pub fn pull(mirror: &Mirror, name: &str, image: &Image, out: &Path) {
    let mut command = Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/{name}:v1", mirror.addr))
        .arg(format!("dir:{}", out.display()));
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "skopeo copy of {name} through the mirror failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = std::fs::read(out.join("manifest.json")).expect("copied manifest");
    assert!(
        manifest == image.manifest,
        "{name}: manifest not byte-exact"
    );
    for digest in std::iter::once(&image.config_digest).chain(&image.layer_digests) {
        let bytes = std::fs::read(out.join(hex_of(digest)))
            .unwrap_or_else(|e| panic!("{name}: {digest} missing from the copy: {e}"));
        assert_eq!(
            sha256_digest(&bytes),
            *digest,
            "{name}: content of {digest}"
        );
    }
}

/// Upstream GETs of one blob, from the registry's access log.
pub fn upstream_gets(registry: &Registry, name: &str, digest: &str) -> usize {
    let path = format!("/v2/library/{name}/blobs/{digest}");
    registry
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

/// GETs a blob through the mirror and checks status and content.
pub fn get_blob(addr: SocketAddr, name: &str, digest: &str) {
    let path = format!("/v2/library/{name}/blobs/{digest}");
    let response = http(addr, "GET", &path, &[]).expect("GET blob through the mirror");
    assert_eq!(response.status, 200, "GET {path}");
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str()),
        "GET {path}: Content-Length"
    );
    assert_eq!(sha256_digest(&response.body), digest, "GET {path}: content");
}
