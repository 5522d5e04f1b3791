//! All integration and end-to-end suites, in one test binary so they share
//! helpers and build once (the crates.io layout).

mod addressing;
mod admin_api;
mod admin_page;
mod bundles;
mod cache_budget;
mod cache_repair;
mod credential_pool;
mod deploy_configs;
mod deploy_haproxy;
mod deploy_prometheus;
mod e2e_addressing;
mod e2e_artifacts;
mod e2e_docker;
mod e2e_podman;
mod e2e_skopeo;
mod egress;
mod fuzz_smoke;
mod hardening_download;
mod hardening_server;
mod hardening_upstream;
mod hostile;
mod hub_protocol;
mod hub_selftest;
mod inflight;
mod keepalive;
mod limits;
mod operations;
mod referrers;
mod reload;
mod resilience;
mod routing;
mod s3_tier;
mod support;
mod tls_auth;
mod warm;
