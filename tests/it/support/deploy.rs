//! Helpers for the deploy/ suites: paths into deploy/, YAML read through
//! Debian's python3-yaml, a guard for long-running tools (HAProxy,
//! Prometheus) stopped by PID, bounded waits, and Prometheus text parsing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The system interpreter, which Debian's `python3-yaml` installs into (a
/// `python3` earlier on PATH, e.g. pyenv's, may lack the module).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// `deploy/<rel>` in this repository.
pub fn deploy_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

/// The text of `deploy/<rel>`.
pub fn read_deploy(rel: &str) -> String {
    let path = deploy_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Whether /usr/bin/python3 can `import yaml`. Under `CI=true` a missing
/// module fails the test, like a missing tool.
pub fn require_python_yaml() -> bool {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{SYSTEM_PYTHON} with the yaml module (python3-yaml) is required (CI=true)");
        }
        eprintln!("skipping: {SYSTEM_PYTHON} cannot import yaml (install python3-yaml)");
    }
    ok
}

/// Every document of the YAML file at `path`, as JSON values (safe_load).
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)\n";
    let mut command = Command::new(SYSTEM_PYTHON);
    command.args(["-c", script]).arg(path);
    let output = super::process::run_bounded(command, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "{} is not valid YAML: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("python printed JSON");
    docs.as_array().expect("a list of documents").clone()
}

/// The single YAML document in `deploy/<rel>`.
pub fn yaml_document(rel: &str) -> serde_json::Value {
    let mut docs = yaml_documents(&deploy_path(rel));
    assert_eq!(docs.len(), 1, "deploy/{rel} should hold one YAML document");
    docs.remove(0)
}

/// Runs `program args` bounded in time and returns (success, stdout+stderr).
pub fn run_tool(program: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = super::process::run_bounded(command, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A long-running helper process (HAProxy, Prometheus) whose output goes to
/// a log file; dropped, it is killed by PID and reaped.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Daemon {
    /// Spawns `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Daemon {
        let log = std::fs::File::create(log_path).expect("create daemon log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Daemon {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET `path` with the support HTTP client; (status, body) or None when the
/// connection fails.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    super::registry::http(addr, "GET", path, &[])
        .ok()
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Percent-encodes a query parameter value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Metric family names declared by `# TYPE` lines of a text exposition.
pub fn metric_families(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `pullthrough_…` metric name mentioned in `text` (a PromQL
/// expression, a rules file), with histogram suffixes folded into the family.
pub fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("pullthrough_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                if family.ends_with("_seconds") {
                    name = family;
                }
            }
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}
