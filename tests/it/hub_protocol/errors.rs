//! Validation and error mapping: malformed requests never reach the
//! upstream; unknown content, write methods and an unreachable upstream
//! answer with the right status and OCI error code.

use super::{assert_not_cached, error_of, get, head, mirror_of, send};
use crate::support::client::{client, oci_error_code, raw_request};
use crate::support::hub::{Hub, OCI_MANIFEST};
use crate::support::mirror::Mirror;
use crate::support::sha256_digest;
use http::StatusCode;

/// The distribution-spec conformance suite (pull workflow) asks for a
/// manifest by a reference that is no valid tag and expects 404
/// `MANIFEST_UNKNOWN`, as the reference registry answers, on GET and HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn references_that_are_no_tag_are_unknown_manifests() {
    let hub = Hub::start().await;
    let mirror = mirror_of(&hub);
    let long_tag = "a".repeat(129);
    for reference in [".INVALID_MANIFEST_NAME", "-bad", long_tag.as_str()] {
        let path = format!("/v2/library/ubuntu/manifests/{reference}");
        let (status, body) = raw_request(mirror.addr, "GET", &path).await;
        assert_eq!(
            status,
            404,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            oci_error_code(&body).as_deref(),
            Some("MANIFEST_UNKNOWN"),
            "GET {path}"
        );
        let (status, _) = raw_request(mirror.addr, "HEAD", &path).await;
        assert_eq!(status, 404, "HEAD {path}");
    }
    assert!(
        hub.requests().is_empty(),
        "nothing reached the upstream: {:?}",
        hub.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_names_tags_and_digests_never_reach_the_upstream() {
    let hub = Hub::start().await;
    let mirror = mirror_of(&hub);
    let short_hex = "a".repeat(63);
    let upper_hex = "A".repeat(64);
    let cases: Vec<(String, &[&str])> = vec![
        ("/v2/UPPER/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a..b/manifests/latest".into(), &["NAME_INVALID"]),
        (
            "/v2/library/%2e%2e/manifests/latest".into(),
            &["NAME_INVALID"],
        ),
        (
            "/v2/%2e%2e/%2e%2e/etc/manifests/latest".into(),
            &["NAME_INVALID"],
        ),
        (
            "/v2/library/-x/blobs/sha256:".to_string() + &"0".repeat(64),
            &["NAME_INVALID"],
        ),
        (
            "/v2/library/ubuntu/manifests/sha256:xyz".into(),
            &["DIGEST_INVALID", "MANIFEST_INVALID"],
        ),
        (
            "/v2/library/ubuntu/blobs/sha256:xyz".into(),
            &["DIGEST_INVALID"],
        ),
        (
            "/v2/library/ubuntu/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            &["DIGEST_INVALID"],
        ),
        (
            format!("/v2/library/ubuntu/blobs/sha256:{short_hex}"),
            &["DIGEST_INVALID"],
        ),
        (
            format!("/v2/library/ubuntu/blobs/sha256:{upper_hex}"),
            &["DIGEST_INVALID"],
        ),
    ];
    for (path, codes) in &cases {
        let (status, body) = raw_request(mirror.addr, "GET", path).await;
        let code = oci_error_code(&body);
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(
            code.as_deref().is_some_and(|c| codes.contains(&c)),
            "{path}: code {code:?}, wanted one of {codes:?}"
        );
    }
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_manifests_and_blobs_are_404() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[10]);
    let mirror = mirror_of(&hub);
    let ghost = sha256_digest(b"ghost");
    let cases = [
        (
            "/v2/library/app/manifests/nope".to_string(),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/library/app/manifests/{ghost}"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/library/app/blobs/{ghost}"), "BLOB_UNKNOWN"),
    ];
    for (path, wanted) in cases {
        let (status, code) = error_of(get(&mirror, &path).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(code.as_deref(), Some(wanted), "{path}");
    }
    let blob_head = head(&mirror, &format!("/v2/library/app/blobs/{ghost}")).await;
    assert_eq!(blob_head.status(), StatusCode::NOT_FOUND);
    assert_not_cached(&mirror, &ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_methods_are_unsupported() {
    let hub = Hub::start().await;
    let mirror = mirror_of(&hub);
    let digest = sha256_digest(b"x");
    let base = mirror.url();
    let requests = [
        client().post(format!("{base}/v2/library/app/blobs/uploads/")),
        client()
            .put(format!("{base}/v2/library/app/manifests/v1"))
            .header("content-type", OCI_MANIFEST)
            .body("{}"),
        client()
            .patch(format!("{base}/v2/library/app/blobs/uploads/some-uuid"))
            .body(vec![0u8; 16]),
        client().delete(format!("{base}/v2/library/app/manifests/{digest}")),
        client().delete(format!("{base}/v2/library/app/blobs/{digest}")),
    ];
    for request in requests {
        let response = send(request).await;
        let what = format!("{}", response.url());
        let (status, code) = error_of(response).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        assert_eq!(code.as_deref(), Some("UNSUPPORTED"), "{what}");
    }
    assert!(hub.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_upstream_is_a_502_or_503() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10]);
    let upstream = hub.url();
    hub.stop().await;
    let mirror = Mirror::start(&upstream);
    let paths = [
        "/v2/library/app/manifests/v1".to_string(),
        format!("/v2/library/app/manifests/{}", image.manifest_digest),
        format!("/v2/library/app/blobs/{}", image.layers[0].0),
    ];
    for path in paths {
        let (status, code) = error_of(get(&mirror, &path).await).await;
        assert!([502, 503].contains(&status.as_u16()), "{path}: {status}");
        assert!(
            code.is_some_and(|c| !c.is_empty()),
            "{path}: OCI error body"
        );
    }
    let blob_head = head(
        &mirror,
        &format!("/v2/library/app/blobs/{}", image.layers[0].0),
    )
    .await;
    assert!([502, 503].contains(&blob_head.status().as_u16()));
}
