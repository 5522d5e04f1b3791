//! Which upstream a request means, and whether that upstream's policy lets
//! the repository through. In this order: the request's host name (`Host`,
//! or the HTTP/2 authority) matching an upstream's `hosts`, containerd's
//! `?ns=`, a registry name as the first path component as Podman and CRI-O
//! send it, else the default upstream. Docker Hub's `library/` rule is the
//! upstream's own naming, applied after any prefix is stripped.

use super::error::ApiError;
use crate::fetch::Target;
use crate::oci::RepoName;
use crate::upstream::{Upstream, Upstreams};
use std::sync::Arc;

pub struct Selected<'a> {
    pub upstream: &'a Arc<Upstream>,
    /// The repository name with any registry prefix removed.
    pub name: Option<RepoName>,
    /// The `ns` the client sent, echoed as `OCI-Namespace`.
    pub ns: Option<String>,
}

impl Selected<'_> {
    /// What the core needs to fetch for a repository route.
    pub fn target(&self) -> Option<Target> {
        Some(Target {
            upstream: Arc::clone(self.upstream),
            repo: self.name.clone()?,
        })
    }
}

pub fn select<'a>(
    upstreams: &'a Upstreams,
    host: Option<&str>,
    query: Option<&str>,
    name: Option<&RepoName>,
) -> Result<Selected<'a>, ApiError> {
    let ns = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(upstream) = host.and_then(|h| by_host(upstreams, h)) {
        // The host name makes the mirror this registry: the path is the
        // repository as is. An `ns` naming another registry would get
        // that registry's name served from this one (containerd's
        // `_default` pointed at a per-registry host): refuse it.
        if let Some(ns) = &ns {
            if !by_registry_name(upstreams, ns).is_ok_and(|u| Arc::ptr_eq(u, upstream)) {
                return Err(ApiError::HostServesAnotherRegistry {
                    serves: upstream.name().to_owned(),
                    ns: ns.chars().take(64).collect(),
                });
            }
        }
        let name = name.cloned();
        check_policy(upstream, name.as_ref())?;
        return Ok(Selected { upstream, name, ns });
    }
    let (upstream, name) = match (&ns, name) {
        (Some(ns), name) => (by_registry_name(upstreams, ns)?, name.cloned()),
        (None, Some(name)) => match name.split_first() {
            Some((first, rest)) if first.contains('.') => {
                match by_registry_name(upstreams, first) {
                    Ok(upstream) => (upstream, Some(rest)),
                    // A dotted first component that names no configured
                    // registry: refuse rather than guess (never an open proxy).
                    Err(e) if upstreams.len() > 1 || looks_like_registry(first) => return Err(e),
                    Err(_) => (upstreams.default_upstream(), Some(name.clone())),
                }
            }
            _ => (upstreams.default_upstream(), Some(name.clone())),
        },
        (None, None) => (upstreams.default_upstream(), None),
    };
    check_policy(upstream, name.as_ref())?;
    Ok(Selected { upstream, name, ns })
}

fn check_policy(upstream: &Upstream, name: Option<&RepoName>) -> Result<(), ApiError> {
    match name {
        Some(name) if !upstream.allows(name) => {
            Err(ApiError::Denied(upstream.upstream_name(name).to_string()))
        }
        _ => Ok(()),
    }
}

/// The upstream whose `hosts` name the request's host: exact names first
/// (whichever upstream has them), then leading-label patterns.
fn by_host<'a>(upstreams: &'a Upstreams, host: &str) -> Option<&'a Arc<Upstream>> {
    let host = crate::config::normalise_host(host)?;
    upstreams
        .iter()
        .find(|u| u.hosts().matches_exactly(&host))
        .or_else(|| {
            upstreams
                .iter()
                .find(|u| u.hosts().matches_leading_label(&host))
        })
}

fn by_registry_name<'a>(
    upstreams: &'a Upstreams,
    registry: &str,
) -> Result<&'a Arc<Upstream>, ApiError> {
    if let Some(u) = upstreams.by_name(registry) {
        return Ok(u);
    }
    // Docker Hub goes by several names.
    if is_docker_hub_alias(registry) {
        if let Some(u) = upstreams.by_name("docker.io") {
            return Ok(u);
        }
    }
    Err(ApiError::UnknownRegistry(
        registry.chars().take(64).collect(),
    ))
}

fn is_docker_hub_alias(ns: &str) -> bool {
    matches!(ns, "docker.io" | "registry-1.docker.io" | "index.docker.io")
}

/// Well-known registry hosts, recognised as prefixes even on a mirror that
/// only has the default upstream configured.
fn looks_like_registry(component: &str) -> bool {
    is_docker_hub_alias(component)
        || matches!(
            component,
            "ghcr.io"
                | "quay.io"
                | "registry.k8s.io"
                | "gcr.io"
                | "mcr.microsoft.com"
                | "public.ecr.aws"
        )
}
