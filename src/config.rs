//! Configuration: a TOML file, then environment variables, then flags,
//! each overriding the one before; validated once, at start-up.

use crate::upstream::{Credentials, Secret, UpstreamSettings};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
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
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request head (HTTP/1), and the
    /// TLS handshake.
    pub header_read_timeout: Duration,
    /// A second listener that serves `/metrics` (and health) only to
    /// whoever can reach it; `/metrics` stays on the main listener too.
    pub metrics_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ProxyNet>,
    /// The cache's byte budget; `None` means unbounded.
    pub max_size: Option<u64>,
    /// Serve HTTPS (h2 and http/1.1) with this certificate and key.
    pub tls: Option<crate::server::TlsFiles>,
    /// Client credentials: htpasswd (bcrypt) users and bearer tokens.
    pub htpasswd_file: Option<PathBuf>,
    pub bearer_tokens_file: Option<PathBuf>,
}

/// An address or CIDR block, e.g. `10.0.0.0/8` or `::1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl ProxyNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

impl std::str::FromStr for ProxyNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an IP address or CIDR block");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(ProxyNet { addr, prefix })
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    cache_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    shutdown_grace: Option<String>,
    header_read_timeout: Option<String>,
    metrics_listen: Option<String>,
    max_size: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    htpasswd_file: Option<PathBuf>,
    bearer_tokens_file: Option<PathBuf>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    upstream: Vec<FileUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    name: Option<String>,
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    tag_ttl: Option<String>,
    max_stale: Option<String>,
    #[serde(default)]
    immutable_tags: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    password_env: Option<String>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
}

impl Config {
    /// Builds the configuration from an optional file and the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let parsed = match file {
            Some(path) => parse_file(path)?,
            None => FileConfig::default(),
        };
        let listen_str = overrides
            .listen
            .clone()
            .or(parsed.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_str.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_str:?} is not an address like 0.0.0.0:5000"),
            )
        })?;
        let cache_dir = overrides
            .cache_dir
            .clone()
            .or(parsed.cache_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));

        let mut file_upstreams = parsed.upstream;
        if file_upstreams.is_empty() {
            file_upstreams.push(FileUpstream::default());
        }
        let mut upstreams = Vec::new();
        for (i, u) in file_upstreams.into_iter().enumerate() {
            let url_override = if i == 0 {
                overrides.upstream.clone()
            } else {
                None
            };
            upstreams.push(upstream_settings(i, u, url_override)?);
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
        }
        let shutdown_grace = match parsed.shutdown_grace {
            Some(s) => parse_duration(&s).map_err(|m| invalid("shutdown_grace", m))?,
            None => Duration::from_secs(30),
        };
        let header_read_timeout = match parsed.header_read_timeout {
            Some(s) => parse_duration(&s).map_err(|m| invalid("header_read_timeout", m))?,
            None => Duration::from_secs(30),
        };
        if header_read_timeout.is_zero() {
            return Err(invalid("header_read_timeout", "must be more than 0s"));
        }
        let max_connections = parsed.max_connections.unwrap_or(4096);
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let metrics_listen = match overrides.metrics_listen.clone().or(parsed.metrics_listen) {
            Some(s) => Some(s.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!("{s:?} is not an address like 0.0.0.0:9090"),
                )
            })?),
            None => None,
        };
        let trusted_proxies = parsed
            .trusted_proxies
            .iter()
            .map(|p| p.parse().map_err(|m| invalid("trusted_proxies", m)))
            .collect::<Result<_, _>>()?;
        let max_size = match overrides.max_size.clone().or(parsed.max_size) {
            Some(s) => Some(parse_size(&s).map_err(|m| invalid("max_size", m))?),
            None => None,
        };
        let tls = match (
            overrides.tls_cert.clone().or(parsed.tls_cert),
            overrides.tls_key.clone().or(parsed.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(crate::server::TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(invalid("tls_cert", "tls_cert and tls_key go together")),
        };
        Ok(Config {
            htpasswd_file: parsed.htpasswd_file,
            bearer_tokens_file: parsed.bearer_tokens_file,
            tls,
            max_size,
            listen,
            cache_dir,
            upstreams,
            max_connections,
            shutdown_grace,
            header_read_timeout,
            metrics_listen,
            trusted_proxies,
        })
    }
}

fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            message: name_the_key(&text, e.span().map(|s| s.start), e.message()),
        }
    })
}

/// toml names unknown keys but not the key whose value has the wrong type;
/// the line the error points at does, so the message names it either way.
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
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let key = match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    };
    if message.contains(&format!("`{key}`")) {
        message
    } else {
        format!("`{key}`: {message}")
    }
}

fn upstream_settings(
    i: usize,
    u: FileUpstream,
    url_override: Option<String>,
) -> Result<UpstreamSettings, ConfigError> {
    let key = |k: &str| format!("upstream[{i}].{k}");
    let url_str = url_override
        .or(u.url)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    let mut url =
        url::Url::parse(&url_str).map_err(|e| invalid(&key("url"), format!("{url_str:?}: {e}")))?;
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
    let from_env = match &u.password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            invalid(
                &key("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?),
        None => None,
    };
    let given = [
        u.password.is_some(),
        u.password_file.is_some(),
        from_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(invalid(
            &key("password"),
            "set one of password, password_file, password_env",
        ));
    }
    let password = match (u.password.or(from_env), u.password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &key("password"),
                "set one of password, password_file, password_env",
            ))
        }
        (Some(p), None) => Some(p),
        (None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .map_err(|e| invalid(&key("password_file"), format!("{}: {e}", file.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    let credentials = match (u.username, password) {
        (Some(username), Some(password)) => Some(Credentials {
            username,
            password: Secret::new(password),
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                &key("username"),
                "username and password go together",
            ))
        }
    };
    let duration = |k: &str, v: Option<String>, default: Duration| match v {
        Some(s) => parse_duration(&s).map_err(|m| invalid(&key(k), m)),
        None => Ok(default),
    };
    Ok(UpstreamSettings {
        name,
        url,
        credentials,
        tag_ttl: duration("tag_ttl", u.tag_ttl, DEFAULT_TAG_TTL)?,
        max_stale: duration("max_stale", u.max_stale, DEFAULT_MAX_STALE)?,
        immutable_tags: u.immutable_tags,
        allow: u.allow,
        deny: u.deny,
        ca_file: u.ca_file,
        insecure: u.insecure,
        connect_timeout: duration(
            "connect_timeout",
            u.connect_timeout,
            Duration::from_secs(10),
        )?,
        read_timeout: duration("read_timeout", u.read_timeout, Duration::from_secs(30))?,
    })
}

/// `50GiB`, `500MB`, `1024`: bytes, with decimal (kB, MB, GB, TB) or
/// binary (KiB, MiB, GiB, TiB) units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size like 50GiB, 500MB or 1048576");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(bad()),
        Some(v) => Ok(v),
    }
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h or 7d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m, 2h or 7d"))
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
    fn password_file_and_redaction() {
        let pw = write("s3cret\n");
        let f = write(&format!(
            "[[upstream]]\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.path().display()
        ));
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        let creds = c.upstreams[0].credentials.as_ref().unwrap();
        assert_eq!(creds.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2 mib"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn proxy_nets() {
        let net: ProxyNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: ProxyNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: ProxyNet = "fd00::/12".parse().unwrap();
        assert!(v6.contains("fd01::1".parse().unwrap()));
        assert!(!v6.contains("fe00::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<ProxyNet>().is_err());
        assert!("nope".parse::<ProxyNet>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("7 weeks").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn wrong_types_name_their_key() {
        let text = "max_connections = \"x\"\n[[upstream]]\nname = \"a\"\ninsecure = \"yes\"\n";
        for (key, at) in [
            ("max_connections", 18),
            ("upstream.insecure", text.len() - 6),
        ] {
            let message = name_the_key(text, Some(at), "invalid type");
            assert!(message.starts_with(&format!("`{key}`")), "{message}");
        }
        let named = name_the_key(text, Some(0), "unknown field `max_connections`");
        assert_eq!(named, "unknown field `max_connections`");
    }
}
