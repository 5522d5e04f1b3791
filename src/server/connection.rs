//! One accepted connection: which HTTP it speaks, and serving it. HTTP/1.1
//! is served by hyper while requests come and parked while they do not: a
//! keep-alive connection that waits (a fleet's nodes hold thousands for
//! hours) then holds its socket and a few hundred bytes instead of hyper's
//! read and write buffers (16 KiB and more each).

use super::dispatch::{self, Scope};
use super::idle::Traffic;
use super::listener::Shared;
use super::sendfile::OffersSendfile;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

/// HTTP/2 pings on idle connections, so a peer that vanished (or holds a
/// connection open without a word) frees its slot.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Concurrent streams per HTTP/2 connection (clients pull a few layers at
/// a time; containerd uses 3 by default).
const H2_MAX_STREAMS: u32 = 32;
/// Bytes buffered per HTTP/2 stream for a peer that is slow to read.
const H2_SEND_BUFFER: usize = 256 * 1024;
/// What every HTTP/2 connection opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes taken by the read that wakes a parked connection; hyper reads
/// the rest of the request.
const WAKING_READ: usize = 256;

/// How every connection of a listener is served.
#[derive(Clone)]
pub(super) struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    /// How long nothing must move on an HTTP/1.1 connection before it is
    /// parked (`Timings::park_after`, 1 s): long enough that a client
    /// sending request after request never is, short enough that an idle
    /// fleet costs little.
    park_after: Duration,
}

impl Protocols {
    pub fn new(header_read_timeout: Duration, park_after: Duration) -> Protocols {
        let mut h1 = http1::Builder::new();
        h1
            // Bounds what one connection can make us buffer (request heads).
            .max_buf_size(64 * 1024)
            // Body bytes queued as they are, never copied into hyper's
            // buffer: what lets the plain stream tell a body's sendfile
            // markers from real bytes (`sendfile`). Every stream we serve
            // writes vectored anyway, so this only rules the copy out.
            .writev(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_KEEP_ALIVE))
            .keep_alive_timeout(Duration::from_secs(10))
            // What one connection may make us hold: its streams, and per
            // stream the bytes queued for a peer that does not read.
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_header_list_size(64 * 1024);
        Protocols {
            h1,
            h2,
            header_read_timeout,
            park_after,
        }
    }
}

/// Serves one connection (plain or after TLS) to its end; the permit goes
/// with it. `traffic` is what the stream's `IdleTimeout` records.
pub(super) async fn serve<S>(
    mut stream: S,
    traffic: Arc<Traffic>,
    peer: SocketAddr,
    scope: Scope,
    shared: Shared,
    protocols: Arc<Protocols>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + OffersSendfile + Unpin + Send + 'static,
{
    let mut stop = shared.stop.clone();
    let app = Arc::clone(&shared.app);
    let _open = Counted::new(&shared.app.metrics.connections_open);
    let sendfile = stream.sendfile().cloned();
    // Boxed per request: hyper keeps the allocation of a connection's
    // request future for the connection's life, and the whole routing
    // future (every handler's state) would be that allocation. A box
    // freed after each request is the cheaper of the two.
    let counted = Arc::clone(&traffic);
    let service = move |sendfile: Option<crate::fetch::Sendfile>| {
        service_fn(move |req| {
            let in_flight = counted.request();
            Box::pin(dispatch::dispatch(
                Arc::clone(&app),
                req,
                peer,
                scope,
                Some(in_flight),
                sendfile.clone(),
            ))
            .map(Ok::<_, Infallible>)
        })
    };
    let Some(first) = opening(&mut stream, &mut stop).await else {
        return;
    };
    if first.starts_with(H2_PREFACE) {
        // HTTP/2 frames body bytes itself: it must see them all.
        let conn = protocols
            .h2
            .serve_connection(TokioIo::new(Prefixed::new(first, stream)), service(None));
        // Boxed: HTTP/2's state is large, and an HTTP/1 connection's task
        // must not be sized for it.
        let mut conn = Box::pin(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            _ = stopping(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    } else if let Err(e) = serve_h1(
        stream,
        &traffic,
        first,
        service(sendfile),
        &protocols,
        &mut stop,
        &shared.app.metrics.connections_parked,
    )
    .await
    {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
    drop(permit);
}

/// The first bytes, enough to tell HTTP/2's preface from an HTTP/1 request;
/// `None` if the client closed (or the server stops) first.
async fn opening<S>(stream: &mut S, stop: &mut watch::Receiver<bool>) -> Option<Bytes>
where
    S: AsyncRead + Unpin,
{
    let mut first = BytesMut::new();
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        first.extend_from_slice(&waking_read(stream, stop).await?);
    }
    Some(first.freeze())
}

/// Waits for bytes holding no buffer but a small one on the stack, which
/// is what makes a parked connection cheap.
async fn waking_read<S>(stream: &mut S, stop: &mut watch::Receiver<bool>) -> Option<Bytes>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; WAKING_READ];
    tokio::select! {
        read = stream.read(&mut buf) => match read {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
        },
        _ = stopping(stop) => None,
    }
}

/// Why hyper let go of an HTTP/1.1 connection.
enum Ended {
    /// It was parked while idle: serve the next request with a new one.
    Parked,
    /// The client closed it, or the server stops.
    Closed,
}

/// HTTP/1.1: hyper serves requests until the connection goes quiet, then
/// it is parked until the next request's first bytes.
async fn serve_h1<S, Svc>(
    stream: S,
    traffic: &Traffic,
    first: Bytes,
    service: Svc,
    protocols: &Protocols,
    stop: &mut watch::Receiver<bool>,
    parked: &IntGauge,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + OffersSendfile + Unpin + Send + 'static,
    Svc: hyper::service::HttpService<hyper::body::Incoming, ResBody = super::body::Body>
        + Clone
        + Unpin,
    Svc::Future: Unpin,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stream = stream;
    let mut pending = first;
    // A request head cut off by a park keeps the time it has left, so a
    // client cannot stretch one head past header_read_timeout by pausing.
    let mut head_deadline: Option<Instant> = None;
    loop {
        let mut h1 = protocols.h1.clone();
        if let Some(deadline) = head_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            h1.header_read_timeout(left);
        }
        let io = TokioIo::new(Prefixed::new(pending, stream));
        // Boxed so that a parked connection's task holds none of it.
        let mut conn = Box::new(h1.serve_connection(io, service.clone()));
        let answered_before = traffic.requests();
        let ended = drive(&mut conn, traffic, protocols.park_after, stop).await?;
        if let Ended::Closed = ended {
            // Polled as a future it ends as hyper always does: what it
            // still holds of the last response is written, then the
            // stream shut down (parting with it does neither).
            (&mut *conn).await?;
            let parts = conn.into_parts();
            linger(parts.io.into_inner().into_parts().1).await;
            return Ok(());
        }
        let parts = conn.into_parts();
        let (unread, inner) = parts.io.into_inner().into_parts();
        stream = inner;
        if stream.sendfile().is_some_and(|spans| spans.queued() != 0) {
            // Every response was written, so no span can be left; one
            // that is would be sent for the next response's marker.
            tracing::warn!("sendfile spans left after the responses written: closing");
            return Ok(());
        }
        pending = join(unread, parts.read_buf);
        if traffic.requests() != answered_before {
            head_deadline = None;
        }
        if pending.is_empty() {
            // Parked: only the socket and this task are left.
            let counted = Counted::new(parked);
            let woken = waking_read(&mut stream, stop).await;
            drop(counted);
            match woken {
                Some(bytes) => pending = bytes,
                None => return Ok(()),
            }
        } else if head_deadline.is_none() {
            // A partial head waited at least `park_after` already.
            let left = protocols
                .header_read_timeout
                .saturating_sub(protocols.park_after);
            head_deadline = Some(Instant::now() + left);
        }
    }
}

/// Polls hyper's connection until it ends, parking it once nothing has
/// moved for `park_after` with every request answered.
async fn drive<I, Svc>(
    conn: &mut http1::Connection<I, Svc>,
    traffic: &Traffic,
    park_after: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    Svc: hyper::service::HttpService<hyper::body::Incoming> + Unpin,
    Svc::Future: Unpin,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Svc::ResBody: 'static,
    <Svc::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut check = std::pin::pin!(tokio::time::sleep(park_after));
    let mut seen = traffic.moves();
    let mut ending: Option<Ended> = None;
    let mut requests_at_park = 0;
    loop {
        tokio::select! {
            served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                served?;
                return Ok(match ending {
                    // hyper was mid-head after all: it answered that
                    // request with `Connection: close`.
                    Some(Ended::Parked) if traffic.requests() != requests_at_park => Ended::Closed,
                    Some(ended) => ended,
                    None => Ended::Closed,
                });
            }
            _ = check.as_mut(), if ending.is_none() => {
                let moves = traffic.moves();
                if moves == seen && traffic.answered_all() {
                    // Idle in hyper's terms too: it closes at once, and
                    // hands back the stream and any bytes it read.
                    Pin::new(&mut *conn).graceful_shutdown();
                    requests_at_park = traffic.requests();
                    ending = Some(Ended::Parked);
                } else {
                    seen = moves;
                    check.as_mut().reset(Instant::now() + park_after);
                }
            }
            _ = stopping(stop), if !matches!(ending, Some(Ended::Closed)) => {
                // Ends an idle connection now, a busy one after its response.
                Pin::new(&mut *conn).graceful_shutdown();
                ending = Some(Ended::Closed);
            }
        }
    }
}

/// One in a gauge while it lives.
struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a IntGauge) -> Counted<'a> {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long, and for how many bytes, a closed connection is read on.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Reads and drops what the client still sends after the response and
/// the mirror's FIN: closing a socket with unread bytes in it makes the
/// kernel send a reset, which can reach the client before it read the
/// response (a 401 answered before an upload's body was read, say). As
/// nginx's lingering close, bounded in time and bytes.
async fn linger<S: AsyncRead + Unpin>(mut stream: S) {
    let draining = async {
        let mut sink = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, draining).await;
}

/// Resolves once the server stops (at once if it has).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stopping too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

fn join(first: Bytes, then: Bytes) -> Bytes {
    match (first.is_empty(), then.is_empty()) {
        (_, true) => first,
        (true, false) => then,
        (false, false) => {
            let mut joined = BytesMut::with_capacity(first.len() + then.len());
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&then);
            joined.freeze()
        }
    }
}

/// A stream whose first bytes were read already: they are read again
/// first.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }

    /// What of the prefix was not read, and the stream.
    fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
