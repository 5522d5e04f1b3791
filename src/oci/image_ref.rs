//! Image references and platform lists as a user types them:
//! `nginx:1.27`, `ghcr.io/owner/app@sha256:…`, `linux/amd64,linux/arm64`
//! or `all`.

use crate::oci::{NameError, Reference, RepoName, Tag};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("{image:?}: {source}")]
    Name { image: String, source: NameError },
    #[error("{0:?} is not a platform (os/arch or os/arch/variant, or all)")]
    Platform(String),
}

/// `[registry/]name[:tag][@digest]`; the tag defaults to `latest`. The
/// name keeps a registry prefix (`ghcr.io/owner/app`), which routing
/// strips exactly as it does for a pull through the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// As the user wrote it, for reports.
    pub text: String,
    pub name: RepoName,
    pub reference: Reference,
}

impl FromStr for ImageRef {
    type Err = ImageError;

    fn from_str(text: &str) -> Result<ImageRef, ImageError> {
        let fail = |source| ImageError::Name {
            image: text.chars().take(200).collect(),
            source,
        };
        let (rest, reference) = match text.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Reference::Digest(digest.parse().map_err(|e| fail(NameError::Digest(e)))?),
            ),
            None => {
                // A ':' after the last '/' starts the tag (a ':' before it
                // would be a registry's port).
                let last_slash = text.rfind('/').map_or(0, |i| i + 1);
                match text[last_slash..].rfind(':') {
                    Some(i) => {
                        let at = last_slash + i;
                        let tag: Tag = text[at + 1..].parse().map_err(fail)?;
                        (&text[..at], Reference::Tag(tag))
                    }
                    None => (text, Reference::Tag("latest".parse().map_err(fail)?)),
                }
            }
        };
        // `name:tag@digest`: the digest decides; the tag is decoration.
        let rest = match (&reference, rest.rsplit_once(':')) {
            (Reference::Digest(_), Some((name, tag))) if !tag.contains('/') => name,
            _ => rest,
        };
        Ok(ImageRef {
            text: text.to_owned(),
            name: rest.parse().map_err(fail)?,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform a pull on this machine would take, as `docker pull`
    /// picks it: linux and this machine's architecture in OCI words.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one; a variant left out
    /// here matches any.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which manifests of an index a warm takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Platforms {
    All,
    Only(Vec<Platform>),
}

impl Default for Platforms {
    /// The host's platform: what a pull from this machine would fetch.
    fn default() -> Platforms {
        Platforms::Only(vec![Platform::host()])
    }
}

impl Platforms {
    /// Parses `linux/amd64,linux/arm64/v8` or `all`.
    pub fn parse_list<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<Platforms, ImageError> {
        let mut only = Vec::new();
        for item in items.into_iter().flat_map(|i| i.split(',')) {
            let item = item.trim();
            if item.eq_ignore_ascii_case("all") {
                return Ok(Platforms::All);
            }
            let parts: Vec<&str> = item.split('/').collect();
            let valid = |p: &&str| {
                !p.is_empty()
                    && p.len() <= 32
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
                return Err(ImageError::Platform(item.chars().take(64).collect()));
            }
            only.push(Platform {
                os: parts[0].to_ascii_lowercase(),
                architecture: parts[1].to_ascii_lowercase(),
                variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            });
        }
        if only.is_empty() {
            return Ok(Platforms::default());
        }
        Ok(Platforms::Only(only))
    }

    /// Whether an index entry with this platform is taken (an entry
    /// without one, or an attestation's `unknown/unknown`, only by `all`).
    pub fn takes(
        &self,
        os: Option<&str>,
        architecture: Option<&str>,
        variant: Option<&str>,
    ) -> bool {
        match self {
            Platforms::All => true,
            Platforms::Only(list) => match (os, architecture) {
                (Some(os), Some(arch)) => list.iter().any(|p| p.matches(os, arch, variant)),
                _ => false,
            },
        }
    }
}

impl fmt::Display for Platforms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Platforms::All => f.write_str("all"),
            Platforms::Only(list) => {
                let names: Vec<String> = list.iter().map(Platform::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &str) -> (String, String) {
        let i: ImageRef = s.parse().unwrap();
        (i.name.as_str().to_owned(), i.reference.to_string())
    }

    #[test]
    fn image_forms() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(image("nginx:1.27"), ("nginx".into(), "1.27".into()));
        assert_eq!(image("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(
            image("ghcr.io/owner/app:v1"),
            ("ghcr.io/owner/app".into(), "v1".into())
        );
        assert_eq!(
            image(&format!("ghcr.io/owner/app@{d}")),
            ("ghcr.io/owner/app".into(), d.clone())
        );
        assert_eq!(image(&format!("alpine:3@{d}")), ("alpine".into(), d));
        for bad in ["", "UP:1", "a/../b", "x:-bad", "x@sha256:zz", "a b"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platform_lists() {
        assert_eq!(Platforms::parse_list(["all"]), Ok(Platforms::All));
        let p = Platforms::parse_list(["linux/amd64,linux/arm64/v8"]).unwrap();
        assert!(p.takes(Some("linux"), Some("amd64"), None));
        assert!(p.takes(Some("linux"), Some("arm64"), Some("v8")));
        assert!(!p.takes(Some("linux"), Some("arm64"), Some("v7")));
        assert!(!p.takes(Some("unknown"), Some("unknown"), None));
        assert!(!p.takes(None, None, None));
        let any_variant = Platforms::parse_list(["linux/arm64"]).unwrap();
        assert!(any_variant.takes(Some("linux"), Some("arm64"), Some("v8")));
        assert!(Platforms::parse_list(["linux"]).is_err());
        assert!(Platforms::parse_list(["linux/amd64/v1/x"]).is_err());
        assert_eq!(Platforms::parse_list([]), Ok(Platforms::default()));
    }
}
