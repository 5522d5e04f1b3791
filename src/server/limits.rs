//! What one client may take from a shared mirror: requests per second (a
//! token bucket), requests in flight, and response bandwidth (a byte
//! bucket that shapes the body, never refuses), plus a bandwidth cap for
//! all clients together. A client is its address after `trusted_proxies`;
//! an IPv6 client is its /64, since one host may hold the whole prefix.
//! Per-client state lives in a bounded cache that forgets idle clients.

use super::body::Body;
use crate::config::{ClientLimits, ProxyNet};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Clients remembered at once; past it the least recently seen go first.
const MAX_CLIENTS: u64 = 100_000;
/// A client unseen this long starts afresh.
const CLIENT_IDLE: Duration = Duration::from_secs(600);

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Rate,
    Concurrency,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::Concurrency => "concurrency",
        }
    }
}

/// A refused request: which limit, and when to come back (whole seconds).
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after: u64,
}

pub struct Limits {
    settings: ClientLimits,
    clients: moka::sync::Cache<IpAddr, Arc<Client>>,
    total: Option<Arc<ByteBucket>>,
    metrics: Arc<Metrics>,
}

struct Client {
    requests: Option<Mutex<RequestBucket>>,
    in_flight: AtomicUsize,
    bandwidth: Option<Arc<ByteBucket>>,
}

/// Held for as long as a request (its body included) is in flight; what
/// its body must wait for.
pub struct Admitted {
    client: Option<Arc<Client>>,
    total: Option<Arc<ByteBucket>>,
    metrics: Arc<Metrics>,
}

impl Admitted {
    /// Whether its response bodies are paced (a bandwidth limit applies).
    pub fn is_shaped(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.bandwidth.is_some()) || self.total.is_some()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            client.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limits {
    pub fn new(settings: ClientLimits, metrics: Arc<Metrics>) -> Limits {
        let total = settings
            .total_bandwidth
            .map(|b| Arc::new(ByteBucket::new(b)));
        Limits {
            settings,
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(CLIENT_IDLE)
                .build(),
            total,
            metrics,
        }
    }

    fn per_client(&self) -> bool {
        let s = &self.settings;
        s.rate.is_some() || s.concurrency.is_some() || s.bandwidth.is_some()
    }

    /// Lets a request in, or says which limit it is over.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refused> {
        let exempt = self
            .settings
            .unlimited
            .iter()
            .any(|n: &ProxyNet| n.contains(client));
        let mut admitted = Admitted {
            client: None,
            total: if exempt { None } else { self.total.clone() },
            metrics: Arc::clone(&self.metrics),
        };
        if exempt || !self.per_client() {
            return Ok(admitted);
        }
        let state = self.clients.get_with(client_key(client), || {
            Arc::new(Client {
                requests: self
                    .settings
                    .rate
                    .map(|rate| Mutex::new(RequestBucket::new(rate, self.settings.burst))),
                in_flight: AtomicUsize::new(0),
                bandwidth: self
                    .settings
                    .bandwidth
                    .map(|b| Arc::new(ByteBucket::new(b))),
            })
        });
        let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
        // From here, dropping `admitted` gives the slot back.
        admitted.client = Some(Arc::clone(&state));
        if self.settings.concurrency.is_some_and(|max| before >= max) {
            return Err(self.refused(Limit::Concurrency, 1));
        }
        if let Some(bucket) = &state.requests {
            let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = bucket.take(Instant::now()) {
                return Err(self.refused(Limit::Rate, wait.as_secs_f64().ceil().max(1.0) as u64));
            }
        }
        Ok(admitted)
    }

    fn refused(&self, limit: Limit, retry_after: u64) -> Refused {
        self.metrics
            .client_limited
            .with_label_values(&[limit.as_str()])
            .inc();
        Refused { limit, retry_after }
    }
}

/// IPv4 (also IPv4-mapped) as is; IPv6 reduced to its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Requests: `burst` tokens, refilled at `rate` per second.
struct RequestBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RequestBucket {
    fn new(rate: f64, burst: u32) -> RequestBucket {
        RequestBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes one token, or says how long until there is one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Bytes: a bucket of a tenth of a second's worth (at least 64 KiB) that
/// may go into debt; a body that sent `n` bytes waits until the debt is
/// paid off at `rate`. Shared by every response of its client (or all).
struct ByteBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl ByteBucket {
    fn new(rate: u64) -> ByteBucket {
        let rate = rate as f64;
        let capacity = (rate / 10.0).max(64.0 * 1024.0);
        ByteBucket {
            rate,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Debits `n` bytes; returns how long to wait before sending them.
    fn debit(&self, n: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = &mut *state;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.capacity) - n as f64;
        *at = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }
}

/// The response body under the request's admission: the in-flight slot
/// is held until the body ends or is dropped, and data frames wait for
/// the client's and the total byte buckets.
pub fn limited(body: Body, admitted: Admitted) -> Body {
    if admitted.client.is_none() && admitted.total.is_none() {
        // Nothing to hold or pay for.
        return body;
    }
    let shaped = admitted.is_shaped();
    LimitedBody {
        inner: body,
        admitted,
        shaped,
        held: None,
        counted: false,
    }
    .boxed_unsync()
}

struct LimitedBody {
    inner: Body,
    admitted: Admitted,
    shaped: bool,
    /// A frame waiting for its bytes to be paid for.
    held: Option<(Frame<Bytes>, Pin<Box<tokio::time::Sleep>>)>,
    /// Whether this response was counted as slowed already.
    counted: bool,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some((_, sleep)) = &mut this.held {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (frame, _) = this.held.take().expect("held");
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        let n = frame.data_ref().map_or(0, Bytes::len);
        if !this.shaped || n == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        let mut reason = None;
        if let Some(bucket) = this
            .admitted
            .client
            .as_ref()
            .and_then(|c| c.bandwidth.as_ref())
        {
            wait = bucket.debit(n, now);
            if !wait.is_zero() {
                reason = Some("bandwidth");
            }
        }
        if let Some(total) = &this.admitted.total {
            let w = total.debit(n, now);
            if w > wait {
                wait = w;
                reason = Some("total_bandwidth");
            }
        }
        if wait.is_zero() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let (Some(reason), false) = (reason, this.counted) {
            this.counted = true;
            this.admitted
                .metrics
                .client_limited
                .with_label_values(&[reason])
                .inc();
        }
        let mut sleep = Box::pin(tokio::time::sleep(wait));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.held = Some((frame, sleep));
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = RequestBucket::new(2.0, 3);
        for _ in 0..3 {
            assert!(b.take(start).is_ok());
        }
        let wait = b.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.take(start + Duration::from_millis(500)).is_ok());
        assert!(b.take(start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn byte_bucket_makes_debt_wait_at_its_rate() {
        let b = ByteBucket::new(1 << 20);
        let now = Instant::now();
        // A tenth of a second's worth (at least 64 KiB) goes at once.
        assert_eq!(b.debit(100 * 1024, now), Duration::ZERO);
        let wait = b.debit(1 << 20, now);
        let expected =
            (1 << 20) as f64 / (1 << 20) as f64 - (104_857.6 - 102_400.0) / (1 << 20) as f64;
        assert!((wait.as_secs_f64() - expected).abs() < 1e-3, "{wait:?}");
    }

    #[test]
    fn ipv6_clients_are_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
