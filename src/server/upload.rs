//! A request body read as a blocking `std::io::Read`, for work that runs
//! on a blocking thread (a bundle import) while the body still streams in.

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::io;
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks in flight between the connection and the reader: enough to
/// keep both busy, little enough to bound memory.
const CHUNKS: usize = 16;
/// A body that sends nothing for this long is abandoned, so a stalled
/// client cannot hold a blocking thread for ever.
const STALL: Duration = Duration::from_secs(60);

/// Starts forwarding `body` and returns its reader. The forwarder stops
/// when the reader is dropped (the importer refused the bundle).
pub fn reader(mut body: Incoming) -> BodyReader {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHUNKS);
    tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(STALL, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    let stalled = io::Error::new(io::ErrorKind::TimedOut, "the upload stalled");
                    let _ = tx.send(Err(stalled)).await;
                    break;
                }
            };
            let chunk = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Ok(data),
                    // Trailers carry no bytes.
                    Err(_) => continue,
                },
                Err(e) => Err(io::Error::other(e)),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    BodyReader {
        rx,
        current: Bytes::new(),
    }
}

pub struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        self.current.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}
