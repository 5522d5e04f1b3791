//! Optional client authentication: htpasswd users (bcrypt) and static
//! bearer tokens. Docker's daemon cannot authenticate to a mirror, so this
//! protects mirrors used by containerd, Podman, skopeo and CI tools; a
//! Docker-facing mirror is protected at the network level instead.

use crate::config::Secret;
use http::HeaderMap;
use moka::future::Cache;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
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
}

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
        Ok(Some(ClientAuth {
            users,
            tokens,
            verified: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }))
    }

    /// Whether the request carries valid credentials.
    pub async fn allows(&self, headers: &HeaderMap) -> bool {
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
        let Some(hash) = self.users.get(&user) else {
            return false;
        };
        let key = sha256(format!("{user}:{password}").as_bytes());
        if self.verified.get(&key).await.is_some() {
            return true;
        }
        let hash = hash.expose().to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
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
        assert!(ClientAuth::load(Some(&dir.path().join("htpasswd")), None).is_err());
    }
}
