//! pullthrough: a pull-through cache for container registries.
//!
//! # Layout
//!
//! The layers, each depending only on those below it:
//! `oci` → `config` → `coalesce`, `cache`, `upstream` → `fetch` → `server`
//! → `main`.
//!
//! - [`oci`]: names, references, digests, media types, ranges, error bodies.
//! - [`config`]: the validated configuration (file schema, typed values,
//!   merge order of file, environment and flags).
//! - `cache`: the local content store behind the `ContentStore` seam, the
//!   `Tier` seam for further tiers (an object store), the sled index,
//!   usage and eviction. Its opening comment says how a tier plugs in.
//! - `coalesce`: the one leader/followers primitive that blob downloads,
//!   manifest and tag fetches and token fetches share.
//! - `upstream`: the registry client: auth challenges, scoped tokens,
//!   retries, the circuit breaker, redirects to CDNs, policy.
//! - `fetch`: the pull-through core behind one facade (`PullThrough`):
//!   lookup, one coalescing primitive, downloads tailed by readers,
//!   verification, tag freshness, visibility of private content.
//! - [`server`]: listeners, routing, handlers (which call only the core),
//!   the error → HTTP mapping, graceful shutdown; `server::run` serves
//!   bound listeners in-process.
//! - [`metrics`]: one Prometheus registry per running mirror.
//! - [`admin`]: the offline `gc` and `cache stats|ls` commands.

#![forbid(unsafe_code)]

pub mod admin;
pub(crate) mod cache;
pub(crate) mod coalesce;
pub mod config;
pub(crate) mod fetch;
pub mod metrics;
pub mod oci;
pub mod server;
pub(crate) mod upstream;
