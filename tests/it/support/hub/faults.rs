//! Fault injection for the stand-in hub: what can go wrong, where it applies,
//! and the CDN body stream that applies the byte-level faults.

use super::{Counters, Kind};
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use hyper::body::Frame;
use std::sync::Arc;
use std::time::Duration;

/// Bytes per body frame the CDN sends; throttling sleeps between frames.
const CHUNK: usize = 64 * 1024;

/// Which requests a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every request the fault kind applies to.
    All,
    /// Only requests for this digest (a manifest by tag matches the digest
    /// the tag points to).
    Digest(String),
}

/// Something the hub does wrong. Faults stack: a throttled, dropped body is
/// `Throttle` plus `DropAfter` on the same target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Blob bodies on the CDN and manifest GET bodies: same length, the
    /// middle byte flipped.
    CorruptBytes,
    /// CDN blob bodies: the connection breaks after this many body bytes.
    DropAfter(u64),
    /// CDN blob bodies: at most this many bytes per second per connection.
    Throttle(u64),
    /// CDN blob bodies of the first `connections` GETs break after `after`
    /// body bytes (a flaky network that recovers).
    DropAfterFirst { after: u64, connections: u64 },
    /// CDN blob bodies of the first GET send `after` bytes, then nothing
    /// more, never closing (a black-holed connection).
    StallAfterFirst(u64),
    /// The CDN answers every GET with the whole blob (200), ignoring Range.
    IgnoreRange,
    /// CDN blob bodies go chunked, without a Content-Length.
    NoLength,
    /// The registry has no referrers API (404), like distribution 2.8.
    NoReferrersApi,
    /// Registry requests under `/v2/<name>/` (manifests, blobs, tag lists;
    /// GET and HEAD) and CDN GETs answer this status (e.g. 500, 503) with an
    /// error body.
    Status(u16),
    /// Manifest GETs (not HEADs, as on Docker Hub) answer 429 with
    /// `Retry-After: <secs>`, `TOOMANYREQUESTS` and, as Docker Hub's pull
    /// limit does, `ratelimit-remaining: 0`.
    TooManyRequests { retry_after_secs: u64 },
    /// Manifest GETs answer a plain 429 with no rate-limit headers, as
    /// Docker Hub's abuse limit does.
    PlainTooManyRequests,
    /// Registry requests under `/v2/<name>/` and CDN GETs are accepted and
    /// never answered.
    Stall,
    /// Token requests answer this status (the token service is down or
    /// rate-limiting while the registry itself answers).
    TokenStatus(u16),
    /// Wait this long before answering: registry requests under
    /// `/v2/<name>/`, CDN GETs and, with `Target::All`, token requests.
    Delay(Duration),
    /// Registry 401s carry this `WWW-Authenticate` value instead of the
    /// hub's own challenge (a malformed or dead realm).
    Challenge(String),
    /// CDN GETs answer 401 with this `WWW-Authenticate` value: a redirect
    /// target naming a realm of its own.
    CdnChallenge(String),
    /// Token requests answer 200 with a JSON body whose token is this many
    /// bytes long, streamed without a Content-Length; the bytes handed to
    /// the connection count as `TokenBytesSent`.
    HugeToken(u64),
    /// Token requests answer 200 and then send a space every 500 ms,
    /// never finishing the body.
    TokenTrickle,
    /// Registry requests under `/v2/<name>/` (after auth) answer 307 to
    /// this URL: an upstream sending the mirror somewhere else.
    Redirect(String),
    /// Manifest responses (GET and HEAD) carry this Content-Type.
    ContentType(String),
    /// `tags/list` responses carry this `Link` header.
    TagsLink(String),
    /// Referrers answers list at most this many descriptors per page, the
    /// rest behind `Link: <…?n=N&last=DIGEST>; rel="next"`.
    ReferrersPerPage(usize),
}

/// The active faults, settable while the hub runs.
#[derive(Default)]
pub struct Faults {
    active: Vec<(Target, Fault)>,
}

impl Faults {
    pub fn set(&mut self, target: Target, fault: Fault) {
        self.active.push((target, fault));
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// Faults that apply to content `digest` (`None`: a request that names
    /// no content, such as a token fetch; only `Target::All` matches it).
    pub fn matching(&self, digest: Option<&str>) -> Vec<Fault> {
        self.active
            .iter()
            .filter(|(target, _)| match target {
                Target::All => true,
                Target::Digest(d) => Some(d.as_str()) == digest,
            })
            .map(|(_, fault)| fault.clone())
            .collect()
    }
}

/// `bytes` with the middle byte flipped.
pub fn corrupt(bytes: &Bytes) -> Bytes {
    let mut wrong = bytes.to_vec();
    if let Some(byte) = wrong.get_mut(bytes.len() / 2) {
        *byte ^= 0xff;
    }
    Bytes::from(wrong)
}

/// How the CDN streams one blob body.
pub struct BodyPlan {
    pub data: Bytes,
    /// Break the connection after this many bytes.
    pub drop_after: Option<u64>,
    /// Bytes per second.
    pub rate: Option<u64>,
    /// Send this many bytes, then hang without closing.
    pub stall_after: Option<u64>,
}

impl BodyPlan {
    /// The plan for `data` under `faults` (the byte-level ones only);
    /// `nth` counts this blob GET among the CDN's GETs (0 for the first).
    pub fn new(data: Bytes, faults: &[Fault], nth: u64) -> BodyPlan {
        let mut plan = BodyPlan {
            data,
            drop_after: None,
            rate: None,
            stall_after: None,
        };
        for fault in faults {
            match fault {
                Fault::CorruptBytes => plan.data = corrupt(&plan.data),
                Fault::DropAfter(n) => plan.drop_after = Some(*n),
                Fault::DropAfterFirst { after, connections } if nth < *connections => {
                    plan.drop_after = Some(*after)
                }
                Fault::StallAfterFirst(n) if nth == 0 => plan.stall_after = Some(*n),
                Fault::Throttle(rate) => plan.rate = Some((*rate).max(1)),
                _ => {}
            }
        }
        plan
    }

    /// The body as frames, counting `CdnBytesSent` as each frame is handed
    /// to hyper, ending in an I/O error where the plan drops the connection.
    pub fn into_stream(
        self,
        counters: Arc<Counters>,
    ) -> impl Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send {
        let len = self.data.len();
        let cut = self.drop_after.or(self.stall_after);
        let end = cut.map_or(len, |n| usize::try_from(n).unwrap_or(len).min(len));
        let breaks = self.drop_after.is_some();
        let stalls = self.stall_after.is_some();
        stream::unfold((self, 0usize, false), move |(plan, pos, done)| {
            let counters = counters.clone();
            async move {
                if done {
                    return None;
                }
                if pos >= end {
                    if stalls {
                        std::future::pending::<()>().await;
                    }
                    if breaks {
                        // Pending for a moment lets hyper flush what it holds,
                        // so the peer really gets `n` bytes before the break.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let err = std::io::Error::other("hub fault: connection dropped");
                        return Some((Err(err), (plan, pos, true)));
                    }
                    return None;
                }
                let n = CHUNK.min(end - pos);
                if let Some(rate) = plan.rate {
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                }
                let frame = Frame::data(plan.data.slice(pos..pos + n));
                counters.add(Kind::CdnBytesSent, n as u64);
                Some((Ok(frame), (plan, pos + n, false)))
            }
        })
    }
}
