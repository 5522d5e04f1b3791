//! pullthrough: a pull-through cache for container registries.
//!
//! # Layout
//!
//! - [`server`]: listener, routing, handlers, the error → HTTP mapping,
//!   and graceful shutdown.
//! - [`oci`]: names, references, digests, media types, error bodies.
//! - [`upstream`]: the registry client: auth challenges, scoped tokens,
//!   redirects to CDNs.
//! - [`cache`]: the content-addressed blob store and the sled index.
//! - [`fetch`]: one upstream download per digest, tailed by every reader.
//! - [`manifests`]: manifests by digest and by tag, with tag freshness.
//! - [`visibility`]: which repositories may be served content that came
//!   through upstream credentials.
//! - [`metrics`]: the Prometheus registry and its handles.
//! - [`admin`]: the offline `gc` and `cache stats|ls` commands.
//! - [`config`]: the TOML file, environment and flags.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod config;
pub mod fetch;
pub mod manifests;
pub mod metrics;
pub mod oci;
pub mod server;
pub mod upstream;
pub mod visibility;
