//! Typed config values, parsed once by serde at load: sizes, durations,
//! compiled repository/tag patterns, proxy networks, TLS file pairs.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A byte count written with a unit: `50GiB`, `500MB`, `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(pub u64);

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    /// Decimal (kB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB) units.
    fn from_str(s: &str) -> Result<Self, String> {
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
            Some(v) => Ok(ByteSize(v)),
        }
    }
}

/// A duration written with a unit: `500ms`, `30s`, `5m`, `2h`, `7d`; a bare
/// number is seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a duration like 30s, 5m, 2h or 7d");
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
        match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "" | "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            _ => None,
        }
        .map(HumanDuration)
        .ok_or_else(bad)
    }
}

/// Requests per unit of time: `20/s`, `600/m`, `1000/h`; kept per second.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct RequestRate(pub f64);

impl TryFrom<String> for RequestRate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for RequestRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a rate like 20/s, 600/m or 1000/h");
        let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let secs = match per.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(bad());
        }
        Ok(RequestRate(f64::from(n) / secs))
    }
}

/// Bytes per second: `50MiB/s` (the units of [`ByteSize`], then `/s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ByteRate(pub u64);

impl TryFrom<String> for ByteRate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for ByteRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a bandwidth like 50MiB/s or 10MB/s");
        let size = s.trim().strip_suffix("/s").ok_or_else(bad)?;
        size.parse::<ByteSize>()
            .map(|b| ByteRate(b.0))
            .map_err(|_| bad())
    }
}

/// Glob patterns (`*` and `?`) compiled at load, matched without
/// allocating on every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct PatternSet {
    patterns: Vec<Box<[u8]>>,
}

impl From<Vec<String>> for PatternSet {
    fn from(patterns: Vec<String>) -> Self {
        PatternSet {
            patterns: patterns
                .into_iter()
                .map(|p| p.into_bytes().into_boxed_slice())
                .collect(),
        }
    }
}

impl PatternSet {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, text: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, text.as_bytes()))
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Greedy with one backtrack point (the last `*`): linear in practice
    // and never exponential, whatever the pattern.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Host names that select an upstream, compiled at load: exact names
/// (`ghcr.mirror.example.com`) and a leading label followed by any domain
/// (`ghcr.*`). A port in the pattern or the request is ignored; case and a
/// trailing dot do not matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct HostPatterns {
    exact: Vec<String>,
    /// `ghcr.*` kept as `ghcr`.
    leading_label: Vec<String>,
}

impl TryFrom<Vec<String>> for HostPatterns {
    type Error = String;
    fn try_from(patterns: Vec<String>) -> Result<Self, String> {
        let mut set = HostPatterns::default();
        for p in patterns {
            let bad = |why: &str| format!("{p:?} {why}");
            let host = normalise_host(&p).ok_or_else(|| bad("is not a host name"))?;
            match host.strip_suffix(".*") {
                Some(label) if valid_label(label) => set.leading_label.push(label.to_owned()),
                Some(_) => return Err(bad("must be one label then .* (like ghcr.*)")),
                None if host.contains('*') => {
                    return Err(bad("may use * only as the rest of the name (like ghcr.*)"))
                }
                None if host.split('.').all(valid_label) => set.exact.push(host),
                None => return Err(bad("is not a host name")),
            }
        }
        Ok(set)
    }
}

impl HostPatterns {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.leading_label.is_empty()
    }

    /// Whether `host` (already [`normalise_host`]d) is one of the exact names.
    pub fn matches_exactly(&self, host: &str) -> bool {
        self.exact.iter().any(|e| e == host)
    }

    /// Whether `host` (normalised) starts with one of the leading labels
    /// and goes on with at least one more label.
    pub fn matches_leading_label(&self, host: &str) -> bool {
        host.split_once('.').is_some_and(|(first, rest)| {
            !rest.is_empty() && self.leading_label.iter().any(|l| l == first)
        })
    }

    /// Patterns both sets have, written as configured.
    pub fn overlap(&self, other: &HostPatterns) -> Option<String> {
        self.exact
            .iter()
            .find(|e| other.exact.contains(e))
            .cloned()
            .or_else(|| {
                self.leading_label
                    .iter()
                    .find(|l| other.leading_label.contains(l))
                    .map(|l| format!("{l}.*"))
            })
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `Host` header or authority as a bare lowercase name: port, brackets
/// of an IPv6 literal and a trailing dot removed. `None` for an empty or
/// malformed value.
pub fn normalise_host(value: &str) -> Option<String> {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        // [v6]:port
        rest.split_once(']')?.0
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => value,
        }
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.len() > 253 || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// An egress proxy for an upstream: `http://`, `https://`, `socks5://` or
/// `socks5h://` (names resolved by the proxy), credentials allowed in the
/// URL. The URL with its credentials is only handed to the HTTP client;
/// `Debug` and [`ProxyUrl::redacted`] show it without them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyUrl {
    url: url::Url,
}

impl TryFrom<String> for ProxyUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // The message never repeats the value: it may hold a password.
        let url = url::Url::parse(&s)
            .map_err(|e| format!("not a proxy URL like http://proxy:3128 ({e})"))?;
        if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
            return Err(format!(
                "proxy scheme {:?} is not http, https, socks5 or socks5h",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the proxy URL has no host".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err("a proxy URL is scheme://[user:password@]host[:port] only".into());
        }
        Ok(ProxyUrl { url })
    }
}

impl ProxyUrl {
    /// The URL with its credentials, for the HTTP client only.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The URL without user name or password, for logs.
    pub fn redacted(&self) -> String {
        let mut url = self.url.clone();
        let had = !url.username().is_empty() || url.password().is_some();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let shown = url.as_str().trim_end_matches('/').to_owned();
        if had {
            shown.replacen("://", "://<credentials>@", 1)
        } else {
            shown
        }
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which addresses an upstream's connections may use: Docker Hub counts
/// pulls per IPv4 address or IPv6 /64, so the choice matters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
    #[default]
    Any,
}

impl AddressFamily {
    pub fn admits(self, ip: IpAddr) -> bool {
        match self {
            AddressFamily::Any => true,
            AddressFamily::Ipv4 => ip.is_ipv4(),
            AddressFamily::Ipv6 => ip.is_ipv6(),
        }
    }
}

/// Who may read the admin API (`admin_read`): anyone who reaches it, or
/// only callers with the admin token. Unset, reads are open on the
/// metrics listener and need the token on the main one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRead {
    Open,
    Token,
}

/// An address or CIDR block, e.g. `10.0.0.0/8` or `::1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for ProxyNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
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

/// A PEM certificate chain and its key, served over TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> Result<u64, String> {
        s.parse::<ByteSize>().map(|b| b.0)
    }

    fn duration(s: &str) -> Result<Duration, String> {
        s.parse::<HumanDuration>().map(|d| d.0)
    }

    #[test]
    fn sizes() {
        assert_eq!(size("50GiB"), Ok(50 << 30));
        assert_eq!(size("500MB"), Ok(500_000_000));
        assert_eq!(size("1024"), Ok(1024));
        assert_eq!(size("2 mib"), Ok(2 << 20));
        assert!(size("0").is_err());
        assert!(size("lots").is_err());
        assert!(size("99999999999TiB").is_err());
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
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(duration("7 weeks").is_err());
        assert!(duration("").is_err());
        assert!(duration("99999999999999999999d").is_err());
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match(b"v*.*.*", b"v1.2.3"));
        assert!(!glob_match(b"v*.*.*", b"v1.2"));
        assert!(glob_match(b"*", b"latest"));
        assert!(glob_match(b"1.2?", b"1.25"));
        assert!(!glob_match(b"1.2?", b"1.2"));
        assert!(glob_match(b"sha-*", b"sha-abc"));
        assert!(!glob_match(b"latest", b"latest2"));
        assert!(glob_match(b"library/*", b"library/a/b"));
        assert!(glob_match(b"**a", b"xxa"));
        assert!(!glob_match(b"a*a*a*a*a*a*a*a*b", &[b'a'; 200]));
    }

    #[test]
    fn host_patterns() {
        let set = HostPatterns::try_from(vec![
            "ghcr.mirror.example.com:443".to_owned(),
            "Quay.*".to_owned(),
        ])
        .unwrap();
        let m = |h: &str| {
            let h = normalise_host(h).unwrap();
            (set.matches_exactly(&h), set.matches_leading_label(&h))
        };
        assert_eq!(m("GHCR.mirror.example.com:5000"), (true, false));
        assert_eq!(m("ghcr.mirror.example.com."), (true, false));
        assert_eq!(m("quay.localhost:5000"), (false, true));
        assert_eq!(m("quay.a.b"), (false, true));
        assert_eq!(m("quay"), (false, false));
        assert_eq!(m("quayx.localhost"), (false, false));
        assert_eq!(m("docker.mirror.example.com"), (false, false));
        assert_eq!(normalise_host("[::1]:5000").as_deref(), Some("::1"));
        for bad in ["*.example.com", "gh*cr.*", "a.*.b", "", "x/y"] {
            assert!(
                HostPatterns::try_from(vec![bad.to_owned()]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn proxy_urls_keep_credentials_out_of_sight() {
        let p = ProxyUrl::try_from("socks5h://me:s3cret@proxy.example:1080".to_owned()).unwrap();
        assert_eq!(p.expose(), "socks5h://me:s3cret@proxy.example:1080");
        assert_eq!(p.redacted(), "socks5h://<credentials>@proxy.example:1080");
        assert!(!format!("{p:?}").contains("s3cret"));
        let plain = ProxyUrl::try_from("http://proxy:3128".to_owned()).unwrap();
        assert_eq!(plain.redacted(), "http://proxy:3128");
        for bad in ["ftp://x:1", "http://", "nope", "http://u:s3cret@x:1/path"] {
            let e = ProxyUrl::try_from(bad.to_owned()).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!("20/s".parse::<RequestRate>(), Ok(RequestRate(20.0)));
        assert_eq!("120/m".parse::<RequestRate>(), Ok(RequestRate(2.0)));
        assert!("0/s".parse::<RequestRate>().is_err());
        assert!("20".parse::<RequestRate>().is_err());
        assert!("20/d".parse::<RequestRate>().is_err());
        assert_eq!("50MiB/s".parse::<ByteRate>(), Ok(ByteRate(50 << 20)));
        assert_eq!("1GiB/s".parse::<ByteRate>(), Ok(ByteRate(1 << 30)));
        assert!("50MiB".parse::<ByteRate>().is_err());
    }

    #[test]
    fn patterns() {
        let set = PatternSet::from(vec!["library/*".to_owned(), "v?.*".to_owned()]);
        assert!(set.matches("library/alpine"));
        assert!(set.matches("v1.2"));
        assert!(!set.matches("other/alpine"));
        assert!(!PatternSet::default().matches("x"));
        // Linear on hostile input.
        let evil = PatternSet::from(vec!["*a*a*a*a*a*a*a*a*b".to_owned()]);
        assert!(!evil.matches(&"a".repeat(10_000)));
    }
}
