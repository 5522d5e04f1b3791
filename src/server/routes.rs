//! Turns a request path into a typed route; names, references and digests
//! are validated here, before any handler or upstream sees them.

use crate::oci::{Digest, NameError, Reference, RepoName, Tag};

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    TagsList {
        name: RepoName,
    },
    /// `/v2/<name>/referrers/<digest>` (distribution-spec 1.1).
    Referrers {
        name: RepoName,
        digest: Digest,
    },
    Healthz,
    Readyz,
    Metrics,
    /// `/`: the status and usage page.
    Page,
    /// `/ui/live`: the page's live figures, rendered, for its script.
    Live,
    /// `/v1/search?q=`: Docker Hub's search API through the mirror, as
    /// `docker search <mirror>/<term>` asks for it.
    Search,
    /// `/v1/_ping`: what the Docker daemon checks before it searches.
    SearchPing,
    /// The page's script and stylesheet, embedded in the binary.
    Asset(Asset),
    /// The admin API under `/api/v1/`.
    Api(ApiRoute),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Asset {
    Script,
    Style,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ApiRoute {
    Status,
    Upstreams,
    Repositories,
    /// The tags cached for one repository (as the upstream names it, or a
    /// bare Docker Hub name).
    RepositoryTags {
        name: RepoName,
    },
    /// `DELETE`: forget one cached tag.
    Tag {
        name: RepoName,
        tag: Tag,
    },
    /// `DELETE`: remove cached content by digest.
    Digest {
        digest: Digest,
    },
    /// `POST`: add a bundle (an OCI layout tar) to the cache.
    Import,
    /// Every cached tag (what `cache ls` lists).
    AllTags,
    /// Blob downloads in flight, with progress.
    Downloads,
    /// Recent pulls and the most pulled repositories.
    Pulls,
    /// `DELETE`: forget every cached tag of a repository.
    Repository {
        name: RepoName,
    },
    /// `POST`: warm images into the cache (`?image=…&platform=…`).
    Warm,
    /// The configured warm sets and their readiness.
    WarmSets,
    /// Whether images are servable from the cache alone (`cache check`).
    Check,
}

impl ApiRoute {
    /// Actions change the cache and need the admin token.
    pub fn is_action(&self) -> bool {
        matches!(
            self,
            ApiRoute::Tag { .. }
                | ApiRoute::Digest { .. }
                | ApiRoute::Repository { .. }
                | ApiRoute::Import
                | ApiRoute::Warm
        )
    }

    /// The one method an action is taken with.
    pub fn action_method(&self) -> http::Method {
        match self {
            ApiRoute::Import | ApiRoute::Warm => http::Method::POST,
            _ => http::Method::DELETE,
        }
    }
}

impl Route {
    /// The repository a registry route names; `None` for `/v2/` itself,
    /// the operations endpoints, the page and the API.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::TagsList { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::Page
            | Route::Live
            | Route::Search
            | Route::SearchPing
            | Route::Asset(_)
            | Route::Api(_) => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    #[error("invalid repository name: {0}")]
    Name(NameError),
    #[error("invalid manifest reference: {0}")]
    Reference(NameError),
    #[error("invalid digest: {0}")]
    Digest(NameError),
}

pub fn parse(path: &str) -> Result<Route, RouteError> {
    match path {
        "/healthz" => return Ok(Route::Healthz),
        "/readyz" => return Ok(Route::Readyz),
        "/metrics" => return Ok(Route::Metrics),
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/" => return Ok(Route::Page),
        "/ui/app.js" => return Ok(Route::Asset(Asset::Script)),
        "/ui/app.css" => return Ok(Route::Asset(Asset::Style)),
        "/ui/live" => return Ok(Route::Live),
        "/v1/search" => return Ok(Route::Search),
        "/v1/_ping" => return Ok(Route::SearchPing),
        _ => {}
    }
    if let Some(api) = path.strip_prefix("/api/v1/") {
        return parse_api(api).map(Route::Api);
    }
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?;
    // Names contain '/', references and digests never do: split from the
    // right.
    let mut parts = rest.rsplitn(3, '/');
    let (last, kind, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(last), Some(kind), Some(name)) => (last, kind, name),
        _ => return Err(RouteError::NotFound),
    };
    let parse_name = || name.parse::<RepoName>().map_err(RouteError::Name);
    match (kind, last) {
        ("manifests", reference) => {
            let name = parse_name()?;
            let reference = reference.parse().map_err(|e| match e {
                NameError::Digest(_) => RouteError::Digest(e),
                _ => RouteError::Reference(e),
            })?;
            Ok(Route::Manifest { name, reference })
        }
        ("blobs", digest) => {
            let name = parse_name()?;
            let digest = digest
                .parse()
                .map_err(|e| RouteError::Digest(NameError::Digest(e)))?;
            Ok(Route::Blob { name, digest })
        }
        ("referrers", digest) => {
            let name = parse_name()?;
            let digest = digest
                .parse()
                .map_err(|e| RouteError::Digest(NameError::Digest(e)))?;
            Ok(Route::Referrers { name, digest })
        }
        ("tags", "list") => Ok(Route::TagsList {
            name: parse_name()?,
        }),
        _ => Err(RouteError::NotFound),
    }
}

fn parse_api(path: &str) -> Result<ApiRoute, RouteError> {
    match path {
        "status" => return Ok(ApiRoute::Status),
        "upstreams" => return Ok(ApiRoute::Upstreams),
        "cache/repositories" => return Ok(ApiRoute::Repositories),
        "import" => return Ok(ApiRoute::Import),
        "downloads" => return Ok(ApiRoute::Downloads),
        "cache/tags" => return Ok(ApiRoute::AllTags),
        "pulls" => return Ok(ApiRoute::Pulls),
        "warm" => return Ok(ApiRoute::Warm),
        "warm/sets" => return Ok(ApiRoute::WarmSets),
        "check" => return Ok(ApiRoute::Check),
        _ => {}
    }
    if let Some(digest) = path.strip_prefix("cache/digests/") {
        let digest = digest
            .parse()
            .map_err(|e| RouteError::Digest(NameError::Digest(e)))?;
        return Ok(ApiRoute::Digest { digest });
    }
    let rest = path
        .strip_prefix("cache/repositories/")
        .ok_or(RouteError::NotFound)?;
    if let Some(name) = rest.strip_suffix("/tags") {
        let name = name.parse().map_err(RouteError::Name)?;
        return Ok(ApiRoute::RepositoryTags { name });
    }
    // Names contain '/', tags never do: split from the right.
    let Some((name, tag)) = rest.rsplit_once("/tags/") else {
        return Ok(ApiRoute::Repository {
            name: rest.parse().map_err(RouteError::Name)?,
        });
    };
    Ok(ApiRoute::Tag {
        name: name.parse().map_err(RouteError::Name)?,
        tag: tag.parse().map_err(RouteError::Reference)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert!(matches!(
            parse("/v2/library/ubuntu/manifests/latest"),
            Ok(Route::Manifest { ref name, .. }) if name.as_str() == "library/ubuntu"
        ));
        assert!(matches!(
            parse(&format!("/v2/a/b/c/blobs/{D}")),
            Ok(Route::Blob { ref name, .. }) if name.as_str() == "a/b/c"
        ));
        assert!(matches!(
            parse("/v2/a/manifests/manifests/x"),
            Ok(Route::Manifest { ref name, .. }) if name.as_str() == "a/manifests"
        ));
        assert!(matches!(
            parse("/v2/x/tags/list"),
            Ok(Route::TagsList { .. })
        ));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse("/v2/UP/manifests/x"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/../b/manifests/x"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/%2e%2e/manifests/x"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/-bad"),
            Err(RouteError::Reference(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/sha256:zz"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/md5:00"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/latest"),
            Err(RouteError::Digest(_))
        ));
        assert_eq!(parse("/v2/a/blobs/uploads/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a"), Err(RouteError::NotFound));
        assert_eq!(parse("/etc/passwd"), Err(RouteError::NotFound));
    }

    #[test]
    fn api_routes() {
        assert_eq!(parse("/"), Ok(Route::Page));
        assert_eq!(parse("/api/v1/status"), Ok(Route::Api(ApiRoute::Status)));
        assert_eq!(
            parse("/api/v1/cache/repositories"),
            Ok(Route::Api(ApiRoute::Repositories))
        );
        assert!(matches!(
            parse("/api/v1/cache/repositories/library/nginx/tags"),
            Ok(Route::Api(ApiRoute::RepositoryTags { ref name })) if name.as_str() == "library/nginx"
        ));
        assert!(matches!(
            parse("/api/v1/cache/repositories/../x/tags"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/api/v1/cache/repositories/a/b/tags/v1"),
            Ok(Route::Api(ApiRoute::Tag { ref name, ref tag }))
                if name.as_str() == "a/b" && tag.as_str() == "v1"
        ));
        assert!(matches!(
            parse(&format!("/api/v1/cache/digests/{D}")),
            Ok(Route::Api(ApiRoute::Digest { .. }))
        ));
        assert!(matches!(
            parse("/api/v1/cache/digests/nope"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(
            parse("/api/v1/cache/repositories/library/app"),
            Ok(Route::Api(ApiRoute::Repository { ref name })) if name.as_str() == "library/app"
        ));
        assert_eq!(
            parse("/api/v1/downloads"),
            Ok(Route::Api(ApiRoute::Downloads))
        );
        assert_eq!(parse("/v1/search"), Ok(Route::Search));
        assert_eq!(parse("/api/v1/warm"), Ok(Route::Api(ApiRoute::Warm)));
        assert_eq!(parse("/api/v1/nope"), Err(RouteError::NotFound));
        assert_eq!(parse("/api/v2/status"), Err(RouteError::NotFound));
    }
}
