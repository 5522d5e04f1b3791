//! Cached blob bytes handed to the connection as file spans instead of
//! being read into memory: a body yields marker frames (bytes of one
//! static region that nobody reads), and queues for each the span of the
//! file it stands for; the plain HTTP/1.1 connection under hyper sends
//! that span with `sendfile(2)` when it meets the marker's bytes
//! (`server::sendfile`). Marker bytes must never reach a socket: a marker
//! the queue does not account for exactly is an error, never zeros sent.

use bytes::Bytes;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

/// The largest span one frame stands for: the bigger, the fewer trips
/// through the body and hyper per byte (the kernel sends at most what the
/// socket buffer takes per call anyway).
pub const MAX_SPAN: usize = 1 << 20;

/// The bytes marker frames point into. Zeros in `.bss`: never written,
/// never read, so not even paged in.
static MARK: [u8; MAX_SPAN] = [0; MAX_SPAN];

/// Where in the marker region `slice` starts, if it is a marker slice.
fn mark_offset(slice: &[u8]) -> Option<usize> {
    let start = MARK.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    (!slice.is_empty() && at >= start && at < start + MAX_SPAN).then(|| at - start)
}

/// Whether `slice` is (part of) a marker frame rather than real bytes.
pub fn is_marker(slice: &[u8]) -> bool {
    mark_offset(slice).is_some()
}

/// One frame's bytes: `len` bytes of `file` from `offset`, `sent` of them
/// sent so far.
struct Span {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
}

/// One connection's queue of spans, in the order their frames were
/// yielded (which is the order hyper writes them: one response at a time,
/// frames in order). Cloned into each response body that may use it.
#[derive(Clone)]
pub struct Sendfile(Arc<Spans>);

struct Spans {
    queue: Mutex<VecDeque<Span>>,
    /// `pullthrough_sendfile_bytes_total`.
    sent: IntCounter,
}

/// A marker the queue does not account for: the connection must end.
fn unaccounted(what: &str) -> io::Error {
    io::Error::other(format!(
        "sendfile marker out of step with its spans: {what}"
    ))
}

impl Sendfile {
    pub fn new(sent: IntCounter) -> Sendfile {
        Sendfile(Arc::new(Spans {
            queue: Mutex::new(VecDeque::new()),
            sent,
        }))
    }

    /// A frame standing for `len` (1 to `MAX_SPAN`) bytes of `file` from
    /// `offset`; the span is queued for the connection.
    pub(super) fn frame(&self, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 || len > MAX_SPAN {
            return Err(io::Error::other("sendfile span of a wrong length"));
        }
        let mut queue = self.0.queue.lock().map_err(|_| unaccounted("lock"))?;
        queue.push_back(Span {
            file: Arc::clone(file),
            offset,
            len,
            sent: 0,
        });
        Ok(Bytes::from_static(&MARK[..len]))
    }

    /// Sends (part of) the span that the marker `slice` stands for with
    /// `send(file, offset, count)`, which returns how many bytes went out;
    /// the span is advanced by that many. `slice` must be what is left of
    /// the front span's frame, or a prefix of it (hyper writes a frame
    /// from where the last write stopped).
    pub fn send_with(
        &self,
        slice: &[u8],
        send: impl FnOnce(&File, u64, usize) -> std::task::Poll<io::Result<usize>>,
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        let Some(at) = mark_offset(slice) else {
            return Poll::Ready(Err(unaccounted("not a marker")));
        };
        let Ok(mut queue) = self.0.queue.lock() else {
            return Poll::Ready(Err(unaccounted("lock")));
        };
        let Some(span) = queue.front_mut() else {
            return Poll::Ready(Err(unaccounted("no span queued")));
        };
        if at != span.sent || slice.len() > span.len - span.sent {
            return Poll::Ready(Err(unaccounted("the marker is not the front span's")));
        }
        let sent = match send(&span.file, span.offset + span.sent as u64, slice.len()) {
            Poll::Ready(Ok(0)) => {
                // The file ended early: a cached blob never shrinks, so
                // something is wrong, and the client must see it broken.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached blob file ended before its span",
                )));
            }
            Poll::Ready(Ok(n)) => n.min(slice.len()),
            other => return other,
        };
        span.sent += sent;
        if span.sent == span.len {
            queue.pop_front();
        }
        self.0.sent.inc_by(sent as u64);
        Poll::Ready(Ok(sent))
    }

    /// Spans queued and not fully sent (a poisoned lock counts as one).
    pub fn queued(&self) -> usize {
        self.0.queue.lock().map_or(1, |q| q.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::task::Poll;

    fn file_of(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        Arc::new(f)
    }

    fn counter() -> IntCounter {
        IntCounter::new("sent", "sent").expect("counter")
    }

    /// Sends by reading the span, at most `max` bytes a call.
    fn read_into(
        out: &mut Vec<u8>,
        max: usize,
    ) -> impl FnMut(&File, u64, usize) -> Poll<io::Result<usize>> + '_ {
        move |file, offset, count| {
            let mut buf = vec![0u8; count.min(max)];
            let n = file.read_at(&mut buf, offset)?;
            out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_frame_sent_in_pieces_sends_its_span_once_in_order() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let file = file_of(&data);
        let sendfile = Sendfile::new(counter());
        let first = sendfile.frame(&file, 100, 1000).expect("frame");
        let second = sendfile.frame(&file, 3000, 2000).expect("frame");
        assert!(is_marker(&first) && is_marker(&second));
        assert_eq!(sendfile.queued(), 2);
        let mut out = Vec::new();
        // As hyper does: from where the last write stopped.
        let mut left = &first[..];
        while !left.is_empty() {
            let Poll::Ready(Ok(n)) = sendfile.send_with(left, read_into(&mut out, 300)) else {
                panic!("send failed");
            };
            left = &left[n..];
        }
        let Poll::Ready(Ok(n)) = sendfile.send_with(&second, read_into(&mut out, 5000)) else {
            panic!("send failed");
        };
        assert_eq!(n, 2000);
        let mut want = data[100..1100].to_vec();
        want.extend_from_slice(&data[3000..5000]);
        assert_eq!(out, want);
        assert_eq!(sendfile.queued(), 0);
        assert_eq!(sendfile.0.sent.get(), 3000);
    }

    #[test]
    fn a_marker_out_of_step_is_an_error_not_zeros() {
        let file = file_of(&[7u8; 100]);
        let sendfile = Sendfile::new(counter());
        let frame = sendfile.frame(&file, 0, 50).expect("frame");
        let mut out = Vec::new();
        // Not where the front span stands.
        assert!(matches!(
            sendfile.send_with(&frame[10..], read_into(&mut out, 100)),
            Poll::Ready(Err(_))
        ));
        // Longer than the span.
        let longer = Bytes::from_static(&MARK[..60]);
        assert!(matches!(
            sendfile.send_with(&longer, read_into(&mut out, 100)),
            Poll::Ready(Err(_))
        ));
        // Nothing queued.
        let other = Sendfile::new(counter());
        assert!(matches!(
            other.send_with(&frame, read_into(&mut out, 100)),
            Poll::Ready(Err(_))
        ));
        assert!(out.is_empty(), "nothing was sent");
        assert!(!is_marker(b"real bytes") && !is_marker(&[]));
    }

    #[test]
    fn a_file_shorter_than_its_span_is_an_error() {
        let file = file_of(&[1u8; 10]);
        let sendfile = Sendfile::new(counter());
        let frame = sendfile.frame(&file, 5, 20).expect("frame");
        let mut out = Vec::new();
        let Poll::Ready(Ok(5)) = sendfile.send_with(&frame, read_into(&mut out, 100)) else {
            panic!("the 5 bytes there");
        };
        assert!(matches!(
            sendfile.send_with(&frame[5..], read_into(&mut out, 100)),
            Poll::Ready(Err(_))
        ));
    }
}
