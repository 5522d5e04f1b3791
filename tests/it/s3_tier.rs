//! The object-storage tier (issue 11) against a real Ceph RGW (see
//! `support::rgw`): replicas share what any of them fetched, a corrupt
//! object is never served as complete and is replaced from the upstream,
//! and a store that cannot be reached never fails a pull.

use crate::support::cli::pullthrough_json;
use crate::support::client::{client, files_named, hex_of, read_transfer, Transfer};
use crate::support::hub::{Fault, Hub, Kind, Target};
use crate::support::mirror::Mirror;
use crate::support::rgw::{rgw, Rgw, ACCESS_KEY};
use crate::support::tcp_proxy::{Pace, TcpProxy};
use crate::support::{sha256_digest, wait_until};
use http::StatusCode;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
/// Longest wait for a background upload to land in the bucket.
const UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Blocking work (curl, process start-up) off the async workers.
fn sync<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// The mirror's config for `bucket/prefix` on `endpoint`.
fn storage_toml(endpoint: &str, bucket: &str, prefix: &str, secret_file: &Path) -> String {
    format!(
        "[storage]\nurl = \"s3://{bucket}/{prefix}\"\n[storage.s3]\nendpoint = \"{endpoint}\"\n\
         path_style = true\nallow_http = true\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key_file = \"{}\"\n",
        secret_file.display()
    )
}

fn rgw_toml(rgw: &Rgw, bucket: &str) -> String {
    storage_toml(&rgw.endpoint, bucket, "mirror", &rgw.secret_file)
}

fn object_key(digest: &str) -> String {
    format!("mirror/blobs/sha256/{}", hex_of(digest))
}

async fn get_blob(mirror: &Mirror, repo: &str, digest: &str) -> (StatusCode, Transfer) {
    let url = format!("{}/v2/{repo}/blobs/{digest}", mirror.url());
    let response = client().get(url).send().await.expect("blob GET");
    let status = response.status();
    (status, read_transfer(response).await)
}

/// Pulls `digest` and checks every byte against it.
async fn pull_verified(mirror: &Mirror, repo: &str, digest: &str) {
    let (status, transfer) = get_blob(mirror, repo, digest).await;
    assert_eq!(status, StatusCode::OK, "GET {digest}");
    assert_eq!(
        sha256_digest(&transfer.bytes()),
        digest,
        "bytes of {digest}"
    );
}

fn wait_uploaded(rgw: &Rgw, bucket: &str, digest: &str) {
    let key = object_key(digest);
    sync(|| {
        wait_until(&format!("{key} in the bucket"), UPLOAD_WAIT, || {
            rgw.get_object(bucket, &key)
                .filter(|bytes| sha256_digest(bytes) == digest)
                .map(drop)
        })
    })
}

fn cached(mirror: &Mirror, digest: &str) -> bool {
    !files_named(&mirror.cache_dir.join("blobs"), hex_of(digest)).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_replica_with_an_empty_disk_pulls_from_the_bucket_not_the_upstream() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("shared"));
    let hub = Hub::start().await;
    // One layer above the multipart threshold (64 MiB), one small.
    let image = hub.push_image("library/app", "v1", &[300_000, 70 * MIB]);
    let digests: Vec<String> = std::iter::once(image.config.0.clone())
        .chain(image.layers.iter().map(|(d, _)| d.clone()))
        .collect();

    let first = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    for digest in &digests {
        pull_verified(&first, "library/app", digest).await;
    }
    for digest in &digests {
        wait_uploaded(rgw, &bucket, digest);
    }
    // 70 MiB went up in 16 MiB parts; 300 kB in one PUT.
    let etag = |d: &str| sync(|| rgw.etag(&bucket, &object_key(d))).expect("etag");
    assert!(etag(&digests[2]).ends_with("-5\""), "{}", etag(&digests[2]));
    assert!(!etag(&digests[1]).contains('-'), "{}", etag(&digests[1]));
    assert_eq!(
        first.metric("pullthrough_tier_uploads_total", &[("result", "stored")]),
        digests.len() as f64
    );
    assert_eq!(
        first.metric("pullthrough_tier_lookups_total", &[("result", "miss")]),
        digests.len() as f64
    );

    hub.reset_counts();
    let second = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    for digest in &digests {
        assert!(!cached(&second, digest), "the second disk starts empty");
        pull_verified(&second, "library/app", digest).await;
        assert!(
            cached(&second, digest),
            "{digest} in the second's local tier"
        );
    }
    assert_eq!(hub.count(Kind::BlobGet), 0, "no upstream blob GET");
    assert_eq!(hub.count(Kind::CdnGet), 0, "no upstream blob bytes");
    assert_eq!(
        second.metric("pullthrough_tier_lookups_total", &[("result", "hit")]),
        digests.len() as f64
    );
    // What came from the bucket is not uploaded again.
    assert_eq!(second.metric("pullthrough_tier_uploads_total", &[]), 0.0);
    // Now local: a third GET asks neither the bucket nor the upstream.
    pull_verified(&second, "library/app", &digests[1]).await;
    assert_eq!(
        second.metric("pullthrough_tier_lookups_total", &[]),
        digests.len() as f64
    );
}

/// The manifest of `repo:tag` through `mirror`: status, content type, bytes.
async fn get_manifest(mirror: &Mirror, repo: &str, tag: &str) -> (StatusCode, String, Vec<u8>) {
    let response = client()
        .get(format!("{}/v2/{repo}/manifests/{tag}", mirror.url()))
        .header("accept", crate::support::ACCEPT)
        .send()
        .await
        .expect("manifest GET");
    let status = response.status();
    let media_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response.bytes().await.expect("manifest body").to_vec();
    (status, media_type, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_an_empty_disk_serves_a_tag_stale_from_the_bucket_through_an_outage() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("tags"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[300_000, 200_000]);
    // A zero tag_ttl: every tag request asks the upstream first, so the
    // second replica can only answer through the outage as stale.
    let toml = format!(
        "{}[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntag_ttl = \"0s\"\nmax_stale = \"1h\"\n",
        rgw_toml(rgw, &bucket),
        hub.url()
    );
    let blobs: Vec<(String, bytes::Bytes)> = std::iter::once(image.config.clone())
        .chain(image.layers.iter().cloned())
        .collect();

    let first = Mirror::builder(&hub.url()).config(&toml).start();
    let (status, _, bytes) = get_manifest(&first, "library/app", "v1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_digest(&bytes), image.manifest_digest);
    for (digest, _) in &blobs {
        pull_verified(&first, "library/app", digest).await;
    }
    for digest in std::iter::once(&image.manifest_digest).chain(blobs.iter().map(|(d, _)| d)) {
        wait_uploaded(rgw, &bucket, digest);
    }
    let tag_objects = sync(|| {
        wait_until("the tag's object in the bucket", UPLOAD_WAIT, || {
            let keys: Vec<String> = rgw
                .keys(&bucket)
                .into_iter()
                .filter(|k| k.starts_with("mirror/tags/docker.io/library/app/_tags/v1/"))
                .collect();
            (!keys.is_empty()).then_some(keys)
        })
    });
    let shared = sync(|| rgw.get_object(&bucket, &tag_objects[0])).expect("tag object");
    let shared: serde_json::Value = serde_json::from_slice(&shared).expect("tag object JSON");
    assert_eq!(readyz(&first).await.1, "ready\ntier s3: ok errors=0\n");
    assert_eq!(shared["digest"], image.manifest_digest.as_str());
    assert_eq!(shared["media_type"], image.media_type.as_str());

    // Docker Hub is down; a new replica with an empty disk comes up.
    hub.set_fault(Target::All, Fault::Status(503));
    hub.reset_counts();
    let second = Mirror::builder(&hub.url()).config(&toml).start();
    let (status, media_type, bytes) = get_manifest(&second, "library/app", "v1").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the tag answered through the outage"
    );
    assert_eq!(bytes, image.manifest_bytes.to_vec(), "byte-exact manifest");
    assert_eq!(media_type, image.media_type);
    assert_eq!(
        second.metric(
            "pullthrough_cache_lookups_total",
            &[("kind", "tag"), ("result", "stale")]
        ),
        1.0
    );
    for (digest, bytes) in &blobs {
        assert!(!cached(&second, digest), "the second disk starts empty");
        let (status, transfer) = get_blob(&second, "library/app", digest).await;
        assert_eq!(status, StatusCode::OK, "GET {digest}");
        assert_eq!(&transfer.bytes(), bytes);
        assert!(
            cached(&second, digest),
            "{digest} in the second's local tier"
        );
    }
    assert!(cached(&second, &image.manifest_digest));
    assert_eq!(hub.count(Kind::BlobGet), 0, "no upstream blob GET");
    assert_eq!(hub.count(Kind::CdnGet), 0, "no upstream blob bytes");
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 0);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_vanishing_mid_pull_leaves_the_rest_to_the_upstream() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("vanish"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[4 * MIB]);
    let (digest, bytes) = image.layers[0].clone();
    let first = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    pull_verified(&first, "library/app", &digest).await;
    wait_uploaded(rgw, &bucket, &digest);

    // The second replica reaches the store through a proxy that this test
    // kills: stopping the RGW itself would break the other tests of the
    // run, which share it. Paced, so the pull is still running then.
    let rgw_addr = std::net::SocketAddr::from(([127, 0, 0, 1], rgw.port));
    let pace = Pace {
        bytes: 64 * 1024,
        every: Duration::from_millis(50),
    };
    let proxy = TcpProxy::start(rgw_addr, Some(pace)).await;
    let second = Mirror::builder(&hub.url())
        .config(&storage_toml(
            &proxy.endpoint(),
            &bucket,
            "mirror",
            &rgw.secret_file,
        ))
        .timings(|t| t.retry_backoff = Duration::from_millis(50))
        .start();
    hub.reset_counts();
    let url = format!("{}/v2/library/app/blobs/{digest}", second.url());
    let pull = tokio::spawn(async move {
        let response = client().get(url).send().await.expect("blob GET");
        (response.status(), read_transfer(response).await)
    });
    sync(|| {
        wait_until("bytes from the store", UPLOAD_WAIT, || {
            let read = second.metric("pullthrough_tier_bytes_total", &[("direction", "read")]);
            (read > 0.0).then_some(())
        })
    });
    proxy.kill();
    let (status, transfer) = pull.await.expect("the pull");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(transfer.bytes(), bytes, "every byte, verified");
    let read = second.metric("pullthrough_tier_bytes_total", &[("direction", "read")]);
    assert!(
        read < bytes.len() as f64,
        "the store stopped mid-pull ({read} bytes)"
    );
    assert_eq!(
        hub.count(Kind::BlobGet),
        1,
        "the rest came from the upstream"
    );
    assert_eq!(
        second.metric("pullthrough_download_resumes_total", &[])
            + second.metric("pullthrough_download_restarts_total", &[]),
        1.0
    );
    assert!(cached(&second, &digest), "verified into the local tier");
    assert!(second.metric("pullthrough_tier_errors_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_object_is_never_served_as_complete_and_is_replaced_from_the_upstream() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("corrupt"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[2 * MIB]);
    let (digest, bytes) = image.layers[0].clone();

    let first = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    pull_verified(&first, "library/app", &digest).await;
    wait_uploaded(rgw, &bucket, &digest);

    // Same length, one byte different: only the digest can tell.
    let mut corrupt = bytes.to_vec();
    corrupt[MIB] ^= 0x01;
    sync(|| rgw.put_object(&bucket, &object_key(&digest), &corrupt));
    hub.reset_counts();

    let second = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    let (status, transfer) = get_blob(&second, "library/app", &digest).await;
    if status == StatusCode::OK {
        assert!(
            transfer.is_failed(),
            "the corrupt copy was served as a complete body"
        );
    }
    assert_eq!(
        hub.count(Kind::BlobGet),
        0,
        "the first answer came from the bucket"
    );
    assert_eq!(
        sync(|| rgw.get_object(&bucket, &object_key(&digest))),
        None,
        "the corrupt object is deleted"
    );
    assert_eq!(second.metric("pullthrough_tier_corrupt_total", &[]), 1.0);
    assert_eq!(
        second.metric("pullthrough_digest_mismatches_total", &[]),
        1.0
    );
    assert!(!cached(&second, &digest), "nothing corrupt is kept locally");

    // The next pull goes to the upstream, and the bucket is healed.
    pull_verified(&second, "library/app", &digest).await;
    assert_eq!(hub.count(Kind::BlobGet), 1);
    wait_uploaded(rgw, &bucket, &digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_store_never_fails_a_pull() {
    // Nothing listens there: no Ceph needed for this one.
    let port = crate::support::free_port();
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), "not-used\n").expect("write secret");
    let toml = storage_toml(
        &format!("http://127.0.0.1:{port}"),
        "nowhere",
        "p",
        secret.path(),
    );
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[400_000, 100_000]);
    let mirror = Mirror::builder(&hub.url()).config(&toml).start();

    let manifest = client()
        .get(format!("{}/v2/library/app/manifests/v1", mirror.url()))
        .header("accept", crate::support::ACCEPT)
        .send()
        .await
        .expect("manifest GET");
    assert_eq!(manifest.status(), StatusCode::OK);
    assert_eq!(
        sha256_digest(&manifest.bytes().await.expect("manifest body")),
        image.manifest_digest
    );
    for (digest, bytes) in &image.layers {
        let (status, transfer) = get_blob(&mirror, "library/app", digest).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&transfer.bytes(), bytes);
    }
    assert_eq!(hub.count(Kind::BlobGet), image.layers.len() as u64);
    assert!(mirror.metric("pullthrough_tier_errors_total", &[]) >= 1.0);
    assert_eq!(
        mirror.metric("pullthrough_tier_lookups_total", &[("result", "hit")]),
        0.0
    );
    assert_eq!(mirror.metric("pullthrough_tier_failing", &[]), 1.0);
    assert!(mirror.metric("pullthrough_tier_last_error_timestamp_seconds", &[]) > 0.0);

    // Failing, and shown, but still ready: the upstream serves.
    let (status, body) = readyz(&mirror).await;
    assert_eq!(status, StatusCode::OK);
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("ready"));
    let tier = lines.next().unwrap_or_default();
    assert!(tier.starts_with("tier s3: failing errors="), "{body}");
    assert!(tier.contains(" last_error="), "{body}");
    assert!(!body.contains(&port.to_string()), "no endpoint in {body}");
}

async fn readyz(mirror: &Mirror) -> (StatusCode, String) {
    let response = client()
        .get(format!("{}/readyz", mirror.url()))
        .send()
        .await
        .expect("readyz");
    let status = response.status();
    (status, response.text().await.expect("readyz body"))
}

#[test]
fn rgw_stores_and_returns_objects() {
    let Some(rgw) = rgw() else { return };
    let bucket = rgw.bucket("selftest");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    rgw.put_object(&bucket, "a/b", &bytes);
    assert_eq!(rgw.get_object(&bucket, "a/b").as_deref(), Some(&bytes[..]));
    assert_eq!(rgw.get_object(&bucket, "a/missing"), None);
    assert_eq!(rgw.keys(&bucket), vec!["a/b".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_store_is_logged_once_and_its_secret_never() {
    let port = crate::support::free_port();
    let secret_value = "s3-secret-that-must-not-be-logged";
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), format!("{secret_value}\n")).expect("write secret");
    let toml = storage_toml(
        &format!("http://127.0.0.1:{port}"),
        "nowhere",
        "p",
        secret.path(),
    );
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[50_000, 60_000, 70_000]);
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .process()
        .log("debug")
        .start();
    for (digest, bytes) in &image.layers {
        let (status, transfer) = get_blob(&mirror, "library/app", digest).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&transfer.bytes(), bytes);
    }
    let log = sync(|| {
        mirror.wait_log("the store failing", |log| {
            log.contains("object store failing")
        })
    });
    assert_eq!(
        log.matches("object store failing").count(),
        1,
        "one warning for one outage:\n{log}"
    );
    assert!(!log.contains(secret_value), "the secret reached the log");
}

/// Pulls every blob of `image` through `mirror` (and waits for the bucket
/// to hold them).
async fn seed_bucket(mirror: &Mirror, rgw: &Rgw, bucket: &str, repo: &str, blobs: &[String]) {
    for digest in blobs {
        pull_verified(mirror, repo, digest).await;
    }
    for digest in blobs {
        wait_uploaded(rgw, bucket, digest);
    }
}

fn blob_digests(image: &crate::support::hub::TestImage) -> Vec<String> {
    std::iter::once(image.config.0.clone())
        .chain(image.layers.iter().map(|(d, _)| d.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_mode_hands_skopeo_presigned_urls_it_follows_and_verifies() {
    let Some(rgw) = sync(rgw) else { return };
    if !crate::support::require_tool("skopeo") {
        return;
    }
    let bucket = sync(|| rgw.bucket("redirect"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[700_000, 300_000]);
    let blobs = blob_digests(&image);
    let first = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    seed_bucket(&first, rgw, &bucket, "library/app", &blobs).await;

    let second = Mirror::builder(&hub.url())
        .config(&format!("s3_redirect = true\n{}", rgw_toml(rgw, &bucket)))
        .start();
    hub.reset_counts();
    // What the mirror answers, without following it.
    let (status, _) = get_blob(&second, "library/app", &blobs[1]).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    let response = client()
        .get(format!(
            "{}/v2/library/app/blobs/{}",
            second.url(),
            blobs[1]
        ))
        .send()
        .await
        .expect("blob GET");
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        location.starts_with(&format!("{}/", rgw.endpoint)),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=300"), "{location}");
    assert!(!location.contains(crate::support::rgw::SECRET_KEY));

    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    let mut command = std::process::Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/app:v1", second.addr))
        .arg(format!("dir:{}", dest.display()));
    let output = sync(|| crate::support::process::run_bounded(command, Duration::from_secs(120)));
    assert!(
        output.status.success(),
        "skopeo copy through the redirecting mirror: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for digest in &blobs {
        let bytes = std::fs::read(dest.join(hex_of(digest))).expect("blob in the dir: copy");
        assert_eq!(sha256_digest(&bytes), *digest, "{digest} as skopeo got it");
        // Straight from the store: the mirror never downloaded it.
        assert!(!cached(&second, digest), "{digest} went through the mirror");
    }
    assert_eq!(hub.count(Kind::BlobGet), 0);
    assert!(
        second.metric("pullthrough_tier_redirects_total", &[]) >= blobs.len() as f64 + 2.0,
        "two probes and skopeo's GETs redirected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_mode_sends_private_content_only_where_the_upstream_confirms_it() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("private"));
    let hub = Hub::start().await;
    hub.make_private("team/secret", "puller", "hunter2");
    let image = hub.push_image("team/secret", "v1", &[200_000]);
    hub.push_image("library/public", "v1", &[100_000]);
    let blobs = blob_digests(&image);
    let upstream = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nusername = \"puller\"\npassword = \"hunter2\"\n",
        hub.url()
    );
    let first = Mirror::builder(&hub.url())
        .config(&format!("{}{upstream}", rgw_toml(rgw, &bucket)))
        .start();
    seed_bucket(&first, rgw, &bucket, "team/secret", &blobs).await;

    let second = Mirror::builder(&hub.url())
        .config(&format!(
            "s3_redirect = true\n{}{upstream}",
            rgw_toml(rgw, &bucket)
        ))
        .start();
    // Asked for under a repository that does not hold it: no redirect,
    // and not the bytes either.
    let response = client()
        .get(format!(
            "{}/v2/library/public/blobs/{}",
            second.url(),
            blobs[1]
        ))
        .send()
        .await
        .expect("blob GET");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("location").is_none());
    assert_eq!(second.metric("pullthrough_tier_redirects_total", &[]), 0.0);
    // Under its own repository, once the upstream confirms it: redirected.
    let (status, _) = get_blob(&second, "team/secret", &blobs[1]).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(second.metric("pullthrough_tier_redirects_total", &[]), 1.0);

    // Without redirects, bytes from the bucket are held to the same rule:
    // another replica fetched them with credentials, for another repository.
    let third = Mirror::builder(&hub.url())
        .config(&format!("{}{upstream}", rgw_toml(rgw, &bucket)))
        .start();
    let (status, transfer) = get_blob(&third, "library/public", &blobs[1]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        !matches!(&transfer, Transfer::Complete(b) if sha256_digest(b) == blobs[1]),
        "the private layer was served under another repository"
    );
    pull_verified(&third, "team/secret", &blobs[1]).await;
}

#[test]
fn the_documented_lifecycle_rules_are_taken_by_rgw() {
    let Some(rgw) = rgw() else { return };
    let bucket = rgw.bucket("lifecycle");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/s3/lifecycle.xml");
    assert_eq!(rgw.put_lifecycle(&bucket, &rules), 200);
    let stored = rgw.lifecycle(&bucket).expect("lifecycle read back");
    for id in [
        "pullthrough-content",
        "pullthrough-tags",
        "pullthrough-abandoned-uploads",
    ] {
        assert!(stored.contains(id), "{id} in {stored}");
    }
    assert!(stored.contains("<Days>30</Days>"), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_commands_say_what_is_local_and_what_is_only_in_the_bucket() {
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("offline"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[150_000, 250_000]);
    let blobs = blob_digests(&image);
    let mut first = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    let (status, _, _) = get_manifest(&first, "library/app", "v1").await;
    assert_eq!(status, StatusCode::OK);
    seed_bucket(&first, rgw, &bucket, "library/app", &blobs).await;
    wait_uploaded(rgw, &bucket, &image.manifest_digest);
    sync(|| {
        wait_until("the tag object", UPLOAD_WAIT, || {
            rgw.keys(&bucket)
                .iter()
                .any(|k| k.contains("/_tags/v1/"))
                .then_some(())
        })
    });
    // A second replica that pulled one layer only.
    let mut second = Mirror::builder(&hub.url())
        .config(&rgw_toml(rgw, &bucket))
        .start();
    pull_verified(&second, "library/app", &blobs[1]).await;
    sync(|| {
        first.stop();
        second.stop();
    });

    let config = |m: &Mirror| m.root.join("pullthrough.toml").display().to_string();
    let dir = |m: &Mirror| m.cache_dir.display().to_string();
    let stats = sync(|| {
        pullthrough_json(&[
            "cache",
            "stats",
            "--config",
            &config(&second),
            "--cache-dir",
            &dir(&second),
        ])
    });
    let b = &stats["bucket"];
    assert_eq!(b["objects"], 4, "manifest, config, two layers: {stats}");
    assert_eq!(b["only_in_bucket"], 3, "{stats}");
    assert_eq!(b["only_local"], 0, "{stats}");
    assert_eq!(b["tags"], 1, "{stats}");
    assert_eq!(stats["blobs"], 1, "{stats}");

    let rows = sync(|| {
        pullthrough_json(&[
            "cache",
            "ls",
            "--config",
            &config(&second),
            "--cache-dir",
            &dir(&second),
        ])
    });
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["tag"], "v1");
    assert_eq!(rows[0]["digest"], image.manifest_digest.as_str());
    assert_eq!(rows[0]["location"], "bucket", "{rows}");
    let rows = sync(|| {
        pullthrough_json(&[
            "cache",
            "ls",
            "--config",
            &config(&first),
            "--cache-dir",
            &dir(&first),
        ])
    });
    assert_eq!(rows[0]["location"], "local+bucket", "{rows}");

    let report = sync(|| {
        pullthrough_json(&[
            "gc",
            "--config",
            &config(&first),
            "--cache-dir",
            &dir(&first),
        ])
    });
    assert_eq!(report["bucket"]["objects"], 4, "{report}");
    assert_eq!(report["bucket"]["only_in_bucket"], 0, "{report}");
    // Without a storage, the old output: nothing about a bucket.
    let plain = sync(|| pullthrough_json(&["cache", "stats", "--cache-dir", &dir(&first)]));
    assert!(plain.get("bucket").is_none(), "{plain}");
}
