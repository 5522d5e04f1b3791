//! The page's "Find an image" section: a search box (a plain GET form back
//! to the page, so it works without script), Docker Hub's results through
//! the mirror and the cached repositories that match, each with the tags
//! the mirror has and the pull command.

use super::{esc, pull_command, tr, Address, Lang};
use crate::admin::TagRow;
use crate::server::search::{self, SearchQuery};
use crate::server::App;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub async fn section(
    app: &App,
    out: &mut String,
    lang: Lang,
    at: &Address,
    names: &[String],
    rows: &[TagRow],
    query: Option<&str>,
) {
    let asked = SearchQuery::parse(query).ok();
    let term = asked.as_ref().map_or("", |a| a.term.as_str());
    let _ = write!(
        out,
        "<section id=\"find\"><h2>{}</h2><form method=\"get\" action=\"/\" role=\"search\">\
<input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"{}\" maxlength=\"255\">\
<input type=\"hidden\" name=\"lang\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        tr(lang, "Find an image", "查找镜像"),
        esc(term),
        tr(lang, "e.g. nginx", "例如 nginx"),
        tr(lang, "en", "zh"),
        tr(lang, "Search", "搜索"),
    );
    let Some(asked) = asked else {
        out.push_str("</section>");
        return;
    };
    cached_matches(out, lang, at, names, rows, &asked.term);
    hub_results(app, out, lang, at, names, rows, &asked).await;
    out.push_str("</section>");
}

/// Tags the mirror has for one repository of one upstream.
fn cached_tags<'a>(rows: &'a [TagRow], upstream: &str, repository: &str) -> Vec<&'a str> {
    rows.iter()
        .filter(|r| r.upstream == upstream && r.repository == repository)
        .map(|r| r.tag.as_str())
        .collect()
}

fn cached_matches(
    out: &mut String,
    lang: Lang,
    at: &Address,
    names: &[String],
    rows: &[TagRow],
    term: &str,
) {
    let needle = term.to_lowercase();
    let mut found: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.repository.contains(&needle)) {
        found
            .entry((&r.upstream, &r.repository))
            .or_default()
            .push(&r.tag);
    }
    let _ = write!(
        out,
        "<h3>{}</h3>",
        tr(lang, "In this mirror's cache", "本镜像已缓存")
    );
    if found.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">{}</p>",
            tr(
                lang,
                "No cached repository matches.",
                "没有匹配的已缓存仓库。"
            )
        );
        return;
    }
    out.push_str("<ul class=\"results\" id=\"cached-results\">");
    for ((upstream, repository), tags) in found {
        let _ = write!(
            out,
            "<li><code>{}/{}</code>",
            esc(upstream),
            esc(repository)
        );
        pulls_for(out, at, names, upstream, repository, &tags);
        out.push_str("</li>");
    }
    out.push_str("</ul>");
}

fn pulls_for(
    out: &mut String,
    at: &Address,
    names: &[String],
    upstream: &str,
    repository: &str,
    tags: &[&str],
) {
    out.push_str("<div class=\"pulls\">");
    if tags.is_empty() {
        let pull = pull_command(at, names, upstream, repository, None);
        let _ = write!(out, "<code class=\"pull\">{}</code>", esc(&pull));
    }
    for tag in tags {
        let pull = pull_command(at, names, upstream, repository, Some(tag));
        let _ = write!(out, "<code class=\"pull\">{}</code>", esc(&pull));
    }
    out.push_str("</div>");
}

async fn hub_results(
    app: &App,
    out: &mut String,
    lang: Lang,
    at: &Address,
    names: &[String],
    rows: &[TagRow],
    asked: &SearchQuery,
) {
    if !names.iter().any(|n| n == "docker.io") {
        return;
    }
    let _ = write!(
        out,
        "<h3>{}</h3>",
        tr(lang, "On Docker Hub", "Docker Hub 上")
    );
    let hits = match search::find(app, asked).await {
        Ok(hits) => hits,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"bad\">{} {}</p>",
                tr(lang, "Search failed:", "搜索失败："),
                esc(&e.to_string())
            );
            return;
        }
    };
    if hits.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">{}</p>",
            tr(lang, "No results.", "没有结果。")
        );
        return;
    }
    out.push_str("<ul class=\"results\" id=\"hub-results\">");
    for hit in &hits {
        // Hub's search names official images without `library/`; the
        // cache keeps them with it.
        let repository = if hit.name.contains('/') {
            hit.name.clone()
        } else {
            format!("library/{}", hit.name)
        };
        let _ = write!(out, "<li><code>{}</code>", esc(&hit.name));
        if hit.is_official {
            let _ = write!(
                out,
                " <span class=\"ok\">{}</span>",
                tr(lang, "official", "官方")
            );
        }
        let _ = write!(out, " <span class=\"muted\">★ {}</span>", hit.star_count);
        if let Some(d) = hit.description.as_deref().filter(|d| !d.is_empty()) {
            let _ = write!(out, "<div class=\"note\">{}</div>", esc(d));
        }
        let tags = cached_tags(rows, "docker.io", &repository);
        if !tags.is_empty() {
            let _ = write!(
                out,
                "<div class=\"note\">{} {}</div>",
                tr(lang, "cached tags:", "已缓存标签："),
                esc(&tags.join(", "))
            );
        }
        let display = if hit.name.contains('/') {
            &repository
        } else {
            &hit.name
        };
        pulls_for(out, at, names, "docker.io", display, &tags);
        let _ = write!(
            out,
            "<div class=\"note\"><a href=\"/v2/{}/tags/list?ns=docker.io&amp;n=100\">{}</a></div></li>",
            esc(&repository),
            tr(lang, "all tags (upstream)", "全部标签（上游）")
        );
    }
    out.push_str("</ul>");
}
