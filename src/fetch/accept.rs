//! `Accept` lists: the default a client that sends none gets, which
//! manifest kinds a list takes (its class, the key of a tag's mapping),
//! and the media type a stored manifest declares.

use crate::oci::MANIFEST_MEDIA_TYPES;

/// The `Accept` value to send upstream: the client's, or every manifest
/// type when the client sent none (otherwise registries fall back to the
/// obsolete schema 1).
pub fn accept_or_default(client_accept: Option<&str>) -> String {
    match client_accept {
        Some(a) if !a.trim().is_empty() => a.to_owned(),
        _ => MANIFEST_MEDIA_TYPES.join(", "),
    }
}

/// The `mediaType` a manifest declares, if it is one we know.
pub(super) fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Declared {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let declared: Declared = serde_json::from_slice(bytes).ok()?;
    declared
        .media_type
        .filter(|m| MANIFEST_MEDIA_TYPES.contains(&m.as_str()))
}

/// Whether a media type is in an Accept list (parameters ignored).
/// The manifest kinds an Accept list takes, as a short stable string (a
/// bit per known manifest media type): clients that take the same kinds
/// get the same answer from the upstream for a tag.
pub fn accept_class(accept: &str) -> String {
    let bits = MANIFEST_MEDIA_TYPES
        .iter()
        .enumerate()
        .filter(|(_, media_type)| accepts(accept, media_type))
        .fold(0u32, |bits, (i, _)| bits | 1 << i);
    format!("{bits:02x}")
}

pub fn accepts(accept: &str, media_type: &str) -> bool {
    accept.split(',').any(|item| {
        let item = item.split(';').next().unwrap_or("").trim();
        item == "*/*" || item.eq_ignore_ascii_case(media_type)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching() {
        let docker = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json;q=0.5";
        assert!(accepts(docker, "application/vnd.oci.image.index.v1+json"));
        assert!(!accepts(
            docker,
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert!(accepts("*/*", "anything"));
        assert!(accepts(
            &accept_or_default(None),
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert_eq!(accept_or_default(Some("x/y")), "x/y");
        let index_and_all = accept_class(&accept_or_default(None));
        let single = accept_class("application/vnd.oci.image.manifest.v1+json");
        assert_ne!(index_and_all, single);
        assert_eq!(accept_class("*/*"), "1f");
        assert_eq!(
            single,
            accept_class("application/vnd.oci.image.manifest.v1+json;q=0.5")
        );
    }

    #[test]
    fn sniffs_declared_manifest_types_only() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            sniff_media_type(m).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(sniff_media_type(br#"{"mediaType":"text/html"}"#), None);
        assert_eq!(sniff_media_type(b"not json"), None);
    }
}
