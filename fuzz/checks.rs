//! The invariants every fuzz target checks, in one file shared by the
//! cargo-fuzz targets (`fuzz_targets/*.rs`, nightly, coverage-guided) and
//! the stable smoke test the main suite runs (`tests/it/fuzz_smoke.rs`,
//! seeds plus deterministic mutations), so that CI and a real fuzzing run
//! assert the same things. Each function takes arbitrary bytes; a panic is
//! a finding.

// Each fuzz binary calls only its own target.
#![allow(dead_code)]

use pullthrough::oci::{Digest, Reference, RepoName, Tag, MANIFEST_MEDIA_TYPES};
use pullthrough::server::{parse_range, parse_route, RangeRequest, Route};

/// A target: arbitrary bytes in, a panic on a broken invariant.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and seed folder.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_parser", request_parser),
    ("challenge", challenge),
    ("accept", accept),
    ("config", config),
];

// ---------------------------------------------------------------------------
// request_parser: paths (`parse_route`), repository names, tags,
// references, digests and `Range` headers. Anything accepted displays back
// to exactly its input (so nothing was normalised into a different path),
// nothing accepted can climb out of a directory, and every range stays
// within the blob it was resolved against.

/// Blob sizes every Range input is resolved against, besides one taken
/// from the input itself.
const TOTALS: [u64; 7] = [0, 1, 2, 100, 4096, u64::MAX - 1, u64::MAX];

pub fn request_parser(data: &[u8]) {
    // The first 8 bytes, when present, also give a blob size.
    let derived_total = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let text = String::from_utf8_lossy(data);
    check_route(&text);
    check_route(&format!("/v2/{text}"));
    check_names(&text);
    for total in TOTALS.into_iter().chain(derived_total) {
        check_range(&text, total);
        check_range(&format!("bytes={text}"), total);
    }
}

fn check_route(path: &str) {
    let Ok(route) = parse_route(path) else {
        return;
    };
    // A typed route re-serialises to the exact path it came from.
    let rebuilt = match &route {
        Route::Base => None,
        Route::Healthz => Some("/healthz".to_owned()),
        Route::Readyz => Some("/readyz".to_owned()),
        Route::Metrics => Some("/metrics".to_owned()),
        // The page, its assets and the admin API: fixed paths, or names and
        // digests validated like the registry routes'.
        Route::Page => Some("/".to_owned()),
        Route::Live => Some("/ui/live".to_owned()),
        Route::Search => Some("/v1/search".to_owned()),
        Route::SearchPing => Some("/v1/_ping".to_owned()),
        Route::Asset(_) => {
            assert!(path.starts_with("/ui/"), "asset route from {path:?}");
            None
        }
        Route::Api(_) => {
            assert!(path.starts_with("/api/v1/"), "api route from {path:?}");
            None
        }
        Route::Manifest { name, reference } => {
            assert_safe_name(name);
            Some(format!("/v2/{name}/manifests/{reference}"))
        }
        Route::Blob { name, digest } => {
            assert_safe_name(name);
            assert_safe_digest(digest);
            Some(format!("/v2/{name}/blobs/{digest}"))
        }
        Route::TagsList { name } => {
            assert_safe_name(name);
            Some(format!("/v2/{name}/tags/list"))
        }
        Route::Referrers { name, digest } => {
            assert_safe_name(name);
            assert_safe_digest(digest);
            Some(format!("/v2/{name}/referrers/{digest}"))
        }
    };
    match rebuilt {
        Some(rebuilt) => assert_eq!(rebuilt, path, "route {route:?}"),
        None => assert!(
            matches!(route, Route::Asset(_) | Route::Api(_)) || path == "/v2/" || path == "/v2",
            "base route from {path:?}"
        ),
    }
}

fn check_names(text: &str) {
    if let Ok(name) = text.parse::<RepoName>() {
        assert_eq!(name.as_str(), text);
        assert_safe_name(&name);
        let reparsed: RepoName = name.to_string().parse().expect("a name re-parses");
        assert_eq!(reparsed, name);
    }
    if let Ok(tag) = text.parse::<Tag>() {
        assert_eq!(tag.as_str(), text);
        assert!(
            !tag.as_str().is_empty() && tag.as_str().len() <= 128,
            "{tag:?}"
        );
        assert!(!tag.as_str().starts_with(['.', '-']), "{tag:?}");
        assert!(!tag.as_str().contains(['/', '\\', '%', ':']), "{tag:?}");
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text, "a digest displays as its input");
        assert_safe_digest(&digest);
    }
    if let Ok(reference) = text.parse::<Reference>() {
        assert_eq!(
            reference.to_string(),
            text,
            "a reference displays as its input"
        );
        if let Reference::Digest(digest) = &reference {
            assert_safe_digest(digest);
        }
    }
}

/// Names become upstream URL paths and index keys: no component may be
/// empty, `.` or `..`, and no byte outside the grammar's alphabet.
fn assert_safe_name(name: &RepoName) {
    let s = name.as_str();
    assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{s:?}"
    );
    for component in s.split('/') {
        assert!(!component.is_empty(), "{s:?}");
        assert!(component != "." && component != "..", "{s:?}");
        assert!(!component.starts_with(['.', '_', '-']), "{s:?}");
    }
}

/// A digest's hex names a file in the cache: exactly 64 lowercase hex.
fn assert_safe_digest(digest: &Digest) {
    let hex = digest.hex();
    assert_eq!(hex.len(), 64, "{digest:?}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{digest:?}"
    );
    assert_eq!(digest.to_string(), format!("sha256:{hex}"));
}

fn check_range(header: &str, total: u64) {
    assert_eq!(parse_range(None, total), RangeRequest::Full);
    match parse_range(Some(header), total) {
        RangeRequest::Full => {}
        RangeRequest::Unsatisfiable => {}
        RangeRequest::Partial(span) => {
            assert!(total > 0, "a range of an empty blob: {header:?}");
            assert!(span.start <= span.end, "{header:?} of {total}: {span:?}");
            assert!(span.end < total, "{header:?} of {total}: {span:?}");
            assert!(span.len() <= total, "{header:?} of {total}: {span:?}");
            // Serving a multi-range request as one span would be wrong.
            assert!(!header.contains(','), "{header:?} of {total}: {span:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// challenge: the `WWW-Authenticate` parser and the validation a challenge
// passes before it is kept. Whatever an upstream sends, an accepted bearer
// realm is an absolute http(s) URL with a host and no user info (the
// configured credentials go there), and plain http only for a plain http
// registry.

pub fn challenge(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let https = pullthrough::fuzzing::challenge(&text, false);
    let http = pullthrough::fuzzing::challenge(&text, true);
    for (outcome, http_registry) in [(&https, false), (&http, true)] {
        match outcome {
            None | Some(Ok(None)) => {}
            Some(Ok(Some(realm))) => {
                let scheme = realm.scheme();
                assert!(
                    scheme == "https" || (http_registry && scheme == "http"),
                    "{text:?} (http registry: {http_registry}): realm {realm}"
                );
                assert!(
                    realm.host_str().is_some_and(|h| !h.is_empty()),
                    "{text:?}: realm {realm} has no host"
                );
                assert!(
                    realm.username().is_empty() && realm.password().is_none(),
                    "{text:?}: realm {realm} carries user info"
                );
                // The serialisation is what the token request goes to.
                assert!(
                    realm.as_str().bytes().all(|b| b.is_ascii_graphic()),
                    "{text:?}: realm {realm:?}"
                );
            }
            Some(Err(reason)) => {
                assert!(!reason.contains(['\n', '\r']), "{reason:?}");
            }
        }
    }
    // A plain http registry only widens the schemes a realm may have.
    if let Some(Ok(Some(realm))) = &https {
        assert!(
            matches!(&http, Some(Ok(Some(r))) if r == realm),
            "{text:?}: {https:?} for https, {http:?} for http"
        );
    }
}

// ---------------------------------------------------------------------------
// accept: `Accept` normalisation. Whatever a client sends, what goes
// upstream is `*/*` or a list of distinct known manifest types, each with
// at most a short weight strictly between 0 and 1, so its length has a
// fixed bound; the class is `w` (for `*/*`) or two hex digits; and
// normalising what goes upstream changes nothing.

/// The longest header the normaliser can produce: every known type once,
/// each with `;q=` and a 5-character weight, joined by `, `.
fn max_accept_len() -> usize {
    MANIFEST_MEDIA_TYPES
        .iter()
        .map(|t| t.len() + ";q=".len() + 5 + ", ".len())
        .sum()
}

pub fn accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (header, class) = pullthrough::fuzzing::accept(Some(&text));
    assert!(header.len() <= max_accept_len(), "{text:?} -> {header:?}");
    if header == "*/*" {
        assert_eq!(class, "w", "{text:?}");
    } else {
        assert!(
            class.len() == 2 && class.bytes().all(|b| b.is_ascii_hexdigit()),
            "{text:?} -> class {class:?}"
        );
        let mut seen = Vec::new();
        for item in header.split(", ") {
            let (media_type, q) = match item.split_once(";q=") {
                Some((t, q)) => (t, Some(q)),
                None => (item, None),
            };
            assert!(
                MANIFEST_MEDIA_TYPES.contains(&media_type),
                "{text:?} -> {header:?}: {media_type:?} is not a manifest type"
            );
            assert!(!seen.contains(&media_type), "{text:?} -> {header:?}");
            seen.push(media_type);
            if let Some(q) = q {
                let w: f32 = q.parse().unwrap_or(f32::NAN);
                assert!(
                    q.len() <= 5 && w > 0.0 && w < 1.0,
                    "{text:?} -> {header:?}: weight {q:?}"
                );
            }
        }
    }
    // A fixed point: the upstream's view of the list is the list.
    let again = pullthrough::fuzzing::accept(Some(&header));
    assert_eq!(again, (header.clone(), class.clone()), "{text:?}");
}

// ---------------------------------------------------------------------------
// config: the TOML file's schema. Whatever the file holds, parsing ends
// in a value or in one error naming a line of the file, in a message that
// is one line (it is printed as `config file F, line L: message`).

pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err((line, message)) = pullthrough::fuzzing::config_text(&text) {
        // One clean line that says something.
        assert!(
            !message.chars().any(char::is_control),
            "{text:?}: not one clean line: {message:?}"
        );
        assert!(!message.trim().is_empty(), "{text:?}: empty message");
        // Line 0 means the parser named no position.
        assert!(
            line <= text.split('\n').count(),
            "{text:?}: line {line} of {}",
            text.split('\n').count()
        );
    }
}
