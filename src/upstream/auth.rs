//! Registry authentication: the `WWW-Authenticate` challenge parser, token
//! fetches from the realm, and the per-scope token cache.

use super::UpstreamError;
use moka::future::Cache;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use crate::config::{Credentials, Secret};

/// What an upstream asked for in its 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// Returns `None` for schemes we cannot answer.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
    })
}

/// auth-params: `key=value` or `key="quoted, value"`, comma separated.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct Token {
    value: Secret,
    lifetime: Duration,
}

/// How a request gets its `Authorization` header.
#[derive(Clone, Debug)]
pub enum Authorization {
    None,
    Bearer(Secret),
    Basic(Credentials),
}

impl Authorization {
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Authorization::None => req,
            Authorization::Bearer(token) => req.bearer_auth(token.expose()),
            Authorization::Basic(c) => req.basic_auth(&c.username, Some(c.password.expose())),
        }
    }
}

struct TokenExpiry;

impl moka::Expiry<String, Arc<Token>> for TokenExpiry {
    fn expire_after_create(&self, _: &String, token: &Arc<Token>, _: Instant) -> Option<Duration> {
        Some(token.lifetime)
    }
}

/// Holds the upstream's last challenge and a token per repository scope;
/// concurrent misses for one scope share one token fetch.
pub struct Authenticator {
    http: reqwest::Client,
    /// The upstream's name, for metric labels.
    upstream: String,
    credentials: Option<Credentials>,
    challenge: RwLock<Option<Challenge>>,
    tokens: Cache<String, Arc<Token>>,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Authenticator {
    pub fn new(
        http: reqwest::Client,
        upstream: String,
        credentials: Option<Credentials>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Authenticator {
            metrics,
            http,
            upstream,
            credentials,
            challenge: RwLock::new(None),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    fn remembered(&self) -> Option<Challenge> {
        self.challenge.read().ok().and_then(|c| c.clone())
    }

    /// The header to send before any 401 has been seen for this scope: the
    /// cached token, or a fresh one if the upstream told us its realm before.
    pub async fn authorization(&self, scope: &str) -> Result<Authorization, UpstreamError> {
        match self.remembered() {
            None => Ok(Authorization::None),
            Some(challenge) => self.answer(&challenge, scope).await,
        }
    }

    /// Answers a 401: remembers the challenge and gets a new token for scope.
    pub async fn after_unauthorized(
        &self,
        header: Option<&str>,
        scope: &str,
    ) -> Result<Authorization, UpstreamError> {
        let challenge = header.and_then(parse_challenge).ok_or(UpstreamError::Auth(
            "upstream sent 401 without a usable challenge",
        ))?;
        if let Ok(mut slot) = self.challenge.write() {
            *slot = Some(challenge.clone());
        }
        self.tokens.invalidate(scope).await;
        self.answer(&challenge, scope).await
    }

    async fn answer(
        &self,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<Authorization, UpstreamError> {
        match challenge {
            Challenge::Basic => match &self.credentials {
                Some(c) => Ok(Authorization::Basic(c.clone())),
                None => Err(UpstreamError::Auth(
                    "upstream wants credentials and none are configured",
                )),
            },
            Challenge::Bearer { realm, service } => {
                let token = self
                    .tokens
                    .try_get_with(
                        scope.to_owned(),
                        self.fetch_token(realm, service.as_deref(), scope),
                    )
                    .await
                    .map_err(|e: Arc<UpstreamError>| (*e).clone())?;
                Ok(Authorization::Bearer(token.value.clone()))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Arc<Token>, UpstreamError> {
        let mut url =
            url::Url::parse(realm).map_err(|_| UpstreamError::Auth("token realm is not a URL"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(c.password.expose()));
        }
        let sent = req.send().await;
        let result = match &sent {
            Ok(r) if r.status().is_success() => "ok",
            Ok(_) => "refused",
            Err(_) => "error",
        };
        self.metrics
            .token_fetches
            .with_label_values(&[&self.upstream, result])
            .inc();
        let resp = sent.map_err(UpstreamError::from_reqwest)?;
        let status = resp.status();
        // A token service that is down or rate-limiting is an outage (the
        // cache answers stale), not a refusal of our credentials.
        if status.is_server_error() || status.as_u16() == 429 {
            tracing::warn!(status = status.as_u16(), scope, "token service failing");
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), scope, "token request refused");
            return Err(UpstreamError::Auth(if status.as_u16() == 401 {
                "token service refused the configured credentials"
            } else {
                "token service answered with an error"
            }));
        }
        let body = resp.bytes().await.map_err(UpstreamError::from_reqwest)?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::Auth("token response is not JSON"))?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .ok_or(UpstreamError::Auth("token response has no token"))?;
        // Stop using a token a little before the upstream does; the spec's
        // default lifetime is 60 s.
        let expires_in = parsed.expires_in.unwrap_or(60).max(1);
        let margin = (expires_in / 10).clamp(1, 30);
        tracing::debug!(scope, expires_in, "fetched upstream token");
        Ok(Arc::new(Token {
            value: Secret::new(value),
            lifetime: Duration::from_secs(expires_in.saturating_sub(margin).max(1)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
    }

    #[test]
    fn parses_unquoted_and_odd_spacing() {
        let h = "bearer  service=svc, realm=http://x/token ,scope=\"a:b,c:pull\"";
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "http://x/token".into(),
                service: Some("svc".into()),
            })
        );
    }

    #[test]
    fn basic_and_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "realm is required"
        );
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            username: "u".into(),
            password: Secret::new("hunter2".into()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Authorization::Bearer(Secret::new("tok".into()))).contains("tok"));
    }
}
