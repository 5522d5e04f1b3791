//! `[[warm]]` sets: warmed after start-up, refreshed on schedule with
//! HEADs (only what moved is fetched), and held back at `warm_reserve`.

use super::{hub_config, pull_exact};
use crate::support::client::client;
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;
use crate::support::wait_until;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

fn ready(mirror: &Mirror, set: &str) -> f64 {
    mirror.metric("pullthrough_warm_set_images_ready", &[("set", set)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_set_is_warmed_at_start_and_a_moved_tag_costs_only_its_new_manifest_and_layers() {
    let hub = Hub::start().await;
    let first = hub.push_image("library/app", "stable", &[50_000, 8_000]);
    let toml = hub_config(
        &hub.url(),
        "[[warm]]\nname = \"base\"\nimages = [\"app:stable\"]\nevery = \"300ms\"\n",
    );
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .metrics_listener()
        .start();
    // Listening (and ready) while the set warms in the background.
    assert_eq!(
        mirror.metric("pullthrough_warm_set_images", &[("set", "base")]),
        1.0
    );
    wait_until("the set warmed", SETTLE, || {
        (ready(&mirror, "base") == 1.0 && hub.count(Kind::CdnGet) == 3).then_some(())
    });
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
    // The API and the page show the set as its metrics do.
    let sets = client()
        .get(format!("{}/api/v1/warm/sets", mirror.metrics_url()))
        .send()
        .await
        .expect("warm sets")
        .bytes()
        .await
        .expect("body");
    let sets: serde_json::Value = serde_json::from_slice(&sets).expect("JSON");
    assert_eq!(sets[0]["name"], "base", "{sets}");
    assert_eq!(sets[0]["images"], serde_json::json!(["app:stable"]));
    assert_eq!(sets[0]["ready"], 1);
    assert!(sets[0]["last_refresh"].as_u64().is_some(), "{sets}");
    let page = client()
        .get(format!("{}/", mirror.url()))
        .header("accept-language", "en")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(page.contains("Warm sets"), "the page names the warm sets");
    assert!(
        page.contains("<td id=\"warm-0\" class=\"ok\">1 / 1</td>"),
        "readiness on the page"
    );

    // The tag moves to a rebuild that keeps the first layer.
    let moved = hub.push_image_on("library/app", "stable", &first.layers[..1], &[9_000]);
    let heads = hub.count(Kind::ManifestHeadByTag);
    wait_until("the refresh fetched the moved tag", SETTLE, || {
        (hub.count(Kind::ManifestGetByDigest) == 2 && hub.count(Kind::CdnGet) == 5).then_some(())
    });
    assert!(hub.count(Kind::ManifestHeadByTag) > heads);
    let fetched: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.site == crate::support::hub::Site::Cdn)
        .map(|r| r.path.clone())
        .collect();
    let new_blobs = [&moved.config, &moved.layers[1]];
    for (digest, _) in new_blobs {
        assert_eq!(
            fetched
                .iter()
                .filter(|p| p.contains(digest.as_str()))
                .count(),
            1,
            "new blob {digest} fetched once"
        );
    }
    assert_eq!(
        fetched
            .iter()
            .filter(|p| p.contains(first.layers[0].0.as_str()))
            .count(),
        1,
        "the kept layer is fetched by the first warm only"
    );

    // Nothing moves: further refreshes are HEADs only.
    let heads = hub.count(Kind::ManifestHeadByTag);
    wait_until("two more refreshes", SETTLE, || {
        (hub.count(Kind::ManifestHeadByTag) >= heads + 2).then_some(())
    });
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 2);
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
    assert_eq!(hub.count(Kind::CdnGet), 5);
    pull_exact(&mirror.url(), "library/app", "stable", &moved).await;
    assert_eq!(
        hub.count(Kind::CdnGet),
        5,
        "the pull after the warm fetched blobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_stops_at_the_reserve_and_resumes_when_the_window_allows() {
    let hub = Hub::start().await;
    hub.push_image("library/a", "1", &[4_000]);
    hub.push_image("library/b", "1", &[5_000]);
    // One pull above the reserve: the first image may take it, the second
    // must wait.
    hub.set_ratelimit_remaining(11);
    let toml = hub_config(
        &hub.url(),
        "warm_reserve = 10\n[[warm]]\nname = \"two\"\nimages = [\"a:1\", \"b:1\"]\n",
    );
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .timings(|t| t.warm_ratelimit_poll = Duration::from_millis(50))
        .start();
    let b_heads = || {
        hub.requests()
            .iter()
            .filter(|r| r.method == http::Method::HEAD && r.path == "/v2/library/b/manifests/1")
            .count()
    };
    // Paused: it keeps asking about b with free HEADs, and GETs nothing.
    wait_until("the paused warm polling with HEADs", SETTLE, || {
        (b_heads() >= 3).then_some(())
    });
    assert_eq!(
        hub.count(Kind::ManifestGetByDigest),
        1,
        "GETs past the reserve"
    );
    assert_eq!(hub.count(Kind::ManifestGetByTag), 0);
    assert_eq!(ready(&mirror, "two"), 0.0);

    hub.set_ratelimit_remaining(50);
    wait_until("the warm resumed and finished", SETTLE, || {
        (ready(&mirror, "two") == 2.0).then_some(())
    });
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 2);
}
