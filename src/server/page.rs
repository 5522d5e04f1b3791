//! The page at `/`: status, "use this mirror" snippets and the cached
//! repositories, rendered here (so it is complete without script, and a
//! test or `curl` sees the snippets) in English or Simplified Chinese.
//! One small script (`/ui/app.js`) adds copy buttons and refreshes the
//! figures from `/api/v1/status`; it and the stylesheet are served as
//! separate embedded paths so the Content-Security-Policy needs no inline
//! code at all.

use super::api;
use super::body::{self, Body};
use super::routes::Asset;
use super::App;
use crate::admin::{human_bytes, TagRow};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use std::fmt::Write as _;

const TEMPLATE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Nothing but our own script, style and API; no framing (clickjacking),
/// no forms, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How clients reach this mirror, as the browser did.
pub struct Address {
    pub scheme: &'static str,
    /// `host[:port]`, validated to authority characters.
    pub host: String,
}

impl Address {
    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// The mirror's own address from the request: `X-Forwarded-Host` and
/// `-Proto` only when the peer is a trusted proxy (anyone else could make
/// the page print their host into the snippets people copy), else `Host`.
pub fn address(app: &App, headers: &HeaderMap, via_proxy: bool) -> Address {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| is_authority(v))
    };
    let forwarded_host = via_proxy.then(|| first("x-forwarded-host")).flatten();
    let host = forwarded_host
        .or_else(|| first(header::HOST.as_str()))
        .unwrap_or_else(|| "localhost".to_owned());
    let forwarded_proto = via_proxy
        .then(|| first("x-forwarded-proto"))
        .flatten()
        .map(|p| p.to_ascii_lowercase());
    let scheme = match forwarded_proto.as_deref() {
        Some("https") => "https",
        Some("http") => "http",
        _ if app.tls => "https",
        _ => "http",
    };
    Address { scheme, host }
}

/// Host names, IPv4 and bracketed IPv6, with an optional port.
fn is_authority(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// `?lang=` (the page's switch) wins, then the first of `en`/`zh` in
/// `Accept-Language` by quality.
pub fn language(headers: &HeaderMap, query: Option<&str>) -> Lang {
    let asked = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "lang")
            .map(|(_, v)| v.into_owned())
    });
    match asked.as_deref() {
        Some("zh") | Some("zh-CN") => return Lang::Zh,
        Some("en") => return Lang::En,
        _ => {}
    }
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut best: Option<(f32, Lang)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let lang = if tag == "zh" || tag.starts_with("zh-") {
            Lang::Zh
        } else if tag == "en" || tag.starts_with("en-") {
            Lang::En
        } else {
            continue;
        };
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, lang));
        }
    }
    best.map_or(Lang::En, |(_, l)| l)
}

/// The page's words; `tr(lang, en, zh)` keeps both side by side.
fn tr(lang: Lang, en: &'static str, zh: &'static str) -> &'static str {
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

pub async fn page(
    app: &App,
    at: &Address,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response<Body> {
    let lang = language(headers, query);
    // The page still renders (with what it can say) if the index cannot
    // be read; the API reports the error itself.
    let status = api::status(app).await.ok();
    let rows = api::tags(app, None).await.unwrap_or_default();
    let names: Vec<String> = app
        .upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect();
    let mut body = String::new();
    status_section(&mut body, lang, status.as_ref(), &names);
    usage_section(&mut body, lang, at, &names);
    repositories_section(&mut body, lang, at, &names, &rows);
    let langs = match lang {
        Lang::En => "<a href=\"?lang=en\" aria-current=\"true\">English</a><a href=\"?lang=zh\">简体中文</a>",
        Lang::Zh => "<a href=\"?lang=en\">English</a><a href=\"?lang=zh\" aria-current=\"true\">简体中文</a>",
    };
    let html = TEMPLATE
        .replace("{{lang}}", tr(lang, "en", "zh-CN"))
        .replace(
            "{{title}}",
            tr(
                lang,
                "pullthrough registry mirror",
                "pullthrough 镜像加速器",
            ),
        )
        .replace("{{mirror}}", &esc(&at.url()))
        .replace("{{langs}}", langs)
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{body}}", &body);
    let mut resp = Response::new(body::full(html));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

pub fn asset(asset: Asset) -> Response<Body> {
    let (text, kind) = match asset {
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Embedded in the binary: changes only with it.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

fn stat(out: &mut String, id: &str, value: &str, label: &str) {
    let _ = write!(
        out,
        "<div class=\"stat\"><b id=\"{id}\">{}</b><span>{}</span></div>",
        esc(value),
        esc(label)
    );
}

fn status_section(out: &mut String, lang: Lang, s: Option<&api::Status>, names: &[String]) {
    let _ = write!(
        out,
        "<section id=\"status\"><h2>{}</h2><div class=\"grid\">",
        tr(lang, "Status", "状态")
    );
    let n = |f: &dyn Fn(&api::Status) -> u64| s.map_or("-".to_owned(), |s| f(s).to_string());
    let used = s.map_or("-".to_owned(), |s| match s.cache.max_size {
        Some(max) => format!("{} / {}", human_bytes(s.cache.bytes), human_bytes(max)),
        None => human_bytes(s.cache.bytes),
    });
    let pct = s
        .and_then(|s| {
            s.cache
                .max_size
                .map(|m| (s.cache.bytes as f64 * 100.0 / m.max(1) as f64).min(100.0))
        })
        .unwrap_or(0.0);
    let _ = write!(
        out,
        "<div class=\"stat\"><b id=\"st-bytes\">{}</b><span>{}</span><div class=\"bar\"><i id=\"st-bar\" data-pct=\"{pct:.0}\"></i></div></div>",
        esc(&used),
        tr(lang, "cache used", "缓存占用")
    );
    type Count = fn(&api::Status) -> u64;
    let counts: [(&str, Count, &str, &str); 6] = [
        ("st-blobs", |s| s.cache.blobs, "blobs", "镜像层 (blob)"),
        (
            "st-manifests",
            |s| s.cache.manifests,
            "manifests",
            "清单 (manifest)",
        ),
        ("st-tags", |s| s.cache.tags, "tags", "标签"),
        (
            "st-repositories",
            |s| s.cache.repositories,
            "repositories",
            "仓库",
        ),
        ("st-hits", |s| s.lookups.hits, "cache hits", "缓存命中"),
        (
            "st-misses",
            |s| s.lookups.misses,
            "cache misses",
            "缓存未命中",
        ),
    ];
    for (id, count, en, zh) in counts {
        stat(out, id, &n(&count), tr(lang, en, zh));
    }
    let ratio = s.map_or("-".to_owned(), |s| {
        let total = s.lookups.hits + s.lookups.misses;
        if total == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", s.lookups.hits as f64 * 100.0 / total as f64)
        }
    });
    stat(out, "st-ratio", &ratio, tr(lang, "hit ratio", "命中率"));
    let bytes = |f: &dyn Fn(&api::Status) -> u64| s.map_or("-".to_owned(), |s| human_bytes(f(s)));
    let amounts: [(&str, Count, &str, &str); 2] = [
        (
            "st-from-cache",
            |s| s.bytes_served.cache,
            "served from cache (saved)",
            "从缓存提供（节省）",
        ),
        (
            "st-from-upstream",
            |s| s.bytes_served.upstream,
            "fetched from upstream",
            "从上游拉取",
        ),
    ];
    for (id, amount, en, zh) in amounts {
        stat(out, id, &bytes(&amount), tr(lang, en, zh));
    }
    stat(
        out,
        "st-downloads",
        &n(&|s| s.downloads_in_flight),
        tr(lang, "downloads in flight", "正在下载"),
    );
    out.push_str("</div>");
    let _ = write!(
        out,
        "<h3>{}</h3><table><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        tr(lang, "Upstreams", "上游仓库"),
        tr(lang, "registry", "仓库"),
        tr(lang, "state", "状态"),
        tr(lang, "rate limit remaining", "剩余拉取配额"),
    );
    let (ok, open) = (
        tr(lang, "reachable", "正常"),
        tr(lang, "failing (circuit open)", "故障（熔断中）"),
    );
    for (i, name) in names.iter().enumerate() {
        let u = s.and_then(|s| s.upstreams.get(i));
        let is_open = u.is_some_and(|u| u.circuit_open);
        let rl = u
            .and_then(|u| {
                Some(format!(
                    "{} / {}",
                    u.ratelimit_remaining?, u.ratelimit_limit?
                ))
            })
            .unwrap_or_else(|| "-".to_owned());
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td id=\"up-{i}\" class=\"{}\" data-closed=\"{ok}\" data-open=\"{open}\">{}</td><td id=\"up-rl-{i}\">{}</td></tr>",
            esc(name),
            if is_open { "bad" } else { "ok" },
            if is_open { open } else { ok },
            esc(&rl)
        );
    }
    let _ = write!(
        out,
        "</tbody></table><p class=\"muted\">{} <span id=\"st-updated\">-</span></p></section>",
        tr(lang, "Updated:", "更新时间：")
    );
}

fn snippet(out: &mut String, lang: Lang, title: &str, note: &str, text: &str) {
    let _ = write!(out, "<h3>{}</h3>", esc(title));
    if !note.is_empty() {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(note));
    }
    let _ = write!(
        out,
        "<div class=\"snip\"><button class=\"copy\" type=\"button\" hidden data-done=\"{}\">{}</button><pre>{}</pre></div>",
        tr(lang, "Copied", "已复制"),
        tr(lang, "Copy", "复制"),
        esc(text)
    );
}

/// containerd's upstream `server` for a registry name (Docker Hub's API
/// host is not its name).
fn server_of(name: &str) -> String {
    match name {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

fn usage_section(out: &mut String, lang: Lang, at: &Address, names: &[String]) {
    let url = at.url();
    let host = &at.host;
    let insecure = at.scheme == "http";
    let _ = write!(
        out,
        "<section id=\"usage\"><h2>{}</h2>",
        tr(lang, "Use this mirror", "使用此镜像")
    );
    let _ = write!(
        out,
        "<p>{} <code>{}</code></p>",
        tr(lang, "Mirror address:", "镜像地址："),
        esc(&url)
    );
    let hub = names.first().map(String::as_str).unwrap_or("docker.io");

    // Docker: registry-mirrors covers Docker Hub only (moby#18818).
    let mut daemon = format!("{{\n  \"registry-mirrors\": [\"{url}\"]");
    if insecure {
        let _ = write!(daemon, ",\n  \"insecure-registries\": [\"{host}\"]");
    }
    daemon.push_str("\n}\n");
    snippet(
        out,
        lang,
        "Docker: /etc/docker/daemon.json",
        tr(
            lang,
            "Applies to Docker Hub images only. Then: sudo systemctl restart docker. If the mirror fails, Docker silently pulls from Docker Hub instead; check with docker info (Registry Mirrors).",
            "仅对 Docker Hub 镜像生效。修改后执行 sudo systemctl restart docker。镜像不可用时 Docker 会静默回退到 Docker Hub；可用 docker info（Registry Mirrors）确认已生效。",
        ),
        &daemon,
    );

    // containerd: one hosts.toml per registry, plus `_default`.
    let host_block = |with_server: Option<&str>| {
        let mut t = String::new();
        if let Some(name) = with_server {
            let _ = writeln!(t, "server = \"{}\"\n", server_of(name));
        }
        let _ = writeln!(t, "[host.\"{url}\"]");
        t.push_str("  capabilities = [\"pull\", \"resolve\"]\n");
        if insecure {
            t.push_str("  skip_verify = true\n");
        }
        t
    };
    let config_path = "# containerd 1.x, /etc/containerd/config.toml:\n\
[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n\n\
# containerd 2.x, /etc/containerd/config.toml:\n\
[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
    snippet(
        out,
        lang,
        "containerd: config_path",
        tr(
            lang,
            "Point containerd at the hosts directory (one directory only: containerd 2.1 ignores mirrors when several are listed), then restart containerd.",
            "让 containerd 使用 hosts 目录（只写一个目录：containerd 2.1 在列出多个目录时会忽略镜像），然后重启 containerd。",
        ),
        config_path,
    );
    for name in names {
        snippet(
            out,
            lang,
            &format!("containerd: /etc/containerd/certs.d/{name}/hosts.toml"),
            "",
            &host_block(Some(name)),
        );
    }
    snippet(
        out,
        lang,
        "containerd: /etc/containerd/certs.d/_default/hosts.toml",
        tr(
            lang,
            "Sends every registry through this mirror (it tells the mirror which registry with ?ns=).",
            "所有仓库都经由此镜像（containerd 以 ?ns= 告知镜像目标仓库）。",
        ),
        &host_block(None),
    );

    // k3s / RKE2.
    let mut k3s = String::from("mirrors:\n");
    for name in names {
        let _ = write!(k3s, "  {name}:\n    endpoint:\n      - \"{url}\"\n");
    }
    if insecure {
        let _ = write!(
            k3s,
            "configs:\n  \"{host}\":\n    tls:\n      insecure_skip_verify: true\n"
        );
    }
    snippet(
        out,
        lang,
        "k3s / RKE2: /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)",
        "",
        &k3s,
    );

    // Podman / CRI-O: the registry name as the first path component.
    let mut podman = String::new();
    for name in names {
        let _ = write!(
            podman,
            "[[registry]]\nprefix = \"{name}\"\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{host}/{name}\"\n"
        );
        if insecure {
            podman.push_str("insecure = true\n");
        }
        podman.push('\n');
    }
    snippet(
        out,
        lang,
        "Podman / CRI-O: /etc/containers/registries.conf",
        "",
        podman.trim_end(),
    );

    // Direct pulls: the default upstream by bare name, every registry by
    // its name as a path prefix.
    let mut pulls = format!("docker pull {host}/library/nginx:latest\n");
    for name in names {
        let example = if name == "docker.io" {
            "library/nginx:latest"
        } else {
            "<repository>:<tag>"
        };
        let _ = writeln!(pulls, "docker pull {host}/{name}/{example}");
    }
    let kubeadm = format!("kubeadm init --image-repository {host}/registry.k8s.io\n");
    snippet(
        out,
        lang,
        tr(lang, "Pull directly through the mirror", "直接通过镜像拉取"),
        &format!(
            "{} {hub}{}",
            tr(
                lang,
                "A name without a registry goes to",
                "不带仓库名的镜像默认转发到"
            ),
            if insecure {
                tr(
                    lang,
                    ". Plain HTTP: add the host to insecure-registries first.",
                    "。HTTP 地址需先加入 insecure-registries。",
                )
            } else {
                ""
            }
        ),
        &pulls,
    );
    if names.iter().any(|n| n == "registry.k8s.io") {
        snippet(out, lang, "kubeadm", "", &kubeadm);
    }
    out.push_str("</section>");
}

fn repositories_section(
    out: &mut String,
    lang: Lang,
    at: &Address,
    names: &[String],
    rows: &[TagRow],
) {
    let _ = write!(
        out,
        "<section id=\"repositories\"><h2>{}</h2>",
        tr(lang, "Cached repositories", "已缓存的仓库")
    );
    if rows.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">{}</p></section>",
            tr(lang, "Nothing cached yet.", "暂无缓存。")
        );
        return;
    }
    let _ = write!(
        out,
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        tr(lang, "repository", "仓库"),
        tr(lang, "tag", "标签"),
        tr(lang, "size", "大小"),
        tr(lang, "pull command", "拉取命令"),
    );
    let default = names.first().map(String::as_str);
    for r in rows {
        // Hub's `library/` and the default upstream need no prefix.
        let name = if Some(r.upstream.as_str()) == default {
            r.repository.clone()
        } else {
            format!("{}/{}", r.upstream, r.repository)
        };
        let pull = format!("docker pull {}/{name}:{}", at.host, r.tag);
        let _ = write!(
            out,
            "<tr><td><code>{}/{}</code></td><td><code>{}</code></td><td>{}</td><td><code class=\"pull\">{}</code></td></tr>",
            esc(&r.upstream),
            esc(&r.repository),
            esc(&r.tag),
            esc(&human_bytes(r.size)),
            esc(&pull)
        );
    }
    out.push_str("</tbody></table></section>");
}

/// HTML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid test header"));
        }
        h
    }

    #[test]
    fn language_by_accept_language_and_switch() {
        let zh = headers(&[("accept-language", "zh-CN,zh;q=0.9,en;q=0.8")]);
        assert!(language(&zh, None) == Lang::Zh);
        assert!(language(&zh, Some("lang=en")) == Lang::En);
        let en = headers(&[("accept-language", "fr, en;q=0.5, zh;q=0.4")]);
        assert!(language(&en, None) == Lang::En);
        assert!(language(&HeaderMap::new(), None) == Lang::En);
        assert!(language(&HeaderMap::new(), Some("lang=zh")) == Lang::Zh);
    }

    #[test]
    fn authority_rejects_markup() {
        assert!(is_authority("mirror.example.com:5000"));
        assert!(is_authority("[::1]:5000"));
        assert!(!is_authority("evil.com/\"><script>"));
        assert!(!is_authority("a b"));
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
