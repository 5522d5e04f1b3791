//! AWS Signature Version 4 for S3 requests: the `Authorization` header
//! for requests the S3 tier sends, and query-string presigning.
//!
//! Only what S3 needs: the service is `s3`, paths are encoded once (S3
//! does not double-encode), and the payload hash is either the body's
//! SHA-256 or `UNSIGNED-PAYLOAD`.

use crate::config::Secret;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

#[allow(dead_code)]
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Who signs, and for which region.
#[derive(Clone, Debug)]
pub struct Signer {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
}

/// Percent-encodes everything but the unreserved characters; `/` too
/// unless `keep_slash` (for paths).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `(20130524T000000Z, 20130524)` for `time`, in UTC.
fn amz_dates(time: SystemTime) -> (String, String) {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = crate::utc::civil_from_days(days as i64);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    (stamp, date)
}

/// `host[:port]` as the client sends it (default ports left out).
fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The query in canonical form: pairs encoded, sorted, `k=v&…`.
fn canonical_query(url: &Url, skip_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Signer {
    fn scope(&self, date: &str) -> String {
        format!("{date}/{}/s3/aws4_request", self.region)
    }

    fn signature(&self, date: &str, stamp: &str, canonical_request: &str) -> String {
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{}\n{}",
            self.scope(date),
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let secret = format!("AWS4{}", self.secret_access_key.expose());
        let k_date = hmac(secret.as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let k_signing = hmac(&k_service, b"aws4_request");
        hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
    }

    /// The headers to add to a request for `url` (`host` is sent by the
    /// client itself): `x-amz-date`, `x-amz-content-sha256`, the session
    /// token if any, and `authorization`. `extra` are further headers to
    /// sign (lower-case names), which the caller sends as given.
    pub fn sign(
        &self,
        method: &str,
        url: &Url,
        extra: &[(&str, &str)],
        payload_hash: &str,
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        let (stamp, date) = amz_dates(now);
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), host_header(url)),
            ("x-amz-content-sha256".into(), payload_hash.to_owned()),
            ("x-amz-date".into(), stamp.clone()),
        ];
        if let Some(token) = &self.session_token {
            headers.push(("x-amz-security-token".into(), token.expose().to_owned()));
        }
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
        );
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
            url.path(),
            canonical_query(url, false)
        );
        let signature = self.signature(&date, &stamp, &canonical_request);
        let mut out = vec![
            ("x-amz-date", stamp),
            ("x-amz-content-sha256", payload_hash.to_owned()),
        ];
        if let Some(token) = &self.session_token {
            out.push(("x-amz-security-token", token.expose().to_owned()));
        }
        out.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={signed_headers},Signature={signature}",
                self.access_key_id,
                self.scope(&date)
            ),
        ));
        out
    }

    /// `url` presigned for `method` (only `host` signed, payload unsigned),
    /// valid for `expires` from `now`.
    pub fn presign(&self, method: &str, url: &Url, expires: Duration, now: SystemTime) -> Url {
        let (stamp, date) = amz_dates(now);
        let mut url = url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("X-Amz-Algorithm", "AWS4-HMAC-SHA256");
            q.append_pair(
                "X-Amz-Credential",
                &format!("{}/{}", self.access_key_id, self.scope(&date)),
            );
            q.append_pair("X-Amz-Date", &stamp);
            q.append_pair("X-Amz-Expires", &expires.as_secs().max(1).to_string());
            if let Some(token) = &self.session_token {
                q.append_pair("X-Amz-Security-Token", token.expose());
            }
            q.append_pair("X-Amz-SignedHeaders", "host");
        }
        let canonical_request = format!(
            "{method}\n{}\n{}\nhost:{}\n\nhost\n{UNSIGNED_PAYLOAD}",
            url.path(),
            canonical_query(&url, true),
            host_header(&url)
        );
        let signature = self.signature(&date, &stamp, &canonical_request);
        url.query_pairs_mut()
            .append_pair("X-Amz-Signature", &signature);
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Signer {
        // The credentials of AWS's own SigV4 examples for S3.
        Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
            region: "us-east-1".into(),
        }
    }

    fn may_24_2013() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_dates(may_24_2013()).0, "20130524T000000Z");
        assert_eq!(
            amz_dates(UNIX_EPOCH + Duration::from_secs(951_825_599)).0,
            "20000229T115959Z"
        );
        assert_eq!(amz_dates(UNIX_EPOCH).1, "19700101");
    }

    #[test]
    fn signs_the_aws_get_object_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let headers = example().sign(
            "GET",
            &url,
            &[("range", "bytes=0-9")],
            EMPTY_SHA256,
            may_24_2013(),
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(!format!("{:?}", example()).contains("EXAMPLEKEY"));
    }

    #[test]
    fn presigns_the_aws_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let signed = example().presign("GET", &url, Duration::from_secs(86_400), may_24_2013());
        let signature = signed
            .query_pairs()
            .find(|(k, _)| k == "X-Amz-Signature")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(
            signature,
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn encodes_like_s3() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
