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

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};
    use std::io::Write;

    fn load(text: &str) -> Result<Config, String> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(Some(f.path()), &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn sets_load_with_defaults() {
        let c = load("[[warm]]\nimages = [\"nginx:1.27\"]\n").unwrap();
        assert_eq!(c.warm_reserve, 10);
        let set = &c.warm[0];
        assert_eq!(set.name, "warm[0]");
        assert_eq!(set.every, super::DEFAULT_EVERY);
        assert!(!set.pin);
        assert_eq!(set.platforms, crate::oci::Platforms::default());
        let c = load("warm_reserve = 3\n[[warm]]\nimages = [\"a\"]\nplatforms = [\"all\"]\nevery = \"5m\"\npin = true\n").unwrap();
        assert_eq!(c.warm_reserve, 3);
        assert_eq!(c.warm[0].every.as_secs(), 300);
        assert_eq!(c.warm[0].platforms, crate::oci::Platforms::All);
    }

    #[test]
    fn bad_sets_name_their_key() {
        for (text, key) in [
            ("[[warm]]\nimages = []\n", "warm[0].images"),
            ("[[warm]]\nimages = [\"UP\"]\n", "warm[0].images"),
            ("[[warm]]\nimages = [\"a\"]\nplatforms = [\"linux\"]\n", "warm[0].platforms"),
            ("[[warm]]\nimages = [\"a\"]\nevery = \"0s\"\n", "warm[0].every"),
            ("[[warm]]\nimages = [\"a\"]\npinned = true\n", "pinned"),
            (
                "[[warm]]\nname = \"x\"\nimages = [\"a\"]\n[[warm]]\nname = \"x\"\nimages = [\"b\"]\n",
                "warm[1].name",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }
}
