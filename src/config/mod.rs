//! The validated configuration: built from the TOML file, then the
//! environment and flags on top (flags > environment > file > defaults).
//!
//! - [`values`]: typed values (sizes, durations, patterns, networks).
//! - `file`: the file's schema.
//! - `upstream`: one `[[upstream]]` entry resolved, credentials included.
//! - `warm`: the `[[warm]]` sets.

pub(crate) mod file;
mod storage;
mod upstream;
mod values;
mod warm;

pub use storage::{AwsEnv, S3Settings};
pub use upstream::{Credentials, Secret, UpstreamSettings};
pub use values::{
    normalise_host, AddressFamily, AdminRead, ByteRate, ByteSize, HostPatterns, HumanDuration,
    PatternSet, ProxyNet, ProxyUrl, RequestRate, TlsFiles,
};
pub use warm::WarmSet;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
pub const DEFAULT_CACHE_DIR: &str = "./pullthrough-cache";
pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(7 * 86_400);

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    /// The first entry is the default upstream.
    pub upstreams: Vec<UpstreamSettings>,
    pub max_connections: usize,
    /// Requests in flight at once, across all connections and HTTP/2
    /// streams: what bounds buffered body bytes and upstream work.
    pub max_requests: usize,
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request head (HTTP/1), and the
    /// TLS handshake.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this
    /// long is closed (a silent client, or one that stopped reading).
    pub idle_timeout: Duration,
    /// A second listener that serves `/metrics` (and health) only to
    /// whoever can reach it; `/metrics` stays on the main listener too.
    pub metrics_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ProxyNet>,
    /// The cache's byte budget; `None` means unbounded.
    pub max_size: Option<u64>,
    /// Serve HTTPS (h2 and http/1.1) with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Client credentials: htpasswd (bcrypt) users and bearer tokens.
    pub htpasswd_file: Option<PathBuf>,
    pub bearer_tokens_file: Option<PathBuf>,
    /// The token the admin API's actions (purges) require, as
    /// `Authorization: Bearer`; without it, actions are refused.
    pub admin_token_file: Option<PathBuf>,
    /// Who may read `/api/v1/`; `None`: open on the metrics listener,
    /// the token on the main one.
    pub admin_read: Option<AdminRead>,
    /// Failed authentication attempts a client address may make within a
    /// minute before it gets 429 without its credentials being checked.
    pub client_auth_max_failures: u32,
    /// The object-storage tier under the local disk (`storage = "s3://…"`);
    /// `None`: local disk only.
    pub storage: Option<S3Settings>,
    /// What one client address (and all together) may use.
    pub limits: ClientLimits,
    /// Images fetched at start-up and kept fresh (`[[warm]]`).
    pub warm: Vec<WarmSet>,
    /// Upstream pulls (`ratelimit-remaining`) a warm leaves to clients.
    pub warm_reserve: u64,
    /// Internal timings, not in the file: tests shorten them instead of
    /// sleeping through the production values.
    pub timings: Timings,
}

/// Per-client limits, each off unless set. A client is its address after
/// `trusted_proxies` (an IPv6 client is its /64).
#[derive(Clone, Debug, Default)]
pub struct ClientLimits {
    /// Requests per second, in a bucket of `burst` requests.
    pub rate: Option<f64>,
    pub burst: u32,
    /// Requests in flight (until their bodies end).
    pub concurrency: Option<usize>,
    /// Response bytes per second per client, shaped.
    pub bandwidth: Option<u64>,
    /// Response bytes per second for all clients together, shaped.
    pub total_bandwidth: Option<u64>,
    /// Clients none of the limits apply to.
    pub unlimited: Vec<ProxyNet>,
}

/// Waits and intervals that have sound production values but that an
/// in-process test wants short.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How long an upstream's circuit stays open after repeated failures.
    pub breaker_open: Duration,
    /// How often the TLS files are checked for changes.
    pub tls_poll: Duration,
    /// First backoff between retries of a failed upstream call (doubles).
    pub retry_backoff: Duration,
    /// How long a download waits for eviction to make room before it
    /// streams past the cache instead.
    pub make_room_wait: Duration,
    /// A blob download that moves fewer than 16 KiB/s over this span is
    /// resumed on a fresh connection.
    pub stall_window: Duration,
    /// A blob download nobody has read for this long is abandoned.
    pub abandon_after: Duration,
    /// A token exchange (connect, headers and body) ends within this;
    /// Docker Hub answers in well under a second.
    pub token_timeout: Duration,
    /// How often a warm paused at `warm_reserve` asks again (a free HEAD)
    /// whether the upstream's window allows.
    pub warm_ratelimit_poll: Duration,
    /// How long nothing must move on an HTTP/1.1 keep-alive connection
    /// before it is parked (its buffers freed until the next request).
    pub park_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            breaker_open: Duration::from_secs(5),
            tls_poll: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(100),
            make_room_wait: Duration::from_secs(3),
            stall_window: Duration::from_secs(10),
            abandon_after: Duration::from_secs(60),
            token_timeout: Duration::from_secs(10),
            warm_ratelimit_poll: Duration::from_secs(60),
            park_after: Duration::from_secs(1),
        }
    }
}

/// Values given on the command line or in the environment (clap merges
/// those two); `None` means "not given here".
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub metrics_listen: Option<String>,
    pub max_size: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--storage s3://BUCKET/PREFIX`.
    pub storage: Option<String>,
    /// The standard AWS variables (fallbacks for `[storage.s3]`).
    pub aws: AwsEnv,
    /// Leave the object store out (offline commands on the local tier).
    pub ignore_storage: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A flag or environment value parsed like its file counterpart.
fn flag<T: std::str::FromStr>(key: &str, value: &str, example: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| {
        let detail = e.to_string();
        if detail.contains(value) {
            invalid(key, detail)
        } else {
            invalid(key, format!("{value:?} is not {example}"))
        }
    })
}

impl Config {
    /// Builds the configuration from an optional file and the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let parsed = match file {
            Some(path) => file::parse_file(path)?,
            None => file::FileConfig::default(),
        };
        let listen = match &overrides.listen {
            Some(s) => flag("listen", s, "an address like 0.0.0.0:5000")?,
            None => parsed
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address")),
        };
        let cache_dir = overrides
            .cache_dir
            .clone()
            .or(parsed.cache_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));

        let mut file_upstreams = parsed.upstream;
        if file_upstreams.is_empty() {
            file_upstreams.push(file::FileUpstream::default());
        }
        let mut upstreams = Vec::new();
        for (i, u) in file_upstreams.into_iter().enumerate() {
            let url_override = if i == 0 {
                overrides.upstream.clone()
            } else {
                None
            };
            upstreams.push(upstream::resolve(i, u, url_override)?);
        }
        for (i, u) in upstreams.iter().enumerate() {
            if upstreams[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&u.name))
            {
                return Err(invalid(
                    &format!("upstream[{i}].name"),
                    format!("{:?} is configured twice", u.name),
                ));
            }
            if let Some(host) = upstreams[..i]
                .iter()
                .find_map(|o| o.hosts.overlap(&u.hosts))
            {
                return Err(invalid(
                    &format!("upstream[{i}].hosts"),
                    format!("{host:?} already selects another upstream"),
                ));
            }
        }
        let shutdown_grace = parsed
            .shutdown_grace
            .map_or(Duration::from_secs(30), |d| d.0);
        let header_read_timeout = parsed
            .header_read_timeout
            .map_or(Duration::from_secs(30), |d| d.0);
        if header_read_timeout.is_zero() {
            return Err(invalid("header_read_timeout", "must be more than 0s"));
        }
        let idle_timeout = parsed
            .idle_timeout
            .map_or(Duration::from_secs(120), |d| d.0);
        if idle_timeout.is_zero() {
            return Err(invalid("idle_timeout", "must be more than 0s"));
        }
        let max_connections = parsed.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let max_requests = parsed.max_requests.unwrap_or(2048);
        if max_requests == 0 {
            return Err(invalid("max_requests", "must be at least 1"));
        }
        let metrics_listen = match &overrides.metrics_listen {
            Some(s) => Some(flag("metrics_listen", s, "an address like 0.0.0.0:9090")?),
            None => parsed.metrics_listen,
        };
        let max_size = match &overrides.max_size {
            Some(s) => Some(flag::<ByteSize>("max_size", s, "a size like 50GiB")?),
            None => parsed.max_size,
        };
        let tls = match (
            overrides.tls_cert.clone().or(parsed.tls_cert),
            overrides.tls_key.clone().or(parsed.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(invalid("tls_cert", "tls_cert and tls_key go together")),
        };
        let storage = if overrides.ignore_storage {
            None
        } else {
            storage::resolve(parsed.storage, overrides.storage.as_deref(), &overrides.aws)?
        };
        let storage = match (storage, parsed.s3_redirect) {
            (Some(s3), redirect) => Some(S3Settings {
                redirect: redirect.unwrap_or(false),
                ..s3
            }),
            (None, Some(true)) if !overrides.ignore_storage => {
                return Err(invalid(
                    "s3_redirect",
                    "redirects go to the object store: set storage = \"s3://…\" too",
                ))
            }
            (None, _) => None,
        };
        if parsed.client_burst == Some(0) {
            return Err(invalid("client_burst", "must be at least 1"));
        }
        if parsed.client_burst.is_some() && parsed.client_rate.is_none() {
            return Err(invalid("client_burst", "needs client_rate"));
        }
        if parsed.client_concurrency == Some(0) {
            return Err(invalid("client_concurrency", "must be at least 1"));
        }
        let rate = parsed.client_rate.map(|r| r.0);
        let limits = ClientLimits {
            rate,
            // A second's worth by default, at least one request.
            burst: parsed
                .client_burst
                .unwrap_or_else(|| rate.map_or(1, |r| r.ceil().max(1.0) as u32)),
            concurrency: parsed.client_concurrency,
            bandwidth: parsed.client_bandwidth.map(|b| b.0),
            total_bandwidth: parsed.total_bandwidth.map(|b| b.0),
            unlimited: parsed.unlimited_clients,
        };
        let warm = warm::resolve(parsed.warm)?;
        Ok(Config {
            warm,
            warm_reserve: parsed.warm_reserve.unwrap_or(warm::DEFAULT_RESERVE),
            storage,
            limits,
            htpasswd_file: parsed.htpasswd_file,
            bearer_tokens_file: parsed.bearer_tokens_file,
            admin_token_file: parsed.admin_token_file,
            admin_read: parsed.admin_read,
            client_auth_max_failures: parsed.client_auth_max_failures.unwrap_or(10),
            tls,
            max_size: max_size.map(|b| b.0),
            listen,
            cache_dir,
            upstreams,
            max_connections,
            max_requests,
            shutdown_grace,
            header_read_timeout,
            idle_timeout,
            metrics_listen,
            trusted_proxies: parsed.trusted_proxies,
            timings: Timings::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(c.upstreams[0].name, "docker.io");
        assert_eq!(c.upstreams[0].url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(60));
        assert_eq!(c.upstreams[0].max_stale, DEFAULT_MAX_STALE);
        assert!(c.upstreams[0].immutable_tags.is_empty());
        assert!(!c.upstreams[0].prefetch_referrers);
    }

    #[test]
    fn overrides_beat_the_file() {
        let f = write("listen = \"127.0.0.1:1\"\ncache_dir = \"/a\"\n[[upstream]]\nurl = \"http://x:1\"\ntag_ttl = \"5m\"\n");
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            cache_dir: None,
            upstream: Some("http://y:2/prefix".into()),
            metrics_listen: None,
            max_size: Some("1GiB".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(f.path()), &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.cache_dir, PathBuf::from("/a"));
        assert_eq!(c.upstreams[0].url.as_str(), "http://y:2/prefix/");
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
        assert_eq!(c.max_size, Some(1 << 30));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let f = write("listen = \"127.0.0.1:1\"\ncolour = \"blue\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn s3_redirect_needs_a_storage_and_is_off_by_default() {
        let f = write("s3_redirect = true\n");
        let e = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3_redirect"), "{e}");
        let offline = Overrides {
            ignore_storage: true,
            ..Default::default()
        };
        assert!(Config::load(Some(f.path()), &offline).is_ok());
        let aws = AwsEnv {
            access_key_id: Some("AK".into()),
            secret_access_key: Some(Secret::new("SK".into())),
            ..Default::default()
        };
        let with_storage = |text: &str| {
            let f = write(text);
            let o = Overrides {
                storage: Some("s3://bucket/p".into()),
                aws: aws.clone(),
                ..Default::default()
            };
            Config::load(Some(f.path()), &o).unwrap().storage.unwrap()
        };
        assert!(with_storage("s3_redirect = true\n").redirect);
        assert!(!with_storage("").redirect);
    }

    #[test]
    fn bad_values_name_the_key() {
        let f = write("[[upstream]]\ntag_ttl = \"soon\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream[0].tag_ttl"), "{e}");
        let e = Config::load(
            None,
            &Overrides {
                listen: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::load(
            None,
            &Overrides {
                upstream: Some("ftp://x".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("url"), "{e}");
    }

    #[test]
    fn hosts_select_one_upstream_each() {
        let f = write("[[upstream]]\nhosts = [\"docker.*\"]\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nhosts = [\"ghcr.*\", \"ghcr.example.com\"]\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        assert!(c.upstreams[1].hosts.matches_exactly("ghcr.example.com"));
        assert!(c.upstreams[0]
            .hosts
            .matches_leading_label("docker.example.com"));
        let f = write("[[upstream]]\nhosts = [\"ghcr.*\"]\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nhosts = [\"GHCR.*\"]\n");
        let e = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstream[1].hosts") && e.contains("ghcr.*"),
            "{e}"
        );
        let f = write("[[upstream]]\nhosts = [\"*.example.com\"]\n");
        let e = Config::load(Some(f.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream[0].hosts"), "{e}");
    }

    #[test]
    fn client_limits() {
        let f = write("client_rate = \"120/m\"\nclient_concurrency = 4\nclient_bandwidth = \"50MiB/s\"\nunlimited_clients = [\"10.0.0.0/8\"]\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.limits.rate, Some(2.0));
        assert_eq!(c.limits.burst, 2, "a second's worth by default");
        assert_eq!(c.limits.concurrency, Some(4));
        assert_eq!(c.limits.bandwidth, Some(50 << 20));
        assert!(c.limits.total_bandwidth.is_none());
        for (text, key) in [
            ("client_burst = 5\n", "client_burst"),
            ("client_rate = \"fast\"\n", "client_rate"),
            ("client_concurrency = 0\n", "client_concurrency"),
            ("total_bandwidth = \"1GiB\"\n", "total_bandwidth"),
        ] {
            let e = Config::load(Some(write(text).path()), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn password_file_and_redaction() {
        let pw = write("s3cret\n");
        let f = write(&format!(
            "[[upstream]]\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.path().display()
        ));
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        let creds = &c.upstreams[0].credentials[0];
        assert_eq!(creds.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_credential_pool_keeps_its_order_and_names() {
        let f = write(concat!(
            "[[upstream]]\nusername = \"first\"\npassword = \"a\"\n",
            "[[upstream.credentials]]\nname = \"ci\"\nusername = \"robot\"\npassword = \"b\"\n",
            "[[upstream.credentials]]\nusername = \"third\"\npassword = \"c\"\n",
        ));
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        let names: Vec<_> = c.upstreams[0]
            .credentials
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["first", "ci", "third"]);
        let dup = write(concat!(
            "[[upstream]]\n",
            "[[upstream.credentials]]\nusername = \"x\"\npassword = \"b\"\n",
            "[[upstream.credentials]]\nusername = \"x\"\npassword = \"c\"\n",
        ));
        let e = Config::load(Some(dup.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream[0].credentials[1].name"), "{e}");
        let half = write("[[upstream]]\n[[upstream.credentials]]\nusername = \"x\"\n");
        let e = Config::load(Some(half.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream[0].credentials[0]"), "{e}");
    }
}
