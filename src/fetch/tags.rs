//! Manifests by tag: a fresh mapping answers from memory or the index;
//! after `tag_ttl` a HEAD (free on Docker Hub) confirms or moves the tag
//! and only a new digest costs a GET; while the upstream fails, the last
//! mapping is served for up to `max_stale`.
//!
//! With a further tier (the shared bucket), every mapping the upstream
//! confirms is written there too, and a replica that has no mapping of
//! its own takes the bucket's before asking the upstream: a fresh replica
//! answers a tag exactly as the replica that recorded it would, stale
//! through an outage included.

use super::accept::AcceptList;
use super::manifest::{Manifest, Manifests, FOLLOW_WAIT};
use super::misses::Misses;
use super::visibility::Visibility;
use super::{CacheOutcome, FetchError, Target};
use crate::cache::{self, unix_now, Index, TagKey, TagRecord, Tier};
use crate::coalesce::{self, Flights, Role, Slot};
use crate::oci::{Digest, Reference, Tag};
use crate::upstream::UpstreamError;
use moka::future::Cache;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tag answered from memory until its freshness runs out.
#[derive(Clone)]
struct FreshTag {
    manifest: Arc<Manifest>,
    fresh_for: Duration,
    /// Served because the upstream is failing: every answer from this
    /// entry counts as stale, not as a hit.
    stale: bool,
}

/// Fresh answers are keyed by the tag with its client class, which
/// decides what the upstream was asked.
type FreshKey = TagKey;

struct FreshTagExpiry;

impl moka::Expiry<FreshKey, FreshTag> for FreshTagExpiry {
    fn expire_after_create(&self, _: &FreshKey, v: &FreshTag, _: Instant) -> Option<Duration> {
        Some(v.fresh_for)
    }
}

pub(super) struct Tags {
    index: Index,
    tiers: Vec<Arc<dyn Tier>>,
    fresh: Cache<FreshKey, FreshTag>,
    flights: Flights<FreshKey, Slot<(FreshTag, CacheOutcome), FetchError>>,
    /// Tags currently served stale, so each outage is logged once per tag.
    stale_tags: Mutex<HashSet<TagKey>>,
    visibility: Visibility,
    misses: Arc<Misses>,
}

impl Tags {
    /// Forgets every tag answered from memory (after an admin purge: the
    /// next request for a purged tag must ask the index, then upstream).
    pub(super) fn forget_all(&self) {
        self.fresh.invalidate_all();
    }

    pub fn new(
        index: Index,
        tiers: Vec<Arc<dyn Tier>>,
        visibility: Visibility,
        misses: Arc<Misses>,
    ) -> Tags {
        Tags {
            misses,
            index,
            tiers,
            visibility,
            fresh: Cache::builder()
                .max_capacity(100_000)
                .expire_after(FreshTagExpiry)
                .build(),
            flights: Flights::default(),
            stale_tags: Mutex::new(HashSet::new()),
        }
    }

    pub async fn resolve(
        &self,
        manifests: &Manifests,
        at: &Target,
        tag: &Tag,
        list: AcceptList,
    ) -> Result<(Arc<Manifest>, CacheOutcome), FetchError> {
        self.resolve_with(manifests, at, tag, list, false).await
    }

    /// `resolve`; with `revalidate` (a scheduled warm refresh) a mapping
    /// still fresh is asked about all the same (an immutable tag is not).
    pub async fn resolve_with(
        &self,
        manifests: &Manifests,
        at: &Target,
        tag: &Tag,
        list: AcceptList,
        revalidate: bool,
    ) -> Result<(Arc<Manifest>, CacheOutcome), FetchError> {
        let key = TagKey {
            upstream: at.upstream.name().to_owned(),
            repo: at.upstream.upstream_name(&at.repo),
            tag: tag.clone(),
            accept: list.class(),
        };
        if revalidate {
            self.fresh.invalidate(&key).await;
        } else if let Some(fresh) = self.fresh.get(&key).await {
            return Ok((fresh.manifest.clone(), served_as(&fresh, CacheOutcome::Hit)));
        }
        // Cloned only past the hit above: a warm tag is the hot path.
        let fresh_key = key.clone();
        // Remembered before the flight ends, so nobody arriving in between
        // revalidates again.
        let resolve = || {
            Box::pin(async {
                let resolved = self
                    .revalidate(manifests, at, tag, &key, &list, revalidate)
                    .await?;
                self.fresh
                    .insert(fresh_key.clone(), resolved.0.clone())
                    .await;
                Ok(resolved)
            })
        };
        // The key names the repository, so a failure holds for followers too.
        let (result, role) =
            coalesce::once(&self.flights, &fresh_key, FOLLOW_WAIT, |_| false, resolve).await;
        let (fresh, outcome) = result?;
        let outcome = match role {
            Role::Leader => outcome,
            Role::Follower => CacheOutcome::Coalesced,
        };
        Ok((fresh.manifest.clone(), served_as(&fresh, outcome)))
    }

    async fn revalidate(
        &self,
        manifests: &Manifests,
        at: &Target,
        tag: &Tag,
        key: &TagKey,
        list: &AcceptList,
        force: bool,
    ) -> Result<(FreshTag, CacheOutcome), FetchError> {
        let accept = &list.header();
        let upstream = &at.upstream;
        let ttl = upstream.tag_ttl();
        let now = unix_now();
        let (index, k) = (self.index.clone(), key.clone());
        let mut recorded = cache::blocking(move || index.tag(&k))
            .await?
            .filter(|r| list.takes(&r.media_type));
        if recorded.is_none() {
            recorded = self
                .shared_mapping(key)
                .await
                .filter(|r| list.takes(&r.media_type));
        }

        if let Some(record) = &recorded {
            let age = Duration::from_secs(now.saturating_sub(record.checked_at));
            let immutable = upstream.is_immutable_tag(tag.as_str());
            if (age < ttl && !force) || immutable {
                if let Some(m) = manifests.cached(&record.digest).await? {
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

        let stale = |e: UpstreamError| async {
            match self
                .stale_answer(manifests, at, key, recorded.as_ref(), now, &e)
                .await?
            {
                Some(stale) => Ok((stale, CacheOutcome::Stale)),
                None => Err(FetchError::Upstream(e)),
            }
        };
        let reference = Reference::Tag(tag.clone());
        self.misses.check(at, tag.as_str()).await?;
        let head = match upstream.head_manifest(&at.repo, &reference, accept).await {
            Ok(head) => head,
            Err(e) if e.is_outage() => return stale(e).await,
            Err(e) => {
                let e = FetchError::from(e);
                self.misses.note(at, tag.as_str(), &e).await;
                return Err(e);
            }
        };

        let (manifest, outcome) = match head.digest {
            Some(digest) => {
                let (m, o) = match manifests.by_digest(at, &digest, accept).await {
                    Ok(found) => found,
                    // The HEAD got through but the GET did not (429 on
                    // GETs only, an outage starting): the last known
                    // mapping is still better than a failed pull.
                    Err(FetchError::Upstream(e)) if e.is_outage() => return stale(e).await,
                    Err(e) => return Err(e),
                };
                let revalidated = recorded.as_ref().is_some_and(|r| r.digest == digest);
                let outcome = if revalidated && o == CacheOutcome::Hit {
                    CacheOutcome::Revalidated
                } else {
                    CacheOutcome::Miss
                };
                (m, outcome)
            }
            // A registry that does not name the digest on HEAD: fetch by
            // tag and name the content ourselves.
            None => {
                let fetched = upstream.get_manifest(&at.repo, &reference, accept).await?;
                let manifest = Arc::new(Manifest {
                    digest: Digest::of(&fetched.bytes),
                    media_type: fetched.media_type,
                    bytes: fetched.bytes,
                });
                manifests.remember(&manifest, at).await;
                (manifest, CacheOutcome::Miss)
            }
        };
        // The upstream has just named this content for the tag's repository.
        self.visibility
            .record(upstream, &at.repo, &manifest.digest)
            .await;
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
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            checked_at: now,
        };
        let (index, k) = (self.index.clone(), key.clone());
        let shared = record.clone();
        if let Err(e) = cache::blocking(move || index.put_tag(&k, &record)).await {
            // Served all the same; the tag is simply asked about again.
            tracing::warn!(repo = %key.repo, tag = %key.tag, error = %e, "cannot record tag");
        }
        self.share(key, shared);
        let fresh = FreshTag {
            manifest,
            fresh_for: ttl,
            stale: false,
        };
        Ok((fresh, outcome))
    }

    /// The mapping another replica left in a further tier, kept in the
    /// local index too: from now on it is this replica's own.
    async fn shared_mapping(&self, key: &TagKey) -> Option<TagRecord> {
        for tier in &self.tiers {
            let Some(record) = tier.get_tag(key).await else {
                continue;
            };
            let (index, k, r) = (self.index.clone(), key.clone(), record.clone());
            if let Err(e) = cache::blocking(move || index.put_tag(&k, &r)).await {
                tracing::warn!(repo = %key.repo, tag = %key.tag, error = %e, "cannot record tag");
            }
            return Some(record);
        }
        None
    }

    /// Writes a mapping the upstream just confirmed to every further
    /// tier, in the background.
    fn share(&self, key: &TagKey, record: TagRecord) {
        for tier in &self.tiers {
            let (tier, key, record) = (Arc::clone(tier), key.clone(), record.clone());
            tokio::spawn(async move { tier.put_tag(&key, &record).await });
        }
    }

    /// The recorded mapping, if the upstream's outage lets us serve it:
    /// within `max_stale` of its last confirmation and still on disk.
    async fn stale_answer(
        &self,
        manifests: &Manifests,
        at: &Target,
        key: &TagKey,
        recorded: Option<&TagRecord>,
        now: u64,
        error: &UpstreamError,
    ) -> Result<Option<FreshTag>, FetchError> {
        // No mapping for this kind of client: a warm records its tags for a
        // client that takes every kind, and that mapping serves any client
        // that takes its media type while the upstream is away.
        let fallback = match recorded {
            Some(_) => None,
            None => self.warmed_mapping(key).await?,
        };
        let Some(record) = recorded.or(fallback.as_ref()) else {
            return Ok(None);
        };
        let upstream = &at.upstream;
        if Duration::from_secs(now.saturating_sub(record.checked_at)) > upstream.max_stale() {
            return Ok(None);
        }
        let Some(manifest) = manifests.cached(&record.digest).await? else {
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
}

impl Tags {
    /// The mapping recorded for `key`'s tag under the every-kind class,
    /// if the client of `key` takes its media type.
    async fn warmed_mapping(&self, key: &TagKey) -> Result<Option<TagRecord>, FetchError> {
        let class = AcceptList::all().class();
        if key.accept == class {
            return Ok(None);
        }
        let warm_key = TagKey {
            accept: class,
            ..key.clone()
        };
        let (index, k) = (self.index.clone(), warm_key);
        let record = cache::blocking(move || index.tag(&k)).await?;
        Ok(record.filter(|r| accept_class_takes(&key.accept, &r.media_type)))
    }
}

/// Whether a class (`AcceptList::class`) takes a media type.
fn accept_class_takes(class: &str, media_type: &str) -> bool {
    if class == "w" {
        return true;
    }
    let Ok(bits) = u32::from_str_radix(class, 16) else {
        return false;
    };
    let media_type = media_type.split(';').next().unwrap_or("").trim();
    crate::oci::MANIFEST_MEDIA_TYPES
        .iter()
        .position(|t| t.eq_ignore_ascii_case(media_type))
        .is_some_and(|i| bits & (1 << i) != 0)
}

/// An entry made during an outage counts as stale whoever serves it.
fn served_as(fresh: &FreshTag, outcome: CacheOutcome) -> CacheOutcome {
    if fresh.stale {
        CacheOutcome::Stale
    } else {
        outcome
    }
}
