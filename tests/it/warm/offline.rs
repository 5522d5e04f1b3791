//! `pullthrough warm --cache-dir` into a stopped cache, `cache check`, and
//! a mirror on that cache serving the warmed image with the upstream gone.

use super::{blob_bytes, hub_config, pull_exact};
use crate::support::cli::{pullthrough, pullthrough_json};
use crate::support::client::{client, config_file};
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;
use crate::support::ACCEPT;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_warmed_offline_serves_the_image_with_the_upstream_gone() {
    let hub = Hub::start().await;
    let warmed = hub.push_image("library/app", "v1", &[60_000, 7_000]);
    hub.push_image("library/other", "v1", &[1_000]);
    let (_config_dir, config) = config_file(&hub_config(&hub.url(), ""));
    let cache = tempfile::tempdir().expect("tempdir");
    let (config, cache_dir) = (
        config.display().to_string(),
        cache.path().display().to_string(),
    );
    let common = [
        "--config",
        config.as_str(),
        "--cache-dir",
        cache_dir.as_str(),
    ];

    let reports = pullthrough_json(&[&["warm", "app:v1"][..], &common].concat());
    assert_eq!(reports[0]["ok"], true, "{reports}");
    assert_eq!(reports[0]["blobs_fetched"], 3);
    assert_eq!(reports[0]["bytes_fetched"], blob_bytes(&warmed));
    assert_eq!(hub.count(Kind::CdnGet), 3);

    let check = pullthrough_json(&[&["cache", "check", "app:v1"][..], &common].concat());
    assert_eq!(check[0]["servable"], true, "{check}");
    assert_eq!(check[0]["blobs"], 3);
    let not_warmed =
        pullthrough(&[&["cache", "check", "app:v1", "other:v1"][..], &common].concat());
    assert_eq!(not_warmed.status.code(), Some(1));
    let table = String::from_utf8_lossy(&not_warmed.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("other:v1 ") && l.contains("MISSING") && l.contains("tag v1")),
        "{table}"
    );

    // A second warm finds everything cached.
    let again = pullthrough_json(&[&["warm", "app:v1"][..], &common].concat());
    assert_eq!(again[0]["blobs_fetched"], 0, "{again}");
    assert_eq!(hub.count(Kind::CdnGet), 3);

    let failed = pullthrough(&[&["warm", "app:nope", "app:v1"][..], &common].concat());
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("could not warm: app:nope"), "{stderr}");

    hub.stop().await;
    let mirror = Mirror::from_config_only()
        .config_file(std::path::Path::new(&config))
        .cache_dir(cache.path())
        .start();
    pull_exact(&mirror.url(), "library/app", "v1", &warmed).await;
    let other = client()
        .get(format!("{}/v2/library/other/manifests/v1", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("answer");
    assert!(
        other.status().is_server_error() || other.status() == 404,
        "a tag never warmed, with the upstream gone: {}",
        other.status()
    );

    // `cache check` while the mirror holds the cache: asked through it.
    let running = tokio::task::block_in_place(|| {
        pullthrough(
            &[
                &["cache", "check", "app:v1", "other:v1", "--json"][..],
                &common,
            ]
            .concat(),
        )
    });
    assert_eq!(
        running.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&running.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&running.stdout).expect("JSON");
    assert_eq!(reports[0]["servable"], true, "{reports}");
    assert_eq!(reports[0]["blobs"], 3);
    assert_eq!(reports[1]["servable"], false, "{reports}");
}
