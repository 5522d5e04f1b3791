//! `[[warm]]` sets: images the mirror fetches at start-up and keeps fresh
//! on a schedule, optionally pinned against eviction; and `warm_reserve`.

use super::values::HumanDuration;
use super::ConfigError;
use crate::oci::{ImageRef, Platforms};
use serde::Deserialize;
use std::time::Duration;

/// How often a set is revalidated unless it says.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Upstream pulls a warm leaves to client traffic unless told.
pub const DEFAULT_RESERVE: u64 = 10;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileWarm {
    pub name: Option<String>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    pub every: Option<HumanDuration>,
    #[serde(default)]
    pub pin: bool,
    #[serde(default)]
    pub referrers: bool,
}

/// One validated warm set.
#[derive(Clone, Debug)]
pub struct WarmSet {
    /// `name`, or `warm[i]`: the `set` label of its metrics.
    pub name: String,
    pub images: Vec<ImageRef>,
    pub platforms: Platforms,
    pub every: Duration,
    pub pin: bool,
    pub referrers: bool,
}

pub(super) fn resolve(sets: Vec<FileWarm>) -> Result<Vec<WarmSet>, ConfigError> {
    let mut out: Vec<WarmSet> = Vec::new();
    for (i, set) in sets.into_iter().enumerate() {
        let key = |k: &str| format!("warm[{i}].{k}");
        let invalid = |k: &str, message: String| ConfigError::Invalid {
            key: key(k),
            message,
        };
        if set.images.is_empty() {
            return Err(invalid("images", "names no image".into()));
        }
        let images = set
            .images
            .iter()
            .map(|s| s.parse::<ImageRef>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("images", e.to_string()))?;
        let platforms = Platforms::parse_list(set.platforms.iter().map(String::as_str))
            .map_err(|e| invalid("platforms", e.to_string()))?;
        let every = set.every.map_or(DEFAULT_EVERY, |d| d.0);
        if every.is_zero() {
            return Err(invalid("every", "must be more than 0s".into()));
        }
        let name = set.name.unwrap_or_else(|| format!("warm[{i}]"));
        if out.iter().any(|o| o.name == name) {
            return Err(invalid("name", format!("{name:?} is used twice")));
        }
        out.push(WarmSet {
            name,
            images,
            platforms,
            every,
            pin: set.pin,
            referrers: set.referrers,
        });
    }
    Ok(out)
}
