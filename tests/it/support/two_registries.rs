//! Two real registries (Debian `docker-registry`) standing for Docker Hub
//! and ghcr.io, each holding a different `library/demo:v1`, behind one
//! mirror with an `[[upstream]]` for each; their access logs tell which
//! registry the mirror asked for what, and that no client went around it.

use super::mirror::Mirror;
use super::oci_layout::{self, Image};
use super::registry::Registry;
use super::sha256_digest;
use std::path::Path;

/// Config text for `[[upstream]]` entries of (name, url, extra lines).
pub fn upstreams_toml(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, url, extra)| {
            format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
        })
        .collect()
}

pub struct TwoRegistries {
    pub hub: Registry,
    pub ghcr: Registry,
    pub hub_image: Image,
    pub ghcr_image: Image,
    /// Log lengths after seeding: later lines are the mirror's requests.
    hub_log_mark: usize,
    ghcr_log_mark: usize,
    pub mirror: Mirror,
    tmp: tempfile::TempDir,
}

impl TwoRegistries {
    pub fn start() -> TwoRegistries {
        TwoRegistries::start_with("", "")
    }

    /// As [`TwoRegistries::start`], with extra lines (e.g. `hosts = […]`)
    /// in the docker.io and the ghcr.io `[[upstream]]`.
    pub fn start_with(hub_extra: &str, ghcr_extra: &str) -> TwoRegistries {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let hub_image = oci_layout::write_image(&t.join("layout-hub"), "v1", 701, &[40_000, 9_000]);
        let ghcr_image = oci_layout::write_image(&t.join("layout-ghcr"), "v1", 702, &[30_000]);
        let hub = Registry::start(&t.join("registry-hub"));
        let ghcr = Registry::start(&t.join("registry-ghcr"));
        hub.seed(&t.join("layout-hub"), "v1", "library/demo:v1");
        ghcr.seed(&t.join("layout-ghcr"), "v1", "library/demo:v1");
        let toml = upstreams_toml(&[
            ("docker.io", &hub.url(), hub_extra),
            ("ghcr.io", &ghcr.url(), ghcr_extra),
        ]);
        let mirror = Mirror::builder(&hub.url()).config(&toml).start();
        TwoRegistries {
            hub_log_mark: hub.log().len(),
            ghcr_log_mark: ghcr.log().len(),
            hub,
            ghcr,
            hub_image,
            ghcr_image,
            mirror,
            tmp,
        }
    }

    /// Pushes ghcr.io's image once more as `reference` (e.g. `owner/app:1`).
    pub fn seed_ghcr_as(&mut self, reference: &str) {
        self.ghcr
            .seed(&self.tmp.path().join("layout-ghcr"), "v1", reference);
        // The copy's own requests are not the mirror's.
        let _ = self.ghcr.requests();
        self.ghcr_log_mark = self.ghcr.log().len();
    }

    /// The two registries' access-log lines since seeding.
    pub fn logs_since_seeding(&self) -> (String, String) {
        // requests() waits for the log to settle.
        let _ = (self.hub.requests(), self.ghcr.requests());
        let since = |registry: &Registry, mark: usize| registry.log()[mark..].to_string();
        (
            since(&self.hub, self.hub_log_mark),
            since(&self.ghcr, self.ghcr_log_mark),
        )
    }

    /// Every access-log line since seeding came from pullthrough: no client
    /// fell back to the registry directly. Returns those lines.
    pub fn assert_only_the_mirror_asked(&self) -> (String, String) {
        let logs = self.logs_since_seeding();
        for log in [&logs.0, &logs.1] {
            for line in log
                .lines()
                .filter(|l| l.contains("\"GET /v2") || l.contains("\"HEAD /v2"))
            {
                assert!(
                    line.contains("pullthrough/"),
                    "a client reached a registry directly: {line}"
                );
            }
        }
        logs
    }
}

/// `dir/<hex>` holds the bytes that `digest` names (skopeo's `dir:` layout).
pub fn assert_blob_in(dir: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = std::fs::read(dir.join(hex)).unwrap_or_else(|e| panic!("{digest}: {e}"));
    assert_eq!(sha256_digest(&bytes), digest);
}
