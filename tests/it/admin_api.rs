//! The admin API beyond the page (issue 14): who may read it
//! (`admin_read`), the token on every action, downloads in flight with
//! their progress, recent pulls and top repositories, Docker Hub search
//! through the mirror (`/v1/search`, and the page's search box), and
//! `pullthrough cache ls|stats` against a running mirror and without one.

use crate::support::cli::{pullthrough, pullthrough_json};
use crate::support::client::{client, header, oci_error_code};
use crate::support::hub::{Fault, Hub, Kind, Target};
use crate::support::mirror::Mirror;
use crate::support::{wait_until, ACCEPT};
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "adm1n-t0ken-never-echoed";

const READS: [&str; 7] = [
    "/api/v1/status",
    "/api/v1/upstreams",
    "/api/v1/downloads",
    "/api/v1/pulls",
    "/api/v1/cache/repositories",
    "/api/v1/cache/tags",
    "/api/v1/cache/repositories/app/tags",
];

/// A mirror with the admin token, a metrics listener, and `extra` config.
fn mirror_with_token(hub: &Hub, extra: &str) -> (Mirror, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let toml = format!("admin_token_file = \"{}\"\n{extra}", token_file.display());
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .metrics_listener()
        .start();
    (mirror, dir)
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("mirror answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn pull_app(base: &str, image: &crate::support::hub::TestImage) {
    let manifest = client()
        .get(format!("{base}/v2/library/app/manifests/latest"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    manifest.bytes().await.expect("manifest body");
    for (digest, _) in std::iter::once(&image.config).chain(&image.layers) {
        let blob = client()
            .get(format!("{base}/v2/library/app/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(blob.status(), 200);
        blob.bytes().await.expect("blob body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_reads_follow_admin_read_and_every_action_needs_the_token() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[300]);
    // (admin_read, open on the main listener, open on the metrics one)
    for (setting, main_open, metrics_open) in [
        ("", false, true),
        ("admin_read = \"open\"\n", true, true),
        ("admin_read = \"token\"\n", false, false),
    ] {
        let (mirror, _dir) = mirror_with_token(&hub, setting);
        pull_app(&mirror.url(), &image).await;
        for (base, open) in [
            (mirror.url(), main_open),
            (mirror.metrics_url(), metrics_open),
        ] {
            for path in READS {
                let url = format!("{base}{path}");
                let (status, body) = get(&url, None).await;
                let expected = if open { 200 } else { 401 };
                assert_eq!(status, expected, "{setting:?} GET {url}: {body}");
                if !open {
                    assert_eq!(
                        oci_error_code(body.as_bytes()).as_deref(),
                        Some("UNAUTHORIZED")
                    );
                    assert_eq!(get(&url, Some("wrong")).await.0, 401, "{url}");
                }
                let (status, body) = get(&url, Some(TOKEN)).await;
                assert_eq!(status, 200, "{setting:?} GET {url} with the token: {body}");
                assert!(!body.contains(TOKEN), "no secret in {url}");
            }
            // Every action, on either listener, whatever admin_read says.
            let layer = &image.layers[0].0;
            for path in [
                "/api/v1/cache/repositories/library/app/tags/latest".to_owned(),
                "/api/v1/cache/repositories/library/app".to_owned(),
                format!("/api/v1/cache/digests/{layer}"),
            ] {
                for token in [None, Some("wrong"), Some("")] {
                    let mut request = client().delete(format!("{base}{path}"));
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    let response = request.send().await.expect("answer");
                    assert_eq!(
                        response.status(),
                        401,
                        "{setting:?} DELETE {path} {token:?}"
                    );
                    assert!(header(&response, "www-authenticate").is_some());
                    let body = response.text().await.expect("body");
                    assert!(!body.contains(TOKEN), "no secret in a refusal");
                }
            }
        }
        // The refusals changed nothing: the page still lists the tag.
        let (_, tags) = get(
            &format!(
                "{}/api/v1/cache/repositories/app/tags",
                mirror.metrics_url()
            ),
            Some(TOKEN),
        )
        .await;
        assert!(tags.contains("\"latest\""), "{tags}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_purge_forgets_its_tags_and_costs_one_fetch_per_tag_after() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[400]);
    hub.push_image("library/app", "v2", &[500]);
    let (mirror, _dir) = mirror_with_token(&hub, "");
    let base = mirror.url();
    pull_app(&base, &image).await;
    for tag in ["v2", "latest"] {
        let r = client()
            .get(format!("{base}/v2/library/app/manifests/{tag}"))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("manifest");
        assert_eq!(r.status(), 200);
    }
    let url = format!("{base}/api/v1/cache/repositories/app");
    let response = client()
        .delete(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains("\"removed_tags\":2"), "{body}");
    let tags = format!(
        "{}/api/v1/cache/repositories/app/tags",
        mirror.metrics_url()
    );
    assert_eq!(get(&tags, None).await.0, 404, "no tags left");
    let before = hub.count(Kind::ManifestGetByTag) + hub.count(Kind::ManifestHeadByTag);
    for tag in ["v2", "latest"] {
        let r = client()
            .get(format!("{base}/v2/library/app/manifests/{tag}"))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("manifest");
        assert_eq!(r.status(), 200);
    }
    let after = hub.count(Kind::ManifestGetByTag) + hub.count(Kind::ManifestHeadByTag);
    assert_eq!(after - before, 2, "one upstream request per purged tag");
    let again = client()
        .delete(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(again.status(), 200, "cached again, purged again");
}

/// A blob whose first CDN connection stalls part-way: the download stays
/// in flight at exactly that many bytes until the stall window resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_in_flight_show_progress_and_pulls_are_listed() {
    const SENT: u64 = 200 * 1024;
    const SIZE: usize = 600 * 1024;
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[SIZE]);
    let (layer, bytes) = image.layers[0].clone();
    hub.set_fault(Target::Digest(layer.clone()), Fault::StallAfterFirst(SENT));
    let mirror = Mirror::builder(&hub.url())
        .metrics_listener()
        .timings(|t| t.stall_window = Duration::from_secs(2))
        .start();
    let base = mirror.url();
    let manifest = client()
        .get(format!("{base}/v2/library/app/manifests/latest"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    let blob_url = format!("{base}/v2/library/app/blobs/{layer}");
    let transfer = tokio::spawn(async move {
        let response = client().get(blob_url).send().await.expect("blob");
        response.bytes().await.expect("blob body")
    });

    let ops = mirror.metrics_addr.expect("metrics listener");
    let seen: Value = wait_until(
        "the stalled download at its bytes",
        Duration::from_secs(10),
        || {
            let r = crate::support::registry::http(ops, "GET", "/api/v1/downloads", &[]).ok()?;
            let list: Value = serde_json::from_slice(&r.body).ok()?;
            let d = list.as_array()?.first()?.clone();
            (d["bytes"].as_u64() == Some(SENT)).then_some(d)
        },
    );
    assert_eq!(seen["digest"], layer.as_str(), "{seen}");
    assert_eq!(seen["total"].as_u64(), Some(SIZE as u64), "{seen}");
    assert_eq!(seen["upstream"], "docker.io", "{seen}");
    assert_eq!(seen["repository"], "library/app", "{seen}");
    // The page shows it too, with a progress bar at the same bytes.
    let live = client()
        .get(format!("{base}/ui/live"))
        .send()
        .await
        .expect("live")
        .text()
        .await
        .expect("live body");
    assert!(
        live.contains(&format!("<progress value=\"{SENT}\" max=\"{SIZE}\">")),
        "{live}"
    );
    let status: Value = serde_json::from_str(
        &get(&format!("{}/api/v1/status", mirror.metrics_url()), None)
            .await
            .1,
    )
    .expect("status JSON");
    assert_eq!(status["downloads_in_flight"], 1, "{status}");

    // Resumed after the stall window: the client gets every byte.
    let got = transfer.await.expect("transfer");
    assert_eq!(got, bytes, "the blob's bytes");
    let (_, after) = get(&format!("{}/api/v1/downloads", mirror.metrics_url()), None).await;
    assert_eq!(after, "[]", "nothing in flight once done");

    // A second pull is a hit; both are listed, newest first.
    let again = client()
        .get(format!("{base}/v2/library/app/manifests/latest"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_eq!(again.status(), 200);
    let (_, pulls) = get(&format!("{}/api/v1/pulls", mirror.metrics_url()), None).await;
    let pulls: Value = serde_json::from_str(&pulls).expect("pulls JSON");
    let recent = pulls["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), 2, "{pulls}");
    let results: Vec<&str> = recent.iter().filter_map(|p| p["result"].as_str()).collect();
    assert_eq!(results, ["hit", "miss"], "{pulls}");
    assert_eq!(recent[0]["repository"], "library/app");
    assert_eq!(recent[0]["tag"], "latest");
    assert_eq!(recent[0]["client"], "127.0.0.1");
    assert_eq!(pulls["top_repositories"][0]["repository"], "library/app");
    assert_eq!(pulls["top_repositories"][0]["pulls"], 2, "{pulls}");
    let page = client()
        .get(format!("{base}/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(
        page.contains("docker.io/library/app:latest"),
        "recent pull on the page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_passes_through_to_docker_hub_and_the_page_finds_images() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[200]);
    hub.push_image("team/apptool", "1.0", &[200]);
    hub.push_image("library/other", "latest", &[200]);
    let mirror = Mirror::start(&hub.url());
    let base = mirror.url();
    let host = base.trim_start_matches("http://").to_owned();
    pull_app(&base, &image).await;

    // The API answer is the hub's, byte for byte, from one hub request.
    let direct = client()
        .get(format!("{}/v1/search?q=app&n=25&page=1", hub.url()))
        .send()
        .await
        .expect("hub")
        .text()
        .await
        .expect("hub body");
    hub.reset_counts();
    let response = client()
        .get(format!("{base}/v1/search?q=app"))
        .send()
        .await
        .expect("search");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json")
    );
    let body = response.text().await.expect("body");
    assert_eq!(body, direct);
    assert_eq!(hub.count(Kind::Search), 1);
    let names: Vec<String> = serde_json::from_str::<Value>(&body).expect("JSON")["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["app", "team/apptool"]);
    // The Docker daemon's check before it searches.
    let ping = client()
        .get(format!("{base}/v1/_ping"))
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status(), 200);

    // Bad queries: 400 with an OCI error, nothing asked upstream.
    for query in ["", "?q=", "?q=a&n=lots"] {
        let r = client()
            .get(format!("{base}/v1/search{query}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 400, "{query}");
        let body = r.bytes().await.expect("body");
        assert_eq!(oci_error_code(&body).as_deref(), Some("NAME_INVALID"));
    }
    assert_eq!(hub.count(Kind::Search), 1);

    // The page's search box: Hub's results and the cache's, with the
    // cached tags and the pull commands.
    let page = client()
        .get(format!("{base}/?q=app"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(page.contains("id=\"hub-results\""), "{page}");
    assert!(
        page.contains(&format!("docker pull {host}/app:latest")),
        "cached tag"
    );
    assert!(
        page.contains(&format!("docker pull {host}/team/apptool")),
        "Hub result"
    );
    assert!(page.contains("value=\"app\""), "the term stays in the box");
    assert!(page.contains("id=\"cached-results\""));
    assert!(!page.contains("library/other"), "only matches");
    assert_eq!(hub.count(Kind::Search), 1, "the same search, kept a minute");
    let other = client()
        .get(format!("{base}/?q=tool"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(other.contains(&format!("docker pull {host}/team/apptool")));
    assert_eq!(hub.count(Kind::Search), 2, "another term asks again");

    // A mirror without Docker Hub has no search to pass through.
    let ghcr_only = Mirror::from_config_only()
        .config(&format!(
            "[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n",
            hub.url()
        ))
        .start();
    let r = client()
        .get(format!("{}/v1/search?q=app", ghcr_only.url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    assert_eq!(
        oci_error_code(&r.bytes().await.expect("body")).as_deref(),
        Some("UNSUPPORTED")
    );
    assert_eq!(hub.count(Kind::Search), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_ls_and_stats_ask_the_running_mirror_and_read_the_files_without_one() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[300, 700]);
    hub.push_image("library/app", "v2", &[100]);
    // No metrics listener and default admin_read: the CLI still gets in,
    // with the read token the mirror left for it.
    let mut mirror = Mirror::start(&hub.url());
    let base = mirror.url();
    pull_app(&base, &image).await;
    let dir = mirror.cache_dir.to_string_lossy().into_owned();

    let running_stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    assert_eq!(running_stats["tags"], 1, "{running_stats}");
    assert_eq!(running_stats["blobs"], 3, "{running_stats}");
    assert_eq!(running_stats["manifests"], 1, "{running_stats}");
    let running_rows = pullthrough_json(&["cache", "ls", "--cache-dir", &dir]);
    assert_eq!(
        running_rows[0]["repository"], "library/app",
        "{running_rows}"
    );
    assert_eq!(running_rows[0]["digest"], image.manifest_digest.as_str());
    let filtered = pullthrough_json(&["cache", "ls", "app", "--cache-dir", &dir]);
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");
    let none = pullthrough_json(&["cache", "ls", "nothing", "--cache-dir", &dir]);
    assert_eq!(none, Value::Array(Vec::new()));
    let table = pullthrough(&["cache", "ls", "--cache-dir", &dir]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("library/app"));
    // gc still needs the cache to itself.
    let gc = pullthrough(&["gc", "--cache-dir", &dir]);
    assert_eq!(gc.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gc.stderr).contains("in use"));

    mirror.stop();
    // A stale address file (a crash leaves one): the free lock wins.
    let stale = format!(
        "{{\"pid\":1,\"url\":\"http://127.0.0.1:{}\",\"read_token\":\"x\"}}",
        crate::support::free_port()
    );
    std::fs::write(mirror.cache_dir.join("admin-address.json"), stale).expect("stale file");
    let stats = pullthrough_json(&["cache", "stats", "--cache-dir", &dir]);
    for key in ["bytes", "blobs", "manifests", "tags", "repositories"] {
        assert_eq!(
            stats[key], running_stats[key],
            "{key}: {stats} vs {running_stats}"
        );
    }
    let rows = pullthrough_json(&["cache", "ls", "--cache-dir", &dir]);
    let strip = |rows: &Value| -> Vec<(Value, Value, Value, Value)> {
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["upstream"].clone(),
                    r["repository"].clone(),
                    r["tag"].clone(),
                    r["size"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&rows), strip(&running_rows));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_outage_is_its_last_error_and_the_failed_pull_is_listed() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "latest", &[100]);
    hub.set_fault(Target::All, Fault::Status(503));
    let mirror = Mirror::builder(&hub.url()).metrics_listener().start();
    let failed = client()
        .get(format!("{}/v2/library/app/manifests/latest", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("answer");
    assert!(failed.status().is_server_error(), "{}", failed.status());
    let (_, upstreams) = get(&format!("{}/api/v1/upstreams", mirror.metrics_url()), None).await;
    let upstreams: Value = serde_json::from_str(&upstreams).expect("JSON");
    let error = &upstreams[0]["last_error"];
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("503")),
        "{upstreams}"
    );
    assert!(error["time"].as_u64().is_some(), "{upstreams}");
    let (_, pulls) = get(&format!("{}/api/v1/pulls", mirror.metrics_url()), None).await;
    let pulls: Value = serde_json::from_str(&pulls).expect("JSON");
    assert_eq!(pulls["recent"][0]["result"], "error", "{pulls}");
    assert_eq!(
        pulls["recent"][0]["status"],
        failed.status().as_u16(),
        "{pulls}"
    );
}
