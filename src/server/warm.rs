//! Warming from the server's side: image names routed to upstreams as a
//! pull's would be, the admin API's warm action (`POST /api/v1/warm`,
//! streamed as one JSON object per line so a long warm keeps its
//! connection busy and shows progress), the `[[warm]]` sets started with
//! the mirror, and the offline `warm --cache-dir` and `cache check`.

use super::body::Body;
use super::error::ApiError;
use super::select::select;
use super::{App, StartError};
use crate::config::Config;
use crate::fetch::{PullThrough, Target};
use crate::metrics::Metrics;
use crate::oci::{ImageRef, Platforms, RepoName};
use crate::upstream::Upstreams;
use crate::warm::{CheckReport, ImageReport, WarmHost, Warmer};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use std::sync::Arc;

/// The upstream and repository an image name means: the routing of a
/// path-prefixed pull (`ghcr.io/owner/app` → the upstream named
/// `ghcr.io`; a bare name → the default upstream), with its policy.
pub(super) fn target_for(upstreams: &Upstreams, name: &RepoName) -> Result<Target, String> {
    let selected = select(upstreams, None, None, Some(name)).map_err(|e| e.to_string())?;
    selected
        .target()
        .ok_or_else(|| "names no repository".to_owned())
}

/// The upstream's name and the repository as that upstream spells it
/// (`library/` on Docker Hub), for looking a name up in the index.
pub(super) fn upstream_repo(upstreams: &Upstreams, name: &RepoName) -> Option<(String, RepoName)> {
    let at = target_for(upstreams, name).ok()?;
    Some((
        at.upstream.name().to_owned(),
        at.upstream.upstream_name(&at.repo),
    ))
}

/// What `gc` must not evict: the pinned sets of `config`, as far as the
/// cache's own manifests tell (no upstream is asked).
pub fn offline_pins(
    config: &Config,
) -> Result<
    impl Fn(&dyn crate::cache::ContentStore, &crate::cache::Index) -> std::collections::HashSet<String>,
    StartError,
> {
    let metrics = Metrics::new();
    let upstreams = super::app::build_upstreams(config, None, &metrics)?;
    let sets = config.warm.clone();
    Ok(
        move |store: &dyn crate::cache::ContentStore, index: &crate::cache::Index| {
            crate::warm::known_pins(store, index, &sets, None, &|name| {
                upstream_repo(&upstreams, name)
            })
            .map(|k| k.digests())
            .unwrap_or_default()
        },
    )
}

impl WarmHost for App {
    fn core(&self) -> &PullThrough {
        &self.core
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn target(&self, name: &RepoName) -> Result<Target, String> {
        target_for(&self.upstreams(), name)
    }
}

/// What a warm request asks: `?image=…` (repeated), `platform=…`
/// (repeated or comma-separated, or `all`), `referrers=true`.
pub struct WarmRequest {
    pub images: Vec<ImageRef>,
    pub platforms: Platforms,
    pub referrers: bool,
}

impl WarmRequest {
    pub fn from_query(query: Option<&str>) -> Result<WarmRequest, ApiError> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let images = pairs
            .iter()
            .filter(|(k, _)| k == "image")
            .map(|(_, v)| v.parse::<ImageRef>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::InvalidImage(e.to_string()))?;
        if images.is_empty() {
            return Err(ApiError::InvalidImage("name at least one image=".into()));
        }
        let platforms = Platforms::parse_list(
            pairs
                .iter()
                .filter(|(k, _)| k == "platform")
                .map(|(_, v)| v.as_str()),
        )
        .map_err(|e| ApiError::InvalidImage(e.to_string()))?;
        let referrers = pairs
            .iter()
            .any(|(k, v)| k == "referrers" && matches!(v.as_str(), "" | "1" | "true"));
        Ok(WarmRequest {
            images,
            platforms,
            referrers,
        })
    }
}

/// One line of a warm's answer.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum WarmEvent<'a> {
    Progress { image: &'a ImageReport },
    Done { image: &'a ImageReport },
}

fn line(event: &WarmEvent<'_>) -> Bytes {
    let mut text = serde_json::to_string(event).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

/// `POST /api/v1/warm`: the warm runs on its own task (a client hanging up
/// does not stop it); the answer streams its progress and each image's
/// report as they come.
pub(super) fn warm_action(app: Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let request = WarmRequest::from_query(query)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let warmer = Warmer {
            core: &app.core,
            reserve: app.warm_reserve,
            poll: app.warm_poll,
            revalidate: false,
        };
        for image in &request.images {
            tracing::info!(image = %image, platforms = %request.platforms, "admin: warm");
            let report = match app.target(&image.name) {
                Ok(at) => {
                    let progress = |r: &ImageReport| {
                        // Progress is best effort: a slow reader skips lines.
                        let _ = tx.try_send(line(&WarmEvent::Progress { image: r }));
                    };
                    warmer
                        .warm(image, &at, &request.platforms, request.referrers, &progress)
                        .await
                }
                Err(e) => ImageReport {
                    image: image.text.clone(),
                    error: Some(e),
                    ..ImageReport::default()
                },
            };
            let _ = tx.send(line(&WarmEvent::Done { image: &report })).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(http_body_util::StreamBody::new(stream.boxed()).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `pullthrough warm --cache-dir`: the cache opened as a mirror would
/// (it must not be in use), the images warmed in turn, the index flushed.
pub async fn warm_offline(
    config: &Config,
    request: &WarmRequest,
    progress: &(dyn Fn(&ImageReport) + Send + Sync),
) -> Result<Vec<ImageReport>, StartError> {
    let app = open_offline(config)?;
    let warmer = Warmer {
        core: &app.core,
        reserve: app.warm_reserve,
        poll: app.warm_poll,
        revalidate: false,
    };
    let mut reports = Vec::new();
    for image in &request.images {
        let report = match app.target(&image.name) {
            Ok(at) => {
                warmer
                    .warm(image, &at, &request.platforms, request.referrers, progress)
                    .await
            }
            Err(e) => ImageReport {
                image: image.text.clone(),
                error: Some(e),
                ..ImageReport::default()
            },
        };
        progress(&report);
        reports.push(report);
    }
    app.core.persist();
    Ok(reports)
}

/// `pullthrough cache check`: whether each image is servable from the
/// cache alone; the upstream is never asked.
pub async fn check_offline(
    config: &Config,
    images: &[ImageRef],
    platforms: &Platforms,
) -> Result<Vec<CheckReport>, StartError> {
    let app = open_offline(config)?;
    Ok(check_images(&app, images, platforms).await)
}

/// `GET /api/v1/check?image=…[&platform=…]`: `cache check` against the
/// running mirror (a read: it looks at the cache only, never upstream).
pub async fn check_answer(app: &App, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let request = WarmRequest::from_query(query)?;
    let reports = check_images(app, &request.images, &request.platforms).await;
    let json = serde_json::to_string(&reports).unwrap_or_default();
    Ok(super::body::json_response(StatusCode::OK, json))
}

async fn check_images(app: &App, images: &[ImageRef], platforms: &Platforms) -> Vec<CheckReport> {
    let warmer = Warmer {
        core: &app.core,
        reserve: app.warm_reserve,
        poll: app.warm_poll,
        revalidate: false,
    };
    let mut reports = Vec::new();
    for image in images {
        let report = match app.target(&image.name) {
            Ok(at) => warmer.check(image, &at, platforms).await,
            Err(e) => CheckReport {
                image: image.text.clone(),
                servable: false,
                digest: None,
                manifests: 0,
                blobs: 0,
                bytes: 0,
                missing: vec![e],
            },
        };
        reports.push(report);
    }
    reports
}

/// The cache as a mirror opens it, minus the warm sets (an offline
/// command runs once and exits).
fn open_offline(config: &Config) -> Result<Arc<App>, StartError> {
    let mut config = config.clone();
    config.warm.clear();
    App::open(&config)
}
