//! A connection that closes itself when no byte moves: a client that
//! connects and sends nothing, or stops reading a response, would otherwise
//! hold its connection slot for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the owner of a connection needs to know, while hyper holds its
/// stream, to tell whether the connection is idle (see `connection`).
#[derive(Default)]
pub struct Traffic {
    /// Reads and writes that moved bytes, so far.
    moves: AtomicU64,
    /// Bytes written and not yet followed by a flush.
    unflushed: AtomicBool,
    /// Requests whose response body has not been sent or dropped.
    in_flight: AtomicUsize,
    /// Requests so far.
    requests: AtomicU64,
}

impl Traffic {
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// No request is being answered and everything answered is written.
    pub fn answered_all(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.unflushed.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight on a connection; dropped with its response body.
pub struct InFlight(Arc<Traffic>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream with a deadline that every byte read or written pushes
/// back. The first byte must come within `first_byte`; after that, no more
/// than `idle` may pass without progress in either direction.
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// When a byte last moved; `None` until the first one. Each read and
    /// write only notes the time: the timer is moved when it fires early,
    /// not on every progress (a reset per read and write showed in the
    /// profile of warm tag requests).
    last_progress: Option<Instant>,
    /// This stream's count of `Traffic::moves`.
    moves: u64,
    traffic: Arc<Traffic>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, first_byte: Duration, idle: Duration) -> IdleTimeout<S> {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(first_byte)),
            last_progress: None,
            moves: 0,
            traffic: Arc::default(),
        }
    }

    /// What moves on this stream, for whoever holds the connection.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    fn progressed(&mut self) {
        // Only this stream writes the count, so a plain store will do.
        self.moves += 1;
        self.traffic.moves.store(self.moves, Ordering::Relaxed);
        let now = Instant::now();
        if self.last_progress.is_none() {
            // From the first byte's deadline to the idle one, which may be
            // sooner.
            self.deadline.as_mut().reset(now + self.idle);
        }
        self.last_progress = Some(now);
    }

    /// A write's outcome, with the deadline pushed back by any progress.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                    self.traffic.unflushed.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_deadline(cx).map(Err),
        }
    }

    /// Called when the inner stream is not ready: fails once the deadline
    /// has passed (and registers the timer's wake-up otherwise, so a
    /// stream nobody writes to is still woken to fail).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: at the real deadline, or at one that progress since
            // has pushed back, which is then armed (and polled, so its
            // wake-up is registered).
            match self.last_progress.map(|at| at + self.idle) {
                Some(due) if due > self.deadline.deadline() => self.deadline.as_mut().reset(due),
                _ => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes moved on the connection within its idle timeout",
                    ))
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.check_deadline(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check_deadline(cx).map(Err),
            Poll::Ready(Ok(())) => {
                // hyper flushes the stream only once its own buffer is out.
                this.traffic.unflushed.store(false, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            failed => failed,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: super::sendfile::SendfileTarget> super::sendfile::SendfileTarget for IdleTimeout<S> {
    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        let written = self.inner.poll_sendfile(cx, file, offset, count);
        self.after_write(cx, written)
    }
}
