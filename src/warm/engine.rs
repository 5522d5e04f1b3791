//! The walk of one image: its tag or digest, the index's manifests for the
//! chosen platforms, their config and layers, optionally the referrers of
//! each; every step through the core, so a warm is cached, verified and
//! coalesced exactly like a client's pull, and what is cached is skipped.
//! Before each manifest step that may cost a pull on the upstream's rate
//! limit, the gate waits while `ratelimit-remaining` is at the reserve.

use crate::fetch::{CacheOutcome, FetchError, Manifest, PullThrough, Target};
use crate::oci::{Digest, ImageRef, Platforms, Reference};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Blobs of one image fetched at once.
const BLOBS_AT_ONCE: usize = 4;
/// Index levels followed (an index of indexes is rare; deeper is refused).
const MAX_DEPTH: u8 = 2;

/// How a warm runs.
pub struct Warmer<'a> {
    pub core: &'a PullThrough,
    /// Manifest fetches stop while the upstream's `ratelimit-remaining` is
    /// at or below this (`warm_reserve`).
    pub reserve: u64,
    /// How often a paused warm asks (with a free HEAD) whether the window
    /// allows again.
    pub poll: Duration,
    /// A scheduled refresh: tags are asked about even when still fresh.
    pub revalidate: bool,
}

/// What a warm did for one image (or why it could not).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct ImageReport {
    pub image: String,
    pub upstream: String,
    pub repository: String,
    /// What the tag (or digest) named: a manifest or an index.
    pub digest: Option<String>,
    /// The platforms of the manifests taken from an index.
    pub platforms: Vec<String>,
    pub manifests: u64,
    pub blobs: u64,
    /// Blobs handled so far (cached, fetched or failed).
    pub blobs_done: u64,
    /// Blobs this warm downloaded (the rest were cached already).
    pub blobs_fetched: u64,
    /// Bytes of every blob and manifest of the image.
    pub bytes: u64,
    pub bytes_fetched: u64,
    /// Referrer manifests (signatures, SBOMs) warmed with `--referrers`.
    pub referrers: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Everything an image is made of, known once its manifests are cached
/// and before any blob is fetched (so a pin set's size is known then).
pub struct Plan {
    pub report: ImageReport,
    at: Target,
    /// Every manifest digest (top, children, referrers).
    pub manifests: Vec<Digest>,
    /// Unique blobs with the size their manifest declares.
    pub blobs: Vec<(Digest, u64)>,
}

impl Plan {
    /// Bytes the image needs in the cache (manifests and blobs).
    pub fn bytes(&self) -> u64 {
        self.report.bytes
    }

    /// Every digest the image is made of, for pins.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.manifests
            .iter()
            .chain(self.blobs.iter().map(|(d, _)| d))
    }
}

/// Whether an image is servable from the cache alone.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CheckReport {
    pub image: String,
    pub servable: bool,
    pub digest: Option<String>,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// What is missing: `tag`, `manifest sha256:…`, `blob sha256:…`.
    pub missing: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct BlobSum {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// The parts of a manifest or index a warm follows.
#[derive(Deserialize)]
pub(super) struct Parsed {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    /// Schema 1.
    #[serde(default, rename = "fsLayers")]
    fs_layers: Vec<BlobSum>,
}

impl Parsed {
    fn of(manifest: &Manifest) -> Result<Parsed, String> {
        serde_json::from_slice(&manifest.bytes).map_err(|e| {
            format!(
                "manifest {} is not JSON a warm can follow: {e}",
                manifest.digest
            )
        })
    }

    pub(super) fn is_index(&self) -> bool {
        !self.manifests.is_empty() && self.config.is_none() && self.layers.is_empty()
    }

    /// Config and layers; non-distributable (foreign) layers live
    /// elsewhere and are left out, as registries do.
    pub(super) fn blobs(&self) -> Result<Vec<(Digest, u64)>, String> {
        let foreign = |d: &&Descriptor| {
            d.media_type
                .as_deref()
                .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
        };
        let mut out = Vec::new();
        for d in self
            .config
            .iter()
            .chain(&self.layers)
            .filter(|d| !foreign(d))
        {
            out.push((parse_digest(&d.digest)?, d.size));
        }
        for l in &self.fs_layers {
            out.push((parse_digest(&l.blob_sum)?, 0));
        }
        Ok(out)
    }
}

impl Parsed {
    /// An index's manifests for these platforms.
    pub(super) fn children(&self, platforms: &Platforms) -> Vec<Digest> {
        self.manifests
            .iter()
            .filter(|c| {
                let p = c.platform.as_ref();
                platforms.takes(
                    p.and_then(|p| p.os.as_deref()),
                    p.and_then(|p| p.architecture.as_deref()),
                    p.and_then(|p| p.variant.as_deref()),
                )
            })
            .filter_map(|c| c.digest.parse().ok())
            .collect()
    }
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse()
        .map_err(|e| format!("a manifest names an invalid digest: {e}"))
}

fn platform_name(p: &Option<PlatformJson>) -> String {
    match p {
        Some(p) => {
            let mut s = format!(
                "{}/{}",
                p.os.as_deref().unwrap_or("?"),
                p.architecture.as_deref().unwrap_or("?")
            );
            if let Some(v) = &p.variant {
                s.push('/');
                s.push_str(v);
            }
            s
        }
        None => "?".into(),
    }
}

impl Warmer<'_> {
    /// Warms one image: its manifests, then its blobs.
    pub async fn warm(
        &self,
        image: &ImageRef,
        at: &Target,
        platforms: &Platforms,
        referrers: bool,
        progress: &(dyn Fn(&ImageReport) + Send + Sync),
    ) -> ImageReport {
        match self.plan(image, at, platforms, referrers).await {
            Ok(plan) => self.fetch(plan, progress).await,
            Err(report) => report,
        }
    }

    /// Resolves an image to its manifests (fetched and cached) and the
    /// blobs they name; the report says why not on failure.
    pub async fn plan(
        &self,
        image: &ImageRef,
        at: &Target,
        platforms: &Platforms,
        referrers: bool,
    ) -> Result<Plan, ImageReport> {
        let mut report = ImageReport {
            image: image.text.clone(),
            upstream: at.upstream.name().to_owned(),
            repository: at.upstream.upstream_name(&at.repo).to_string(),
            ..ImageReport::default()
        };
        match self
            .walk(image, at, platforms, referrers, &mut report)
            .await
        {
            Ok((manifests, blobs)) => Ok(Plan {
                report,
                at: at.clone(),
                manifests,
                blobs,
            }),
            Err(e) => {
                report.error = Some(e);
                Err(report)
            }
        }
    }

    async fn walk(
        &self,
        image: &ImageRef,
        at: &Target,
        platforms: &Platforms,
        referrers: bool,
        report: &mut ImageReport,
    ) -> Result<(Vec<Digest>, Vec<(Digest, u64)>), String> {
        let top = match &image.reference {
            Reference::Tag(tag) => {
                self.gate(at, &image.reference).await;
                let (m, _) = self
                    .core
                    .prefetch_tag(at, tag, self.revalidate)
                    .await
                    .map_err(|e| e.to_string())?;
                m
            }
            Reference::Digest(d) => self.manifest(at, d).await?,
        };
        report.digest = Some(top.digest.to_string());
        let mut manifests = vec![top.digest.clone()];
        let mut bytes = top.bytes.len() as u64;
        let mut images = Vec::new();
        let mut pending = vec![(top, 0u8)];
        while let Some((m, depth)) = pending.pop() {
            let parsed = Parsed::of(&m)?;
            if !parsed.is_index() {
                images.push((m, parsed));
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(format!("index {} nests too deep", m.digest));
            }
            let mut taken = 0;
            for child in &parsed.manifests {
                let p = child.platform.as_ref();
                let os = p.and_then(|p| p.os.as_deref());
                let arch = p.and_then(|p| p.architecture.as_deref());
                let variant = p.and_then(|p| p.variant.as_deref());
                if !platforms.takes(os, arch, variant) {
                    continue;
                }
                taken += 1;
                let digest = parse_digest(&child.digest)?;
                let cm = self.manifest(at, &digest).await?;
                bytes += cm.bytes.len() as u64;
                manifests.push(cm.digest.clone());
                report.platforms.push(platform_name(&child.platform));
                pending.push((cm, depth + 1));
            }
            if taken == 0 {
                let offered: Vec<String> = parsed
                    .manifests
                    .iter()
                    .map(|c| platform_name(&c.platform))
                    .collect();
                return Err(format!(
                    "index {} has no manifest for {platforms} (it has {})",
                    m.digest,
                    offered.join(", ")
                ));
            }
        }
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        for (_, parsed) in &images {
            for (digest, size) in parsed.blobs()? {
                if seen.insert(digest.clone()) {
                    bytes += size;
                    blobs.push((digest, size));
                }
            }
        }
        if referrers {
            let subjects = manifests.clone();
            for subject in &subjects {
                for (m, parsed) in self.referrers_of(at, subject).await? {
                    report.referrers += 1;
                    bytes += m.bytes.len() as u64;
                    manifests.push(m.digest.clone());
                    for (digest, size) in parsed.blobs()? {
                        if seen.insert(digest.clone()) {
                            bytes += size;
                            blobs.push((digest, size));
                        }
                    }
                }
            }
        }
        report.manifests = manifests.len() as u64;
        report.blobs = blobs.len() as u64;
        report.bytes = bytes;
        Ok((manifests, blobs))
    }

    /// The manifests whose subject is `subject` (signatures, SBOMs…).
    async fn referrers_of(
        &self,
        at: &Target,
        subject: &Digest,
    ) -> Result<Vec<(Arc<Manifest>, Parsed)>, String> {
        self.gate(at, &Reference::Digest(subject.clone())).await;
        let bytes = self
            .core
            .prefetch_referrers(at, subject)
            .await
            .map_err(|e| format!("referrers of {subject}: {e}"))?;
        let index: Parsed = serde_json::from_slice(&bytes)
            .map_err(|e| format!("referrers of {subject} are not an index: {e}"))?;
        let mut out = Vec::new();
        for d in &index.manifests {
            let m = self.manifest(at, &parse_digest(&d.digest)?).await?;
            let parsed = Parsed::of(&m)?;
            out.push((m, parsed));
        }
        Ok(out)
    }

    /// A manifest by digest through the core (which records the
    /// repository as holding it, as a pull would); the gate only when the
    /// cache does not have it.
    async fn manifest(&self, at: &Target, digest: &Digest) -> Result<Arc<Manifest>, String> {
        if !matches!(self.core.cached_manifest(digest).await, Ok(Some(_))) {
            self.gate(at, &Reference::Digest(digest.clone())).await;
        }
        let (m, _) = self
            .core
            .prefetch_manifest(at, digest)
            .await
            .map_err(|e| format!("manifest {digest}: {e}"))?;
        Ok(m)
    }

    /// Fetches a plan's blobs, a few at once, reporting after each.
    pub async fn fetch(
        &self,
        plan: Plan,
        progress: &(dyn Fn(&ImageReport) + Send + Sync),
    ) -> ImageReport {
        let Plan {
            mut report,
            at,
            blobs,
            ..
        } = plan;
        progress(&report);
        let at = &at;
        let mut results = futures_util::stream::iter(blobs)
            .map(|(digest, _)| async move {
                let fetched = self.core.prefetch_blob(at, &digest).await;
                (digest, fetched)
            })
            .buffer_unordered(BLOBS_AT_ONCE);
        let mut failures = Vec::new();
        while let Some((digest, fetched)) = results.next().await {
            report.blobs_done += 1;
            match fetched {
                Ok(p) if matches!(p.outcome, CacheOutcome::Miss) => {
                    report.blobs_fetched += 1;
                    report.bytes_fetched += p.size;
                }
                Ok(_) => {}
                Err(e) => failures.push(describe_blob_error(&digest, &e)),
            }
            progress(&report);
        }
        if failures.is_empty() {
            report.ok = true;
        } else {
            report.error = Some(failures.join("; "));
        }
        report
    }

    /// Waits while the upstream's last `ratelimit-remaining` is at or
    /// below the reserve; a HEAD (free on Docker Hub, and carrying fresh
    /// figures) asks again every `poll`.
    async fn gate(&self, at: &Target, probe: &Reference) {
        let limits = &at.upstream.rate_limit;
        let mut logged = false;
        loop {
            // Nothing announced: nothing to keep back.
            if limits.limit.load(Ordering::Relaxed) == 0 {
                return;
            }
            let remaining = limits.remaining.load(Ordering::Relaxed);
            if remaining > self.reserve {
                if logged {
                    tracing::info!(upstream = %at.upstream.name(), remaining, "warm resumes: the rate limit window allows again");
                }
                return;
            }
            if !logged {
                tracing::warn!(
                    upstream = %at.upstream.name(),
                    remaining,
                    reserve = self.reserve,
                    "warm paused: the upstream's remaining pulls are at the reserve kept for clients"
                );
                logged = true;
            }
            tokio::time::sleep(self.poll).await;
            let accept = crate::fetch::accept::AcceptList::all().header();
            let _ = at.upstream.head_manifest(&at.repo, probe, &accept).await;
        }
    }

    /// Whether an image is servable from the cache alone (the upstream is
    /// never asked).
    pub async fn check(&self, image: &ImageRef, at: &Target, platforms: &Platforms) -> CheckReport {
        let mut report = CheckReport {
            image: image.text.clone(),
            servable: false,
            digest: None,
            manifests: 0,
            blobs: 0,
            bytes: 0,
            missing: Vec::new(),
        };
        let top = match &image.reference {
            Reference::Tag(tag) => self.core.cached_tag(at, tag).await,
            Reference::Digest(d) => self.core.cached_manifest(d).await,
        };
        let top = match top {
            Ok(Some(m)) => m,
            Ok(None) => {
                report.missing.push(match &image.reference {
                    Reference::Tag(t) => format!("tag {}", t.as_str()),
                    Reference::Digest(d) => format!("manifest {d}"),
                });
                return report;
            }
            Err(e) => {
                report.missing.push(format!("cache unreadable: {e}"));
                return report;
            }
        };
        report.digest = Some(top.digest.to_string());
        let mut pending = vec![(top, 0u8)];
        let mut seen = HashSet::new();
        while let Some((m, depth)) = pending.pop() {
            report.manifests += 1;
            report.bytes += m.bytes.len() as u64;
            let Ok(parsed) = Parsed::of(&m) else {
                report
                    .missing
                    .push(format!("readable manifest {}", m.digest));
                continue;
            };
            if parsed.is_index() {
                let mut taken = 0;
                for child in &parsed.manifests {
                    let p = child.platform.as_ref();
                    if !platforms.takes(
                        p.and_then(|p| p.os.as_deref()),
                        p.and_then(|p| p.architecture.as_deref()),
                        p.and_then(|p| p.variant.as_deref()),
                    ) {
                        continue;
                    }
                    taken += 1;
                    let Ok(digest) = parse_digest(&child.digest) else {
                        continue;
                    };
                    match self.core.cached_manifest(&digest).await {
                        Ok(Some(cm)) if depth < MAX_DEPTH => pending.push((cm, depth + 1)),
                        _ => report.missing.push(format!("manifest {digest}")),
                    }
                }
                if taken == 0 {
                    report
                        .missing
                        .push(format!("a manifest for {platforms} in index {}", m.digest));
                }
                continue;
            }
            for (digest, _) in parsed.blobs().unwrap_or_default() {
                if !seen.insert(digest.clone()) {
                    continue;
                }
                report.blobs += 1;
                match self.core.cached_blob_size(&digest).await {
                    Ok(Some(size)) => report.bytes += size,
                    _ => report.missing.push(format!("blob {digest}")),
                }
            }
        }
        report.servable = report.missing.is_empty();
        report
    }
}

fn describe_blob_error(digest: &Digest, e: &FetchError) -> String {
    match e {
        FetchError::NoSpace(_) => format!("blob {digest}: no room in the cache for it"),
        e => format!("blob {digest}: {e}"),
    }
}
