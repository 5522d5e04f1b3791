//! Upstream auth: one token per repository scope, Basic credentials from
//! the config file for private repositories, clean errors without them.

use super::{error_of, get, mirror_of, mirror_with_config, pull};
use crate::support::hub::{Hub, Kind};

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
    let (mirror, _config) = mirror_with_config(&hub, "username = \"u\"\npassword = \"p\"");
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
