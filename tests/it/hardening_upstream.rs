//! Issue 17, the upstream side: what a hostile or broken upstream can make
//! the mirror do with its credentials, its challenges and its token fetches.
//! Every test asserts on what the client got and on what the stand-in hub
//! (registry, token endpoint, CDN) saw.

use crate::support::client::{client, config_file, oci_error_code};
use crate::support::hub::{Fault, Hub, Kind, Site, Target};
use crate::support::mirror::Mirror;
use http::StatusCode;
use std::time::Duration;

/// What Docker and containerd send when asking for a manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, \
    application/vnd.docker.distribution.manifest.v2+json;q=0.8";

/// Longer than a 1 s `tag_ttl`: the next tag request revalidates upstream.
const PAST_TTL: Duration = Duration::from_millis(1150);

/// Generous next to the mirror's 10 s bound on a token fetch, short next
/// to a token service that never finishes its answer.
const STALE_ANSWER_WITHIN: Duration = Duration::from_secs(40);

/// A mirror of `hub` as docker.io, with `extra` under its `[[upstream]]`
/// table. Keep the `TempDir` (the config file) alive with the mirror.
fn mirror_with(hub: &Hub, extra: &str) -> (Mirror, tempfile::TempDir) {
    let toml = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n{extra}\n",
        hub.url()
    );
    let (dir, path) = config_file(&toml);
    let mirror = Mirror::builder(&hub.url())
        .config_file(&path)
        .timings(|t| t.token_timeout = Duration::from_secs(1))
        .start();
    (mirror, dir)
}

async fn get(mirror: &Mirror, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("the mirror answers")
}

/// Status and body of a GET.
async fn fetch(mirror: &Mirror, path: &str) -> (StatusCode, bytes::Bytes) {
    let response = get(mirror, path).await;
    let status = response.status();
    (status, response.bytes().await.expect("body"))
}

/// Requests the CDN saw that carried an Authorization header.
fn cdn_requests_with_authorization(hub: &Hub) -> Vec<String> {
    hub.requests()
        .into_iter()
        .filter(|r| r.site == Site::Cdn && r.headers.contains_key("authorization"))
        .map(|r| r.path)
        .collect()
}

/// A blob redirect target answering 401 with a Bearer realm of its own
/// (on itself) must not get a token request, let alone the configured
/// Basic credentials, and must not replace the registry's challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cdn_401_is_not_a_challenge_and_never_gets_the_credentials() {
    let hub = Hub::start().await;
    let image = hub.push_image("corp/secret", "v1", &[3000]);
    hub.make_private("corp/secret", "u", "p");
    let (mirror, _config) = mirror_with(&hub, "username = \"u\"\npassword = \"p\"");
    // A token for the scope is cached, so the blob GET reaches the CDN on
    // its first attempt, where a 401 used to be taken for a challenge.
    let (status, bytes) = fetch(&mirror, "/v2/corp/secret/manifests/v1").await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, image.manifest_bytes.clone())
    );

    let realm = format!("{}/token", hub.cdn_url());
    hub.set_fault(
        Target::All,
        Fault::CdnChallenge(format!("Bearer realm=\"{realm}\",service=\"hub.test\"")),
    );
    hub.reset_counts();
    let (digest, layer) = image.layers[0].clone();
    let response = get(&mirror, &format!("/v2/corp/secret/blobs/{digest}")).await;
    let status = response.status();
    let body = response.bytes().await.expect("error body");
    assert_eq!(
        cdn_requests_with_authorization(&hub),
        Vec::<String>::new(),
        "requests to the CDN with credentials"
    );
    assert_eq!(
        (status, oci_error_code(&body).as_deref()),
        (StatusCode::BAD_GATEWAY, Some("UNAVAILABLE")),
        "a CDN refusing us is an upstream failure"
    );
    let cdn_paths: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.site == Site::Cdn)
        .map(|r| r.path)
        .collect();
    assert!(
        cdn_paths
            .iter()
            .all(|p| p.starts_with(&format!("/{digest}?"))),
        "the CDN was asked for the blob and nothing else: {cdn_paths:?}"
    );
    assert!(!cdn_paths.is_empty(), "the blob GET reached the CDN");

    // The same when the CDN's 401 follows a fresh token (the registry
    // rejected the cached one first): still an upstream failure.
    hub.revoke_tokens();
    hub.reset_counts();
    let response = get(&mirror, &format!("/v2/corp/secret/blobs/{digest}")).await;
    let status = response.status();
    let body = response.bytes().await.expect("error body");
    assert_eq!(
        (status, oci_error_code(&body).as_deref()),
        (StatusCode::BAD_GATEWAY, Some("UNAVAILABLE")),
        "a CDN 401 after a fresh token"
    );
    assert_eq!(cdn_requests_with_authorization(&hub), Vec::<String>::new());

    // The registry's challenge is still the one in use: another image of
    // the same private repository pulls with the registry's own tokens.
    hub.clear_faults();
    let second = hub.push_image("corp/secret", "v2", &[2000]);
    hub.revoke_tokens();
    hub.reset_counts();
    let (status, bytes) = fetch(&mirror, "/v2/corp/secret/manifests/v2").await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, second.manifest_bytes.clone())
    );
    let (status, bytes) = fetch(&mirror, &format!("/v2/corp/secret/blobs/{digest}")).await;
    assert_eq!((status, bytes), (StatusCode::OK, layer));
    assert!(
        hub.count(Kind::TokenFetch) >= 1,
        "tokens from the registry's realm"
    );
    assert!(hub
        .token_requests()
        .iter()
        .all(|t| t.basic_user.as_deref() == Some("u") && t.password_matched));
    assert_eq!(cdn_requests_with_authorization(&hub), Vec::<String>::new());
    hub.stop().await;
}

/// After one 401 whose challenge cannot be answered (`bad` names the
/// realm), the upstream is asked again on the next request: the bad
/// challenge was not kept.
async fn recovers_after_bad_challenge(bad: String) {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (mirror, _config) = mirror_with(&hub, "");
    hub.set_fault(Target::All, Fault::Challenge(bad.clone()));
    let (status, _) = fetch(&mirror, "/v2/library/app/manifests/v1").await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{bad}: {status}"
    );
    assert!(hub.count(Kind::Unauthorized) >= 1, "the hub challenged");

    hub.clear_faults();
    hub.reset_counts();
    let (status, bytes) = fetch(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, image.manifest_bytes.clone()),
        "{bad}: the next request after the fault"
    );
    assert!(
        hub.count(Kind::Unauthorized) >= 1,
        "{bad}: the upstream was asked again and challenged afresh"
    );
    assert!(hub.count(Kind::TokenFetch) >= 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_realm_is_not_kept() {
    recovers_after_bad_challenge("Bearer realm=\"::not a url::\",service=\"hub.test\"".into())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_realm_is_forgotten_after_the_failed_token_fetch() {
    let dead = format!("http://127.0.0.1:{}/token", crate::support::free_port());
    recovers_after_bad_challenge(format!("Bearer realm=\"{dead}\",service=\"hub.test\"")).await;
}

/// A pulled tag on a mirror with a 1 s TTL whose cached token the hub no
/// longer accepts: the next request past the TTL needs a new token.
async fn cached_tag_needing_a_new_token() -> (Hub, Mirror, tempfile::TempDir, bytes::Bytes) {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (mirror, config) = mirror_with(&hub, "tag_ttl = \"1s\"");
    let (status, bytes) = fetch(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!((status, &bytes), (StatusCode::OK, &image.manifest_bytes));
    hub.revoke_tokens();
    (hub, mirror, config, bytes)
}

/// A token service that answers 200 and then never finishes its body is
/// an outage: the cached tag is served, not held until the client gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickling_token_service_serves_the_cached_tag() {
    let (hub, mirror, _config, manifest) = cached_tag_needing_a_new_token().await;
    hub.set_fault(Target::All, Fault::TokenTrickle);
    hub.reset_counts();
    tokio::time::sleep(PAST_TTL).await;
    let answer = tokio::time::timeout(
        STALE_ANSWER_WITHIN,
        fetch(&mirror, "/v2/library/app/manifests/v1"),
    )
    .await
    .expect("the mirror held the request on a token body that never ends");
    assert_eq!(answer, (StatusCode::OK, manifest));
    let token_requests = hub
        .requests()
        .iter()
        .filter(|r| r.site == Site::Token)
        .count();
    assert!(token_requests >= 1, "the mirror asked for a new token");
    hub.stop().await;
}

/// Token bodies are read up to 64 KiB and tokens kept up to 16 KiB: a
/// token service sending more is an outage (the cached tag is served), the
/// mirror stops reading, and an oversized token never reaches the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_token_answer_is_not_read_or_used() {
    let (hub, mirror, _config, manifest) = cached_tag_needing_a_new_token().await;
    // 64 MiB, then 48 KiB: a body far over the cap, then a body under it
    // whose token is over its own.
    for len in [64 << 20, 48 << 10] {
        hub.clear_faults();
        hub.set_fault(Target::All, Fault::HugeToken(len));
        hub.reset_counts();
        tokio::time::sleep(PAST_TTL).await;
        let answer = fetch(&mirror, "/v2/library/app/manifests/v1").await;
        assert_eq!(
            answer,
            (StatusCode::OK, manifest.clone()),
            "{len}-byte token"
        );
        // Socket buffers on both ends hold ten MiB at most; a reader that
        // kept going would have taken all 64 MiB.
        let sent = hub.count(Kind::TokenBytesSent);
        assert!(sent < 32 << 20, "{len}-byte token: {sent} bytes were read");
        let longest_authorization = hub
            .requests()
            .iter()
            .filter(|r| r.site == Site::Registry)
            .filter_map(|r| Some(r.headers.get("authorization")?.len()))
            .max()
            .unwrap_or(0);
        assert!(
            longest_authorization < 16 << 10,
            "{len}-byte token: a {longest_authorization}-byte Authorization reached the registry"
        );
    }
    hub.stop().await;
}

/// Status, OCI error code and message of an error response.
async fn error_of(response: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let status = response.status();
    let body = response.bytes().await.expect("error body");
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| Some(v["errors"][0]["message"].as_str()?.to_string()))
        .unwrap_or_default();
    (status, oci_error_code(&body), message)
}

/// An upstream that redirects a manifest request to a blob (here: its own
/// CDN, reachable like any internal host) gets a refusal: the blob is not
/// a manifest, so it is neither served nor stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_redirected_to_other_content_is_refused_and_not_stored() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[3000]);
    let (mirror, _config) = mirror_with(&hub, "");
    let (layer, _) = image.layers[0].clone();
    hub.set_fault(
        Target::Digest(image.manifest_digest.clone()),
        Fault::Redirect(hub.cdn_blob_url(&layer)),
    );
    let (status, code, _) = error_of(get(&mirror, "/v2/library/app/manifests/v1").await).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::BAD_GATEWAY, Some("UNAVAILABLE"))
    );
    let stored = crate::support::client::files_named(
        &mirror.cache_dir,
        crate::support::client::hex_of(&layer),
    );
    assert_eq!(
        stored,
        Vec::<std::path::PathBuf>::new(),
        "kept as a manifest"
    );

    hub.clear_faults();
    let (status, bytes) = fetch(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!((status, bytes), (StatusCode::OK, image.manifest_bytes));
    hub.stop().await;
}

/// Redirects to an address class the upstream is not on (here link-local,
/// where cloud metadata services live, from an upstream on loopback) are
/// not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_to_a_link_local_address_is_not_followed() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[1000]);
    let (mirror, _config) = mirror_with(&hub, "");
    hub.set_fault(
        Target::All,
        Fault::Redirect("http://[fe80::1]:9/latest/meta-data/".into()),
    );
    for path in ["/v2/library/app/manifests/v1", "/v2/library/app/tags/list"] {
        let (status, code, message) = error_of(get(&mirror, path).await).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::BAD_GATEWAY, Some("UNAVAILABLE")),
            "{path}"
        );
        assert!(
            message.contains("redirect refused"),
            "{path}: the client is told why: {message:?}"
        );
    }
    hub.stop().await;
}

/// A manifest served as `text/html` (a page with a script, for ever, under
/// the mirror's origin) is refused, whether asked by tag or by digest, and
/// nothing is stored; every answer tells browsers not to sniff.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_manifest_content_type_is_refused_and_not_stored() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[1000]);
    let (mirror, _config) = mirror_with(&hub, "");
    hub.set_fault(Target::All, Fault::ContentType("text/html".into()));
    let by_digest = format!("/v2/library/app/manifests/{}", image.manifest_digest);
    for path in ["/v2/library/app/manifests/v1", by_digest.as_str()] {
        let response = get(&mirror, path).await;
        let nosniff = crate::support::client::header(&response, "x-content-type-options");
        let (status, code, _) = error_of(response).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::BAD_GATEWAY, Some("UNAVAILABLE")),
            "{path}"
        );
        assert_eq!(nosniff.as_deref(), Some("nosniff"), "{path}");
    }
    let stored = crate::support::client::files_named(
        &mirror.cache_dir,
        crate::support::client::hex_of(&image.manifest_digest),
    );
    assert_eq!(stored, Vec::<std::path::PathBuf>::new(), "text/html kept");

    hub.clear_faults();
    let response = get(&mirror, "/v2/library/app/manifests/v1").await;
    assert_eq!(
        crate::support::client::header(&response, "content-type").as_deref(),
        Some(image.media_type.as_str())
    );
    assert_eq!(
        crate::support::client::header(&response, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        response.bytes().await.expect("manifest"),
        image.manifest_bytes
    );
    hub.stop().await;
}

/// Tag list pagination stays on the mirror: an absolute `Link` from the
/// upstream reaches the client as a path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_list_link_is_kept_relative() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "v1", &[1000]);
    let (mirror, _config) = mirror_with(&hub, "");
    hub.set_fault(
        Target::All,
        Fault::TagsLink(format!(
            "<{}/v2/library/app/tags/list?n=1&last=v1>; rel=\"next\"",
            hub.url()
        )),
    );
    let response = get(&mirror, "/v2/library/app/tags/list?n=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        crate::support::client::header(&response, "link").as_deref(),
        Some("</v2/library/app/tags/list?n=1&last=v1>; rel=\"next\"")
    );
    assert_eq!(
        crate::support::client::header(&response, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    hub.stop().await;
}
