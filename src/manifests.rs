//! Manifest requests: by digest from disk or one coalesced upstream GET; by
//! tag through a fresh mapping, or a HEAD revalidation that downloads only
//! when the digest is new.

use crate::cache::{unix_now, BlobStore, CacheOutcome, ContentRecord, Index, TagKey, TagRecord};
use crate::oci::{Digest, Reference, RepoName, Tag, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use crate::upstream::{Upstream, UpstreamError};
use crate::visibility::Visibility;
use bytes::Bytes;
use moka::future::Cache;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A manifest exactly as the upstream sent it.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream sent a manifest whose digest is {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("cache error: {0}")]
    Disk(String),
}

/// A tag answered from memory until its freshness runs out.
#[derive(Clone)]
struct FreshTag {
    manifest: Arc<Manifest>,
    fresh_for: Duration,
    /// Served because the upstream is failing: every answer from this
    /// entry counts as stale, not as a hit.
    stale: bool,
}

struct FreshTagExpiry;

impl moka::Expiry<(TagKey, String), FreshTag> for FreshTagExpiry {
    fn expire_after_create(
        &self,
        _: &(TagKey, String),
        v: &FreshTag,
        _: Instant,
    ) -> Option<Duration> {
        Some(v.fresh_for)
    }
}

pub struct ManifestService {
    store: BlobStore,
    index: Index,
    /// Hot manifests by digest; also where concurrent misses coalesce.
    by_digest: Cache<Digest, Arc<Manifest>>,
    /// Fresh tag answers keyed by tag and the client's Accept list.
    fresh_tags: Cache<(TagKey, String), FreshTag>,
    /// Tags currently served stale, so each outage is logged once per tag.
    stale_tags: Mutex<HashSet<TagKey>>,
    visibility: Visibility,
}

impl ManifestService {
    pub fn new(store: BlobStore, index: Index, visibility: Visibility) -> ManifestService {
        ManifestService {
            store,
            index,
            visibility,
            by_digest: Cache::builder()
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .max_capacity(64 * 1024 * 1024)
                .build(),
            fresh_tags: Cache::builder()
                .max_capacity(100_000)
                .expire_after(FreshTagExpiry)
                .build(),
            stale_tags: Mutex::new(HashSet::new()),
        }
    }

    /// A manifest by digest: memory, disk, or one upstream GET shared by
    /// all concurrent askers. Verified before it is stored or served.
    pub async fn by_digest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        accept: &str,
    ) -> Result<(Arc<Manifest>, CacheOutcome), ManifestError> {
        // Boxed: the nested lookups would otherwise make one very large
        // future on the worker's stack.
        let load = || Box::pin(self.load_or_fetch(upstream, repo, digest, accept));
        match coalesced(&self.by_digest, digest.clone(), load()).await {
            // A fetch another request started answered for *its*
            // repository: a 404 or a refusal there says nothing about ours.
            Err((ManifestError::Upstream(e), CacheOutcome::Coalesced))
                if e.is_about_repository() =>
            {
                coalesced(&self.by_digest, digest.clone(), load())
                    .await
                    .map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    async fn load_or_fetch(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        accept: &str,
    ) -> Result<(Arc<Manifest>, CacheOutcome), ManifestError> {
        if let Some(m) = self.load(digest).await? {
            return Ok((m, CacheOutcome::Hit));
        }
        let fetched = upstream
            .get_manifest(repo, &Reference::Digest(digest.clone()), accept)
            .await?;
        let actual = Digest::of(&fetched.bytes);
        if actual != *digest {
            crate::metrics::metrics().digest_mismatches.inc();
            return Err(ManifestError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.visibility.record(upstream, repo, digest);
        let manifest = Arc::new(Manifest {
            digest: actual,
            media_type: fetched.media_type,
            bytes: fetched.bytes,
        });
        self.save_or_bypass(&manifest, upstream).await;
        Ok((manifest, CacheOutcome::Miss))
    }

    /// A manifest stored on disk with its media type, if we have both.
    async fn load(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, ManifestError> {
        let (store, index, digest) = (self.store.clone(), self.index.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let record = index
                .content(&digest)
                .map_err(|e| ManifestError::Disk(e.to_string()))?;
            let path = store.path(&digest);
            if std::fs::metadata(&path)
                .map(|m| m.len() > MAX_MANIFEST_BYTES as u64)
                .unwrap_or(true)
            {
                return Ok(None);
            }
            let Some(bytes) = store
                .read(&digest)
                .map_err(|e| ManifestError::Disk(e.to_string()))?
            else {
                return Ok(None);
            };
            // A manifest on disk whose index entry was lost: its own
            // mediaType field tells how to serve it.
            let media_type = match record.and_then(|r| r.media_type) {
                Some(m) => m,
                None => match sniff_media_type(&bytes) {
                    Some(m) => {
                        let adopted = ContentRecord {
                            media_type: Some(m.clone()),
                            size: bytes.len() as u64,
                            last_access: unix_now(),
                            private: true,
                        };
                        let _ = index.put_content(&digest, &adopted);
                        m
                    }
                    None => return Ok(None),
                },
            };
            // The file's name promises its content; a file that breaks the
            // promise (disk corruption) is treated as absent.
            if Digest::of(&bytes) != digest {
                tracing::error!(%digest, "cached manifest fails verification; refetching");
                return Ok(None);
            }
            Ok(Some(Arc::new(Manifest {
                digest,
                media_type,
                bytes: Bytes::from(bytes),
            })))
        })
        .await
        .map_err(|e| ManifestError::Disk(e.to_string()))?
    }

    /// Stores a verified manifest; a cache that cannot take it (full disk)
    /// must not fail the pull, so the manifest is served all the same.
    async fn save_or_bypass(&self, manifest: &Arc<Manifest>, upstream: &Upstream) {
        let private = upstream.has_credentials();
        if let Err(e) = self.save(Arc::clone(manifest), private).await {
            crate::metrics::metrics().cache_bypasses.inc();
            tracing::warn!(digest = %manifest.digest, error = %e, "cannot cache manifest; serving it uncached");
        }
    }

    async fn save(&self, manifest: Arc<Manifest>, private: bool) -> Result<(), ManifestError> {
        let (store, index) = (self.store.clone(), self.index.clone());
        tokio::task::spawn_blocking(move || {
            store
                .write_verified(&manifest.bytes, &manifest.digest)
                .map_err(|e| ManifestError::Disk(e.to_string()))?;
            let record = ContentRecord {
                media_type: Some(manifest.media_type.clone()),
                size: manifest.bytes.len() as u64,
                last_access: unix_now(),
                private,
            };
            index
                .put_content(&manifest.digest, &record)
                .map_err(|e| ManifestError::Disk(e.to_string()))
        })
        .await
        .map_err(|e| ManifestError::Disk(e.to_string()))?
    }

    /// A manifest by tag. Within the upstream's `tag_ttl` the recorded
    /// mapping answers; after it, a HEAD (free on Docker Hub) confirms or
    /// moves the tag, and only a new digest costs a GET.
    pub async fn by_tag(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        tag: &Tag,
        accept: &str,
    ) -> Result<(Arc<Manifest>, CacheOutcome), ManifestError> {
        let key = TagKey {
            upstream: upstream.name().to_owned(),
            repo: upstream.upstream_name(repo).to_string(),
            tag: tag.to_string(),
            accept: accept_class(accept),
        };
        let resolve = Box::pin(self.resolve_tag(upstream, repo, tag, &key, accept));
        let (fresh, outcome) =
            coalesced(&self.fresh_tags, (key.clone(), accept.to_owned()), resolve)
                .await
                .map_err(|(e, _)| e)?;
        let outcome = if fresh.stale {
            CacheOutcome::Stale
        } else {
            outcome
        };
        Ok((fresh.manifest, outcome))
    }

    async fn resolve_tag(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        tag: &Tag,
        key: &TagKey,
        accept: &str,
    ) -> Result<(FreshTag, CacheOutcome), ManifestError> {
        let ttl = upstream.tag_ttl();
        let now = unix_now();
        let recorded = self
            .index
            .tag(key)
            .map_err(|e| ManifestError::Disk(e.to_string()))?;
        let recorded = recorded.filter(|r| accepts(accept, &r.media_type));

        if let Some(record) = &recorded {
            let age = Duration::from_secs(now.saturating_sub(record.checked_at));
            let immutable = upstream.is_immutable_tag(tag.as_str());
            if age < ttl || immutable {
                if let Some(m) = self.cached(record).await? {
                    let fresh_for = if immutable { ttl } else { ttl - age };
                    let fresh = FreshTag {
                        manifest: m,
                        fresh_for,
                        stale: false,
                    };
                    return Ok((fresh, CacheOutcome::Hit));
                }
            }
        }

        let reference = Reference::Tag(tag.clone());
        let head = match upstream.head_manifest(repo, &reference, accept).await {
            Ok(head) => head,
            Err(e) if e.is_outage() => {
                if let Some(stale) = self
                    .stale_answer(upstream, key, recorded.as_ref(), now, &e)
                    .await?
                {
                    return Ok((stale, CacheOutcome::Stale));
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };

        let (manifest, outcome) = match head.digest {
            Some(digest) => {
                let (m, o) = match self.by_digest(upstream, repo, &digest, accept).await {
                    Ok(found) => found,
                    // The HEAD got through but the GET did not (429 on
                    // GETs only, an outage starting): the last known
                    // mapping is still better than a failed pull.
                    Err(ManifestError::Upstream(e)) if e.is_outage() => {
                        if let Some(stale) = self
                            .stale_answer(upstream, key, recorded.as_ref(), now, &e)
                            .await?
                        {
                            return Ok((stale, CacheOutcome::Stale));
                        }
                        return Err(e.into());
                    }
                    Err(e) => return Err(e),
                };
                let revalidated = recorded
                    .as_ref()
                    .is_some_and(|r| r.digest == digest.to_string());
                (
                    m,
                    if revalidated && o == CacheOutcome::Hit {
                        CacheOutcome::Revalidated
                    } else {
                        CacheOutcome::Miss
                    },
                )
            }
            // A registry that does not name the digest on HEAD: fetch by
            // tag and name the content ourselves.
            None => {
                let fetched = upstream.get_manifest(repo, &reference, accept).await?;
                let manifest = Arc::new(Manifest {
                    digest: Digest::of(&fetched.bytes),
                    media_type: fetched.media_type,
                    bytes: fetched.bytes,
                });
                self.save_or_bypass(&manifest, upstream).await;
                self.by_digest
                    .insert(manifest.digest.clone(), Arc::clone(&manifest))
                    .await;
                (manifest, CacheOutcome::Miss)
            }
        };
        // The upstream has just named this content for the tag's repository.
        self.visibility.record(upstream, repo, &manifest.digest);
        // Only now, with the manifest in hand: a HEAD that works while GETs
        // still fail (429 on GETs only) is not the end of the outage.
        if self
            .stale_tags
            .lock()
            .map(|mut s| s.remove(key))
            .unwrap_or(false)
        {
            tracing::info!(repo = %key.repo, tag = %key.tag, "upstream answers again; tag revalidated");
        }
        let record = TagRecord {
            digest: manifest.digest.to_string(),
            media_type: manifest.media_type.clone(),
            checked_at: now,
        };
        if let Err(e) = self.index.put_tag(key, &record) {
            // Served all the same; the tag is simply asked about again.
            tracing::warn!(repo = %key.repo, tag = %key.tag, error = %e, "cannot record tag");
        }
        Ok((
            FreshTag {
                manifest,
                fresh_for: ttl,
                stale: false,
            },
            outcome,
        ))
    }

    /// The recorded mapping, if the upstream's outage lets us serve it:
    /// within `max_stale` of its last confirmation and still on disk.
    async fn stale_answer(
        &self,
        upstream: &Upstream,
        key: &TagKey,
        recorded: Option<&TagRecord>,
        now: u64,
        error: &UpstreamError,
    ) -> Result<Option<FreshTag>, ManifestError> {
        let Some(record) = recorded else {
            return Ok(None);
        };
        if Duration::from_secs(now.saturating_sub(record.checked_at)) > upstream.max_stale() {
            return Ok(None);
        }
        let Some(manifest) = self.cached(record).await? else {
            return Ok(None);
        };
        // Once per tag and outage, not once per request.
        if self
            .stale_tags
            .lock()
            .map(|mut s| s.insert(key.clone()))
            .unwrap_or(false)
        {
            tracing::warn!(repo = %key.repo, tag = %key.tag, error = %error, "upstream failing; serving the cached tag");
        }
        // Ask the upstream again soon, not at every request.
        let fresh_for = upstream.tag_ttl().min(Duration::from_secs(5));
        Ok(Some(FreshTag {
            manifest,
            fresh_for,
            stale: true,
        }))
    }

    async fn cached(&self, record: &TagRecord) -> Result<Option<Arc<Manifest>>, ManifestError> {
        let Ok(digest) = record.digest.parse::<Digest>() else {
            return Ok(None);
        };
        if let Some(m) = self.by_digest.get(&digest).await {
            return Ok(Some(m));
        }
        let loaded = self.load(&digest).await?;
        if let Some(m) = &loaded {
            self.by_digest.insert(digest, Arc::clone(m)).await;
        }
        Ok(loaded)
    }
}

/// Looks `key` up in `cache`, running `load` once for all concurrent
/// misses, and says whether this caller hit, loaded, or joined a load (on
/// failure too: a joiner may want to try for itself).
async fn coalesced<K, V>(
    cache: &Cache<K, V>,
    key: K,
    load: impl std::future::Future<Output = Result<(V, CacheOutcome), ManifestError>>,
) -> Result<(V, CacheOutcome), (ManifestError, CacheOutcome)>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    if let Some(value) = cache.get(&key).await {
        return Ok((value, CacheOutcome::Hit));
    }
    // Stays `Coalesced` unless this caller is the one that loads.
    let mut outcome = CacheOutcome::Coalesced;
    let inserted = cache
        .entry(key)
        .or_try_insert_with(async {
            outcome = CacheOutcome::Miss;
            let (value, o) = load.await?;
            outcome = o;
            Ok::<_, ManifestError>(value)
        })
        .await;
    match inserted {
        Ok(entry) => Ok((entry.into_value(), outcome)),
        Err(e) => Err(((*e).clone(), outcome)),
    }
}

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
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
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
