//! One `[[upstream]]` entry resolved: URL checked, credentials read from
//! the file, environment or config, defaults applied.

use super::file::{FileCredential, FileUpstream};
use super::values::{AddressFamily, HostPatterns, PatternSet, ProxyUrl};
use super::{invalid, ConfigError, DEFAULT_MAX_STALE, DEFAULT_TAG_TTL, DEFAULT_UPSTREAM};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// A string that must never reach a log line, a metric or an error body.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    /// How metrics and logs name it (never the secret).
    pub name: String,
    pub username: String,
    pub password: Secret,
}

/// Settings for one upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSettings {
    /// Registry name clients use for it, e.g. `docker.io`.
    pub name: String,
    pub url: Url,
    /// Request host names (`Host`, or the HTTP/2 authority) that select
    /// this upstream before `?ns=` and path prefixes are looked at.
    pub hosts: HostPatterns,
    /// Accounts to authenticate with, in the order they are used; empty:
    /// anonymous.
    pub credentials: Vec<Credentials>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub tag_ttl: Duration,
    /// How long a cached tag may be served while the upstream fails.
    pub max_stale: Duration,
    /// Tags whose mapping never changes once cached, e.g. `v*.*.*`:
    /// never revalidated.
    pub immutable_tags: PatternSet,
    /// Repositories this mirror serves (empty: all), e.g. `library/*`.
    pub allow: PatternSet,
    /// Repositories refused even if allowed.
    pub deny: PatternSet,
    /// Extra trusted CA certificates (PEM) for a private registry.
    pub ca_file: Option<PathBuf>,
    /// Skip TLS verification (lab registries only).
    pub insecure: bool,
    /// Blob downloads from this upstream at once; more wait their turn.
    pub max_downloads: usize,
    /// A referrers answer is served from cache this long before it is
    /// asked for again.
    pub referrers_ttl: Duration,
    /// When a tag is fetched from the upstream, its referrers list is
    /// fetched too, in the background, so a signature check during an
    /// outage finds it cached.
    pub prefetch_referrers: bool,
    /// Egress proxy; `None` leaves the `*_PROXY` environment in charge.
    pub proxy: Option<ProxyUrl>,
    /// Which resolved addresses connections may use.
    pub address_family: AddressFamily,
    /// The local address connections are made from.
    pub source_address: Option<IpAddr>,
}

pub(super) fn resolve(
    i: usize,
    u: FileUpstream,
    url_override: Option<String>,
) -> Result<UpstreamSettings, ConfigError> {
    let key = |k: &str| format!("upstream[{i}].{k}");
    let url_str = url_override
        .or(u.url)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    let mut url =
        Url::parse(&url_str).map_err(|e| invalid(&key("url"), format!("{url_str:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            &key("url"),
            format!("{url_str:?} must be an http(s) URL with a host"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            &key("url"),
            "put credentials in username/password, not in the URL",
        ));
    }
    // Joining "v2/…" must keep any path prefix.
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let name = u.name.unwrap_or_else(|| {
        if i == 0 {
            "docker.io".to_owned()
        } else {
            url.host_str().unwrap_or_default().to_owned()
        }
    });
    let single = FileCredential {
        name: None,
        username: u.username,
        password: u.password,
        password_file: u.password_file,
        password_env: u.password_env,
    };
    let mut pool: Vec<Credentials> = credentials(&key, single)?.into_iter().collect();
    for (j, entry) in u.credentials.into_iter().enumerate() {
        let entry_key = |k: &str| key(&format!("credentials[{j}].{k}"));
        let c = credentials(&entry_key, entry)?.ok_or_else(|| {
            invalid(
                &entry_key("username"),
                "a credentials entry needs username and password",
            )
        })?;
        if pool.iter().any(|known| known.name == c.name) {
            return Err(invalid(
                &entry_key("name"),
                format!("{:?} names another credential too", c.name),
            ));
        }
        pool.push(c);
    }
    let address_family = u.connect_address_family.unwrap_or_default();
    if let Some(source) = u.source_address {
        if !address_family.admits(source) {
            return Err(invalid(
                &key("source_address"),
                format!("{source} is not of connect_address_family {address_family:?}"),
            ));
        }
    }
    if let Some(ip) = url
        .host_str()
        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
    {
        if !address_family.admits(ip) {
            return Err(invalid(
                &key("connect_address_family"),
                format!("the url's address {ip} is of the other family"),
            ));
        }
    }
    let or = |v: Option<super::HumanDuration>, default: Duration| v.map_or(default, |d| d.0);
    Ok(UpstreamSettings {
        name,
        url,
        hosts: u.hosts,
        credentials: pool,
        tag_ttl: or(u.tag_ttl, DEFAULT_TAG_TTL),
        max_stale: or(u.max_stale, DEFAULT_MAX_STALE),
        immutable_tags: u.immutable_tags,
        allow: u.allow,
        deny: u.deny,
        ca_file: u.ca_file,
        insecure: u.insecure,
        proxy: u.proxy,
        address_family,
        source_address: u.source_address,
        connect_timeout: or(u.connect_timeout, Duration::from_secs(10)),
        read_timeout: or(u.read_timeout, Duration::from_secs(30)),
        referrers_ttl: or(u.referrers_ttl, Duration::from_secs(60)),
        prefetch_referrers: u.prefetch_referrers,
        max_downloads: match u.max_downloads {
            Some(0) => return Err(invalid(&key("max_downloads"), "must be at least 1")),
            Some(n) => n,
            None => 64,
        },
    })
}

/// The password from exactly one of its three sources, paired with the
/// user name.
fn credentials(
    key: &dyn Fn(&str) -> String,
    entry: FileCredential,
) -> Result<Option<Credentials>, ConfigError> {
    let FileCredential {
        name,
        username,
        password,
        password_file,
        password_env,
    } = entry;
    let given = [
        password.is_some(),
        password_file.is_some(),
        password_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(invalid(
            &key("password"),
            "set one of password, password_file, password_env",
        ));
    }
    let password = if let Some(var) = password_env {
        Some(std::env::var(&var).map_err(|_| {
            invalid(
                &key("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?)
    } else if let Some(file) = password_file {
        Some(
            std::fs::read_to_string(&file)
                .map_err(|e| invalid(&key("password_file"), format!("{}: {e}", file.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )
    } else {
        password
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials {
            name: name.unwrap_or_else(|| username.clone()),
            username,
            password: Secret::new(password),
        })),
        (None, None) => Ok(None),
        _ => Err(invalid(
            &key("username"),
            "username and password go together",
        )),
    }
}
