//! How an upstream's connections leave this host: through the proxy its
//! settings name (HTTP CONNECT/forward or SOCKS5), else the `*_PROXY`
//! environment, which reqwest reads at build time; from a chosen source
//! address; over the address family the settings allow.

use super::{ClientError, UpstreamSettings};
use crate::config::AddressFamily;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;

/// Applies the upstream's egress settings to its client builder.
pub(super) fn configure(
    mut builder: reqwest::ClientBuilder,
    settings: &UpstreamSettings,
) -> Result<reqwest::ClientBuilder, ClientError> {
    if let Some(proxy) = &settings.proxy {
        // Credentials in the URL become Proxy-Authorization (HTTP) or the
        // SOCKS5 user/password exchange. Errors drop the URL: it may hold
        // the password.
        let p = reqwest::Proxy::all(proxy.expose())
            .map_err(|e| ClientError::Proxy(e.without_url().to_string()))?;
        builder = builder.proxy(p);
        tracing::info!(upstream = %settings.name, proxy = %proxy.redacted(), "upstream traffic goes through a proxy");
    }
    if forwards_plain_http(settings) {
        // A forward proxy (tinyproxy does this) may close the client's
        // connection after each response while answering HTTP/1.1 with no
        // `Connection: close`; a pooled connection then fails the next
        // request half-sent. Plain-HTTP upstreams through such a proxy get
        // a fresh connection per request (to the proxy, usually nearby).
        // CONNECT tunnels (HTTPS upstreams) and SOCKS keep their pool.
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(source) = settings.source_address {
        builder = builder.local_address(source);
    }
    if settings.address_family != AddressFamily::Any {
        builder = builder.dns_resolver(Arc::new(FamilyResolver(settings.address_family)));
    }
    Ok(builder)
}

/// Whether requests to this plain-HTTP upstream go to an HTTP proxy in
/// forward mode: the upstream's own `proxy`, or the environment's.
fn forwards_plain_http(settings: &UpstreamSettings) -> bool {
    if settings.url.scheme() != "http" {
        return false;
    }
    match &settings.proxy {
        Some(proxy) => proxy.expose().starts_with("http"),
        None => ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty())),
    }
}

/// The system resolver with the addresses of the other family dropped, so
/// a name with both A and AAAA records is reached over the one wanted.
struct FamilyResolver(AddressFamily);

impl Resolve for FamilyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let family = self.0;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<SocketAddr> = found.filter(|a| family.admits(a.ip())).collect();
            if kept.is_empty() {
                let wanted = match family {
                    AddressFamily::Ipv4 => "IPv4",
                    AddressFamily::Ipv6 => "IPv6",
                    AddressFamily::Any => "any",
                };
                return Err(
                    format!("{host} has no {wanted} address (connect_address_family)").into(),
                );
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}
