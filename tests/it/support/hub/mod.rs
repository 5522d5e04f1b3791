//! An in-process stand-in for Docker Hub: a registry listener with bearer
//! token auth and a "CDN" listener that blob GETs redirect to. It counts and
//! records what it was asked, and injects faults on demand, so suites assert
//! on what the upstream saw. Content lives in `content`, faults in `faults`,
//! HTTP handling in `server`, tokens in `auth`.

mod auth;
mod content;
mod faults;
mod server;

pub use content::{random_bytes, TestImage, OCI_INDEX, OCI_MANIFEST};
pub use faults::{Fault, Target};

use bytes::Bytes;
use content::Store;
use faults::Faults;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::JoinHandle;

/// The `service` of the hub's bearer challenges.
pub const SERVICE: &str = "hub.test";

/// What the hub counts. Registry kinds count only requests that got past
/// auth: a first unauthenticated attempt shows up as `Unauthorized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ManifestGetByTag,
    ManifestGetByDigest,
    ManifestHeadByTag,
    ManifestHeadByDigest,
    /// Registry-side blob GETs (answered with a redirect).
    BlobGet,
    BlobHead,
    /// CDN GETs that were served (no Authorization header).
    CdnGet,
    /// CDN GETs answered 206 from a `Range: bytes=N-` (resumed downloads).
    CdnRangeGet,
    /// CDN GETs refused because they carried an Authorization header.
    CdnRejected,
    /// Blob body bytes the CDN handed to its connections.
    CdnBytesSent,
    /// Tokens issued.
    TokenFetch,
    /// Token body bytes handed to connections under `Fault::HugeToken`.
    TokenBytesSent,
    /// Token requests refused (private repository, wrong credentials).
    TokenRefused,
    /// Registry requests answered 401 for want of a valid token.
    Unauthorized,
    TagsList,
    /// Referrers API requests.
    Referrers,
    /// Search API requests (`/v1/search`, Docker Hub's index API).
    Search,
}

/// Which part of the hub a request reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Registry,
    Token,
    Cdn,
}

/// One request as the hub saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub site: Site,
    pub method: http::Method,
    /// Path and query, e.g. `/v2/library/x/manifests/latest`.
    pub path: String,
    pub headers: HeaderMap,
}

/// One request to the token endpoint. Holds the Basic user name and whether
/// the password matched, never the password itself.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub scopes: Vec<String>,
    pub service: Option<String>,
    pub basic_user: Option<String>,
    pub password_matched: bool,
}

/// Thread-safe counters by `Kind`.
#[derive(Default)]
pub struct Counters(Mutex<HashMap<Kind, u64>>);

impl Counters {
    pub fn add(&self, kind: Kind, n: u64) {
        *lock(&self.0).entry(kind).or_default() += n;
    }

    pub(super) fn get(&self, kind: Kind) -> u64 {
        lock(&self.0).get(&kind).copied().unwrap_or(0)
    }

    fn reset(&self) {
        lock(&self.0).clear();
    }
}

/// Shared by the hub handle and its listeners.
struct State {
    registry_url: String,
    cdn_url: String,
    store: Mutex<Store>,
    counters: Arc<Counters>,
    requests: Mutex<Vec<Recorded>>,
    token_requests: Mutex<Vec<TokenRequest>>,
    faults: Mutex<Faults>,
    /// repository → (user, password)
    private: Mutex<HashMap<String, (String, String)>>,
    /// token → repositories it opens (empty: only `/v2/`)
    tokens: Mutex<HashMap<String, Vec<String>>>,
    ratelimit_remaining: AtomicU64,
    /// user → its password and pull quota (Docker Hub accounts).
    accounts: Mutex<HashMap<String, Account>>,
    /// token → the account it was issued to.
    token_accounts: Mutex<HashMap<String, String>>,
    seq: AtomicU64,
}

/// An account with a pull limit of its own, as Docker Hub counts them.
struct Account {
    password: String,
    remaining: u64,
    pulls: u64,
}

/// A poisoned lock only means another test thread panicked; keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running stand-in. Dropping it stops both listeners and every open
/// connection.
pub struct Hub {
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Hub {
    /// Binds the registry and the CDN on 127.0.0.1 port 0 and serves them.
    pub async fn start() -> Hub {
        let registry = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hub registry");
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hub cdn");
        let url = |l: &tokio::net::TcpListener| format!("http://{}", l.local_addr().expect("addr"));
        let state = Arc::new(State {
            registry_url: url(&registry),
            cdn_url: url(&cdn),
            store: Mutex::default(),
            counters: Arc::default(),
            requests: Mutex::default(),
            token_requests: Mutex::default(),
            faults: Mutex::default(),
            private: Mutex::default(),
            tokens: Mutex::default(),
            ratelimit_remaining: AtomicU64::new(100),
            accounts: Mutex::default(),
            token_accounts: Mutex::default(),
            seq: AtomicU64::new(0),
        });
        let tasks = vec![
            server::serve(registry, state.clone(), server::Listener::Registry),
            server::serve(cdn, state.clone(), server::Listener::Cdn),
        ];
        Hub { state, tasks }
    }

    /// The registry's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.state.registry_url.clone()
    }

    /// The CDN's base URL.
    pub fn cdn_url(&self) -> String {
        self.state.cdn_url.clone()
    }

    /// The signed CDN URL the registry redirects GETs of blob `digest` to.
    pub fn cdn_blob_url(&self, digest: &str) -> String {
        format!(
            "{}/{digest}?sig={}",
            self.state.cdn_url,
            server::signature(digest)
        )
    }

    /// Stops the listeners and waits until they are closed, so the next
    /// connection attempt is refused.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stores a blob in `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> String {
        lock(&self.state.store).put_blob(repo, bytes.into())
    }

    /// Stores a manifest in `repo` (and points `tag` at it); returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        lock(&self.state.store).put_manifest(repo, tag, media_type, bytes.into())
    }

    /// Pushes an OCI image with random layers of the given sizes; each call
    /// makes different (but reproducible) bytes.
    pub fn push_image(&self, repo: &str, tag: &str, layer_sizes: &[usize]) -> TestImage {
        self.push_image_on(repo, tag, &[], layer_sizes)
    }

    /// Pushes an image whose first layers are `kept` (already in `repo`)
    /// and the rest new random layers of the given sizes, with a new
    /// config: a tag moving to a rebuilt image that shares its base.
    pub fn push_image_on(
        &self,
        repo: &str,
        tag: &str,
        kept: &[(String, Bytes)],
        layer_sizes: &[usize],
    ) -> TestImage {
        let seed = self.next_seed();
        let new_layers = layer_sizes.iter().enumerate().map(|(i, &size)| {
            let bytes = content::random_bytes(seed ^ ((i as u64 + 1) << 32), size);
            (self.put_blob(repo, bytes.clone()), bytes)
        });
        let layers: Vec<(String, Bytes)> = kept.iter().cloned().chain(new_layers).collect();
        let config_bytes = content::config_bytes(seed, &layers);
        let config = (self.put_blob(repo, config_bytes.clone()), config_bytes);
        let manifest_bytes = content::image_manifest(&config, &layers);
        let manifest_digest =
            self.put_manifest(repo, Some(tag), OCI_MANIFEST, manifest_bytes.clone());
        TestImage {
            manifest_digest,
            manifest_bytes,
            media_type: OCI_MANIFEST.to_string(),
            config,
            layers,
        }
    }

    /// Pushes an OCI image index over `images` (already pushed to `repo`),
    /// for linux/amd64 then linux/arm64; returns (digest, bytes).
    pub fn push_index(&self, repo: &str, tag: &str, images: &[&TestImage]) -> (String, Bytes) {
        let bytes = content::image_index(images);
        let digest = self.put_manifest(repo, Some(tag), OCI_INDEX, bytes.clone());
        (digest, bytes)
    }

    /// From now on, tokens for `repo` need Basic auth as `user`/`password`.
    pub fn make_private(&self, repo: &str, user: &str, password: &str) {
        lock(&self.state.private).insert(repo.into(), (user.into(), password.into()));
    }

    /// An account whose tokens have `pulls` manifest GETs in their
    /// window; then 429 with `ratelimit-remaining: 0`, as Docker Hub does.
    pub fn add_account(&self, user: &str, password: &str, pulls: u64) {
        let account = Account {
            password: password.into(),
            remaining: pulls,
            pulls: 0,
        };
        lock(&self.state.accounts).insert(user.into(), account);
    }

    /// Manifest GETs served to tokens of this account.
    pub fn account_pulls(&self, user: &str) -> u64 {
        lock(&self.state.accounts).get(user).map_or(0, |a| a.pulls)
    }

    /// The `ratelimit-remaining` the next manifest answers announce
    /// (each GET then spends one, HEADs none).
    pub fn set_ratelimit_remaining(&self, remaining: u64) {
        self.state
            .ratelimit_remaining
            .store(remaining, Ordering::Relaxed);
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.state.counters.get(kind)
    }

    /// Every request seen since the start or the last `reset_counts`.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// Every token request seen since the start or the last `reset_counts`.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.state.token_requests).clone()
    }

    /// Zeroes the counters and forgets recorded requests (tokens stay valid).
    pub fn reset_counts(&self) {
        self.state.counters.reset();
        lock(&self.state.requests).clear();
        lock(&self.state.token_requests).clear();
    }

    /// Forgets every token issued so far, as when they expire: the next
    /// registry request with one gets a 401 and the client needs a new one.
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Adds a fault; it applies to requests that arrive from now on.
    pub fn set_fault(&self, target: Target, fault: Fault) {
        lock(&self.state.faults).set(target, fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    fn next_seed(&self) -> u64 {
        let n = self.state.seq.fetch_add(1, Ordering::Relaxed) + 1;
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
