//! The TOML file's schema: every key, with its typed value; unknown keys
//! and values of the wrong type are errors that name the key.

use super::storage::FileStorage;
use super::values::{ByteSize, HumanDuration, PatternSet, ProxyNet};
use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub cache_dir: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_requests: Option<usize>,
    pub shutdown_grace: Option<HumanDuration>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub metrics_listen: Option<SocketAddr>,
    pub max_size: Option<ByteSize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub htpasswd_file: Option<PathBuf>,
    pub bearer_tokens_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub client_auth_max_failures: Option<u32>,
    pub storage: Option<FileStorage>,
    #[serde(default)]
    pub trusted_proxies: Vec<ProxyNet>,
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub name: Option<String>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub tag_ttl: Option<HumanDuration>,
    pub max_stale: Option<HumanDuration>,
    #[serde(default)]
    pub immutable_tags: PatternSet,
    #[serde(default)]
    pub allow: PatternSet,
    #[serde(default)]
    pub deny: PatternSet,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    pub connect_timeout: Option<HumanDuration>,
    pub read_timeout: Option<HumanDuration>,
    pub max_downloads: Option<usize>,
}

pub(super) fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_text(&text).map_err(|(line, message)| ConfigError::Parse {
        path: path.to_owned(),
        line,
        message,
    })
}

/// Parses the file's text; an error is (line, one-line message).
pub(super) fn parse_text(text: &str) -> Result<FileConfig, (usize, String)> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        (
            line,
            name_the_key(text, e.span().map(|s| s.start), e.message()),
        )
    })
}

/// toml names unknown keys but not the key whose value has the wrong type
/// (or does not parse); the line the error points at does, so the message
/// names it either way, with its table (`upstream[1].tag_ttl`).
fn name_the_key(text: &str, at: Option<usize>, message: &str) -> String {
    let message = message.replace('\n', " ");
    let Some(at) = at.filter(|&a| a <= text.len() && text.is_char_boundary(a)) else {
        return message;
    };
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return message;
    };
    let key = key.trim();
    let before = &text[..line_start];
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let key = match table {
        Some(t) if t.starts_with("[[") => {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            let index = before
                .lines()
                .filter(|l| l.trim() == t)
                .count()
                .saturating_sub(1);
            format!("{name}[{index}].{key}")
        }
        Some(t) => format!("{}.{key}", t.trim_matches(|c| c == '[' || c == ']').trim()),
        None => key.to_owned(),
    };
    if message.contains(&format!("`{key}`")) {
        message
    } else {
        format!("`{key}`: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_their_key() {
        let text = "max_connections = \"x\"\n[[upstream]]\nname = \"a\"\ninsecure = \"yes\"\n";
        for (key, at) in [
            ("max_connections", 18),
            ("upstream[0].insecure", text.len() - 6),
        ] {
            let message = name_the_key(text, Some(at), "invalid type");
            assert!(message.starts_with(&format!("`{key}`")), "{message}");
        }
        let named = name_the_key(text, Some(0), "unknown field `max_connections`");
        assert_eq!(named, "unknown field `max_connections`");
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let text = "[[upstream]]\nname = \"a\"\n[[upstream]]\nname = \"b\"\ntag_ttl = \"soon\"\n";
        let (line, message) = parse_text(text).unwrap_err();
        assert_eq!(line, 5);
        assert!(message.contains("upstream[1].tag_ttl"), "{message}");
        assert!(message.contains("not a duration"), "{message}");
    }
}
