//! Real egress proxies from Debian packages, started per test on a port
//! of their own and stopped (by their own PID) when dropped: tinyproxy for
//! HTTP forward and CONNECT, microsocks for SOCKS5. Both need a user name
//! and password, and both keep a log the tests read to see what went
//! through them.

use super::{free_port, wait_until};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxies' user and password in the tests.
pub const USER: &str = "puller";
pub const PASSWORD: &str = "pr0xy-s3cret";

pub struct Proxy {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// Where the log stood once the proxy was up: the readiness probe's
    /// own connection is logged before it.
    skip: usize,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// tinyproxy on 127.0.0.1, Basic auth required, clients from 127/8.
    pub fn tinyproxy() -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 64\nAllow 127.0.0.0/8\nBasicAuth {USER} {PASSWORD}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tinyproxy");
        let mut proxy = Proxy::started(child, port, log, dir);
        // tinyproxy logs the probe as a client that closed at once.
        let _ = super::poll(Duration::from_secs(2), || {
            proxy
                .log()
                .contains("closed socket before read")
                .then_some(())
        });
        proxy.skip = proxy.log().len();
        proxy
    }

    /// microsocks on 127.0.0.1 with user/password auth; it logs each
    /// connection it makes (`client[N] <ip>: connected to <host>:<port>`).
    pub fn microsocks() -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("microsocks.log");
        let out = std::fs::File::create(&log).expect("microsocks log");
        let child = Command::new("microsocks")
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                USER,
                "-P",
                PASSWORD,
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn microsocks");
        Proxy::started(child, port, log, dir)
    }

    fn started(child: Child, port: u16, log: PathBuf, dir: tempfile::TempDir) -> Proxy {
        let mut proxy = Proxy {
            child,
            port,
            log,
            skip: 0,
            _dir: dir,
        };
        wait_until("the proxy to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("the proxy exited ({status}): {}", proxy.log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        proxy
    }

    /// `scheme://user:password@127.0.0.1:port`.
    pub fn url(&self, scheme: &str, password: &str) -> String {
        format!("{scheme}://{USER}:{password}@127.0.0.1:{}", self.port)
    }

    /// What the proxy logged since it was up.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes[self.skip.min(bytes.len())..]).into_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
