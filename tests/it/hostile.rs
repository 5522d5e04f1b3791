//! Hostile input (issue 7): a corpus of bad requests sent byte for byte over
//! TCP (path traversal in names and digests, overlong names and tags, bad
//! digests, odd query parameters, absurd Range headers, oversized headers,
//! bodies on GET, garbage, HTTP/2 oddities through `curl`). Each gets a 4xx
//! with the right OCI code, or a clean refusal; afterwards the process is
//! healthy, the upstream saw none of it, and no file appeared outside the
//! cache directory.

use crate::support::cache::paths_under;
use crate::support::client::{client, files_named, hex_of, oci_error_code, read_transfer};
use crate::support::hub::Hub;
use crate::support::mirror::Mirror;
use crate::support::process::run_bounded;
use crate::support::require_tool;
use crate::support::wait_until;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one raw exchange may take before it counts as a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back for one raw request.
#[derive(Debug)]
struct Answer {
    /// `None`: the connection closed without an HTTP/1 response.
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|line| {
            let lower = line.to_ascii_lowercase();
            lower
                .starts_with(&prefix)
                .then(|| line[prefix.len()..].trim().to_string())
        })
    }
}

/// Writes `request` as is, then reads until the server closes. The server
/// may refuse before reading everything, so write errors are not failures;
/// silence past [`EXCHANGE_TIMEOUT`] is.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(EXCHANGE_TIMEOUT, read).await.is_err() {
        return Err(format!(
            "no answer and no close within {EXCHANGE_TIMEOUT:?} (got {} bytes)",
            raw.len()
        ));
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(Answer {
            status: None,
            head: String::from_utf8_lossy(&raw).into_owned(),
            body: Vec::new(),
        });
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let mut answer = Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        answer.body = dechunk(&answer.body);
    }
    Ok(answer)
}

/// Decodes a chunked body (best effort: a broken one decodes short).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        let start = eol + 2;
        if size == 0 || start + size > raw.len() {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// One corpus entry.
struct Case {
    what: String,
    request: Vec<u8>,
    /// Acceptable statuses.
    statuses: &'static [u16],
    /// Acceptable `errors[0].code` values (empty: not checked).
    codes: &'static [&'static str],
    /// Whether closing the connection without an answer is acceptable.
    may_close: bool,
}

const BAD_REQUEST: &[u16] = &[400];
const NOT_FOUND: &[u16] = &[404];
const BAD_OR_NOT_FOUND: &[u16] = &[400, 404];
const NAME_INVALID: &[&str] = &["NAME_INVALID"];
const MANIFEST_UNKNOWN: &[&str] = &["MANIFEST_UNKNOWN"];
const DIGEST_INVALID: &[&str] = &["DIGEST_INVALID"];

fn request(method: &str, target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {target} HTTP/1.1\r\nHost: mirror.test\r\n{headers}Connection: close\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn case(
    what: impl Into<String>,
    request: Vec<u8>,
    statuses: &'static [u16],
    codes: &'static [&'static str],
) -> Case {
    Case {
        what: what.into(),
        request,
        statuses,
        codes,
        may_close: false,
    }
}

/// A GET of `target` that must get one of `statuses` (and `codes`).
fn get(
    target: impl Into<String>,
    statuses: &'static [u16],
    codes: &'static [&'static str],
) -> Case {
    let target = target.into();
    case(
        format!("GET {target}"),
        request("GET", &target, "", b""),
        statuses,
        codes,
    )
}

/// A request that must be refused: a 4xx in `statuses`, or a close.
fn refused(what: impl Into<String>, request: Vec<u8>, statuses: &'static [u16]) -> Case {
    Case {
        may_close: true,
        ..case(what, request, statuses, &[])
    }
}

/// Deterministic junk bytes.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The corpus. `marker` names every file a traversal would try to create;
/// `cached` is a blob the mirror holds (for Range and query cases).
fn corpus(marker: &str, cached: &str) -> Vec<Case> {
    let zero = format!("sha256:{}", "0".repeat(64));
    let m = marker;
    let mut cases = vec![
        // Path traversal in names: literal, encoded, backslashes, NUL.
        get(
            format!("/v2/../../../tmp/{m}/manifests/latest"),
            BAD_OR_NOT_FOUND,
            &[],
        ),
        get(
            format!("/v2/library/../../tmp/{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/library/%2e%2e/%2e%2e/tmp/{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/library%2f..%2f..%2ftmp%2f{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/%2e%2e%2f%2e%2e%2ftmp%2f{m}/blobs/{zero}"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/library/..%5c..%5ctmp%5c{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        refused(
            "backslashes in a name",
            request(
                "GET",
                &format!("/v2/library\\..\\..\\tmp\\{m}/manifests/latest"),
                "",
                b"",
            ),
            BAD_REQUEST,
        ),
        get(
            format!("/v2//tmp/{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            "/v2/./library/app/manifests/latest",
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            "/v2/library/app%00/manifests/latest",
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            "/v2/library/app%00.txt/blobs/".to_string() + &zero,
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            "/v2/LIBRARY/app/manifests/latest",
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/ghcr.io/../../{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/docker.io/%2e%2e/{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/library/app/../../../../tmp/{m}/blobs/{zero}"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/~root/{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/%2Ftmp%2F{m}/manifests/latest"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        // Path traversal in digests and tags.
        get(
            format!("/v2/library/app/blobs/sha256:..%2f..%2f..%2ftmp%2f{m}"),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            "/v2/library/app/blobs/sha256:%2e%2e",
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/..%2f..%2f{m}"),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:../../../../tmp/{m}"),
            BAD_OR_NOT_FOUND,
            &[],
        ),
        get(
            format!("/v2/library/app/blobs/{zero}/../../{m}"),
            BAD_OR_NOT_FOUND,
            &[],
        ),
        get(
            format!("/v2/library/app/blobs/{zero}%00"),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/{zero}%2f..%2f..%2f{m}"),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/manifests/sha256:..%2f{m}"),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/manifests/..%2f..%2f{m}"),
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        get("/v2/library/app/manifests/..", NOT_FOUND, MANIFEST_UNKNOWN),
        get(
            "/v2/library/app/manifests/.hidden",
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        get(
            "/v2/library/app/manifests/tag%00",
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        // Overlong names and tags.
        get(
            format!("/v2/{}/manifests/latest", "a".repeat(256)),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!(
                "/v2/{}/{}/manifests/latest",
                "a".repeat(200),
                "b".repeat(60)
            ),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/{}x/manifests/latest", "a/".repeat(300)),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        get(
            format!("/v2/{}/blobs/{zero}", "n".repeat(50_000)),
            &[400, 414, 431],
            &[],
        ),
        get(
            format!("/v2/library/app/manifests/{}", "t".repeat(129)),
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        get(
            format!("/v2/library/app/manifests/{}", "t".repeat(10_000)),
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        // Invalid digest algorithms and lengths.
        get(
            "/v2/library/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha512:{}", "a".repeat(128)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:{}", "a".repeat(63)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:{}", "a".repeat(65)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:{}", "A".repeat(64)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:{}", "g".repeat(64)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/SHA256:{}", "a".repeat(64)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256::{}", "a".repeat(64)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/:{}", "a".repeat(64)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get("/v2/library/app/blobs/sha256:", BAD_REQUEST, DIGEST_INVALID),
        get(
            "/v2/library/app/blobs/sha256+b64:abc",
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/blobs/sha256:{}", "a".repeat(10_000)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            format!("/v2/library/app/manifests/sha256:{}", "a".repeat(63)),
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get(
            "/v2/library/app/manifests/md5:d41d8cd98f00b204e9800998ecf8427e",
            BAD_REQUEST,
            DIGEST_INVALID,
        ),
        get("/v2/library/app/blobs/latest", BAD_REQUEST, DIGEST_INVALID),
        // Unknown and hostile query parameters.
        get("/v2/?foo=bar&&=&%zz=1&../../x=y", &[200], &[]),
        get(
            format!("/v2/library/app/blobs/{cached}?foo=bar&n=-1&last=../../{m}"),
            &[200],
            &[],
        ),
        get(
            "/v2/library/app/manifests/-bad?foo=../../x",
            NOT_FOUND,
            MANIFEST_UNKNOWN,
        ),
        get(
            format!("/v2/library/app/manifests/latest?ns=../../tmp/{m}"),
            NOT_FOUND,
            &["NAME_UNKNOWN"],
        ),
        get(
            "/v2/library/app/manifests/latest?ns=http://127.0.0.1:1/",
            NOT_FOUND,
            &["NAME_UNKNOWN"],
        ),
        get(
            "/v2/library/app/manifests/latest?ns=",
            NOT_FOUND,
            &["NAME_UNKNOWN"],
        ),
        get(
            "/v2/library/app/manifests/latest?ns=%ff%fe%00",
            NOT_FOUND,
            &["NAME_UNKNOWN"],
        ),
        get(
            format!("/v2/library/app/blobs/{cached}?ns=docker.io&ns=evil.example"),
            &[200, 404],
            &[],
        ),
        get(
            format!("/v2/?{}", "q=1&".repeat(5_000)),
            &[200, 414, 431],
            &[],
        ),
        get(
            format!("/v2/%2e%2e/manifests/x?ns={}", "n".repeat(10_000)),
            &[400, 404],
            &[],
        ),
        // Writes and odd methods.
        case(
            "PUT a manifest",
            request(
                "PUT",
                "/v2/library/app/manifests/v1",
                "Content-Length: 2\r\n",
                b"{}",
            ),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "POST an upload",
            request(
                "POST",
                "/v2/library/app/blobs/uploads/",
                "Content-Length: 0\r\n",
                b"",
            ),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "PATCH an upload",
            request(
                "PATCH",
                "/v2/library/app/blobs/uploads/abc",
                "Content-Length: 3\r\n",
                b"abc",
            ),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "DELETE a manifest",
            request(
                "DELETE",
                &format!("/v2/library/app/manifests/{zero}"),
                "",
                b"",
            ),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "DELETE a cached blob",
            request(
                "DELETE",
                &format!("/v2/library/app/blobs/{cached}"),
                "",
                b"",
            ),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "DELETE through traversal",
            request("DELETE", &format!("/v2/%2e%2e/{m}/manifests/x"), "", b""),
            &[405],
            &["UNSUPPORTED"],
        ),
        case(
            "POST /healthz",
            request("POST", "/healthz", "", b""),
            &[405],
            &[],
        ),
        case("TRACE /v2/", request("TRACE", "/v2/", "", b""), &[405], &[]),
        case(
            "OPTIONS *",
            request("OPTIONS", "*", "", b""),
            &[400, 404, 405],
            &[],
        ),
        refused(
            "CONNECT",
            request("CONNECT", "127.0.0.1:22", "", b""),
            &[400, 404, 405],
        ),
        refused(
            "a 10 000 byte method",
            request(&"A".repeat(10_000), "/v2/", "", b""),
            &[400, 405, 501],
        ),
        // Unknown paths.
        get("/etc/passwd", NOT_FOUND, &[]),
        get("/v2/../etc/passwd", NOT_FOUND, &[]),
        get("/../../../../etc/passwd", NOT_FOUND, &[]),
        get("/%2e%2e/%2e%2e/etc/passwd", NOT_FOUND, &[]),
        get("/v3/", NOT_FOUND, &[]),
        get("/v2/library/app/foo/bar", NOT_FOUND, &[]),
        get("/v2/library/app/blobs/uploads/", NOT_FOUND, &[]),
        get("/v2/_catalog", NOT_FOUND, &[]),
        get(
            format!("/v2/library/app/manifests/latest/../../../{m}"),
            BAD_OR_NOT_FOUND,
            &[],
        ),
        get(
            format!("http://127.0.0.1:1/v2/%2e%2e/{m}/manifests/x"),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        // Bodies on GET, and framing tricks.
        case(
            "GET with a body",
            request("GET", "/v2/", "Content-Length: 11\r\n", b"hello world"),
            &[200],
            &[],
        ),
        case(
            "GET of a bad name with a body",
            request(
                "GET",
                "/v2/%2e%2e/manifests/x",
                "Content-Length: 5\r\n",
                b"hello",
            ),
            BAD_REQUEST,
            NAME_INVALID,
        ),
        refused(
            "GET with a large body",
            request(
                "GET",
                "/v2/%2e%2e/manifests/x",
                "Content-Length: 100000\r\n",
                &junk(1, 100_000),
            ),
            &[400],
        ),
        refused(
            "GET with a broken chunked body",
            request(
                "GET",
                "/v2/",
                "Transfer-Encoding: chunked\r\n",
                b"zz\r\nhello\r\n0\r\n\r\n",
            ),
            &[200, 400],
        ),
        refused(
            "two different Content-Lengths",
            request(
                "GET",
                "/v2/",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                b"hello!",
            ),
            &[400],
        ),
        refused(
            "a negative Content-Length",
            request("GET", "/v2/", "Content-Length: -1\r\n", b""),
            &[400],
        ),
        refused(
            "a huge Content-Length",
            request(
                "GET",
                "/v2/",
                "Content-Length: 99999999999999999999999\r\n",
                b"",
            ),
            &[400, 413],
        ),
        refused(
            "chunked and Content-Length together",
            request(
                "GET",
                "/v2/",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                b"0\r\n\r\n",
            ),
            &[200, 400],
        ),
        // Oversized headers.
        refused(
            "one 1 MiB header",
            request(
                "GET",
                "/v2/",
                &format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
                b"",
            ),
            &[400, 431],
        ),
        refused(
            "a 100 KiB header name",
            request(
                "GET",
                "/v2/",
                &format!("{}: x\r\n", "X".repeat(100 << 10)),
                b"",
            ),
            &[400, 431],
        ),
        refused(
            "500 headers",
            request(
                "GET",
                "/v2/",
                &(0..500)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
                b"",
            ),
            &[400, 431],
        ),
        refused(
            "an 8 KiB Authorization header",
            request(
                "GET",
                "/v2/",
                &format!("Authorization: Basic {}\r\n", "Q".repeat(8 << 10)),
                b"",
            ),
            &[200, 400, 431],
        ),
        // Garbage.
        refused(
            "binary junk",
            [junk(7, 2048), b"\r\n\r\n".to_vec()].concat(),
            &[400],
        ),
        refused("NUL bytes", b"\0\0\0\0\0\0\0\0\r\n\r\n".to_vec(), &[400]),
        refused("a bare method", b"GET\r\n\r\n".to_vec(), &[400]),
        refused("HTTP/0.9", b"GET /v2/\r\n\r\n".to_vec(), &[400, 505]),
        refused(
            "HTTP/9.9",
            b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            &[400, 505],
        ),
        refused(
            "a header without a colon",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n".to_vec(),
            &[400],
        ),
        refused(
            "a NUL in a header value",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            &[400],
        ),
        refused(
            "an obsolete folded header",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            &[200, 400],
        ),
        refused(
            "a NUL in the path",
            b"GET /v2/a\0b/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        refused(
            "raw UTF-8 in the path",
            "GET /v2/äpp/manifests/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .as_bytes()
                .to_vec(),
            &[400],
        ),
        refused(
            "a TLS ClientHello on the plain port",
            [
                vec![
                    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
                ],
                junk(3, 160),
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            &[400],
        ),
        refused(
            "an HTTP/2 preface then junk frames",
            [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), junk(5, 4096)].concat(),
            &[400],
        ),
        refused(
            "an HTTP/2 preface then a HEADERS frame with broken HPACK",
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                vec![0, 0, 0, 4, 0, 0, 0, 0, 0], // empty SETTINGS
                vec![0, 0, 8, 1, 5, 0, 0, 0, 1], // HEADERS, END_STREAM|END_HEADERS, stream 1
                vec![0xff; 8],                   // an index far past any table
            ]
            .concat(),
            &[400],
        ),
    ];
    // Absurd or multiple Range headers on the cached blob: checked here
    // for status; `range_cases` checks the bytes.
    for (range, statuses) in range_cases() {
        cases.push(case(
            format!("Range {range:?}"),
            request(
                "GET",
                &format!("/v2/library/app/blobs/{cached}"),
                &range_headers(range),
                b"",
            ),
            statuses,
            &[],
        ));
    }
    cases
}

/// `Range: …` lines; a `\n` in `range` makes several headers.
fn range_headers(range: &str) -> String {
    range
        .split('\n')
        .map(|r| format!("Range: {r}\r\n"))
        .collect()
}

/// Range header values and what each must get: 200 (ignored, whole blob),
/// 206 (a single satisfiable span) or 416.
fn range_cases() -> Vec<(&'static str, &'static [u16])> {
    vec![
        ("bytes=0-0,1-1", &[200]),
        ("bytes=0-1\nbytes=5-6", &[200, 206, 400]),
        ("bytes=99999999999999999999999999-", &[200, 416]),
        ("bytes=18446744073709551615-", &[416]),
        ("bytes=0-18446744073709551615", &[206]),
        ("bytes=-18446744073709551615", &[206]),
        ("bytes=-18446744073709551616", &[200, 206]),
        ("bytes=-0", &[416]),
        ("bytes=5-1", &[200]),
        ("bytes=--1", &[200]),
        ("bytes=1--2", &[200]),
        ("bytes= - ", &[200]),
        ("bytes=0x10-", &[200]),
        ("bytes=1e3-", &[200]),
        ("bytes=10000-", &[416]),
        ("bytes=9999-", &[206]),
        ("bytes=100-199", &[206]),
        ("bytes=-100", &[206]),
        ("items=0-1", &[200]),
        (
            "bytes=0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0",
            &[200],
        ),
        ("", &[200]),
    ]
}

/// Checks a Range answer's bytes against the blob.
fn check_range_answer(what: &str, answer: &Answer, blob: &[u8]) {
    let total = blob.len();
    match answer.status {
        Some(200) => {
            assert!(
                answer.body == blob,
                "{what}: a 200 must carry the whole blob"
            );
            assert_eq!(
                answer.header("content-length"),
                Some(total.to_string()),
                "{what}"
            );
        }
        Some(206) => {
            let range = answer
                .header("content-range")
                .expect("Content-Range on a 206");
            let (span, of) = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .unwrap_or_else(|| panic!("{what}: Content-Range {range:?}"));
            assert_eq!(of, total.to_string(), "{what}: {range}");
            let (start, end) = span.split_once('-').expect("start-end");
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            assert!(start <= end && end < total, "{what}: {range}");
            assert!(
                answer.body == blob[start..=end],
                "{what}: wrong bytes for {range}"
            );
        }
        Some(416) => {
            assert_eq!(
                answer.header("content-range"),
                Some(format!("bytes */{total}")),
                "{what}"
            );
        }
        _ => {}
    }
}

/// `curl` cases over HTTP/2 with prior knowledge (and one h2c upgrade):
/// (what, args, acceptable statuses, whether a refused stream is fine).
fn curl_cases(
    base: &str,
    cached: &str,
    big_header: &Path,
    many_headers: &Path,
    body: &Path,
) -> Vec<(String, Vec<String>, &'static [u16], bool)> {
    let h2 = |args: &[&str]| -> Vec<String> {
        ["--http2-prior-knowledge"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let at = |p: &Path| format!("@{}", p.display());
    vec![
        (
            "h2: traversal".into(),
            h2(&[
                "--path-as-is",
                &format!("{base}/v2/%2e%2e/%2e%2e/manifests/latest"),
            ]),
            &[400],
            false,
        ),
        (
            "h2: literal dot segments".into(),
            h2(&[
                "--path-as-is",
                &format!("{base}/v2/library/../../x/manifests/latest"),
            ]),
            &[400],
            false,
        ),
        (
            "h2: PUT".into(),
            h2(&["-X", "PUT", &format!("{base}/v2/library/app/manifests/v1")]),
            &[405],
            false,
        ),
        (
            "h2: DELETE a cached blob".into(),
            h2(&[
                "-X",
                "DELETE",
                &format!("{base}/v2/library/app/blobs/{cached}"),
            ]),
            &[405],
            false,
        ),
        (
            "h2: multi-range".into(),
            h2(&[
                "-H",
                "Range: bytes=0-0,5-5",
                &format!("{base}/v2/library/app/blobs/{cached}"),
            ]),
            &[200],
            false,
        ),
        (
            "h2: two Range headers".into(),
            h2(&[
                "-H",
                "Range: bytes=0-0",
                "-H",
                "Range: bytes=5-5",
                &format!("{base}/v2/library/app/blobs/{cached}"),
            ]),
            &[200, 206, 400],
            false,
        ),
        (
            "h2: 1 MiB header".into(),
            h2(&["-H", &at(big_header), &format!("{base}/v2/")]),
            &[400, 431],
            true,
        ),
        (
            // HTTP/2 bounds the size of a header list, not the count.
            "h2: 300 small headers".into(),
            h2(&["-H", &at(many_headers), &format!("{base}/v2/")]),
            &[200, 400, 431],
            true,
        ),
        (
            "h2: OPTIONS *".into(),
            h2(&[
                "-X",
                "OPTIONS",
                "--request-target",
                "*",
                &format!("{base}/"),
            ]),
            &[400, 404, 405],
            true,
        ),
        (
            "h2: a path without a slash".into(),
            h2(&["--request-target", "v2/", &format!("{base}/")]),
            &[400, 404],
            true,
        ),
        (
            "h2: GET with a body".into(),
            h2(&[
                "-X",
                "GET",
                "--data-binary",
                &at(body),
                &format!("{base}/v2/%2e%2e/manifests/x"),
            ]),
            &[400],
            true,
        ),
        (
            "h2: Content-Length without a body".into(),
            h2(&["-H", "Content-Length: 5", &format!("{base}/v2/")]),
            &[200, 400],
            true,
        ),
        (
            "h2: a NUL-free control character in a header".into(),
            h2(&["-H", "X-A: a\x01b", &format!("{base}/v2/")]),
            &[200, 400],
            true,
        ),
        (
            "h2c upgrade".into(),
            vec!["--http2".into(), format!("{base}/v2/")],
            &[200],
            false,
        ),
    ]
}

/// Runs one curl case; returns a failure description, if any.
fn run_curl(what: &str, args: &[String], statuses: &[u16], may_refuse: bool) -> Option<String> {
    let mut command = Command::new("curl");
    command
        .args([
            "--silent",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args);
    let output = run_bounded(command, Duration::from_secs(20));
    let code: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let exit = output.status.code().unwrap_or(-1);
    if code >= 500 {
        return Some(format!("{what}: server error {code}"));
    }
    if statuses.contains(&code) || (may_refuse && code == 0 && exit != 0) {
        return None;
    }
    Some(format!(
        "{what}: status {code} (curl exit {exit}), wanted {statuses:?}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corpus_of_bad_requests_gets_4xx_and_leaves_the_mirror_healthy_and_the_disk_untouched() {
    let curl_present = require_tool("curl");
    let marker = format!("ptpwned{}", std::process::id());
    let pwned_before = Path::new("/tmp/pwned").exists();
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[10_000]);
    let (cached, blob) = image.layers[0].clone();
    let upstream = hub.url();
    // A process: the test reads its stderr and every file it creates in
    // its working directory.
    let mut mirror = Mirror::builder(&upstream).process().log("warn").start();
    // Warm the cache with one blob, then forget what the hub saw.
    let response = client()
        .get(format!("{}/v2/library/app/blobs/{cached}", mirror.url()))
        .send()
        .await
        .expect("warm-up");
    assert_eq!(response.status(), 200);
    assert_eq!(read_transfer(response).await.bytes(), blob);
    wait_until(
        "the warm-up blob in the cache",
        Duration::from_secs(10),
        || {
            (!files_named(&mirror.cache_dir.join("blobs"), hex_of(&cached)).is_empty())
                .then_some(())
        },
    );
    hub.reset_counts();
    let blobs_before = paths_under(&mirror.cache_dir.join("blobs"), Path::new("-"));

    let started = Instant::now();
    let mut failures = Vec::new();
    let cases = corpus(&marker, &cached);
    let count = cases.len();
    for case in cases {
        let answer = match exchange(mirror.addr, &case.request).await {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("{}: {e}", case.what));
                continue;
            }
        };
        if case.what.starts_with("Range") {
            check_range_answer(&case.what, &answer, &blob);
        }
        match answer.status {
            None if case.may_close => {}
            None => failures.push(format!(
                "{}: closed without an answer: {:?}",
                case.what,
                answer.head.chars().take(200).collect::<String>()
            )),
            Some(status) => {
                let code = oci_error_code(&answer.body);
                if !case.statuses.contains(&status) {
                    failures.push(format!(
                        "{}: status {status} (code {code:?}), wanted {:?}",
                        case.what, case.statuses
                    ));
                } else if !case.codes.is_empty()
                    && !code.as_deref().is_some_and(|c| case.codes.contains(&c))
                {
                    failures.push(format!(
                        "{}: code {code:?}, wanted one of {:?}",
                        case.what, case.codes
                    ));
                }
                if answer.head.to_ascii_lowercase().contains("x-injected") {
                    failures.push(format!("{}: a header was injected", case.what));
                }
            }
        }
    }
    eprintln!("{count} raw cases in {:?}", started.elapsed());

    if curl_present {
        let files = tempfile::tempdir().expect("tempdir");
        let big = files.path().join("big-header");
        std::fs::write(&big, format!("X-Big: {}\n", "a".repeat(1 << 20))).unwrap();
        let many = files.path().join("many-headers");
        std::fs::write(
            &many,
            (0..300).map(|i| format!("X-H{i}: v\n")).collect::<String>(),
        )
        .unwrap();
        let body = files.path().join("body");
        std::fs::write(&body, junk(9, 10_000)).unwrap();
        let base = mirror.url();
        tokio::task::block_in_place(|| {
            for (what, args, statuses, may_refuse) in curl_cases(&base, &cached, &big, &many, &body)
            {
                failures.extend(run_curl(&what, &args, statuses, may_refuse));
            }
        });
    }

    failures.extend(h2_oddities(mirror.addr, &marker, &cached).await);

    // Healthy afterwards, upstream untouched, nothing written anywhere.
    let health = client()
        .get(format!("{}/healthz", mirror.url()))
        .send()
        .await
        .expect("healthz after the corpus");
    assert_eq!(health.status(), 200);
    let ready = client()
        .get(format!("{}/readyz", mirror.url()))
        .send()
        .await
        .expect("readyz after the corpus");
    assert_eq!(ready.status(), 200);
    let again = client()
        .get(format!("{}/v2/library/app/blobs/{cached}", mirror.url()))
        .send()
        .await
        .expect("the cached blob after the corpus");
    assert_eq!(read_transfer(again).await.bytes(), blob);
    assert!(mirror.is_running(), "the mirror exited");
    let stderr = mirror.stderr();
    assert!(
        !stderr.contains("panicked"),
        "the mirror panicked:\n{stderr}"
    );
    assert!(
        failures.is_empty(),
        "{} of the corpus failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        hub.requests().is_empty(),
        "bad requests reached the upstream: {:?}",
        hub.requests()
    );

    let outside = paths_under(&mirror.root, Path::new("cache"));
    assert!(
        outside.is_empty(),
        "files created outside the cache dir: {outside:?}"
    );
    assert_eq!(
        paths_under(&mirror.cache_dir.join("blobs"), Path::new("-")),
        blobs_before,
        "blobs/ changed"
    );
    let traces = files_named(&mirror.cache_dir, &marker);
    assert!(
        traces.is_empty(),
        "traversal names reached the cache: {traces:?}"
    );
    let in_tmp: Vec<_> = std::fs::read_dir("/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&marker))
        .map(|e| e.path())
        .collect();
    assert!(in_tmp.is_empty(), "traversal created {in_tmp:?}");
    if !pwned_before {
        assert!(!Path::new("/tmp/pwned").exists(), "/tmp/pwned appeared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absolute_form_targets_and_ns_never_make_the_mirror_an_open_proxy() {
    // A listener standing for an arbitrary host: it must never be dialled.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind trap");
    let trap_addr = trap.local_addr().expect("addr");
    let dialled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = dialled.clone();
    let trap_task = tokio::spawn(async move {
        while let Ok((_stream, _)) = trap.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[100]);
    let upstream = hub.url();
    let mirror = Mirror::start(&upstream);
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json\r\n";
    let targets = [
        // Absolute-form: the authority is ignored, the path is served as usual.
        (
            format!("http://{trap_addr}/v2/library/app/manifests/v1"),
            &[200][..],
        ),
        // ns naming the trap: refused, never dialled.
        (
            format!("/v2/library/app/manifests/v1?ns={trap_addr}"),
            &[404][..],
        ),
        (
            format!("/v2/{trap_addr}/library/app/manifests/v1"),
            &[400, 404][..],
        ),
        (
            format!("/v2/localhost/app/manifests/v1?ns=http%3A%2F%2F{trap_addr}"),
            &[404][..],
        ),
    ];
    for (target, statuses) in &targets {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: {trap_addr}\r\n{accept}X-Forwarded-Host: {trap_addr}\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(mirror.addr, raw.as_bytes())
            .await
            .expect("an answer");
        let status = answer.status.expect("a status");
        assert!(statuses.contains(&status), "{target}: {status}");
        if status == 200 {
            assert!(
                answer.body == image.manifest_bytes,
                "{target}: served from the configured upstream"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        dialled.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the mirror dialled a host a client named"
    );
    trap_task.abort();
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields (never indexed, no Huffman).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        hpack_int(0, 7, name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        hpack_int(0, 7, value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn get_block(path: &str) -> Vec<u8> {
    hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "mirror.test"),
        (":path", path),
    ])
}

/// What the server sent back on one HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Answer {
    /// Streams answered with HEADERS, and the first byte of each block
    /// (HPACK static index: 0x88 is :status 200, 0x8c 400, 0x8d 404,
    /// 0x8e 500).
    responses: Vec<(u32, u8)>,
    resets: usize,
    goaway: bool,
    closed: bool,
}

/// Sends `bytes` after the preface and an empty SETTINGS, then reads frames
/// until the server closes, sends GOAWAY, `want` responses arrived, or the
/// read goes quiet for a second.
async fn h2_exchange(addr: SocketAddr, bytes: &[u8], want: usize) -> H2Answer {
    let mut answer = H2Answer::default();
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        answer.closed = true;
        return answer;
    };
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(bytes);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let _ = writer.write_all(&out).await;
    };
    let read = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while raw.len() >= 9 {
                let len =
                    (usize::from(raw[0]) << 16) | (usize::from(raw[1]) << 8) | usize::from(raw[2]);
                if raw.len() < 9 + len {
                    break;
                }
                let (kind, stream_id) = (
                    raw[3],
                    u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff,
                );
                match kind {
                    HEADERS => answer
                        .responses
                        .push((stream_id, raw.get(9).copied().unwrap_or(0))),
                    RST_STREAM => answer.resets += 1,
                    GOAWAY => answer.goaway = true,
                    _ => {}
                }
                raw.drain(..9 + len);
            }
            if answer.goaway || answer.responses.len() >= want || Instant::now() > deadline {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(1), reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    answer.closed = true;
                    return;
                }
                Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
    };
    tokio::join!(write, read);
    answer
}

/// HTTP/2 on the plain port (prior knowledge), frame by frame: many bad
/// streams multiplexed, rapid resets, malformed headers, a CONTINUATION
/// flood, flow-control and settings abuse. Each must end in 4xx answers,
/// stream resets or a GOAWAY, never a 5xx; returns failures.
async fn h2_oddities(addr: SocketAddr, marker: &str, cached: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // 100 bad requests multiplexed on one connection: 100 answers of 400.
    let mut many = Vec::new();
    for i in 0..100u32 {
        let path = format!("/v2/%2e%2e/{marker}{i}/manifests/latest");
        many.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block(&path),
        ));
    }
    let answer = h2_exchange(addr, &many, 100).await;
    let bad_requests = answer.responses.iter().filter(|(_, b)| *b == 0x8c).count();
    // Streams beyond the advertised limit (32 at once) are refused with a
    // reset: each of the 100 is a 400 or a refusal, never anything else.
    let all_bad_requests = bad_requests == answer.responses.len();
    if !all_bad_requests || bad_requests == 0 || bad_requests + answer.resets != 100 {
        failures.push(format!("h2: 100 multiplexed bad requests: {answer:?}"));
    }

    // Rapid reset: open and cancel 2 000 streams (CVE-2023-44487 shape).
    let mut rapid = Vec::new();
    for i in 0..2000u32 {
        let path = format!("/v2/library/app/blobs/{cached}");
        rapid.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block(&path),
        ));
        rapid.extend(frame(RST_STREAM, 0, 1 + 2 * i, &8u32.to_be_bytes()));
    }
    cases.push(("rapid reset", rapid));
    // Malformed header blocks.
    cases.push((
        "an uppercase header name",
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[get_block("/v2/"), hpack(&[("X-Upper", "1")])].concat(),
        ),
    ));
    cases.push((
        "no :path",
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &hpack(&[(":method", "GET"), (":scheme", "http"), (":authority", "x")]),
        ),
    ));
    cases.push((
        "a connection-specific header",
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[get_block("/v2/"), hpack(&[("connection", "keep-alive")])].concat(),
        ),
    ));
    cases.push((
        "a pseudo-header after a regular one",
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[
                get_block("/v2/"),
                hpack(&[("x-a", "1"), (":path", "/etc/passwd")]),
            ]
            .concat(),
        ),
    ));
    cases.push((
        "an HPACK index past every table",
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0x7f],
        ),
    ));
    // CONTINUATION flood: 4 MiB of header block that never ends.
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block("/v2/"));
    let filler = hpack(&[("x-flood", &"f".repeat(16_000))]);
    for _ in 0..256 {
        flood.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    cases.push(("a CONTINUATION flood", flood));
    // Flow control and settings abuse.
    let mut windows = frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes());
    windows.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()));
    cases.push(("a connection window past 2^31-1", windows));
    let mut settings = Vec::new();
    settings.extend_from_slice(&4u16.to_be_bytes()); // INITIAL_WINDOW_SIZE
    settings.extend_from_slice(&0xffff_ffffu32.to_be_bytes());
    cases.push((
        "an initial window past 2^31-1",
        frame(SETTINGS, 0, 0, &settings),
    ));
    let mut pings = Vec::new();
    for i in 0..10_000u64 {
        pings.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    cases.push(("10 000 PINGs", pings));
    cases.push((
        "an even (server-side) stream id",
        frame(HEADERS, END_STREAM | END_HEADERS, 2, &get_block("/v2/")),
    ));
    let mut backwards = frame(HEADERS, END_STREAM | END_HEADERS, 5, &get_block("/v2/"));
    backwards.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &get_block("/v2/"),
    ));
    cases.push(("stream ids going backwards", backwards));
    // A body on GET, within the flow-control window: answered as usual.
    let mut with_body = frame(
        HEADERS,
        END_HEADERS,
        1,
        &get_block("/v2/%2e%2e/manifests/x"),
    );
    for i in 0..4 {
        let flags = if i == 3 { END_STREAM } else { 0 };
        with_body.extend(frame(DATA, flags, 1, &junk(11 + i, 15_000)));
    }
    let answer = h2_exchange(addr, &with_body, 1).await;
    if answer.responses.first().map(|(_, b)| *b) != Some(0x8c) {
        failures.push(format!("h2: GET with a 60 kB body: {answer:?}"));
    }
    // Frames past the 16 KiB maximum frame size.
    cases.push((
        "a 1 MiB DATA frame",
        [
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &get_block("/v2/%2e%2e/manifests/x"),
            ),
            frame(DATA, END_STREAM, 1, &junk(11, 1 << 20)),
        ]
        .concat(),
    ));

    for (what, bytes) in cases {
        let answer = h2_exchange(addr, &bytes, usize::MAX).await;
        eprintln!(
            "h2 {what}: {} responses, {} resets, GOAWAY {}, closed {}",
            answer.responses.len(),
            answer.resets,
            answer.goaway,
            answer.closed
        );
        if answer.responses.iter().any(|(_, b)| *b == 0x8e) {
            failures.push(format!("h2: {what}: a 500: {answer:?}"));
        }
    }
    failures
}
