//! The OCI distribution vocabulary: repository names, references, digests,
//! media types, image references as users type them and the error body, validated before anything else happens.

mod digest;
mod error;
mod image;
mod image_ref;
mod name;
mod range;

pub use digest::{Digest, DigestError, DigestWriter};
pub use error::{ErrorBody, ErrorCode};
pub use image::{ImageName, ImageNameError, DOCKER_HUB};
pub use image_ref::{ImageError, ImageRef, Platform, Platforms};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{parse_range, ByteSpan, RangeRequest};

/// Manifest media types a registry may answer with; used as the default
/// `Accept` list when a client sends none.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The largest manifest we accept from an upstream (the distribution
/// registry's own limit); bigger answers are refused, not buffered.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
