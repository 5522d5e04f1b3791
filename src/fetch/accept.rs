//! `Accept` lists: what a client's list means (the manifest kinds it
//! takes), what is forwarded upstream for it, the class that keys a tag's
//! mapping, and the media type a stored manifest declares.
//!
//! Registries answer `*/*` with one platform's manifest, so a list is
//! normalised to the explicit manifest types it names (wildcards and
//! `q=0` dropped, unknown types ignored): the upstream sees exactly the
//! kinds the class records, and one client's odd list can never decide
//! what clients of another kind get.

use crate::oci::MANIFEST_MEDIA_TYPES;

/// A client's `Accept` list, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AcceptList {
    /// The known manifest types the client named, in its order, each with
    /// the `q` it gave (validated, so nothing else of the client's text
    /// goes upstream).
    entries: Vec<(usize, Option<String>)>,
    /// The client named no manifest type, only wildcards: it takes
    /// whatever the upstream gives a `*/*` client.
    wildcard: bool,
}

impl AcceptList {
    /// Every known manifest type: what a client that sends no list gets
    /// (registries would otherwise fall back to the obsolete schema 1).
    pub fn all() -> AcceptList {
        AcceptList {
            entries: (0..MANIFEST_MEDIA_TYPES.len()).map(|i| (i, None)).collect(),
            wildcard: false,
        }
    }

    pub fn from_client(header: Option<&str>) -> AcceptList {
        let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
            return AcceptList::all();
        };
        let mut entries: Vec<(usize, Option<String>)> = Vec::new();
        let mut saw_wildcard = false;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let media_type = parts.next().unwrap_or("").trim();
            let q = parts.find_map(|p| p.trim().strip_prefix("q=").map(str::trim));
            let weight = match q {
                Some(q) => match q.parse::<f32>() {
                    Ok(w) if (0.0..=1.0).contains(&w) && q.len() <= 5 => Some(w),
                    // A malformed weight: ignore the item, as RFC 9110 lets us.
                    _ => continue,
                },
                None => None,
            };
            if weight.is_some_and(|w| w <= 0.0) || media_type.is_empty() {
                continue;
            }
            if media_type.ends_with("/*") {
                saw_wildcard = true;
            } else if let Some(i) = index_of(media_type) {
                if !entries.iter().any(|(known, _)| *known == i) {
                    entries.push((i, q.filter(|_| weight != Some(1.0)).map(str::to_owned)));
                }
            }
        }
        if !entries.is_empty() {
            return AcceptList {
                entries,
                wildcard: false,
            };
        }
        if saw_wildcard {
            AcceptList {
                entries,
                wildcard: true,
            }
        } else {
            // Only types we do not serve as manifests: ask for all of ours.
            AcceptList::all()
        }
    }

    /// The `Accept` value sent upstream for this list.
    pub fn header(&self) -> String {
        if self.wildcard {
            return "*/*".to_owned();
        }
        self.entries
            .iter()
            .map(|(i, q)| match q {
                Some(q) => format!("{};q={q}", MANIFEST_MEDIA_TYPES[*i]),
                None => MANIFEST_MEDIA_TYPES[*i].to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn bits(&self) -> u32 {
        self.entries.iter().fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// A short stable name for the kinds this list takes: clients of the
    /// same class get the same answer from the upstream for a tag.
    pub fn class(&self) -> String {
        if self.wildcard {
            "w".to_owned()
        } else {
            format!("{:02x}", self.bits())
        }
    }

    /// Whether a manifest of this media type may be served to this list.
    pub fn takes(&self, media_type: &str) -> bool {
        let media_type = media_type.split(';').next().unwrap_or("").trim();
        self.wildcard || index_of(media_type).is_some_and(|i| self.bits() & (1 << i) != 0)
    }
}

/// Every class whose clients may be served a manifest of this media
/// type: where a tag's mapping goes when it is known without any client
/// having asked (an imported bundle).
pub fn classes_taking(media_type: &str) -> Vec<String> {
    let Some(i) = index_of(media_type) else {
        return vec!["w".to_owned()];
    };
    let kinds = MANIFEST_MEDIA_TYPES.len();
    (1u32..1 << kinds)
        .filter(|bits| bits & (1 << i) != 0)
        .map(|bits| format!("{bits:02x}"))
        .chain(std::iter::once("w".to_owned()))
        .collect()
}

fn index_of(media_type: &str) -> Option<usize> {
    MANIFEST_MEDIA_TYPES
        .iter()
        .position(|t| t.eq_ignore_ascii_case(media_type))
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

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

    #[test]
    fn lists_are_normalised_to_the_explicit_manifest_types() {
        let docker = AcceptList::from_client(Some(&format!("{DOCKER}, {INDEX};q=0.5")));
        assert!(docker.takes(INDEX) && docker.takes(DOCKER) && !docker.takes(OCI));
        assert_eq!(docker.header(), format!("{DOCKER}, {INDEX};q=0.5"));

        // The attack of the hardening review: a single type plus */*
        // must not share a class with clients that take indexes.
        let sneaky = AcceptList::from_client(Some(&format!("{DOCKER}, */*")));
        assert_eq!(sneaky.header(), DOCKER);
        assert!(!sneaky.takes(INDEX));
        assert_ne!(sneaky.class(), AcceptList::all().class());

        let refused = AcceptList::from_client(Some(&format!("{OCI}, {INDEX};q=0")));
        assert!(!refused.takes(INDEX));
        assert_eq!(refused.class(), AcceptList::from_client(Some(OCI)).class());

        let wild = AcceptList::from_client(Some("*/*"));
        assert_eq!(wild.header(), "*/*");
        assert_eq!(wild.class(), "w");

        assert_eq!(AcceptList::from_client(None), AcceptList::all());
        assert_eq!(
            AcceptList::from_client(Some("text/html")),
            AcceptList::all()
        );
        assert_eq!(
            AcceptList::from_client(Some(&format!("{OCI};q=0.5"))).class(),
            AcceptList::from_client(Some(OCI)).class()
        );
        // Whatever the client sends, what goes upstream is bounded.
        let huge = format!("{}, {OCI}", "x/y, ".repeat(20_000));
        assert_eq!(AcceptList::from_client(Some(&huge)).header(), OCI);
    }

    #[test]
    fn every_class_that_takes_a_type_is_named() {
        let classes = classes_taking(INDEX);
        for header in [
            INDEX.to_owned(),
            format!("{DOCKER}, {INDEX}"),
            "*/*".to_owned(),
        ] {
            let class = AcceptList::from_client(Some(&header)).class();
            assert!(classes.contains(&class), "{header}");
        }
        assert!(!classes.contains(&AcceptList::from_client(Some(DOCKER)).class()));
        assert!(classes.contains(&AcceptList::all().class()));
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
