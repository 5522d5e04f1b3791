//! Upstream auth: one token per repository scope, Basic credentials from
//! the config file for private repositories, clean errors without them.

use super::{error_of, get, head, mirror_of, mirror_with_config, pull};
use crate::support::client::{client, read_transfer};
use crate::support::hub::{Fault, Hub, Kind, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_fetched_per_repository_scope() {
    let hub = Hub::start().await;
    let a = hub.push_image("team/a", "v1", &[1000, 2000]);
    let b = hub.push_image("team/b/c", "v1", &[3000]);
    let mirror = mirror_of(&hub);
    pull(&mirror, "team/a", "v1", &a).await;
    pull(&mirror, "team/b/c", "v1", &b).await;

    let scopes: Vec<String> = hub
        .token_requests()
        .into_iter()
        .flat_map(|t| t.scopes)
        .collect();
    let count = |scope: &str| scopes.iter().filter(|s| *s == scope).count();
    assert_eq!(
        count("repository:team/a:pull"),
        1,
        "one token per scope: {scopes:?}"
    );
    assert_eq!(
        count("repository:team/b/c:pull"),
        1,
        "one token per scope: {scopes:?}"
    );
    assert!(hub
        .token_requests()
        .iter()
        .all(|t| t.service.as_deref() == Some("hub.test")));
    assert_eq!(hub.count(Kind::CdnRejected), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_repository_is_pulled_with_configured_credentials() {
    let hub = Hub::start().await;
    let image = hub.push_image("corp/secret", "v1", &[5000]);
    hub.make_private("corp/secret", "u", "p");
    let mirror = mirror_with_config(&hub, "username = \"u\"\npassword = \"p\"");
    pull(&mirror, "corp/secret", "v1", &image).await;
    let private_requests: Vec<_> = hub
        .token_requests()
        .into_iter()
        .filter(|t| t.scopes.iter().any(|s| s == "repository:corp/secret:pull"))
        .collect();
    assert!(!private_requests.is_empty());
    for request in private_requests {
        assert_eq!(request.basic_user.as_deref(), Some("u"));
        assert!(request.password_matched, "configured password sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_repository_without_credentials_is_a_client_error() {
    let hub = Hub::start().await;
    let image = hub.push_image("corp/secret", "v1", &[5000]);
    hub.make_private("corp/secret", "u", "p");
    let mirror = mirror_of(&hub);
    let paths = [
        "/v2/corp/secret/manifests/v1".to_string(),
        format!("/v2/corp/secret/blobs/{}", image.layers[0].0),
    ];
    for path in paths {
        let (status, code) = error_of(get(&mirror, &path).await).await;
        assert!(
            [401, 403, 404].contains(&status.as_u16()),
            "{path}: {status}, never a 5xx"
        );
        assert!(code.is_some(), "{path}: OCI error body");
    }
    assert_eq!(hub.count(Kind::CdnGet), 0);
}

/// The cache is shared by digest, but content that came through the
/// mirror's credentials is served only under repositories that hold it:
/// asking for a private layer under a public name gets a 404 although the
/// layer is on disk, while a repository that really holds it is served
/// from the cache after one HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_content_is_served_only_under_repositories_that_hold_it() {
    let hub = Hub::start().await;
    let secret = hub.push_image("corp/secret", "v1", &[5000]);
    hub.make_private("corp/secret", "u", "p");
    hub.push_image("library/app", "v1", &[1000]);
    let mirror = mirror_with_config(&hub, "username = \"u\"\npassword = \"p\"");
    pull(&mirror, "corp/secret", "v1", &secret).await;
    let (layer, layer_bytes) = &secret.layers[0];

    hub.reset_counts();
    for path in [
        format!("/v2/library/app/blobs/{layer}"),
        format!("/v2/app/blobs/{layer}"),
    ] {
        let (status, code) = error_of(get(&mirror, &path).await).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(code.as_deref(), Some("BLOB_UNKNOWN"), "{path}");
        assert_eq!(head(&mirror, &path).await.status(), 404, "HEAD {path}");
    }
    let path = format!("/v2/library/app/manifests/{}", secret.manifest_digest);
    let (status, code) = error_of(get(&mirror, &path).await).await;
    assert_eq!(status, 404, "{path}");
    assert_eq!(code.as_deref(), Some("MANIFEST_UNKNOWN"), "{path}");
    assert_eq!(hub.count(Kind::BlobGet), 0, "refused without a download");

    // A public repository that holds the same layer.
    hub.put_blob("library/shared", layer_bytes.clone());
    hub.reset_counts();
    for _ in 0..2 {
        let response = get(&mirror, &format!("/v2/library/shared/blobs/{layer}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(&read_transfer(response).await.bytes(), layer_bytes);
    }
    assert_eq!(
        hub.count(Kind::BlobHead),
        1,
        "one HEAD confirms, then it is known"
    );
    assert_eq!(hub.count(Kind::BlobGet), 0, "served from the cache");

    // The repository it came from needs no confirmation at all.
    hub.reset_counts();
    pull(&mirror, "corp/secret", "v1", &secret).await;
    assert_eq!(hub.count(Kind::BlobHead) + hub.count(Kind::BlobGet), 0);
}

/// With credentials configured, requests that join a download of private
/// content for the same repository need no confirming HEAD: the upstream's
/// answer to the download already says the repository holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_a_private_download_costs_no_extra_upstream_request() {
    let hub = Hub::start().await;
    let secret = hub.push_image("corp/secret", "v1", &[2 * 1024 * 1024]);
    hub.make_private("corp/secret", "u", "p");
    let (layer, layer_bytes) = secret.layers[0].clone();
    hub.set_fault(
        Target::Digest(layer.clone()),
        Fault::Throttle(4 * 1024 * 1024),
    );
    let mirror = mirror_with_config(&hub, "username = \"u\"\npassword = \"p\"");
    let url = format!("{}/v2/corp/secret/blobs/{layer}", mirror.url());
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        clients.spawn(async move {
            let response = client().get(url).send().await.expect("mirror answers");
            (response.status(), read_transfer(response).await.bytes())
        });
    }
    for (status, bytes) in clients.join_all().await {
        assert_eq!(status, 200);
        assert!(bytes == layer_bytes, "wrong bytes");
    }
    assert_eq!(hub.count(Kind::BlobGet), 1, "one download");
    assert_eq!(
        hub.count(Kind::BlobHead),
        0,
        "no confirmation for the same repository"
    );
}
