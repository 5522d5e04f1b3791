//! The stream under hyper on a plain HTTP/1.1 connection that sends cached
//! blob bytes with `sendfile(2)`: real bytes are written as they come, and
//! where a write reaches a body's marker frame (`fetch::Sendfile`), the
//! file span it stands for goes from the page cache to the socket without
//! passing through memory of ours. TLS and HTTP/2 never see a marker: the
//! handle is only offered to requests of a plain HTTP/1.1 connection, and
//! hyper's HTTP/1 writer is made to queue body bytes as they are
//! (`writev`), never to copy them into its own buffer.

use crate::fetch::{is_marker, Sendfile};
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A socket that can send a file span without blocking.
pub(super) trait SendfileTarget {
    /// Sends up to `count` bytes of `file` from `offset`: how many went
    /// out, or `Pending` (with a wake-up) until the socket takes more.
    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>>;
}

impl SendfileTarget for TcpStream {
    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            let sent = self.try_io(Interest::WRITABLE, || {
                let mut at = offset;
                rustix::fs::sendfile(&*self, file, Some(&mut at), count).map_err(io::Error::from)
            });
            match sent {
                // Readiness was stale: cleared by try_io, so wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

/// The connection's stream with its sendfile queue.
pub(super) struct SendfileStream<S> {
    inner: S,
    spans: Sendfile,
}

impl<S> SendfileStream<S> {
    pub fn new(inner: S, spans: Sendfile) -> SendfileStream<S> {
        SendfileStream { inner, spans }
    }
}

impl<S: SendfileTarget + AsyncWrite + Unpin> SendfileStream<S> {
    fn poll_marker(&mut self, cx: &mut Context<'_>, marker: &[u8]) -> Poll<io::Result<usize>> {
        let inner = &mut self.inner;
        self.spans.send_with(marker, |file, offset, count| {
            inner.poll_sendfile(cx, file, offset, count)
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendfileStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: SendfileTarget + AsyncWrite + Unpin> AsyncWrite for SendfileStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_marker(buf) {
            return this.poll_marker(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// Real bytes up to the first marker go out in one write; a marker at
    /// the front is sent from its file. Either may be partial: hyper
    /// writes the rest from where this stopped.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match bufs.iter().position(|b| is_marker(b)) {
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            Some(0) => this.poll_marker(cx, &bufs[0]),
            Some(first) => Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs[..first]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // What keeps hyper queueing body bytes rather than copying them
        // (markers included) into one buffer; `connection` also says so
        // explicitly (`writev(true)`).
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether a connection's stream sends file spans itself.
pub(super) trait OffersSendfile {
    fn sendfile(&self) -> Option<&Sendfile>;
}

impl<S> OffersSendfile for SendfileStream<S> {
    fn sendfile(&self) -> Option<&Sendfile> {
        Some(&self.spans)
    }
}

/// TLS encrypts what it sends: it must see every byte.
impl<S> OffersSendfile for tokio_rustls::server::TlsStream<S> {
    fn sendfile(&self) -> Option<&Sendfile> {
        None
    }
}
