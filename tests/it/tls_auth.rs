//! A mirror that is safe to expose (issue 7): a TLS listener (rustls, h2
//! by ALPN) that curl, skopeo and a rustls client verify against a test CA
//! made with the `openssl` CLI, a certificate reloaded on SIGHUP while old
//! connections keep working, and client authentication (htpasswd bcrypt
//! users, static bearer tokens) in front of every `/v2` route.

use crate::support::client::{client, header, oci_error_code, read_transfer};
use crate::support::hub::{Hub, TestImage};
use crate::support::mirror::{Mirror, MirrorBuilder};
use crate::support::process::run_bounded;
use crate::support::{block_on, require_tool, sha256_digest, wait_until, ACCEPT};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How often the in-process mirror checks its TLS files here.
const TLS_POLL: Duration = Duration::from_millis(200);

/// Runs `openssl ARGS` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new("openssl");
    command.current_dir(dir).args(args);
    let output = run_bounded(command, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A throwaway CA that issues server certificates for 127.0.0.1.
pub(crate) struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=pullthrough test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        // skopeo reads every *.crt of a certificate directory as a CA.
        std::fs::create_dir(dir.path().join("certs.d")).expect("certs dir");
        std::fs::copy(dir.path().join("ca.crt"), dir.path().join("certs.d/ca.crt"))
            .expect("copy CA");
        TestCa { dir }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A directory holding only the CA, for skopeo's `--src-cert-dir`.
    fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Issues a server certificate for 127.0.0.1 and localhost with the given
    /// serial (hex) and common name; returns (cert PEM path, key PEM path).
    pub(crate) fn issue(&self, name: &str, serial_hex: &str) -> (PathBuf, PathBuf) {
        self.issue_for(name, serial_hex, "IP:127.0.0.1,DNS:localhost")
    }

    /// [`TestCa::issue`] for the subject alternative names `alt_names`
    /// (openssl's syntax: `DNS:*.mirror.example.com,IP:127.0.0.1`).
    pub(crate) fn issue_for(
        &self,
        name: &str,
        serial_hex: &str,
        alt_names: &str,
    ) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let ext = format!("{name}.ext");
        std::fs::write(
            d.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={alt_names}\n"
            ),
        )
        .expect("write extensions");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &format!("0x{serial_hex}"),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        (d.join(crt), d.join(key))
    }
}

/// The first certificate of a PEM file, as DER.
fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("read PEM")
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .as_ref()
        .to_vec()
}

/// A rustls client that trusts only the test CA and offers http/1.1.
pub(crate) fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert_der(ca)))
        .expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub(crate) type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a verified TLS connection to 127.0.0.1:`port`.
pub(crate) async fn tls_connect(connector: &tokio_rustls::TlsConnector, port: u16) -> TlsStream {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
        .expect("handshake verified against the test CA")
}

/// The certificate the server presented on `stream`, as DER.
fn presented(stream: &TlsStream) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates")[0]
        .as_ref()
        .to_vec()
}

/// One keep-alive HTTP/1.1 GET on `stream`; returns (status, body).
async fn get_on(stream: &mut TlsStream, path: &str) -> (u16, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut buf).await.expect("read head");
            assert!(n > 0, "connection closed before a response to {path}");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .expect("status")
            .parse()
            .expect("status");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a content-length (no chunked bodies expected here)");
        while raw.len() < head_end + length {
            let n = stream.read(&mut buf).await.expect("read body");
            assert!(n > 0, "connection closed mid-body");
            raw.extend_from_slice(&buf[..n]);
        }
        (status, raw[head_end..head_end + length].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("request on the TLS connection timed out")
}

/// `curl ARGS`, bounded; returns (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let mut command = Command::new("curl");
    command.args([
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--noproxy",
        "*",
    ]);
    command.args(args);
    let output = run_bounded(command, Duration::from_secs(30));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `skopeo copy docker://HOST/REFERENCE dir:OUT` with extra flags.
fn skopeo_copy(flags: &[&str], host: &str, reference: &str, out: &Path) -> Output {
    let mut command = Command::new("skopeo");
    command
        .args(["copy", "--quiet"])
        .args(flags)
        .arg(format!("docker://{host}/{reference}"))
        .arg(format!("dir:{}", out.display()))
        // No credentials from the machine's auth files.
        .env("REGISTRY_AUTH_FILE", out.with_extension("auth.json"));
    run_bounded(command, Duration::from_secs(120))
}

fn assert_copied(out: &Path, image: &TestImage) {
    let manifest = std::fs::read(out.join("manifest.json")).expect("copied manifest");
    assert!(manifest == image.manifest_bytes, "copied manifest differs");
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        let copied = std::fs::read(out.join(hex)).expect("copied blob");
        assert_eq!(sha256_digest(&copied), *digest);
        assert_eq!(&copied, bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tls_listener_is_verified_by_curl_and_skopeo_and_speaks_h2() {
    if !(require_tool("openssl") && require_tool("curl") && require_tool("skopeo")) {
        return;
    }
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[20_000, 3_000]);
    let ca = TestCa::new();
    let (cert, key) = ca.issue("first", "1001");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mirror = Mirror::builder(&hub.url())
        .arg("--tls-cert", cert_s)
        .arg("--tls-key", key_s)
        .start();
    let port = mirror.addr.port();
    let base = format!("https://127.0.0.1:{port}");
    let ca_file = ca.ca_file();
    let ca_s = ca_file.to_str().unwrap();

    tokio::task::block_in_place(|| {
        // h2 by ALPN, and http/1.1 for clients that only speak that.
        let format = "%{http_version} %{http_code}";
        let (code, out) = curl(&[
            "--cacert",
            ca_s,
            "-o",
            "/dev/null",
            "-w",
            format,
            &format!("{base}/v2/"),
        ]);
        assert_eq!((code, out.as_str()), (0, "2 200"), "curl over h2");
        let (code, out) = curl(&[
            "--http1.1",
            "--cacert",
            ca_s,
            "-o",
            "/dev/null",
            "-w",
            format,
            &format!("{base}/v2/"),
        ]);
        assert_eq!((code, out.as_str()), (0, "1.1 200"), "curl over http/1.1");
        // Without the test CA the certificate does not verify (exit 60).
        let (code, _) = curl(&["-o", "/dev/null", &format!("{base}/v2/")]);
        assert_eq!(code, 60, "curl must refuse the certificate without the CA");
        // A manifest over h2, byte for byte.
        let tmp = tempfile::tempdir().expect("tempdir");
        let saved = tmp.path().join("manifest");
        let (code, out) = curl(&[
            "--cacert",
            ca_s,
            "-H",
            &format!("Accept: {ACCEPT}"),
            "-o",
            saved.to_str().unwrap(),
            "-w",
            format,
            &format!("{base}/v2/library/app/manifests/v1"),
        ]);
        assert_eq!((code, out.as_str()), (0, "2 200"));
        assert_eq!(
            sha256_digest(&std::fs::read(&saved).unwrap()),
            image.manifest_digest
        );

        // skopeo verifies against a certificate directory holding the CA...
        let host = format!("127.0.0.1:{port}");
        let out = tmp.path().join("skopeo");
        let cert_dir = ca.cert_dir();
        let output = skopeo_copy(
            &[
                "--src-tls-verify=true",
                "--src-cert-dir",
                cert_dir.to_str().unwrap(),
            ],
            &host,
            "library/app:v1",
            &out,
        );
        assert!(
            output.status.success(),
            "skopeo over TLS: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_copied(&out, &image);
        // ...and refuses the mirror without it.
        let output = skopeo_copy(
            &["--src-tls-verify=true"],
            &host,
            "library/app:v1",
            &tmp.path().join("no-ca"),
        );
        assert!(!output.status.success(), "skopeo trusted an unknown CA");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_certificate_is_served_after_sighup_and_old_connections_keep_working() {
    if !require_tool("openssl") {
        return;
    }
    let hub = Hub::start().await;
    let ca = TestCa::new();
    let (first_cert, first_key) = ca.issue("first", "1001");
    let (second_cert, second_key) = ca.issue("second", "2002");
    let live = LiveCert::new(&first_cert, &first_key);
    // A process: it gets SIGHUP.
    let mirror = live.mirror(&hub).process().start();
    let cert = live.cert.clone();
    let port = mirror.addr.port();
    let pid = mirror.pid().to_string();
    let connector = tls_connector(&ca.ca_file());

    let mut old = tls_connect(&connector, port).await;
    assert_eq!(
        presented(&old),
        cert_der(&first_cert),
        "the first certificate"
    );
    assert_eq!(get_on(&mut old, "/v2/").await.0, 200);

    // Replace both files (each by an atomic rename), then SIGHUP.
    live.replace_with(&second_cert, &second_key);
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut fresh = wait_until(
        "new handshakes to get the second certificate after SIGHUP",
        Duration::from_secs(5),
        || {
            let fresh = block_on(tls_connect(&connector, port));
            (presented(&fresh) == cert_der(&second_cert)).then_some(fresh)
        },
    );
    assert_eq!(get_on(&mut fresh, "/v2/").await.0, 200);
    // The connection from before the reload still works, on its old cert,
    // in the same process.
    assert_eq!(
        get_on(&mut old, "/v2/").await.0,
        200,
        "old connection after reload"
    );
    assert_eq!(get_on(&mut old, "/healthz").await.0, 200);
    assert_eq!(mirror.pid().to_string(), pid);

    // A broken certificate file plus SIGHUP: the mirror keeps serving the
    // last good certificate instead of failing handshakes or exiting.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = tls_connect(&connector, port).await;
    assert_eq!(presented(&after), cert_der(&second_cert));
    assert_eq!(get_on(&mut after, "/healthz").await.0, 200);
    assert_eq!(get_on(&mut old, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_replaced_on_disk_is_picked_up_without_a_signal() {
    if !require_tool("openssl") {
        return;
    }
    let hub = Hub::start().await;
    let ca = TestCa::new();
    let (first_cert, first_key) = ca.issue("first", "3003");
    let (second_cert, second_key) = ca.issue("second", "4004");
    let live = LiveCert::new(&first_cert, &first_key);
    let mirror = live.mirror(&hub).timings(|t| t.tls_poll = TLS_POLL).start();
    let port = mirror.addr.port();
    let connector = tls_connector(&ca.ca_file());
    assert_eq!(
        presented(&tls_connect(&connector, port).await),
        cert_der(&first_cert)
    );
    // Let the modification times move past the ones the mirror recorded.
    tokio::time::sleep(Duration::from_millis(20)).await;
    live.replace_with(&second_cert, &second_key);
    // The files are polled every TLS_POLL (10 s in production).
    let started = Instant::now();
    wait_until(
        "the replaced certificate to be served",
        Duration::from_secs(15),
        || {
            let presented_now = presented(&block_on(tls_connect(&connector, port)));
            (presented_now == cert_der(&second_cert)).then_some(())
        },
    );
    eprintln!(
        "new certificate served {:?} after the swap",
        started.elapsed()
    );
}

/// Client credentials the auth tests configure.
const USER: &str = "alice";
const PASSWORD: &str = "wonderland-9Tz";
const TOKEN: &str = "ci-token-4f9a2c";

/// A mirror of `hub` that requires client credentials: an htpasswd file
/// with USER (bcrypt) and a bearer token file with TOKEN.
fn mirror_with_client_auth(hub: &Hub) -> (Mirror, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("# users\n{USER}:{hash}\n")).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# CI\n{TOKEN}\n")).unwrap();
    let toml = format!(
        // This suite sends many wrong credentials on purpose; throttling
        // them is tested in hardening_server.
        "client_auth_max_failures = 100000\nhtpasswd_file = \"{}\"\nbearer_tokens_file = \"{}\"\n\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n",
        htpasswd.display(),
        tokens.display(),
        hub.url()
    );
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();
    (mirror, dir)
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                alphabet[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

async fn get_with(
    base: &str,
    method: reqwest::Method,
    path: &str,
    auth: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .request(method, format!("{base}{path}"))
        .header("accept", ACCEPT);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.expect("mirror answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_auth_needs_a_bcrypt_user_or_a_bearer_token_on_every_v2_route() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[5_000]);
    let (mirror, _files) = mirror_with_client_auth(&hub);
    let base = mirror.url();
    let layer = image.layers[0].0.clone();
    let paths = [
        "/v2/".to_string(),
        "/v2/library/app/manifests/v1".into(),
        format!("/v2/library/app/blobs/{layer}"),
        "/v2/library/app/tags/list".into(),
        "/v2/app/manifests/v1?ns=docker.io".into(),
    ];
    let wrong_password = basic(USER, "wonderland");
    let unknown_user = basic("mallory", PASSWORD);
    let empty_password = basic(USER, "");
    let refused: [Option<&str>; 10] = [
        None,
        Some(&wrong_password),
        Some(&unknown_user),
        Some(&empty_password),
        Some("Basic !!!not-base64!!!"),
        Some("Basic"),
        Some("Bearer ci-token-4f9a2"),
        Some("Bearer "),
        Some("Digest username=\"alice\""),
        Some(TOKEN),
    ];
    for path in &paths {
        for auth in refused {
            for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                let response = get_with(&base, method.clone(), path, auth).await;
                assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
                assert_eq!(
                    header(&response, "www-authenticate").as_deref(),
                    Some("Basic realm=\"pullthrough\""),
                    "{method} {path} with {auth:?}"
                );
                if method == reqwest::Method::GET {
                    let body = response.bytes().await.unwrap();
                    assert_eq!(oci_error_code(&body).as_deref(), Some("UNAUTHORIZED"));
                }
            }
        }
    }
    // Writes without credentials are refused too, never served.
    let put = get_with(
        &base,
        reqwest::Method::PUT,
        "/v2/library/app/manifests/v1",
        None,
    )
    .await;
    assert!(
        [401, 405].contains(&put.status().as_u16()),
        "PUT: {}",
        put.status()
    );
    assert!(
        hub.requests().is_empty(),
        "refused requests reached the hub: {:?}",
        hub.requests()
    );

    // Health, readiness and metrics stay open for probes and scrapers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = get_with(&base, reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), 200, "{path}");
    }

    let good_basic = basic(USER, PASSWORD);
    let lower_scheme = good_basic.replacen("Basic", "basic", 1);
    let bearer = format!("Bearer {TOKEN}");
    for auth in [good_basic.as_str(), lower_scheme.as_str(), bearer.as_str()] {
        let response = get_with(&base, reqwest::Method::GET, "/v2/", Some(auth)).await;
        assert_eq!(response.status(), 200, "/v2/ with {auth}");
        let response = get_with(
            &base,
            reqwest::Method::GET,
            "/v2/library/app/manifests/v1",
            Some(auth),
        )
        .await;
        assert_eq!(response.status(), 200, "manifest with {auth}");
        assert_eq!(response.bytes().await.unwrap(), image.manifest_bytes);
        let response = get_with(
            &base,
            reqwest::Method::GET,
            &format!("/v2/library/app/blobs/{layer}"),
            Some(auth),
        )
        .await;
        assert_eq!(response.status(), 200, "blob with {auth}");
        assert_eq!(read_transfer(response).await.bytes(), image.layers[0].1);
    }
    // The mirror's own credentials are not passed upstream.
    for request in hub.requests() {
        let auth = request
            .headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        assert!(
            auth.as_deref() != Some(good_basic.as_bytes())
                && auth.as_deref() != Some(bearer.as_bytes()),
            "client credentials forwarded upstream: {}",
            request.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pulls_with_client_credentials_and_is_refused_without() {
    if !require_tool("skopeo") {
        return;
    }
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[8_000, 1_000]);
    let (mirror, _files) = mirror_with_client_auth(&hub);
    let host = mirror.addr.to_string();
    tokio::task::block_in_place(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let creds = format!("{USER}:{PASSWORD}");
        let output = skopeo_copy(
            &["--src-tls-verify=false", "--src-creds", &creds],
            &host,
            "library/app:v1",
            &tmp.path().join("basic"),
        );
        assert!(
            output.status.success(),
            "skopeo --src-creds: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_copied(&tmp.path().join("basic"), &image);
        // (No `--src-registry-token` case: containers/image only sends a
        // bearer token in answer to a Bearer challenge, and the mirror
        // challenges with Basic, so static tokens serve clients that send
        // `Authorization: Bearer` unasked, such as curl and CI scripts.)
        let wrong = format!("{USER}:not-the-password");
        for flags in [
            vec!["--src-tls-verify=false", "--src-no-creds"],
            vec!["--src-tls-verify=false", "--src-creds", wrong.as_str()],
        ] {
            let output = skopeo_copy(&flags, &host, "library/app:v1", &tmp.path().join("refused"));
            assert!(!output.status.success(), "skopeo {flags:?} was let in");
        }
    });
}

/// A certificate and key at fixed paths that a mirror serves from, whose
/// contents a test swaps while the mirror runs.
struct LiveCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl LiveCert {
    fn new(cert: &Path, key: &Path) -> LiveCert {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = LiveCert {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        std::fs::copy(cert, &live.cert).expect("copy certificate");
        std::fs::copy(key, &live.key).expect("copy key");
        live
    }

    fn mirror(&self, hub: &Hub) -> MirrorBuilder {
        let (cert, key) = (self.cert.to_str().unwrap(), self.key.to_str().unwrap());
        Mirror::builder(&hub.url())
            .arg("--tls-cert", cert)
            .arg("--tls-key", key)
    }

    /// Replaces both files, key first, each by an atomic rename.
    fn replace_with(&self, cert: &Path, key: &Path) {
        for (from, to) in [(key, &self.key), (cert, &self.cert)] {
            let staged = to.with_extension("new");
            std::fs::copy(from, &staged).expect("stage");
            std::fs::rename(&staged, to).expect("rename");
        }
    }
}
