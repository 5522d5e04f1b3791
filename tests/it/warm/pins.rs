//! Pinned warm sets: kept through eviction that takes everything else,
//! counted against `max_size`, and refused when they cannot fit.

use super::hub_config;
use crate::support::cli::pullthrough_json;
use crate::support::client::{client, config_file, files_named, hex_of};
use crate::support::hub::{Hub, Kind};
use crate::support::mirror::Mirror;
use crate::support::{next_second, wait_until, ACCEPT};
use pullthrough::config::{Config, Overrides};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

fn cached(cache: &std::path::Path, digest: &str) -> bool {
    !files_named(cache, hex_of(digest)).is_empty()
}

async fn pull(base: &str, repo: &str, image: &crate::support::hub::TestImage) {
    let c = client();
    let m = c
        .get(format!("{base}/v2/{repo}/manifests/1"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_eq!(m.status(), 200);
    m.bytes().await.expect("manifest body");
    for (digest, bytes) in std::iter::once(&image.config).chain(&image.layers) {
        let b = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(b.status(), 200);
        assert!(b.bytes().await.expect("body") == *bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_set_survives_an_eviction_that_takes_everything_else() {
    let hub = Hub::start().await;
    let pinned = hub.push_image("library/pinned", "1", &[1_000_000]);
    let x1 = hub.push_image("library/x1", "1", &[900_000]);
    let x2 = hub.push_image("library/x2", "1", &[900_000]);
    let x3 = hub.push_image("library/x3", "1", &[1_800_000]);
    let toml = hub_config(
        &hub.url(),
        "[[warm]]\nname = \"keep\"\nimages = [\"pinned:1\"]\npin = true\n",
    );
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .arg("--max-size", "3MiB")
        .start();
    wait_until("the pinned set warmed", SETTLE, || {
        (mirror.metric("pullthrough_warm_set_images_ready", &[("set", "keep")]) == 1.0)
            .then_some(())
    });
    let pinned_bytes = mirror.metric("pullthrough_warm_pinned_bytes", &[("set", "keep")]);
    assert!(pinned_bytes > 1_000_000.0, "pinned bytes {pinned_bytes}");
    // The pinned image is the least recently used: without its pin it
    // would be the first to go.
    next_second();
    pull(&mirror.url(), "library/x1", &x1).await;
    pull(&mirror.url(), "library/x2", &x2).await;
    next_second();
    // 1 + 0.9 + 0.9 + 1.8 MB in a 3 MiB budget: both x1 and x2 must go.
    pull(&mirror.url(), "library/x3", &x3).await;
    wait_until("x1 and x2 evicted", SETTLE, || {
        (!cached(&mirror.cache_dir, &x1.layers[0].0) && !cached(&mirror.cache_dir, &x2.layers[0].0))
            .then_some(())
    });
    for (digest, _) in std::iter::once(&pinned.config).chain(&pinned.layers) {
        assert!(
            cached(&mirror.cache_dir, digest),
            "pinned blob {digest} evicted"
        );
    }
    assert!(
        cached(&mirror.cache_dir, &pinned.manifest_digest),
        "pinned manifest evicted"
    );
    assert!(cached(&mirror.cache_dir, &x3.layers[0].0));
    assert!(mirror.metric("pullthrough_cache_evictions_total", &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_set_over_the_budget_is_refused_at_start_up_or_before_its_blobs() {
    let hub = Hub::start().await;
    hub.push_image("library/big", "1", &[300_000]);
    let pin_set = "[[warm]]\nname = \"big\"\nimages = [\"big:1\"]\npin = true\n";
    let (_dir, config) = config_file(&hub_config(&hub.url(), pin_set));

    // A fresh cache does not know the size yet: the background warm learns
    // it from the manifest and fetches no blob.
    let mirror = Mirror::from_config_only()
        .config_file(&config)
        .arg("--max-size", "100KiB")
        .start();
    wait_until("the set's refusal", SETTLE, || {
        (mirror.metric(
            "pullthrough_warm_set_last_refresh_timestamp_seconds",
            &[("set", "big")],
        ) > 0.0)
            .then_some(())
    });
    assert_eq!(hub.count(Kind::ManifestGetByDigest), 1);
    assert_eq!(hub.count(Kind::BlobGet) + hub.count(Kind::CdnGet), 0);
    assert_eq!(
        mirror.metric("pullthrough_warm_set_images_ready", &[("set", "big")]),
        0.0
    );
    drop(mirror);

    // A cache that holds the image: refused before serving, naming sizes.
    let cache = tempfile::tempdir().expect("tempdir");
    let (_plain_dir, plain) = config_file(&hub_config(&hub.url(), ""));
    let warmed = pullthrough_json(&[
        "warm",
        "big:1",
        "--config",
        &plain.display().to_string(),
        "--cache-dir",
        &cache.path().display().to_string(),
    ]);
    assert_eq!(warmed[0]["ok"], true);
    let needed = warmed[0]["bytes"].as_u64().expect("bytes");
    let overrides = Overrides {
        cache_dir: Some(cache.path().to_path_buf()),
        max_size: Some("100KiB".into()),
        ..Overrides::default()
    };
    let config = Config::load(Some(&config), &overrides).expect("config");
    let error = match pullthrough::server::App::open(&config) {
        Ok(_) => panic!("a pin set of {needed} bytes opened within 100 KiB"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains(&format!("need {needed} bytes")), "{error}");
    assert!(error.contains("max_size 102400 bytes"), "{error}");
    assert!(error.contains("big:"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offline_gc_keeps_pinned_sets_too() {
    let hub = Hub::start().await;
    let pinned = hub.push_image("library/pinned", "1", &[200_000]);
    let other = hub.push_image("library/other", "1", &[200_000]);
    let (_dir, plain) = config_file(&hub_config(&hub.url(), ""));
    let pin_set = "[[warm]]\nimages = [\"pinned:1\"]\npin = true\n";
    let (_pin_dir, pinning) = config_file(&hub_config(&hub.url(), pin_set));
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().display().to_string();
    for image in ["pinned:1", "other:1"] {
        let warmed = pullthrough_json(&[
            "warm",
            image,
            "--config",
            &plain.display().to_string(),
            "--cache-dir",
            &cache_dir,
        ]);
        assert_eq!(warmed[0]["ok"], true, "{warmed}");
        // Access times are in whole seconds: the pinned image is the
        // least recently used, the first eviction would take it.
        next_second();
    }
    let report = pullthrough_json(&[
        "gc",
        "--config",
        &pinning.display().to_string(),
        "--cache-dir",
        &cache_dir,
        "--max-size",
        "300KB",
    ]);
    let removed: Vec<String> = report["eviction"]["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(removed.contains(&other.layers[0].0), "{report}");
    for (digest, _) in std::iter::once(&pinned.config).chain(&pinned.layers) {
        assert!(
            !removed.contains(digest),
            "pinned {digest} evicted: {report}"
        );
        assert!(cached(cache.path(), digest));
    }
}
