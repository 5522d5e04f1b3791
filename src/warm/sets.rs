//! The configured `[[warm]]` sets in a running mirror: warmed in the
//! background after start-up (readiness never waits for them), then
//! revalidated every `every` with manifest HEADs, fetching only what
//! moved. A pinned set's manifests and blobs are kept from eviction; its
//! size counts against `max_size`, checked at start-up against what the
//! cache already knows and again once each refresh has the manifests
//! (before any blob is fetched).

use super::engine::{Parsed, Plan, Warmer};
use crate::cache::{unix_now, ContentStore, Index, TagKey};
use crate::config::WarmSet;
use crate::fetch::accept::AcceptList;
use crate::fetch::{PullThrough, Target};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName, MAX_MANIFEST_BYTES};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per set: the digests it pins and their bytes.
type Pins = HashMap<String, (HashSet<String>, u64)>;

/// What a warm set needs of the running mirror.
pub trait WarmHost: Send + Sync + 'static {
    fn core(&self) -> &PullThrough;
    fn metrics(&self) -> &Metrics;
    /// The upstream and repository a name means, as for a pull.
    fn target(&self, name: &RepoName) -> Result<Target, String>;
}

#[derive(Debug, thiserror::Error)]
#[error("the pinned warm sets need {needed} bytes ({detail}), more than max_size {max_size} bytes; raise max_size or pin less")]
pub struct PinError {
    pub needed: u64,
    pub max_size: u64,
    /// Bytes per set, e.g. `base: 1200 bytes`.
    pub detail: String,
}

/// What the pinned sets hold as far as a cache's own manifests tell:
/// found before serving (and by the offline `gc`), so eviction keeps them
/// from the first moment, before the background warm has re-read them.
#[derive(Default)]
pub struct KnownPins {
    /// Per set: its digests and their bytes.
    by_set: Pins,
}

impl KnownPins {
    pub fn bytes(&self) -> u64 {
        self.by_set.values().map(|(_, b)| b).sum()
    }

    /// Every pinned digest (`sha256:…`).
    pub fn digests(&self) -> HashSet<String> {
        self.by_set.values().flat_map(|(d, _)| d).cloned().collect()
    }
}

/// How the sets run.
pub struct SetOptions {
    pub max_size: Option<u64>,
    pub reserve: u64,
    pub poll: Duration,
}

/// Starts one task per set. Pins are the union over the sets, replaced
/// whenever a set refreshes (a tag that moved unpins what it left).
pub fn spawn_sets<H: WarmHost>(
    host: Arc<H>,
    sets: Vec<WarmSet>,
    options: SetOptions,
    known: KnownPins,
) {
    let pins: Arc<Mutex<Pins>> = Arc::new(Mutex::new(known.by_set));
    let options = Arc::new(options);
    for set in sets {
        let (host, pins, options) = (Arc::clone(&host), Arc::clone(&pins), Arc::clone(&options));
        host.metrics()
            .warm_images
            .with_label_values(&[&set.name])
            .set(set.images.len() as i64);
        host.metrics()
            .warm_images_ready
            .with_label_values(&[&set.name])
            .set(0);
        tokio::spawn(async move {
            let mut revalidate = false;
            loop {
                refresh(host.as_ref(), &set, &options, &pins, revalidate).await;
                revalidate = true;
                tokio::time::sleep(set.every).await;
            }
        });
    }
}

/// One pass over a set: manifests first, then (within the budget) blobs.
async fn refresh<H: WarmHost>(
    host: &H,
    set: &WarmSet,
    options: &SetOptions,
    pins: &Mutex<Pins>,
    revalidate: bool,
) {
    let warmer = Warmer {
        core: host.core(),
        reserve: options.reserve,
        poll: options.poll,
        revalidate,
    };
    let mut plans: Vec<Plan> = Vec::new();
    let mut failed = Vec::new();
    for image in &set.images {
        let at = match host.target(&image.name) {
            Ok(at) => at,
            Err(e) => {
                failed.push(format!("{image}: {e}"));
                continue;
            }
        };
        match warmer.plan(image, &at, &set.platforms, set.referrers).await {
            Ok(plan) => plans.push(plan),
            Err(report) => failed.push(format!("{image}: {}", report.error.unwrap_or_default())),
        }
    }
    let mut ready = 0;
    if set.pin {
        let mut digests = HashSet::new();
        let mut bytes = 0;
        for plan in &plans {
            let blob_bytes: u64 = plan.blobs.iter().map(|(_, s)| s).sum();
            // Manifests (counted per image), then blobs shared across
            // images once.
            bytes += plan.bytes() - blob_bytes;
            for d in &plan.manifests {
                digests.insert(d.to_string());
            }
            for (d, size) in &plan.blobs {
                if digests.insert(d.to_string()) {
                    bytes += size;
                }
            }
        }
        let mut pins = pins.lock().unwrap_or_else(|e| e.into_inner());
        let others: u64 = pins
            .iter()
            .filter(|(name, _)| **name != set.name)
            .map(|(_, (_, b))| b)
            .sum();
        if let Some(max_size) = options.max_size.filter(|&m| bytes + others > m) {
            tracing::error!(
                set = %set.name,
                needed = bytes,
                other_pins = others,
                max_size,
                "warm set not pinned and its blobs not fetched: the pinned sets would need more than max_size"
            );
            drop(pins);
            let m = host.metrics();
            m.warm_images_ready.with_label_values(&[&set.name]).set(0);
            m.warm_last_refresh
                .with_label_values(&[&set.name])
                .set(unix_now() as i64);
            return;
        }
        // Pinned before the blobs land, so eviction never takes a part of
        // the set that arrived first.
        pins.insert(set.name.clone(), (digests, bytes));
        let all = pins.values().flat_map(|(d, _)| d).cloned().collect();
        drop(pins);
        host.core().set_pinned(all);
        host.metrics()
            .warm_pinned_bytes
            .with_label_values(&[&set.name])
            .set(bytes as i64);
    }
    for plan in plans {
        let image = plan.report.image.clone();
        let report = warmer.fetch(plan, &|_| {}).await;
        if report.ok {
            ready += 1;
            if report.blobs_fetched > 0 {
                tracing::info!(set = %set.name, %image, blobs = report.blobs_fetched, bytes = report.bytes_fetched, "warmed");
            }
        } else {
            failed.push(format!("{image}: {}", report.error.unwrap_or_default()));
        }
    }
    for failure in &failed {
        tracing::warn!(set = %set.name, error = %failure, "cannot warm image");
    }
    let m = host.metrics();
    m.warm_images_ready
        .with_label_values(&[&set.name])
        .set(ready);
    m.warm_last_refresh
        .with_label_values(&[&set.name])
        .set(unix_now() as i64);
}

/// At start-up, before serving (and in the offline `gc`): what the pinned
/// sets hold as far as the cache already has their manifests (the rest
/// becomes known when the background warm has them, and is checked then);
/// an error if that is over `max_size`. `resolve` names the upstream and
/// the repository as the upstream spells it.
pub fn known_pins(
    store: &dyn ContentStore,
    index: &Index,
    sets: &[WarmSet],
    max_size: Option<u64>,
    resolve: &dyn Fn(&RepoName) -> Option<(String, RepoName)>,
) -> Result<KnownPins, PinError> {
    let mut seen = HashSet::new();
    let mut known = KnownPins::default();
    for set in sets.iter().filter(|s| s.pin) {
        let mut set_bytes = 0;
        let mut digests = HashSet::new();
        for image in &set.images {
            let Some((upstream, repo)) = resolve(&image.name) else {
                continue;
            };
            let top = match &image.reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(tag) => recorded_tag(index, &upstream, &repo, tag),
            };
            let mut pending: Vec<(Digest, u8)> = top.into_iter().map(|d| (d, 0)).collect();
            while let Some((digest, depth)) = pending.pop() {
                let Ok(Some(bytes)) = store.read_small(&digest, MAX_MANIFEST_BYTES as u64) else {
                    continue;
                };
                digests.insert(digest.to_string());
                if seen.insert(digest.clone()) {
                    set_bytes += bytes.len() as u64;
                }
                let Ok(parsed) = serde_json::from_slice::<Parsed>(&bytes) else {
                    continue;
                };
                if parsed.is_index() {
                    if depth < 2 {
                        pending.extend(
                            parsed
                                .children(&set.platforms)
                                .into_iter()
                                .map(|d| (d, depth + 1)),
                        );
                    }
                    continue;
                }
                for (d, size) in parsed.blobs().unwrap_or_default() {
                    digests.insert(d.to_string());
                    if seen.insert(d) {
                        set_bytes += size;
                    }
                }
            }
        }
        known.by_set.insert(set.name.clone(), (digests, set_bytes));
    }
    let needed = known.bytes();
    match max_size {
        Some(max_size) if needed > max_size => {
            let mut detail: Vec<String> = known
                .by_set
                .iter()
                .map(|(name, (_, b))| format!("{name}: {b} bytes"))
                .collect();
            detail.sort();
            Err(PinError {
                needed,
                max_size,
                detail: detail.join(", "),
            })
        }
        _ => Ok(known),
    }
}

/// The digest a tag maps to in the index: the warm's own mapping, else
/// any client kind's.
fn recorded_tag(
    index: &Index,
    upstream: &str,
    repo: &RepoName,
    tag: &crate::oci::Tag,
) -> Option<Digest> {
    let key = TagKey {
        upstream: upstream.to_owned(),
        repo: repo.clone(),
        tag: tag.clone(),
        accept: AcceptList::all().class(),
    };
    if let Ok(Some(r)) = index.tag(&key) {
        return Some(r.digest);
    }
    index
        .tags()
        .find(|(k, _)| k.upstream == key.upstream && k.repo == key.repo && k.tag == key.tag)
        .map(|(_, r)| r.digest)
}
