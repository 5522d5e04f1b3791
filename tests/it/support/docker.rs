//! Runs a private Docker daemon (dockerd 20.10 with its own containerd, vfs
//! storage, no networking) whose `registry-mirrors` names a given mirror (or
//! that pulls from it as a plain registry), and drives it with the `docker`
//! CLI. Everything lives under one short temp directory; drop stops the
//! processes by PID and removes their mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one docker CLI command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct DockerDaemon {
    child: Option<Child>,
    /// Short on purpose: unix socket paths must stay under 108 bytes.
    dir: tempfile::TempDir,
}

impl DockerDaemon {
    /// Starts dockerd with `mirror_url` (e.g. `http://127.0.0.1:5000`) as its
    /// only registry mirror and waits (bounded) until `docker info` answers.
    pub fn start(mirror_url: &str) -> DockerDaemon {
        let host = mirror_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        DockerDaemon::start_with(&[mirror_url], &[host])
    }

    /// Starts dockerd with these `registry-mirrors` (maybe none) and
    /// `insecure-registries` (`host:port`, reached over plain HTTP).
    pub fn start_with(mirrors: &[&str], insecure: &[&str]) -> DockerDaemon {
        let dir = tempfile::Builder::new()
            .prefix("ptd")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let config = serde_json::json!({
            "registry-mirrors": mirrors,
            "insecure-registries": insecure,
            "storage-driver": "vfs",
            "iptables": false,
            "ip6tables": false,
            "bridge": "none",
            "ip-forward": false,
            "ip-masq": false,
        });
        let config_path = dir.path().join("daemon.json");
        std::fs::write(&config_path, config.to_string()).expect("write daemon.json");
        let log =
            std::fs::File::create(dir.path().join("dockerd.log")).expect("create dockerd log");
        let d = dir.path();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config_path)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut daemon = DockerDaemon {
            child: Some(child),
            dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self
                .cli(&["info", "--format", "{{.ServerVersion}}"])
                .status
                .success()
            {
                eprintln!("dockerd ready in {:?}", started.elapsed());
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "dockerd exited ({status}) before answering:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "dockerd did not answer `docker info` within 60 s:\n{}",
            self.log_tail()
        );
    }

    /// Runs `docker ARGS` against this daemon, bounded by a timeout.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new("docker");
        command
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_CONTEXT");
        super::process::run_bounded(command, COMMAND_TIMEOUT)
    }

    /// `docker pull IMAGE`; panics with the daemon log if it fails.
    pub fn pull(&self, image: &str) {
        self.expect_success(&["pull", "--quiet", image]);
    }

    /// `docker rmi IMAGE`; panics if it fails.
    pub fn rmi(&self, image: &str) {
        self.expect_success(&["rmi", image]);
    }

    /// `docker image inspect IMAGE` as JSON, or None if there is no such image.
    pub fn inspect(&self, image: &str) -> Option<serde_json::Value> {
        let output = self.cli(&["image", "inspect", image]);
        if !output.status.success() {
            return None;
        }
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("inspect JSON");
        list.get(0).cloned()
    }

    fn expect_success(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let output = self.cli(args);
        eprintln!("docker {} took {:?}", args.join(" "), started.elapsed());
        assert!(
            output.status.success(),
            "docker {} failed ({}):\n{}{}\n--- dockerd log ---\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        output
    }

    /// The last lines of dockerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGTERM, then SIGKILL after a bound; then its containerd and any
    /// leftover process it started, then the mounts under our directory.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let descendants = descendants(pid);
        signal("TERM", pid);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("dockerd stopped in {:?}", started.elapsed());
        for pid in descendants {
            signal("KILL", pid);
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// PIDs of every live descendant of `root` (containerd, shims), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Lazily unmounts everything mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}
