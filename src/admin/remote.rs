//! `cache stats|ls` against a running mirror: its admin API, at the
//! address it left in the cache directory (`address`), with the read
//! token it left beside it.

use super::address;
use super::{AdminError, Stats, TagRow};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The part of `/api/v1/status` that `cache stats` prints.
#[derive(Deserialize)]
struct Status {
    cache: Stats,
}

pub fn stats(dir: &Path) -> Result<Stats, AdminError> {
    get::<Status>(dir, "/api/v1/status").map(|s| s.cache)
}

pub fn list(dir: &Path, repo: Option<&str>) -> Result<Vec<TagRow>, AdminError> {
    let Some(repo) = repo else {
        return get(dir, "/api/v1/cache/tags");
    };
    // A repository with nothing cached is an empty list here, as offline.
    match get(dir, &format!("/api/v1/cache/repositories/{repo}/tags")) {
        Err(AdminError::Remote { status: 404, .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// `cache check` on the running mirror: `images` and `platforms` as the
/// command line gave them.
pub fn check(
    dir: &Path,
    images: &[String],
    platforms: &[String],
) -> Result<Vec<crate::warm::CheckReport>, AdminError> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for image in images {
        query.append_pair("image", image);
    }
    for platform in platforms {
        query.append_pair("platform", platform);
    }
    get(dir, &format!("/api/v1/check?{}", query.finish()))
}

fn get<T: DeserializeOwned>(dir: &Path, path: &str) -> Result<T, AdminError> {
    let unreachable = |reason: String| AdminError::Unreachable {
        dir: dir.display().to_string(),
        reason,
    };
    let at = address::read(dir)
        .ok_or_else(|| unreachable(format!("it left no readable {}", address::FILE_NAME)))?;
    let url = format!("{}{path}", at.url);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    runtime.block_on(async {
        // The address is loopback, written by the process that holds the
        // cache; its certificate names the mirror's public host, not that.
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let response = client
            .get(&url)
            .bearer_auth(&at.read_token)
            .send()
            .await
            .map_err(|e| unreachable(format!("{}: {}", at.url, e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(AdminError::Remote {
                url: at.url.clone(),
                status: status.as_u16(),
                hint: if status == http::StatusCode::UNAUTHORIZED {
                    " (its read token did not match: is the address file from another run?)"
                } else {
                    ""
                },
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(format!("{}: {}", at.url, e.without_url())))?;
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("{}: {e}", at.url)))
    })
}
