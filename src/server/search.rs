//! `GET /v1/search?q=`: the Docker Hub search API answered through the
//! mirror, so `docker search <mirror>/<term>` and the page's search box
//! work where Docker Hub itself cannot be reached; and `/v1/_ping`, which
//! the Docker daemon asks before it searches a registry. Answers are kept
//! a minute, and concurrent identical searches share one upstream request:
//! Hub limits its search API, and the page's box must not become a way to
//! spend that limit.

use super::body::{self, Body};
use super::error::{ApiError, Origin, Subject};
use super::App;
use crate::fetch::FetchError;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Deserialize;

/// Docker's own default page size, and Hub's largest.
const DEFAULT_PAGE_SIZE: u32 = 25;
const MAX_PAGE_SIZE: u32 = 100;
const MAX_TERM_LEN: usize = 255;
const KEEP_ANSWERS: std::time::Duration = std::time::Duration::from_secs(60);

/// Recent upstream answers by (term, page size, page).
pub struct SearchCache(moka::future::Cache<(String, u32, u32), bytes::Bytes>);

impl Default for SearchCache {
    fn default() -> Self {
        SearchCache(
            moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(KEEP_ANSWERS)
                .build(),
        )
    }
}

/// A search as asked: `q` (the term), `n` (page size), `page`.
#[derive(Debug, PartialEq, Eq)]
pub struct SearchQuery {
    pub term: String,
    pub n: u32,
    pub page: u32,
}

impl SearchQuery {
    pub fn parse(query: Option<&str>) -> Result<SearchQuery, ApiError> {
        let mut asked = SearchQuery {
            term: String::new(),
            n: DEFAULT_PAGE_SIZE,
            page: 1,
        };
        let number = |v: &str| v.parse::<u32>().map_err(|_| ApiError::SearchQuery);
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "q" => asked.term = v.trim().to_owned(),
                "n" => asked.n = number(&v)?.clamp(1, MAX_PAGE_SIZE),
                "page" => asked.page = number(&v)?.max(1),
                _ => {}
            }
        }
        if asked.term.is_empty()
            || asked.term.len() > MAX_TERM_LEN
            || asked.term.chars().any(char::is_control)
        {
            return Err(ApiError::SearchQuery);
        }
        Ok(asked)
    }
}

/// One result as Docker Hub's search API gives it.
#[derive(Debug, Deserialize)]
pub struct SearchHit {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub star_count: u64,
    #[serde(default)]
    pub is_official: bool,
}

#[derive(Deserialize)]
struct SearchPage {
    #[serde(default)]
    results: Vec<SearchHit>,
}

/// The upstream's JSON, byte for byte (what the Docker CLI expects).
async fn upstream_page(app: &App, asked: &SearchQuery) -> Result<bytes::Bytes, ApiError> {
    let upstreams = app.upstreams();
    let hub = upstreams
        .iter()
        .find(|u| u.has_search())
        .ok_or(ApiError::SearchUnsupported)?;
    let key = (asked.term.to_lowercase(), asked.n, asked.page);
    app.searches
        .0
        .try_get_with(key, hub.search(&asked.term, asked.n, asked.page))
        .await
        .map_err(|e| ApiError::Fetch {
            source: FetchError::Upstream((*e).clone()),
            subject: Subject::Repository,
            origin: Some(Origin {
                registry: hub.name().to_owned(),
                pull_limit_used_up: false,
            }),
        })
}

pub async fn answer(app: &App, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let asked = SearchQuery::parse(query)?;
    let bytes = upstream_page(app, &asked).await?;
    let mut resp = Response::new(body::full(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The results for the page.
pub async fn find(app: &App, asked: &SearchQuery) -> Result<Vec<SearchHit>, ApiError> {
    let bytes = upstream_page(app, asked).await?;
    serde_json::from_slice::<SearchPage>(&bytes)
        .map(|p| p.results)
        .map_err(|_| ApiError::Fetch {
            source: FetchError::Upstream(crate::upstream::UpstreamError::Protocol(
                "search answer without results".into(),
            )),
            subject: Subject::Repository,
            origin: None,
        })
}

/// The Docker daemon pings a registry's v1 API before searching it.
pub fn ping() -> Response<Body> {
    body::json_response(StatusCode::OK, "true".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_queries() {
        let q = SearchQuery::parse(Some("q=nginx&n=500&page=0")).expect("valid");
        assert_eq!(
            q,
            SearchQuery {
                term: "nginx".into(),
                n: MAX_PAGE_SIZE,
                page: 1
            }
        );
        assert!(SearchQuery::parse(None).is_err());
        assert!(SearchQuery::parse(Some("q=")).is_err());
        assert!(SearchQuery::parse(Some("q=a&n=x")).is_err());
        assert!(SearchQuery::parse(Some("q=a%0Ab")).is_err());
    }
}
