//! One listening socket: accepts connections within the shared connection
//! limit, does the TLS handshake when configured, and hands each to
//! `connection` until told to stop.

use super::connection::{self, Protocols};
use super::dispatch::Scope;
use super::idle::IdleTimeout;
use super::sendfile::SendfileStream;
use super::App;
use crate::fetch::Sendfile;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// What every listener of one server shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub app: Arc<App>,
    /// The connection limit across all listeners; a connection holds its
    /// permit to its end, so shutdown drains by taking them all.
    pub connections: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
}

pub(super) struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub scope: Scope,
    pub shared: Shared,
}

impl Listener {
    /// Accepts connections until told to stop; each is served on its own
    /// task and counted against the connection limit.
    pub async fn run(mut self) {
        let app = &self.shared.app;
        let protocols = Arc::new(Protocols::new(app.header_read_timeout, app.park_after));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&self.shared.connections).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = self.shared.stop.changed() => return,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.shared.stop.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            // The first byte must come as soon as a request head must; then
            // a connection on which nothing moves is closed.
            let app = &self.shared.app;
            let stream = IdleTimeout::new(stream, app.header_read_timeout, app.idle_timeout);
            let traffic = Arc::clone(stream.traffic());
            let (tls, scope, shared, protocols) = (
                self.tls.clone(),
                self.scope,
                self.shared.clone(),
                Arc::clone(&protocols),
            );
            // One task shape per path: a plain connection's task must not
            // be sized for a TLS one's handshake and stream.
            match tls {
                None => {
                    let spans = Sendfile::new(app.metrics.bytes_sendfile.clone());
                    let stream = SendfileStream::new(stream, spans);
                    let serving =
                        connection::serve(stream, traffic, peer, scope, shared, protocols, permit);
                    tokio::spawn(serving);
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        let timeout = shared.app.header_read_timeout;
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => {
                                // Boxed: the handshake's state is not kept
                                // beside the connection's.
                                let serving = connection::serve(
                                    s, traffic, peer, scope, shared, protocols, permit,
                                );
                                Box::pin(serving).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    }
}
