//! Runs the real pullthrough binary as a child process, the way users run it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mirror {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub cache_dir: PathBuf,
    /// Keeps the temporary cache directory alive when the mirror owns it.
    _tmp: Option<tempfile::TempDir>,
}

impl Mirror {
    /// Starts a mirror of `upstream` on a fresh port with a fresh cache.
    pub fn start(upstream: &str, extra_args: &[&str]) -> Mirror {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cache");
        let mut mirror = Mirror::start_with_cache(upstream, &dir, extra_args);
        mirror._tmp = Some(tmp);
        mirror
    }

    /// Starts a mirror on an existing cache directory (restarts, crash tests).
    pub fn start_with_cache(upstream: &str, cache_dir: &Path, extra_args: &[&str]) -> Mirror {
        let port = super::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = Command::new(env!("CARGO_BIN_EXE_pullthrough"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--cache-dir")
            .arg(cache_dir)
            .arg("--upstream")
            .arg(upstream)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn pullthrough");
        let mut mirror = Mirror {
            child: Some(child),
            addr,
            cache_dir: cache_dir.to_path_buf(),
            _tmp: None,
        };
        mirror.wait_ready();
        mirror
    }

    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("pullthrough exited before listening: {status}");
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("pullthrough did not listen on {} within 20 s", self.addr);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.kill();
    }
}
