//! The access log: one line per request, written when its response body
//! has been sent or abandoned, with the bytes that really went out.

use super::body::Body;
use super::idle::InFlight;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// What the line says besides the transfer itself.
pub struct AccessLine {
    pub request_id: String,
    pub client: IpAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub cache: &'static str,
    pub started: Instant,
    /// The `Content-Length` promised: hyper stops polling a body once that
    /// much is out, so reaching it is the body's end.
    pub promised: Option<u64>,
}

/// Wraps a response body so the line is written when it ends; `held`
/// (the request's slot) and `request` (its count on the connection) are
/// released with the body.
pub fn logged(
    body: Body,
    line: AccessLine,
    held: Option<OwnedSemaphorePermit>,
    request: Option<InFlight>,
) -> Body {
    LoggedBody {
        inner: body,
        line: Some(line),
        sent: 0,
        failed: false,
        _held: held,
        _request: request,
    }
    .boxed_unsync()
}

struct LoggedBody {
    inner: Body,
    /// Taken when the line is written, so it is written once.
    line: Option<AccessLine>,
    sent: u64,
    failed: bool,
    _held: Option<OwnedSemaphorePermit>,
    _request: Option<InFlight>,
}

impl LoggedBody {
    fn finish(&mut self, complete: bool) {
        let Some(l) = self.line.take() else {
            return;
        };
        tracing::info!(
            target: "access",
            request_id = %l.request_id,
            client = %l.client,
            method = %l.method,
            path = %l.path,
            status = l.status,
            bytes = self.sent,
            complete,
            cache = l.cache,
            micros = l.started.elapsed().as_micros() as u64,
        );
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => {
                let complete = !self.failed;
                self.finish(complete);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    /// A body dropped before its end: the client went away, or the
    /// transfer broke (a HEAD or an empty body ends without being polled).
    fn drop(&mut self) {
        let promised = self.line.as_ref().and_then(|l| l.promised);
        let complete = !self.failed && (self.inner.is_end_stream() || promised == Some(self.sent));
        self.finish(complete);
    }
}
