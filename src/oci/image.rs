//! Image references as people type them (`nginx:1.27`,
//! `ghcr.io/owner/app@sha256:…`), resolved the way `docker pull` does:
//! a first component with a dot, a colon or `localhost` is a registry,
//! anything else is on Docker Hub, where one-component names live under
//! `library/`.

use super::name::{NameError, Reference, RepoName, Tag};
use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical name; its aliases are folded into it.
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry name, e.g. `docker.io`, `ghcr.io`, `localhost:5000`.
    pub registry: String,
    /// As the registry knows it (`library/nginx` on Docker Hub).
    pub repo: RepoName,
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error("{0:?} is not a valid registry name")]
    Registry(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn is_hub_alias(registry: &str) -> bool {
    matches!(
        registry,
        DOCKER_HUB | "registry-1.docker.io" | "index.docker.io"
    )
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (s, None),
        };
        // A tag's colon comes after the last slash; a registry's port
        // comes before it.
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if is_registry(first) => (first.to_ascii_lowercase(), rest),
            _ => (DOCKER_HUB.to_owned(), name),
        };
        let valid_registry = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !valid_registry || registry.len() > 255 {
            return Err(ImageRefError::Registry(registry.chars().take(64).collect()));
        }
        let registry = if is_hub_alias(&registry) {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let mut repo: RepoName = path.parse()?;
        if registry == DOCKER_HUB {
            repo = repo.with_library_prefix();
        }
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d.parse().map_err(NameError::from)?),
            (None, Some(t)) => Reference::Tag(t.parse()?),
            (None, None) => Reference::Tag(Tag::latest()),
        };
        Ok(ImageRef {
            registry,
            repo,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = match self.reference {
            Reference::Tag(_) => ':',
            Reference::Digest(_) => '@',
        };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> String {
        s.parse::<ImageRef>()
            .map(|r| r.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn resolves_names_like_docker_pull() {
        assert_eq!(parsed("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(parsed("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(parsed("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            parsed("index.docker.io/nginx:1"),
            "docker.io/library/nginx:1"
        );
        assert_eq!(parsed("ghcr.io/owner/app:v1"), "ghcr.io/owner/app:v1");
        assert_eq!(parsed("localhost:5000/app"), "localhost:5000/app:latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parsed(&format!("ghcr.io/owner/app@{digest}")),
            format!("ghcr.io/owner/app@{digest}")
        );
        assert_eq!(
            parsed(&format!("quay.io/a/b:tag@{digest}")),
            format!("quay.io/a/b@{digest}")
        );
    }

    #[test]
    fn refuses_what_no_registry_takes() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "nginx:",
            "x@sha256:zz",
            "bad$host.io/x",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} accepted");
        }
    }
}
