//! Signature verification through the mirror with real clients: skopeo
//! signs an image on a Debian `docker-registry` upstream, Podman pulls it
//! through the mirror (a `registries.conf` mirror entry, as users set it
//! up) under a policy that requires that key, refuses an unsigned image,
//! and still pulls the signed one from the cache with the upstream gone.
//!
//! Debian builds skopeo and Podman with sigstore compiled out (both stop
//! with "Debian-local change: sigstore disabled"), so the policy-checked
//! signature here is skopeo's GPG simple signing, kept in a lookaside
//! directory: what the mirror must get right is serving manifests
//! byte-exact, since the signature names the manifest's digest. The
//! sigstore path is covered as far as Debian's tools go: a cosign-format
//! `sha256-<hex>.sig` attachment (made with openssl) that skopeo reads
//! through the mirror, also with the upstream stopped, and that openssl
//! verifies.

use crate::support::cache::cached;
use crate::support::mirror::Mirror;
use crate::support::oci_layout;
use crate::support::podman::Podman;
use crate::support::process::run_bounded;
use crate::support::registry::Registry;
use crate::support::require_tool;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn tools_present() -> bool {
    ["docker-registry", "skopeo", "podman", "gpg"]
        .iter()
        .all(|tool| require_tool(tool))
}

/// A throwaway GPG signing key in a home of its own.
struct SigningKey {
    gnupg_home: PathBuf,
    fingerprint: String,
    public_keyring: PathBuf,
}

fn gpg(home: &Path, args: &[&str]) -> Output {
    let mut command = Command::new("gpg");
    command
        .env("GNUPGHOME", home)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(args);
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "gpg {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn signing_key(dir: &Path) -> SigningKey {
    let gnupg_home = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg_home).expect("gnupg home");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&gnupg_home, std::fs::Permissions::from_mode(0o700))
            .expect("gnupg home mode");
    }
    gpg(
        &gnupg_home,
        &[
            "--quick-gen-key",
            "pullthrough test <signer@pullthrough.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
    );
    let listing = gpg(&gnupg_home, &["--list-keys", "--with-colons"]);
    let fingerprint = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|rest| rest.split(':').find(|f| f.len() == 40))
        .expect("a fingerprint in gpg's listing")
        .to_string();
    let exported = gpg(&gnupg_home, &["--export"]);
    let public_keyring = dir.join("signer.gpg");
    std::fs::write(&public_keyring, exported.stdout).expect("write public key");
    SigningKey {
        gnupg_home,
        fingerprint,
        public_keyring,
    }
}

fn assert_pulled(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: podman pull failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn podman_verifies_a_signed_image_through_the_mirror_and_from_cache_in_an_outage() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = signing_key(tmp.path());
    // Where the signer publishes signatures and verifiers read them: the
    // lookaside store of containers-registries.d(5).
    let lookaside = tmp.path().join("signatures");
    let registries_d = tmp.path().join("home/.config/containers/registries.d");
    std::fs::create_dir_all(&registries_d).expect("registries.d");
    std::fs::write(
        registries_d.join("default.yaml"),
        format!(
            "default-docker:\n  lookaside: file://{0}\n  lookaside-staging: file://{0}\n",
            lookaside.display()
        ),
    )
    .expect("write registries.d");

    let registry = Registry::start(&tmp.path().join("registry"));
    let signed_layout = tmp.path().join("layout-signed");
    let signed = oci_layout::write_image(&signed_layout, "v1", 41, &[50_000]);
    registry.seed_with(&signed_layout, "v1", "library/signed:v1", |skopeo| {
        skopeo
            .env("GNUPGHOME", &key.gnupg_home)
            .arg("--registries.d")
            .arg(&registries_d)
            .args(["--sign-by", &key.fingerprint]);
    });
    let unsigned_layout = tmp.path().join("layout-unsigned");
    let unsigned = oci_layout::write_image(&unsigned_layout, "v1", 42, &[50_000]);
    registry.seed(&unsigned_layout, "v1", "library/unsigned:v1");

    let mirror = Mirror::start(&registry.url());
    let upstream = registry.host();
    let registries_conf = tmp.path().join("registries.conf");
    std::fs::write(
        &registries_conf,
        format!(
            "[[registry]]\nlocation = \"{upstream}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            mirror.addr
        ),
    )
    .expect("write registries.conf");
    let policy = tmp.path().join("policy.json");
    let rules = json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {upstream.clone(): [{
            "type": "signedBy",
            "keyType": "GPGKeys",
            "keyPath": key.public_keyring,
        }]}},
    });
    std::fs::write(&policy, rules.to_string()).expect("write policy.json");
    let podman = Podman {
        root: tmp.path().join("podman"),
        home: tmp.path().join("home"),
        registries_conf,
        policy,
    };
    let signed_ref = format!("{upstream}/library/signed:v1");
    let unsigned_ref = format!("{upstream}/library/unsigned:v1");

    assert_pulled(&podman.pull("first", &signed_ref), "signed image");
    assert_eq!(podman.digest("first", &signed_ref), signed.manifest_digest);
    assert!(
        cached(&mirror.cache_dir, &signed.manifest_digest)
            && signed
                .layer_digests
                .iter()
                .all(|d| cached(&mirror.cache_dir, d)),
        "the pull went through the mirror, which kept manifest and layers"
    );

    let refused = podman.pull("first", &unsigned_ref);
    assert!(
        !refused.status.success(),
        "an unsigned image must be refused by the policy"
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("signature"),
        "refused for its missing signature, not something else: {why}"
    );
    assert!(
        cached(&mirror.cache_dir, &unsigned.manifest_digest),
        "the unsigned manifest came through the mirror before the policy refused it"
    );

    // The upstream gone: a fresh Podman store pulls and verifies the signed
    // image from the mirror's cache alone.
    drop(registry);
    assert_pulled(
        &podman.pull("outage", &signed_ref),
        "signed image with the upstream stopped",
    );
    assert_eq!(podman.digest("outage", &signed_ref), signed.manifest_digest);
}

/// `openssl ARGS…`, asserting success; its stdout.
fn openssl(args: &[&str]) -> Vec<u8> {
    let mut command = Command::new("openssl");
    command.args(args);
    let output = run_bounded(command, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Base64 of `bytes`, one line (openssl: the test suite has no base64 crate).
fn base64(dir: &Path, bytes: &[u8]) -> String {
    let input = dir.join("to-encode");
    std::fs::write(&input, bytes).expect("write");
    let encoded = openssl(&["base64", "-A", "-in", &input.display().to_string()]);
    String::from_utf8(encoded).expect("base64 is ASCII")
}

fn unbase64(dir: &Path, text: &str) -> Vec<u8> {
    let input = dir.join("to-decode");
    std::fs::write(&input, text).expect("write");
    openssl(&["base64", "-d", "-A", "-in", &input.display().to_string()])
}

/// A signature in the format cosign and containers/image keep under the
/// tag `sha256-<hex>.sig`: an image manifest whose layer is the signed
/// "simple signing" payload, the ECDSA signature in its annotation.
/// (Debian's skopeo cannot make one: sigstore is compiled out.)
async fn attach_sigstore_signature(
    registry: &Registry,
    name: &str,
    image: &oci_layout::Image,
    key: &Path,
    dir: &Path,
) -> (Vec<u8>, String) {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{name}:v1", registry.host())},
            "image": {"docker-manifest-digest": image.manifest_digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("json");
    let payload_file = dir.join("payload.json");
    std::fs::write(&payload_file, &payload).expect("write payload");
    let signature = openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        &key.display().to_string(),
        &payload_file.display().to_string(),
    ]);
    let signature = base64(dir, &signature);
    let payload_digest = registry.push_blob(name, payload.clone()).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    }))
    .expect("json");
    let config_len = config.len();
    let config_digest = registry.push_blob(name, config).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": oci_layout::MEDIA_MANIFEST,
        "config": {"mediaType": oci_layout::MEDIA_CONFIG, "digest": config_digest, "size": config_len},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    });
    let tag = format!("{}.sig", image.manifest_digest.replace(':', "-"));
    registry
        .put_manifest(
            name,
            &tag,
            oci_layout::MEDIA_MANIFEST,
            serde_json::to_vec(&manifest).expect("json"),
        )
        .await;
    (payload, signature)
}

/// `skopeo copy` from the mirror into `dir:OUT`, reading sigstore
/// attachments; the signature it stored, split into (payload, signature
/// annotation).
fn copy_with_signature(
    mirror: &Mirror,
    name: &str,
    registries_d: &Path,
    out: &Path,
) -> (Vec<u8>, String) {
    let policy = out.with_extension("policy.json");
    std::fs::write(&policy, crate::support::podman::ACCEPT_ANYTHING).expect("write policy");
    let mut command = Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(registries_d)
        .arg(format!("docker://{}/{name}:v1", mirror.addr))
        .arg(format!("dir:{}", out.display()));
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "skopeo copy from the mirror failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = std::fs::read(out.join("signature-1")).expect("skopeo stored the signature");
    // containers/image's own framing of a sigstore signature on disk.
    let json = stored
        .strip_prefix(b"\0sigstore-json\n")
        .expect("a sigstore signature");
    let signature: serde_json::Value = serde_json::from_slice(json).expect("signature json");
    let payload = unbase64(
        out.parent().expect("parent"),
        signature["payload"].as_str().expect("payload"),
    );
    let annotation = signature["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("signature annotation")
        .to_string();
    (payload, annotation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigstore_attachment_reaches_skopeo_through_the_mirror_intact_also_in_an_outage() {
    if !(tools_present() && require_tool("openssl")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let key = dir.join("sigstore.key");
    let public = dir.join("sigstore.pub");
    let path = |p: &Path| p.display().to_string();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &path(&key),
    ]);
    openssl(&["ec", "-in", &path(&key), "-pubout", "-out", &path(&public)]);

    let registry = Registry::start(&dir.join("registry"));
    let name = "library/cosigned";
    let image = crate::support::registry::seed(&registry, dir, "cosigned", 43, &[30_000]);
    let (payload, signature) = attach_sigstore_signature(&registry, name, &image, &key, dir).await;
    let registries_d = dir.join("registries.d");
    std::fs::create_dir_all(&registries_d).expect("registries.d");
    std::fs::write(
        registries_d.join("default.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    )
    .expect("write registries.d");
    let mirror = Mirror::start(&registry.url());

    let verify = |copied: (Vec<u8>, String), what: &str| {
        assert!(copied.0 == payload, "{what}: payload not byte-exact");
        assert_eq!(copied.1, signature, "{what}: signature annotation");
        let payload_file = dir.join("copied-payload");
        std::fs::write(&payload_file, &copied.0).expect("write");
        let sig_file = dir.join("copied-signature");
        std::fs::write(&sig_file, unbase64(dir, &copied.1)).expect("write");
        let verified = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            &path(&public),
            "-signature",
            &path(&sig_file),
            &path(&payload_file),
        ]);
        assert!(
            String::from_utf8_lossy(&verified).contains("Verified OK"),
            "{what}"
        );
        let claims: serde_json::Value = serde_json::from_slice(&copied.0).expect("payload");
        assert_eq!(
            claims["critical"]["image"]["docker-manifest-digest"],
            image.manifest_digest.as_str(),
            "{what}: the signature is for this image"
        );
    };
    let copied = copy_with_signature(&mirror, name, &registries_d, &dir.join("out"));
    verify(copied, "through the mirror");

    drop(registry);
    let copied = copy_with_signature(&mirror, name, &registries_d, &dir.join("out-outage"));
    verify(copied, "with the upstream stopped");
}
