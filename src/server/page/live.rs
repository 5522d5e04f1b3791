//! The page's live part: the status figures (since start and over the
//! last hour), upstream health, downloads in flight, recent pulls and the
//! most pulled repositories. Rendered here for the page and for
//! `/ui/live`, which the page's script fetches to refresh it, so there is
//! one rendering and the script carries no copy of it.

use super::{esc, muted, stat, table_start, tr, Lang};
use crate::admin::human_bytes;
use crate::server::activity::Pull;
use crate::server::api;
use std::fmt::Write as _;

/// What the live part shows, gathered by the caller.
pub struct Live<'a> {
    pub status: Option<&'a api::Status>,
    pub names: &'a [String],
    pub downloads: &'a [crate::fetch::DownloadView],
    pub pulls: &'a api::Pulls,
    pub warm: &'a [api::WarmSetStatus],
}

pub fn render(out: &mut String, lang: Lang, live: &Live<'_>) {
    status_figures(out, lang, live.status);
    upstreams(out, lang, live.status, live.names);
    downloads(out, lang, live.downloads);
    warm_sets(out, lang, live.warm);
    pulls(out, lang, &live.pulls.recent);
    top(out, lang, live.pulls);
}

fn status_figures(out: &mut String, lang: Lang, s: Option<&api::Status>) {
    out.push_str("<div class=\"grid\">");
    let n = |f: &dyn Fn(&api::Status) -> u64| s.map_or("-".to_owned(), |s| f(s).to_string());
    let used = s.map_or("-".to_owned(), |s| match s.cache.max_size {
        Some(max) => format!("{} / {}", human_bytes(s.cache.bytes), human_bytes(max)),
        None => human_bytes(s.cache.bytes),
    });
    let budget = s.and_then(|s| s.cache.max_size.map(|m| (s.cache.bytes.min(m), m)));
    let _ = write!(
        out,
        "<div class=\"stat\"><b id=\"st-bytes\">{}</b><span>{}</span>",
        esc(&used),
        tr(lang, "cache used", "缓存占用")
    );
    if let Some((used, max)) = budget {
        let _ = write!(
            out,
            "<progress id=\"st-bar\" value=\"{used}\" max=\"{max}\"></progress>"
        );
    }
    out.push_str("</div>");
    type Count = fn(&api::Status) -> u64;
    let counts: [(&str, Count, &str, &str); 10] = [
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
        (
            "st-hour-hits",
            |s| s.last_hour.hits,
            "hits, last hour",
            "近一小时命中",
        ),
        (
            "st-hour-misses",
            |s| s.last_hour.misses,
            "misses, last hour",
            "近一小时未命中",
        ),
        (
            "st-downloads",
            |s| s.downloads_in_flight,
            "downloads in flight",
            "正在下载",
        ),
        (
            "st-uptime",
            |s| s.uptime_seconds / 60,
            "minutes up",
            "运行分钟数",
        ),
    ];
    for (id, count, en, zh) in counts {
        stat(out, id, &n(&count), tr(lang, en, zh));
    }
    let ratio = |hits: u64, misses: u64| {
        if hits + misses == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", hits as f64 * 100.0 / (hits + misses) as f64)
        }
    };
    let (all, hour) = s.map_or(("-".to_owned(), "-".to_owned()), |s| {
        (
            ratio(s.lookups.hits, s.lookups.misses),
            ratio(s.last_hour.hits, s.last_hour.misses),
        )
    });
    stat(out, "st-ratio", &all, tr(lang, "hit ratio", "命中率"));
    stat(
        out,
        "st-hour-ratio",
        &hour,
        tr(lang, "hit ratio, last hour", "近一小时命中率"),
    );
    let bytes = |f: &dyn Fn(&api::Status) -> u64| s.map_or("-".to_owned(), |s| human_bytes(f(s)));
    let amounts: [(&str, Count, &str, &str); 4] = [
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
        (
            "st-hour-from-cache",
            |s| s.last_hour.bytes_from_cache,
            "from cache, last hour",
            "近一小时从缓存提供",
        ),
        (
            "st-hour-from-upstream",
            |s| s.last_hour.bytes_from_upstream,
            "from upstream, last hour",
            "近一小时从上游拉取",
        ),
    ];
    for (id, amount, en, zh) in amounts {
        stat(out, id, &bytes(&amount), tr(lang, en, zh));
    }
    out.push_str("</div>");
}

fn upstreams(out: &mut String, lang: Lang, s: Option<&api::Status>, names: &[String]) {
    let _ = write!(out, "<h3>{}</h3>", tr(lang, "Upstreams", "上游仓库"));
    table_start(
        out,
        None,
        &[
            tr(lang, "registry", "仓库"),
            tr(lang, "state", "状态"),
            tr(lang, "rate limit remaining", "剩余拉取配额"),
            tr(lang, "last error", "最近错误"),
        ],
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
        let error = u
            .and_then(|u| u.last_error.as_ref())
            .map_or("-".to_owned(), |e| {
                format!("{} ({})", e.message, time_of(e.time))
            });
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td id=\"up-{i}\" class=\"{}\">{}</td><td id=\"up-rl-{i}\">{}</td><td id=\"up-err-{i}\">{}</td></tr>",
            esc(name),
            if is_open { "bad" } else { "ok" },
            if is_open { open } else { ok },
            esc(&rl),
            esc(&error)
        );
    }
    out.push_str("</tbody></table>");
}

fn warm_sets(out: &mut String, lang: Lang, sets: &[api::WarmSetStatus]) {
    if sets.is_empty() {
        return;
    }
    let _ = write!(out, "<h3>{}</h3>", tr(lang, "Warm sets", "预热集合"));
    table_start(
        out,
        None,
        &[
            tr(lang, "set", "集合"),
            tr(lang, "images", "镜像"),
            tr(lang, "ready", "就绪"),
            tr(lang, "pinned", "固定"),
            tr(lang, "last refresh", "最近刷新"),
        ],
    );
    for (i, s) in sets.iter().enumerate() {
        let all_ready = s.ready as usize == s.images.len();
        let pinned = if s.pin {
            human_bytes(s.pinned_bytes)
        } else {
            "-".to_owned()
        };
        let refreshed = s.last_refresh.map_or("-".to_owned(), time_of);
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td id=\"warm-{i}\" class=\"{}\">{} / {}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.images.join(", ")),
            if all_ready { "ok" } else { "bad" },
            s.ready,
            s.images.len(),
            esc(&pinned),
            esc(&refreshed)
        );
    }
    out.push_str("</tbody></table>");
}

fn downloads(out: &mut String, lang: Lang, downloads: &[crate::fetch::DownloadView]) {
    let _ = write!(
        out,
        "<h3>{}</h3>",
        tr(lang, "Downloads in flight", "正在下载")
    );
    if downloads.is_empty() {
        muted(
            out,
            Some("dl-none"),
            tr(lang, "None right now.", "当前没有。"),
        );
        return;
    }
    table_start(
        out,
        Some("downloads"),
        &[
            tr(lang, "repository", "仓库"),
            tr(lang, "blob", "镜像层"),
            tr(lang, "progress", "进度"),
        ],
    );
    for d in downloads {
        let repo = match (&d.upstream, &d.repository) {
            (Some(u), Some(r)) => format!("{u}/{r}"),
            _ => tr(lang, "(waiting for a download slot)", "（等待下载名额）").to_owned(),
        };
        let hex = d.digest.hex();
        let short = &hex[..hex.len().min(12)];
        let (bar, text) = match d.total {
            Some(total) => (
                format!(
                    "<progress value=\"{}\" max=\"{total}\"></progress> ",
                    d.written.min(total)
                ),
                format!("{} / {}", human_bytes(d.written), human_bytes(total)),
            ),
            None => (String::new(), human_bytes(d.written)),
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td><code title=\"{}\">{}</code></td><td>{bar}<span class=\"dl-bytes\" data-bytes=\"{}\">{}</span></td></tr>",
            esc(&repo),
            esc(&d.digest.to_string()),
            esc(short),
            d.written,
            esc(&text)
        );
    }
    out.push_str("</tbody></table>");
}

/// A client's address as the open page shows it: its network, not the
/// machine (`10.1.2.x`, `2001:db8:1::/48`); the API, behind `admin_read`,
/// has it whole.
fn masked(client: std::net::IpAddr) -> String {
    match client {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.x")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn pulls(out: &mut String, lang: Lang, recent: &[Pull]) {
    let _ = write!(out, "<h3>{}</h3>", tr(lang, "Recent pulls", "最近拉取"));
    if recent.is_empty() {
        muted(out, None, tr(lang, "No pulls yet.", "暂无拉取。"));
        return;
    }
    table_start(
        out,
        Some("pulls"),
        &[
            tr(lang, "image", "镜像"),
            tr(lang, "client", "客户端"),
            tr(lang, "cache", "缓存"),
            tr(lang, "time (UTC)", "时间（UTC）"),
        ],
    );
    for p in recent {
        let class = match p.result {
            "error" => "bad",
            "hit" | "revalidated" | "stale" => "ok",
            _ => "",
        };
        let _ = write!(
            out,
            "<tr><td><code>{}/{}:{}</code></td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            esc(&p.upstream),
            esc(&p.repository),
            esc(&p.tag),
            esc(&masked(p.client)),
            esc(p.result),
            time_of(p.time)
        );
    }
    out.push_str("</tbody></table>");
}

fn top(out: &mut String, lang: Lang, pulls: &api::Pulls) {
    if pulls.top_repositories.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h3>{}</h3>",
        tr(
            lang,
            "Top repositories (since start)",
            "热门仓库（自启动以来）"
        )
    );
    table_start(
        out,
        Some("top"),
        &[
            tr(lang, "repository", "仓库"),
            tr(lang, "pulls", "拉取次数"),
        ],
    );
    for t in &pulls.top_repositories {
        let _ = write!(
            out,
            "<tr><td><code>{}/{}</code></td><td>{}</td></tr>",
            esc(&t.upstream),
            esc(&t.repository),
            t.pulls
        );
    }
    out.push_str("</tbody></table>");
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), without a date library.
fn time_of(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = crate::utc::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{masked, time_of};

    #[test]
    fn the_page_shows_client_networks_not_machines() {
        let ip = |s: &str| s.parse().expect("an address");
        assert_eq!(masked(ip("10.1.2.3")), "10.1.2.x");
        assert_eq!(masked(ip("2001:db8:1:2::5")), "2001:db8:1::/48");
    }

    #[test]
    fn unix_times_in_utc() {
        assert_eq!(time_of(0), "1970-01-01 00:00:00");
        assert_eq!(time_of(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(time_of(1_796_083_200 + 3661), "2026-12-01 01:01:01");
    }
}
