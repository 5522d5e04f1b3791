//! pullthrough: a pull-through cache for container registries.
//!
//! # Layout
//!
//! The layers, each depending only on those below it:
//! `oci` → `config` → `coalesce`, `cache`, `upstream` → `fetch` → `warm`
//! → `server` → `main`.
//!
//! - [`oci`]: names, references, digests, media types, ranges, error bodies.
//! - [`config`]: the validated configuration (file schema, typed values,
//!   merge order of file, environment and flags).
//! - `cache`: the local content store behind the `ContentStore` seam, the
//!   `Tier` seam for further tiers (the S3 tier in `cache/s3.rs`), the sled
//!   index, usage and eviction. Its opening comment says how a tier plugs
//!   in.
//! - `coalesce`: the one leader/followers primitive that blob downloads,
//!   manifest and tag fetches and token fetches share.
//! - `upstream`: the registry client: auth challenges, scoped tokens,
//!   retries, the circuit breaker, redirects to CDNs, egress proxies,
//!   policy.
//! - `fetch`: the pull-through core behind one facade (`PullThrough`):
//!   lookup, downloads tailed by readers (who share a download's blocks
//!   in memory, `fetch/blocks.rs`) and resumed when their source breaks,
//!   verification, tag and referrers freshness, the memory of misses,
//!   visibility of private content.
//! - [`warm`]: warming images into the cache (`pullthrough warm`, the
//!   admin API's warm action), `cache check`, and the `[[warm]]` sets:
//!   start-up warm, scheduled revalidation, pins, the rate-limit reserve.
//! - [`server`]: listeners and `connection` (HTTP/1.1 keep-alive
//!   connections parked between requests, HTTP/2 limits, idle timeouts,
//!   cached bytes sent with `sendfile` on plain HTTP/1.1), routing by host,
//!   `?ns=` or prefix, per-client limits, handlers (which call only the
//!   core), the page (`page/`: live figures, search box, snippets), the
//!   admin API (`api`, fed by `activity`: recent pulls, top repositories,
//!   hourly figures), Docker Hub search passed through (`search`), the
//!   error → HTTP mapping, reload and graceful shutdown; `server::run`
//!   serves bound listeners in-process.
//! - [`metrics`]: one Prometheus registry per running mirror.
//! - [`log_queue`]: the log writer of `serve`: lines batched by one
//!   thread, access lines dropped and counted rather than waited for.
//! - [`admin`]: the `gc` and `cache stats|ls` commands; the latter ask a
//!   running mirror's API (`admin::remote`, found by `admin::address`)
//!   when one holds the cache.
//! - [`bundle`]: offline bundles (`export`, `import`): images as an OCI
//!   image layout in a tar, verified blob by blob on the way in.
//! - `main` with `cli/` (the binary, not this library): `main.rs` parses
//!   and dispatches; `cli/mod.rs` holds what every command shares (the
//!   cache flags, runtime, admin token, report, exit status) and one file
//!   per command family: `serve`, `cache` (gc, stats, ls, check), `warm`,
//!   `bundle` (export, import).

#![forbid(unsafe_code)]

pub mod admin;
pub mod bundle;
pub(crate) mod cache;
pub(crate) mod coalesce;
pub mod config;
pub(crate) mod fetch;
pub mod log_queue;
pub mod metrics;
pub mod oci;
pub mod server;
pub(crate) mod upstream;
pub(crate) mod utc;
pub mod warm;

/// Synthetic caches for the benchmarks (`benches/bigcache_gen.rs`): a
/// cache directory written as the mirror would write it. Not an API.
#[doc(hidden)]
pub mod synthetic {
    pub use crate::cache::synthetic::{
        blob_bytes, manifest_bytes, tag_name, write, Shape, Written, TAGS_PER_REPO,
    };
}

/// Thin wrappers over crate-private parsers for the fuzz targets in
/// `fuzz/` and the stable fuzz smoke test (`tests/it/fuzz_smoke.rs`), which
/// check their invariants from outside. Not an API: hidden, free to change.
#[doc(hidden)]
pub mod fuzzing {
    use crate::upstream::auth::{parse_challenge, Accepted, Authenticator};
    use std::sync::OnceLock;

    /// A `WWW-Authenticate` value from an upstream at `https://` (or
    /// `http://` when `http_registry`) `registry.example`: `None` when it
    /// is no challenge we answer, else what the validation before a
    /// challenge is kept made of it: `Ok(Some(realm))` for bearer,
    /// `Ok(None)` for basic, `Err(reason)` when refused.
    pub fn challenge(
        header: &str,
        http_registry: bool,
    ) -> Option<Result<Option<url::Url>, String>> {
        static HTTP: OnceLock<Authenticator> = OnceLock::new();
        static HTTPS: OnceLock<Authenticator> = OnceLock::new();
        let (cell, registry) = if http_registry {
            (&HTTP, "http://registry.example/")
        } else {
            (&HTTPS, "https://registry.example/")
        };
        // Built once: validation needs an authenticator, not a network.
        let auth = cell.get_or_init(|| {
            let url = url::Url::parse(registry).expect("a constant URL");
            let metrics = crate::metrics::Metrics::new();
            Authenticator::new(
                reqwest::Client::new(),
                "fuzz".into(),
                url,
                Vec::new(),
                metrics,
                std::time::Duration::from_secs(10),
            )
        });
        Some(match auth.accept(parse_challenge(header)?) {
            Ok(Accepted::Bearer { realm, .. }) => Ok(Some(realm)),
            Ok(Accepted::Basic) => Ok(None),
            Err(e) => Err(e.to_string()),
        })
    }

    /// A client's `Accept` value normalised: (what goes upstream, class).
    pub fn accept(header: Option<&str>) -> (String, String) {
        let list = crate::fetch::accept::AcceptList::from_client(header);
        (list.header(), list.class())
    }

    /// A config file's text parsed: `Err((line, message))` as reported.
    pub fn config_text(text: &str) -> Result<(), (usize, String)> {
        crate::config::file::parse_text(text).map(drop)
    }
}
