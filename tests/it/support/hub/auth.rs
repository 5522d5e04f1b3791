//! The hub's auth: the token endpoint (`/token`) with per-repository scopes
//! and Basic credentials for private repositories, and the bearer checks and
//! challenges of the registry API.

use super::faults::Fault;
use super::server::{json, oci_error, signature, Body};
use super::{lock, Kind, State, TokenRequest, SERVICE};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::{SystemTime, UNIX_EPOCH};

/// `GET /token?service=…&scope=repository:<name>:pull`.
pub fn token(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let private = lock(&state.private).clone();
    let account = basic.as_ref().and_then(|(user, pass)| {
        lock(&state.accounts)
            .get(user)
            .filter(|a| a.password == *pass)
            .map(|_| user.clone())
    });
    let password_matched = account.is_some()
        || basic
            .as_ref()
            .is_some_and(|(user, pass)| private.values().any(|(u, p)| u == user && p == pass));
    lock(&state.token_requests).push(TokenRequest {
        scopes: scopes.clone(),
        service: service.clone(),
        basic_user: basic.as_ref().map(|(user, _)| user.clone()),
        password_matched,
    });
    if service.as_deref() != Some(SERVICE) {
        return json(
            StatusCode::BAD_REQUEST,
            br#"{"details":"service must be hub.test"}"#.to_vec(),
        );
    }
    let repos: Vec<String> = scopes
        .iter()
        .filter_map(|s| s.strip_prefix("repository:")?.rsplit_once(':'))
        .filter(|(_, actions)| actions.split(',').any(|a| a == "pull"))
        .map(|(name, _)| name.to_string())
        .collect();
    let allowed = repos.iter().all(|repo| match private.get(repo) {
        None => true,
        Some(creds) => basic.as_ref() == Some(creds),
    });
    if !allowed {
        state.counters.add(Kind::TokenRefused, 1);
        let mut response = json(
            StatusCode::UNAUTHORIZED,
            br#"{"details":"incorrect username or password"}"#.to_vec(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hub.test\""),
        );
        return response;
    }
    let mut tokens = lock(&state.tokens);
    let n = tokens.len();
    let token = format!("hubtoken-{n}-{}", &signature(&format!("{n}{query}"))[..12]);
    tokens.insert(token.clone(), repos);
    drop(tokens);
    if let Some(user) = account {
        lock(&state.token_accounts).insert(token.clone(), user);
    }
    state.counters.add(Kind::TokenFetch, 1);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": rfc3339_now(),
    });
    json(StatusCode::OK, serde_json::to_vec(&body).expect("json"))
}

/// Whether `req` carries a bearer token that opens `repo` (`None`: any
/// token the hub issued, as `/v2/` asks).
pub fn authorized(state: &State, req: &Request<Incoming>, repo: Option<&str>) -> bool {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    let tokens = lock(&state.tokens);
    match (token.and_then(|t| tokens.get(&t)), repo) {
        (Some(_), None) => true,
        (Some(repos), Some(repo)) => repos.iter().any(|r| r == repo),
        (None, _) => false,
    }
}

/// The account whose token `req` carries, if any.
pub fn account_of(state: &State, req: &Request<Incoming>) -> Option<String> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, token)| token.trim().to_string())?;
    lock(&state.token_accounts).get(&token).cloned()
}

pub fn challenge(state: &State, repo: Option<&str>) -> Response<Body> {
    state.counters.add(Kind::Unauthorized, 1);
    let injected = lock(&state.faults)
        .matching(None)
        .into_iter()
        .find_map(|fault| match fault {
            Fault::Challenge(value) => Some(value),
            _ => None,
        });
    let value = injected.unwrap_or_else(|| {
        let mut value = format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\"",
            state.registry_url
        );
        if let Some(repo) = repo {
            value.push_str(&format!(",scope=\"repository:{repo}:pull\""));
        }
        value
    });
    let mut response = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).expect("challenge header"),
    );
    response
}

/// Basic credentials as (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Standard base64 with padding; `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no chrono).
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
