//! Fuzzes the request parser: paths (`parse_route`), repository names,
//! tags, references, digests and `Range` headers, with the invariants
//! each must keep whatever the input: no panic, anything accepted displays
//! back to exactly its input (so nothing was normalised into a different
//! path), nothing accepted can climb out of a directory, and every range
//! stays within the blob it was resolved against.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::oci::{Digest, Reference, RepoName, Tag};
use pullthrough::server::{parse_range, parse_route, RangeRequest, Route};

/// Blob sizes every Range input is resolved against, besides one taken
/// from the input itself.
const TOTALS: [u64; 7] = [0, 1, 2, 100, 4096, u64::MAX - 1, u64::MAX];

fuzz_target!(|data: &[u8]| {
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
});

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
    };
    match rebuilt {
        Some(rebuilt) => assert_eq!(rebuilt, path, "route {route:?}"),
        None => assert!(path == "/v2/" || path == "/v2", "base route from {path:?}"),
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
