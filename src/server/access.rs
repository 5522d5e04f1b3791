//! The access log: one line per request, written when its response body
//! has been sent or abandoned, with the bytes that really went out.

use super::body::Body;
use super::idle::InFlight;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::io::{self, Write as _};
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
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let micros = l.started.elapsed().as_micros() as u64;
        match crate::log_queue::text_access_lines() {
            Some(queue) => LINE.with_borrow_mut(|line| {
                line.clear();
                text_line(line, &l, self.sent, complete, micros);
                queue.push(line);
            }),
            None => traced_line(&l, self.sent, complete, micros),
        }
    }
}

/// The line through `tracing`, for any other format.
fn traced_line(l: &AccessLine, sent: u64, complete: bool, micros: u64) {
    tracing::info!(
        target: "access",
        request_id = %l.request_id,
        client = %l.client,
        method = %l.method,
        path = %l.path,
        status = l.status,
        bytes = sent,
        complete,
        cache = l.cache,
        micros,
    );
}

thread_local! {
    /// Each thread formats its lines in one buffer it keeps.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The line exactly as `tracing_subscriber::fmt` writes the event above
/// in plain text, formatted by hand: one per request, and `tracing`'s
/// field visitors were a tenth of a warm tag request's CPU.
fn text_line(out: &mut Vec<u8>, l: &AccessLine, sent: u64, complete: bool, micros: u64) {
    use crate::utc::{push_padded, push_rfc3339_micros};
    push_rfc3339_micros(out, std::time::SystemTime::now());
    out.extend_from_slice(b"  INFO access: request_id=");
    out.extend_from_slice(l.request_id.as_bytes());
    out.extend_from_slice(b" client=");
    match l.client {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_padded(out, octet.into(), 1);
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
    out.extend_from_slice(b" method=");
    out.extend_from_slice(l.method.as_str().as_bytes());
    out.extend_from_slice(b" path=");
    out.extend_from_slice(l.path.as_bytes());
    out.extend_from_slice(b" status=");
    push_padded(out, l.status.into(), 1);
    out.extend_from_slice(b" bytes=");
    push_padded(out, sent, 1);
    out.extend_from_slice(if complete {
        b" complete=true cache=\""
    } else {
        b" complete=false cache=\""
    });
    // Fixed words ("hit", "-", …): nothing to escape.
    out.extend_from_slice(l.cache.as_bytes());
    out.extend_from_slice(b"\" micros=");
    push_padded(out, micros, 1);
    out.push(b'\n');
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_hand_made_line_is_the_one_tracing_writes() {
        for (client, complete, cache) in [("10.0.0.255", true, "hit"), ("2001:db8::1", false, "-")]
        {
            let line = AccessLine {
                request_id: "51b309f112c300000001".into(),
                client: client.parse().unwrap(),
                method: http::Method::HEAD,
                path: "/v2/library/x%20y/manifests/a\"b".into(),
                status: 200,
                cache,
                started: Instant::now(),
                promised: None,
            };
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                traced_line(&line, 1234, complete, 56)
            });
            let traced = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let mut ours = Vec::new();
            text_line(&mut ours, &line, 1234, complete, 56);
            let ours = String::from_utf8(ours).unwrap();
            // Past the timestamps, which differ by the microseconds between.
            let (their_time, their_rest) = traced.split_once(' ').unwrap();
            let (our_time, our_rest) = ours.split_once(' ').unwrap();
            assert_eq!(our_rest, their_rest);
            assert_eq!(
                our_time.len(),
                their_time.len(),
                "{our_time} / {their_time}"
            );
            assert_eq!(our_time[..16], their_time[..16], "to the minute");
        }
    }
}
