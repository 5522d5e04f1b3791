//! Image references (`nginx:1.27`, `ghcr.io/owner/app@sha256:…`) resolved
//! to a registry and repository the way `docker pull` does:
//! a first component with a dot, a colon or `localhost` is a registry,
//! anything else is on Docker Hub, where one-component names live under
//! `library/`.

use super::image_ref::{ImageError, ImageRef};
use super::name::{Reference, RepoName};
use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical name; its aliases are folded into it.
pub const DOCKER_HUB: &str = "docker.io";

/// An [`ImageRef`] resolved to its registry and the repository as that
/// registry names it: what the cache's tag mappings are keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// Registry name, e.g. `docker.io`, `ghcr.io`, `localhost` (a port cannot be named: a registry with one is reached through a configured upstream name).
    pub registry: String,
    /// As the registry knows it (`library/nginx` on Docker Hub).
    pub repo: RepoName,
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageNameError {
    #[error("{0:?} is not a valid registry name")]
    Registry(String),
    #[error(transparent)]
    Image(#[from] ImageError),
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

impl FromStr for ImageName {
    type Err = ImageNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let image: ImageRef = s.trim().parse()?;
        ImageName::resolve(&image)
    }
}

impl ImageName {
    /// Splits a reference's registry off its name, as a pull would.
    pub fn resolve(image: &ImageRef) -> Result<ImageName, ImageNameError> {
        let name = image.name.as_str();
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if is_registry(first) => (first.to_ascii_lowercase(), rest),
            _ => (DOCKER_HUB.to_owned(), name),
        };
        let valid_registry = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !valid_registry || registry.len() > 255 {
            return Err(ImageNameError::Registry(
                registry.chars().take(64).collect(),
            ));
        }
        let registry = if is_hub_alias(&registry) {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let mut repo: RepoName = path.parse().map_err(|source| {
            ImageNameError::Image(ImageError::Name {
                image: image.text.clone(),
                source,
            })
        })?;
        if registry == DOCKER_HUB {
            repo = repo.with_library_prefix();
        }
        Ok(ImageName {
            registry,
            repo,
            reference: image.reference.clone(),
        })
    }
}

impl fmt::Display for ImageName {
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
        s.parse::<ImageName>()
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
        assert_eq!(parsed("localhost/app"), "localhost/app:latest");
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
            assert!(bad.parse::<ImageName>().is_err(), "{bad:?} accepted");
        }
    }
}
