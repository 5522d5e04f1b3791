//! Optional client authentication: htpasswd users (bcrypt) and static
//! bearer tokens. Docker's daemon cannot authenticate to a mirror, so this
//! protects mirrors used by containerd, Podman, skopeo and CI tools; a
//! Docker-facing mirror is protected at the network level instead.

use crate::config::Secret;
use http::HeaderMap;
use moka::future::Cache;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a verified password is remembered: bcrypt is deliberately slow
/// (tens of milliseconds), far too slow to run on every blob request.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

pub struct ClientAuth {
    /// user → bcrypt hash
    users: HashMap<String, Secret>,
    /// sha256 of each accepted token
    tokens: Vec<[u8; 32]>,
    /// sha256 of `user:password` pairs that verified recently
    verified: Cache<[u8; 32], ()>,
    /// Verified against for unknown users.
    dummy_hash: Secret,
    /// Recent failed attempts per client address.
    failures: Cache<IpAddr, u32>,
    /// Attempts within [`FAILURE_WINDOW`] before a client is turned away
    /// unheard.
    max_failures: u32,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why the client credential files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} line {line}: {problem}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: &'static str,
    },
    #[error("cannot prepare password verification")]
    Dummy,
}

/// What [`ClientAuth::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many failed attempts from this client lately.
    Throttled,
}

/// How long failed attempts are remembered (and a throttled client waits).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

fn read(path: &Path) -> Result<String, ClientAuthError> {
    std::fs::read_to_string(path).map_err(|source| ClientAuthError::Read {
        path: path.to_owned(),
        source,
    })
}

impl ClientAuth {
    /// Reads the files; `None` when neither is configured (no client auth).
    pub fn load(
        htpasswd: Option<&Path>,
        tokens_file: Option<&Path>,
        max_failures: u32,
    ) -> Result<Option<ClientAuth>, ClientAuthError> {
        if htpasswd.is_none() && tokens_file.is_none() {
            return Ok(None);
        }
        let mut users = HashMap::new();
        if let Some(path) = htpasswd {
            let text = read(path)?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let syntax = |problem| ClientAuthError::Syntax {
                    path: path.to_owned(),
                    line: n + 1,
                    problem,
                };
                let (user, hash) = line
                    .split_once(':')
                    .ok_or_else(|| syntax("expected user:hash"))?;
                if !hash.starts_with("$2") {
                    return Err(syntax("only bcrypt hashes are accepted (htpasswd -B)"));
                }
                users.insert(user.to_owned(), Secret::new(hash.to_owned()));
            }
        }
        let mut tokens = Vec::new();
        if let Some(path) = tokens_file {
            let text = read(path)?;
            tokens = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|t| sha256(t.as_bytes()))
                .collect();
        }
        // A hash of something nobody knows, at the cost the real ones use.
        let cost = users
            .values()
            .find_map(|h| h.expose().get(4..6).and_then(|c| c.parse().ok()))
            .unwrap_or(bcrypt::DEFAULT_COST);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dummy = hex::encode(sha256(format!("{nanos}:{}", std::process::id()).as_bytes()));
        let dummy_hash = bcrypt::hash(dummy, cost)
            .map(Secret::new)
            .map_err(|_| ClientAuthError::Dummy)?;
        Ok(Some(ClientAuth {
            users,
            tokens,
            dummy_hash,
            max_failures,
            failures: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            verified: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }))
    }

    /// Whether the request from `client` carries valid credentials; a
    /// client that keeps failing is turned away for a while without any
    /// password being checked.
    pub async fn check(&self, headers: &HeaderMap, client: IpAddr) -> Verdict {
        let failures = self.failures.get(&client).await.unwrap_or(0);
        if failures >= self.max_failures {
            return Verdict::Throttled;
        }
        if self.allows(headers).await {
            return Verdict::Allowed;
        }
        // Only requests that tried count: a client's first, bare request
        // is how it learns it must authenticate.
        if headers.contains_key(http::header::AUTHORIZATION) {
            self.failures.insert(client, failures + 1).await;
        }
        Verdict::Denied
    }

    async fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let presented = sha256(rest.trim().as_bytes());
            return self.tokens.contains(&presented);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Some((user, password)) = decode_basic(rest.trim()) else {
            return false;
        };
        // Docker and containerd answer a Basic challenge with Basic: a token
        // is accepted as the password (any user name), as with `docker login`.
        if self.tokens.contains(&sha256(password.as_bytes())) {
            return true;
        }
        let key = sha256(format!("{user}:{password}").as_bytes());
        let known = self.users.get(&user);
        if known.is_some() && self.verified.get(&key).await.is_some() {
            return true;
        }
        // An unknown user costs one bcrypt verification too, so the answer's
        // timing does not tell which users exist.
        let hash = known.unwrap_or(&self.dummy_hash).expose().to_owned();
        let verified =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let ok = verified && known.is_some();
        if ok {
            self.verified.insert(key, ()).await;
        }
        ok
    }
}

/// `base64(user:password)` → (user, password).
fn decode_basic(b64: &str) -> Option<(String, String)> {
    let bytes = base64_decode(b64)?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_users_cost_a_verification_at_the_real_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 5).unwrap();
        std::fs::write(&path, format!("ci:{hash}\n")).unwrap();
        let auth = ClientAuth::load(Some(&path), None, 10).unwrap().unwrap();
        // The dummy hash is verified for unknown users: same algorithm and
        // cost, so both take as long.
        assert_eq!(&auth.dummy_hash.expose()[..7], &hash[..7]);
        let basic = |user: &str| {
            let mut h = HeaderMap::new();
            let b64 = base64_encode(format!("{user}:pw").as_bytes());
            h.insert(
                http::header::AUTHORIZATION,
                format!("Basic {b64}").parse().unwrap(),
            );
            h
        };
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(auth.check(&basic("ci"), client).await, Verdict::Allowed);
        assert_eq!(auth.check(&basic("nobody"), client).await, Verdict::Denied);
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while out.len() % 4 != 0 {
            out.push('=');
        }
        out
    }

    #[test]
    fn decodes_basic_credentials() {
        // "user:pa:ss" – passwords may contain colons.
        assert_eq!(
            decode_basic("dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(decode_basic("!!!"), None);
        assert_eq!(base64_decode("aGk"), Some(b"hi".to_vec()));
    }

    #[tokio::test]
    async fn checks_htpasswd_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("tokens"), "# ci\ntok-123\n").unwrap();
        let auth = ClientAuth::load(
            Some(&dir.path().join("htpasswd")),
            Some(&dir.path().join("tokens")),
            10,
        )
        .unwrap()
        .unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        // alice:secret, alice:wrong
        assert!(auth.allows(&with("Basic YWxpY2U6c2VjcmV0")).await);
        assert!(auth.allows(&with("Basic YWxpY2U6c2VjcmV0")).await, "cached");
        assert!(!auth.allows(&with("Basic YWxpY2U6d3Jvbmc=")).await);
        assert!(auth.allows(&with("Bearer tok-123")).await);
        assert!(!auth.allows(&with("Bearer tok-124")).await);
        // "ci:tok-123" — a token given as a Basic password.
        assert!(auth.allows(&with("Basic Y2k6dG9rLTEyMw==")).await);
        assert!(!auth.allows(&HeaderMap::new()).await);
    }

    #[test]
    fn refuses_non_bcrypt_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("htpasswd"), "bob:{SHA}abc\n").unwrap();
        assert!(ClientAuth::load(Some(&dir.path().join("htpasswd")), None, 10).is_err());
    }
}
