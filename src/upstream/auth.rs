//! Registry authentication: the `WWW-Authenticate` challenge parser, token
//! fetches from the realm, and the per-scope token cache.
//!
//! What is trusted, and why: only the registry's own origin (scheme, host
//! and port of the configured upstream URL) may challenge us. A redirect
//! target (a CDN) that answers 401 could otherwise name a realm of its
//! choosing and receive the configured credentials (containerd
//! CVE-2020-15157). A challenge is validated before it is kept, and
//! forgotten when answering it fails, so one bad 401 cannot disable an
//! upstream until restart.

use super::UpstreamError;
use crate::coalesce::{self, Flights, Slot};
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use url::{Origin, Url};

/// Token responses are a few KiB of JSON; anything larger is a broken or
/// hostile token service, and reading it whole would cost that much memory
/// per concurrent fetch.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Registry tokens (JWTs) are 1–4 KiB; the token is kept in memory per
/// scope and sent in a header on every request, so it is bounded too.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A token service may ask for any lifetime; past a day we ask again
/// anyway (and an absurd `expires_in` cannot overflow the cache's clock).
const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

use super::pool::CredentialPool;
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

/// An `Authorization` and the pool account it used (`None`: anonymous).
pub type Authorized = (Authorization, Option<usize>);

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

/// A challenge that passed validation: the only kind that is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    Bearer { realm: Url, service: Option<String> },
    Basic,
}

/// Holds the challenge of each origin that may challenge us (today only the
/// registry's own) and a token per origin and repository scope; concurrent
/// misses for one scope share one token fetch.
pub struct Authenticator {
    http: reqwest::Client,
    /// The upstream's name, for metric labels.
    upstream: String,
    /// The configured upstream URL: its origin is the only one whose 401s
    /// are challenges, and its scheme decides whether an http realm is
    /// acceptable.
    registry: Url,
    /// The accounts tokens are asked for with, in turn.
    pool: CredentialPool,
    /// Per origin, so that no response from one host can replace the
    /// challenge another host made.
    challenges: RwLock<HashMap<Origin, Accepted>>,
    /// Keyed by `<origin> <credential> <scope>`.
    tokens: Cache<String, Arc<Token>>,
    /// Token fetches in the air, by the same key.
    fetching: Flights<String, Slot<Arc<Token>, UpstreamError>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The whole token exchange (connect, headers and body) must end within
    /// this (`Timings::token_timeout`): a realm that trickles its answer
    /// would otherwise hold every request waiting on the token, and the
    /// stale cache only answers once the fetch has failed.
    token_timeout: Duration,
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
        registry: Url,
        credentials: Vec<Credentials>,
        metrics: Arc<crate::metrics::Metrics>,
        token_timeout: Duration,
    ) -> Self {
        Authenticator {
            token_timeout,
            metrics,
            http,
            upstream,
            registry,
            pool: CredentialPool::new(credentials),
            challenges: RwLock::new(HashMap::new()),
            fetching: Flights::default(),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    fn remembered(&self, origin: &Origin) -> Option<Accepted> {
        self.challenges
            .read()
            .ok()
            .and_then(|c| c.get(origin).cloned())
    }

    /// Forgets `origin`'s challenge if it is still `failed` (a concurrent
    /// request may already have stored a newer one), so the next request
    /// goes out without a token and the upstream can challenge afresh.
    fn forget(&self, origin: &Origin, failed: &Accepted) {
        if let Ok(mut map) = self.challenges.write() {
            if map.get(origin) == Some(failed) {
                map.remove(origin);
            }
        }
    }

    /// Which account is in use, and when one is spent.
    pub fn pool(&self) -> &CredentialPool {
        &self.pool
    }

    fn token_key(origin: &Origin, credential: Option<usize>, scope: &str) -> String {
        let credential = credential.map_or_else(|| "-".to_owned(), |i| i.to_string());
        format!("{} {credential} {scope}", origin.ascii_serialization())
    }

    /// The header to send to the registry before any 401 has been seen for
    /// this scope: the cached token, or a fresh one if the registry told us
    /// its realm before.
    /// Also says which account of the pool it came from.
    pub async fn authorization(&self, scope: &str) -> Result<Authorized, UpstreamError> {
        let origin = self.registry.origin();
        match self.remembered(&origin) {
            None => Ok((Authorization::None, None)),
            Some(challenge) => self.answer(&origin, &challenge, scope).await,
        }
    }

    /// Answers a 401 that the response from `from` carried: validates and
    /// remembers the challenge, then gets a new token for scope. A 401 from
    /// any origin but the registry's is an error, never a challenge.
    pub async fn after_unauthorized(
        &self,
        from: &Url,
        header: Option<&str>,
        scope: &str,
    ) -> Result<Authorized, UpstreamError> {
        let origin = from.origin();
        // The call pipeline already turns a redirect target's 401 into an
        // error; this guard keeps the rule true whoever calls us.
        if origin != self.registry.origin() {
            return Err(UpstreamError::Protocol(
                "a redirect target answered 401 Unauthorized".into(),
            ));
        }
        let challenge = header.and_then(parse_challenge).ok_or(UpstreamError::Auth(
            "upstream sent 401 without a usable challenge",
        ))?;
        let challenge = self.accept(challenge)?;
        if let Ok(mut map) = self.challenges.write() {
            map.insert(origin.clone(), challenge.clone());
        }
        self.tokens
            .invalidate(&Self::token_key(&origin, self.pool.current(), scope))
            .await;
        self.answer(&origin, &challenge, scope).await
    }

    /// Checks a challenge before anything is sent to its realm: the realm
    /// must be an absolute http(s) URL without user info, and https unless
    /// the registry itself is plain http (a lab registry).
    pub(crate) fn accept(&self, challenge: Challenge) -> Result<Accepted, UpstreamError> {
        let (realm, service) = match challenge {
            Challenge::Basic => return Ok(Accepted::Basic),
            Challenge::Bearer { realm, service } => (realm, service),
        };
        let refuse = |why: &'static str| {
            tracing::warn!(upstream = %self.upstream, reason = why, "refused a token realm");
            UpstreamError::Protocol(format!("upstream challenge refused: {why}"))
        };
        let url = Url::parse(&realm).map_err(|_| refuse("token realm is not a URL"))?;
        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => self.registry.scheme() == "http",
            _ => false,
        };
        if !scheme_ok {
            return Err(refuse("token realm must be https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(refuse("token realm has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("token realm carries user info"));
        }
        Ok(Accepted::Bearer {
            realm: url,
            service,
        })
    }

    async fn answer(
        &self,
        origin: &Origin,
        challenge: &Accepted,
        scope: &str,
    ) -> Result<Authorized, UpstreamError> {
        let credential = self.pool.current();
        let result = match challenge {
            Accepted::Basic => match credential.and_then(|i| self.pool.get(i)) {
                Some(c) => Ok(Authorization::Basic(c.clone())),
                None => Err(UpstreamError::Auth(
                    "upstream wants credentials and none are configured",
                )),
            },
            Accepted::Bearer { realm, service } => self
                .token(
                    Self::token_key(origin, credential, scope),
                    realm,
                    service.as_deref(),
                    scope,
                    credential,
                )
                .await
                .map(|token| Authorization::Bearer(token.value.clone())),
        };
        if result.is_err() {
            self.forget(origin, challenge);
        }
        result.map(|a| (a, credential))
    }

    /// The cached token for `key`, or one fetch shared by every request
    /// that needs it now.
    async fn token(
        &self,
        key: String,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
        credential: Option<usize>,
    ) -> Result<Arc<Token>, UpstreamError> {
        if let Some(token) = self.tokens.get(&key).await {
            return Ok(token);
        }
        let fetch = || async {
            let token = self.fetch_token(realm, service, scope, credential).await?;
            // Cached before the flight ends, so nobody arriving in between
            // fetches again.
            self.tokens.insert(key.clone(), Arc::clone(&token)).await;
            Ok(token)
        };
        // Every waiter asks for the same scope, so a failure holds for all.
        let (result, _) = coalesce::once(
            &self.fetching,
            &key,
            self.token_timeout * 2,
            |_| false,
            fetch,
        )
        .await;
        result
    }

    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
        credential: Option<usize>,
    ) -> Result<Arc<Token>, UpstreamError> {
        let exchange = self.exchange(realm, service, scope, credential);
        let outcome = tokio::time::timeout(self.token_timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout));
        let result = match &outcome {
            Ok(_) => "ok",
            Err(UpstreamError::Auth(_)) => "refused",
            Err(_) => "error",
        };
        self.metrics
            .token_fetches
            .with_label_values(&[&self.upstream, result])
            .inc();
        if let Err(e) = &outcome {
            tracing::warn!(upstream = %self.upstream, scope, error = %e, "token fetch failed");
        }
        outcome
    }

    /// One token request and its body, unbounded in time (the caller bounds
    /// it) but bounded in size.
    async fn exchange(
        &self,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
        credential: Option<usize>,
    ) -> Result<Arc<Token>, UpstreamError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = credential.and_then(|i| self.pool.get(i)) {
            req = req.basic_auth(&c.username, Some(c.password.expose()));
        }
        let mut resp = req.send().await.map_err(UpstreamError::from_reqwest)?;
        let status = resp.status();
        // A token service that is down or rate-limiting is an outage (the
        // cache answers stale), not a refusal of our credentials.
        if status.is_server_error() || status.as_u16() == 429 {
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
        let too_large = UpstreamError::TokenService("token response is larger than 64 KiB");
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_TOKEN_RESPONSE_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::TokenService("token response is not JSON"))?;
        let value = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .ok_or(UpstreamError::TokenService("token response has no token"))?;
        if value.len() > MAX_TOKEN_BYTES {
            return Err(UpstreamError::TokenService("token is longer than 16 KiB"));
        }
        // It goes into an Authorization header as is: visible ASCII only,
        // so it can neither fail to encode nor smuggle a header.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UpstreamError::TokenService("token is not printable ASCII"));
        }
        // Stop using a token a little before the upstream does; the spec's
        // default lifetime is 60 s.
        let expires_in = parsed
            .expires_in
            .unwrap_or(60)
            .clamp(1, MAX_TOKEN_LIFETIME_SECS);
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

    fn authenticator(registry: &str) -> Authenticator {
        let registry = Url::parse(registry).expect("registry URL");
        Authenticator::new(
            reqwest::Client::new(),
            "test".into(),
            registry,
            Vec::new(),
            Arc::default(),
            Duration::from_secs(10),
        )
    }

    fn bearer(realm: &str) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: None,
        }
    }

    #[test]
    fn realms_are_validated_before_they_are_kept() {
        let https = authenticator("https://registry.example");
        assert!(https.accept(bearer("https://auth.example/token")).is_ok());
        for bad in [
            "",
            "/token",
            "not a url",
            "http://auth.example/token",
            "ftp://auth.example/token",
            "file:///etc/passwd",
            "https://user:pass@auth.example/token",
        ] {
            assert!(https.accept(bearer(bad)).is_err(), "{bad:?} accepted");
        }
        // A plain-http lab registry may use a plain-http realm.
        let http = authenticator("http://127.0.0.1:5000");
        assert!(http.accept(bearer("http://127.0.0.1:5000/token")).is_ok());
        assert!(matches!(http.accept(Challenge::Basic), Ok(Accepted::Basic)));
    }

    #[tokio::test]
    async fn a_challenge_from_another_origin_is_neither_answered_nor_kept() {
        let auth = authenticator("https://registry.example");
        let cdn = Url::parse("https://cdn.example/blob?sig=x").expect("url");
        let header = r#"Bearer realm="https://cdn.example/token",service="x""#;
        let scope = "repository:x:pull";
        assert!(auth
            .after_unauthorized(&cdn, Some(header), scope)
            .await
            .is_err());
        assert!(matches!(
            auth.authorization(scope).await,
            Ok((Authorization::None, None))
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            name: "u".into(),
            username: "u".into(),
            password: Secret::new("hunter2".into()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Authorization::Bearer(Secret::new("tok".into()))).contains("tok"));
    }
}
