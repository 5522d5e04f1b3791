//! Upstream credentials as a pool: when one Docker Hub account's pull
//! limit runs out, pulls go on with the next account, each with tokens of
//! its own; metrics name the accounts, never their passwords.

use crate::support::client::{assert_manifest, client};
use crate::support::hub::{Hub, TestImage};
use crate::support::mirror::Mirror;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";
const POOL: &str = r#"
[[upstream]]
[[upstream.credentials]]
name = "first"
username = "alice"
password = "alice-pw"
[[upstream.credentials]]
name = "second"
username = "bob"
password = "bob-pw"
"#;

async fn pull(mirror: &Mirror, repo: &str, image: &TestImage) {
    let response = client()
        .get(format!("{}/v2/{repo}/manifests/v1", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("mirror answers");
    assert_manifest(response, image, repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_one_account_runs_out_the_next_one_pulls() {
    let hub = Hub::start().await;
    hub.add_account("alice", "alice-pw", 2);
    hub.add_account("bob", "bob-pw", 100);
    let repos: Vec<String> = (0..5).map(|i| format!("library/pool{i}")).collect();
    let images: Vec<TestImage> = repos
        .iter()
        .enumerate()
        .map(|(i, repo)| hub.push_image(repo, "v1", &[1000 + i]))
        .collect();
    let mirror = Mirror::builder(&hub.url()).config(POOL).start();
    for (repo, image) in repos.iter().zip(&images) {
        pull(&mirror, repo, image).await;
    }
    assert_eq!(
        hub.account_pulls("alice"),
        2,
        "the first account, to its limit"
    );
    assert_eq!(hub.account_pulls("bob"), 3, "then the second");
    let remaining = "pullthrough_upstream_credential_ratelimit_remaining";
    assert_eq!(mirror.metric(remaining, &[("credential", "first")]), 0.0);
    assert_eq!(mirror.metric(remaining, &[("credential", "second")]), 97.0);
    assert_eq!(
        mirror.metric("pullthrough_upstream_credential_switches_total", &[]),
        1.0
    );
    let metrics = mirror.metrics();
    assert!(!metrics.contains("alice-pw") && !metrics.contains("bob-pw"));
}

/// An account that is already spent answers the pull with a 429: the same
/// pull is made again with the next account instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_refused_for_a_spent_account_is_retried_with_the_next() {
    let hub = Hub::start().await;
    hub.add_account("alice", "alice-pw", 0);
    hub.add_account("bob", "bob-pw", 100);
    let image = hub.push_image("library/spent", "v1", &[2000]);
    let mirror = Mirror::builder(&hub.url()).config(POOL).start();
    pull(&mirror, "library/spent", &image).await;
    assert_eq!(hub.account_pulls("bob"), 1);
    let other = hub.push_image("library/after", "v1", &[3000]);
    pull(&mirror, "library/after", &other).await;
    assert_eq!(hub.account_pulls("bob"), 2, "the spent account rests");
    let bob_tokens = hub
        .token_requests()
        .iter()
        .filter(|t| t.basic_user.as_deref() == Some("bob") && t.password_matched)
        .count();
    assert_eq!(bob_tokens, 2, "a token per repository scope, for bob");
}
