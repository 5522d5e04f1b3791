//! Docker Hub's search API (`/v1/search`), which lives on the index host
//! rather than the registry's: the one upstream call outside `/v2/`.

use super::{expect_success, read_limited, Upstream, UpstreamError};
use bytes::Bytes;
use url::Url;

/// Search answers are a page of names and descriptions; more is no answer.
const MAX_SEARCH_BYTES: usize = 1024 * 1024;

impl Upstream {
    /// Whether this upstream has a search API (Docker Hub's).
    pub fn has_search(&self) -> bool {
        self.settings.name == "docker.io"
    }

    /// One page of search results, as the upstream's JSON. Anonymous, and
    /// outside the circuit breaker: the index host failing says nothing
    /// about the registry's.
    pub async fn search(&self, term: &str, n: u32, page: u32) -> Result<Bytes, UpstreamError> {
        let mut url = search_url(&self.settings.url)?;
        url.query_pairs_mut()
            .append_pair("q", term)
            .append_pair("n", &n.to_string())
            .append_pair("page", &page.to_string());
        let resp = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        let bytes = read_limited(expect_success(resp)?, MAX_SEARCH_BYTES).await?;
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
            return Err(UpstreamError::Protocol("search answer is not JSON".into()));
        }
        Ok(bytes)
    }
}

/// Docker Hub's registry host has no search; its index host does. Any
/// other URL (a stand-in, a mirror of Hub) is asked at its own `/v1/search`.
fn search_url(registry: &Url) -> Result<Url, UpstreamError> {
    let on_hub = matches!(
        registry.host_str(),
        Some("registry-1.docker.io" | "docker.io" | "index.docker.io")
    );
    let url = if on_hub {
        Url::parse("https://index.docker.io/v1/search")
    } else {
        registry.join("/v1/search")
    };
    url.map_err(|e| UpstreamError::Protocol(format!("cannot build the search URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_searches_on_its_index_host() {
        let hub = Url::parse("https://registry-1.docker.io").expect("url");
        assert_eq!(
            search_url(&hub).expect("url").as_str(),
            "https://index.docker.io/v1/search"
        );
        let other = Url::parse("http://127.0.0.1:5000/").expect("url");
        assert_eq!(
            search_url(&other).expect("url").as_str(),
            "http://127.0.0.1:5000/v1/search"
        );
    }
}
