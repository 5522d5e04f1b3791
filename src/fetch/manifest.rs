//! Manifests by digest: memory, then the local tier, then further tiers
//! (the shared bucket), then one upstream GET shared by every concurrent
//! asker; verified before it is stored or served, and kept byte-exact
//! with the upstream's media type. What came from the upstream is put in
//! the further tiers too, in the background.

use super::accept::sniff_media_type;
use super::misses::Misses;
use super::visibility::Visibility;
use super::{CacheOutcome, FetchError, Target};
use crate::cache::{self, unix_now, ContentRecord, ContentStore, Index, Tier};
use crate::coalesce::{self, Flights, Role, Slot};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, MAX_MANIFEST_BYTES};
use bytes::Bytes;
use futures_util::StreamExt;
use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// How long a request waits for a manifest fetch another request started
/// before it fetches alone (the fetch itself is bounded well below this).
pub(super) const FOLLOW_WAIT: Duration = Duration::from_secs(30);

/// A manifest exactly as the upstream sent it.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

type Loaded = (Arc<Manifest>, CacheOutcome);

pub(super) struct Manifests {
    store: Arc<dyn ContentStore>,
    index: Index,
    tiers: Vec<Arc<dyn Tier>>,
    /// Hot manifests by digest.
    hot: Cache<Digest, Arc<Manifest>>,
    flights: Flights<Digest, Slot<Loaded, FetchError>>,
    visibility: Visibility,
    misses: Arc<Misses>,
    metrics: Arc<Metrics>,
}

impl Manifests {
    /// Drops a manifest held in memory (after an admin purge by digest).
    pub(super) async fn forget(&self, digest: &Digest) {
        self.hot.invalidate(digest).await;
    }

    pub fn new(
        store: Arc<dyn ContentStore>,
        index: Index,
        tiers: Vec<Arc<dyn Tier>>,
        visibility: Visibility,
        misses: Arc<Misses>,
        metrics: Arc<Metrics>,
    ) -> Manifests {
        Manifests {
            misses,
            store,
            index,
            tiers,
            visibility,
            metrics,
            hot: Cache::builder()
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .max_capacity(64 * 1024 * 1024)
                .build(),
            flights: Flights::default(),
        }
    }

    /// A manifest by digest, and how it was obtained.
    pub async fn by_digest(
        &self,
        at: &Target,
        digest: &Digest,
        accept: &str,
    ) -> Result<Loaded, FetchError> {
        if let Some(m) = self.hot.get(digest).await {
            return Ok((m, CacheOutcome::Hit));
        }
        // Boxed: the nested lookups would otherwise make one very large
        // future on the worker's stack.
        // Remembered before the flight ends, so nobody arriving in between
        // loads it again.
        let load = || {
            Box::pin(async {
                let loaded = self.load_or_fetch(at, digest, accept).await?;
                self.hot.insert(digest.clone(), Arc::clone(&loaded.0)).await;
                Ok(loaded)
            })
        };
        // A fetch another request started answered for *its* repository:
        // a 404 or a refusal there says nothing about ours.
        let (result, role) = coalesce::once(
            &self.flights,
            digest,
            FOLLOW_WAIT,
            FetchError::is_about_repository,
            load,
        )
        .await;
        let (manifest, outcome) = result?;
        Ok(match role {
            Role::Leader => (manifest, outcome),
            Role::Follower => (manifest, CacheOutcome::Coalesced),
        })
    }

    /// A manifest the index or the tier already has, without asking the
    /// upstream.
    pub async fn cached(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, FetchError> {
        if let Some(m) = self.hot.get(digest).await {
            return Ok(Some(m));
        }
        let loaded = self.find(digest).await?;
        if let Some(m) = &loaded {
            self.hot.insert(digest.clone(), Arc::clone(m)).await;
        }
        Ok(loaded)
    }

    /// Keeps a manifest the upstream named for a tag (fetched by tag, as
    /// registries without a digest on HEAD need).
    pub async fn remember(&self, manifest: &Arc<Manifest>, at: &Target) {
        if self
            .save_or_bypass(manifest, at.upstream.has_credentials())
            .await
        {
            self.upload_to_tiers(manifest);
        }
        self.hot
            .insert(manifest.digest.clone(), Arc::clone(manifest))
            .await;
    }

    async fn load_or_fetch(
        &self,
        at: &Target,
        digest: &Digest,
        accept: &str,
    ) -> Result<Loaded, FetchError> {
        if let Some(m) = self.find(digest).await? {
            return Ok((m, CacheOutcome::Hit));
        }
        let reference = digest.to_string();
        self.misses.check(at, &reference).await?;
        let fetched = at
            .upstream
            .get_manifest(&at.repo, &Reference::Digest(digest.clone()), accept)
            .await
            .map_err(FetchError::from);
        if let Err(e) = &fetched {
            self.misses.note(at, &reference, e).await;
        }
        let fetched = fetched?;
        let actual = Digest::of(&fetched.bytes);
        if actual != *digest {
            self.metrics.digest_mismatches.inc();
            return Err(FetchError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.visibility.record(&at.upstream, &at.repo, digest).await;
        let manifest = Arc::new(Manifest {
            digest: actual,
            media_type: fetched.media_type,
            bytes: fetched.bytes,
        });
        if self
            .save_or_bypass(&manifest, at.upstream.has_credentials())
            .await
        {
            self.upload_to_tiers(&manifest);
        }
        Ok((manifest, CacheOutcome::Miss))
    }

    /// A manifest on the local disk, else in a further tier.
    async fn find(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, FetchError> {
        if let Some(m) = self.load(digest).await? {
            return Ok(Some(m));
        }
        Ok(self.load_from_tiers(digest).await)
    }

    /// A manifest another replica put in a further tier: read whole
    /// (bounded), verified, and kept locally. A copy that fails its digest
    /// is deleted there; any failure is a miss.
    async fn load_from_tiers(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        let max = MAX_MANIFEST_BYTES as u64;
        for tier in &self.tiers {
            let body = match tier.get(digest).await {
                Ok(Some(body)) if body.len.is_none_or(|l| l <= max) => body,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%digest, tier = tier.name(), error = %e, "tier lookup failed");
                    continue;
                }
            };
            let mut bytes = Vec::new();
            let mut stream = body.stream;
            let mut whole = true;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) if bytes.len() as u64 + chunk.len() as u64 <= max => {
                        bytes.extend_from_slice(&chunk)
                    }
                    _ => {
                        whole = false;
                        break;
                    }
                }
            }
            if !whole {
                continue;
            }
            if Digest::of(&bytes) != *digest {
                self.metrics.digest_mismatches.inc();
                let _ = tier.remove(digest).await;
                continue;
            }
            let Some(media_type) = body.media_type.or_else(|| sniff_media_type(&bytes)) else {
                continue;
            };
            let manifest = Arc::new(Manifest {
                digest: digest.clone(),
                media_type,
                bytes: Bytes::from(bytes),
            });
            // Of unknown origin here: private until an upstream says
            // which repositories hold it (see `visibility`).
            self.save_or_bypass(&manifest, true).await;
            return Some(manifest);
        }
        None
    }

    /// Puts a manifest fetched from the upstream into every further tier,
    /// with its media type, in the background.
    fn upload_to_tiers(&self, manifest: &Arc<Manifest>) {
        for tier in &self.tiers {
            let (tier, m) = (Arc::clone(tier), Arc::clone(manifest));
            let path = self.store.path(&m.digest);
            tokio::spawn(async move {
                if let Err(e) = tier.put(&m.digest, path, Some(&m.media_type)).await {
                    tracing::warn!(digest = %m.digest, tier = tier.name(), error = %e, "tier upload failed");
                }
            });
        }
    }

    /// A manifest stored locally with its media type, if we have both.
    async fn load(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, FetchError> {
        let (store, index, digest) = (Arc::clone(&self.store), self.index.clone(), digest.clone());
        Ok(cache::blocking(move || {
            let record = index.content(&digest)?;
            let Some(bytes) = store.read_small(&digest, MAX_MANIFEST_BYTES as u64)? else {
                return Ok(None);
            };
            // The file's name promises its content; a file that breaks the
            // promise (disk corruption) is treated as absent.
            if Digest::of(&bytes) != digest {
                tracing::error!(%digest, "cached manifest fails verification; refetching");
                return Ok(None);
            }
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
                        if let Err(e) = index.put_content(&digest, &adopted) {
                            tracing::warn!(%digest, error = %e, "cannot record an adopted manifest");
                        }
                        m
                    }
                    None => return Ok(None),
                },
            };
            Ok(Some(Arc::new(Manifest {
                digest,
                media_type,
                bytes: Bytes::from(bytes),
            })))
        })
        .await?)
    }

    /// Stores a verified manifest; a cache that cannot take it (full disk)
    /// must not fail the pull, so the manifest is served all the same.
    /// Says whether it was stored.
    async fn save_or_bypass(&self, manifest: &Arc<Manifest>, private: bool) -> bool {
        let (store, index, m) = (
            Arc::clone(&self.store),
            self.index.clone(),
            Arc::clone(manifest),
        );
        let saved = cache::blocking(move || {
            store.put_small(&m.bytes, &m.digest)?;
            let record = ContentRecord {
                media_type: Some(m.media_type.clone()),
                size: m.bytes.len() as u64,
                last_access: unix_now(),
                private,
            };
            index.put_content(&m.digest, &record)
        })
        .await;
        if let Err(e) = &saved {
            self.metrics.cache_bypasses.inc();
            tracing::warn!(digest = %manifest.digest, error = %e, "cannot cache manifest; serving it uncached");
        }
        saved.is_ok()
    }
}
