//! The ORAS project's Python client (`oras` on PyPI, in the tools venv
//! that `tests/run-all.sh` keeps under `target/tools-venv`) driven through
//! `oras_client.py`: pushes artifacts to a registry, pulls them back.

use super::process::run_bounded;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/support/oras_client.py"
);

/// A Python that can `import oras`: the tools venv's, else `python3` on
/// PATH. Missing under `CI=true` is a failure, never a skip.
pub fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools-venv/bin/python");
    let found = [venv, PathBuf::from("python3")].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import oras.provider"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the oras Python package is required by this test and is missing (CI=true)");
        }
        eprintln!("skipping: the oras Python package is not installed (tests/run-all.sh)");
    }
    found
}

/// An artifact to push: `(path, media type)` of its config and layers.
pub struct Artifact<'a> {
    /// `None`: no `artifactType` (a Helm chart has none).
    pub artifact_type: Option<&'a str>,
    pub config: (&'a Path, &'a str),
    pub layers: Vec<(&'a Path, &'a str)>,
    /// `(media type, digest, size)` of the manifest it refers to.
    pub subject: Option<(&'a str, &'a str, usize)>,
}

/// `oras push` of `artifact` to `reference` (`HOST/NAME:TAG`, plain
/// HTTP); returns the manifest digest the registry answered.
pub fn push(python: &Path, reference: &str, artifact: &Artifact) -> String {
    let described = |(path, media): (&Path, &str)| format!("{}:{media}", path.display());
    let mut command = Command::new(python);
    command
        .arg(SCRIPT)
        .args(["push", reference, artifact.artifact_type.unwrap_or("-")])
        .arg(described(artifact.config));
    if let Some((media, digest, size)) = artifact.subject {
        command
            .arg("--subject")
            .arg(format!("{media},{digest},{size}"));
    }
    command.args(artifact.layers.iter().map(|&layer| described(layer)));
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "oras push {reference} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `oras pull` of `reference` into `out`; returns the files written.
pub fn pull(python: &Path, reference: &str, out: &Path) -> Vec<PathBuf> {
    let mut command = Command::new(python);
    command.arg(SCRIPT).args(["pull", reference]).arg(out);
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "oras pull {reference} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}
