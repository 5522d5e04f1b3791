//! The TOML file's schema: every key, with its typed value; unknown keys
//! and values of the wrong type are errors that name the key.

use super::storage::FileStorage;
use super::values::{
    AddressFamily, ByteRate, ByteSize, HostPatterns, HumanDuration, PatternSet, ProxyNet, ProxyUrl,
    RequestRate,
};
use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
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
    pub admin_read: Option<super::values::AdminRead>,
    pub client_auth_max_failures: Option<u32>,
    pub storage: Option<FileStorage>,
    pub s3_redirect: Option<bool>,
    #[serde(default)]
    pub trusted_proxies: Vec<ProxyNet>,
    pub client_rate: Option<RequestRate>,
    pub client_burst: Option<u32>,
    pub client_concurrency: Option<usize>,
    pub client_bandwidth: Option<ByteRate>,
    pub total_bandwidth: Option<ByteRate>,
    #[serde(default)]
    pub unlimited_clients: Vec<ProxyNet>,
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
    #[serde(default)]
    pub warm: Vec<super::warm::FileWarm>,
    pub warm_reserve: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileUpstream {
    pub name: Option<String>,
    pub url: Option<String>,
    /// Host names that select this upstream (`ghcr.example.com`, `ghcr.*`).
    #[serde(default)]
    pub hosts: HostPatterns,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// A pool of accounts, used in turn as each one's pull limit runs out.
    #[serde(default)]
    pub credentials: Vec<FileCredential>,
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
    pub referrers_ttl: Option<HumanDuration>,
    /// Fetch a tag's referrers in the background when the tag is fetched.
    #[serde(default)]
    pub prefetch_referrers: bool,
    /// Egress proxy for everything sent to this upstream (tokens, API,
    /// CDN redirects); without it `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
    pub proxy: Option<ProxyUrl>,
    pub connect_address_family: Option<AddressFamily>,
    pub source_address: Option<std::net::IpAddr>,
}

/// One `[[upstream.credentials]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCredential {
    /// Shown in metrics and logs; the user name when not given.
    pub name: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
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
pub(crate) fn parse_text(text: &str) -> Result<FileConfig, (usize, String)> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        (line, {
            // Some syntax errors carry no message of their own; the
            // full rendering names the problem then.
            let message = match e.message().trim() {
                "" => e.to_string(),
                m => m.to_owned(),
            };
            name_the_key(text, e.span().map(|s| s.start), &message)
        })
    })
}

/// toml names unknown keys but not the key whose value has the wrong type
/// (or does not parse); the line the error points at does, so the message
/// names it either way, with its table (`upstream[1].tag_ttl`).
fn name_the_key(text: &str, at: Option<usize>, message: &str) -> String {
    // One line, whatever the file holds: control characters from a key or
    // a rendered excerpt never reach the terminal as such.
    let message: String = message
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let Some(at) = at.filter(|&a| a <= text.len() && text.is_char_boundary(a)) else {
        return message;
    };
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return message;
    };
    let key: String = key
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let key = key.as_str();
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
    fn syntax_errors_say_something_on_one_clean_line() {
        for text in ["\r", "a\rb = 1\n", "[[upstream]\n", "= 1\n"] {
            let (_, message) = parse_text(text).unwrap_err();
            assert!(!message.trim().is_empty(), "{text:?}: empty message");
            assert!(
                !message.chars().any(char::is_control),
                "{text:?}: {message:?}"
            );
        }
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
