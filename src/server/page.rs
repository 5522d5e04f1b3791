//! The page at `/`: status, "use this mirror" snippets, image search and
//! the cached repositories, rendered here (so it is complete without
//! script, and a test or `curl` sees the snippets) in English or
//! Simplified Chinese. One small script (`/ui/app.js`) adds copy buttons
//! and refreshes the live part from `/ui/live`; it and the stylesheet are
//! served as separate embedded paths so the Content-Security-Policy needs
//! no inline code at all.

mod find;
mod live;

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
/// no plugins; the one form (search) comes back here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

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
    let rows = api::tags(app, None).await.unwrap_or_default();
    let names = upstream_names(app);
    let mut body = String::new();
    let _ = write!(
        body,
        "<section id=\"status\"><h2>{}</h2><div id=\"live\" data-lang=\"{}\">",
        tr(lang, "Status", "状态"),
        tr(lang, "en", "zh")
    );
    live_part(app, lang, &names, &mut body).await;
    let _ = write!(
        body,
        "</div><p class=\"muted\">{} <span id=\"st-updated\">-</span></p></section>",
        tr(lang, "Updated:", "更新时间：")
    );
    find::section(app, &mut body, lang, at, &names, &rows, query).await;
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

fn upstream_names(app: &App) -> Vec<String> {
    app.upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect()
}

async fn live_part(app: &App, lang: Lang, names: &[String], out: &mut String) {
    // The page still renders (with what it can say) if the index cannot
    // be read; the API reports the error itself.
    let status = api::status(app).await.ok();
    let downloads = app.core.downloads();
    let pulls = api::pulls(app);
    let warm = api::warm_sets(app);
    let live = live::Live {
        status: status.as_ref(),
        names,
        downloads: &downloads,
        pulls: &pulls,
        warm: &warm,
    };
    live::render(out, lang, &live);
}

/// `/ui/live`: the page's live part alone, in the page's language, for
/// its script to put in place.
pub async fn live(app: &App, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
    let lang = language(headers, query);
    let mut html = String::new();
    live_part(app, lang, &upstream_names(app), &mut html).await;
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
    for r in rows {
        let pull = pull_command(at, names, &r.upstream, &r.repository, Some(&r.tag));
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

/// `docker pull` through this mirror: the default upstream needs no
/// prefix, the others go by their name as the first path component.
fn pull_command(
    at: &Address,
    names: &[String],
    upstream: &str,
    repository: &str,
    tag: Option<&str>,
) -> String {
    let name = if names.first().map(String::as_str) == Some(upstream) {
        repository.to_owned()
    } else {
        format!("{upstream}/{repository}")
    };
    match tag {
        Some(tag) => format!("docker pull {}/{name}:{tag}", at.host),
        None => format!("docker pull {}/{name}", at.host),
    }
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
