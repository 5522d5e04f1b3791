//! A pullthrough process started by hand, for the suites that need more
//! than `support::mirror::Mirror` gives: its own working directory (so a
//! test can see every file it creates), extra environment variables, and
//! its stderr captured in a file (so a test can read what it logged).

use crate::support::free_port;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MirrorProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The working directory; the cache is `<root>/cache`.
    pub root: PathBuf,
    pub cache_dir: PathBuf,
    stderr_path: PathBuf,
    /// Root and log directories; the log stays outside `root`.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl MirrorProcess {
    /// Runs `pullthrough serve --listen … --cache-dir <root>/cache ARGS` in
    /// a fresh working directory, with `env` added to the environment, and
    /// waits (bounded) until it listens. `RUST_LOG` defaults to `warn`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> MirrorProcess {
        let root_dir = tempfile::tempdir().expect("tempdir");
        let log_dir = tempfile::tempdir().expect("tempdir");
        let root = root_dir.path().to_path_buf();
        let cache_dir = root.join("cache");
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--cache-dir")
            .arg(&cache_dir)
            .args(args)
            .current_dir(&root)
            .env("RUST_LOG", "warn")
            .env_remove("PULLTHROUGH_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn pullthrough");
        let mut process = MirrorProcess {
            child: Some(child),
            addr,
            root,
            cache_dir,
            stderr_path,
            _dirs: (root_dir, log_dir),
        };
        process.wait_listening();
        process
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, then wait (bounded; SIGKILL after 15 s) so stderr is complete.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "pullthrough exited ({status}) before listening:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "pullthrough did not listen on {} within 20 s:\n{}",
            self.addr,
            self.stderr()
        );
    }
}

impl Drop for MirrorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every path under `dir` (files and directories), relative to it, except
/// what lies under `skip` (a relative path).
pub fn paths_under(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: a test directory never holds this many entries.
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
            if relative.starts_with(skip) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
            found.push(relative);
            assert!(
                found.len() < 100_000,
                "runaway directory tree under {dir:?}"
            );
        }
    }
    found.sort();
    found
}
