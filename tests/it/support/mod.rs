//! Helpers shared by every suite: the mirror ([`mirror::Mirror`]), ports,
//! hashing, polling, metrics, and the rule that a missing real component
//! fails under CI.

#![allow(dead_code)]

pub mod cache;
pub mod cli;
pub mod client;
pub mod containerd;
pub mod deploy;
pub mod docker;
pub mod hosts;
pub mod hub;
pub mod metrics;
pub mod mirror;
pub mod oci_layout;
pub mod oras;
pub mod podman;
pub mod process;
pub mod proxies;
pub mod registry;
pub mod rgw;
pub mod tcp_proxy;
pub mod two_registries;

use sha2::{Digest as _, Sha256};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The manifest Accept list the suites send, as Docker and containerd do.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, \
    application/vnd.docker.distribution.manifest.v2+json;q=0.8";

/// Runs `future` to its end from inside a [`wait_until`] condition (which
/// runs off the test runtime's workers) or any multi-thread tokio test.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(future))
}

/// Waits until the system clock's whole second changes: the cache keeps
/// access times in whole seconds, so two uses on either side of this call
/// are ordered for the LRU.
pub fn next_second() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let start = now();
    wait_until("the next second", Duration::from_secs(2), || {
        (now() > start).then_some(())
    });
}

/// How often [`wait_until`] looks.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some` (bounded by `timeout`, and so in
/// count) and returns the value; panics naming `what` otherwise. Works from
/// sync tests and multi-thread `#[tokio::test]`s alike (it steps off the
/// runtime's worker while it sleeps).
pub fn wait_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`wait_until`] that returns `None` at the deadline instead of panicking,
/// for callers that explain the failure themselves.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let mut run = || {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_EVERY);
        }
    };
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// `sha256:<hex>` of `bytes`, as registries name content.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether an external program is on PATH. Under `CI=true` a missing
/// program is a failure, never a silent skip: a skipped suite hides holes.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required by this test and is missing (CI=true)");
        }
        eprintln!("skipping: {tool} not installed (run the README test command)");
    }
    found
}
