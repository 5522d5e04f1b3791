//! The object-storage tier's settings: `storage = "s3://BUCKET/PREFIX"`
//! (or a `[storage]` table with `url` and a `[storage.s3]` table), the
//! `--storage` flag, and the standard `AWS_*` variables as fallbacks.
//!
//! TOML cannot give `storage` both a string value and a `[storage.s3]`
//! sub-table, so the file takes either form:
//!
//! ```toml
//! storage = "s3://cache/pullthrough"      # everything else from AWS_*
//!
//! [storage]                               # or, with S3 settings:
//! url = "s3://cache/pullthrough"
//! [storage.s3]
//! endpoint = "http://rgw.internal:7480"
//! region = "us-east-1"
//! path_style = true
//! allow_http = true
//! access_key_id = "…"
//! secret_access_key_file = "/run/secrets/s3"
//! ```
//!
//! `s3_redirect = true` (a top-level key, beside `max_size`) answers blob
//! GETs of content in the bucket with a 307 to a presigned URL.

use super::upstream::Secret;
use super::{invalid, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileStorage {
    Url(String),
    Table(FileStorageTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileStorageTable {
    pub url: Option<String>,
    #[serde(default)]
    pub s3: FileS3,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    #[serde(default)]
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub secret_access_key_env: Option<String>,
}

/// The standard AWS variables, read by the binary (tests leave them out).
#[derive(Clone, Debug, Default)]
pub struct AwsEnv {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

impl AwsEnv {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL_S3` (or
    /// `AWS_ENDPOINT_URL`); empty values count as unset.
    pub fn from_process() -> AwsEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        AwsEnv {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY").map(Secret::new),
            session_token: var("AWS_SESSION_TOKEN").map(Secret::new),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            endpoint_url: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
        }
    }
}

/// A bucket on an S3-compatible store, resolved and checked.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
    /// Scheme, host and port (and a path prefix, rarely).
    pub endpoint: Url,
    pub region: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// `s3_redirect`: send clients to the store for blobs it holds.
    pub redirect: bool,
}

const DEFAULT_REGION: &str = "us-east-1";

/// The storage settings from the file, the `--storage` value and the AWS
/// variables (`[storage.s3]` keys win over `AWS_*`); `None` without a
/// storage URL anywhere (local disk only).
pub(super) fn resolve(
    file: Option<FileStorage>,
    url_override: Option<&str>,
    aws: &AwsEnv,
) -> Result<Option<S3Settings>, ConfigError> {
    let (file_url, s3) = match file {
        None => (None, FileS3::default()),
        Some(FileStorage::Url(url)) => (Some(url), FileS3::default()),
        Some(FileStorage::Table(t)) => (t.url, t.s3),
    };
    let Some(url) = url_override.map(str::to_owned).or(file_url) else {
        return Ok(None);
    };
    let (bucket, prefix) = parse_url(&url)?;
    let region = s3
        .region
        .or_else(|| aws.region.clone())
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid(
            "storage.s3.region",
            format!("{region:?} is not a region"),
        ));
    }
    let explicit_endpoint = s3.endpoint.or_else(|| aws.endpoint_url.clone());
    let endpoint_text = explicit_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = Url::parse(&endpoint_text)
        .map_err(|e| invalid("storage.s3.endpoint", format!("{endpoint_text:?}: {e}")))?;
    match endpoint.scheme() {
        "https" => {}
        "http" if s3.allow_http => {}
        "http" => {
            return Err(invalid(
                "storage.s3.endpoint",
                "an http:// endpoint sends content unencrypted; set allow_http = true to allow it",
            ))
        }
        other => {
            return Err(invalid(
                "storage.s3.endpoint",
                format!("scheme {other:?} is not http or https"),
            ))
        }
    }
    if endpoint.host_str().is_none() || endpoint.query().is_some() {
        return Err(invalid(
            "storage.s3.endpoint",
            "must be scheme://host[:port] with no query",
        ));
    }
    // Other S3-compatible stores (RGW, MinIO, Garage, SeaweedFS) want
    // path-style addressing; AWS wants virtual hosts.
    let path_style = s3.path_style.unwrap_or(explicit_endpoint.is_some());
    if !path_style && !matches!(endpoint.host(), Some(url::Host::Domain(_))) {
        return Err(invalid(
            "storage.s3.path_style",
            "virtual-hosted buckets need a DNS name as the endpoint; set path_style = true",
        ));
    }
    if !path_style && bucket.contains('.') && endpoint.scheme() == "https" {
        return Err(invalid(
            "storage.s3.path_style",
            "a bucket name with dots cannot be a TLS virtual host; set path_style = true",
        ));
    }
    if s3.secret_access_key_file.is_some() && s3.secret_access_key_env.is_some() {
        return Err(invalid(
            "storage.s3.secret_access_key_file",
            "set one of secret_access_key_file, secret_access_key_env",
        ));
    }
    let secret = if let Some(var) = s3.secret_access_key_env {
        Some(Secret::new(std::env::var(&var).map_err(|_| {
            invalid(
                "storage.s3.secret_access_key_env",
                format!("environment variable {var} is not set"),
            )
        })?))
    } else if let Some(file) = s3.secret_access_key_file {
        Some(Secret::new(
            std::fs::read_to_string(&file)
                .map_err(|e| {
                    invalid(
                        "storage.s3.secret_access_key_file",
                        format!("{}: {e}", file.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ))
    } else {
        aws.secret_access_key.clone()
    };
    let access_key_id = s3.access_key_id.or_else(|| aws.access_key_id.clone());
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret) else {
        return Err(invalid(
            "storage.s3.access_key_id",
            "the object store needs credentials: access_key_id with secret_access_key_file or \
             secret_access_key_env, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    };
    if secret_access_key.expose().is_empty() {
        return Err(invalid(
            "storage.s3.secret_access_key_file",
            "the secret is empty",
        ));
    }
    Ok(Some(S3Settings {
        bucket,
        prefix,
        endpoint,
        region,
        path_style,
        access_key_id,
        secret_access_key,
        session_token: aws.session_token.clone(),
        redirect: false,
    }))
}

/// `s3://bucket/some/prefix/` → (`bucket`, `some/prefix`).
fn parse_url(url: &str) -> Result<(String, String), ConfigError> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(invalid(
            "storage",
            format!("{url:?} is not s3://BUCKET/PREFIX (only S3-compatible stores are supported)"),
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !valid_bucket {
        return Err(invalid(
            "storage",
            format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')"),
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(invalid(
            "storage",
            format!("prefix {prefix:?} is not a clean path"),
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> AwsEnv {
        AwsEnv {
            access_key_id: Some("AK".into()),
            secret_access_key: Some(Secret::new("SK-secret".into())),
            ..AwsEnv::default()
        }
    }

    #[test]
    fn url_alone_uses_aws_defaults() {
        let s = resolve(
            Some(FileStorage::Url("s3://my-bucket/a/b/".into())),
            None,
            &aws(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(s.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!s.path_style);
        assert!(!format!("{s:?}").contains("SK-secret"));
    }

    #[test]
    fn table_settings_win_and_http_needs_allowing() {
        let table = |allow_http| {
            FileStorage::Table(FileStorageTable {
                url: Some("s3://bkt".into()),
                s3: FileS3 {
                    endpoint: Some("http://127.0.0.1:7480".into()),
                    region: Some("eu-1".into()),
                    allow_http,
                    access_key_id: Some("file-key".into()),
                    ..FileS3::default()
                },
            })
        };
        let e = resolve(Some(table(false)), None, &aws())
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_http"), "{e}");
        let s = resolve(Some(table(true)), Some("s3://other/p"), &aws())
            .unwrap()
            .unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("other", "p"));
        assert_eq!(s.access_key_id, "file-key");
        assert_eq!(s.region, "eu-1");
        assert!(s.path_style, "a custom endpoint defaults to path style");
    }

    #[test]
    fn bad_urls_and_missing_credentials_are_named() {
        for url in ["http://x/y", "s3://", "s3://UPPER", "s3://ok-bucket/../x"] {
            let e = resolve(Some(FileStorage::Url(url.into())), None, &aws()).unwrap_err();
            assert!(e.to_string().contains("storage"), "{url}: {e}");
        }
        let e = resolve(None, Some("s3://bkt"), &AwsEnv::default()).unwrap_err();
        assert!(e.to_string().contains("credentials"), "{e}");
        assert!(resolve(None, None, &AwsEnv::default()).unwrap().is_none());
    }
}
