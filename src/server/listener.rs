//! One listening socket: accepts connections within the shared connection
//! limit, does the TLS handshake when configured, and serves HTTP/1.1 and
//! HTTP/2 on each until told to stop.

use super::dispatch::{self, Scope};
use super::idle::IdleTimeout;
use super::App;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// HTTP/2 pings on idle connections, so a peer that vanished (or holds a
/// connection open without a word) frees its slot.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Concurrent streams per HTTP/2 connection (clients pull a few layers at
/// a time; containerd uses 3 by default).
const H2_MAX_STREAMS: u32 = 32;
/// Bytes buffered per HTTP/2 stream for a peer that is slow to read.
const H2_SEND_BUFFER: usize = 256 * 1024;

/// What every listener of one server shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub app: Arc<App>,
    /// The connection limit across all listeners.
    pub connections: Arc<Semaphore>,
    pub graceful: Arc<GracefulShutdown>,
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
        let builder = http_builder(self.shared.app.header_read_timeout);
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
            let (tls, scope, shared, builder) = (
                self.tls.clone(),
                self.scope,
                self.shared.clone(),
                builder.clone(),
            );
            tokio::spawn(async move {
                let timeout = shared.app.header_read_timeout;
                match tls {
                    None => serve(stream, peer, scope, &shared, &builder, permit).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve(s, peer, scope, &shared, &builder, permit).await,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }
}

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Bounds what one connection can make us buffer (request heads).
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(Duration::from_secs(10))
        // What one connection may make us hold: its streams, and per stream
        // the bytes queued for a peer that does not read.
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_header_list_size(64 * 1024);
    builder
}

/// Serves one connection (plain or after TLS) to its end; the permit goes
/// with it.
async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    scope: Scope,
    shared: &Shared,
    builder: &auto::Builder<TokioExecutor>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = Arc::clone(&shared.app);
    // Boxed per request: hyper keeps the allocation of a connection's
    // request future for the connection's life, and the whole routing
    // future (every handler's state) would be that allocation, held by
    // every idle keep-alive connection. A box freed after each request is
    // the cheaper of the two.
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        let handling = Box::pin(dispatch::dispatch(app, req, peer, scope));
        async move { Ok::<_, Infallible>(handling.await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = shared.graceful.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
    drop(permit);
}
