//! A short memory of what the upstream said does not exist: each request
//! for a missing digest or tag would otherwise cost an upstream request
//! (and a token fetch for a random repository), which anyone can make the
//! mirror do at will.

use super::{FetchError, Target};
use crate::upstream::UpstreamError;
use moka::future::Cache;
use std::time::Duration;

/// How long a 404 is remembered: long enough to absorb a flood, short
/// enough that a just-pushed image shows up at once for a person retrying.
const REMEMBER_FOR: Duration = Duration::from_secs(10);

/// (upstream, repository as the upstream knows it, digest or tag).
type MissKey = (String, String, String);

pub(super) struct Misses {
    known: Cache<MissKey, ()>,
}

impl Misses {
    pub fn new() -> Misses {
        Misses {
            known: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REMEMBER_FOR)
                .build(),
        }
    }

    fn key(at: &Target, reference: &str) -> MissKey {
        (
            at.upstream.name().to_owned(),
            at.upstream.upstream_name(&at.repo).to_string(),
            reference.to_owned(),
        )
    }

    /// The remembered 404, if the upstream said so lately.
    pub async fn check(&self, at: &Target, reference: &str) -> Result<(), FetchError> {
        if self.known.contains_key(&Self::key(at, reference)) {
            return Err(FetchError::Upstream(UpstreamError::Status {
                status: 404,
                retry_after: None,
            }));
        }
        Ok(())
    }

    /// Remembers `error` if it is the upstream's 404.
    pub async fn note(&self, at: &Target, reference: &str, error: &FetchError) {
        if let FetchError::Upstream(UpstreamError::Status { status: 404, .. }) = error {
            self.known.insert(Self::key(at, reference), ()).await;
        }
    }
}
