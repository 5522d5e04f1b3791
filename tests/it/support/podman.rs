//! One Podman with storage (vfs, `--root`/`--runroot`), configuration
//! (`CONTAINERS_REGISTRIES_CONF`, a signature policy) and home in a temp
//! dir, so tests never touch the machine's own.

use super::process::run_bounded;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A policy that accepts any image: for pulls that check no signature.
pub const ACCEPT_ANYTHING: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

/// One Podman with storage, configuration and home in a temp dir.
pub struct Podman {
    /// Storages (`--root`, `--runroot`) live in named directories under it.
    pub root: PathBuf,
    pub home: PathBuf,
    /// `CONTAINERS_REGISTRIES_CONF`.
    pub registries_conf: PathBuf,
    /// `--signature-policy`.
    pub policy: PathBuf,
}

impl Podman {
    /// `podman pull REFERENCE`: its output, whatever the outcome.
    pub fn pull(&self, storage: &str, reference: &str) -> Output {
        self.pull_with(storage, &[], reference)
    }

    /// `podman pull FLAGS… REFERENCE` (e.g. `--tls-verify=false`).
    pub fn pull_with(&self, storage: &str, flags: &[&str], reference: &str) -> Output {
        let mut command = Command::new("podman");
        command
            .env("HOME", &self.home)
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .arg("--root")
            .arg(self.root.join(storage).join("root"))
            .arg("--runroot")
            .arg(self.root.join(storage).join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "pull",
            ])
            .arg("--signature-policy")
            .arg(&self.policy)
            .args(flags)
            .arg(reference);
        run_bounded(command, Duration::from_secs(120))
    }

    /// The manifest digest of the image Podman stored for `reference`.
    pub fn digest(&self, storage: &str, reference: &str) -> String {
        let mut command = Command::new("podman");
        command
            .env("HOME", &self.home)
            .arg("--root")
            .arg(self.root.join(storage).join("root"))
            .arg("--runroot")
            .arg(self.root.join(storage).join("run"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(["image", "inspect", "--format", "{{.Digest}}", reference]);
        let output = run_bounded(command, Duration::from_secs(60));
        assert!(
            output.status.success(),
            "podman image inspect: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A Podman under `dir` with `registries_conf` as its registries.conf
    /// and a policy that accepts any image.
    pub fn in_dir(dir: &Path, registries_conf: &str) -> Podman {
        let conf = dir.join("registries.conf");
        std::fs::write(&conf, registries_conf).expect("write registries.conf");
        let policy = dir.join("policy.json");
        std::fs::write(&policy, ACCEPT_ANYTHING).expect("write policy.json");
        Podman {
            root: dir.join("podman"),
            home: dir.join("home"),
            registries_conf: conf,
            policy,
        }
    }
}
