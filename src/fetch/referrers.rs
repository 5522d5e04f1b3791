//! Referrers (distribution-spec 1.1): the image index of the manifests
//! whose `subject` is a digest — signatures, SBOMs, attestations. Asked of
//! the upstream's referrers API (every page), or read through the
//! referrers tag schema (`sha256-<hex>`) where the upstream has no such
//! API; kept like a tag (fresh for `referrers_ttl`, served stale through
//! an outage within `max_stale`), filtered by `artifactType` here; with
//! `prefetch_referrers`, fetched ahead when a tag is.

use super::accept::AcceptList;
use super::download::BlobDownloads;
use super::manifest::{Manifest, Manifests, FOLLOW_WAIT};
use super::{CacheOutcome, FetchError, Target};
use crate::cache::{self, unix_now, Index, TagKey, TagRecord};
use crate::coalesce::{self, Flights, Role, Slot};
use crate::oci::{Digest, Reference, Tag, MAX_MANIFEST_BYTES};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pages of a referrers answer followed at most.
const MAX_PAGES: usize = 16;

/// Manifests of one referrers list fetched ahead at most.
const MAX_PREFETCHED: usize = 16;

/// Blobs of those manifests are fetched ahead up to this size: signatures
/// and attestations, not SBOMs of many megabytes.
const MAX_PREFETCHED_BLOB: u64 = 1024 * 1024;

/// The class under which referrers answers are kept beside tag mappings.
const CLASS: &str = "referrers";

/// A referrers answer: the index to send and whether it was filtered.
pub struct ReferrersAnswer {
    pub bytes: Bytes,
    pub filtered: bool,
    pub outcome: CacheOutcome,
}

pub(super) struct Referrers {
    index: Index,
    flights: Flights<TagKey, Slot<(Arc<Manifest>, CacheOutcome), FetchError>>,
}

impl Referrers {
    pub fn new(index: Index) -> Referrers {
        Referrers {
            index,
            flights: Flights::default(),
        }
    }

    /// Fetches and keeps the referrers of `subject`, the manifests they
    /// list, and those manifests' small blobs (signature payloads, DSSE
    /// envelopes), in a task of its own: never delaying the request that
    /// asked for the tag, coalesced with any client asking meanwhile.
    pub fn prefetch(
        this: &Arc<Referrers>,
        manifests: &Arc<Manifests>,
        blobs: &Arc<BlobDownloads>,
        at: &Target,
        subject: &Digest,
    ) {
        let (this, manifests, blobs) = (Arc::clone(this), Arc::clone(manifests), Arc::clone(blobs));
        let (at, subject) = (at.clone(), subject.clone());
        tokio::spawn(async move {
            let listed = match this.list(&manifests, &at, &subject, None).await {
                Ok(answer) => descriptors(&answer.bytes).unwrap_or_default(),
                Err(e) => {
                    tracing::debug!(%subject, error = %e, "prefetching referrers failed");
                    return;
                }
            };
            let accept = AcceptList::all().header();
            for digest in listed.iter().filter_map(digest_of).take(MAX_PREFETCHED) {
                let manifest = match manifests.by_digest(&at, &digest, &accept).await {
                    Ok((manifest, _)) => manifest,
                    Err(e) => {
                        tracing::debug!(%subject, %digest, error = %e, "prefetching a referrer failed");
                        continue;
                    }
                };
                let doc: Value = serde_json::from_slice(&manifest.bytes).unwrap_or_default();
                let mut parts = doc["layers"].as_array().cloned().unwrap_or_default();
                parts.push(doc["config"].clone());
                let small = parts.iter().filter(|d| {
                    d["size"]
                        .as_u64()
                        .is_some_and(|size| size <= MAX_PREFETCHED_BLOB)
                });
                for blob in small.filter_map(digest_of) {
                    // Opening starts the download, which runs to its end
                    // without a reader.
                    if let Err(e) = blobs.open(&at, &blob).await {
                        tracing::debug!(%subject, %blob, error = %e, "prefetching a referrer's blob failed");
                    }
                }
            }
        });
    }

    pub async fn list(
        &self,
        manifests: &Manifests,
        at: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersAnswer, FetchError> {
        let key = TagKey {
            upstream: at.upstream.name().to_owned(),
            repo: at.upstream.upstream_name(&at.repo),
            tag: schema_tag(subject)?,
            accept: CLASS.to_owned(),
        };
        let load = || Box::pin(self.load(manifests, at, subject, &key));
        let (result, role) =
            coalesce::once(&self.flights, &key, FOLLOW_WAIT, |_| false, load).await;
        let (all, outcome) = result?;
        let outcome = match role {
            Role::Leader => outcome,
            Role::Follower => CacheOutcome::Coalesced,
        };
        let (bytes, filtered) = match artifact_type {
            Some(wanted) => (filter(&all.bytes, wanted)?, true),
            None => (all.bytes.clone(), false),
        };
        Ok(ReferrersAnswer {
            bytes,
            filtered,
            outcome,
        })
    }

    /// The whole (unfiltered) answer: fresh from the index, else from the
    /// upstream, else stale through an outage.
    async fn load(
        &self,
        manifests: &Manifests,
        at: &Target,
        subject: &Digest,
        key: &TagKey,
    ) -> Result<(Arc<Manifest>, CacheOutcome), FetchError> {
        let now = unix_now();
        let (index, k) = (self.index.clone(), key.clone());
        let recorded = cache::blocking(move || index.tag(&k)).await?;
        let age = |r: &TagRecord| Duration::from_secs(now.saturating_sub(r.checked_at));
        if let Some(record) = recorded
            .as_ref()
            .filter(|r| age(r) < at.upstream.referrers_ttl())
        {
            if let Some(m) = manifests.cached(&record.digest).await? {
                return Ok((m, CacheOutcome::Hit));
            }
        }
        let fetched = match self.fetch(at, subject).await {
            Ok(entries) => entries,
            Err(FetchError::Upstream(e)) if e.is_outage() => {
                let stale = recorded.filter(|r| age(r) <= at.upstream.max_stale());
                if let Some(record) = stale {
                    if let Some(m) = manifests.cached(&record.digest).await? {
                        tracing::warn!(%subject, error = %e, "upstream failing; serving cached referrers");
                        return Ok((m, CacheOutcome::Stale));
                    }
                }
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let bytes = Bytes::from(index_of(fetched)?);
        let manifest = Arc::new(Manifest {
            digest: Digest::of(&bytes),
            media_type: INDEX.to_owned(),
            bytes,
        });
        let revalidated = recorded.is_some_and(|r| r.digest == manifest.digest);
        manifests.remember(&manifest, at).await;
        let record = TagRecord {
            digest: manifest.digest.clone(),
            media_type: INDEX.to_owned(),
            checked_at: now,
        };
        let (index, k) = (self.index.clone(), key.clone());
        if let Err(e) = cache::blocking(move || index.put_tag(&k, &record)).await {
            tracing::warn!(%subject, error = %e, "cannot record referrers");
        }
        let outcome = if revalidated {
            CacheOutcome::Revalidated
        } else {
            CacheOutcome::Miss
        };
        Ok((manifest, outcome))
    }

    /// Every descriptor the upstream lists for `subject`: all pages of its
    /// referrers API, or the index under the referrers tag schema.
    async fn fetch(&self, at: &Target, subject: &Digest) -> Result<Vec<Value>, FetchError> {
        let mut entries = Vec::new();
        let mut query: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = at
                .upstream
                .referrers_page(&at.repo, subject, query.as_deref())
                .await?;
            let Some(page) = page else {
                return self.through_tag_schema(at, subject).await;
            };
            entries.extend(descriptors(&page.bytes)?);
            match page.next {
                Some(next) => query = Some(next),
                None => return Ok(entries),
            }
        }
        tracing::warn!(%subject, pages = MAX_PAGES, "referrers answer has more pages; the rest left out");
        Ok(entries)
    }

    async fn through_tag_schema(
        &self,
        at: &Target,
        subject: &Digest,
    ) -> Result<Vec<Value>, FetchError> {
        let reference = Reference::Tag(schema_tag(subject)?);
        match at.upstream.get_manifest(&at.repo, &reference, INDEX).await {
            Ok(fetched) => descriptors(&fetched.bytes),
            Err(UpstreamError::Status { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The digest a descriptor names, if it names a valid one.
fn digest_of(descriptor: &Value) -> Option<Digest> {
    descriptor.get("digest")?.as_str()?.parse().ok()
}

/// `sha256:<hex>` → the tag `sha256-<hex>`.
fn schema_tag(subject: &Digest) -> Result<Tag, FetchError> {
    format!("{}-{}", subject.algorithm(), subject.hex())
        .parse()
        .map_err(|_| FetchError::Upstream(UpstreamError::Protocol("bad subject".into())))
}

/// The `manifests` of an image index.
fn descriptors(bytes: &[u8]) -> Result<Vec<Value>, FetchError> {
    let index: Value = serde_json::from_slice(bytes).map_err(|_| not_an_index())?;
    match index.get("manifests") {
        Some(Value::Array(entries)) => Ok(entries.clone()),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(not_an_index()),
    }
}

fn not_an_index() -> FetchError {
    FetchError::Upstream(UpstreamError::Protocol(
        "referrers answer is not an image index".into(),
    ))
}

/// The index the spec asks for, with `entries` as its manifests.
fn index_of(entries: Vec<Value>) -> Result<Vec<u8>, FetchError> {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index).map_err(|_| not_an_index())?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(FetchError::Upstream(UpstreamError::Protocol(
            "referrers answer is larger than 4 MiB".into(),
        )));
    }
    Ok(bytes)
}

/// Only the entries whose `artifactType` is `wanted`.
fn filter(all: &[u8], wanted: &str) -> Result<Bytes, FetchError> {
    let kept = descriptors(all)?
        .into_iter()
        .filter(|d| d.get("artifactType").and_then(Value::as_str) == Some(wanted))
        .collect();
    index_of(kept).map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_artifact_type() {
        let all = index_of(vec![
            serde_json::json!({"digest": "a", "artifactType": "application/vnd.dev.sigstore.bundle+json"}),
            serde_json::json!({"digest": "b", "artifactType": "application/spdx+json"}),
            serde_json::json!({"digest": "c"}),
        ])
        .unwrap();
        let sboms = filter(&all, "application/spdx+json").unwrap();
        let kept = descriptors(&sboms).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["digest"], "b");
        assert!(descriptors(b"<html>").is_err());
        assert_eq!(descriptors(br#"{"schemaVersion":2}"#).unwrap().len(), 0);
    }

    #[test]
    fn a_merged_answer_past_the_manifest_limit_is_refused() {
        let padding = "x".repeat(1024);
        let entry = serde_json::json!({"digest": "a", "annotations": {"pad": padding}});
        let fits = vec![entry.clone(); MAX_MANIFEST_BYTES / 2048];
        assert!(index_of(fits).is_ok());
        let too_many = vec![entry; MAX_MANIFEST_BYTES / 1024 + 1];
        assert!(index_of(too_many).is_err());
    }
}
