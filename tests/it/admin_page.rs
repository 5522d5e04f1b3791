//! The admin API and the page (issue 14): after real pulls the API's
//! figures equal `/metrics`, cached tags are listed, and the page carries
//! ready-to-copy snippets with the mirror's own address, in English or
//! Chinese, under a strict Content-Security-Policy; and Chromium headless
//! renders it (the script runs under that policy).

use crate::support::client::{client, header};
use crate::support::hub::{Hub, Kind};
use crate::support::metrics::sample_sum;
use crate::support::mirror::Mirror;
use crate::support::process::run_bounded;
use crate::support::{require_tool, ACCEPT};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LOOKUPS: &str = "pullthrough_cache_lookups_total";
const SERVED: &str = "pullthrough_served_bytes_total";

async fn get_json(url: String) -> Value {
    let response = client().get(&url).send().await.expect("mirror answers");
    assert_eq!(response.status(), 200, "GET {url}");
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json")
    );
    let body = response.bytes().await.expect("body");
    serde_json::from_slice(&body).expect("JSON body")
}

/// Pulls `library/app:latest` (manifest, config, layers) through the mirror.
async fn pull(base: &str, image: &crate::support::hub::TestImage) {
    let c = client();
    let manifest = c
        .get(format!("{base}/v2/library/app/manifests/latest"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    manifest.bytes().await.expect("manifest body");
    for (digest, _) in std::iter::once(&image.config).chain(&image.layers) {
        let blob = c
            .get(format!("{base}/v2/library/app/blobs/{digest}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(blob.status(), 200);
        blob.bytes().await.expect("blob body");
    }
}

fn mirror_for(hub: &Hub, ghcr: &Hub) -> Mirror {
    let toml = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n",
        hub.url(),
        ghcr.url()
    );
    // API reads are open on the metrics listener (the default).
    Mirror::builder(&hub.url())
        .config(&toml)
        .metrics_listener()
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_after_pulls_equals_the_metrics_and_tags_are_listed() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[1000, 3000]);
    let mirror = mirror_for(&hub, &ghcr);
    let base = mirror.url();
    // A miss, then hits.
    pull(&base, &image).await;
    pull(&base, &image).await;

    let ops = mirror.metrics_url();
    let status = get_json(format!("{ops}/api/v1/status")).await;
    let metrics = mirror.metrics();
    let hits = sample_sum(&metrics, LOOKUPS, &[("result", "hit")]);
    let misses = sample_sum(&metrics, LOOKUPS, &[("result", "miss")]);
    assert!(hits >= 3.0 && misses >= 3.0, "hits {hits}, misses {misses}");
    assert_eq!(status["lookups"]["hits"].as_f64(), Some(hits), "{status}");
    assert_eq!(
        status["lookups"]["misses"].as_f64(),
        Some(misses),
        "{status}"
    );
    assert_eq!(
        status["bytes_served"]["cache"].as_f64(),
        Some(sample_sum(&metrics, SERVED, &[("source", "cache")]))
    );
    assert_eq!(
        status["bytes_served"]["upstream"].as_f64(),
        Some(sample_sum(&metrics, SERVED, &[("source", "upstream")]))
    );
    // Within the first hour, the last hour is everything since start.
    let hour = &status["last_hour"];
    assert_eq!(hour["hits"].as_f64(), Some(hits), "{status}");
    assert_eq!(hour["misses"].as_f64(), Some(misses), "{status}");
    assert_eq!(
        hour["bytes_from_cache"].as_f64(),
        Some(sample_sum(&metrics, SERVED, &[("source", "cache")]))
    );
    assert_eq!(
        hour["bytes_from_upstream"].as_f64(),
        Some(sample_sum(&metrics, SERVED, &[("source", "upstream")]))
    );
    assert!(hour["bytes_from_upstream"].as_u64() > Some(0), "{status}");
    assert_eq!(status["cache"]["tags"], 1, "{status}");
    assert_eq!(status["cache"]["blobs"], 3, "{status}");
    assert_eq!(status["cache"]["manifests"], 1, "{status}");
    let expected_bytes: usize = image.manifest_bytes.len()
        + image.config.1.len()
        + image.layers.iter().map(|(_, b)| b.len()).sum::<usize>();
    assert_eq!(
        status["cache"]["bytes"].as_u64(),
        Some(expected_bytes as u64)
    );
    assert_eq!(status["downloads_in_flight"], 0);
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["docker.io", "ghcr.io"]);
    assert_eq!(status["upstreams"][0]["circuit_open"], false);

    let upstreams = get_json(format!("{ops}/api/v1/upstreams")).await;
    assert_eq!(upstreams.as_array().map(Vec::len), Some(2));

    let repos = get_json(format!("{ops}/api/v1/cache/repositories")).await;
    assert_eq!(repos[0]["upstream"], "docker.io", "{repos}");
    assert_eq!(repos[0]["repository"], "library/app", "{repos}");
    assert_eq!(repos[0]["tags"], 1, "{repos}");
    assert_eq!(repos[0]["size"].as_u64(), Some(expected_bytes as u64));

    // By the upstream's name and by the bare Hub name alike.
    for name in ["library/app", "app"] {
        let tags = get_json(format!("{ops}/api/v1/cache/repositories/{name}/tags")).await;
        assert_eq!(tags[0]["tag"], "latest", "{tags}");
        assert_eq!(tags[0]["digest"], image.manifest_digest.as_str(), "{tags}");
    }
    let unknown = client()
        .get(format!("{ops}/api/v1/cache/repositories/nothing/tags"))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);

    // Reads are not written to; the registry stays read-only.
    let delete = client()
        .delete(format!("{ops}/api/v1/status"))
        .send()
        .await
        .expect("answer");
    assert_eq!(delete.status(), 405);
    let put = client()
        .put(format!("{base}/v2/library/app/manifests/latest"))
        .send()
        .await
        .expect("answer");
    assert_eq!(put.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_has_snippets_for_this_mirror_in_english_and_chinese() {
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[500]);
    let mirror = mirror_for(&hub, &ghcr);
    let base = mirror.url();
    pull(&base, &image).await;
    let host = base.trim_start_matches("http://");

    let response = client()
        .get(format!("{base}/"))
        // Not from a trusted proxy (none is configured): ignored.
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&response, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let csp = header(&response, "content-security-policy").expect("CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = response.text().await.expect("page body");
    assert!(html.len() < 64 * 1024, "a light page: {} bytes", html.len());
    assert!(
        !html.contains("evil.example"),
        "X-Forwarded-Host from an untrusted peer"
    );
    assert!(
        html.contains(&format!(
            "&quot;registry-mirrors&quot;: [&quot;http://{host}&quot;]"
        )),
        "daemon.json snippet with the mirror's URL"
    );
    assert!(html.contains("/etc/containerd/certs.d/ghcr.io/hosts.toml"));
    assert!(html.contains("/etc/containerd/certs.d/_default/hosts.toml"));
    assert!(html.contains(&format!("[host.&quot;http://{host}&quot;]")));
    assert!(html.contains(&format!("location = &quot;{host}/ghcr.io&quot;")));
    assert!(
        html.contains(&format!("docker pull {host}/library/app:latest")),
        "cached tag's pull line"
    );
    assert!(html.contains("Use this mirror"));

    let zh = client()
        .get(format!("{base}/"))
        .header("accept-language", "zh-CN,zh;q=0.9,en;q=0.5")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(zh.contains("<html lang=\"zh-CN\">") && zh.contains("使用此镜像"));
    let en = client()
        .get(format!("{base}/?lang=en"))
        .header("accept-language", "zh-CN")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(
        en.contains("Use this mirror"),
        "the switch wins over Accept-Language"
    );

    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let asset = client()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("asset");
        assert_eq!(asset.status(), 200);
        assert!(header(&asset, "content-type").is_some_and(|t| t.starts_with(kind)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_proxy_names_the_mirror_address() {
    let hub = Hub::start().await;
    let toml = "trusted_proxies = [\"127.0.0.1/32\"]\n";
    let mirror = Mirror::builder(&hub.url()).config(toml).start();
    let html = client()
        .get(format!("{}/", mirror.url()))
        .header("x-forwarded-host", "mirror.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    assert!(
        html.contains("&quot;registry-mirrors&quot;: [&quot;https://mirror.example.com&quot;]"),
        "forwarded host and scheme from a trusted proxy"
    );
    assert!(
        !html.contains("insecure-registries"),
        "https needs no insecure entry"
    );
}

/// Chromium headless on `url`: the DOM after the page's script has run
/// (virtual time lets its first `/ui/live` poll complete), and a
/// screenshot of the top of the page kept under `target/` as a CI
/// artifact (`docs/page.png`, in the README, is the English one).
fn browser_dom(url: &str, screenshot: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let run = |extra: &[String]| {
        let mut command = std::process::Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--virtual-time-budget=4000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url);
        run_bounded(command, Duration::from_secs(90))
    };
    let dumped = run(&["--dump-dom".to_owned()]);
    assert!(
        dumped.status.success(),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let shot = dir.join(screenshot);
    let taken = run(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1100,1300".to_owned(),
        "--hide-scrollbars".to_owned(),
    ]);
    assert!(
        taken.status.success() && shot.is_file(),
        "screenshot {}",
        shot.display()
    );
    String::from_utf8_lossy(&dumped.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_browser_renders_the_cache_the_counts_and_the_snippets() {
    if !require_tool("chromium") {
        return;
    }
    let hub = Hub::start().await;
    let ghcr = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[800, 1600]);
    let mirror = mirror_for(&hub, &ghcr);
    let base = mirror.url();
    pull(&base, &image).await;
    pull(&base, &image).await;
    let host = base.trim_start_matches("http://").to_owned();

    let page = format!("{base}/");
    let dom = tokio::task::spawn_blocking(move || browser_dom(&page, "page-en.png"))
        .await
        .expect("browser");
    let metrics = mirror.metrics();
    let hits = sample_sum(&metrics, LOOKUPS, &[("result", "hit")]);
    let misses = sample_sum(&metrics, LOOKUPS, &[("result", "miss")]);
    assert_eq!(
        text_of(&dom, "st-hits"),
        Some(hits.to_string()),
        "hits as /metrics"
    );
    assert_eq!(
        text_of(&dom, "st-misses"),
        Some(misses.to_string()),
        "misses as /metrics"
    );
    // The script ran under the CSP: it refreshed the live part from
    // /ui/live and showed the copy buttons it wires up.
    assert_ne!(
        text_of(&dom, "st-updated").as_deref(),
        Some("-"),
        "the script refreshed the live part"
    );
    assert!(
        dom.contains("Recent pulls") && dom.contains("id=\"pulls\""),
        "recent pulls"
    );
    assert!(dom.contains("id=\"top\""), "top repositories");
    assert_eq!(
        text_of(&dom, "st-hour-hits"),
        Some(hits.to_string()),
        "last hour's hits as /metrics (all within the hour)"
    );
    assert!(
        !dom.contains("hidden=\"\" data-done"),
        "copy buttons shown by the script"
    );
    assert!(
        dom.contains("docker.io/library/app"),
        "the cached repository"
    );
    assert!(dom.contains(&format!("docker pull {host}/library/app:latest")));
    assert!(
        dom.contains(&format!("\"registry-mirrors\": [\"http://{host}\"]")),
        "daemon.json"
    );

    // The Chinese page, checked the same way; its screenshot needs a CJK
    // font (tests/run-all.sh installs fonts-noto-cjk).
    require_cjk_font();
    let page = format!("{base}/?lang=zh");
    let zh = tokio::task::spawn_blocking(move || browser_dom(&page, "page-zh.png"))
        .await
        .expect("browser");
    assert!(
        zh.contains("<html lang=\"zh-CN\">")
            && zh.contains("使用此镜像")
            && zh.contains("已缓存的仓库"),
        "the Chinese page"
    );
    assert!(
        zh.contains("缓存命中") && zh.contains("最近拉取"),
        "Chinese labels"
    );
    assert_eq!(
        text_of(&zh, "st-hits"),
        Some(hits.to_string()),
        "hits as /metrics"
    );
    assert_eq!(
        text_of(&zh, "st-misses"),
        Some(misses.to_string()),
        "misses as /metrics"
    );
    assert_ne!(
        text_of(&zh, "st-updated").as_deref(),
        Some("-"),
        "the script ran"
    );
    assert!(!zh.contains("hidden=\"\" data-done"), "copy buttons shown");
    assert!(
        zh.contains("docker.io/library/app"),
        "the cached repository"
    );
    assert!(zh.contains(&format!("docker pull {host}/library/app:latest")));
    assert!(zh.contains(&format!("\"registry-mirrors\": [\"http://{host}\"]")));
}

/// Fontconfig must know a font with Chinese glyphs, or the Chinese
/// screenshot shows boxes: under `CI=true` its absence fails the test.
fn require_cjk_font() {
    let mut command = std::process::Command::new("fc-list");
    command.arg(":lang=zh");
    let listed = run_bounded(command, Duration::from_secs(30));
    if listed.status.success() && !listed.stdout.is_empty() {
        return;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no CJK font (fonts-noto-cjk) and CI=true: the Chinese screenshot would show boxes");
    }
    eprintln!("no CJK font installed (fonts-noto-cjk); the Chinese screenshot shows boxes");
}

const TOKEN: &str = "s3cret-admin-token";

async fn delete(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().delete(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("mirror answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_need_the_admin_token_and_cost_one_upstream_fetch_after() {
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "latest", &[700, 900]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let toml = format!("admin_token_file = \"{}\"\n", token_file.display());
    let mirror = Mirror::builder(&hub.url())
        .config(&toml)
        .metrics_listener()
        .start();
    let base = mirror.url();
    let ops = mirror.metrics_url();
    pull(&base, &image).await;

    let tag_url = format!("{base}/api/v1/cache/repositories/library/app/tags/latest");
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = delete(&tag_url, token).await;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert!(!body.contains(TOKEN), "no secret in a body");
    }
    // Still cached after the refusals.
    let tags = get_json(format!("{ops}/api/v1/cache/repositories/app/tags")).await;
    assert_eq!(tags[0]["tag"], "latest");

    let (status, body) = delete(&tag_url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"removed_tags\":1"), "{body}");
    assert!(!body.contains(TOKEN));
    let gone = client()
        .get(format!("{ops}/api/v1/cache/repositories/app/tags"))
        .send()
        .await
        .expect("answer");
    assert_eq!(gone.status(), 404);
    assert_eq!(delete(&tag_url, Some(TOKEN)).await.0, 404, "already purged");

    // The tag again: one upstream fetch of it.
    let before = hub.count(Kind::ManifestGetByTag) + hub.count(Kind::ManifestHeadByTag);
    pull(&base, &image).await;
    let after = hub.count(Kind::ManifestGetByTag) + hub.count(Kind::ManifestHeadByTag);
    assert_eq!(after - before, 1, "one upstream request for the purged tag");

    // A layer by digest: freed, and fetched once again on the next pull.
    let (layer, bytes) = &image.layers[0];
    let digest_url = format!("{base}/api/v1/cache/digests/{layer}");
    assert_eq!(delete(&digest_url, None).await.0, 401);
    let (status, body) = delete(&digest_url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"freed_bytes\":{}", bytes.len())),
        "{body}"
    );
    let before = hub.count(Kind::BlobGet);
    pull(&base, &image).await;
    pull(&base, &image).await;
    assert_eq!(
        hub.count(Kind::BlobGet) - before,
        1,
        "the purged layer, once"
    );

    // The registry API stays read-only, token or not.
    let refused = client()
        .delete(format!("{base}/v2/library/app/manifests/latest"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_admin_token_file_actions_are_refused() {
    let hub = Hub::start().await;
    let mirror = Mirror::start(&hub.url());
    let url = format!("{}/api/v1/cache/repositories/app/tags/latest", mirror.url());
    assert_eq!(delete(&url, Some("anything")).await.0, 401);
    assert_eq!(delete(&url, None).await.0, 401);
}
